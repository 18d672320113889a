"""Printing for the CLI: progress bars, result tables, formulas, JSON (no logic)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperOption

from ndgeo.cli.app import console, err_console

_option_type = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx) -> str | None:
    """Flags (``--overwrite``, ``--compare/--no-compare``, ``-v``) take no value: no ``<bool>``
    or ``<int>`` after them in ``--help`` (Typer's rich help prints one for every option)."""
    if self.is_flag or self.count:
        return None
    return _option_type(self, ctx)


TyperOption.display_type_rich = _flag_type  # the one place: every command's help


@contextmanager
def pixel_progress(description: str, *, quiet: bool):
    """A rich progress bar fed by the engine's ``progress(done, total)`` callback (pixels/s)."""
    if quiet:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=None, rate="")
        start = time.perf_counter()

        def update(done: int, total: int) -> None:
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{done / elapsed / 1e6:.2f} Mpx/s")

        yield update


@contextmanager
def epoch_progress(quiet: bool, total: int):
    """A bar over training epochs showing loss and validation accuracy."""
    if quiet:
        yield None
        return
    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err_console)
    task = bar.add_task("train", total=total, status="")
    started = False

    def update(epoch: int, total_epochs: int, row: dict) -> None:
        nonlocal started
        if not started:  # shown from the first epoch on: input errors stay one line
            bar.start()
            started = True
        val = row.get("val_acc")
        status = f"loss {row['train_loss']:.3f}" + ("" if val is None else f"  val acc {val:.3f}")
        bar.update(task, completed=epoch, total=total_epochs, status=status)

    try:
        yield update
    finally:
        if started:
            bar.stop()


@contextmanager
def step_progress(quiet: bool):
    """A bar over denoiser training steps showing the running RMSE (data units)."""
    if quiet:
        yield None
        return
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
               TextColumn("rmse {task.fields[rmse]}"), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task("train", total=None, rmse="-")

        def update(step: int, total: int, rmse: float) -> None:
            bar.update(task, completed=step, total=total, rmse=f"{rmse:.4g}")

        yield update


def print_json(data: object) -> None:
    """Machine-readable output on stdout (no rich markup)."""
    print(json.dumps(data, indent=2, default=str))


def print_metrics(metrics: dict, classes: list[str], title: str) -> None:
    """Accuracy, kappa, macro-F1 and the confusion matrix with per-class F1."""
    console.print(
        f"[bold]{title}[/]: overall accuracy {metrics['overall_accuracy']:.4f}, "
        f"kappa {metrics['kappa']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"({metrics['n_pixels']} pixels)"
    )
    table = Table("true \\ predicted", *classes, "F1", title="confusion matrix",
                  title_justify="left")
    for name, row, stats in zip(classes, metrics["confusion_matrix"], metrics["per_class"],
                                strict=True):
        f1 = "-" if stats["f1"] is None else f"{stats['f1']:.3f}"
        table.add_row(name, *[str(v) for v in row], f1)
    console.print(table)


def print_comparison(results: list) -> None:
    """One line per model trained on the same split (``--compare``)."""
    table = Table("model", "accuracy", "macro-F1", "kappa", "parameters", "train s",
                  "architecture", title="same split", title_justify="left")
    for r in results:
        m = r.metrics
        table.add_row(r.config.model, f"{m['overall_accuracy']:.4f}", f"{m['macro_f1']:.4f}",
                      f"{m['kappa']:.4f}", str(r.n_parameters), f"{r.train_seconds:.1f}",
                      r.describe_model())
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
        method = meta.get("metrics", {}).get("index_importance_method",
                                             "share of |d logit / d index| x std")
        console.print(f"[bold]what each class relies on[/] ({method}):")
        for name, row in zip(names, importance, strict=False):
            if not any(row):
                console.print(f"  {name}: no single index is needed (the indices overlap)",
                              highlight=False)
                continue
            total = sum(row) or 1.0
            top = sorted(enumerate(row), key=lambda kv: -kv[1])[:3]
            parts = ", ".join(f"ND{k + 1} {100 * v / total:.0f}%" for k, v in top)
            console.print(f"  {name}: {parts}", highlight=False)


def print_noise_table(rows: list[dict], mode: str) -> None:
    """``evaluate --noise-levels``: accuracy and its drop per noise level."""
    table = Table("noise", "accuracy", "drop (points)", title=f"{mode} noise",
                  title_justify="left")
    for row in rows:
        table.add_row(f"{row['level']:.4g}", f"{row['accuracy']:.4f}",
                      f"{row['drop_points']:.2f}")
    console.print(table)
