"""The Typer application, its global options and the one place where errors become exit codes."""

from __future__ import annotations

import logging
import sys

import click
import rasterio.errors
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ndgeo import __version__
from ndgeo.errors import NdgeoError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

#: Errors that come from the user's input, not from a bug: one line, exit code 2.
USER_ERRORS = (NdgeoError, FileNotFoundError, PermissionError, rasterio.errors.RasterioError)


class _Group(TyperGroup):
    """Turns user errors into one red line and exit code 2 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            # rasterio reports a block that fails to decode as "Read failed. See previous
            # exception for details."; GDAL's own message (file, band, block) is the cause.
            if isinstance(exc, rasterio.errors.RasterioError) and exc.__cause__ is not None:
                exc = exc.__cause__
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            ctx.exit(2)
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            ctx.exit(130)


app = typer.Typer(
    cls=_Group,
    name="ndgeo",
    help="Learned normalized-difference spectral indices and WNE denoisers for GeoTIFFs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"ndgeo {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summaries."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Learned normalized-difference spectral indices and WNE denoisers for GeoTIFFs."""
    ctx.obj = {"quiet": quiet, "verbose": verbose, "debug": debug}
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def is_quiet(ctx: typer.Context) -> bool:
    """True when -q was given on the command line (before the subcommand)."""
    root = ctx.find_root()
    return bool((root.obj or {}).get("quiet"))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ndgeo")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
