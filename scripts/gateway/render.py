#!/usr/bin/env python3
"""Render nginx.conf.template into PREFIX/nginx.conf (with the include beside it).

    python scripts/gateway/render.py PREFIX LISTEN KEYLEDGER UPSTREAM
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent


def render(prefix: Path, listen: str, keyledger: str, upstream: str) -> Path:
    prefix = prefix.resolve()
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    text = Template((HERE / "nginx.conf.template").read_text()).safe_substitute(
        PREFIX=str(prefix), LISTEN=listen, KEYLEDGER=keyledger, UPSTREAM=upstream)
    config = prefix / "nginx.conf"
    config.write_text(text)
    shutil.copy(HERE / "keyledger_protected.conf", prefix / "keyledger_protected.conf")
    return config


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    print(render(Path(sys.argv[1]), *sys.argv[2:]))
