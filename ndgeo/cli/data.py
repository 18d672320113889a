"""``ndgeo sample-data`` and ``ndgeo demo``."""

from __future__ import annotations

from ndgeo.cli._app import app
from ndgeo.errors import NdgeoError


@app.command("sample-data")
def sample_data() -> None:
    """Regenerate the sample scene (not yet implemented)."""
    raise NdgeoError("`ndgeo sample-data` is not implemented yet")
