"""``ndgeo apply`` and ``ndgeo index``."""

from __future__ import annotations

from ndgeo.cli._app import app
from ndgeo.errors import NdgeoError


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def apply() -> None:
    """Apply a model chunk-wise to a GeoTIFF (not yet implemented)."""
    raise NdgeoError("`ndgeo apply` is not implemented yet")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def index() -> None:
    """Compute catalogue or exported indices chunk-wise (not yet implemented)."""
    raise NdgeoError("`ndgeo index` is not implemented yet")
