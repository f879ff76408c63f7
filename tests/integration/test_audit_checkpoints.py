"""Signed checkpoints: the signing key's file, the setting, signing as a plain function with a
given time, and checking a checkpoint outside the service exactly as the README shows."""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.audit import encode_cursor
from service.cli import main
from service.composition import build_system
from service.credentials import SIGNING_KEY_FILE, public_key_pem
from service.domain.actors import NO_REQUEST, Actor
from tests.backend import make_settings, point_environment_at
from tests.conftest import require

README = Path(__file__).resolve().parents[2] / "README.md"


def some_events(system) -> None:
    system.keys_app.register_account(email=f"p{system.keys_app.last_position()}@example.com", name="P",
                                     role="owner", by=Actor.system("test"), request=NO_REQUEST)
    system.after_command()


def test_the_signing_key_file_is_made_once_private_and_kept(settings):
    first = build_system(settings, follow=False)
    pem = public_key_pem(first.signing_key)
    first.close()
    path = settings.data_dir / SIGNING_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = build_system(settings, follow=False)
    assert public_key_pem(again.signing_key) == pem
    again.close()


def test_the_signing_key_setting_wins_and_no_file_is_made(tmp_path):
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    settings = make_settings(data_dir=tmp_path / "var", pepper="p" * 40, audit_signing_key=pem)
    system = build_system(settings, follow=False)
    try:
        assert public_key_pem(system.signing_key) == public_key_pem(key)
        assert not (settings.data_dir / SIGNING_KEY_FILE).exists()
    finally:
        system.close()


def test_a_bad_signing_key_setting_stops_the_command_with_status_2(tmp_path, monkeypatch, capsys):
    point_environment_at(monkeypatch, tmp_path / "var")
    monkeypatch.setenv("KEYLEDGER_PEPPER", "p" * 40)
    monkeypatch.setenv("KEYLEDGER_AUDIT_SIGNING_KEY", "not a key")
    assert main(["audit", "verify", "--init"]) == 2
    assert "KEYLEDGER_AUDIT_SIGNING_KEY" in capsys.readouterr().err


def test_signing_is_a_plain_function_of_now_numbered_linked_and_idempotent(system):
    some_events(system)
    noon = datetime(2017, 6, 1, 12, 0, tzinfo=UTC)
    first = system.sign_checkpoint(now=noon)
    assert first["signed_at"] == "2017-06-01T12:00:00.000000Z" and first["number"] == 1
    assert system.sign_checkpoint() is None  # nothing new but the checkpoint itself
    some_events(system)
    second = system.sign_checkpoint()
    assert second["number"] == 2 and second["previous"] != "-" and second["seq"] > first["seq"]
    mirrored = [json.loads(line) for line in (system.settings.data_dir / "audit-checkpoints.jsonl")
                .read_text().splitlines()]
    assert [m["signature"] for m in mirrored] == [first["signature"], second["signature"]]
    report = system.check_integrity()
    assert (report["ok"], report["checkpoints"], report["signed_through"]) == (True, 2, second["seq"])


def readme_snippet() -> str:
    text = README.read_text()
    block = re.search(r"<!-- checkpoint-check:begin -->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README's checkpoint snippet is missing"
    return block.group(1)


def test_the_readme_checks_a_checkpoint_outside_the_service(system, client, auditor, tmp_path):
    some_events(system)
    system.sign_checkpoint()
    pem = auditor.get("/v2/audit/public-key").json["public_key_pem"]
    event = auditor.get("/v2/audit/events?type=AuditLedger.CheckpointSigned").json["events"][-1]
    signed_seq = event["data"]["seq"]
    at_seq = auditor.get(f"/v2/audit/events?limit=1&cursor={encode_cursor(signed_seq - 1)}").json["events"][0]
    assert at_seq["seq"] == signed_seq and at_seq["hash"] == event["data"]["hash"]
    (tmp_path / "audit-public.pem").write_text(pem)
    (tmp_path / "checkpoint.json").write_text(json.dumps(event))
    (tmp_path / "check.py").write_text(readme_snippet())

    checked = subprocess.run([sys.executable, "check.py", "audit-public.pem", "checkpoint.json"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("genuine: checkpoint 1 ")

    event["data"]["hash"] = "f" * 64  # a forged checkpoint
    (tmp_path / "checkpoint.json").write_text(json.dumps(event))
    forged = subprocess.run([sys.executable, "check.py", "audit-public.pem", "checkpoint.json"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert forged.returncode != 0

    require("openssl", shutil.which("openssl") is not None, "the README's openssl check needs it")
    (tmp_path / "message.txt").write_text(event["data"]["message"])
    (tmp_path / "signature.bin").write_bytes(base64.b64decode(event["data"]["signature"]))
    verified = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "audit-public.pem",
                               "-rawin", "-in", "message.txt", "-sigfile", "signature.bin"],
                              cwd=tmp_path, capture_output=True, text=True)
    assert verified.returncode == 0 and "Signature Verified Successfully" in verified.stdout
