"""The one registry of CLI options shared by several commands, and their parsing.

Typer needs one parameter per option in each command's signature; the definitions live here
(as rasterio's ``rio/options.py``), so a flag is spelled, defaulted and documented once.
"""

from __future__ import annotations

import json

import typer

from ndgeo.config import DenoiseConfig
from ndgeo.errors import NdgeoError

OUTPUT = "-o", "--output"

MODEL = typer.Argument(..., help="Model file written by `ndgeo train`.")
IMAGE = typer.Argument(..., help="Input raster (any GDAL dataset name, or a STAC Item .json; any size), or a glob pattern such as 'scenes/*.tif' for batch mode (with -o OUTDIR/).")
BATCH_OUTPUT = typer.Option(..., *OUTPUT, help="Output GeoTIFF; in batch mode the directory OUTDIR/ that gets one <scene>.tif per input.")
BAND_NAMES = typer.Option(None, "--band-names", help="Name every image band (comma-separated), overriding its descriptions.")
SENSOR = typer.Option(None, "--sensor", help="Sensor preset naming the bands: sentinel-2, landsat-8, landsat-9, landsat-7, generic.")
GRID = typer.Option(None, "--grid", help="STAC Item input: the band whose grid the others are resampled onto (asset key or band name, e.g. B04); default the finest.")
NODATA = typer.Option(None, "--nodata", help="Input nodata value, overriding the file's.")
SCALE = typer.Option(None, "--scale", help="Physical value = raw x SCALE + OFFSET for every band, overriding the file's GDAL scale metadata (e.g. 0.0001 for reflectance x 10000).")
OFFSET = typer.Option(None, "--offset", help="Offset of that conversion, overriding the file's metadata (e.g. -0.1 with --scale 0.0001 for Sentinel-2 L2A from processing baseline 04.00 when the file does not declare it).")
CHUNK = typer.Option(1024, "--chunk-size", help="Pixels per side of a chunk (I/O unit), rounded to the file's tiling.")
SCHEDULER = typer.Option(None, "--scheduler", help="dask.distributed scheduler address (tcp://HOST:PORT); default: local threads.")
WORKERS = typer.Option(None, "--workers", help="Start a local cluster of N worker processes (pays off only with more cores than the threads default uses; see README).")
TIMEOUT = typer.Option(30.0, "--timeout", help="Seconds to wait for a dask scheduler to connect and answer.")
CO = typer.Option(None, "--co", help="GDAL creation option KEY=VALUE (repeatable); default DEFLATE for class maps, ZSTD level 1 for float outputs, e.g. --co COMPRESS=DEFLATE for readers without ZSTD.")
CONFIG = typer.Option(None, "--config", help="GDAL configuration option KEY=VALUE for reading/writing, set on every worker (repeatable).")
COG = typer.Option(False, "--cog", help="Write a Cloud-Optimized GeoTIFF (with overviews).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace the output if it exists.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the plan (chunks, output profile, memory estimate) as JSON and exit.")
PRECISION = typer.Option(3, "--precision", help="Decimal places of printed coefficients.")
THRESHOLD = typer.Option(0.05, "--threshold", help="Drop terms below this fraction of an index's largest weight (the dropped share is reported).")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")
SEED = typer.Option(0, "--seed", help="Random seed.")
DENOISE_DEPTH = typer.Option(None, "--depth", help="Backbone depth (layers or transformer blocks); default: the backbone's own (dncnn 8, transformer 4, ne-arch 8).")
DENOISE_WIDTH = typer.Option(None, "--width", help="Backbone channels (transformer: embedding dim); default: the backbone's own (dncnn 32, transformer 32, ne-arch 32).")
USER_BACKBONE = typer.Option(None, "--backbone", help="The denoiser file's user backbone class pkg.module:Class, named again to rebuild it: this imports and runs that module (a file alone never does).")
DENOISE_DEFAULTS = DenoiseConfig()


def parse_key_values(items: list[str] | None, option: str = "--co") -> dict[str, str]:
    """Parse repeatable ``KEY=VALUE`` options (``--co``, ``--config``) into a dict."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NdgeoError(f"{option} expects KEY=VALUE, got {item!r}")
        out[key.strip().upper()] = value.strip()
    return out


def parse_backbone_args(text: str | None) -> dict | None:
    """``--backbone-args``: a JSON object of constructor arguments; None stays None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise NdgeoError(f"--backbone-args is not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise NdgeoError(f"--backbone-args must be a JSON object like '{{\"width\": 32}}', got "
                         f"{text!r}")
    return value


def parse_list(text: str | None) -> list[str] | None:
    """Split a comma-separated option value ('B04,B08' or '4,8'); None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts or None


def execution(chunk_size: int, scheduler: str | None, workers: int | None,
              config: list[str] | None, timeout: float = 30.0):
    """The command's one :class:`ndgeo.engine.Execution` from its options."""
    from ndgeo.engine import Execution

    return Execution(chunk_size=chunk_size, scheduler=scheduler, workers=workers,
                     gdal_env=parse_key_values(config, "--config") or None, timeout=timeout)
