"""A one-page PNG summary of a training run: learned indices, confusion matrix, learning curves."""

from __future__ import annotations

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
    """Write the figure to ``path_png`` (atomically) and return the path; ``baselines``
    (``--compare``) are named in the title with their accuracy and parameters."""
    path = Path(path_png)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    try:
        _coefficients(axes[0], result)
        _confusion(axes[1], result)
        _curves(axes[2], result)
        fig.suptitle("; ".join(_headline(r) for r in (result, *baselines)))
        with atomic_path(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


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
    matrix, units, bands = found
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(bands)), bands, rotation=90)
    ax.set_yticks(range(len(units)), units)
    ax.set_title("Layer-1 index weights on raw bands (alpha - beta)")
    ax.figure.colorbar(image, ax=ax, shrink=0.8)


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


def _curves(ax, result: TrainResult) -> None:
    epochs = [h["epoch"] for h in result.history]
    ax.plot(epochs, [h["train_loss"] for h in result.history], label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in result.history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.axvline(result.best_epoch, color="grey", linestyle=":", label="kept checkpoint")
    acc_ax = ax.twinx()
    acc_ax.plot(epochs, [h["val_acc"] for h in result.history], color="tab:green",
                label="validation accuracy")
    acc_ax.set_ylim(0, 1.01)
    acc_ax.set_ylabel("accuracy")
    lines = ax.get_legend_handles_labels()
    more = acc_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    ax.set_title("Learning curves")
