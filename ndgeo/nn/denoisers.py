"""Denoiser backbones for C-band images of any size, sized for CPU.

``DnCNN`` (standard, kind ``dncnn``; bias-free, ``dncnn-bf``) and ``WindowTransformer`` are
ordinary (not equivariant) backbones meant to be wrapped by :class:`ndgeo.nn.wne.WNE`; ``NEArch`` is
the Herbreteau et al. (NeurIPS 2023) baseline, equivariant by construction. Each exposes
``receptive_field`` (radius in pixels, the halo exact tiling needs), ``tile_alignment`` (tile
origins must be multiples of it for exact tiling) and ``config()``. A user's own module class
(``pkg.module:Class``) is wrapped by :class:`UserBackbone`, which records how to rebuild it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import sys
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ndgeo.errors import NdgeoError
from ndgeo.nn.registry import register_model
from ndgeo.nn.wne import WNE


def _pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding (keeps constants and affine maps); replicate when the image is too small."""
    h, w = x.shape[-2:]
    mode = "reflect" if max(top, bottom) < h and max(left, right) < w else "replicate"
    return F.pad(x, (left, right, top, bottom), mode=mode)


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017): conv-ReLU, (depth - 2) x conv-BN-ReLU, conv; predicts the noise.

    Output = input - noise, zero padding (the mean in WNE-normalized space),
    ``receptive_field = depth`` (one pixel per 3x3 convolution). The defaults are the paper's
    DnCNN, the backbone the WNE paper wraps (kind ``dncnn``): convolutions with bias, BatchNorm
    after the inner ones (whose bias BatchNorm's shift replaces). ``bias=False, batchnorm=False``
    is the bias-free DnCNN (Mohan et al. 2020, kind ``dncnn-bf``): every layer is positively
    homogeneous, so the network is already scale-equivariant, a different and stronger prior
    than the standard DnCNN. ``first_bias`` (default ``bias``) keeps only the first layer's bias:
    the architecture that ``dncnn`` meant before config version 2 (older files).
    """

    def __init__(
        self, channels: int, depth: int = 8, width: int = 32, *, batchnorm: bool = True,
        bias: bool = True, first_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise NdgeoError(f"DnCNN depth must be >= 2, got {depth}")
        self.channels, self.depth, self.width = channels, depth, width
        self.batchnorm, self.bias = batchnorm, bias
        self.first_bias = bias if first_bias is None else first_bias
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=self.first_bias),
                                   nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=bias and not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=bias))
        self.noise = nn.Sequential(*layers)
        self.receptive_field = depth
        self.tile_alignment = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.noise(x)

    def residual_output(self) -> nn.Conv2d:
        """The last layer of the residual branch (zeroed by :func:`start_at_identity`)."""
        return self.noise[-1]

    @property
    def kind(self) -> str:
        bias_free = not (self.bias or self.first_bias or self.batchnorm)
        return "dncnn-bf" if bias_free else "dncnn"

    def config(self) -> dict:
        base = {"kind": self.kind, "channels": self.channels, "depth": self.depth,
                "width": self.width}
        if self.kind == "dncnn-bf":
            return base
        return {**base, "version": DNCNN_VERSION, "batchnorm": self.batchnorm,
                "bias": self.bias, "first_bias": self.first_bias}


#: Config version of kind ``dncnn``: 2 = explicit bias/BatchNorm flags (the standard DnCNN by
#: default). Files without it were written when ``dncnn`` meant bias-free inner layers.
DNCNN_VERSION = 2


@register_model("dncnn")
def _dncnn_from_config(
    channels: int, depth: int = 8, width: int = 32, version: int | None = None,
    batchnorm: bool = False, bias: bool | None = None, first_bias: bool | None = None,
) -> DnCNN:
    """Registry builder of kind ``dncnn``. A config without ``version`` predates the standard
    DnCNN: ``dncnn`` then had a bias on the first convolution only and BatchNorm only when asked,
    and it is rebuilt as exactly that architecture, never as the standard DnCNN."""
    if version is None:
        return DnCNN(channels, depth, width, batchnorm=batchnorm, bias=False, first_bias=True)
    if version != DNCNN_VERSION or bias is None:
        raise ValueError(f"dncnn config version {version!r} is not one this ndgeo reads "
                         f"({DNCNN_VERSION}); it was written by a newer ndgeo")
    return DnCNN(channels, depth, width, batchnorm=batchnorm, bias=bias, first_bias=first_bias)


@register_model("dncnn-bf")
def bias_free_dncnn(channels: int, depth: int = 8, width: int = 32) -> DnCNN:
    """The bias-free DnCNN (Mohan et al. 2020): no additive constant, no BatchNorm."""
    return DnCNN(channels, depth, width, batchnorm=False, bias=False)


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N, H, W, D) with H, W multiples of ``window`` -> (N * windows, window**2, D), N-major."""
    n, h, w, d = x.shape
    x = x.view(n, h // window, window, w // window, window, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, d)


def _merge(t: torch.Tensor, n: int, h: int, w: int, window: int) -> torch.Tensor:
    """Inverse of :func:`_partition`."""
    d = t.shape[-1]
    t = t.view(n, h // window, w // window, window, window, d).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(n, h, w, d)


class _WindowAttention(nn.Module):
    """Multi-head softmax attention inside windows, with a learned relative position bias (Swin)."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + window - 1
        self.register_buffer("bias_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1).unsqueeze(0).to(x.dtype)
        if key_valid is not None:
            bias = bias + torch.where(key_valid, 0.0, float("-inf")).to(x.dtype)[:, None, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _SwinBlock(nn.Module):
    """LayerNorm + (shifted) window attention, LayerNorm + MLP, both residual."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def _attend(self, h: torch.Tensor) -> torch.Tensor:
        n, height, width, _ = h.shape
        win, s = self.window, self.shift
        key_valid = None
        if s:
            # Shifted grid = windows starting at -s; out-of-image keys are masked (Swin's
            # cyclic shift + mask without the wrap-around).
            h = F.pad(h, (0, 0, s, win - s, s, win - s))
            valid = torch.zeros(1, height + win, width + win, 1, dtype=torch.bool, device=h.device)
            valid[:, s:s + height, s:s + width] = True
            key_valid = _partition(valid, win).squeeze(-1).repeat(n, 1)
        out = self.attn(_partition(h, win), key_valid)
        out = _merge(out, n, h.shape[1], h.shape[2], win)
        return out[:, s:s + height, s:s + width] if s else out


def window_transformer_receptive_field(window: int, depth: int) -> int:
    """Receptive-field radius of :class:`WindowTransformer`, from its dependency structure.

    Propagates unit impulses (one per window phase) through the layers as boolean maps: 3x3 conv =
    dilation by one pixel, (shifted) window attention = union over each window. Equals the
    gradient measurement of ``ndgeo.nn.wne.measure_receptive_field`` (checked in the tests) but is
    cheap and weight-independent, so it is computed at construction.
    """
    size = window * (2 * depth + 6)
    centre = size // 2
    phase = torch.arange(window * window)
    rows, cols = centre + phase // window, centre + phase % window
    x = torch.zeros(len(phase), 1, size, size)
    x[phase, 0, rows, cols] = 1.0
    x = F.max_pool2d(x, 3, 1, 1)
    for i in range(depth):
        s = window // 2 if i % 2 else 0
        pad = (s, window - s) if s else (0, 0)
        y = F.max_pool2d(F.pad(x, pad + pad), window, window)
        y = y.repeat_interleave(window, -2).repeat_interleave(window, -1)
        x = y[..., s:s + size, s:s + size]
    x = F.max_pool2d(x, 3, 1, 1)
    grid = torch.arange(size)
    dist = torch.maximum(
        (grid.view(1, size, 1) - rows.view(-1, 1, 1)).abs(),
        (grid.view(1, 1, size) - cols.view(-1, 1, 1)).abs(),
    )
    return int(torch.where(x[:, 0] > 0, dist, 0).max())


@register_model("transformer")
class WindowTransformer(nn.Module):
    """Small SwinIR-like denoiser: conv embedding, ``depth`` window-attention blocks (odd blocks
    shifted by window // 2), LayerNorm, conv output, global input skip.

    Inputs of any H, W are reflect-padded at the bottom/right to a multiple of ``window`` and the
    output is cropped back. The window grid is anchored at the top-left pixel, so exact tiling needs
    tile origins on multiples of ``tile_alignment = window``. ``receptive_field`` comes from
    :func:`window_transformer_receptive_field` (21 for the defaults: window 8, depth 4).
    """

    def __init__(
        self,
        channels: int,
        dim: int = 32,
        window: int = 8,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if dim % heads or window < 1 or depth < 1:
            raise NdgeoError(
                f"WindowTransformer needs dim divisible by heads, window >= 1, depth >= 1; "
                f"got dim={dim}, heads={heads}, window={window}, depth={depth}"
            )
        self.channels, self.dim, self.window = channels, dim, window
        self.depth, self.heads, self.mlp_ratio = depth, heads, mlp_ratio
        self.embed = nn.Conv2d(channels, dim, 3, padding=1)
        self.blocks = nn.ModuleList(
            _SwinBlock(dim, heads, window, window // 2 if i % 2 else 0, mlp_ratio)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Conv2d(dim, channels, 3, padding=1)
        self.receptive_field = window_transformer_receptive_field(window, depth)
        self.tile_alignment = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = _pad(x, 0, -width % self.window, 0, -height % self.window)
        shallow = self.embed(x)
        f = shallow.permute(0, 2, 3, 1)
        for block in self.blocks:
            f = block(f)
        f = self.norm(f).permute(0, 3, 1, 2)
        return (x + self.out(shallow + f))[..., :height, :width]

    def residual_output(self) -> nn.Conv2d:
        """The last layer of the residual branch (zeroed by :func:`start_at_identity`)."""
        return self.out

    def config(self) -> dict:
        return {"kind": "transformer", "channels": self.channels, "dim": self.dim,
                "window": self.window, "depth": self.depth, "heads": self.heads,
                "mlp_ratio": self.mlp_ratio}


class _AffineConv2d(nn.Module):
    """3x3 convolution whose kernels are affine combinations: no bias, each output channel's weights
    sum to 1 via w_eff = roll(w, 1) - w + 1/n (n = C_in * 9), reflect padding."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def effective_weight(self) -> torch.Tensor:
        w = self.weight.flatten(1)
        return (w.roll(1, dims=1) - w + 1.0 / w.shape[1]).view_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(_pad(x, 1, 1, 1, 1), self.effective_weight())


def sort_pool(x: torch.Tensor) -> torch.Tensor:
    """Channel pairs (x1, x2) -> (min, max): commutes with x -> a*x + b for a > 0."""
    x1, x2 = x[:, 0::2], x[:, 1::2]
    d = F.relu(x1 - x2)
    return torch.stack((x1 - d, x2 + d), dim=2).flatten(1, 2)


class _AffineResidual(nn.Module):
    """alpha * x + (1 - alpha) * y with trainable alpha (init 0.5): an affine combination."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.alpha * x + (1 - self.alpha) * y


@register_model("ne-arch")
class NEArch(nn.Module):
    """Normalization-equivariant FDnCNN (Herbreteau et al. 2023): affine convs + sort pooling.

    head conv, (depth - 2) x [affine residual around conv + sort pool], tail conv, and a global
    affine residual with the input. No bias, BatchNorm, attention or softmax, so
    f(a*y + b) = a*f(y) + b exactly for a > 0 without any wrapper. ``width`` must be even.
    ``receptive_field = depth``.
    """

    def __init__(self, channels: int, depth: int = 8, width: int = 32) -> None:
        super().__init__()
        if depth < 2 or width % 2:
            raise NdgeoError(f"NEArch needs depth >= 2 and an even width; got depth={depth}, "
                             f"width={width}")
        self.channels, self.depth, self.width = channels, depth, width
        self.head = _AffineConv2d(channels, width)
        self.body = nn.ModuleList(_AffineConv2d(width, width) for _ in range(depth - 2))
        self.mixes = nn.ModuleList(_AffineResidual() for _ in range(depth - 2))
        self.tail = _AffineConv2d(width, channels)
        self.skip = _AffineResidual()
        self.receptive_field = depth
        self.tile_alignment = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = sort_pool(self.head(x))
        for conv, mix in zip(self.body, self.mixes, strict=True):
            h = mix(h, sort_pool(conv(h)))
        return self.skip(x, self.tail(h))

    def config(self) -> dict:
        return {"kind": "ne-arch", "channels": self.channels, "depth": self.depth,
                "width": self.width}


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "dncnn": DnCNN,
    "dncnn-bf": bias_free_dncnn,
    "transformer": WindowTransformer,
    "ne-arch": NEArch,
}


def is_user_backbone(name: str) -> bool:
    """``pkg.module:Class`` names a user backbone class; built-ins have no colon."""
    return ":" in name


def import_backbone(class_path: str) -> type[nn.Module]:
    """Import the ``nn.Module`` subclass named ``pkg.module:Class``.

    This runs that module's code, as any import does: call it only for a class the user named
    (``--backbone``), never for one a file names. The current directory is importable, as for
    ``python -m``.
    """
    module_name, _, attr = class_path.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in
                                              (*module_name.split("."), *attr.split("."))):
        raise NdgeoError(f"--backbone {class_path!r} is not a built-in ({', '.join(BACKBONES)}) "
                         "nor a class path pkg.module:Class")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as err:
        raise NdgeoError(f"cannot import backbone {class_path!r}: {err}") from None
    except AttributeError:
        raise NdgeoError(f"module {module_name!r} has no {attr!r} (--backbone {class_path})"
                         ) from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise NdgeoError(f"--backbone {class_path} is not a torch.nn.Module subclass")
    return obj


class UserBackbone(nn.Module):
    """A user's backbone class ``Class(channels, **args)`` with the ``config()`` that lets a model
    file record how to rebuild it: the class path and the arguments (kind ``user``).

    Rebuilding from a file goes through :func:`user_backbone_allowed`: the registry builder only
    accepts the class the caller imported on the user's say-so, never imports by itself. The
    wrapped module's ``receptive_field`` and ``tile_alignment`` are used when it declares them.
    """

    def __init__(self, class_path: str, cls: type[nn.Module], channels: int,
                 args: dict | None = None) -> None:
        super().__init__()
        self.class_path, self.channels, self.args = class_path, channels, dict(args or {})
        try:
            self.net = cls(channels, **self.args)
        except TypeError as err:
            raise NdgeoError(f"{class_path}(channels={channels}, **{self.args}) failed: {err}"
                             ) from None
        for name in ("receptive_field", "tile_alignment"):
            if getattr(self.net, name, None) is not None:
                setattr(self, name, int(getattr(self.net, name)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def config(self) -> dict:
        return {"kind": "user", "class": self.class_path, "channels": self.channels,
                "args": self.args}


_ALLOWED: contextvars.ContextVar[dict[str, type[nn.Module]] | None] = contextvars.ContextVar(
    "ndgeo_user_backbones", default=None)


@contextlib.contextmanager
def user_backbone_allowed(class_path: str | None) -> Iterator[None]:
    """Within the block, the registry may rebuild the user backbone ``class_path`` (imported here,
    because the user named it); no other class. ``None`` allows none."""
    allowed = {} if class_path is None else {class_path: import_backbone(class_path)}
    token = _ALLOWED.set(allowed)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


@register_model("user")
def _user_from_config(channels: int, args: dict, **config: object) -> UserBackbone:
    """Registry builder of kind ``user``: only a class allowed by :func:`user_backbone_allowed`."""
    class_path = str(config.get("class"))
    cls = (_ALLOWED.get() or {}).get(class_path)
    if cls is None:
        raise NdgeoError(f"the file's backbone is the user class {class_path}; loading a file "
                         f"never imports the code it names: pass --backbone {class_path} to "
                         "rebuild it (that imports and runs the module)")
    return UserBackbone(class_path, cls, channels, args)


def user_backbone(class_path: str, channels: int, **args: object) -> UserBackbone:
    """Import ``pkg.module:Class`` (runs its code); ``Class(channels, **args)``, saveable."""
    return UserBackbone(class_path, import_backbone(class_path), channels, args)


#: NE-arch's global skip weight at the start of training (Herbreteau et al. use 0.5).
NE_ARCH_START_SKIP = 0.9


def start_at_identity(model: nn.Module) -> nn.Module:
    """Zero the last layer of the residual branch of ``model`` (or of its WNE backbone), in place,
    so that training starts from the identity, a good denoiser at low noise.

    With the default random init the noise branch first outputs noise of its own, which the
    optimizer spends its first hundreds of steps undoing (a CPU budget then ends at the identity).
    NEArch has no residual branch to zero (its convolutions are affine combinations); its global
    skip alpha * x + (1 - alpha) * branch starts at :data:`NE_ARCH_START_SKIP` instead of 0.5,
    near the identity (with 0.5, 200 CPU steps left it below the identity on the sample scene:
    31.8 dB at 1x for an input of 32.9; 36.3 dB from 0.9). Returns ``model``.
    """
    net = model.backbone if isinstance(model, WNE) else model
    if isinstance(net, NEArch):
        with torch.no_grad():
            net.skip.alpha.fill_(NE_ARCH_START_SKIP)
    elif hasattr(net, "residual_output"):
        layer = net.residual_output()
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return model


def build_denoiser(
    backbone: str | nn.Module,
    channels: int,
    wne: bool = True,
    pooling: str = "joint",
    *,
    data_range: float = 1.0,
    eps: float | None = None,
    tau: float | None = None,
    **kw: object,
) -> nn.Module:
    """Backbone ``"dncnn" | "dncnn-bf" | "transformer" | "ne-arch"``, a user class
    ``"pkg.module:Class"`` (imported: runs its code) or a module, for ``channels`` bands (``kw``
    -> its constructor), wrapped in :class:`WNE` when ``wne`` (ne-arch is NE by construction:
    never wrapped). ``data_range`` (full-scale range in data units) sets the default eps and
    tau."""
    if isinstance(backbone, nn.Module):
        net = backbone
    elif is_user_backbone(backbone):
        net = user_backbone(backbone, channels, **kw)
    elif backbone in BACKBONES:
        try:
            net = BACKBONES[backbone](channels, **kw)
        except TypeError as err:
            raise NdgeoError(f"backbone {backbone!r}: {err}") from None
    else:
        raise NdgeoError(f"unknown denoiser backbone {backbone!r}; expected one of "
                         f"{sorted(BACKBONES)} or a class path pkg.module:Class")
    if not wne or isinstance(net, NEArch):
        return net
    return WNE(net, pooling=pooling, eps=eps, tau=tau, data_range=data_range, channels=channels)
