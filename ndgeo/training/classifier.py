"""Training ND classifiers (and the MLP baseline) on labelled pixels.

Defaults are chosen to train well without tuning (notes sections 5-6): spatially blocked
validation split; per-band positive scaling by the training medians (folded back into exported
coefficients); first-layer indices started as the classical NDs of the most discriminative band
pairs (:func:`ndgeo.nn.select_pairs`); batch-normalised ND outputs before the linear head; Adam
with lr 1e-2 and no weight decay on ND raw parameters, 1e-3 on the head (1e-2 without batch
normalisation); class-balanced loss;
gradient-norm clipping; learning rate halved on validation-loss plateaus; early stopping once
neither validation accuracy nor loss improved for ``patience`` epochs, keeping the checkpoint with
the best validation accuracy (ties: lower loss). The same seed gives identical weights.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ndgeo.config import ND_MAX_BANDS, TrainConfig
from ndgeo.device import resolve_device
from ndgeo.errors import NdgeoError
from ndgeo.io.labels import TrainingPixels, default_class_info
from ndgeo.io.writer import check_output
from ndgeo.nn import MLP, NDClassifier
from ndgeo.training.metrics import (
    classification_report,
    index_permutation_importance,
    predict_logits,
)


def hold_out_blocks(block: np.ndarray, y: np.ndarray, n_classes: int, fraction: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Which pixels a whole-block hold-out takes (bool per pixel): blocks (ids ``block``) in
    random order, each kept when it brings the per-class held counts closer to ``fraction`` of
    each class (relative L1 distance), never taking a class's last remaining pixels."""
    counts = np.zeros((block.max() + 1, n_classes), dtype=np.int64)
    np.add.at(counts, (block, y), 1)
    target = fraction * counts.sum(axis=0)
    scale = np.maximum(target, 1.0)
    held = np.zeros(len(counts), dtype=bool)
    held_counts = np.zeros(n_classes)
    kept_counts = counts.sum(axis=0)
    for b in rng.permutation(len(counts)):
        c = counts[b]
        gain = (np.abs(held_counts - target) - np.abs(held_counts + c - target)) / scale
        if gain.sum() <= 0 or np.any((c > 0) & (kept_counts - c <= 0)):
            continue
        held[b] = True
        held_counts += c
        kept_counts = kept_counts - c
    return held[block]


def split_pixels(
    pixels: TrainingPixels,
    mode: str = "block",
    val_fraction: float = 0.2,
    block_size: int = 32,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) into ``pixels``, sorted int64.

    ``"block"`` groups pixels in ``block_size`` x ``block_size`` squares per scene and puts whole
    squares in validation (neighbouring pixels are near duplicates; a random split would
    overstate accuracy). Squares are drawn in random order and kept when they bring the
    per-class validation counts closer to ``val_fraction`` of each class (relative L1 distance),
    never taking a class's last training pixels.
    ``"random"`` is a stratified per-pixel split. Classes confined to one square stay in
    training only.
    """
    if not 0.0 < val_fraction < 1.0:
        raise NdgeoError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    n_classes = len(pixels.classes)
    y = pixels.y
    if mode == "random":
        val = np.zeros(len(y), dtype=bool)
        for k in range(n_classes):
            members = np.flatnonzero(y == k)
            if members.size < 2:
                continue
            n_val = min(max(round(val_fraction * members.size), 1), members.size - 1)
            val[rng.permutation(members)[:n_val]] = True
    elif mode == "block":
        if block_size < 1:
            raise NdgeoError(f"block_size must be >= 1, got {block_size}")
        keys = np.stack([pixels.scene, pixels.rows // block_size, pixels.cols // block_size], 1)
        _, block = np.unique(keys, axis=0, return_inverse=True)
        block = block.ravel()
        val = hold_out_blocks(block, y, n_classes, val_fraction, rng)
    else:
        raise NdgeoError(f"split mode must be 'block' or 'random', got {mode!r}")
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    if val_idx.size == 0:
        raise NdgeoError(
            f"cannot make a {mode} validation split of {len(y)} pixels"
            + (f" in blocks of {block_size} px; use a smaller block size or mode 'random'"
               if mode == "block" else "")
        )
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


@dataclass
class TrainResult:
    """A trained model (best validation checkpoint) and how it got there."""

    model: nn.Module
    config: TrainConfig
    history: list[dict]
    metrics: dict
    train_seconds: float
    n_parameters: int
    classes: list[str]
    bands: list
    train_idx: np.ndarray
    val_idx: np.ndarray
    best_epoch: int
    init_pairs: list[tuple[int, int]] = field(default_factory=list)
    #: Per class (``classes`` order): value, name and colour (``TrainingPixels.class_info``).
    class_info: list = field(default_factory=list)

    def describe_model(self) -> str:
        """Short architecture name for tables, e.g. ``nd 8 indices`` or ``mlp 64-32``."""
        c = self.config
        if c.model == "mlp":
            return "mlp " + "-".join(str(h) for h in c.mlp_hidden)
        pairs = self.model.config().get("pairs")
        text = f"nd {len(pairs) if pairs else c.n_indices} indices"
        text += f", depth {c.depth}" if c.depth > 1 else ""
        text += (", linear head" if c.head == "linear"
                 else ", mlp head " + "-".join(str(h) for h in c.head_hidden or ()))
        budget = self.model.max_bands
        text += f", max {budget} band(s) per side" if budget else ", all bands"
        return text + (", augmented" if c.augment else "")

    def metadata(self) -> dict:
        """Checkpoint metadata (``ndgeo.checkpoint.save_model``): JSON-able."""
        return {
            "config": self.model.config(),
            "eps": self.config.eps,
            "bands": [{"name": b.name, "letter": b.letter} for b in self.bands],
            "classes": [{"id": i, "value": c.value, "name": c.name,
                         "color": "#{:02x}{:02x}{:02x}".format(*c.color)} for i, c in
                        enumerate(self.class_info or default_class_info(self.classes))],
            "training": {**self.config.to_dict(), "best_epoch": self.best_epoch,
                         "max_bands": getattr(self.model, "max_bands", None),  # as applied
                         "epochs_run": len(self.history), "train_seconds": self.train_seconds,
                         "n_train": int(self.train_idx.size), "n_val": int(self.val_idx.size),
                         "n_parameters": self.n_parameters,
                         "init_pairs": [list(p) for p in self.init_pairs]},
            "metrics": self.metrics,
        }


def train_model(
    pixels: TrainingPixels,
    config: TrainConfig | None = None,
    *,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the model described by ``config`` on ``pixels`` and keep its best validation state.

    ``split`` gives (train_idx, val_idx) (default: :func:`split_pixels` with the config's split
    options); ``progress(epoch, total, metrics)`` is called after every epoch, ``log(message)``
    for notable events (device, initial band pairs, early stop).
    """
    config = config or TrainConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        result = _train(pixels, config, split, progress, log or (lambda _msg: None))
        result.class_info = pixels.classes_info()
        return result
    finally:
        torch.set_num_threads(threads)


def _train(pixels, config, split, progress, say) -> TrainResult:
    device = resolve_device(config.device)
    if split is None:
        split = split_pixels(pixels, config.split, config.val_fraction, config.block_size,
                             config.seed)
    train_idx, val_idx = (np.asarray(s, dtype=np.int64) for s in split)
    n_classes = len(pixels.classes)
    missing = [pixels.classes[k] for k in sorted(set(range(n_classes)) - set(pixels.y[val_idx]))]
    if missing:
        say(f"classes absent from validation (too few blocks): {', '.join(missing)}")
    refit = config.refit and config.schedule == "cosine"
    passes = 2 if refit else 1
    fit = _fit(pixels, train_idx, val_idx, config, device, say, progress, 0, passes)
    model = fit.model
    X_va = np.ascontiguousarray(pixels.X[val_idx], dtype=np.float32)
    X_tr = np.ascontiguousarray(pixels.X[train_idx], dtype=np.float32)
    metrics = classification_report(
        pixels.y[val_idx], predict_logits(model, X_va).argmax(1), pixels.classes
    )
    metrics["train_accuracy"] = float(
        (predict_logits(model, X_tr).argmax(1) == pixels.y[train_idx]).mean()
    )
    metrics["split"] = config.split
    if hasattr(model, "from_indices") and len(val_idx):
        # What each class relies on, for `ndgeo formula`: honest for any head.
        per_class, overall = index_permutation_importance(
            model, X_va, pixels.y[val_idx], n_classes, seed=config.seed)
        metrics["index_importance"] = per_class.tolist()
        metrics["index_accuracy_cost"] = overall.tolist()
        metrics["index_importance_method"] = (
            "drop in each class's recall when the index is shuffled across validation pixels")
    seconds = fit.seconds
    if refit:
        everything = np.arange(len(pixels), dtype=np.int64)
        say(f"refitting on all {len(everything)} labelled pixels with the same recipe "
            "(the metrics above are from the validation fit)")
        final = _fit(pixels, everything, None, config, device, say, progress, config.epochs,
                     passes)
        model, seconds = final.model, seconds + final.seconds
        metrics["refit_pixels"] = int(len(everything))
    return TrainResult(
        model=model.cpu(), config=config, history=fit.history, metrics=metrics,
        train_seconds=round(seconds, 3), n_parameters=int(model.n_parameters()),
        classes=list(pixels.classes), bands=list(pixels.bands), train_idx=train_idx,
        val_idx=val_idx, best_epoch=fit.best_epoch, init_pairs=fit.init_pairs,
    )


@dataclass
class _Fit:
    model: nn.Module
    history: list[dict]
    best_epoch: int
    seconds: float
    init_pairs: list[tuple[int, int]]


def _fit(pixels, train_idx, val_idx, config, device, say, progress, epoch_offset,
         passes) -> _Fit:
    """One training run of ``config``'s recipe on ``train_idx`` (validating on ``val_idx``
    when given: the plateau schedule selects on it, the cosine schedule only reports)."""
    n_classes = len(pixels.classes)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    X_tr = torch.from_numpy(np.ascontiguousarray(pixels.X[train_idx], dtype=np.float32))
    y_tr = torch.from_numpy(pixels.y[train_idx].astype(np.int64))
    if val_idx is not None:
        X_va = torch.from_numpy(np.ascontiguousarray(pixels.X[val_idx], dtype=np.float32))
        y_va = torch.from_numpy(pixels.y[val_idx].astype(np.int64))
    else:
        X_va = y_va = None
    model, init_pairs = _build(config, X_tr, y_tr, n_classes, say if epoch_offset == 0 else None,
                               pixels.bands)
    model.to(device)
    if epoch_offset == 0:
        say(f"training {config.model} model ({model.n_parameters()} parameters) on {device}: "
            f"{len(train_idx)} training / {0 if val_idx is None else len(val_idx)} "
            "validation pixels")
    counts = torch.bincount(y_tr, minlength=n_classes).double()
    weights = None
    if config.class_weight == "balanced":
        present = counts > 0
        weights = torch.where(present, counts.sum() / (present.sum() * counts.clamp_min(1)), 0.0)
        weights = weights.float().to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    total_epochs = config.epochs * passes

    def report(epoch: int, row: dict) -> None:
        if progress:
            progress(epoch_offset + epoch, total_epochs, row)

    start = time.perf_counter()
    run = _cosine if config.schedule == "cosine" else _plateau
    layers = list(getattr(model, "nd_layers", ()))
    closed_form = [layer.closed_form for layer in layers]
    if config.noise_penalty and config.noise_penalty_on == "loss":
        for layer in layers:  # the "loss" penalty differentiates the ND forward twice
            layer.closed_form = False
    try:
        history, best_epoch = run(model, X_tr, y_tr, X_va, y_va, config, loss_fn, gen, device,
                                  report, say)
    except KeyboardInterrupt as exc:  # Ctrl-C: `ndgeo train` keeps the model so far
        exc.partial = (model.eval(), config, pixels, val_idx is None)
        raise
    finally:
        for layer, value in zip(layers, closed_form, strict=True):
            layer.closed_form = value
    model.eval()
    return _Fit(model, history, best_epoch, time.perf_counter() - start, init_pairs)


def _augment(xb: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Training-time noise: ``x * (1 + s_band * N(0, 1))`` per band and pixel (clamped at 0.05)
    and ``x * exp(s_illum * N(0, 1))`` per pixel (what an ND model is invariant to)."""
    if config.band_jitter > 0:
        noise = torch.randn(xb.shape, generator=gen).to(xb.device)
        xb = xb * (1 + config.band_jitter * noise).clamp_min(0.05)
    if config.illumination_jitter > 0:
        noise = torch.randn((xb.shape[0], 1), generator=gen).to(xb.device)
        xb = xb * torch.exp(config.illumination_jitter * noise)
    return xb


def _loss(model, xb, yb, loss_fn, config: TrainConfig) -> torch.Tensor:
    """The training loss of one batch, with the per-band noise penalty when configured."""
    weight = config.noise_penalty if isinstance(model, NDClassifier) else 0.0
    if not weight:
        return loss_fn(model(xb), yb)
    if config.noise_penalty_on == "indices":
        return loss_fn(model(xb), yb) + weight * model.band_noise_penalty(xb)
    # "loss": E_n ||x_n * d loss_n / d x_n||^2 (first-order loss change under relative
    # per-band noise); on the autograd ND forward (set by _fit: the closed-form backward is not
    # differentiable)
    xb = xb.detach().requires_grad_(True)
    loss = loss_fn(model(xb), yb)
    (grad,) = torch.autograd.grad(loss, xb, create_graph=True)
    return loss + weight * ((xb * grad * len(xb)) ** 2).sum(1).mean()


def _cosine(model, X_tr, y_tr, X_va, y_va, config, loss_fn, gen, device, report, say):
    """Fixed budget: ``epochs`` passes of at least ``min_steps_per_epoch`` batches, linear
    warm-up then cosine decay, last iterate kept; the band budget is applied after
    ``prune_at`` of it."""
    n = len(y_tr)
    batch = max(2, min(config.batch_size, n))
    per_epoch = max(math.ceil(n / batch), config.min_steps_per_epoch)
    if config.epochs * per_epoch > config.max_steps:  # large sets: fewer, equal "epochs"
        per_epoch = max(1, config.max_steps // config.epochs)
    steps = config.epochs * per_epoch
    optimizer = _optimizer(model, config)
    warm = max(1, int(config.warmup * steps))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    prune_step = int(config.prune_at * steps) if getattr(model, "max_bands", None) else -1
    order = _index_stream(n, steps * batch, gen)
    history: list[dict] = []
    total = 0.0
    model.train()
    for step in range(steps):
        if step == prune_step:
            model.prune()
            say(f"band budget applied: at most {model.max_bands} band(s) per side of each index")
        idx = order[step * batch : (step + 1) * batch]
        xb, yb = X_tr[idx].to(device), y_tr[idx].to(device)
        if config.augment:
            xb = _augment(xb, config, gen)
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(model, xb, yb, loss_fn, config)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
        if (step + 1) % per_epoch == 0:
            row = {"epoch": len(history) + 1, "train_loss": total / per_epoch,
                   "lr": optimizer.param_groups[0]["lr"]}
            if X_va is not None:
                row["val_loss"], row["val_acc"] = _validate(model, X_va, y_va, loss_fn)
                model.train()
            history.append(row)
            report(row["epoch"], row)
            total = 0.0
    return history, len(history)


def _plateau(model, X_tr, y_tr, X_va, y_va, config, loss_fn, gen, device, report, say):
    """The earlier recipe: learning rate halved on validation-loss plateaus, early stopping
    once neither validation accuracy nor loss improved for ``patience`` epochs, best
    validation checkpoint kept (ties: lower loss)."""
    if X_va is None:
        raise NdgeoError("the plateau schedule needs a validation split")
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(2, config.patience // 4)
    )
    n_train = len(y_tr)
    batch = min(config.batch_size, max(16, math.ceil(n_train / config.min_steps_per_epoch)))
    steps = max(math.ceil(n_train / batch), config.min_steps_per_epoch)
    prune_epoch = (max(1, int(config.prune_at * config.epochs))
                   if getattr(model, "max_bands", None) else -1)
    history: list[dict] = []
    best = ((-1.0, -math.inf), 0, copy.deepcopy(model.state_dict()))
    lowest, last_gain = math.inf, 0
    for epoch in range(1, config.epochs + 1):
        if epoch == prune_epoch:  # only budgeted states compete from here on
            model.prune()
            best, lowest, last_gain = ((-1.0, -math.inf), epoch, best[2]), math.inf, epoch
        model.train()
        order = _index_stream(n_train, steps * batch, gen)
        total = 0.0
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            if idx.numel() < 2:  # batch normalisation needs two samples
                continue
            xb, yb = X_tr[idx].to(device), y_tr[idx].to(device)
            if config.augment:
                xb = _augment(xb, config, gen)
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(model, xb, yb, loss_fn, config)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += float(loss.detach())
        val_loss, val_acc = _validate(model, X_va, y_va, loss_fn)
        scheduler.step(val_loss)
        row = {"epoch": epoch, "train_loss": total / steps, "val_loss": val_loss,
               "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"]}
        history.append(row)
        report(epoch, row)
        if (val_acc, -val_loss) > best[0]:
            best = ((val_acc, -val_loss), epoch, copy.deepcopy(model.state_dict()))
        if val_loss < lowest - 1e-6:
            lowest, last_gain = val_loss, epoch
        if epoch > prune_epoch and epoch - max(best[1], last_gain) >= config.patience:
            say(f"early stop at epoch {epoch}; best validation accuracy {best[0][0]:.4f} "
                f"at epoch {best[1]}")
            break
    model.load_state_dict(best[2])
    return history, best[1]


def compare_models(
    pixels: TrainingPixels,
    config: TrainConfig | None = None,
    *,
    compare: bool = True,
    budgets: Sequence[int | None] = (),
    progress: Callable[[int, int, dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[TrainResult]:
    """Train ``config``'s model and, on the same split and recipe, the MLP baseline
    (``compare``) and ND models with other band budgets (``budgets``; None = no budget):
    ``[result, mlp_result?, budget results...]``."""
    config = config or TrainConfig()
    split = split_pixels(pixels, config.split, config.val_fraction, config.block_size,
                         config.seed)
    variants = [config]
    if compare:
        variants.append(replace(config, model="mlp", noise_penalty=0.0))
    if config.model == "nd":
        variants += [replace(config, max_bands=b, refit=False) for b in budgets
                     if b != config.max_bands]
    return [train_model(pixels, c, split=split, progress=progress if i == 0 else None, log=log)
            for i, c in enumerate(variants)]


def effective_max_bands(config: TrainConfig, n_bands: int) -> int | None:
    """The band budget a model of ``n_bands`` inputs gets: none where it would keep every band
    (``"auto"``: :data:`~ndgeo.config.ND_MAX_BANDS` for a dense ND layer)."""
    budget = config.max_bands
    if budget == "auto":
        budget = None if config.pairwise or config.model != "nd" else ND_MAX_BANDS
    return budget if budget is not None and budget < n_bands else None


def _build(config: TrainConfig, X: torch.Tensor, y: torch.Tensor, n_classes: int, say,
           bands=None):
    """The untrained model, with data-dependent scaling and initialisation applied."""
    say = say or (lambda _msg: None)
    n_bands = X.shape[1]
    if config.model == "mlp":
        model = MLP(n_bands, n_classes, hidden=config.mlp_hidden)
        model.fit_standardizer(X)
        return model, []
    if n_bands < 2:
        raise NdgeoError(f"an ND model needs at least 2 bands, got {n_bands}")
    model = NDClassifier(
        n_bands, n_classes, n_indices=config.n_indices, depth=config.depth,
        pairwise=config.pairwise, eps=config.eps, head_norm=config.head_norm,
        head_hidden=config.head_hidden, max_bands=effective_max_bands(config, n_bands),
    )
    if config.band_scale == "median":
        model.fit_band_scale(X)
    pairs: list[tuple[int, int]] = []
    if config.init == "pairs" and not config.pairwise:
        try:
            pairs = model.init_pairs_from_data(X * model.band_scale, y)
        except ValueError as exc:
            say(f"band-pair initialisation skipped ({exc}); using random jitter")
        else:
            names = [b.name for b in bands] if bands else None
            say("initial indices from band pairs: " + ", ".join(
                f"({names[i]}, {names[j]})" if names else f"({i + 1}, {j + 1})"
                for i, j in pairs))
    return model, pairs


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if isinstance(model, NDClassifier):
        # Without batch normalisation the head sees raw ND values, whose spread across pixels is
        # often ~0.1: it needs ~10x larger weights, and at head_lr it sat at chance accuracy
        # until early stopping (crop/grassland sample, 4 of 6 seeds with head_norm="affine").
        head_lr = config.head_lr if config.head_norm == "batchnorm" else config.lr
        if config.schedule == "plateau" and config.head_norm == "batchnorm":
            head_lr = 1e-3  # that recipe's head rate
        groups = [
            {"params": model.nd_parameters(), "lr": config.lr, "weight_decay": 0.0},
            {"params": model.head_parameters(), "lr": head_lr,
             "weight_decay": config.weight_decay},
        ]
        return torch.optim.AdamW(groups)
    return torch.optim.AdamW(model.parameters(), lr=config.mlp_lr,
                             weight_decay=config.weight_decay)


def _index_stream(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``length`` indices from back-to-back random permutations of ``range(n)``."""
    reps = math.ceil(length / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:length]


@torch.no_grad()
def _validate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[float, float]:
    model.eval()
    device = next(model.parameters()).device
    total, correct = 0.0, 0
    for i in range(0, len(y), 65536):
        xb, yb = X[i : i + 65536].to(device), y[i : i + 65536].to(device)
        logits = model(xb)
        total += float(loss_fn(logits, yb)) * len(yb)
        correct += int((logits.argmax(1) == yb).sum())
    return total / max(len(y), 1), correct / max(len(y), 1)


@dataclass
class TrainRun:
    """What :func:`train` did: the pixels it trained on and one result per model."""

    pixels: TrainingPixels
    results: list[TrainResult]
    model_path: Path
    report_path: Path | None


def train(
    scenes: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    out_path: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    compare: bool = False,
    budgets: Sequence[int | None] = (),
    report_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, dict], None] | None = None,
    log: Callable[[str], None] | None = None,
    **label_options: Any,
) -> TrainRun:
    """The whole ``ndgeo train`` job: labelled pixels of ``scenes`` (``(image, labels)``
    pairs; ``label_options`` go to :func:`ndgeo.io.labels.load_many`), the model (and with
    ``compare`` the MLP baseline, with ``budgets`` ND models of other band budgets, on the same
    split; only the first model is saved), the model file at ``out_path`` and a PNG
    report at ``report_path`` (None: none). The CLI, ``ndgeo demo`` and tests call this."""
    from ndgeo.checkpoint import check_model_name, save_model
    from ndgeo.io.labels import load_many

    config = config or TrainConfig()
    say = log or (lambda _msg: None)
    inputs = [path for pair in scenes for path in pair]  # never an output, whatever the flags
    out_path = Path(check_output(out_path, overwrite=overwrite, inputs=inputs))
    check_model_name(out_path)
    if report_path is not None:
        report_path = Path(check_output(report_path, overwrite=overwrite, inputs=inputs))
    pixels = load_many(list(scenes), seed=config.seed, **label_options)
    say(pixels.describe())
    if compare or budgets:
        results = compare_models(pixels, config, compare=compare, budgets=budgets,
                                 progress=progress, log=log)
    else:
        results = [train_model(pixels, config, progress=progress, log=log)]
    save_model(out_path, results[0].model, results[0].metadata(), overwrite=overwrite)
    if report_path is not None:
        from ndgeo.training.report import training_report  # matplotlib: only when drawing

        training_report(results[0], report_path, overwrite=overwrite, baselines=results[1:])
    return TrainRun(pixels, results, out_path, report_path)
