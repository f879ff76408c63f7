#!/usr/bin/env python3
"""Render nginx.conf.template into PREFIX/nginx.conf (with the include beside it), or with
--caddy Caddyfile.template into PREFIX/Caddyfile.

    python scripts/gateway/render.py [--caddy] PREFIX LISTEN KEYLEDGER UPSTREAM
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


def render_caddy(prefix: Path, listen: str, keyledger: str, upstream: str) -> Path:
    prefix = prefix.resolve()
    (prefix / "data").mkdir(parents=True, exist_ok=True)
    text = Template((HERE / "Caddyfile.template").read_text()).safe_substitute(
        PREFIX=str(prefix), LISTEN=listen, KEYLEDGER=keyledger, UPSTREAM=upstream)
    config = prefix / "Caddyfile"
    config.write_text(text)
    return config


if __name__ == "__main__":
    args = sys.argv[1:]
    caddy = args[:1] == ["--caddy"]
    args = args[1:] if caddy else args
    if len(args) != 4:
        raise SystemExit(__doc__)
    print((render_caddy if caddy else render)(Path(args[0]), *args[1:]))
