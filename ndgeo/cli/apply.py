"""``ndgeo apply`` and ``ndgeo index``: chunk-wise outputs over GeoTIFFs of any size."""

from __future__ import annotations

from pathlib import Path

import typer

from ndgeo.cli._app import app, console, is_quiet
from ndgeo.cli._common import parse_key_values, parse_list, pixel_progress, print_json
from ndgeo.raster import open_raster
from ndgeo.writer import check_output

_BANDS = typer.Option(None, "--band-names", help="Name every image band (comma-separated), overriding its descriptions; as in `ndgeo train`.")
_SENSOR = typer.Option(None, "--sensor", help="Sensor preset naming the bands: sentinel-2, landsat-8, landsat-7, generic.")
_NODATA = typer.Option(None, "--nodata", help="Input nodata value, overriding the file's.")
_SCALE = typer.Option(None, "--scale", help="Physical value = raw x SCALE + OFFSET for every band, overriding the file's GDAL scale metadata (e.g. 0.0001 for reflectance x 10000).")
_OFFSET = typer.Option(None, "--offset", help="Offset of that conversion, overriding the file's metadata (e.g. -0.1 with --scale 0.0001 for Sentinel-2 L2A from processing baseline 04.00 when the file does not declare it).")
_CHUNK = typer.Option(1024, "--chunk-size", help="Pixels per side of a dask chunk (I/O unit), rounded to the file's tiling.")
_SCHED = typer.Option(None, "--scheduler", help="dask.distributed scheduler address (tcp://HOST:PORT); default: local threads.")
_WORKERS = typer.Option(None, "--workers", help="Start a local cluster of N worker processes.")
_CO = typer.Option(None, "--co", help="GDAL creation option KEY=VALUE (repeatable); default DEFLATE for class maps, ZSTD level 1 for float outputs, e.g. --co COMPRESS=DEFLATE for readers without ZSTD.")
_CONFIG = typer.Option(None, "--config", help="GDAL configuration option KEY=VALUE for reading/writing, set on every worker (repeatable).")
_COG = typer.Option(False, "--cog", help="Write a Cloud-Optimized GeoTIFF (with overviews).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace OUT if it exists.")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
_DRY = typer.Option(False, "--dry-run", help="Print the plan (chunks, output profile, memory estimate) as JSON and exit.")


def _run(ctx: typer.Context, processor, info, positions, out: Path, *, chunk_size, scheduler,
         workers, co, config, cog, overwrite, dry_run, what: str) -> None:
    from ndgeo import engine
    options = dict(
        chunk_size=chunk_size, scheduler=scheduler, workers=workers, overwrite=overwrite,
        cog=cog, creation_options=parse_key_values(co), dry_run=dry_run,
        gdal_env=parse_key_values(config, "--config") or None,
    )
    if dry_run:
        print_json(engine.run(processor, info, positions, out, **options))
        return
    # Validate everything (output, bands, options) before the progress bar: a refusal is one line.
    check_output(out, overwrite=overwrite)
    engine.run(processor, info, positions, out, **{**options, "dry_run": True})
    quiet = is_quiet(ctx)
    with pixel_progress(what, quiet=quiet) as progress:
        result = engine.run(processor, info, positions, out, progress=progress, **options)
    if not quiet:
        console.print(
            f"wrote [bold]{result.out_path}[/] ({result.windows} chunks, {result.skipped} all "
            f"nodata skipped, {result.pixels / max(result.seconds, 1e-9) / 1e6:.2f} Mpx/s, "
            f"{result.scheduler})"
        )


@app.command("apply")
def apply_cmd(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Model file written by `ndgeo train`."),
    image: Path = typer.Argument(..., help="Input GeoTIFF (any size)."),
    out: Path = typer.Option(..., "-o", "--output-file", help="Output GeoTIFF."),
    output: list[str] = typer.Option(["class"], "--output", help="What to write: class, proba, indices (repeatable or comma-separated; several are stacked as float32 bands)."),
    quantize: bool = typer.Option(False, "--quantize", help="Write probabilities as uint8 (value/250) instead of float32."),
    denoise: Path | None = typer.Option(None, "--denoise", help="Denoiser file (`ndgeo denoise train`) applied before the model, in the same pass."),
    batch_size: int = typer.Option(16384, "--batch-size", help="Pixels per model batch (compute unit); about 16k keeps a CPU batch in cache, GPUs may like more."),
    device: str = _DEVICE,
    scale: float | None = _SCALE,
    offset: float | None = _OFFSET,
    bands: str | None = _BANDS,
    sensor: str | None = _SENSOR,
    nodata: float | None = _NODATA,
    chunk_size: int = _CHUNK,
    scheduler: str | None = _SCHED,
    workers: int | None = _WORKERS,
    co: list[str] | None = _CO,
    config: list[str] | None = _CONFIG,
    cog: bool = _COG,
    overwrite: bool = _OVERWRITE,
    dry_run: bool = _DRY,
) -> None:
    """Apply a trained model chunk-wise to IMAGE and write class ids, probabilities or indices."""
    from ndgeo import apply as lib

    info = open_raster(image, bands=parse_list(bands), sensor=sensor, nodata=nodata,
                       scale=scale, offset=offset)
    if not dry_run:  # before the denoiser's statistics pass
        check_output(out, overwrite=overwrite)
    processor, positions = lib.model_processor(
        model, info, outputs=[o for item in output for o in parse_list(item) or []],
        batch_size=batch_size, device=device, quantize_proba=quantize, denoiser=denoise,
        chunk_size=chunk_size, compute_stats=not dry_run, scheduler=scheduler, workers=workers,
        gdal_env=parse_key_values(config, "--config") or None,
    )
    _run(ctx, processor, info, positions, out, chunk_size=chunk_size, scheduler=scheduler,
         workers=workers, co=co, config=config, cog=cog, overwrite=overwrite, dry_run=dry_run,
         what="apply")


@app.command("index")
def index_cmd(
    ctx: typer.Context,
    image: Path = typer.Argument(..., help="Input GeoTIFF (any size)."),
    out: Path = typer.Option(..., "-o", "--output-file", help="Output GeoTIFF (float32, one band per index)."),
    name: str | None = typer.Option(None, "--name", help="Catalogue indices (Awesome Spectral Indices / spyndex names), comma-separated, e.g. NDVI,NDWI."),
    formula: list[str] | None = typer.Option(None, "--formula", help="A formula NAME=EXPR over band names or ASI letters (repeatable); + - * / ** and parentheses only."),
    formula_file: Path | None = typer.Option(None, "--formula-file", help="JSON file from `ndgeo formula --format asi`."),
    scale: float | None = _SCALE,
    offset: float | None = _OFFSET,
    bands: str | None = _BANDS,
    sensor: str | None = _SENSOR,
    nodata: float | None = _NODATA,
    chunk_size: int = _CHUNK,
    scheduler: str | None = _SCHED,
    workers: int | None = _WORKERS,
    co: list[str] | None = _CO,
    config: list[str] | None = _CONFIG,
    cog: bool = _COG,
    overwrite: bool = _OVERWRITE,
    dry_run: bool = _DRY,
) -> None:
    """Compute catalogue or exported indices chunk-wise, without a model."""
    from ndgeo import apply as lib

    info = open_raster(image, bands=parse_list(bands), sensor=sensor, nodata=nodata,
                       scale=scale, offset=offset)
    processor, positions = lib.index_processor(
        info, names=parse_list(name) or [], formulas=formula or [], formula_file=formula_file,
    )
    _run(ctx, processor, info, positions, out, chunk_size=chunk_size, scheduler=scheduler,
         workers=workers, co=co, config=config, cog=cog, overwrite=overwrite, dry_run=dry_run,
         what="index")
