"""``ndgeo apply`` and ``ndgeo index``: chunk-wise outputs over rasters of any size."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ndgeo.cli import options as opt
from ndgeo.cli.app import app, console, err_console, is_quiet
from ndgeo.cli.options import parse_key_values, parse_list
from ndgeo.cli.present import pixel_progress, print_json
from ndgeo.errors import NdgeoError
from ndgeo.io.writer import publish_class_legend


def run_command(ctx: typer.Context, processor, info, positions, out: Path, execution, *,
                co, cog, overwrite, dry_run, what: str) -> None:
    """Plan (and with ``dry_run`` print) then run one engine job with a progress bar."""
    from ndgeo import engine
    from ndgeo.io.writer import check_output

    if not dry_run:
        check_output(out, overwrite=overwrite, inputs=[info.path, *processor.inputs()])
    options = dict(overwrite=overwrite, cog=cog, creation_options=parse_key_values(co))
    # Validate everything (output, bands, options) before the progress bar: a refusal is one line.
    plan = engine.plan(processor, info, positions, out, execution=execution, **options)
    if dry_run:
        print_json(plan)
        return
    quiet = is_quiet(ctx)
    with pixel_progress(what, quiet=quiet) as progress:
        result = engine.run(processor, info, positions, out, execution=execution,
                            progress=progress, **options)
    legend = publish_class_legend(result.out_path, getattr(processor, "classes", None))
    if not quiet:
        console.print(
            f"wrote [bold]{result.out_path}[/] ({result.windows} chunks, {result.skipped} all "
            f"nodata skipped, {result.pixels / max(result.seconds, 1e-9) / 1e6:.2f} Mpx/s, "
            f"{result.scheduler})" + (f" and its legend {', '.join(p.name for p in legend)}"
                                      if legend else "")
        )


def run_job(ctx: typer.Context, job, image: str, out: str, execution_options: dict, *, co,
            cog, overwrite, dry_run, what: str, before_run=None) -> None:
    """One scene (IMAGE a dataset name, OUT a file) or a batch (IMAGE a glob pattern or OUT a
    directory: ``OUTDIR/<scene>.tif``). ``before_run(processor, info, positions)`` may warn."""
    from ndgeo import batch

    if batch.is_batch(image, out):
        run_batch_command(ctx, job, image, out, execution_options, co=co, cog=cog,
                          overwrite=overwrite, dry_run=dry_run, what=what)
        return
    processor, info, positions, chunk = job.build(image)
    execution = opt.execution(chunk, **execution_options)
    if before_run is not None and not dry_run:
        before_run(processor, info, positions)
    run_command(ctx, processor, info, positions, out, execution, co=co, cog=cog,
                overwrite=overwrite, dry_run=dry_run, what=what)


def run_batch_command(ctx: typer.Context, job, image: str, out: str, execution_options: dict,
                      *, co, cog, overwrite, dry_run, what: str) -> None:
    """Batch mode (:mod:`ndgeo.batch`): one progress bar over all scenes, a line per failed
    scene, a summary; exit code 2 when any scene failed (the others are written)."""
    from ndgeo import batch

    scenes = batch.batch_scenes(image, out)
    execution = opt.execution(job.chunk_size, **execution_options)
    creation_options = parse_key_values(co)
    if dry_run:
        processor, info, positions, chunk = job.build(scenes[0][0])
        from ndgeo import engine

        plan = engine.plan(processor, info, positions, scenes[0][1],
                           execution=opt.execution(chunk, **execution_options),
                           overwrite=overwrite, cog=cog, creation_options=creation_options)
        print_json({"scenes": [{"input": i, "output": str(o),
                                "action": "skip (exists)" if o.exists() and not overwrite
                                else "write"} for i, o in scenes],
                    "execution": execution.describe(), "first_scene_plan": plan})
        return
    quiet = is_quiet(ctx)

    def report(scene: str, target: Path, error: str | None) -> None:
        if error is not None:
            err_console.print(f"[bold red]error:[/] {escape(scene)}: {escape(error)}",
                              highlight=False)

    with pixel_progress(f"{what} ({len(scenes)} scenes)", quiet=quiet) as progress:
        result = batch.run_batch(job, scenes, execution, overwrite=overwrite, cog=cog,
                                 creation_options=creation_options, progress=progress,
                                 on_scene=report)
    if not quiet:
        console.print(
            f"wrote {len(result.written)} of {len(scenes)} scenes to [bold]{out}[/] "
            f"({len(result.skipped)} already there, skipped; {len(result.failed)} failed; "
            f"{result.pixels / max(result.seconds, 1e-9) / 1e6:.2f} Mpx/s, {result.scheduler})"
        )
    if result.failed:
        raise NdgeoError(f"{len(result.failed)} of {len(scenes)} scenes failed (listed above); "
                         "the others were written, and a re-run does only what is missing")


@app.command("apply")
def apply_cmd(
    ctx: typer.Context,
    model: Path = opt.MODEL,
    image: str = opt.IMAGE,
    out: str = opt.BATCH_OUTPUT,
    products: list[str] = typer.Option(["class"], "--products", "-p", help="What to write: class, proba, indices, entropy, margin, contributions (linear heads: each index's term of the winning logit) (repeatable or comma-separated; several are stacked as float32 bands)."),
    quantize: bool = typer.Option(False, "--quantize", help="Write probabilities as uint8 (value/250) instead of float32 (proba output only)."),
    denoise: Path | None = typer.Option(None, "--denoise", help="Denoiser file (`ndgeo denoise train`) applied before the model, in the same pass."),
    backbone: str | None = opt.USER_BACKBONE,
    batch_size: int = typer.Option(16384, "--batch-size", help="Pixels per model batch (compute unit). CPU kernels take at most 4096 at a time (cache) and always compute 4096 (one GEMM shape, checked against torch), so smaller values only slow them; GPUs like 2^20 or more."),
    device: str = opt.DEVICE,
    scale: float | None = opt.SCALE,
    offset: float | None = opt.OFFSET,
    band_names: str | None = opt.BAND_NAMES,
    sensor: str | None = opt.SENSOR,
    grid: str | None = opt.GRID,
    nodata: float | None = opt.NODATA,
    chunk_size: int = opt.CHUNK,
    scheduler: str | None = opt.SCHEDULER,
    workers: int | None = opt.WORKERS,
    timeout: float = opt.TIMEOUT,
    co: list[str] | None = opt.CO,
    config: list[str] | None = opt.CONFIG,
    cog: bool = opt.COG,
    overwrite: bool = opt.OVERWRITE,
    dry_run: bool = opt.DRY_RUN,
) -> None:
    """Apply a trained model chunk-wise to IMAGE and write class ids, probabilities or indices.

    IMAGE may be a glob pattern ('scenes/*.tif') with -o OUTDIR/: batch mode, one output per
    scene (locally, or each scene on a worker with --workers/--scheduler); existing outputs are
    skipped, so a re-run resumes."""
    from ndgeo.checkpoint import classifier_inference
    from ndgeo.jobs import apply_job

    classifier_inference(model)  # MODEL first: swapped arguments get "MODEL comes first"
    if backbone is not None and denoise is None:
        raise NdgeoError("--backbone names the user backbone of a --denoise file; give --denoise")
    job = apply_job(model, outputs=[o for item in products for o in parse_list(item) or []],
                    batch_size=batch_size, device=device, quantize=quantize, denoise=denoise,
                    backbone=backbone, chunk_size=chunk_size, bands=parse_list(band_names),
                    sensor=sensor, nodata=nodata, scale=scale, offset=offset, grid=grid)
    run_job(ctx, job, image, out, dict(scheduler=scheduler, workers=workers, config=config,
                                       timeout=timeout),
            co=co, cog=cog, overwrite=overwrite, dry_run=dry_run, what="apply")


@app.command("index")
def index_cmd(
    ctx: typer.Context,
    image: str = opt.IMAGE,
    out: str = opt.BATCH_OUTPUT,
    name: str | None = typer.Option(None, "--name", help="Catalogue indices (Awesome Spectral Indices / spyndex names), comma-separated, e.g. NDVI,NDWI."),
    formula: list[str] | None = typer.Option(None, "--formula", help="A formula NAME=EXPR over band names or ASI letters (repeatable); + - * / ** and parentheses only."),
    formula_file: Path | None = typer.Option(None, "--formula-file", help="JSON file from `ndgeo formula --format asi`."),
    scale: float | None = opt.SCALE,
    offset: float | None = opt.OFFSET,
    band_names: str | None = opt.BAND_NAMES,
    sensor: str | None = opt.SENSOR,
    grid: str | None = opt.GRID,
    nodata: float | None = opt.NODATA,
    chunk_size: int = opt.CHUNK,
    scheduler: str | None = opt.SCHEDULER,
    workers: int | None = opt.WORKERS,
    timeout: float = opt.TIMEOUT,
    co: list[str] | None = opt.CO,
    config: list[str] | None = opt.CONFIG,
    cog: bool = opt.COG,
    overwrite: bool = opt.OVERWRITE,
    dry_run: bool = opt.DRY_RUN,
) -> None:
    """Compute catalogue or exported indices chunk-wise, without a model (IMAGE may be a glob
    pattern with -o OUTDIR/: batch mode, as in `ndgeo apply`)."""
    from ndgeo.jobs import index_job

    job = index_job(names=parse_list(name) or [], formulas=formula or [],
                    formula_file=formula_file, chunk_size=chunk_size,
                    bands=parse_list(band_names), sensor=sensor, nodata=nodata, scale=scale,
                    offset=offset, grid=grid)

    def warn(processor, info, positions) -> None:
        note = unscaled_warning(info, processor, positions)
        if note:
            err_console.print(f"[yellow]warning:[/] {note}", highlight=False)

    run_job(ctx, job, image, out, dict(scheduler=scheduler, workers=workers, config=config,
                                       timeout=timeout),
            co=co, cog=cog, overwrite=overwrite, dry_run=dry_run, what="index", before_run=warn)


#: Side of the windows :func:`unscaled_warning` reads (three of them at most).
_SAMPLE_SIDE = 256


def unscaled_warning(info, processor, positions) -> str | None:
    """A warning when indices that depend on the data's scale (additive constants: EVI, SAVI,
    ...) meet bands that look unscaled (above 2 in physical units, e.g. reflectance x 10000),
    from a few windows of the image (top left, centre, bottom right); None otherwise."""
    import numpy as np
    import rasterio.windows

    from ndgeo.formula import evaluate
    from ndgeo.io.raster import open_dataset, read_block, to_physical

    side_h, side_w = min(_SAMPLE_SIDE, info.height), min(_SAMPLE_SIDE, info.width)
    corners = {(0, 0), ((info.height - side_h) // 2, (info.width - side_w) // 2),
               (info.height - side_h, info.width - side_w)}
    parts = []
    with open_dataset(info.path) as src:
        for row, col in sorted(corners):
            window = rasterio.windows.Window(col, row, side_w, side_h)
            raw, valid = read_block(src, info, positions, window)
            parts.append(to_physical(raw, processor.scaling)[:, valid])
    values = np.concatenate(parts, axis=1).astype(np.float64)
    values = values[:, np.isfinite(values).all(axis=0)]
    if values.size == 0 or float(values.max()) <= 2.0:
        return None
    arrays = {var: values[i] for i, var in enumerate(processor.variables)}
    half = {var: 0.5 * v for var, v in arrays.items()}
    dependent = []
    with np.errstate(all="ignore"):
        for name, text in processor.expressions:
            a = evaluate(text, arrays, processor.constants)
            b = evaluate(text, half, processor.constants)
            if not np.allclose(a, b, rtol=1e-3, atol=1e-6, equal_nan=True):
                dependent.append(name)
    if not dependent:
        return None
    return (f"{', '.join(dependent)} depend(s) on the data's scale (additive constants) but the "
            f"bands reach {float(values.max()):g} here, as reflectance x 10000 does; if they "
            "are scaled reflectance, give --scale 0.0001 (and --offset if the product has one)")
