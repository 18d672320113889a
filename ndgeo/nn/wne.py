"""Wrapped Normalization Equivariance (Saied & Fleuret, ICML 2026): f(y) = s * g((y - m) / s) + m.

Any backbone ``g`` becomes normalization-equivariant, f(a*y + b) = a*f(y) + b for a > 0 and scalar
b, when m and s are the mean and population standard deviation of the *instance* pooled jointly over
all bands and pixels (the paper's choice and the default). ``pooling="band"`` computes one (m, s)
per band instead: a stronger prior (equivariance to independent per-band gains and offsets) that
discards absolute inter-band levels; use it only against per-band calibration drift.

Statistics are accumulated in float64 and never detached. For tiled inference scene statistics
are computed once (masked, float64, the same definition as ``wne_stats``: in numpy by
:func:`ndgeo.engine.scene_statistics`, or in torch with ``block_moments`` per block,
``combine_moments`` and ``moments_to_stats``) and passed to every tile with
``forward(..., stats=...)``; with a halo >= the backbone's receptive field the mosaic then equals
whole-scene inference.

Any ``nn.Module`` with ``forward(x) -> same shape`` can be wrapped (attention, LayerNorm,
BatchNorm included). Its receptive field is the one it declares (``receptive_field``), else it is
measured once by back-propagation and cached (:meth:`WNE.measured_field`); a backbone whose
output depends on the whole input (global attention or pooling: the measured field reaches the
border of every probe) is flagged ``is_global`` and has no finite halo.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ndgeo.errors import NdgeoError
from ndgeo.nn.registry import build_model, register_model

POOLINGS = ("joint", "band")


class Moments(NamedTuple):
    """Per-group sufficient statistics, float64 tensors of shape (N, k): k = 1 (joint) or C (band).

    ``m2`` is the sum of squared deviations from ``mean`` (Chan et al. form, numerically stable).
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise NdgeoError(f"unknown WNE pooling {pooling!r}; expected one of {POOLINGS}")
    return pooling


def _valid_mask(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Boolean valid mask as (N, 1, H, W); ``None`` means every pixel is valid."""
    n, _, h, w = y.shape
    if mask is None:
        return torch.ones((n, 1, h, w), dtype=torch.bool, device=y.device)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = valid), got dtype {mask.dtype}")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.shape != (n, 1, h, w):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match (N,1,H,W)=({n},1,{h},{w})")
    return mask


def _reduce_dims(pooling: str) -> tuple[int, ...]:
    return (1, 2, 3) if pooling == "joint" else (2, 3)


def block_moments(
    y: torch.Tensor, mask: torch.Tensor | None = None, pooling: str = "joint"
) -> Moments:
    """Moments of one block ``y`` (N, C, H, W) over valid pixels (two-pass, float64).

    Values under an invalid pixel (fill values, NaN) never enter the sums.
    """
    _check_pooling(pooling)
    valid = _valid_mask(y, mask).expand_as(y)
    y64 = torch.where(valid, y.double(), 0.0)
    dims = _reduce_dims(pooling)
    groups = y.shape[1] if pooling == "band" else 1
    count = valid.sum(dim=dims, dtype=torch.float64).reshape(y.shape[0], groups)
    safe = count.clamp_min(1.0)
    mean = y64.sum(dim=dims).reshape(count.shape) / safe
    dev = torch.where(valid, y64 - mean[..., None, None], 0.0)
    m2 = (dev * dev).sum(dim=dims).reshape(count.shape)
    return Moments(count, mean, m2)


def combine_moments(parts: Sequence[Moments]) -> Moments:
    """Merge block moments (Chan et al. parallel update): whole-image moments, float64."""
    if not parts:
        raise ValueError("combine_moments needs at least one Moments part")
    count, mean, m2 = (t.double() for t in parts[0])
    for part in parts[1:]:
        c_b, mean_b, m2_b = (t.double() for t in part)
        total = count + c_b
        safe = total.clamp_min(1.0)
        delta = mean_b - mean
        mean = mean + delta * c_b / safe
        m2 = m2 + m2_b + delta * delta * count * c_b / safe
        count = total
    return Moments(count, mean, m2)


def moments_to_stats(moments: Moments) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, population std) as float64 tensors of shape (N, k, 1, 1); 0, 0 for empty groups."""
    count, mean, m2 = moments
    var = m2 / count.clamp_min(1.0)
    positive = var > 0
    # Double where: exact 0 for constants and a finite gradient (sqrt'(0) is infinite).
    std = torch.where(positive, torch.sqrt(torch.where(positive, var, 1.0)), 0.0)
    return mean[..., None, None], std[..., None, None]


def wne_stats(
    y: torch.Tensor, mask: torch.Tensor | None = None, pooling: str = "joint"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The WNE statistics (mean, population std) of ``y`` (N, C, H, W), float64, (N, k, 1, 1).

    Differentiable; masked pixels are ignored; an all-invalid instance gives (0, 0), which the
    wrapper treats as constant (input returned unchanged).
    """
    return moments_to_stats(block_moments(y, mask, pooling))


def _as_stat(t: torch.Tensor | float, name: str) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.dim() == 0:
        return t.reshape(1, 1, 1, 1)
    if t.dim() != 4:
        raise ValueError(
            f"stats {name} must be broadcastable to (N, C or 1, 1, 1), got {tuple(t.shape)}"
        )
    return t


class WNE(nn.Module):
    """Wrap ``backbone`` so that f(y) = (s + eps) * g((y - m) / (s + eps)) + m.

    ``eps`` is in data units (default 1e-5 * ``data_range``, the paper's stabiliser for [0, 1]
    data); with eps > 0 equivariance holds up to a deviation of order eps / s, exact for eps = 0.
    Groups with s < ``tau`` (default 1e-9 * ``data_range``) are constant: the input is returned
    unchanged, the only equivariant answer. ``receptive_field`` is the backbone's: it is the halo
    needed for exact tiling when ``stats`` are passed in (internal statistics see the whole tile).
    The backbone needs nothing but ``forward(x) -> same shape``; ``channels`` (the band count) is
    only needed to measure an undeclared receptive field of a backbone without any Conv2d, and
    is otherwise read from the first Conv2d or the first input seen.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pooling: str = "joint",
        eps: float | None = None,
        tau: float | None = None,
        data_range: float = 1.0,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise NdgeoError(f"WNE wraps a torch.nn.Module, got {type(backbone).__name__}")
        if data_range <= 0:
            raise NdgeoError(f"WNE data_range must be positive, got {data_range}")
        self.backbone = backbone
        self.pooling = _check_pooling(pooling)
        self.eps = float(1e-5 * data_range if eps is None else eps)
        self.tau = float(1e-9 * data_range if tau is None else tau)
        if self.eps < 0 or self.tau < 0:
            raise NdgeoError(f"WNE eps and tau must be >= 0, got eps={self.eps}, tau={self.tau}")
        self.channels = channels
        self.tile_alignment: int = int(getattr(backbone, "tile_alignment", 1))
        declared = getattr(backbone, "receptive_field", None)
        self._field: int | None = None if declared is None else int(declared)
        self._measured = declared is not None  # declared fields are never measured

    @property
    def receptive_field(self) -> int | None:
        """Radius (pixels) of the backbone's receptive field, the halo exact tiling needs;
        ``None`` for a global backbone (see :attr:`is_global`). Declared or measured once."""
        if not self._measured:
            self._field = self.measured_field()
            self._measured = True
        return self._field

    @property
    def is_global(self) -> bool:
        """True when the backbone's output depends on the whole input: no halo makes tiles exact."""
        return self.receptive_field is None

    def measured_field(self) -> int | None:
        """Measure the backbone's receptive field (:func:`backbone_field`) on a copy of it."""
        channels = self.channels or _input_channels(self.backbone)
        if channels is None:
            raise NdgeoError(
                f"cannot measure the receptive field of {type(self.backbone).__name__}: it "
                "declares none and has no Conv2d to read its band count from; pass "
                "WNE(backbone, channels=C)"
            )
        return backbone_field(self.backbone, channels, self.tile_alignment)

    def _observe(self, channels: int) -> None:
        if self.channels is None:
            self.channels = channels

    def forward(
        self,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Denoise ``y`` (N, C, H, W); ``mask`` (N,1,H,W)/(N,H,W) bool, True = valid.

        Invalid pixels are filled with the mean before the backbone (0 in normalized space) and
        keep their original values in the output. ``stats`` = (mean, std) as from ``wne_stats``
        (std without eps) replaces the internal statistics, e.g. scene statistics for tiles.
        """
        valid = _valid_mask(y, mask)
        self._observe(y.shape[1])
        if stats is None:
            mean, std = wne_stats(y, valid, self.pooling)
        else:
            mean, std = _as_stat(stats[0], "mean"), _as_stat(stats[1], "std")
            mean, std = mean.to(y.device), std.to(y.device)
        constant = std < self.tau
        scale = torch.where(constant, 1.0, std + self.eps)
        y64 = torch.where(valid, y.double(), mean)  # fill before arithmetic: no NaN in gradients
        t = torch.where(constant, 0.0, (y64 - mean) / scale)
        out = scale * self.backbone(t.to(y.dtype)).double() + mean
        out = torch.where(constant, y64, out).to(y.dtype)
        return torch.where(valid, out, y)

    def config(self) -> dict:
        """JSON-able description; ``build_model(config)`` rebuilds the module (weights aside).

        Needs the backbone's own ``config()``: built-in backbones and those built by
        :func:`ndgeo.nn.denoisers.user_backbone` (which records the class path and arguments).
        """
        if not callable(getattr(self.backbone, "config", None)):
            raise NdgeoError(
                f"the backbone {type(self.backbone).__name__} has no config(), so a file could not "
                "say how to rebuild it; build it with ndgeo.nn.denoisers.user_backbone("
                "'pkg.module:Class', channels, **args) (or `ndgeo denoise train --backbone "
                "pkg.module:Class`)"
            )
        return {
            "kind": "wne",
            "pooling": self.pooling,
            "eps": self.eps,
            "tau": self.tau,
            "backbone": self.backbone.config(),
        }


@register_model("wne")
def _wne_from_config(backbone: dict, pooling: str, eps: float, tau: float) -> WNE:
    """Registry builder: the nested backbone config is rebuilt first."""
    return WNE(build_model(backbone), pooling=pooling, eps=eps, tau=tau,
               channels=backbone.get("channels"))  # a backbone without Conv2d can be measured


class BorderReached(ValueError):
    """The measured receptive field reaches the border of the probe input."""


def measure_receptive_field(
    module: nn.Module, channels: int, size: int = 64, period: int | None = None
) -> int:
    """Empirical receptive-field radius (pixels) of a local, shape-preserving ``module``.

    Back-propagates from one output pixel per position of a ``period`` x ``period`` block at the
    centre of a random ``size`` x ``size`` input (period defaults to ``module.tile_alignment`` or
    1, covering every window phase) and returns the largest Chebyshev distance to an input pixel
    with a non-zero gradient. Runs in eval mode (BatchNorm would couple the batch otherwise).
    ``size`` must leave the receptive field clear of the borders.
    """
    period = period or getattr(module, "tile_alignment", 1)
    centre = size // 2
    rows, cols = torch.meshgrid(
        torch.arange(period) + centre, torch.arange(period) + centre, indexing="ij"
    )
    rows, cols = rows.flatten(), cols.flatten()
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(rows), channels, size, size, generator=gen, dtype=dtype)
    x.requires_grad_(True)
    was_training = module.training
    module.eval()
    try:
        out = module(x)
        batch = torch.arange(len(rows))
        out[batch, :, rows, cols].sum().backward()
    finally:
        module.train(was_training)
    hit = (x.grad != 0).any(dim=1)  # (P, size, size)
    grid_r = torch.arange(size).view(1, size, 1)
    grid_c = torch.arange(size).view(1, 1, size)
    dist = torch.maximum(
        (grid_r - rows.view(-1, 1, 1)).abs(), (grid_c - cols.view(-1, 1, 1)).abs()
    )
    radius = int(torch.where(hit, dist, 0).max())
    if radius >= min(centre, size - centre - period):
        raise BorderReached(f"receptive field reaches the border at size={size}; use a larger size")
    return radius


#: Probe sizes of :func:`backbone_field`: a field reaching the border of the largest is global.
PROBE_SIZES = (24, 48, 96)


def backbone_field(
    module: nn.Module, channels: int, period: int = 1, sizes: Sequence[int] = PROBE_SIZES
) -> int | None:
    """Receptive-field radius of ``module`` measured on growing probes, ``None`` when global.

    Measures a copy whose parameters are jittered (a zero-initialised layer, e.g. the
    identity start of training, would hide the field) with :func:`measure_receptive_field` at
    each size in turn; a field still reaching the border of the largest probe means the output
    depends on the whole input (global attention or pooling), which no halo can make exact.
    """
    probe = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            if p.is_floating_point() and p.numel():
                jitter = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p.add_(jitter * (1e-3 + 0.1 * float(p.abs().mean())))
    for size in sizes:
        if size <= 2 * period:
            continue
        try:
            return measure_receptive_field(probe, channels, size=size, period=period)
        except BorderReached:
            continue
    return None


def _input_channels(module: nn.Module) -> int | None:
    """The input channels of the first Conv2d in ``module`` (a backbone's band count), if any."""
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


def receptive_field_of(model: nn.Module) -> int | None:
    """A denoiser's receptive field (``None``: global): WNE's cached one, a declared one, or
    measured now (an unwrapped user backbone)."""
    if isinstance(model, WNE):
        return model.receptive_field
    declared = getattr(model, "receptive_field", None)
    if declared is not None:
        return int(declared)
    channels = getattr(model, "channels", None) or _input_channels(model)
    if channels is None:
        raise NdgeoError(f"cannot measure the receptive field of {type(model).__name__}: no band "
                         "count (wrap it in WNE(backbone, channels=C))")
    return backbone_field(model, int(channels), int(getattr(model, "tile_alignment", 1)))


def run_denoiser(
    model: nn.Module,
    u: torch.Tensor,
    mask: torch.Tensor,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise ``u`` (N, C, H, W, normalized units) with ``mask`` (N, 1, H, W) True = valid.

    WNE models normalize with ``stats`` (mean, std) when given, else with the instance's own
    masked statistics. Other models (unwrapped, NE-arch) see invalid pixels filled with the same
    mean. Invalid pixels keep their input values.
    """
    if isinstance(model, WNE):
        return model(u, mask, stats=stats)
    mean = stats[0] if stats is not None else wne_stats(u, mask)[0]
    filled = torch.where(mask, u, mean.to(device=u.device, dtype=u.dtype))
    return torch.where(mask, model(filled), u)
