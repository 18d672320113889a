"""``ndgeo sample-data`` and ``ndgeo demo``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ndgeo.cli._app import app, console, is_quiet
from ndgeo.sample import SampleScene, make_sample


@app.command("sample-data")
def sample_data(
    ctx: typer.Context,
    outdir: Path = typer.Argument(..., help="Folder to write the sample scene into."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the committed sample uses 0)."),
    size: int = typer.Option(256, "--size", help="Width and height in 10 m pixels (64-1024)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing sample files."),
) -> None:
    """Write a small synthetic labelled Sentinel-2 scene with a known separating index."""
    scene = make_sample(outdir, seed=seed, size=size, overwrite=overwrite)
    if not is_quiet(ctx):
        _print_scene(scene)


def _print_scene(scene: SampleScene) -> None:
    """Files written, classes with labelled pixel counts, and the true separating index."""
    truth = scene.truth
    files = Table(title=f"sample scene in {scene.outdir}", show_header=True)
    files.add_column("file")
    files.add_column("size", justify="right")
    for path in (scene.image, scene.labels_raster, scene.labels_vector, scene.truth_json):
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
