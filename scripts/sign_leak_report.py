#!/usr/bin/env python3
"""Sign a leak report as GitHub's secret scanning does, to try POST /v2/leaks/github end to end.

    # once: a local P-256 key, and the keys file the server trusts (GitHub's published format)
    scripts/sign_leak_report.py --new-key local.pem --keys-file github-keys.json [--key-id local-test]
    KEYLEDGER_GITHUB_SCANNING_KEYS=github-keys.json keyledger serve ...

    # sign a report (a JSON array of {"token", "type", "url", "source"}) and post it
    scripts/sign_leak_report.py --key local.pem report.json --post http://127.0.0.1:8000
    # or print only the signature header's value (for curl)
    scripts/sign_leak_report.py --key local.pem --signature-only report.json

A report may also be built from tokens: ``--token ak_… --token pat_… --url https://github.com/…``.
The body is signed byte for byte as sent (ECDSA P-256 / SHA-256, base64 DER).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from service.github_scanning import sign  # noqa: E402

TYPES = {"ak_": "keyledger_api_key", "pat_": "keyledger_personal_token"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", nargs="?", help="a JSON file with the report (else built from --token)")
    parser.add_argument("--key", type=Path, help="the PEM private key to sign with")
    parser.add_argument("--key-id", default="local-test", help="the key identifier (default local-test)")
    parser.add_argument("--new-key", type=Path, help="write a new P-256 private key here")
    parser.add_argument("--keys-file", type=Path, help="with --new-key: write the public key here, in GitHub's format")
    parser.add_argument("--token", action="append", default=[], help="a token to report (repeatable)")
    parser.add_argument("--url", default="https://github.com/example/repo/blob/main/config.py")
    parser.add_argument("--source", default="content")
    parser.add_argument("--signature-only", action="store_true", help="print only the signature")
    parser.add_argument("--post", metavar="BASE_URL", help="POST the signed report to BASE_URL/v2/leaks/github")
    args = parser.parse_args()

    if args.new_key:
        private = ec.generate_private_key(ec.SECP256R1())
        args.new_key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
        args.new_key.chmod(0o600)
        if args.keys_file:
            pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            args.keys_file.write_text(json.dumps({"public_keys": [
                {"key_identifier": args.key_id, "key": pem, "is_current": True}]}, indent=2) + "\n")
        print(f"wrote {args.new_key}" + (f" and {args.keys_file}" if args.keys_file else ""), file=sys.stderr)
        if not args.report and not args.token:
            return 0
    key_path = args.key or args.new_key
    if key_path is None:
        parser.error("give --key (or --new-key)")
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        parser.error(f"{key_path} is not an ECDSA private key")
    if args.report:
        body = Path(args.report).read_bytes()
    elif args.token:
        body = json.dumps([{"token": t, "type": next((v for p, v in TYPES.items() if t.startswith(p)), "unknown"),
                            "url": args.url, "source": args.source} for t in args.token]).encode()
    else:
        parser.error("give a report file or --token")
    signature = sign(private, body)
    if args.signature_only:
        print(signature)
        return 0
    if not args.post:
        print(json.dumps({"Github-Public-Key-Identifier": args.key_id, "Github-Public-Key-Signature": signature,
                          "body": body.decode()}, indent=2))
        return 0
    request = urllib.request.Request(args.post.rstrip("/") + "/v2/leaks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "Github-Public-Key-Identifier": args.key_id,
        "Github-Public-Key-Signature": signature})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.status, response.read().decode())
            return 0
    except urllib.error.HTTPError as error:
        print(error.code, error.read().decode())
        return 1


if __name__ == "__main__":
    sys.exit(main())
