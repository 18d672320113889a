"""``ndgeo denoise train|apply|evaluate``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ndgeo.cli import options as opt
from ndgeo.cli.app import app, console, is_quiet
from ndgeo.cli.apply import run_job
from ndgeo.cli.options import parse_backbone_args, parse_list
from ndgeo.cli.present import print_json, step_progress
from ndgeo.cli.train import given, warn
from ndgeo.config import SIGMA_RULE, DenoiseConfig
from ndgeo.errors import NdgeoError

denoise_app = typer.Typer(help="Train and apply WNE-wrapped denoisers.", no_args_is_help=True)
app.add_typer(denoise_app, name="denoise")


@denoise_app.command("train")
def denoise_train(
    ctx: typer.Context,
    images: list[str] = typer.Argument(..., help="Clean training rasters (same band names; any GDAL dataset name)."),
    out: Path = typer.Option(..., *opt.OUTPUT, help="Denoiser file to write (.safetensors)."),
    backbone: str = typer.Option("dncnn", "--backbone", help="dncnn (standard: bias + BatchNorm), dncnn-bf (bias-free, nearly scale-equivariant already), transformer (window attention), ne-arch (equivariant by construction, never wrapped), or your own class pkg.module:Class built as Class(bands, **ARGS) (imports and runs that module)."),
    backbone_args: str | None = typer.Option(None, "--backbone-args", help="JSON object of backbone constructor arguments, e.g. '{\"width\": 32}' (recorded in the model file)."),
    wne: bool = typer.Option(True, "--wne/--no-wne", help="Wrap the backbone in WNE (default) or train it unwrapped (baseline)."),
    pooling: str = typer.Option("joint", "--pooling", help="WNE statistics over all bands jointly (joint, the paper's) or per band (band)."),
    sigma: str = typer.Option(..., "--sigma", help=f"Training noise std: {SIGMA_RULE}."),
    patch: int = typer.Option(DenoiseConfig.patch, "--patch", help="Training patch size in pixels."),
    steps: int = typer.Option(DenoiseConfig.steps, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(DenoiseConfig.batch_size, "--batch-size", help="Patches per step."),
    lr: float = typer.Option(DenoiseConfig.lr, "--lr", help="Adam learning rate (halved at 50% and 75% of the steps)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (patches, noise, weights)."),
    depth: int | None = opt.DENOISE_DEPTH,
    width: int | None = opt.DENOISE_WIDTH,
    window: int | None = typer.Option(None, "--window", help="Transformer attention window."),
    bands: str | None = opt.BAND_NAMES,
    sensor: str | None = opt.SENSOR,
    nodata: float | None = opt.NODATA,
    overwrite: bool = opt.OVERWRITE,
    device: str = opt.DEVICE,
) -> None:
    """Train a denoiser on clean patches with synthetic Gaussian noise."""
    from ndgeo.checkpoint import check_model_name, save_model
    from ndgeo.io.raster import open_raster
    from ndgeo.io.writer import check_output
    from ndgeo.training.denoiser import train_denoiser

    if backbone == "ne-arch" and given(ctx, "wne", "pooling"):
        warn(f"--backbone ne-arch is equivariant by construction and never wrapped: "
             f"{', '.join(given(ctx, 'wne', 'pooling'))} ignored")
    if not wne and given(ctx, "pooling"):
        raise NdgeoError("--pooling sets the WNE statistics; with --no-wne there are none")
    check_output(out, overwrite=overwrite, inputs=images)
    check_model_name(out)
    infos = [open_raster(p, bands=parse_list(bands), sensor=sensor, nodata=nodata) for p in images]
    args = parse_backbone_args(backbone_args)
    config = DenoiseConfig(
        backbone=backbone, sigma=sigma, wne=wne, pooling=pooling, patch=patch, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, depth=depth, width=width, window=window,
        device=device,
    )
    quiet = is_quiet(ctx)
    with step_progress(quiet) as progress:
        model, meta = train_denoiser(infos, config, backbone_args=args, progress=progress)
    save_model(out, model, meta, overwrite=overwrite)
    if not quiet:
        console.print(
            f"wrote [bold]{out}[/] ({backbone}{' + WNE' if meta['wne'] else ''}, sigma "
            f"{meta['sigma']:.4g}, final rmse {meta['training']['final_rmse']:.4g}, halo "
            f"{meta['halo'] if meta['halo'] is not None else 'none (global)'} px, "
            f"{meta['training']['seconds']:.1f} s)"
        )


@denoise_app.command("apply")
def denoise_apply(
    ctx: typer.Context,
    denoiser: Path = typer.Argument(..., help="Denoiser file written by `ndgeo denoise train`."),
    image: str = opt.IMAGE,
    out: str = opt.BATCH_OUTPUT,
    dtype: str = typer.Option("same", "--dtype", help="Output pixel type: same (input type, rounded and clipped) or e.g. float32 (exact values)."),
    device: str = opt.DEVICE,
    bands: str | None = opt.BAND_NAMES,
    sensor: str | None = opt.SENSOR,
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
    backbone: str | None = opt.USER_BACKBONE,
) -> None:
    """Denoise IMAGE chunk-wise with scene statistics: equal to whole-scene denoising (a global
    backbone runs on the whole scene, up to 1024 x 1024 px, and is refused above). IMAGE may be
    a glob pattern with -o OUTDIR/: batch mode, as in `ndgeo apply`."""
    from ndgeo.checkpoint import load_denoiser
    from ndgeo.jobs import denoise_job

    load_denoiser(denoiser, backbone=backbone)  # DENOISER first: "MODEL comes first"
    job = denoise_job(denoiser, out_dtype=dtype, device=device, backbone=backbone,
                      chunk_size=chunk_size, bands=parse_list(bands), sensor=sensor,
                      nodata=nodata)
    run_job(ctx, job, image, out, dict(scheduler=scheduler, workers=workers, config=config,
                                       timeout=timeout),
            co=co, cog=cog, overwrite=overwrite, dry_run=dry_run, what="denoise")


@denoise_app.command("evaluate")
def denoise_evaluate(
    denoiser: Path = typer.Argument(..., help="Denoiser file written by `ndgeo denoise train`."),
    image: str = typer.Argument(..., help="A clean raster (read into memory: use a crop of large scenes)."),
    sigmas: str = typer.Option("0.5x,1x,2x,5x", "--sigmas", help="Test noise levels, comma-separated: Sx = S x the training sigma, S% of the denoiser's data range, or data units."),
    draws: int = typer.Option(3, "--draws", help="Noise draws per level (PSNR averaged)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    as_json: bool = opt.JSON,
    device: str = opt.DEVICE,
    bands: str | None = opt.BAND_NAMES,
    sensor: str | None = opt.SENSOR,
    nodata: float | None = opt.NODATA,
    backbone: str | None = opt.USER_BACKBONE,
) -> None:
    """Noise-mismatch diagnostic: PSNR before and after denoising at several noise levels."""
    from ndgeo.checkpoint import load_denoiser
    from ndgeo.io.raster import open_raster
    from ndgeo.training.denoiser import evaluate_denoiser

    load_denoiser(denoiser, backbone=backbone)  # DENOISER first: "MODEL comes first"
    info = open_raster(image, bands=parse_list(bands), sensor=sensor, nodata=nodata)
    levels = parse_list(sigmas)
    if not levels:
        raise NdgeoError(f"--sigmas needs at least one level, got {sigmas!r}")
    result = evaluate_denoiser(denoiser, info, levels, draws=draws, seed=seed, device=device,
                               backbone=backbone)
    if as_json:
        print_json(result)
        return
    kind = f"{result['backbone']}{' + WNE' if result['wne'] else ''}"
    table = Table(title=f"{kind}, sigma_train {result['train_sigma']:.4g}, peak "
                        f"{result['peak']:.4g}, {draws} draws")
    for col in ("sigma", "data units", "x train", "input PSNR", "output PSNR", "gain"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        table.add_row(row["sigma"], f"{row['sigma_data']:.4g}", f"{row['factor']:.2f}",
                      f"{row['input_psnr']:.2f}", f"{row['output_psnr']:.2f}",
                      f"{row['output_psnr'] - row['input_psnr']:+.2f}")
    console.print(table)
