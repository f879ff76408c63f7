#!/usr/bin/env python3
"""The PostgreSQL outage drill, with figures: forward-auth before, during and after a database outage.

    .venv/bin/python scripts/fault_outage.py [--outage 20] [--baseline 10] [--after 15]
                                             [--instances 3] [--workers 2]
                                             [--verify-every 0.02] [--write-every 0.1] [--json FILE]

On a throwaway PostgreSQL cluster of its own (initdb into a temporary folder, a free port; never
the machine's own cluster, which it does not touch), ``--instances`` ``keyledger serve`` processes
share one schema. Each answers forward-auth at a steady pace (``GET /v2/auth/check`` with an API
key, ``POST /v2/verify``, a legacy access token now and then) and takes key creations. After the
baseline, PostgreSQL is stopped (``pg_ctl stop -m fast``) for ``--outage`` seconds and started
again; the load goes on for ``--after`` seconds. Printed: per instance, p50/p99/max of forward-auth
in the baseline (the same run, before the outage), during the outage and after it, with how many
answers said the index may be stale, how many were 5xx or unanswered; the writes' answers per phase
(2xx / 503 / other) and latency; and whether every acknowledged write is in the store. The drill is
``tests/e2e/outage_drill.py``, the one ``tests/e2e/test_postgres_outage.py`` asserts on.

Needs the test extras (``BOOTSTRAP_EXTRAS=test``) and PostgreSQL's server binaries (initdb, pg_ctl);
as root, the cluster runs as the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import ServerProcess  # noqa: E402
from tests.e2e.outage_drill import Drill  # noqa: E402
from tests.throwaway_postgres import ThrowawayPostgres, unavailable_reason  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=20.0, help="seconds PostgreSQL stays down")
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of load before the outage")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after PostgreSQL is back")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per instance")
    parser.add_argument("--verify-every", type=float, default=0.02, help="seconds between one instance's verifications")
    parser.add_argument("--write-every", type=float, default=0.1, help="seconds between one instance's writes")
    parser.add_argument("--json", type=Path, help="also write every sample and the timeline to this file")
    parser.add_argument("--keep", action="store_true", help="keep the instances' logs and data (kept anyway on failure)")
    args = parser.parse_args()
    if reason := unavailable_reason():
        print(f"fault_outage: cannot make a throwaway PostgreSQL cluster: {reason}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="keyledger-outage-"))
    servers: list[ServerProcess] = []

    def start_server(data_dir: Path, *, name: str, env: dict[str, str], args: list[str], workers: int = 1,
                     **_: object) -> ServerProcess:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(data_dir=data_dir, log_path=work / f"{name}.log", workers=workers,
                               extra_env=dict(env), args=list(args))
        servers.append(server)
        return server.start()

    postgres = ThrowawayPostgres()
    status = 1
    try:
        postgres.start()
        print(f"throwaway PostgreSQL on port {postgres.port} ({postgres.root}); logs in {work}", flush=True)
        drill = Drill(postgres, work, start_server, instances=args.instances, workers=args.workers,
                      verify_every=args.verify_every, write_every=args.write_every)
        drill.prepare()
        drill.run(baseline=args.baseline, outage=args.outage, after=args.after,
                  progress=lambda text: print(text, flush=True))
        print(drill.report())
        unstored = drill.unstored()
        print(f"writes acknowledged: {len(drill.created)}; missing from the store: {len(unstored)}"
              + (f" ({', '.join(unstored[:5])})" if unstored else ""))
        slow = [s for s in drill.verifications() if s.seconds > 1.0 or s.status != 200]
        print(f"verifications over 1 s or not 200: {len(slow)}")
        if args.json:
            args.json.write_text(json.dumps({"marks": drill.marks, "samples": [asdict(s) for s in drill.samples]}))
        status = 0 if not unstored and not slow else 1
    finally:
        for server in servers:
            try:
                server.stop(timeout=10)
            except BaseException as error:  # noqa: BLE001 - stop the others anyway
                print(f"could not stop {server.log_path.name}: {error!r}", file=sys.stderr)
        postgres.remove()
        if status == 0 and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and data kept in {work}")
    return status


if __name__ == "__main__":
    sys.exit(main())
