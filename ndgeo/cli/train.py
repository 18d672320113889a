"""``ndgeo train``, ``ndgeo formula`` and ``ndgeo evaluate``."""

from __future__ import annotations

from pathlib import Path

import typer

from ndgeo.cli import options as opt
from ndgeo.cli.app import app, console, err_console, is_quiet
from ndgeo.cli.options import parse_list
from ndgeo.cli.present import (
    epoch_progress,
    print_comparison,
    print_formulas,
    print_json,
    print_metrics,
    print_noise_table,
)
from ndgeo.config import TrainConfig
from ndgeo.errors import NdgeoError


def _scenes(image: Path | None, labels: Path | None, scene: list[str] | None,
            manifest: Path | None) -> list[tuple[Path, Path]]:
    pairs: list[tuple[Path, Path]] = []
    if image is not None:
        if labels is None:
            raise NdgeoError("give LABELS after IMAGE (a class raster or a vector file)")
        pairs.append((image, labels))
    for item in scene or []:
        img, sep, lab = item.partition(",")
        if not sep:
            raise NdgeoError(f"--scene expects IMAGE,LABELS, got {item!r}")
        pairs.append((Path(img), Path(lab)))
    if manifest is not None:
        from ndgeo.io.labels import read_manifest

        pairs += read_manifest(manifest)
    if not pairs:
        raise NdgeoError("nothing to train on: give IMAGE LABELS, --scene IMAGE,LABELS or --manifest")
    return pairs


@app.command()
def train(
    ctx: typer.Context,
    image: Path | None = typer.Argument(None, help="Multispectral GeoTIFF."),
    labels: Path | None = typer.Argument(None, help="Labels: class raster (0 = unlabeled) or vector file (GeoPackage, Shapefile, GeoJSON)."),
    out: Path = typer.Option(..., "-o", "--output", help="Model file to write (.safetensors)."),
    scene: list[str] | None = typer.Option(None, "--scene", help="Another IMAGE,LABELS pair (repeatable)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="CSV (image,labels per line) or TOML ([[scene]] image=, labels=) listing scenes."),
    label_field: str = typer.Option("class", "--label-field", help="Attribute holding the class of vector labels (string or integer)."),
    bands: str | None = typer.Option(None, "--bands", help="Bands to train on (names, ASI letters or 1-based indexes, comma-separated); default all."),
    band_names: str | None = opt.BAND_NAMES,
    sensor: str | None = opt.SENSOR,
    nodata: float | None = opt.NODATA,
    scale: float | None = opt.SCALE,
    offset: float | None = opt.OFFSET,
    negative: str = typer.Option("clip", "--negative", help="Negative reflectance: clip (to 0) or exclude the pixel."),
    model: str = typer.Option("nd", "--model", help="nd (ND-layer classifier) or mlp (baseline)."),
    indices: int = typer.Option(8, "--indices", help="Learned indices in the first ND layer."),
    depth: int = typer.Option(1, "--depth", help="Stacked ND layers (first unsigned, then signed)."),
    pairwise: bool = typer.Option(False, "--pairwise", help="Classical band-pair indices (2 weights each) instead of dense ones."),
    head_norm: str = typer.Option("batchnorm", "--head-norm", help="Normalisation of ND outputs before the head: batchnorm, affine or none (none gives the most literal formulas)."),
    compare: bool = typer.Option(False, "--compare", help="Also train the MLP baseline on the same split and print both."),
    epochs: int = typer.Option(200, "--epochs", help="Maximum epochs (early stopping on the validation split)."),
    patience: int = typer.Option(25, "--patience", help="Epochs without validation improvement before stopping."),
    batch_size: int = typer.Option(512, "--batch-size", help="Pixels per training batch."),
    split: str = typer.Option("block", "--split", help="Validation split: block (spatially blocked) or random."),
    block_size: int = typer.Option(32, "--block-size", help="Side in pixels of the blocks of the blocked split."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of pixels held out for validation."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="Sample at most this many labeled pixels (drawn while reading)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, initialisation and batches."),
    device: str = opt.DEVICE,
    report: Path | None = typer.Option(None, "--report", help="PNG with coefficient heatmap, confusion matrix and learning curves (default: next to the model)."),
    no_report: bool = typer.Option(False, "--no-report", help="Do not draw the PNG report."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the model file if it exists."),
    precision: int = opt.PRECISION,
    threshold: float = opt.THRESHOLD,
) -> None:
    """Train an ND classifier on labeled scenes and print its learned index formulas."""
    from ndgeo.training.classifier import train as train_job

    quiet = is_quiet(ctx)
    config = TrainConfig(model=model, n_indices=indices, depth=depth, pairwise=pairwise,
                         head_norm=head_norm,
                         epochs=epochs, patience=patience, batch_size=batch_size, split=split,
                         block_size=block_size, val_fraction=val_fraction, device=device,
                         seed=seed)
    report_path = None if no_report else (report or out.with_suffix(".png"))
    log = (lambda msg: None) if quiet else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    with epoch_progress(quiet, epochs) as progress:
        run = train_job(
            _scenes(image, labels, scene, manifest), out, config, compare=compare,
            report_path=report_path, overwrite=overwrite, progress=progress, log=log,
            label_field=label_field, bands=parse_list(bands), band_names=parse_list(band_names),
            sensor=sensor, nodata=nodata, negative=negative, max_pixels=max_pixels,
            scale=scale, offset=offset,
        )
    for note in run.pixels.warnings:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False)
    if quiet:
        return
    result = run.results[0]
    print_metrics(result.metrics, result.classes, f"validation ({result.config.split} split)")
    if compare:
        print_comparison(run.results)
    print_formulas(result.model, result.metadata(), threshold=threshold, precision=precision)
    console.print(f"wrote [bold]{run.model_path}[/]"
                  + (f" and {run.report_path}" if run.report_path else ""))


@app.command()
def formula(
    model: Path = typer.Argument(..., help="Model file written by `ndgeo train`."),
    fmt: str = typer.Option("text", "--format", "-f", help="text, latex, asi (Awesome Spectral Indices JSON), numexpr (numexpr / gdal_calc) or json."),
    precision: int = opt.PRECISION,
    threshold: float = opt.THRESHOLD,
    domain: str = typer.Option("vegetation", "--domain", help="application_domain of --format asi entries."),
) -> None:
    """Print a model's learned first-layer indices as formulas over band names."""
    from ndgeo import formula as fm
    from ndgeo.checkpoint import load_model

    net, meta = load_model(model)  # any model file; only ND models have indices to print
    formulas = fm.model_formulas(net, meta, threshold=threshold, precision=precision)
    if fmt == "text":
        print_formulas(net, meta, threshold=threshold, precision=precision)
        return
    options = {"application_domain": domain} if fmt == "asi" else {}
    print(fm.render(formulas, fmt, **options))


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model file written by `ndgeo train`."),
    image: Path = typer.Argument(..., help="Multispectral GeoTIFF."),
    labels: Path = typer.Argument(..., help="Labels (class raster or vector file) with the model's class names."),
    label_field: str = typer.Option("class", "--label-field", help="Attribute holding the class of vector labels."),
    band_names: str | None = opt.BAND_NAMES,
    sensor: str | None = opt.SENSOR,
    nodata: float | None = opt.NODATA,
    scale: float | None = opt.SCALE,
    offset: float | None = opt.OFFSET,
    noise_levels: str | None = typer.Option(None, "--noise-levels", help="Multiplicative noise levels, e.g. 0,0.02,0.05,0.1: x*(1+s*N(0,1))."),
    noise_mode: str = typer.Option("band", "--noise-mode", help="band (per band and pixel) or global (one factor per pixel)."),
    draws: int = typer.Option(10, "--draws", help="Noise draws averaged per level."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise draws."),
    as_json: bool = opt.JSON,
) -> None:
    """Accuracy, kappa, per-class F1 and confusion matrix on a labeled scene (optionally under noise)."""
    from ndgeo.checkpoint import load_classifier
    from ndgeo.io.labels import load_many
    from ndgeo.training.metrics import evaluate_model, noise_robustness

    net, meta = load_classifier(model)
    classes = [c["name"] for c in meta["classes"]]
    pixels = load_many([(image, labels)], label_field=label_field,
                       bands=[b["name"] for b in meta["bands"]],
                       band_names=parse_list(band_names), sensor=sensor, nodata=nodata,
                       classes=classes, scale=scale, offset=offset)
    result = evaluate_model(net, pixels, classes=classes)
    if noise_levels:
        try:
            levels = [float(v) for v in parse_list(noise_levels) or []]
        except ValueError:
            raise NdgeoError(f"--noise-levels expects numbers, got {noise_levels!r}") from None
        result["noise"] = noise_robustness(net, pixels.X, pixels.y, levels, mode=noise_mode,
                                           draws=draws, seed=seed)
    if as_json:
        print_json(result)
        return
    print_metrics(result, classes, f"{image.name}")
    if noise_levels:
        print_noise_table(result["noise"], noise_mode)
