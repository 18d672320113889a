"""Pixel classifiers: stacked ND layers with a linear head, and the MLP baseline.

Both take raw per-pixel band values ``(N, C)`` and return logits ``(N, n_classes)``; both
register a model kind so ``build_model(model.config())`` rebuilds the architecture.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ndgeo.errors import NdgeoError
from ndgeo.nn.nd import CLOSED_FORM_DEFAULT, NDLayer, select_pairs
from ndgeo.nn.registry import register_model

HEAD_NORMS = ("none", "affine", "batchnorm")


def _as_tensor(x) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


class _Affine(nn.Module):
    """Learned per-feature scale and shift (a BatchNorm without batch statistics)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


def _head_norm(kind: str, n: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "affine":
        return _Affine(n)
    if kind == "batchnorm":
        return nn.BatchNorm1d(n)
    raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {kind!r}")


@register_model("nd")
class NDClassifier(nn.Module):
    """ND layers (first unsigned, later signed) -> optional normalisation -> head.

    The head is linear (``head_hidden=()``) or a small MLP on the indices (``head_hidden=(32,)``:
    Linear -> ReLU per hidden width, then a linear output); either way everything after the
    first layer sees only ND values, so the whole model keeps the first layer's invariance.
    ``max_bands`` gives the first layer band masks for a budget: :meth:`prune` keeps at most
    that many bands per side of each index, so its exported formulas are exact.

    Nothing before the first ND layer centres or shifts the input, so the logits are invariant to
    a common positive factor on all bands up to ``eps`` (see :mod:`ndgeo.nn.nd`; tested: logits
    within 1e-4 for factors in [1e-3, 1e3], float32, eps 1e-6, reflectance >= 0.01). Allowed before
    it: ``band_scale``, a fixed positive per-band factor (e.g. 1/median, :meth:`fit_band_scale`)
    kept as a buffer and folded back into :meth:`index_coefficients`. ``head_norm`` acts on ND
    outputs, which are already invariant: ``"batchnorm"`` (default; a fixed affine map in eval
    mode), ``"affine"`` (learned scale and shift) or ``"none"``.

    ``pairwise=True`` makes the first layer pairwise on ``pairs`` (all ``i < j`` pairs when not
    given; giving ``pairs`` implies pairwise); its number of indices is then ``len(pairs)`` and
    ``n_indices`` is not used. ``hidden_indices``: widths of layers 2..depth (an int or a list of
    ``depth - 1`` ints; default ``n_indices``).
    """

    def __init__(
        self,
        in_bands: int,
        n_classes: int,
        *,
        n_indices: int = 8,
        depth: int = 1,
        pairwise: bool = False,
        pairs: Sequence[Sequence[int]] | None = None,
        band_scale=None,
        eps: float = 1e-6,
        hidden_indices: int | Sequence[int] | None = None,
        head_norm: str = "batchnorm",
        head_hidden: Sequence[int] = (),
        max_bands: int | None = None,
        init: str = "jitter",
        init_pairs: Sequence[Sequence[int]] | None = None,
        check_input: bool = True,
        clamp_negative: bool = False,
        closed_form: bool = CLOSED_FORM_DEFAULT,
    ) -> None:
        super().__init__()
        if depth < 1 or n_classes < 1:
            raise ValueError(f"depth and n_classes must be >= 1, got {depth}, {n_classes}")
        if pairs is not None or pairwise:
            pairs = list(itertools.combinations(range(in_bands), 2)) if pairs is None else pairs
            pairs = [(int(i), int(j)) for i, j in pairs]
            n_indices = len(pairs)
        if hidden_indices is None:
            hidden_indices = [n_indices] * (depth - 1)
        elif isinstance(hidden_indices, int):
            hidden_indices = [hidden_indices] * (depth - 1)
        hidden_indices = [int(h) for h in hidden_indices]
        if len(hidden_indices) != depth - 1:
            raise ValueError(f"hidden_indices needs {depth - 1} widths, got {hidden_indices}")
        self.in_bands, self.n_classes, self.eps = int(in_bands), int(n_classes), float(eps)
        self.pairs, self.hidden_indices, self.head_norm = pairs, hidden_indices, head_norm
        self.clamp_negative = bool(clamp_negative)
        self.head_hidden = [int(h) for h in head_hidden]
        if any(h < 1 for h in self.head_hidden):
            raise ValueError(f"head_hidden widths must be >= 1, got {self.head_hidden}")
        if max_bands is not None and (pairs is not None or int(max_bands) < 1):
            raise ValueError("max_bands needs a dense first layer and a value >= 1, got "
                             f"{max_bands}" + (" with a pairwise layer" if pairs else ""))
        self.max_bands = None if max_bands is None else int(max_bands)

        scale = torch.ones(in_bands) if band_scale is None else _as_tensor(band_scale).float()
        valid = bool(torch.isfinite(scale).all() and (scale > 0).all())
        if scale.shape != (in_bands,) or not valid:
            raise ValueError(f"band_scale must be {in_bands} positive finite values, got {scale}")
        self.register_buffer("band_scale", scale.clone())

        common = {"eps": eps, "closed_form": closed_form}
        layers = [
            NDLayer(
                in_bands, n_indices, pairs=pairs, init=init, init_pairs=init_pairs,
                check_input=check_input, clamp_negative=clamp_negative,
                masked=self.max_bands is not None, **common,
            )
        ]
        for width in hidden_indices:
            layers.append(NDLayer(layers[-1].n_indices, width, signed=True, **common))
        self.nd_layers = nn.ModuleList(layers)
        self.norm = _head_norm(head_norm, layers[-1].n_indices)
        hidden: list[nn.Module] = []
        width = layers[-1].n_indices
        for h in self.head_hidden:
            hidden += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.head_layers = nn.Sequential(*hidden)
        self.head = nn.Linear(width, n_classes)

    def indices(self, x: torch.Tensor) -> torch.Tensor:
        """First-layer outputs (N, K): the learned spectral indices of the raw bands."""
        return self.nd_layers[0](x * self.band_scale)

    def from_indices(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.nd_layers[1:]:
            h = layer(h)
        return self.head(self.head_layers(self.norm(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_indices(self.indices(x))

    def nd_parameters(self) -> list[nn.Parameter]:
        """Raw ND parameters (train with a higher lr and no weight decay, notes section 6)."""
        return [p for layer in self.nd_layers for p in layer.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        """Normalisation and head parameters."""
        return [*self.norm.parameters(), *self.head_layers.parameters(),
                *self.head.parameters()]

    def prune(self, max_bands: int | None = None) -> None:
        """Apply the band budget (default ``self.max_bands``) to the first layer."""
        self.nd_layers[0].prune(max_bands or self.max_bands)

    def band_noise_penalty(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over first-layer indices of ``E[s_k] / (Var(y_k) + 1e-5)`` on the pixels ``x``.

        ``s_k`` (:meth:`NDLayer.band_noise_sensitivity`) is the first-order variance of index k
        under relative per-band noise per unit ``sigma^2``; divided by the index's spread over
        the pixels it is the noise variance of the standardised index the head sees (what
        BatchNorm divides by), i.e. 1 / its signal-to-noise ratio. Nearly cancelling numerator
        and denominator weights give a small spread and a large value. A training loss only:
        the model, and its invariance to a common factor, are unchanged.
        """
        y, s = self.nd_layers[0].band_noise_sensitivity(x * self.band_scale)
        return (s.mean(0) / (y.var(0, unbiased=False) + 1e-5)).mean()

    def n_parameters(self) -> int:
        """Trainable parameters actually used (pairwise masks count 2 per index)."""
        nd = sum(layer.n_parameters() for layer in self.nd_layers)
        return nd + sum(p.numel() for p in self.head_parameters() if p.requires_grad)

    def config(self) -> dict:
        """JSON-able architecture for ``build_model``; weights, ``band_scale`` and BatchNorm
        statistics live in the state dict."""
        return {
            "kind": "nd",
            "in_bands": self.in_bands,
            "n_classes": self.n_classes,
            "n_indices": self.nd_layers[0].n_indices,
            "depth": len(self.nd_layers),
            "pairwise": self.pairs is not None,
            "pairs": None if self.pairs is None else [list(p) for p in self.pairs],
            "eps": self.eps,
            "hidden_indices": list(self.hidden_indices),
            "head_norm": self.head_norm,
            "head_hidden": list(self.head_hidden),
            "max_bands": self.max_bands,
            "clamp_negative": self.clamp_negative,
        }

    @torch.no_grad()
    def fit_band_scale(self, x) -> None:
        """Set ``band_scale`` to 1 / median of each band's positive finite values (1 if none)."""
        x = _as_tensor(x).double()
        scale = torch.ones(self.in_bands, dtype=torch.float64)
        for i in range(self.in_bands):
            col = x[:, i]
            col = col[torch.isfinite(col) & (col > 0)]
            if col.numel():
                scale[i] = 1.0 / col.median()
        self.band_scale.copy_(scale)

    def init_pairs_from_data(self, x, y, *, max_corr: float = 0.95) -> list[tuple[int, int]]:
        """Start first-layer indices as the classical NDs chosen by :func:`select_pairs`."""
        if self.pairs is not None:
            raise ValueError("init_pairs_from_data is for dense first layers, this one is pairwise")
        pairs = select_pairs(x, y, self.nd_layers[0].n_indices, max_corr=max_corr, eps=self.eps)
        self.nd_layers[0].init_from_pairs(pairs)
        return pairs

    def index_coefficients(self, band_names: Sequence[str]) -> list[dict]:
        """First-layer indices as raw-band weights, each index scaled so its largest weight is 1.

        ``[{"name": "ND1", "positive": {band: w}, "negative": {band: w}}, ...]``; bands with an
        exactly zero weight (outside a pairwise mask) are left out.
        """
        if len(band_names) != self.in_bands:
            raise NdgeoError(
                f"{len(band_names)} band names given for a model of {self.in_bands} bands: "
                f"{list(band_names)}"
            )
        alpha, beta = self.nd_layers[0].coefficients()
        scale = self.band_scale.double().cpu().numpy()
        alpha, beta = alpha * scale, beta * scale
        out = []
        for k in range(alpha.shape[0]):
            top = max(alpha[k].max(), beta[k].max())
            pos = {b: float(w / top) for b, w in zip(band_names, alpha[k], strict=True) if w > 0}
            neg = {b: float(w / top) for b, w in zip(band_names, beta[k], strict=True) if w > 0}
            out.append({"name": f"ND{k + 1}", "positive": pos, "negative": neg})
        return out

    def index_importance(self, x) -> np.ndarray:
        """How much each class logit relies on each first-layer index, (n_classes, K).

        ``mean_pixels |d logit_c / d index_k| * std_pixels(index_k)`` over the given pixels, in
        eval mode: the first-order logit change caused by a typical variation of index k. For
        depth 1 this is exactly ``|effective head weight| * std``; for deeper models it is a local
        (gradient) measure, not an attribution that sums to the logit.
        """
        x = _as_tensor(x).to(self.band_scale)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"index_importance needs (N >= 2, C) pixels, got {tuple(x.shape)}")
        was_training = self.training
        self.eval()
        try:
            with torch.enable_grad():
                h = self.indices(x).detach().requires_grad_(True)
                logits = self.from_indices(h)
                rows = [
                    torch.autograd.grad(logits[:, c].sum(), h, retain_graph=True)[0].abs().mean(0)
                    for c in range(self.n_classes)
                ]
        finally:
            self.train(was_training)
        return (torch.stack(rows) * h.detach().std(0)).double().cpu().numpy()


@register_model("mlp")
class MLP(nn.Module):
    """Baseline: z-scored bands (:meth:`fit_standardizer`) -> Linear/ReLU layers -> linear head.

    Not illumination invariant by construction (the z-score and biases see absolute values).
    """

    def __init__(self, in_bands: int, n_classes: int, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.in_bands, self.n_classes = int(in_bands), int(n_classes)
        self.hidden = [int(h) for h in hidden]
        self.register_buffer("mean", torch.zeros(in_bands))
        self.register_buffer("std", torch.ones(in_bands))
        layers: list[nn.Module] = []
        width = in_bands
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    @torch.no_grad()
    def fit_standardizer(self, x) -> None:
        """Set the per-band mean/std buffers from training pixels (constant bands get std 1)."""
        x = _as_tensor(x).double()
        std = x.std(0, unbiased=False)
        self.mean.copy_(x.mean(0))
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def config(self) -> dict:
        """JSON-able architecture for ``build_model``; mean/std live in the state dict."""
        return {
            "kind": "mlp",
            "in_bands": self.in_bands,
            "n_classes": self.n_classes,
            "hidden": list(self.hidden),
        }


def mlp_n_parameters(in_bands: int, n_classes: int, hidden: Sequence[int]) -> int:
    """Parameter count of ``MLP(in_bands, n_classes, hidden)`` without building it."""
    widths = [in_bands, *hidden, n_classes]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def mlp_hidden_for_budget(
    in_bands: int, n_classes: int, budget: int, *, depth: int = 2, taper: float = 0.5
) -> tuple[int, ...]:
    """Hidden widths ``(h, h*taper, h*taper^2, ...)`` whose MLP parameter count is closest to
    ``budget`` (ties go to the smaller model); use it for "an MLP of equal parameter count"."""
    best, h = None, 1
    while True:
        hidden = tuple(max(1, round(h * taper**d)) for d in range(depth))
        n = mlp_n_parameters(in_bands, n_classes, hidden)
        if best is None or abs(n - budget) < abs(best[0] - budget):
            best = (n, hidden)
        if n > budget:
            return best[1]
        h += 1


def nd_indices_for_budget(in_bands: int, n_classes: int, budget: int, **nd_kwargs) -> int:
    """Largest ``n_indices`` whose ``NDClassifier(in_bands, n_classes, n_indices=..., **nd_kwargs)``
    has at most ``budget`` parameters (e.g. ``budget = mlp.n_parameters() // 4``)."""
    if nd_kwargs.get("pairwise") or nd_kwargs.get("pairs") is not None:
        raise ValueError("a pairwise first layer has one index per pair; its width is not free")
    k = 0
    while NDClassifier(in_bands, n_classes, n_indices=k + 1, **nd_kwargs).n_parameters() <= budget:
        k += 1
    if k == 0:
        raise ValueError(f"even one ND index exceeds the budget of {budget} parameters")
    return k
