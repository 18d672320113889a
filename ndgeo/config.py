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


#: Default ``--noise-penalty`` of ND models (``benchmarks/real_scenes.py``, 3 seeds: on 200-band
#: Indian Pines it raised accuracy by 0.7-1.5 points and lowered the 10% per-band noise drop by
#: 7-8; on the 6-band set it cost 0.6 points).
ND_NOISE_PENALTY = 1e-3

#: Default ``--max-bands`` of ND models, applied only to inputs with more bands than this
#: (hyperspectral); below it every index keeps all bands and training is unchanged
#: (``benchmarks/real_scenes.py``, 200-band Indian Pines, 3 seeds: a third of the parameters,
#: accuracy -0.4 points on a random split and +0.1 on spatially disjoint blocks).
ND_MAX_BANDS = 32

#: ``--head`` names and the hidden widths each one defaults to.
HEADS = {"linear": (), "mlp": (64,)}


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON-able through :meth:`to_dict`).

    Defaults (``benchmarks/real_scenes.py``; see the README's real-data table): 32 ND indices,
    BatchNorm, an MLP head of 64 ReLU units, a per-band noise penalty of weight
    :data:`ND_NOISE_PENALTY` (ND models only); a fixed optimisation budget (``epochs`` passes over
    the training pixels, each at least ``min_steps_per_epoch`` batches, at most ``max_steps``
    batches in all) with AdamW, a short warm-up and cosine
    decay, class-balanced loss, the last iterate kept (nothing is chosen on the small validation
    split, which only reports accuracy), then a refit on all labelled pixels with the same
    recipe. ``schedule="plateau"`` restores the earlier recipe (plateau halving, early stopping
    on validation, best validation checkpoint).
    """

    model: str = "nd"  # "nd" or "mlp"
    n_indices: int = 32
    depth: int = 1
    pairwise: bool = False
    head_norm: str = "batchnorm"  # on ND outputs: "batchnorm", "affine" or "none"
    head: str = "mlp"  # "linear" or "mlp" (ND models)
    head_hidden: tuple[int, ...] | None = None  # default: HEADS[head]
    # band budget per side of each first-layer index; None = all bands; "auto" = ND_MAX_BANDS
    # for a dense ND layer, none for --pairwise (training.classifier.effective_max_bands)
    max_bands: int | str | None = "auto"
    prune_at: float = 0.5  # fraction of the budget after which the band budget is applied
    augment: bool = False  # per-band and per-pixel multiplicative jitter while training
    band_jitter: float = 0.05  # std of the per-band, per-pixel factor 1 + s * N(0, 1)
    # weight of a per-band noise penalty (ND models; 0 = off): "indices" = the first-layer
    # indices' noise-to-signal ratio in closed form (NDClassifier.band_noise_penalty), "loss" =
    # the squared gradient of the loss with respect to the log band values (double backprop)
    noise_penalty: float | None = None  # default: ND_NOISE_PENALTY for ND models, 0 for MLPs
    noise_penalty_on: str = "indices"
    illumination_jitter: float = 0.2  # std of the per-pixel log factor (exp(s * N(0, 1)))
    mlp_hidden: tuple[int, ...] = (64, 32)
    schedule: str = "cosine"  # "cosine" (fixed budget) or "plateau" (early stopping)
    refit: bool = True  # cosine schedule: refit on all labelled pixels after validating
    epochs: int = 300
    min_steps_per_epoch: int = 10  # small sets: an epoch is at least this many batches
    max_steps: int = 10_000  # large sets: the cosine budget is at most this many batches
    warmup: float = 0.03  # share of the steps with a linear learning-rate warm-up
    batch_size: int = 256
    lr: float = 1e-2  # ND raw parameters (no weight decay)
    head_lr: float = 1e-2  # head, normalisation (plateau schedule with BatchNorm: 1e-3)
    mlp_lr: float = 1e-2
    weight_decay: float = 1e-4  # head and MLP only
    patience: int = 25  # plateau schedule: epochs without improvement before stopping
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
                   "head_norm": ("batchnorm", "affine", "none"), "head": tuple(HEADS),
                   "schedule": ("cosine", "plateau"),
                   "noise_penalty_on": ("indices", "loss")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise NdgeoError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("n_indices", "depth", "epochs", "batch_size", "patience", "threads",
                     "min_steps_per_epoch", "max_steps"):
            if getattr(self, name) < 1:
                raise NdgeoError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.mlp_hidden = tuple(int(h) for h in self.mlp_hidden)
        if self.head_hidden is None:
            self.head_hidden = HEADS[self.head]
        self.head_hidden = tuple(int(h) for h in self.head_hidden)
        if self.head == "linear" and self.head_hidden:
            raise NdgeoError("--head-hidden needs --head mlp (a linear head has no hidden layer)")
        if self.head == "mlp" and (not self.head_hidden or min(self.head_hidden) < 1):
            raise NdgeoError(f"--head mlp needs hidden widths >= 1, got {self.head_hidden}")
        if self.max_bands not in (None, "auto"):
            if isinstance(self.max_bands, str) or self.max_bands < 1:
                raise NdgeoError(f"--max-bands must be >= 1, got {self.max_bands}")
            if self.pairwise:
                raise NdgeoError("--max-bands and --pairwise contradict each other (a pairwise "
                                 "index has one band per side)")
        if not 0.0 < self.prune_at < 1.0:
            raise NdgeoError(f"prune_at must be between 0 and 1, got {self.prune_at}")
        if self.noise_penalty is None:
            self.noise_penalty = ND_NOISE_PENALTY if self.model == "nd" else 0.0
        if not (math.isfinite(self.noise_penalty) and self.noise_penalty >= 0):
            raise NdgeoError(f"--noise-penalty must be >= 0, got {self.noise_penalty}")
        if self.noise_penalty and self.model != "nd":
            raise NdgeoError("--noise-penalty is for ND models (--model nd)")
        for name in ("band_jitter", "illumination_jitter", "warmup"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise NdgeoError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mlp_hidden"] = list(self.mlp_hidden)
        d["head_hidden"] = list(self.head_hidden or ())
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
    # 2e-3 threw the standard DnCNN into a dead state (every ReLU off, output = input) in 2 of 2
    # seeds within 1,000 steps; 1e-3 trained both to less than half the noise (3,200 steps).
    lr: float = 1e-3
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
