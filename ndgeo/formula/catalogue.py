"""The spyndex (Awesome Spectral Indices) catalogue: constants, formulas and nearest NDs."""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from ndgeo.bands import Band
from ndgeo.errors import NdgeoError
from ndgeo.formula.expr import expression_variables, parse_expression
from ndgeo.formula.learned import IndexFormula


def catalogue_constants() -> dict[str, float | None]:
    """spyndex constants (``L``, ``g``, ``C1``, ...) with their default values (None if none)."""
    import spyndex

    return {k: spyndex.constants[k].default for k in spyndex.constants}


def catalogue_expression(name: str) -> tuple[str, list[str], dict[str, float | None]]:
    """``(formula, bands, constants)`` of a catalogue index, e.g. ``"SAVI"`` ->
    ``("(1.0 + L)*(N - R)/(N + R + L)", ["N", "R"], {"L": 1.0})``.

    ``bands`` are the formula variables that are not spyndex constants; ``constants`` maps the
    constants it uses to their defaults. Unknown names raise NdgeoError with close matches.
    """
    import spyndex

    indices = spyndex.indices
    key = name if name in indices else None
    if key is None:
        folded = [k for k in indices if k.lower() == name.lower()]
        key = folded[0] if len(folded) == 1 else None
    if key is None:
        close = difflib.get_close_matches(name, list(indices), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise NdgeoError(f"{name!r} is not in the spyndex catalogue ({len(indices)} indices){hint}")
    formula = str(indices[key].formula)
    consts = catalogue_constants()
    used = expression_variables(formula)
    bands = [b for b in indices[key].bands if b not in consts]
    bands += sorted(used - set(bands) - set(consts))
    return formula, bands, {c: consts[c] for c in sorted(used & set(consts))}


def _linear(node: ast.expr, constants: set[str]) -> dict[str | None, float] | None:
    """A linear form ``{variable: coef, None: constant}`` of a tree, or None if not linear."""
    if isinstance(node, ast.Constant):
        return {None: float(node.value)}
    if isinstance(node, ast.Name):
        return None if node.id in constants else {node.id: 1.0}
    if isinstance(node, ast.UnaryOp):
        inner = _linear(node.operand, constants)
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        return None if inner is None else {k: sign * v for k, v in inner.items()}
    if not isinstance(node, ast.BinOp):
        return None
    left, right = _linear(node.left, constants), _linear(node.right, constants)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Add | ast.Sub):
        sign = 1.0 if isinstance(node.op, ast.Add) else -1.0
        out = dict(left)
        for k, v in right.items():
            out[k] = out.get(k, 0.0) + sign * v
        return out
    if isinstance(node.op, ast.Mult):
        for a, b in ((left, right), (right, left)):
            if set(a) == {None}:
                return {k: a[None] * v for k, v in b.items()}
        return None
    if isinstance(node.op, ast.Div) and set(right) == {None} and right[None] != 0:
        return {k: v / right[None] for k, v in left.items()}
    return None


def _nd_vector(formula: str, constants: set[str]) -> dict[str, float] | None:
    """Signed band weights of a plain (weighted) normalized difference, else None."""
    tree = parse_expression(formula).tree
    if not (isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Div)):
        return None
    num, den = _linear(tree.left, constants), _linear(tree.right, constants)
    if num is None or den is None:
        return None
    num = {k: v for k, v in num.items() if v != 0}
    den = {k: v for k, v in den.items() if v != 0}
    if None in num or None in den or set(num) != set(den):
        return None
    if any(not math.isclose(abs(num[k]), den[k]) or den[k] <= 0 for k in den):
        return None
    if min(num.values()) > 0 or max(num.values()) < 0:
        return None
    return {str(k): v for k, v in num.items()}


@lru_cache(maxsize=1)
def catalogue_nd_vectors() -> tuple[tuple[str, dict[str, float]], ...]:
    """Every spyndex catalogue index that is a plain normalized difference of bands, with its
    signed band weights, e.g. ``("NDVI", {"N": 1.0, "R": -1.0})``."""
    import spyndex

    constants = set(spyndex.constants)
    out = []
    for key, index in spyndex.indices.items():
        if index.application_domain == "kernel":  # kNN, kNR are kernel values, not bands
            continue
        vector = _nd_vector(str(index.formula), constants)
        if vector is not None:
            out.append((key, vector))
    return tuple(out)


def _signed_weights(
    index: IndexFormula | Mapping[str, Any], bands: Sequence[Band] | None
) -> dict[str, float]:
    """Positive minus negative weight per ASI letter (``band:NAME`` for letterless bands)."""
    if isinstance(index, IndexFormula):
        pairs = [(t, 1.0) for t in index.positive] + [(t, -1.0) for t in index.negative]
        items = [(t.letter, t.band, sign * t.weight) for t, sign in pairs]
    else:
        if bands is None:
            raise NdgeoError("matching a coefficient dict needs the model's bands")
        by_name = {b.name: b for b in bands}
        items = []
        for side, sign in (("positive", 1.0), ("negative", -1.0)):
            for band, w in (index.get(side) or {}).items():
                if band not in by_name:
                    raise NdgeoError(f"band {band!r} is not among the bands {list(by_name)}")
                items.append((by_name[band].letter, band, sign * float(w)))
    vector: dict[str, float] = {}
    for letter, band, w in items:
        key = letter or f"band:{band}"
        vector[key] = vector.get(key, 0.0) + w
    return vector


#: Classic indices, preferred (in this order) among catalogue NDs with the same band pattern:
#: (G - N)/(G + N) is NDWI before NDSII or VgNIRBI.
CLASSIC = ("NDVI", "NDWI", "MNDWI", "NDMI", "NBR", "NBR2", "NDBI", "NDSI", "GNDVI", "NDRE")
#: Then by application domain: vegetation, water and urban indices are the most used.
DOMAIN_ORDER = ("vegetation", "water", "urban", "burn", "soil", "snow", "clouds", "radar")


def _preference(key: str) -> tuple:
    """Tie-break among catalogue NDs with the same band pattern: classic names, then domain."""
    import spyndex

    domain = str(spyndex.indices[key].application_domain)
    classic = CLASSIC.index(key) if key in CLASSIC else len(CLASSIC)
    rank = DOMAIN_ORDER.index(domain) if domain in DOMAIN_ORDER else len(DOMAIN_ORDER)
    return (classic, rank, key)


def _rank(key: str, cosine: float) -> tuple:
    """Sort key of a match: closeness, then classic indices (same sign first), then the
    same sign, then domain and name."""
    classic, domain, _ = _preference(key)
    return (-round(abs(cosine), 9), classic == len(CLASSIC), cosine < 0, classic, domain, key)


def _pattern(vector: Mapping[str, float]) -> tuple:
    """A band pattern up to scale and sign (to find catalogue NDs that are the same index)."""
    norm = math.sqrt(sum(w * w for w in vector.values()))
    signed = tuple(sorted((k, round(w / norm, 9)) for k, w in vector.items()))
    flipped = tuple(sorted((k, round(-w / norm, 9)) for k, w in vector.items()))
    return min(signed, flipped)


@lru_cache(maxsize=1)
def _same_pattern() -> dict[str, tuple[str, ...]]:
    groups: dict[tuple, list[str]] = {}
    for key, vector in catalogue_nd_vectors():
        groups.setdefault(_pattern(vector), []).append(key)
    return {key: tuple(sorted((k for k in members if k != key), key=_preference))
            for members in groups.values() for key in members}


def same_bands_as(name: str) -> list[str]:
    """Other catalogue NDs with exactly the band pattern of ``name`` (up to sign), e.g. NDWI ->
    NDSII, VgNIRBI, GNDVI: a learned index matching one matches them all equally."""
    return list(_same_pattern().get(name, ()))


def nearest_catalogue(
    index: IndexFormula | Mapping[str, Any],
    bands: Sequence[Band] | None = None,
    *,
    top: int = 1,
) -> list[tuple[str, float]]:
    """The ``top`` catalogue NDs closest to a learned index by cosine of signed band weights.

    ``index`` is an :class:`IndexFormula` or a coefficient dict (then ``bands`` maps its band
    names to letters). Ranked by absolute cosine; a negative cosine means the learned index is
    the catalogue index with its sign flipped. Weight on bands without an ASI letter counts
    against every match. Indices with the same band pattern tie; the tie goes to a classic
    index (:data:`CLASSIC`; of the same sign first, so (N - G)/(N + G) is GNDVI and
    (G - N)/(G + N) NDWI), then to the same sign, then by domain (:data:`DOMAIN_ORDER`);
    :func:`same_bands_as` lists the others. Returns ``[]`` when the index has no weight.
    """
    learned = _signed_weights(index, bands)
    norm = math.sqrt(sum(v * v for v in learned.values()))
    if norm == 0:
        return []
    scored = []
    for key, vector in catalogue_nd_vectors():
        dot = sum(w * learned.get(k, 0.0) for k, w in vector.items())
        cosine = dot / (norm * math.sqrt(sum(w * w for w in vector.values())))
        scored.append((key, cosine))
    scored.sort(key=lambda kc: _rank(*kc))
    return scored[:top]
