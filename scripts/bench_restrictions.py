#!/usr/bin/env python3
"""The verdict of an unrestricted key against a baseline ref's verdict, in one process.

    .venv/bin/python scripts/bench_restrictions.py [--ref main] [--rounds 200]

Client restrictions (issue 17) add one check to the verdict of every API key (``grant.restriction
is not None``) and one argument through the verifier. This loads ``projections/verification.py`` of
``--ref`` (``git show``) beside the working tree's, builds the same unrestricted key record in each,
and times both verdicts in interleaved rounds (the ratio is the median of the rounds' ratios), then
the working tree's verdict of a browser-restricted and a CIDR-restricted key against its own
unrestricted one. scripts/bench_verify.py measures the whole verification at 1,000,000 keys.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from projections import verification as current  # noqa: E402
from service.domain.restrictions import RequestFacts  # noqa: E402


def load_ref(ref: str):  # type: ignore[no-untyped-def]
    source = subprocess.run(["git", "show", f"{ref}:projections/verification.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="keyledger-ref-"))
    path = folder / "verification_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("verification_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def rounds_of(fns, rounds: int, number: int = 20_000) -> list[list[float]]:
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for out, fn in zip(times, fns, strict=True):
            out.append(timeit.timeit(fn, number=number) / number * 1e9)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="main")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    ref = load_ref(args.ref)
    key_id = os.urandom(16)
    old = ref.KeyRecord.of(key_id, ref.grant_of("vision", "Predict Search"), None, None)
    new = current.KeyRecord.of(key_id, current.grant_of("vision", "Predict Search"), None, None)
    browser = current.KeyRecord.of(key_id, current.restricted(
        current.grant_of("vision", "Predict Search"), current.restriction_text(
            {"browser": ["https://www.example.com", "https://*.example.org/*", "http://localhost:*"]})), None, None)
    server = current.KeyRecord.of(key_id, current.restricted(
        current.grant_of("vision", "Predict Search"), current.restriction_text(
            {"server": ["192.0.2.0/24", "2001:db8::/32", "203.0.113.0/24"]})), None, None)
    origin, address = RequestFacts(origin="https://shop.example.org"), RequestFacts(ip="203.0.113.77")
    old_verdict, new_verdict, now = ref.verdict, current.verdict, 1.0e9
    assert old_verdict(old, "Predict", None, now) == new_verdict(new, "Predict", None, now) == "VALID"
    assert new_verdict(browser, "Predict", None, now, origin) == new_verdict(server, "Predict", None, now, address) == "VALID"
    before, after = rounds_of((lambda: old_verdict(old, "Predict", None, now),
                               lambda: new_verdict(new, "Predict", None, now)), args.rounds)
    ratio = statistics.median(a / b for a, b in zip(after, before, strict=True))
    print(f"verdict of an unrestricted key: {statistics.median(after):.0f} ns, {args.ref}'s "
          f"{statistics.median(before):.0f} ns in the same rounds: ratio {ratio:.3f} "
          f"(quartiles {' – '.join(f'{q:.3f}' for q in statistics.quantiles([a / b for a, b in zip(after, before, strict=True)], n=4)[::2])}; "
          f"load {os.getloadavg()[0]:.2f})")
    plain, web, cidr = rounds_of((lambda: new_verdict(new, "Predict", None, now),
                                  lambda: new_verdict(browser, "Predict", None, now, origin),
                                  lambda: new_verdict(server, "Predict", None, now, address)), args.rounds)
    print(f"verdict of restricted keys against the unrestricted {statistics.median(plain):.0f} ns: browser "
          f"(3 patterns) {statistics.median(web):.0f} ns, +{statistics.median(w - p for w, p in zip(web, plain, strict=True)):.0f} ns; "
          f"server (3 CIDR blocks) {statistics.median(cidr):.0f} ns, "
          f"+{statistics.median(c - p for c, p in zip(cidr, plain, strict=True)):.0f} ns (load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
