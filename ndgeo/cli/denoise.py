"""``ndgeo denoise train|apply|evaluate``."""

from __future__ import annotations

import typer

from ndgeo.cli._app import app
from ndgeo.errors import NdgeoError

denoise_app = typer.Typer(help="Train and apply WNE-wrapped denoisers.", no_args_is_help=True)
app.add_typer(denoise_app, name="denoise")

_CTX = {"ignore_unknown_options": True, "allow_extra_args": True}


@denoise_app.command("train", context_settings=_CTX)
def denoise_train() -> None:
    """Train a denoiser (not yet implemented)."""
    raise NdgeoError("`ndgeo denoise train` is not implemented yet")


@denoise_app.command("apply", context_settings=_CTX)
def denoise_apply() -> None:
    """Denoise a GeoTIFF chunk-wise (not yet implemented)."""
    raise NdgeoError("`ndgeo denoise apply` is not implemented yet")


@denoise_app.command("evaluate", context_settings=_CTX)
def denoise_evaluate() -> None:
    """Noise-mismatch diagnostic (not yet implemented)."""
    raise NdgeoError("`ndgeo denoise evaluate` is not implemented yet")
