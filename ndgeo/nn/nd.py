"""The Normalized Difference (ND) layer: a spectral index with learned positive band weights.

Each output ``k`` is ``y_k = (sum_i a_ki x_i - sum_i b_ki x_i) / (sum_i (a_ki + b_ki) x_i + eps)``
with ``a = softplus(U)``, ``b = softplus(V)`` (Lotfi et al., arXiv:2601.06777). Positive weights
keep ``|y| <= 1``; the lack of any bias keeps ``y(k x) = y(x)`` for every ``k > 0`` up to ``eps``:

    |y(kx) - y(x)| <= eps * |k - 1| / (k * S + eps),   S = sum_i (a_i + b_i) |x_i|.

The signed variant (layers 2+) uses ``|x|`` in the denominator. It is evaluated as the base form on
``[relu(x), relu(-x)]`` with tied weights ``A = a.x+ + b.x-``, ``B = b.x+ + a.x-``, so
``y = (A - B) / (A + B + eps)`` with ``A, B >= 0`` in every form: that makes ``|y| <= 1`` hold in
floating point too, not only in exact arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ndgeo.errors import NdgeoError

#: softplus^-1(1): raw value whose coefficient is exactly the classical ND weight 1.
LOG_E_MINUS_1 = math.log(math.e - 1.0)

#: The closed-form backward (NDFunction) is the training path; ``benchmarks/nd_layer.py`` measures
#: it against autograd (faster, and it keeps fewer tensors alive for signed layers).
CLOSED_FORM_DEFAULT = True

_INITS = ("jitter", "pairs")


class NDInputError(NdgeoError, ValueError):
    """Negative or non-finite values reached an unsigned ND layer."""


def softplus(t: torch.Tensor) -> torch.Tensor:
    """Numerically stable softplus: ``max(t, 0) + log1p(exp(-|t|))``."""
    return t.clamp_min(0) + torch.log1p(torch.exp(-t.abs()))


def _coefficients(raw_pos, raw_neg, mask_pos, mask_neg):
    alpha, beta = softplus(raw_pos), softplus(raw_neg)
    if mask_pos is not None:
        alpha, beta = alpha * mask_pos, beta * mask_neg
    return alpha, beta


def _split_signs(x: torch.Tensor) -> torch.Tensor:
    """``[relu(x), relu(-x)]`` written with ``|x|`` so the derivative at 0 is 1/2 (sign(0) = 0)."""
    ax = x.abs()
    return torch.cat([(ax + x) * 0.5, (ax - x) * 0.5], dim=1)


def _stacked_weights(alpha, beta, signed: bool) -> torch.Tensor:
    """Weights W with ``z @ W.T = [A, B]`` for one GEMM per forward."""
    if not signed:
        return torch.cat([alpha, beta], dim=0)
    return torch.cat([torch.cat([alpha, beta], dim=1), torch.cat([beta, alpha], dim=1)], dim=0)


def nd_autograd(x, raw_pos, raw_neg, mask_pos, mask_neg, eps: float, signed: bool):
    """ND forward built from torch ops; autograd derives the backward."""
    alpha, beta = _coefficients(raw_pos, raw_neg, mask_pos, mask_neg)
    z = _split_signs(x) if signed else x
    ab = z @ _stacked_weights(alpha, beta, signed).T
    a, b = ab[:, : alpha.shape[0]], ab[:, alpha.shape[0] :]
    return (a - b) / (a + b + eps)


class NDFunction(torch.autograd.Function):
    """ND forward with the closed-form backward (notes section 4).

    With ``D = A + B + eps`` and ``y = (A - B) / D``: ``dy/dA = (1 - y) / D``,
    ``dy/dB = -(1 + y) / D``; the raw parameters get ``dL/dalpha * sigmoid(U)``. Only ``x``, ``y``
    and ``D`` are kept for the backward.
    """

    @staticmethod
    def forward(ctx, x, raw_pos, raw_neg, mask_pos, mask_neg, eps, signed):
        alpha, beta = _coefficients(raw_pos, raw_neg, mask_pos, mask_neg)
        # A - B = x @ (alpha - beta).T and A + B = |x| @ (alpha + beta).T (x >= 0 unsigned):
        # two contiguous GEMMs are ~8x faster than one stacked GEMM sliced into strided halves.
        # Rounding can put |y| a few ulps above 1; the clamp keeps the bound exact.
        den = ((x.abs() if signed else x) @ (alpha + beta).T).add_(eps)
        y = (x @ (alpha - beta).T).div_(den).clamp_(-1.0, 1.0)
        ctx.save_for_backward(x, raw_pos, raw_neg, mask_pos, mask_neg, y, den)
        ctx.signed = signed
        return y

    @staticmethod
    def backward(ctx, grad):
        x, raw_pos, raw_neg, mask_pos, mask_neg, y, den = ctx.saved_tensors
        signed, k, n = ctx.signed, y.shape[1], x.shape[1]
        r = grad / den
        ry = r * y
        g_ab = torch.empty(r.shape[0], 2 * k, dtype=r.dtype, device=r.device)
        torch.sub(r, ry, out=g_ab[:, :k])
        torch.add(r, ry, out=g_ab[:, k:]).neg_()
        alpha, beta = _coefficients(raw_pos, raw_neg, mask_pos, mask_neg)
        gx = gpos = gneg = None
        if ctx.needs_input_grad[0]:
            gz = g_ab @ _stacked_weights(alpha, beta, signed)
            if signed:
                s = torch.sign(x)
                gx = 0.5 * (gz[:, :n] * (s + 1) + gz[:, n:] * (s - 1))
            else:
                gx = gz
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            z = _split_signs(x) if signed else x
            gw = g_ab.T @ z
            if signed:
                g_alpha = gw[:k, :n] + gw[k:, n:]
                g_beta = gw[:k, n:] + gw[k:, :n]
            else:
                g_alpha, g_beta = gw[:k], gw[k:]
            gpos = g_alpha * torch.sigmoid(raw_pos)
            gneg = g_beta * torch.sigmoid(raw_neg)
            if mask_pos is not None:
                gpos, gneg = gpos * mask_pos, gneg * mask_neg
        return gx, gpos, gneg, None, None, None, None


def _check_non_negative(x: torch.Tensor) -> None:
    """Raise NDInputError unless every value is finite and >= 0 (one min/max pass when clean)."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    if bool(lo >= 0) and bool(torch.isfinite(hi)):
        return
    xd = x.detach()
    finite = torch.isfinite(xd)
    n_neg = int((xd < 0).sum())
    n_bad = int((~finite).sum())
    low = float(xd[finite].min()) if bool(finite.any()) else float("nan")
    raise NDInputError(
        f"ND layer input must be finite and non-negative (reflectance or digital numbers): "
        f"{n_neg} negative values (min {low:g}) and {n_bad} non-finite values among {xd.numel()}; "
        f"mask nodata before the model, or use clamp_negative=True to clamp negatives at 0"
    )


def _validate_pairs(pairs, in_features: int) -> list[tuple[int, int]]:
    out = []
    for pair in pairs:
        i, j = (int(v) for v in pair)
        if i == j or not (0 <= i < in_features and 0 <= j < in_features):
            raise ValueError(f"invalid band pair {tuple(pair)!r} for {in_features} input features")
        out.append((i, j))
    return out


class NDLayer(nn.Module):
    """Learned normalized differences ``(N, in_features) -> (N, n_indices)``, outputs in [-1, 1].

    Args:
        in_features: number of input features (bands for the first layer).
        n_indices: number of outputs K.
        signed: use ``|x|`` in the denominator (layers 2+ whose input is signed); equals the
            unsigned form on non-negative input.
        eps: denominator constant. 1e-6 suits float32 reflectance in [0, 1] (negligible for
            digital numbers); keep it >= 1e-6 for float32 signed layers.
        pairs: ``[(i, j), ...]``: pairwise form, index k only uses band i (positive side) and
            band j (negative side) through a fixed mask; requires ``len(pairs) == n_indices`` and
            has 2 effective parameters per index.
        init: ``"jitter"``: raw ~ N(log(e - 1), 0.5^2) (pairwise: log(e - 1) + N(0, 0.01^2));
            ``"pairs"``: index k starts as the classical ND of ``init_pairs[k]`` (random band
            pairs when not given; remaining indices get jitter), pairwise: exactly the classical ND.
        init_pairs: band pairs for ``init="pairs"`` (e.g. from :func:`select_pairs`).
        check_input: unsigned layers raise NDInputError (a ValueError and NdgeoError) naming the
            count and minimum of negative or non-finite inputs; one min/max pass per batch.
        clamp_negative: unsigned layers clamp negative inputs at 0 first (non-finite still fail).
        closed_form: use the closed-form backward (:class:`NDFunction`) instead of autograd.
        masked: dense layer with (initially all-ones) band masks in its state, for a band budget
            (:meth:`prune`): masked-out weights are exactly 0 and get no gradient.
    """

    def __init__(
        self,
        in_features: int,
        n_indices: int,
        *,
        signed: bool = False,
        eps: float = 1e-6,
        pairs: Sequence[Sequence[int]] | None = None,
        init: str = "jitter",
        init_pairs: Sequence[Sequence[int]] | None = None,
        check_input: bool = True,
        clamp_negative: bool = False,
        closed_form: bool = CLOSED_FORM_DEFAULT,
        masked: bool = False,
    ) -> None:
        super().__init__()
        if in_features < 2 or n_indices < 1:
            raise ValueError(
                f"NDLayer needs in_features >= 2 and n_indices >= 1, got {in_features}, {n_indices}"
            )
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.in_features, self.n_indices = int(in_features), int(n_indices)
        self.signed, self.eps = bool(signed), float(eps)
        self.check_input, self.clamp_negative = bool(check_input), bool(clamp_negative)
        self.closed_form = bool(closed_form)
        self.pairs = None if pairs is None else _validate_pairs(pairs, in_features)
        self.raw_pos = nn.Parameter(torch.empty(n_indices, in_features))
        self.raw_neg = nn.Parameter(torch.empty(n_indices, in_features))
        if self.pairs is None and masked:
            self.register_buffer("mask_pos", torch.ones(n_indices, in_features))
            self.register_buffer("mask_neg", torch.ones(n_indices, in_features))
        elif self.pairs is None:
            self.register_buffer("mask_pos", None)
            self.register_buffer("mask_neg", None)
        else:
            if len(self.pairs) != n_indices:
                raise ValueError(f"{len(self.pairs)} pairs given for n_indices={n_indices}")
            rows = torch.arange(n_indices)
            mask_pos = torch.zeros(n_indices, in_features)
            mask_neg = torch.zeros(n_indices, in_features)
            mask_pos[rows, [i for i, _ in self.pairs]] = 1.0
            mask_neg[rows, [j for _, j in self.pairs]] = 1.0
            self.register_buffer("mask_pos", mask_pos)
            self.register_buffer("mask_neg", mask_neg)
        self.reset_parameters(init, init_pairs)

    @torch.no_grad()
    def reset_parameters(
        self, init: str = "jitter", init_pairs: Sequence[Sequence[int]] | None = None
    ) -> None:
        """(Re)initialise the raw parameters; see the class docstring for ``init``."""
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if self.pairs is not None:
            if init_pairs is not None:
                raise ValueError("init_pairs is for dense layers; a pairwise layer has its pairs")
            for raw in (self.raw_pos, self.raw_neg):
                raw.fill_(LOG_E_MINUS_1)
                if init == "jitter":
                    raw.add_(torch.randn_like(raw), alpha=0.01)
            return
        for raw in (self.raw_pos, self.raw_neg):
            raw.normal_(LOG_E_MINUS_1, 0.5)
        if init == "pairs":
            if init_pairs is None:
                init_pairs = [
                    torch.randperm(self.in_features)[:2].tolist() for _ in range(self.n_indices)
                ]
            self.init_from_pairs(init_pairs)

    @torch.no_grad()
    def init_from_pairs(self, pairs: Sequence[Sequence[int]], strength: float = 3.0) -> None:
        """Start index k as the classical ND of ``pairs[k]`` (raw +strength on the pair, -strength
        elsewhere); indices beyond ``len(pairs)`` keep their current values."""
        if self.pairs is not None:
            raise ValueError("init_from_pairs is for dense layers; a pairwise layer has its pairs")
        pairs = _validate_pairs(pairs, self.in_features)
        if len(pairs) > self.n_indices:
            raise ValueError(f"{len(pairs)} pairs given for n_indices={self.n_indices}")
        for k, (i, j) in enumerate(pairs):
            self.raw_pos[k].fill_(-strength)
            self.raw_neg[k].fill_(-strength)
            self.raw_pos[k, i] = strength
            self.raw_neg[k, j] = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"NDLayer expects (N, {self.in_features}) input, got {tuple(x.shape)}"
            )
        if not self.signed:
            if self.clamp_negative:
                x = x.clamp_min(0)
            if self.check_input:
                _check_non_negative(x)
        nd = NDFunction.apply if self.closed_form else nd_autograd
        masks = (self.mask_pos, self.mask_neg)
        return nd(x, self.raw_pos, self.raw_neg, *masks, self.eps, self.signed)

    @torch.no_grad()
    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """Effective positive weights ``(alpha, beta)``, float64 (K, in); exactly 0 off the mask."""
        alpha, beta = _coefficients(self.raw_pos, self.raw_neg, self.mask_pos, self.mask_neg)
        return alpha.double().cpu().numpy(), beta.double().cpu().numpy()

    @torch.no_grad()
    def prune(self, max_bands: int) -> None:
        """Keep at most ``max_bands`` bands per side of every index (the largest coefficients),
        masking the others to exactly 0: the index then *is* its short formula."""
        if self.mask_pos is None or self.pairs is not None:
            raise ValueError("prune needs a dense layer built with masked=True")
        if max_bands < 1:
            raise ValueError(f"max_bands must be >= 1, got {max_bands}")
        alpha, beta = _coefficients(self.raw_pos, self.raw_neg, self.mask_pos, self.mask_neg)
        for coef, mask in ((alpha, self.mask_pos), (beta, self.mask_neg)):
            k = min(max_bands, self.in_features)
            keep = torch.zeros_like(mask)
            keep.scatter_(1, coef.topk(k, dim=1).indices, 1.0)
            mask.mul_(keep)

    def band_noise_sensitivity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, s)``, both (N, K): the indices and ``s_k = ||d y_k / d log x||^2`` per pixel.

        ``s`` is the variance of ``y_k`` under small independent relative per-band noise
        ``x_i (1 + sigma n_i)`` per unit ``sigma^2`` (first order). In closed form, with
        ``A = a.x``, ``B = b.x``, ``D = A + B + eps``, ``P = 2B + eps``, ``Q = 2A + eps``:
        ``d y / d log x_i = x_i (a_i P - b_i Q) / D^2``, so
        ``s = (P^2 x^2.a^2 - 2PQ x^2.(ab) + Q^2 x^2.b^2) / D^4`` (three GEMMs; differentiable).
        Like ``y``, ``s`` is unchanged by a common factor on ``x`` (up to ``eps``). Unsigned
        layers only (the first layer, on raw bands).
        """
        if self.signed:
            raise ValueError("band_noise_sensitivity is defined for unsigned (first) layers")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"NDLayer expects (N, {self.in_features}) input, got {tuple(x.shape)}"
            )
        if self.clamp_negative:
            x = x.clamp_min(0)
        alpha, beta = _coefficients(self.raw_pos, self.raw_neg, self.mask_pos, self.mask_neg)
        a, b = x @ alpha.T, x @ beta.T
        den = a + b + self.eps
        y = (a - b) / den
        p, q = 2 * b + self.eps, 2 * a + self.eps
        x2 = x * x
        s = (p * p * (x2 @ (alpha * alpha).T) - 2 * p * q * (x2 @ (alpha * beta).T)
             + q * q * (x2 @ (beta * beta).T)) / den.pow(4)
        return y, s.clamp_min(0)

    def n_parameters(self) -> int:
        """Trainable parameters actually used: 2 per index (pairwise), the unmasked weights
        (band budget) or 2 per index and input."""
        if self.pairs is not None:
            return 2 * self.n_indices
        if self.mask_pos is not None:
            return int(self.mask_pos.count_nonzero() + self.mask_neg.count_nonzero())
        return 2 * self.n_indices * self.in_features

    def extra_repr(self) -> str:
        form = "pairwise" if self.pairs is not None else "dense"
        return (
            f"{self.in_features}, {self.n_indices}, {form}, signed={self.signed}, eps={self.eps:g}"
        )


def _anova_f(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-way ANOVA F statistic of every column of ``features`` (N, P) against ``labels``."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n, g = features.shape[0], classes.size
    grand = features.mean(axis=0)
    sums = np.zeros((g, features.shape[1]))
    np.add.at(sums, inverse, features)
    means = sums / counts[:, None]
    ss_between = (counts[:, None] * (means - grand) ** 2).sum(axis=0)
    ss_within = ((features - means[inverse]) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (ss_between / (g - 1)) / (ss_within / (n - g))
    f[ss_within == 0] = np.where(ss_between[ss_within == 0] > 0, np.inf, 0.0)
    return np.nan_to_num(f, nan=0.0)


def select_pairs(
    x,
    y,
    k: int,
    *,
    max_corr: float = 0.95,
    eps: float = 1e-6,
    max_samples: int = 200_000,
    seed: int = 0,
) -> list[tuple[int, int]]:
    """Pick up to ``k`` band pairs whose classical ND best separates the classes.

    Every pairwise ND ``(x_i - x_j) / (x_i + x_j + eps)``, ``i < j``, is scored by its ANOVA F
    statistic on ``(x, y)``; pairs are taken by decreasing F, skipping a candidate whose ND
    correlates with an already chosen one at ``|r| > max_corr``. Fewer than ``k`` pairs come back
    when fewer pass that filter. ``x``: (N, C) non-negative, ``y``: (N,) class labels; at most
    ``max_samples`` pixels (a seeded random subset) are used.
    """
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y).ravel()
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"select_pairs needs x (N, C>=2) and y (N,), got {x.shape}, {y.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_non_negative(torch.from_numpy(x))
    if np.unique(y).size < 2 or x.shape[0] <= np.unique(y).size:
        raise ValueError(
            f"select_pairs needs at least 2 classes and more samples than classes, got "
            f"{np.unique(y).size} classes in {x.shape[0]} samples"
        )
    if x.shape[0] > max_samples:
        keep = np.random.default_rng(seed).choice(x.shape[0], max_samples, replace=False)
        x, y = x[keep], y[keep]
    ii, jj = np.triu_indices(x.shape[1], 1)
    nd = (x[:, ii] - x[:, jj]) / (x[:, ii] + x[:, jj] + eps)
    scores = _anova_f(nd, y)
    std = nd.std(axis=0)
    z = np.divide(nd - nd.mean(axis=0), std, out=np.zeros_like(nd), where=std > 0)
    chosen: list[int] = []
    for p in np.argsort(-scores, kind="stable"):
        if len(chosen) == k:
            break
        if chosen and np.abs(z[:, p] @ z[:, chosen]).max() / z.shape[0] > max_corr:
            continue
        chosen.append(int(p))
    return [(int(ii[p]), int(jj[p])) for p in chosen]
