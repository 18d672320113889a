"""Learned ND coefficients as :class:`IndexFormula` objects (what every renderer formats).

A learned ND unit is ``(sum a_i B_i - sum b_j B_j) / (sum a_i B_i + sum b_j B_j)`` over raw
bands (the layer's epsilon is left out). Coefficients are rescaled so the largest weight of each
index is 1 (the index is unchanged) and rounded to ``precision`` decimal places; terms below
``threshold`` times the largest weight, or that round to zero, are dropped and the share of the
weight they carried is recorded in ``dropped``. Variables are ASI band letters (``N``, ``RE1``);
a band without a letter uses its own name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ndgeo.bands import Band
from ndgeo.errors import NdgeoError

# --------------------------------------------------------------------------------------------
# Formulas from coefficients


@dataclass(frozen=True)
class Term:
    """One weighted band of an index: ``weight * variable``."""

    band: str
    letter: str | None
    weight: float

    @property
    def variable(self) -> str:
        """The name used in formulas: the ASI letter, else the band name."""
        return self.letter or self.band


@dataclass(frozen=True)
class IndexFormula:
    """A learned ND index ``(P - Q) / (P + Q)`` after pruning and rescaling.

    ``positive`` and ``negative`` hold the kept terms of P and Q with unrounded weights
    (largest weight of the index = 1); ``dropped`` is the share of the index's total weight
    (sum over both sides) that pruning removed; ``precision`` is the number of decimals printed.
    """

    name: str
    positive: tuple[Term, ...]
    negative: tuple[Term, ...]
    dropped: float
    precision: int
    threshold: float

    @property
    def terms(self) -> tuple[Term, ...]:
        return self.positive + self.negative

    @property
    def variables(self) -> list[str]:
        """Formula variables, sorted, each once."""
        return sorted({t.variable for t in self.terms})

    def rounded(self, term: Term) -> float:
        """A term's weight as printed."""
        return round(term.weight, self.precision)


def formulas_from_coefficients(
    coeffs: Sequence[Mapping[str, Any]],
    bands: Sequence[Band],
    *,
    threshold: float = 0.05,
    precision: int = 3,
) -> list[IndexFormula]:
    """Build one :class:`IndexFormula` per coefficient dict.

    ``coeffs`` items look like ``{"name": "ND1", "positive": {"B08": 1.0}, "negative":
    {"B04": 0.67}}`` with non-negative weights keyed by band name; ``bands`` gives each band's
    ASI letter. Weights below ``threshold`` x the largest weight of the index are dropped.
    """
    if not 0 <= threshold < 1:
        raise NdgeoError(f"threshold must be in [0, 1), got {threshold}")
    if not 0 <= precision <= 12:
        raise NdgeoError(f"precision must be between 0 and 12 decimals, got {precision}")
    by_name = {b.name: b for b in bands}
    return [_formula(c, by_name, threshold, precision) for c in coeffs]


def model_formulas(
    model: Any, meta: Mapping[str, Any], *, threshold: float = 0.05, precision: int = 3
) -> list[IndexFormula]:
    """The first-layer indices of an ND model (``index_coefficients``) with its stored bands."""
    if not callable(getattr(model, "index_coefficients", None)):
        kind = meta.get("config", {}).get("kind")
        raise NdgeoError(f"this model ({kind!r}) has no learned indices; only ND models do")
    bands = [Band(b["name"], b.get("letter")) for b in meta["bands"]]
    coeffs = model.index_coefficients([b.name for b in bands])
    return formulas_from_coefficients(coeffs, bands, threshold=threshold, precision=precision)


def _formula(
    coeff: Mapping[str, Any], by_name: Mapping[str, Band], threshold: float, precision: int
) -> IndexFormula:
    name = str(coeff.get("name", ""))
    sides = {side: dict(coeff.get(side) or {}) for side in ("positive", "negative")}
    weights = [float(w) for side in sides.values() for w in side.values()]
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad:
        raise NdgeoError(f"index {name!r}: weights must be finite and >= 0, got {bad[0]}")
    largest = max(weights, default=0.0)
    if largest <= 0:
        raise NdgeoError(f"index {name!r} has no non-zero weight: {dict(coeff)}")
    kept: dict[str, list[Term]] = {"positive": [], "negative": []}
    dropped = 0.0
    for side, entries in sides.items():
        for band_name, raw in entries.items():
            if band_name not in by_name:
                raise NdgeoError(
                    f"index {name!r} uses band {band_name!r}, which is not among the model's "
                    f"bands {list(by_name)}"
                )
            weight = float(raw) / largest
            if weight < threshold or round(weight, precision) == 0:
                dropped += weight
                continue
            kept[side].append(Term(band_name, by_name[band_name].letter, weight))
    for side in kept.values():
        side.sort(key=lambda t: -t.weight)
    total = sum(weights) / largest
    formula = IndexFormula(
        name=name,
        positive=tuple(kept["positive"]),
        negative=tuple(kept["negative"]),
        dropped=dropped / total,
        precision=precision,
        threshold=threshold,
    )
    labels: dict[str, str] = {}
    for term in formula.terms:
        if labels.setdefault(term.variable, term.band) != term.band:
            raise NdgeoError(
                f"index {name!r}: bands {labels[term.variable]!r} and {term.band!r} would both "
                f"print as {term.variable!r}"
            )
    return formula




# --------------------------------------------------------------------------------------------
# The model's own indices, unrounded (what the VRT, Earth Engine and QGIS exports compute)


@dataclass(frozen=True)
class ExactIndex:
    """A first-layer index exactly as the model computes it on physical band values ``x``
    (negative values clipped to 0): ``(sum_i num_i x_i) / (sum_i den_i x_i + eps)``.

    ``num = (alpha - beta) * band_scale`` and ``den = (alpha + beta) * band_scale`` per band
    (model band order, float64 from the model's float32 coefficients), so nothing is rescaled,
    pruned or rounded and the layer's ``eps`` stays where the model adds it.
    """

    name: str
    bands: tuple[str, ...]
    numerator: tuple[float, ...]
    denominator: tuple[float, ...]
    eps: float

    def terms(self) -> list[tuple[str, float, float]]:
        """``(band, num, den)`` of the bands the index uses (``den > 0``), in model order."""
        return [(b, n, d) for b, n, d in zip(self.bands, self.numerator, self.denominator,
                                             strict=True) if d > 0]


def exact_indices(model: Any, meta: Mapping[str, Any]) -> list[ExactIndex]:
    """The first-layer indices of an ND model with its own weights and ``eps``."""
    layers = getattr(model, "nd_layers", None)
    if layers is None or not callable(getattr(model, "index_coefficients", None)):
        kind = meta.get("config", {}).get("kind")
        raise NdgeoError(f"this model ({kind!r}) has no learned indices; only ND models do")
    first = layers[0]
    alpha, beta = first.coefficients()
    scale = model.band_scale.double().cpu().numpy()
    names = tuple(b["name"] for b in meta["bands"])
    num, den = (alpha - beta) * scale, (alpha + beta) * scale
    return [ExactIndex(f"ND{k + 1}", names, tuple(float(v) for v in num[k]),
                       tuple(float(v) for v in den[k]), float(first.eps))
            for k in range(num.shape[0])]
