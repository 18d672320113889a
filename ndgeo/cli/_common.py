"""Option parsing shared by several commands (GDAL-style KEY=VALUE lists, band lists)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ndgeo.cli._app import err_console
from ndgeo.errors import NdgeoError


def parse_key_values(items: list[str] | None, option: str = "--co") -> dict[str, str]:
    """Parse repeatable ``KEY=VALUE`` options (``--co``, ``--config``) into a dict."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NdgeoError(f"{option} expects KEY=VALUE, got {item!r}")
        out[key.strip().upper()] = value.strip()
    return out


def parse_list(text: str | None) -> list[str] | None:
    """Split a comma-separated option value ('B04,B08' or '4,8'); None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts or None


@contextmanager
def pixel_progress(description: str, *, quiet: bool):
    """A rich progress bar fed by the engine's ``progress(done, total)`` callback (pixels/s)."""
    if quiet:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=None, rate="")
        start = time.perf_counter()

        def update(done: int, total: int) -> None:
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{done / elapsed / 1e6:.2f} Mpx/s")

        yield update


def print_json(data: object) -> None:
    """Machine-readable output on stdout (no rich markup)."""
    print(json.dumps(data, indent=2, default=str))
