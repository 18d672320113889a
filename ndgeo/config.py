"""Options of training runs as plain data: no torch, so the CLI can show defaults quickly."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ndgeo.errors import NdgeoError

SIGMA_RULE = (
    "S in data units (e.g. 150 for reflectance x 10000), or S% = S percent of the data range "
    "(max - min of the training pixels)"
)


def parse_sigma(
    text: str | float, *, data_range: float, train_sigma: float | None = None
) -> float:
    """A noise level in data units from ``'150'`` (data units), ``'2%'`` (of ``data_range``) or,
    when ``train_sigma`` is given, ``'5x'`` (times the training sigma)."""
    raw = str(text).strip().lower()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100 * data_range
        elif raw.endswith("x") and train_sigma is not None:
            value = float(raw[:-1]) * train_sigma
        else:
            value = float(raw)
    except ValueError:
        forms = "S, S% or Sx" if train_sigma is not None else "S or S%"
        raise NdgeoError(f"cannot read noise level {text!r}; expected {forms}") from None
    if not math.isfinite(value) or value <= 0:
        raise NdgeoError(f"noise level must be positive, got {text!r} ({value:g} data units)")
    return value


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON-able through :meth:`to_dict`)."""

    model: str = "nd"  # "nd" or "mlp"
    n_indices: int = 8
    depth: int = 1
    pairwise: bool = False
    head_norm: str = "batchnorm"  # on ND outputs: "batchnorm", "affine" or "none"
    mlp_hidden: tuple[int, ...] = (64, 32)
    epochs: int = 200
    batch_size: int = 512
    min_steps_per_epoch: int = 20  # tiny sets: an epoch is at least this many batches
    lr: float = 1e-2  # ND raw parameters (no weight decay)
    head_lr: float = 1e-3  # head, normalisation
    mlp_lr: float = 3e-3
    weight_decay: float = 1e-4  # head and MLP only
    patience: int = 25  # epochs without validation accuracy or loss improvement before stopping
    grad_clip: float = 1.0
    class_weight: str = "balanced"  # or "none"
    band_scale: str = "median"  # or "none": per-band 1/median of the training pixels
    init: str = "pairs"  # or "jitter"
    split: str = "block"  # or "random"
    val_fraction: float = 0.2
    block_size: int = 32
    eps: float = 1e-6
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 1  # CPU threads while training: per-pixel models are too small to gain more
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {"model": ("nd", "mlp"), "class_weight": ("balanced", "none"),
                   "band_scale": ("median", "none"), "init": ("pairs", "jitter"),
                   "split": ("block", "random"), "device": ("auto", "cpu", "cuda"),
                   "head_norm": ("batchnorm", "affine", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise NdgeoError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("n_indices", "depth", "epochs", "batch_size", "patience", "threads"):
            if getattr(self, name) < 1:
                raise NdgeoError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.mlp_hidden = tuple(int(h) for h in self.mlp_hidden)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mlp_hidden"] = list(self.mlp_hidden)
        return d


@dataclass
class DenoiseConfig:
    """Options of :func:`train_denoiser`. The defaults train a useful DnCNN on the 256 px sample
    scene in about a minute of CPU (benchmarks/results/wne_mismatch.md)."""

    backbone: str = "dncnn"
    sigma: str = "2%"
    wne: bool = True
    pooling: str = "joint"
    patch: int = 40
    steps: int = 500
    batch_size: int = 8
    lr: float = 2e-3
    seed: int = 0
    depth: int | None = None
    width: int | None = None
    window: int | None = None
    device: str = "auto"
    cache_mb: float = 128.0

    def backbone_kwargs(self) -> dict:
        """Constructor arguments of the backbone (``width`` is the transformer's ``dim``)."""
        kw: dict = {}
        if self.depth is not None:
            kw["depth"] = self.depth
        if self.width is not None:
            kw["dim" if self.backbone == "transformer" else "width"] = self.width
        if self.window is not None:
            if self.backbone != "transformer":
                raise NdgeoError(f"--window applies to the transformer, not {self.backbone!r}")
            kw["window"] = self.window
        return kw
