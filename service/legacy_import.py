"""``keyledger import-legacy FILE``: existing apps come over from a JSON Lines file.

One app per line: ``{"app_id", "app_name", "owner_email", "owner_name", "client_id",
"client_secret"}``. Each line is imported whole or not at all (``Keyledger.import_legacy_app``
saves the owner, the app, its auto-generated ``All`` key and its legacy client in one
transaction); a line that cannot be imported is reported with its number and skipped; a line
already imported is counted as present, so running the same file twice creates nothing new.
Nothing of a line is ever echoed: it holds a client secret.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from service.composition import System
from service.credentials import redact
from service.domain.actors import Actor
from service.domain.errors import KeyledgerError

PROGRESS_EVERY = 2.0  # seconds between progress lines when not on a terminal


@dataclass
class ImportSummary:
    path: str
    created: int = 0
    present: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lines(self) -> int:
        return self.created + self.present + len(self.refused)

    def sentence(self) -> str:
        text = (f"{self.path}: {self.created} created, {self.present} already present, "
                f"{len(self.refused)} refused ({self.lines} apps in {self.seconds:.1f} s)")
        if not self.created and not self.refused:
            text += "; nothing new to import"
        return text


class Progress:
    """A bar on a terminal, a line every few seconds elsewhere (logs, CI)."""

    def __init__(self, out: TextIO | None, total: int) -> None:
        self.out = out
        self.total = total
        self.tty = bool(out is not None and out.isatty())
        self.last = 0.0

    def show(self, done: int, summary: ImportSummary, final: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if not final and now - self.last < (0.1 if self.tty else PROGRESS_EVERY):
            return
        self.last = now
        counts = f"{done}/{self.total} lines: {summary.created} created, {summary.present} present, " \
                 f"{len(summary.refused)} refused"
        if self.tty:
            filled = int(30 * done / self.total) if self.total else 30
            self.out.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {counts}" + ("\n" if final else ""))
        else:
            self.out.write(f"import-legacy: {counts}\n")
        self.out.flush()


def import_file(system: System, path: str | Path, *, progress: TextIO | None = None) -> ImportSummary:
    by = Actor.system("import-legacy")
    summary = ImportSummary(str(path))
    started = time.perf_counter()
    with open(path, "rb") as counting:
        total = sum(1 for line in counting if line.strip())
    bar = Progress(progress, total)
    done = 0
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            done += 1
            outcome = _import_line(system, raw, by)
            if outcome in ("created", "present"):
                setattr(summary, outcome, getattr(summary, outcome) + 1)
            else:
                summary.refused.append((number, outcome))
                if progress is not None:
                    progress.write(("\n" if bar.tty else "") + f"line {number}: refused: {outcome}\n")
            bar.show(done, summary)
    system.after_command()
    summary.seconds = time.perf_counter() - started
    bar.show(done, summary, final=True)
    return summary


def _import_line(system: System, raw: bytes, by: Actor) -> str:
    try:
        record = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))  # a BOM on the first line
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "not a JSON object (or not UTF-8)"
    if not isinstance(record, dict):
        return "not a JSON object"
    try:
        return system.keys_app.import_legacy_app(record, by=by)
    except KeyledgerError as error:
        return redact(f"{error.code}: {error.message}")
