"""Option parsing shared by several commands (GDAL-style KEY=VALUE lists, band lists)."""

from __future__ import annotations

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
