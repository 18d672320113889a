"""Classification metrics (numpy only) and scoring of trained models on pixels.

Conventions: the confusion matrix has true classes in rows and predictions in columns. A class
that appears neither in the truth nor in the predictions has undefined precision/recall/F1
(``None``) and is left out of macro averages; a class that appears on one side only scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ndgeo.errors import NdgeoError
from ndgeo.nn.inference import run_batched

#: Noise levels of the robustness protocol (notes section 8).
NOISE_LEVELS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; rows are true classes, columns predictions."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} holds class ids outside 0..{n_classes - 1}")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def overall_accuracy(cm: np.ndarray) -> float:
    """Fraction of pixels on the diagonal (NaN for an empty matrix)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa ``(p_o - p_e) / (1 - p_e)``; 1.0 for perfect agreement when ``p_e = 1``."""
    total = cm.sum()
    if not total:
        return float("nan")
    p_o = np.trace(cm) / total
    p_e = float((cm.sum(axis=1) * cm.sum(axis=0)).sum()) / total**2
    if p_e >= 1.0:
        return 1.0 if p_o >= 1.0 else 0.0
    return float((p_o - p_e) / (1.0 - p_e))


def per_class(cm: np.ndarray) -> list[dict]:
    """Precision, recall, F1, support per class (None where the class is absent on both sides)."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    out = []
    for k in range(cm.shape[0]):
        if support[k] == 0 and predicted[k] == 0:
            out.append({"precision": None, "recall": None, "f1": None, "support": 0})
            continue
        p = tp[k] / predicted[k] if predicted[k] else 0.0
        r = tp[k] / support[k] if support[k] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out.append({"precision": float(p), "recall": float(r), "f1": float(f1),
                    "support": int(support[k])})
    return out


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the truth or the predictions."""
    scores = [c["f1"] for c in per_class(cm) if c["f1"] is not None]
    return float(np.mean(scores)) if scores else float("nan")


def classification_report(y_true, y_pred, classes: Sequence[str]) -> dict:
    """All metrics as a JSON-able dict (accuracy, kappa, macro-F1, per-class, confusion)."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    rows = per_class(cm)
    return {
        "n_pixels": int(cm.sum()),
        "overall_accuracy": _json_float(overall_accuracy(cm)),
        "kappa": _json_float(cohen_kappa(cm)),
        "macro_f1": _json_float(macro_f1(cm)),
        "per_class": [{"class": name, **row} for name, row in zip(classes, rows, strict=True)],
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
    }


def _json_float(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


@torch.no_grad()
def predict(model: torch.nn.Module, X: np.ndarray, *, batch_size: int = 65536) -> np.ndarray:
    """Class ids (N,) for raw pixels ``X`` (N, C), batch by batch on the model's device."""
    return predict_logits(model, X, batch_size=batch_size).argmax(axis=1)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, X: np.ndarray, *, batch_size: int = 65536):
    """Logits (N, n_classes) as float32 numpy, in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return run_batched(model, np.asarray(X, dtype=np.float32), batch_size, device)
    finally:
        model.train(was_training)


def evaluate_model(model: torch.nn.Module, pixels, *, classes: Sequence[str] | None = None) -> dict:
    """Metrics of ``model`` on labelled ``pixels`` (a TrainingPixels), JSON-able.

    ``classes`` are the model's class names in output order; pixel labels are matched to them by
    name (default: the pixels' own class list). The pixels' bands must be in the model's order.
    """
    classes = list(pixels.classes if classes is None else classes)
    missing = sorted(set(pixels.classes[i] for i in np.unique(pixels.y)) - set(classes))
    if missing:
        raise NdgeoError(f"label classes {missing} are unknown to the model (classes: {classes})")
    remap = np.array([classes.index(c) if c in classes else -1 for c in pixels.classes])
    y = remap[pixels.y]
    report = classification_report(y, predict(model, pixels.X), classes)
    report["scenes"] = list(pixels.scene_ids)
    report["bands"] = [b.name for b in pixels.bands]
    return report


def noise_robustness(
    model: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    levels: Sequence[float] = NOISE_LEVELS,
    *,
    mode: str = "band",
    draws: int = 10,
    seed: int = 0,
) -> list[dict]:
    """Accuracy under multiplicative test-time noise ``x * (1 + s * N(0, 1))``, clipped at 0.

    ``mode="band"`` draws one factor per pixel and band; ``"global"`` one per pixel (a common
    illumination change, which ND models cancel). Returns one dict per level with the accuracy
    averaged over ``draws`` and ``drop_points`` = clean minus noisy accuracy in percentage points.
    """
    if mode not in ("band", "global"):
        raise NdgeoError(f"noise mode must be 'band' or 'global', got {mode!r}")
    if draws < 1:
        raise NdgeoError(f"draws must be >= 1, got {draws}")
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    clean = float(np.mean(predict(model, X) == y))
    rng = np.random.default_rng(seed)
    shape = X.shape if mode == "band" else (X.shape[0], 1)
    out = []
    for level in levels:
        accs = []
        for _ in range(draws if level else 1):
            factor = 1.0 + level * rng.standard_normal(shape).astype(np.float32)
            noisy = np.clip(X * factor, 0, None)
            accs.append(float(np.mean(predict(model, noisy) == y)))
        acc = float(np.mean(accs))
        out.append({"level": float(level), "mode": mode, "accuracy": acc,
                    "accuracy_std": float(np.std(accs)), "drop_points": 100.0 * (clean - acc)})
    return out


@torch.no_grad()
def index_permutation_importance(
    model: torch.nn.Module, X: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """What an ND model relies on, for any head: shuffle one first-layer index across the
    given pixels and measure what it costs.

    Returns ``(per_class, overall)``: the drop of each class's recall, ``(n_classes, K)``, and
    of overall accuracy, ``(K,)``, in [0, 1] (negative drops, i.e. noise, are kept as 0).
    """
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    h = model.indices(x)
    y = np.asarray(y)
    gen = torch.Generator().manual_seed(seed)

    def scores(indices: torch.Tensor) -> tuple[np.ndarray, float]:
        pred = model.from_indices(indices).argmax(1).cpu().numpy()
        recall = np.array([np.mean(pred[y == c] == c) if np.any(y == c) else 0.0
                           for c in range(n_classes)])
        return recall, float(np.mean(pred == y))

    base_recall, base_acc = scores(h)
    per_class = np.zeros((n_classes, h.shape[1]))
    overall = np.zeros(h.shape[1])
    for k in range(h.shape[1]):
        shuffled = h.clone()
        shuffled[:, k] = h[torch.randperm(len(h), generator=gen).to(device), k]
        recall, acc = scores(shuffled)
        per_class[:, k] = np.maximum(base_recall - recall, 0.0)
        overall[k] = max(base_acc - acc, 0.0)
    return per_class, overall
