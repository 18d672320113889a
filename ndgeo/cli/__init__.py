"""The ``ndgeo`` command line: Typer commands that parse options, call the library and print.

Each submodule registers its commands on :data:`app`; no logic lives here.
"""

from ndgeo.cli import apply, data, denoise, train  # noqa: F401  (registers commands)
from ndgeo.cli.app import app, main

__all__ = ["app", "main"]
