"""Learned ND coefficients as spectral-index formulas, catalogue matching and a safe evaluator.

A learned ND unit is ``(sum a_i B_i - sum b_j B_j) / (sum a_i B_i + sum b_j B_j)`` over raw
bands (the layer's epsilon is left out). :func:`formulas_from_coefficients` turns the coefficient
dicts of ``NDClassifier.index_coefficients`` into :class:`IndexFormula` objects, which render as
text, LaTeX, numexpr / gdal_calc expressions, Awesome Spectral Indices (ASI) v0 entries or JSON.

Conventions:

* Coefficients are rescaled so the largest weight of each index is 1 (this leaves the index
  unchanged) and printed rounded to ``precision`` decimal places; a weight of 1 prints as the
  bare variable.
* Terms whose weight is below ``threshold`` times the largest weight (default 0.05), or that
  round to zero, are dropped. Pruning *does* change the index, so each formula records the
  share of the total weight it leaves out (``dropped``).
* Variables are ASI band letters (``N``, ``RE1``); a band without a letter uses its own name.

:func:`evaluate` computes formulas (exported or from the spyndex catalogue) with a restricted
interpreter over Python's ``ast``: numbers, variable names, ``+ - * / **``, unary ``+ -`` and
parentheses. Nothing else is accepted and nothing is ever passed to ``eval``/``exec``.
"""

from __future__ import annotations

import ast
import datetime as _dt
import difflib
import json
import keyword
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ndgeo import __version__
from ndgeo.bands import Band
from ndgeo.errors import NdgeoError

#: Reference given in exported ASI entries: the ND layer paper.
ND_LAYER_REFERENCE = "https://arxiv.org/abs/2601.06777"

#: Output formats understood by :func:`render`.
FORMATS = ("text", "latex", "numexpr", "asi", "json")

_MAX_EXPRESSION_CHARS = 10_000


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
# Renderers


def _number(value: float, precision: int) -> str:
    text = f"{value:.{precision}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _product(coef: float, var: str, precision: int, mult: str) -> str:
    text = _number(coef, precision)
    return var if text == "1" else f"{text}{mult}{var}"


def _sides(
    f: IndexFormula, names: Mapping[str, str], *, mult: str, spaced: bool
) -> tuple[str, str]:
    """Numerator and denominator text, with ``names`` mapping variable -> printed name.

    A band on both sides (dense layers learn both weights of every band) is printed once per
    side: ``(p - q)`` in the numerator and ``(p + q)`` in the denominator, which is the same
    function as the unmerged form and far easier to read.
    """
    pos: dict[str, float] = {}
    neg: dict[str, float] = {}
    for term in f.positive:
        pos[term.variable] = pos.get(term.variable, 0.0) + f.rounded(term)
    for term in f.negative:
        neg[term.variable] = neg.get(term.variable, 0.0) + f.rounded(term)
    order = sorted(set(pos) | set(neg), key=lambda v: -(pos.get(v, 0.0) - neg.get(v, 0.0)))
    plus, minus = (" + ", " - ") if spaced else ("+", "-")
    numerator = ""
    for var in order:
        net = round(pos.get(var, 0.0) - neg.get(var, 0.0), f.precision)
        if net == 0:
            continue
        product = _product(abs(net), names[var], f.precision, mult)
        if not numerator:
            numerator = product if net > 0 else "-" + product
        else:
            numerator += (plus if net > 0 else minus) + product
    denominator = plus.join(
        _product(pos.get(v, 0.0) + neg.get(v, 0.0), names[v], f.precision, mult) for v in order
    )
    return numerator or "0", denominator


def _dropped_note(f: IndexFormula) -> str:
    if f.dropped == 0:
        return "all terms kept"
    return (
        f"drops {100 * f.dropped:.1f}% of the weight "
        f"(terms below {f.threshold:g} x the largest weight)"
    )


def to_text(f: IndexFormula, nearest: Sequence[tuple[str, float]] = ()) -> str:
    """``ND1 = (N + 0.15*RE1 - 0.67*R) / (N + 0.15*RE1 + 0.67*R)  # note``."""
    notes = [_dropped_note(f)]
    if nearest:
        notes.append("nearest catalogue index: " + ", ".join(f"{n} ({c:.2f})" for n, c in nearest))
    return f"{to_plain(f)}  # " + "; ".join(notes)


def to_plain(f: IndexFormula) -> str:
    """``ND1 = (N - 0.67*R) / (N + 0.67*R)``, without notes (used as a band description)."""
    num, den = _sides(f, {v: v for v in f.variables}, mult="*", spaced=True)
    return f"{f.name} = ({num}) / ({den})"


def _latex_name(text: str) -> str:
    escaped = text.replace("\\", r"\textbackslash{}")
    for ch in "_&%$#{}":
        escaped = escaped.replace(ch, "\\" + ch)
    return rf"\mathrm{{{escaped}}}"


def to_latex(f: IndexFormula) -> str:
    r"""``\mathrm{ND1} = \frac{\mathrm{N} - 0.67\,\mathrm{R}}{\mathrm{N} + 0.67\,\mathrm{R}}``."""
    names = {v: _latex_name(v) for v in f.variables}
    num, den = _sides(f, names, mult=r"\,", spaced=True)
    return rf"{_latex_name(f.name)} = \frac{{{num}}}{{{den}}}"


def to_numexpr(f: IndexFormula, names: str | Mapping[str, str] = "letters") -> str:
    """An expression for numexpr, gdal_calc (``--calc``) or :func:`evaluate`.

    ``names``: ``"letters"`` (ASI letters, band names where a band has none), ``"bands"`` (the
    bands' own names) or a mapping band name -> variable (e.g. ``{"B08": "A", "B04": "B"}`` for
    gdal_calc). Every variable must be a Python identifier.
    """
    if names == "letters":
        mapping = {t.variable: t.variable for t in f.terms}
    elif names == "bands":
        mapping = {t.variable: t.band for t in f.terms}
    elif isinstance(names, Mapping):
        missing = sorted({t.band for t in f.terms} - set(names))
        if missing:
            raise NdgeoError(f"no variable name given for band(s) {missing} of {f.name}")
        mapping = {t.variable: str(names[t.band]) for t in f.terms}
    else:
        raise NdgeoError(f"names must be 'letters', 'bands' or a mapping, got {names!r}")
    for var in mapping.values():
        if not var.isidentifier() or keyword.iskeyword(var):
            raise NdgeoError(
                f"{var!r} is not usable as a variable in an expression; pass a mapping band "
                "name -> identifier"
            )
    num, den = _sides(f, mapping, mult="*", spaced=True)
    return f"({num})/({den})"


def _asi_domains() -> set[str]:
    import spyndex

    return {str(i.application_domain) for i in spyndex.indices.values()}


def to_asi(
    f: IndexFormula,
    *,
    short_name: str | None = None,
    long_name: str | None = None,
    application_domain: str = "vegetation",
    reference: str = ND_LAYER_REFERENCE,
    platforms: Sequence[str] = (),
    contributor: str = f"ndgeo {__version__}",
    date_of_addition: str | None = None,
) -> dict[str, Any]:
    """An Awesome Spectral Indices v0 entry (exactly its 9 keys) for a learned index.

    The formula is plain arithmetic over ASI band letters and evaluates like the catalogue's
    (``eval`` with the band arrays as namespace). ``application_domain`` must be one of the
    catalogue's domains (vegetation, water, soil, ...). Bands without a letter are refused.
    """
    letterless = sorted({t.band for t in f.terms if not t.letter})
    if letterless:
        raise NdgeoError(
            f"{f.name}: band(s) {letterless} have no Awesome Spectral Indices letter; name the "
            "raster's bands (e.g. --sensor or --bands) so they map to letters"
        )
    domains = _asi_domains()
    if application_domain not in domains:
        raise NdgeoError(
            f"unknown application domain {application_domain!r}; ASI uses {sorted(domains)}"
        )
    return {
        "short_name": short_name or f.name,
        "long_name": long_name or f"Learned normalized difference {f.name} (ndgeo ND layer)",
        "formula": to_numexpr(f),
        "bands": f.variables,
        "application_domain": application_domain,
        "reference": reference,
        "platforms": list(platforms),
        "contributor": contributor,
        "date_of_addition": date_of_addition or _dt.date.today().isoformat(),
    }


def _as_record(f: IndexFormula, nearest: Sequence[tuple[str, float]]) -> dict[str, Any]:
    def side(terms: tuple[Term, ...]) -> list[dict[str, Any]]:
        return [
            {"band": t.band, "letter": t.letter, "variable": t.variable, "weight": f.rounded(t)}
            for t in terms
        ]

    return {
        "name": f.name,
        "formula": to_numexpr(f) if _identifiers(f) else None,
        "text": to_plain(f),
        "latex": to_latex(f),
        "variables": f.variables,
        "positive": side(f.positive),
        "negative": side(f.negative),
        "dropped_weight_fraction": f.dropped,
        "threshold": f.threshold,
        "precision": f.precision,
        "nearest_catalogue": [{"short_name": n, "cosine": c} for n, c in nearest],
    }


def _identifiers(f: IndexFormula) -> bool:
    return all(v.isidentifier() and not keyword.iskeyword(v) for v in f.variables)


def to_json(formulas: Sequence[IndexFormula], *, top: int = 1) -> str:
    """A JSON document ``{"indices": [...]}`` with each index's terms, formula texts, dropped
    weight and ``top`` nearest catalogue NDs (``top=0`` to skip matching)."""
    records = [_as_record(f, nearest_catalogue(f, top=top) if top else []) for f in formulas]
    return json.dumps({"indices": records}, indent=2)


def render(formulas: Sequence[IndexFormula], fmt: str, **options: Any) -> str:
    """All formulas in one output format (see :data:`FORMATS`).

    ``text``: one line per index with dropped weight and nearest catalogue ND (``top`` option,
    default 1, 0 to skip); ``latex`` and ``numexpr``: ``NAME = expression`` lines (``names``
    option for numexpr); ``asi``: ``{"SpectralIndices": {KEY: entry}}`` (options of
    :func:`to_asi` except ``short_name``); ``json``: :func:`to_json`.
    """
    if fmt == "text":
        top = options.pop("top", 1)
        _no_options(fmt, options)
        return "\n".join(
            to_text(f, nearest_catalogue(f, top=top) if top else ()) for f in formulas
        )
    if fmt == "latex":
        _no_options(fmt, options)
        return "\n".join(to_latex(f) for f in formulas)
    if fmt == "numexpr":
        names = options.pop("names", "letters")
        _no_options(fmt, options)
        return "\n".join(f"{f.name} = {to_numexpr(f, names)}" for f in formulas)
    if fmt == "asi":
        if "short_name" in options:
            raise NdgeoError("format 'asi' names each entry after its index; drop short_name")
        entries = {f.name: to_asi(f, **options) for f in formulas}
        return json.dumps({"SpectralIndices": entries}, indent=2)
    if fmt == "json":
        top = options.pop("top", 1)
        _no_options(fmt, options)
        return to_json(formulas, top=top)
    raise NdgeoError(f"unknown formula format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _no_options(fmt: str, options: Mapping[str, Any]) -> None:
    if options:
        raise NdgeoError(f"format {fmt!r} takes no option(s) {sorted(options)}")


# --------------------------------------------------------------------------------------------
# Restricted expressions

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_UNARYOPS = {ast.UAdd: "+", ast.USub: "-"}
_REFUSED_OPS = {
    ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
    ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&", ast.Not: "not", ast.Invert: "~",
}
_REFUSED_WORDS = {
    ast.Call: "function call",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.Lambda: "lambda",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.NamedExpr: "assignment expression",
    ast.JoinedStr: "f-string",
    ast.Starred: "starred expression",
}


@dataclass(frozen=True)
class Expr:
    """A parsed, validated formula: its text, syntax tree and variable names."""

    text: str
    tree: ast.expr = field(repr=False, compare=False)
    variables: frozenset[str] = field(compare=False)


def _where(node: ast.AST) -> str:
    line = getattr(node, "lineno", 1)
    col = getattr(node, "col_offset", 0) + 1
    return f"column {col}" if line == 1 else f"line {line}, column {col}"


def _refuse(node: ast.AST, text: str, what: str | None = None) -> NdgeoError:
    if what is None:
        what = _REFUSED_WORDS.get(type(node), type(node).__name__)
    segment = ast.get_source_segment(text, node) or ""
    return NdgeoError(
        f"refused {what} {segment!r} at {_where(node)} in {text!r}: formulas may only use "
        "numbers, variable names, + - * / **, unary + - and parentheses"
    )


def _check(node: ast.AST, text: str, names: set[str]) -> None:
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise _refuse(node, text, f"operator {_REFUSED_OPS.get(type(node.op), '?')!r}")
        _check(node.left, text, names)
        _check(node.right, text, names)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARYOPS:
            raise _refuse(node, text, f"operator {_REFUSED_OPS.get(type(node.op), '?')!r}")
        _check(node.operand, text, names)
    elif isinstance(node, ast.Name):
        names.add(node.id)
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(node, text, f"{type(value).__name__} literal")
    else:
        raise _refuse(node, text)


def parse_expression(text: str | Expr) -> Expr:
    """Parse and validate a formula; refuse anything beyond plain arithmetic with NdgeoError."""
    if isinstance(text, Expr):
        return text
    if not isinstance(text, str):
        raise NdgeoError(f"a formula must be a string, got {type(text).__name__}")
    if len(text) > _MAX_EXPRESSION_CHARS:
        raise NdgeoError(f"formula is {len(text)} characters long; at most "
                         f"{_MAX_EXPRESSION_CHARS} are accepted")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise NdgeoError(f"formula {text!r} is not valid arithmetic: {exc.msg}{where}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise NdgeoError(f"formula {text[:80]!r} cannot be parsed: {exc}") from None
    names: set[str] = set()
    try:
        _check(tree.body, text.strip(), names)
    except RecursionError:
        raise NdgeoError(f"formula {text[:80]!r} is nested too deeply") from None
    return Expr(text=text.strip(), tree=tree.body, variables=frozenset(names))


def expression_variables(text: str | Expr) -> set[str]:
    """The variable (band and constant) names a formula uses."""
    return set(parse_expression(text).variables)


def evaluate(
    expr: str | Expr,
    arrays: Mapping[str, Any],
    constants: Mapping[str, float | None] | None = None,
) -> np.ndarray:
    """Compute a formula over named arrays (and scalar ``constants``), numpy-style.

    Names are looked up in ``arrays`` first, then in ``constants``; a missing name (or a
    constant without a value) raises NdgeoError listing what is available. Integer arrays are
    computed in float64 so that differences of unsigned digital numbers do not wrap around.
    Division by zero and overflow give nan/inf as numpy does, without warnings: callers mask
    non-finite results (the engine writes them as nodata).
    """
    parsed = parse_expression(expr)
    namespace: dict[str, Any] = {}
    constants = constants or {}
    missing = []
    for name in sorted(parsed.variables):
        if name in arrays:
            value = arrays[name]
            if isinstance(value, np.ndarray) and value.dtype.kind in "biu":
                value = value.astype(np.float64)
            namespace[name] = value
        elif constants.get(name) is not None:
            namespace[name] = float(constants[name])
        else:
            missing.append(name)
    if missing:
        no_default = [m for m in missing if m in constants]
        hint = f" (no default value for {', '.join(no_default)})" if no_default else ""
        raise NdgeoError(
            f"formula {parsed.text!r} needs {', '.join(missing)}{hint}; available: "
            f"{', '.join(sorted(set(arrays) | {k for k, v in constants.items() if v is not None}))}"
        )
    try:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = _eval(parsed.tree, namespace)
    except RecursionError:
        raise NdgeoError(f"formula {parsed.text[:80]!r} is nested too deeply") from None
    except (OverflowError, ZeroDivisionError) as exc:
        raise NdgeoError(f"formula {parsed.text!r} fails on scalar values: {exc}") from None
    return result if hasattr(result, "shape") else np.asarray(result, dtype=np.float64)


def _eval(node: ast.expr, namespace: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, namespace), _eval(node.right, namespace)
        op = type(node.op)
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        if op is ast.Div:
            return np.true_divide(left, right) if _is_scalar(left, right) else left / right
        return np.power(left, right) if _is_scalar(left, right) else left**right
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, namespace)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.Name):
        return namespace[node.id]
    return float(node.value)  # ast.Constant, validated by _check


def _is_scalar(*values: Any) -> bool:
    """Both operands are plain floats: use numpy so 1/0 gives inf instead of raising."""
    return all(isinstance(v, float) for v in values)


# --------------------------------------------------------------------------------------------
# The spyndex catalogue


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
    against every match. Returns ``[]`` when the index has no weight at all.
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
    scored.sort(key=lambda kc: (-round(abs(kc[1]), 12), kc[1] < 0, kc[0]))
    return scored[:top]
