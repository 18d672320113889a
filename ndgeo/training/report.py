"""A one-page PNG summary of a training run: learned indices, confusion matrix, learning curves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ndgeo.io.writer import atomic_path  # noqa: E402

if TYPE_CHECKING:  # the report draws results; the trainer imports the report, not back
    from ndgeo.training.classifier import TrainResult


def band_labels(result: TrainResult) -> list[str]:
    """Each band as its name and the letter formulas use: ``B05 (RE1)``."""
    return [f"{b.name} ({b.letter})" if b.letter and b.letter != b.name else b.name
            for b in result.bands]


def coefficient_matrix(result: TrainResult) -> tuple[np.ndarray, list[str], list[str]] | None:
    """(alpha - beta) of the first ND layer on raw bands, (indices, bands), each index scaled so
    its largest weight is 1; None for models without ND indices."""
    if not hasattr(result.model, "index_coefficients"):
        return None
    names = [b.name for b in result.bands]
    rows = result.model.index_coefficients(names)
    matrix = np.array([[r["positive"].get(b, 0.0) - r["negative"].get(b, 0.0) for b in names]
                       for r in rows])
    return matrix, [r["name"] for r in rows], names


def training_report(
    result: TrainResult, path_png: str | Path, *, overwrite: bool = True,
    baselines: Sequence[TrainResult] = (),
) -> Path:
    """Write the figure to ``path_png`` (atomically) and return the path.

    Panels: the learned index weights (bands labelled by name and letter, ``B05 (RE1)``, as
    the formulas print them; a labelled colour bar), the validation confusion matrix, the
    learning curves (with the validation accuracy of each of ``baselines``, the ``--compare``
    models) and, with baselines, validation accuracy and parameters per model on the same
    split. The PNG's ``Description`` text names the panels' contents.
    """
    path = Path(path_png)
    panels = 4 if baselines else 3
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4.8), constrained_layout=True)
    try:
        _coefficients(axes[0], result)
        _confusion(axes[1], result)
        _curves(axes[2], result, baselines)
        if baselines:
            _comparison(axes[3], (result, *baselines))
        title = "; ".join(_headline(r) for r in (result, *baselines))
        fig.suptitle(title)
        description = {
            "bands": band_labels(result),
            "colorbar": COLORBAR_LABEL if coefficient_matrix(result) is not None else None,
            "models": [{"model": r.describe_model(), "parameters": r.n_parameters,
                        "validation_accuracy": r.metrics.get("overall_accuracy")}
                       for r in (result, *baselines)],
        }
        with atomic_path(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, dpi=110, format="png", metadata={
                "Title": title, "Description": json.dumps(description),
                "Software": "ndgeo"})
    finally:
        plt.close(fig)
    return path


#: What the colour bar of the weights panel shows.
COLORBAR_LABEL = "band weight alpha - beta (largest |weight| = 1)"


def _headline(result: TrainResult) -> str:
    acc = result.metrics.get("overall_accuracy")
    text = f"{result.config.model.upper()} model, {result.n_parameters} parameters"
    return text + (f", validation accuracy {acc:.3f}" if acc is not None else "")


def _coefficients(ax, result: TrainResult) -> None:
    found = coefficient_matrix(result)
    if found is None:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"{result.config.model.upper()}: no index coefficients",
                ha="center", va="center")
        return
    matrix, units, _ = found
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(result.bands)), band_labels(result), rotation=90)
    ax.set_yticks(range(len(units)), units)
    ax.set_title("Layer-1 index weights on raw bands")
    bar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(COLORBAR_LABEL)


def _confusion(ax, result: TrainResult) -> None:
    cm = np.asarray(result.metrics["confusion_matrix"], dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    classes = result.classes
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, f"{int(n)}", ha="center", va="center", fontsize=8,
                color="white" if share[i, j] > 0.5 else "black")
    ax.set_title("Validation confusion matrix")


def _curves(ax, result: TrainResult, baselines: Sequence[TrainResult] = ()) -> None:
    history = result.history
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    if any("val_loss" in h for h in history):
        ax.plot(epochs, [h.get("val_loss", np.nan) for h in history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.axvline(result.best_epoch, color="grey", linestyle=":", label="kept checkpoint")
    acc_ax = ax.twinx()
    if any("val_acc" in h for h in history):
        acc_ax.plot(epochs, [h.get("val_acc", np.nan) for h in history], color="tab:green",
                    label=f"{result.config.model.upper()} validation accuracy")
    for other, color in zip(baselines, ("tab:purple", "tab:brown", "tab:olive", "tab:cyan",
                                        "tab:pink"), strict=False):
        rows = [h for h in other.history if "val_acc" in h]
        acc_ax.plot([h["epoch"] for h in rows], [h["val_acc"] for h in rows], color=color,
                    linestyle="--", label=f"{_short(other)} validation accuracy (baseline)")
    acc_ax.set_ylim(0, 1.01)
    acc_ax.set_ylabel("accuracy")
    lines = ax.get_legend_handles_labels()
    more = acc_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    ax.set_title("Learning curves")


def _short(result: TrainResult) -> str:
    return f"{result.config.model.upper()} ({result.n_parameters} params)"


def _comparison(ax, results: Sequence[TrainResult]) -> None:
    """Validation accuracy per model on the same split, with its parameter count."""
    names = [r.describe_model() for r in results]
    accuracy = [r.metrics.get("overall_accuracy") or 0.0 for r in results]
    bars = ax.barh(range(len(results)), accuracy,
                   color=["tab:green"] + ["tab:purple"] * (len(results) - 1))
    ax.set_yticks(range(len(results)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("validation accuracy (same split)")
    for bar, r, acc in zip(bars, results, accuracy, strict=True):
        ax.text(min(acc, 0.98), bar.get_y() + bar.get_height() / 2,
                f"{acc:.3f}, {r.n_parameters} params ", ha="right", va="center", fontsize=8,
                color="white")
    ax.set_title("Model vs --compare baseline")
