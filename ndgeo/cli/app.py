"""The Typer application, its global options and the one place where errors become exit codes."""

from __future__ import annotations

import logging
import signal
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


#: Global flags, accepted before or after the subcommand (``ndgeo apply -q ...``).
GLOBAL_FLAGS = ("-q", "--quiet", "-v", "-vv", "--verbose", "--debug")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``docker stop``, batch schedulers) or SIGHUP (the terminal or SSH
    session went away): unwinds like Ctrl-C, so every temporary output is removed, then exits
    128 + the signal number (143, 129)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = int(signum)


def _on_signal(signum, frame) -> None:
    raise Terminated(signum)


class _Group(TyperGroup):
    """Turns user errors into one red line and exit code 2 (a traceback only with --debug)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Move global flags given after the subcommand to the front."""
        if ctx.parent is None:
            end = args.index("--") if "--" in args else len(args)
            flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
            rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
            args = flags + rest + args[end:]
        return super().parse_args(ctx, args)

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
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            from ndgeo.io.writer import PUBLISHED

            written = (f"only {', '.join(str(p) for p in PUBLISHED)} had been written (complete)"
                       if PUBLISHED else "no output was written")
            err_console.print(f"[bold red]{'terminated' if terminated else 'interrupted'}[/]: "
                              f"{written}", highlight=False)
            ctx.exit(128 + exc.signum if terminated else 130)


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
    """Console-script entry point (SIGTERM and SIGHUP are handled like Ctrl-C)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    app(prog_name="ndgeo")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
