"""``ndgeo train``, ``ndgeo formula`` and ``ndgeo evaluate``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ndgeo.cli import options as opt
from ndgeo.cli.app import Terminated, app, console, err_console, is_quiet
from ndgeo.cli.options import parse_list
from ndgeo.cli.present import (
    epoch_progress,
    print_comparison,
    print_formulas,
    print_json,
    print_metrics,
    print_noise_table,
)
from ndgeo.config import ND_MAX_BANDS, ND_NOISE_PENALTY, TrainConfig
from ndgeo.errors import NdgeoError

_DEFAULTS = TrainConfig()


def _scenes(image: str | None, labels: str | None, scene: list[str] | None,
            manifest: Path | None, images: str | None = None,
            chip_labels: str | None = None) -> list[tuple[Path, Path]]:
    pairs: list[tuple[Path, Path]] = []
    if (images is None) != (chip_labels is None):
        raise NdgeoError("--images and --labels go together, e.g. --images 'chips/*.tif' "
                         "--labels 'masks/{stem}.tif'")
    if images is not None:
        from ndgeo.io.labels import match_chips

        chips, missing = match_chips(images, chip_labels)
        if missing:
            err_console.print(f"[yellow]warning:[/] {len(missing)} image(s) without labels "
                              f"skipped: {', '.join(p.name for p in missing[:5])}"
                              + (" ..." if len(missing) > 5 else ""), highlight=False)
        pairs += chips
    if image is not None:
        if labels is None:
            raise NdgeoError("give LABELS after IMAGE (a class raster or a vector file)")
        pairs.append((image, labels))
    for item in scene or []:
        img, sep, lab = item.partition(",")
        if not sep:
            raise NdgeoError(f"--scene expects IMAGE,LABELS, got {item!r}")
        pairs.append((img, lab))
    if manifest is not None:
        from ndgeo.io.labels import read_manifest

        pairs += read_manifest(manifest)
    if not pairs:
        raise NdgeoError("nothing to train on: give IMAGE LABELS, --scene IMAGE,LABELS, "
                         "--manifest or --images/--labels")
    return pairs


def given(ctx: typer.Context, *names: str) -> list[str]:
    """The options among ``names`` (parameter names) that were typed on the command line, as
    flags (``--indices``)."""
    return ["--" + n.replace("_", "-") for n in names
            if getattr(ctx.get_parameter_source(n), "name", None) == "COMMANDLINE"]


def warn(text: str) -> None:
    """One yellow warning line on stderr."""
    err_console.print(f"[yellow]warning:[/] {text}", highlight=False)


#: ``train`` options that only shape ND models.
_ND_OPTIONS = ("indices", "depth", "pairwise", "head_norm", "head", "head_hidden", "max_bands",
               "noise_penalty", "noise_penalty_on")


def _check_train_options(ctx: typer.Context, *, model: str, split: str, schedule: str = "cosine",
                         max_bands: int | None = None, compare: bool = False) -> None:
    """Options that would be ignored or contradict each other: an error (or a warning where
    the run is still what was asked for), never silence."""
    if model == "mlp":
        nd_only = given(ctx, *_ND_OPTIONS)
        if nd_only:
            raise NdgeoError(f"{', '.join(nd_only)} shape ND models and do not apply to --model "
                             "mlp; drop them (or train --model nd)")
        if given(ctx, "compare"):
            raise NdgeoError("--compare trains the MLP baseline beside an ND model; with --model "
                             "mlp there is nothing to compare")
    if given(ctx, "pairwise") and given(ctx, "indices"):
        raise NdgeoError("--pairwise learns one index per band pair (n(n-1)/2 for n bands), so "
                         "--indices would be ignored; drop one of them")
    if schedule != "plateau" and given(ctx, "patience"):
        raise NdgeoError("--patience is the early stopping of --schedule plateau; the cosine "
                         "schedule trains its fixed budget")
    if schedule == "plateau" and given(ctx, "refit"):
        raise NdgeoError("--refit / --no-refit apply to the cosine schedule; --schedule plateau "
                         "keeps its best validation checkpoint")
    if max_bands is None and given(ctx, "budget_table"):
        raise NdgeoError("--budget-table / --no-budget-table apply with --max-bands N")
    if model == "nd" and not compare and given(ctx, "mlp_hidden"):
        raise NdgeoError("--mlp-hidden shapes the MLP baseline: give --model mlp or --compare")
    if split == "random" and given(ctx, "block_size"):
        warn("--block-size only shapes the block split; --split random ignores it")


def _parse_max_bands(text: str | None) -> int | str | None:
    """``--max-bands``: an integer N >= 1, ``all`` (None: no budget), or not given ("auto")."""
    if text is None:
        return "auto"
    value = text.strip()
    if value.lower() == "all":
        return None
    if not (value.isascii() and value.isdecimal()) or int(value) < 1:
        raise NdgeoError(f"--max-bands expects an integer >= 1 or 'all', got {text!r}")
    return int(value)


@app.command()
def train(
    ctx: typer.Context,
    image: str | None = typer.Argument(None, help="Multispectral raster (any GDAL dataset name)."),
    labels: str | None = typer.Argument(None, help="Labels: class raster (0 = unlabeled) or vector file (GeoPackage, Shapefile, GeoJSON)."),
    out: Path = typer.Option(..., "-o", "--output", help="Model file to write (.safetensors)."),
    scene: list[str] | None = typer.Option(None, "--scene", help="Another IMAGE,LABELS pair (repeatable)."),
    images: str | None = typer.Option(None, "--images", help="Glob of image tiles (quote it), e.g. 'chips/*.tif'; with --labels."),
    chip_labels: str | None = typer.Option(None, "--labels", help="Label file of each --images tile, with {stem} or {name}, e.g. 'masks/{stem}.tif'; tiles without one are reported and skipped."),
    manifest: Path | None = typer.Option(None, "--manifest", help="CSV (image,labels per line) or TOML (\\[\\[scene]] image=, labels=) listing scenes."),
    label_field: str = typer.Option("class", "--label-field", help="Attribute holding the class of vector labels (string or integer)."),
    classes_file: Path | None = typer.Option(None, "--classes", help="CSV (value,name,color lines) or JSON listing the classes: the values class maps write, their names and colours (#rrggbb); labels match by value or name. Default: a label raster's own values and colour table, integer fields' integers, string classes 1..n."),
    bands: str | None = typer.Option(None, "--bands", help="Bands to train on (names, ASI letters or 1-based indexes, comma-separated); default all."),
    band_names: str | None = opt.BAND_NAMES,
    sensor: str | None = opt.SENSOR,
    nodata: float | None = opt.NODATA,
    scale: float | None = opt.SCALE,
    offset: float | None = opt.OFFSET,
    negative: str = typer.Option("clip", "--negative", help="Negative reflectance: clip (to 0) or exclude the pixel."),
    model: str = typer.Option("nd", "--model", help="nd (ND-layer classifier) or mlp (baseline)."),
    indices: int = typer.Option(_DEFAULTS.n_indices, "--indices", help="Learned indices in the first ND layer."),
    depth: int = typer.Option(1, "--depth", help="Stacked ND layers (first unsigned, then signed)."),
    pairwise: bool = typer.Option(False, "--pairwise", help="Classical band-pair indices (2 weights each) instead of dense ones."),
    head_norm: str = typer.Option("batchnorm", "--head-norm", help="Normalisation of ND outputs before the head: batchnorm, affine or none (none gives the most literal formulas)."),
    head: str = typer.Option(_DEFAULTS.head, "--head", help="Head on the learned indices: mlp (hidden ReLU layers; default) or linear."),
    head_hidden: str | None = typer.Option(None, "--head-hidden", help="Hidden widths of the mlp head, comma-separated (default 64)."),
    max_bands: str | None = typer.Option(None, "--max-bands", metavar="N|all", help=f"Band budget: at most N bands per side of each learned index, so the exported formulas are the model exactly (pruned after half the training, then fine-tuned); 'all' = no budget. Default {ND_MAX_BANDS} (none with --pairwise), which touches only inputs of more bands (hyperspectral)."),
    budget_table: bool = typer.Option(True, "--budget-table/--no-budget-table", help="With --max-bands N: also train budgets 1, 2, 3 and all on the same split and print their accuracy."),
    mlp_hidden: str = typer.Option("64,32", "--mlp-hidden", help="Hidden widths of the MLP baseline (--model mlp, --compare), comma-separated."),
    augment: bool = typer.Option(False, "--augment", help="Train with per-band multiplicative jitter (x(1 + 0.05 N(0,1)) per band and pixel) and per-pixel illumination jitter (x exp(0.2 N(0,1)))."),
    noise_penalty: float | None = typer.Option(None, "--noise-penalty", help=f"Weight of a per-band noise penalty in the training loss (ND models; default {ND_NOISE_PENALTY:g}; 0 = off; see --noise-penalty-on). A training loss only: the model and its illumination invariance are unchanged."),
    noise_penalty_on: str = typer.Option(_DEFAULTS.noise_penalty_on, "--noise-penalty-on", help="indices: each learned index's first-order variance under relative per-band noise over its spread across pixels (closed form); loss: the squared gradient of the loss with respect to the log band values (double backprop, ~2x slower)."),
    schedule: str = typer.Option(_DEFAULTS.schedule, "--schedule", help="cosine: a fixed budget with warm-up and cosine decay, then a refit on all labelled pixels (default); plateau: early stopping on the validation split."),
    refit: bool = typer.Option(_DEFAULTS.refit, "--refit/--no-refit", help="cosine schedule: after validating, train again on all labelled pixels and save that model."),
    compare: bool = typer.Option(False, "--compare", help="Also train the MLP baseline on the same split and print both."),
    epochs: int = typer.Option(_DEFAULTS.epochs, "--epochs", help="Passes over the training pixels (each at least 10 batches, at most 10,000 batches in all; plateau schedule: the maximum)."),
    patience: int = typer.Option(_DEFAULTS.patience, "--patience", help="plateau schedule: epochs without validation improvement before stopping."),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, "--batch-size", help="Pixels per training batch."),
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
    budget = _parse_max_bands(max_bands)
    _check_train_options(ctx, model=model, split=split, schedule=schedule,
                         max_bands=budget if isinstance(budget, int) else None, compare=compare)
    if report is not None and no_report:
        raise NdgeoError("--report and --no-report contradict each other; give one")
    if given(ctx, "noise_penalty_on"):
        if noise_penalty == 0:
            raise NdgeoError("--noise-penalty-on needs the noise penalty on (ND models, "
                             "--noise-penalty W > 0)")
        if noise_penalty_on == "loss" and noise_penalty is None:
            raise NdgeoError(f"--noise-penalty-on loss needs its weight: give --noise-penalty W "
                             f"(the default {ND_NOISE_PENALTY:g} is the weight of 'indices'; "
                             f"the benchmark tried 'loss' at 1e-5)")
    hidden = parse_list(head_hidden)
    mlp_widths = parse_list(mlp_hidden) or []
    for name, values in (("--head-hidden", hidden or []), ("--mlp-hidden", mlp_widths)):
        if not all(h.isdigit() for h in values):
            raise NdgeoError(f"{name} expects comma-separated integers, got {values!r}")
    config = TrainConfig(model=model, n_indices=indices, depth=depth, pairwise=pairwise,
                         head_norm=head_norm, head=head,
                         head_hidden=None if hidden is None else tuple(int(h) for h in hidden),
                         max_bands=budget, augment=augment, noise_penalty=noise_penalty,
                         noise_penalty_on=noise_penalty_on,
                         mlp_hidden=tuple(int(h) for h in mlp_widths), schedule=schedule, refit=refit,
                         epochs=epochs, patience=patience, batch_size=batch_size, split=split,
                         block_size=block_size, val_fraction=val_fraction, device=device,
                         seed=seed)
    report_path = None if no_report else (report or out.with_suffix(".png"))
    log = (lambda msg: None) if quiet else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    done = {"epoch": 0, "total": epochs}
    try:
        with epoch_progress(quiet, epochs) as bar:
            def progress(epoch: int, total: int, row: dict) -> None:
                done.update(epoch=epoch, total=total)
                if bar is not None:
                    bar(epoch, total, row)

            run = train_job(
                _scenes(image, labels, scene, manifest, images, chip_labels), out, config, compare=compare,
                budgets=(1, 2, 3, None) if isinstance(budget, int) and budget_table else (),
                report_path=report_path, overwrite=overwrite, progress=progress, log=log,
                label_field=label_field, class_table=classes_file,
                bands=parse_list(bands), band_names=parse_list(band_names),
                sensor=sensor, nodata=nodata, negative=negative, max_pixels=max_pixels,
                scale=scale, offset=offset,
            )
    except KeyboardInterrupt as exc:
        _keep_interrupted(exc, Path(out), config, done)
        raise
    for note in run.pixels.warnings:
        warn(note)
    if quiet:
        return
    result = run.results[0]
    print_metrics(result.metrics, result.classes, f"validation ({result.config.split} split)")
    if compare or len(run.results) > 1:
        print_comparison(run.results)
    print_formulas(result.model, result.metadata(), threshold=threshold, precision=precision)
    console.print(f"wrote [bold]{run.model_path}[/]"
                  + (f" and {run.report_path}" if run.report_path else ""))


def interrupted_path(out: Path) -> Path:
    """Where Ctrl-C during ``train`` keeps the model so far: ``MODEL.interrupted.safetensors``
    beside MODEL (never MODEL itself, which only a finished run writes)."""
    return out.with_name(f"{out.stem}.interrupted{out.suffix or '.safetensors'}")


def _keep_interrupted(exc: KeyboardInterrupt, out: Path, config: TrainConfig,
                      done: dict) -> None:
    """Save the model being trained when Ctrl-C came (atomically, clearly named) and say so;
    then exit 130. Without one (interrupted while reading labels), the app's message stands."""
    partial = getattr(exc, "partial", None)
    if partial is None:
        return
    code, word = ((128 + exc.signum, "terminated") if isinstance(exc, Terminated)
                  else (130, "interrupted"))
    model, fit_config, pixels, refitting = partial
    if fit_config.model != config.model:
        err_console.print(f"[bold red]{word}[/] while training the {fit_config.model} "
                          f"baseline of --compare; nothing kept ({out} was not written)")
        raise typer.Exit(code)
    import numpy as np

    from ndgeo.checkpoint import save_model
    from ndgeo.training.classifier import TrainResult

    epoch, total = done["epoch"], done["total"]
    if epoch == 0:
        err_console.print(f"[bold red]{word}[/] before the first epoch finished; nothing kept "
                          f"({out} was not written)")
        raise typer.Exit(code)
    stage = "while refitting on all labelled pixels" if refitting else "during training"
    result = TrainResult(
        model=model.cpu(), config=fit_config, history=[], metrics={}, train_seconds=0.0,
        n_parameters=int(model.n_parameters()), classes=list(pixels.classes),
        bands=list(pixels.bands), train_idx=np.zeros(0, np.int64),
        val_idx=np.zeros(0, np.int64), best_epoch=epoch, class_info=pixels.classes_info(),
    )
    meta = result.metadata()
    meta["training"]["interrupted"] = {"after_epoch": epoch, "of": total, "refit": refitting}
    path = interrupted_path(out)
    save_model(path, model, meta, overwrite=True)
    err_console.print(
        f"[bold red]{word}[/] {stage} after epoch {epoch} of {total}: kept the model so "
        f"far in {path} (written whole; not the finished model: evaluate it, rename it to use "
        f"it); {out} was not written", highlight=False)
    raise typer.Exit(code)


@app.command()
def formula(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Model file written by `ndgeo train`."),
    fmt: str = typer.Option("text", "--format", "-f", help="text, latex, asi (Awesome Spectral Indices JSON), numexpr (one bare expression per index, in order), gdal_calc (one gdal_calc.py command line per index), json, vrt (a GDAL VRT computing every index from --image, written to -o), gee (Earth Engine ee.Image.expression calls, JavaScript and Python) or qgis (raster-calculator expressions over \"layer@band\")."),
    precision: int | None = typer.Option(None, "--precision", help="Decimal places of coefficients; default 3 for text and latex, 6 for the machine formats (numexpr, gdal_calc, asi, json)."),
    threshold: float | None = typer.Option(None, "--threshold", help="Drop terms below this fraction of an index's largest weight; default 0.05 for text and latex (the dropped share is printed), 0 for the machine formats, which then reproduce the model."),
    domain: str = typer.Option("vegetation", "--domain", help="application_domain of --format asi entries."),
    image: str | None = typer.Option(None, "--image", help="gdal_calc, qgis: the raster to compute on, vrt: the raster the VRT reads; its bands are matched to the model's by name (gdal_calc/qgis default: IMAGE.tif numbered in the model's band order)."),
    output: Path | None = typer.Option(None, *opt.OUTPUT, help="--format vrt: the VRT file to write."),
    overwrite: bool = opt.OVERWRITE,
    band_names: str | None = opt.BAND_NAMES,
    sensor: str | None = typer.Option(None, "--sensor", help="gee: the Earth Engine collection of the model's sensor (sentinel-2, landsat-8, landsat-9, landsat-7); gdal_calc, qgis, vrt: preset naming the --image bands."),
    nodata: float | None = opt.NODATA,
    scale: float | None = opt.SCALE,
    offset: float | None = opt.OFFSET,
    layer: str | None = typer.Option(None, "--layer", help="qgis: the layer name in \"layer@band\" (default the --image file name without extension, as QGIS names it)."),
) -> None:
    """Print a model's learned first-layer indices as formulas over band names.

    The machine formats (numexpr, gdal_calc, asi, json) are exact by default: every term, 6
    decimals. With --threshold or a lower --precision they approximate the model; the asi and
    json documents then record the dropped weight and an error bound, and a warning says so.
    vrt, gee and qgis always compute the model's own indices: full-precision weights, its eps,
    the image's scale/offset and the clip of negative values at 0.
    """
    from ndgeo import formula as fm
    from ndgeo.checkpoint import load_model

    if fmt not in fm.FORMATS + fm.GIS_FORMATS:
        raise NdgeoError(f"unknown --format {fmt!r}; choose one of "
                         f"{', '.join(fm.FORMATS + fm.GIS_FORMATS)}")
    _check_formula_options(ctx, fmt)
    net, meta = load_model(model)  # any model file; only ND models have indices to print
    if fmt in fm.GIS_FORMATS:
        _gis_formula(fmt, model, net, meta, image=image, output=output, overwrite=overwrite,
                     band_names=band_names, sensor=sensor, nodata=nodata, scale=scale,
                     offset=offset, layer=layer)
        return
    machine = fmt in fm.MACHINE_FORMATS
    precision = (6 if machine else 3) if precision is None else precision
    threshold = (0.0 if machine else 0.05) if threshold is None else threshold
    formulas = fm.model_formulas(net, meta, threshold=threshold, precision=precision)
    if fmt == "text":
        print_formulas(net, meta, threshold=threshold, precision=precision)
        return
    options: dict = {}
    if fmt == "asi":
        options = {"application_domain": domain}
    elif fmt == "gdal_calc":
        options = _gdal_calc_options(meta, image, band_names, sensor)
    if machine:
        approximate = [f for f in formulas if not fm.approximation(f)["exact"]]
        if approximate:
            worst = max(fm.approximation(f)["bound_equal_bands"] or float("inf")
                        for f in approximate)
            where = (" (recorded in the document)" if fmt in ("asi", "json") else "")
            err_console.print(
                f"[yellow]warning:[/] {len(approximate)} of {len(formulas)} formula(s) "
                f"approximate the model (--threshold {threshold:g}, --precision {precision}): "
                f"up to {100 * max(f.dropped for f in approximate):.2g}% of the weight dropped, "
                f"error up to ~{worst:.2g} where bands are equal{where}; the defaults "
                "(--threshold 0 --precision 6) export the model exactly", highlight=False)
    print(fm.render(formulas, fmt, **options))


#: Options of ``ndgeo formula`` beyond --format and the formats that take them.
_FORMULA_OPTIONS = {
    "precision": ("text", "latex", "numexpr", "gdal_calc", "asi", "json"),
    "threshold": ("text", "latex", "numexpr", "gdal_calc", "asi", "json"),
    "domain": ("asi",),
    "image": ("gdal_calc", "qgis", "vrt"),
    "band_names": ("gdal_calc", "qgis", "vrt"),
    "sensor": ("gdal_calc", "qgis", "vrt", "gee"),
    "output": ("vrt",),
    "overwrite": ("vrt",),
    "nodata": ("vrt",),
    "scale": ("qgis", "vrt", "gee"),
    "offset": ("qgis", "vrt", "gee"),
    "layer": ("qgis",),
}


def _check_formula_options(ctx: typer.Context, fmt: str) -> None:
    for name, formats in _FORMULA_OPTIONS.items():
        if given(ctx, name) and fmt not in formats:
            flag = given(ctx, name)[0]
            why = (" (it computes the model's own weights and eps, never an approximation)"
                   if name in ("precision", "threshold") else "")
            raise NdgeoError(f"{flag} does not apply to --format {fmt}{why}; it applies to "
                             f"--format {', '.join(formats)}")


def _gis_formula(fmt: str, model: Path, net, meta: dict, *, image: str | None,
                 output: Path | None, overwrite: bool, band_names: str | None,
                 sensor: str | None, nodata: float | None, scale: float | None,
                 offset: float | None, layer: str | None) -> None:
    """``--format vrt|gee|qgis``: the model's exact indices where GIS users compute them."""
    from ndgeo import formula as fm

    indices = fm.exact_indices(net, meta)
    if fmt == "gee":
        text = fm.to_gee(indices, meta, sensor=sensor, scale=scale, offset=offset)
        note = fm.units_warning(net, scale if scale is not None else
                                fm.ee_collection(sensor, meta)[1].scale)
        if note:
            warn(note)
        print(text)
        return
    if fmt == "qgis":
        import numpy as np

        info, numbers, scaling = _image_bands(meta, image, band_names, sensor, scale=scale,
                                              offset=offset)
        print(fm.to_qgis(indices, band_numbers=numbers, scaling=scaling, image=image,
                         signed=info is not None and np.dtype(info.dtype).kind != "u",
                         layer=layer))
        return
    if image is None or output is None:
        raise NdgeoError("--format vrt needs --image IMAGE (the raster the VRT reads) and "
                         "-o OUT.vrt")
    _write_vrt(model, net, meta, indices, image, output, overwrite=overwrite,
               band_names=band_names, sensor=sensor, nodata=nodata, scale=scale, offset=offset)


def _image_bands(meta: dict, image: str | None, band_names: str | None, sensor: str | None,
                 *, nodata: float | None = None, scale: float | None = None,
                 offset: float | None = None) -> tuple:
    """``(info, band_numbers, scaling)`` of formulas computed on ``image`` outside ndgeo: the
    raster (None without ``image``), model band -> 1-based band of ``image`` matched by name
    (without ``image``: the model's band order), and band -> (scale, offset) (without
    ``image``: ``--scale``/``--offset``, default none)."""
    names = [b["name"] for b in meta["bands"]]
    if image is None:
        return (None, {n: i + 1 for i, n in enumerate(names)},
                {n: (1.0 if scale is None else scale, 0.0 if offset is None else offset)
                 for n in names})
    from ndgeo.checkpoint import match_model_bands
    from ndgeo.io.raster import open_raster

    info = open_raster(image, bands=parse_list(band_names), sensor=sensor, nodata=nodata,
                       scale=scale, offset=offset)
    positions = match_model_bands(meta, info)
    return (info, {n: p + 1 for n, p in zip(names, positions, strict=True)},
            {n: (info.scales[p], info.offsets[p]) for n, p in zip(names, positions, strict=True)})


def _write_vrt(model: Path, net, meta: dict, indices: list, image: str, output: Path, *,
               overwrite: bool, band_names: str | None, sensor: str | None,
               nodata: float | None, scale: float | None, offset: float | None) -> None:
    import rasterio

    from ndgeo import formula as fm
    from ndgeo.io.raster import is_remote
    from ndgeo.io.writer import atomic_path, check_output

    check_output(output, overwrite=overwrite, inputs=[image, model])
    info, numbers, scaling = _image_bands(meta, image, band_names, sensor, nodata=nodata,
                                          scale=scale, offset=offset)
    source = fm.VRTSource(
        path=info.path if is_remote(info.path) else os.path.abspath(info.path),
        width=info.width, height=info.height, dtype=info.dtype,
        crs_wkt=info.crs.to_wkt() if info.crs else None,
        geotransform=tuple(info.transform.to_gdal()), nodata=info.nodata,
        bands=numbers, scaling=scaling,
        mask_band=next(iter(numbers.values())) if info.has_mask else None)
    descriptions = [fm.to_plain(f) for f in fm.model_formulas(net, meta)]
    xml = fm.to_vrt(indices, source, descriptions=descriptions,
                    metadata={"NDGEO_MODEL": os.path.basename(model)})
    with atomic_path(output, overwrite=overwrite) as tmp:
        tmp.write_text(xml, encoding="utf-8")
        try:  # GDAL must read what was written before it is published
            with rasterio.open(tmp) as check:
                check.read(1, window=((0, 1), (0, 1)))
        except rasterio.errors.RasterioError as exc:
            raise NdgeoError(f"GDAL cannot read the VRT written for {image}: {exc}") from exc
    console.print(f"wrote [bold]{output}[/] ({len(indices)} learned "
                  f"ind{'ex' if len(indices) == 1 else 'ices'} computed from "
                  f"{image} by GDAL pixel functions)", highlight=False)


def _gdal_calc_options(meta: dict, image: str | None, band_names: str | None,
                       sensor: str | None) -> dict:
    """Band numbers (and scaling) for ``--format gdal_calc``: from ``image`` matched by name,
    else the model's own band order."""
    _, numbers, scaling = _image_bands(meta, image, band_names, sensor)
    if image is None:
        listing = ", ".join(f"{name}={number}" for name, number in numbers.items())
        print(f"# IMAGE.tif bands numbered in the model's band order ({listing}); "
              "`--image FILE` numbers the bands of FILE")
        return {"band_numbers": numbers}
    return {"band_numbers": numbers, "image": image, "scaling": scaling}


@app.command()
def evaluate(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Model file written by `ndgeo train`."),
    image: str = typer.Argument(..., help="Multispectral raster (any GDAL dataset name)."),
    labels: str = typer.Argument(..., help="Labels (class raster or vector file) with the model's class names."),
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

    if not noise_levels:
        ignored = given(ctx, "noise_mode", "draws", "seed")
        if ignored:
            raise NdgeoError(f"{', '.join(ignored)} only apply with --noise-levels")
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
    print_metrics(result, classes, os.path.basename(image))
    if noise_levels:
        print_noise_table(result["noise"], noise_mode)
