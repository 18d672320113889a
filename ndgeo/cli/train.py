"""``ndgeo train``, ``ndgeo formula`` and ``ndgeo evaluate``."""

from __future__ import annotations

import typer

from ndgeo.cli._app import app
from ndgeo.errors import NdgeoError


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def train() -> None:
    """Train an ND classifier on labeled scenes (not yet implemented)."""
    raise NdgeoError("`ndgeo train` is not implemented yet")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def formula() -> None:
    """Print a model's learned indices as formulas (not yet implemented)."""
    raise NdgeoError("`ndgeo formula` is not implemented yet")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def evaluate() -> None:
    """Evaluate a model on a labeled scene (not yet implemented)."""
    raise NdgeoError("`ndgeo evaluate` is not implemented yet")


_ = typer
