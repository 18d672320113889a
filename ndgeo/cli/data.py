"""``ndgeo sample-data`` and ``ndgeo demo``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from ndgeo.cli.app import app, console, is_quiet
from ndgeo.cli.present import pixel_progress, print_formulas, print_metrics
from ndgeo.config import TrainConfig
from ndgeo.errors import NdgeoError

if TYPE_CHECKING:
    from ndgeo.sample import SampleScene


@app.command("sample-data")
def sample_data(
    ctx: typer.Context,
    outdir: Path = typer.Argument(..., help="Folder to write the sample scene into."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the committed sample uses 0)."),
    size: int = typer.Option(256, "--size", help="Width and height in 10 m pixels (64-1024)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing sample files."),
) -> None:
    """Write a small synthetic labelled Sentinel-2 scene with a known separating index."""
    from ndgeo.sample import make_sample

    scene = make_sample(outdir, seed=seed, size=size, overwrite=overwrite)
    if not is_quiet(ctx):
        _print_scene(scene)


def _print_scene(scene: SampleScene) -> None:
    """Files written, classes with labelled pixel counts, and the true separating index."""
    truth = scene.truth
    files = Table(title=f"sample scene in {scene.outdir}", show_header=True)
    files.add_column("file")
    files.add_column("size", justify="right")
    for path in (scene.image, scene.labels_raster, scene.labels_vector, scene.labels_two,
                 scene.classes_csv, scene.truth_json):
        files.add_row(path.name, f"{path.stat().st_size / 1024:.0f} KiB")
    console.print(files)
    classes = Table(show_header=True)
    for column in ("id", "class", "colour", "labelled pixels"):
        classes.add_column(column)
    for c in truth["classes"]:
        swatch = "[on rgb({},{},{})]    [/]".format(*c["color"])
        classes.add_row(str(c["id"]), c["name"], swatch, str(c["labelled_pixels"]))
    console.print(classes)
    index = truth["separating_index"]
    console.print(
        f"{truth['size']}x{truth['size']} px, {len(truth['bands'])} bands, {truth['crs']}, "
        f"seed {truth['seed']}. True index: {index['above']} where "
        f"[bold]{index['formula']}[/] = {index['formula_bands']} > {index['threshold']:g}, "
        f"else {index['below']}",
        highlight=False,
    )


@app.command()
def demo(
    ctx: typer.Context,
    data: Path = typer.Argument(Path("sample_data"), help="Sample scene folder (made there if missing)."),
    out: Path = typer.Option(Path("ndgeo-demo"), "--out", help="Folder for the model, report and classification (its demo files are replaced on every run)."),
    epochs: int = typer.Option(200, "--epochs", help="Maximum training epochs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the training run."),
) -> None:
    """The whole job on the sample scene: check data, train, print learned formulas, apply."""
    from ndgeo import engine
    from ndgeo.io.raster import open_raster
    from ndgeo.io.writer import publish_class_legend
    from ndgeo.processors.classify import model_processor
    from ndgeo.sample import describe_scene, make_sample, validate_sample
    from ndgeo.training.classifier import train

    quiet = is_quiet(ctx)
    say = (lambda *a, **k: None) if quiet else console.print
    if not data.exists():
        say(f"[bold]1. sample scene[/]: {data} is missing, generating it")
        make_sample(data)
    problems = validate_sample(data)
    if problems:
        raise NdgeoError(f"{data} is not a valid sample scene: {problems[0]}")
    image, labels = data / "scene.tif", data / "labels.gpkg"
    facts = describe_scene(image, data / "labels.tif")
    say(f"[bold]1. sample scene[/] {image}: {facts['width']}x{facts['height']} px, "
        f"{facts['count']} bands ({', '.join(b['name'] for b in facts['bands'])}), "
        f"{facts['crs']}, nodata {facts['nodata']:g}, "
        f"{100 * facts['valid_fraction']:.0f}% valid; labels: "
        + ", ".join(f"{c['name']} {c['pixels']}" for c in facts.get("classes", [])),
        highlight=False)

    out.mkdir(parents=True, exist_ok=True)
    model_path, classes_path = out / "model.safetensors", out / "classes.tif"
    say(f"[bold]2. train[/] an ND classifier on {labels.name} (vector labels, blocked split)")
    run = train([(image, labels)], model_path, TrainConfig(epochs=epochs, seed=seed),
                report_path=out / "model.png", overwrite=True,
                class_table=data / "classes.csv")  # the label raster's values and colours
    result = run.results[0]
    if not quiet:
        print_metrics(result.metrics, result.classes, "validation (block split)")
        say("[bold]3. learned index equations[/]")
        print_formulas(result.model, result.metadata())

    info = open_raster(image)
    processor, positions = model_processor(model_path, info, outputs=["class"])
    with pixel_progress("4. apply", quiet=quiet) as progress:
        done = engine.run(processor, info, positions, classes_path, overwrite=True,
                          progress=progress)
    legend = publish_class_legend(done.out_path, processor.classes)
    say(f"[bold]4. classification[/] written to {done.out_path} "
        f"(uint8 class values with colour table, legend in {', '.join(p.name for p in legend)}; "
        f"model {model_path}, report {out / 'model.png'})")
