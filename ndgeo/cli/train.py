"""``ndgeo train``, ``ndgeo formula`` and ``ndgeo evaluate``."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ndgeo.cli._app import app, console, err_console, is_quiet
from ndgeo.cli._common import parse_list, print_json
from ndgeo.cli.apply import _DEVICE, _NODATA, _OFFSET, _SCALE, _SENSOR
from ndgeo.config import TrainConfig
from ndgeo.errors import NdgeoError
from ndgeo.writer import check_output

_PRECISION = typer.Option(3, "--precision", help="Decimal places of printed coefficients.")
_BAND_NAMES = typer.Option(None, "--band-names", help="Name every image band (comma-separated), overriding its descriptions.")
_THRESHOLD = typer.Option(0.05, "--threshold", help="Drop terms below this fraction of an index's largest weight (the dropped share is reported).")


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
        from ndgeo.labels import read_manifest

        pairs += read_manifest(manifest)
    if not pairs:
        raise NdgeoError("nothing to train on: give IMAGE LABELS, --scene IMAGE,LABELS or --manifest")
    return pairs


def _epoch_progress(quiet: bool, total: int):
    if quiet:
        return None, None
    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err_console)
    task = bar.add_task("train", total=total, status="")

    def update(epoch: int, total_epochs: int, row: dict) -> None:
        bar.update(task, completed=epoch, total=total_epochs,
                   status=f"loss {row['train_loss']:.3f}  val acc {row['val_acc']:.3f}")

    return bar, update


def print_metrics(metrics: dict, classes: list[str], title: str) -> None:
    """Accuracy, kappa, macro-F1 and the confusion matrix with per-class F1."""
    console.print(
        f"[bold]{title}[/]: overall accuracy {metrics['overall_accuracy']:.4f}, "
        f"kappa {metrics['kappa']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"({metrics['n_pixels']} pixels)"
    )
    table = Table("true \\ predicted", *classes, "F1", title="confusion matrix", title_justify="left")
    for name, row, stats in zip(classes, metrics["confusion_matrix"], metrics["per_class"],
                                strict=True):
        f1 = "-" if stats["f1"] is None else f"{stats['f1']:.3f}"
        table.add_row(name, *[str(v) for v in row], f1)
    console.print(table)


def print_formulas(model, meta: dict, *, threshold: float = 0.05, precision: int = 3) -> None:
    """The learned indices with their nearest catalogue index, and what each class uses."""
    from ndgeo import formula as fm

    if meta["config"].get("kind") != "nd":
        return
    console.print("[bold]learned indices[/]")
    for f in fm.model_formulas(model, meta, threshold=threshold, precision=precision):
        console.print(fm.to_text(f, fm.nearest_catalogue(f)), highlight=False, markup=False)
    importance = meta.get("metrics", {}).get("index_importance")
    if importance and meta["config"].get("n_indices"):
        names = [c["name"] for c in meta["classes"]]
        console.print("[bold]what each class relies on[/] (share of |d logit / d index| x std):")
        for name, row in zip(names, importance, strict=False):
            total = sum(row) or 1.0
            top = sorted(enumerate(row), key=lambda kv: -kv[1])[:3]
            parts = ", ".join(f"ND{k + 1} {100 * v / total:.0f}%" for k, v in top)
            console.print(f"  {name}: {parts}", highlight=False)


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
    band_names: str | None = _BAND_NAMES,
    sensor: str | None = _SENSOR,
    nodata: float | None = _NODATA,
    scale: float | None = _SCALE,
    offset: float | None = _OFFSET,
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
    device: str = _DEVICE,
    report: Path | None = typer.Option(None, "--report", help="PNG with coefficient heatmap, confusion matrix and learning curves (default: next to the model)."),
    no_report: bool = typer.Option(False, "--no-report", help="Do not draw the PNG report."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the model file if it exists."),
    precision: int = _PRECISION,
    threshold: float = _THRESHOLD,
) -> None:
    """Train an ND classifier on labeled scenes and print its learned index formulas."""
    from ndgeo.checkpoint import save_model
    from ndgeo.labels import load_many
    from ndgeo.train import compare_models, train_model

    quiet = is_quiet(ctx)
    out_path = Path(check_output(out, overwrite=overwrite))
    report_path = None if no_report else Path(report or out_path.with_suffix(".png"))
    if report_path is not None:
        check_output(report_path, overwrite=True)
    config = TrainConfig(model=model, n_indices=indices, depth=depth, pairwise=pairwise,
                         head_norm=head_norm,
                         epochs=epochs, patience=patience, batch_size=batch_size, split=split,
                         block_size=block_size, val_fraction=val_fraction, device=device,
                         seed=seed)
    pixels = load_many(
        _scenes(image, labels, scene, manifest), label_field=label_field,
        bands=parse_list(bands), band_names=parse_list(band_names), sensor=sensor,
        nodata=nodata, negative=negative, max_pixels=max_pixels, seed=seed, scale=scale,
        offset=offset,
    )
    log = (lambda msg: None) if quiet else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    summary = pixels.summary()
    log(f"{summary}")
    for name in pixels.small_classes():
        err_console.print(f"[yellow]warning:[/] class {name!r} has few labeled pixels")
    bar, progress = _epoch_progress(quiet, epochs)
    with bar or nullcontext():
        if compare:
            results = compare_models(pixels, config, progress=progress, log=log)
        else:
            results = [train_model(pixels, config, progress=progress, log=log)]
    result = results[0]
    meta = result.metadata()
    save_model(out_path, result.model, meta)
    if report_path is not None:
        from ndgeo.report import training_report

        training_report(result, report_path)
    if quiet:
        return
    print_metrics(result.metrics, result.classes, f"validation ({result.config.split} split)")
    if compare:
        table = Table("model", "accuracy", "macro-F1", "kappa", "parameters", "train s",
                      title="same split", title_justify="left")
        for r in results:
            m = r.metrics
            table.add_row(r.config.model, f"{m['overall_accuracy']:.4f}", f"{m['macro_f1']:.4f}",
                          f"{m['kappa']:.4f}", str(r.n_parameters), f"{r.train_seconds:.1f}")
        console.print(table)
    print_formulas(result.model, meta, threshold=threshold, precision=precision)
    console.print(f"wrote [bold]{out_path}[/]" + (f" and {report_path}" if report_path else ""))


@app.command()
def formula(
    model: Path = typer.Argument(..., help="Model file written by `ndgeo train`."),
    fmt: str = typer.Option("text", "--format", "-f", help="text, latex, asi (Awesome Spectral Indices JSON), numexpr (numexpr / gdal_calc) or json."),
    precision: int = _PRECISION,
    threshold: float = _THRESHOLD,
    domain: str = typer.Option("vegetation", "--domain", help="application_domain of --format asi entries."),
) -> None:
    """Print a model's learned first-layer indices as formulas over band names."""
    from ndgeo import formula as fm
    from ndgeo.checkpoint import load_model

    net, meta = load_model(model)
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
    band_names: str | None = _BAND_NAMES,
    sensor: str | None = _SENSOR,
    nodata: float | None = _NODATA,
    scale: float | None = _SCALE,
    offset: float | None = _OFFSET,
    noise_levels: str | None = typer.Option(None, "--noise-levels", help="Multiplicative noise levels, e.g. 0,0.02,0.05,0.1: x*(1+s*N(0,1))."),
    noise_mode: str = typer.Option("band", "--noise-mode", help="band (per band and pixel) or global (one factor per pixel)."),
    draws: int = typer.Option(10, "--draws", help="Noise draws averaged per level."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise draws."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Accuracy, kappa, per-class F1 and confusion matrix on a labeled scene (optionally under noise)."""
    from ndgeo.apply import require_classifier
    from ndgeo.checkpoint import load_model
    from ndgeo.labels import load_many
    from ndgeo.metrics import evaluate_model, noise_robustness

    net, meta = load_model(model)
    require_classifier(meta, model)
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
        table = Table("noise", "accuracy", "drop (points)", title=f"{noise_mode} noise",
                      title_justify="left")
        for row in result["noise"]:
            table.add_row(*[f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k])
                            for k in list(row)[:3]])
        console.print(table)


