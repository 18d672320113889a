"""Renderers of learned indices: text, LaTeX, numexpr, gdal_calc command lines, Awesome Spectral
Indices (ASI) v0 entries and JSON.

Machine formats (numexpr, gdal_calc, asi, json) are meant to reproduce the model: the CLI exports
them exactly by default (no term dropped, 6 decimals); when a formula is an approximation, the
``asi`` and ``json`` documents record the dropped weight and an error bound
(:func:`approximation`).
"""

from __future__ import annotations

import datetime as _dt
import json
import keyword
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from ndgeo import __version__
from ndgeo.errors import NdgeoError
from ndgeo.formula.catalogue import nearest_catalogue, same_bands_as
from ndgeo.formula.learned import IndexFormula, Term

#: Reference given in exported ASI entries: the ND layer paper.
ND_LAYER_REFERENCE = "https://arxiv.org/abs/2601.06777"

#: Output formats understood by :func:`render`.
FORMATS = ("text", "latex", "numexpr", "gdal_calc", "asi", "json")
#: Formats read by programs, exported exactly by default (``ndgeo formula``).
MACHINE_FORMATS = ("numexpr", "gdal_calc", "asi", "json")



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


def approximation(f: IndexFormula) -> dict[str, Any]:
    """How far the printed formula may be from the model's index.

    With weights scaled so the largest is 1, pruning drops ``f.dropped`` of the total weight
    and rounding to ``precision`` decimals moves each printed coefficient (net weight in the
    numerator, total in the denominator) by at most ``2h``, ``h = 0.5 x 10**-precision``. At a
    pixel, numerator and denominator then move by at most ``D`` = dropped weights x bands +
    ``2h`` x the kept bands, so ``|printed - model| <= 2r / (1 - r)`` with ``r = D / S`` (``S``
    the model's denominator). ``bound_equal_bands`` is that bound where all bands are equal
    (pixels with very unequal bands can be further off).
    """
    h = 0.5 * 10.0 ** -f.precision
    kept = sum(t.weight for t in f.terms)
    total = kept / (1 - f.dropped) if f.dropped < 1 else float("inf")
    r = f.dropped + 2 * h * len(f.variables) / total
    return {
        "exact": f.dropped < 1e-6 and f.precision >= 6,
        "dropped_weight_fraction": f.dropped,
        "threshold": f.threshold,
        "precision": f.precision,
        "bound": "|formula - model| <= 2r/(1 - r), r = (dropped terms + 2h x kept bands) / "
                 "model denominator at the pixel, h = 0.5e-precision",
        "bound_equal_bands": 2 * r / (1 - r) if r < 1 else None,
    }


def to_text(f: IndexFormula, nearest: Sequence[tuple[str, float]] = ()) -> str:
    """``ND1 = (N + 0.15*RE1 - 0.67*R) / (N + 0.15*RE1 + 0.67*R)  # note``.

    Catalogue indices with the same band pattern as the nearest one are named with it
    (``NDWI (0.99; same bands as NDSII, VgNIRBI, GNDVI)``)."""
    notes = [_dropped_note(f)]
    if nearest:
        notes.append("nearest catalogue index: " + ", ".join(_match_text(n, c) for n, c in nearest))
    return f"{to_plain(f)}  # " + "; ".join(notes)


def _match_text(name: str, cosine: float) -> str:
    ties = same_bands_as(name)
    if not ties:
        return f"{name} ({cosine:.2f})"
    return f"{name} ({cosine:.2f}; same bands as {', '.join(ties)})"


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
    """A bare expression for ``numexpr.evaluate`` or :func:`evaluate`.

    ``names``: ``"letters"`` (ASI letters, band names where a band has none), ``"bands"`` (the
    bands' own names) or a mapping band name -> variable (e.g. ``{"B08": "A", "B04": "B"}``,
    as :func:`to_gdal_calc` does). Every variable must be a Python identifier.
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


#: gdal_calc's input variables: one capital letter each.
_GDAL_CALC_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def to_gdal_calc(
    f: IndexFormula,
    band_numbers: Mapping[str, int],
    *,
    image: str = "IMAGE.tif",
    outfile: str | None = None,
    scaling: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """One ``gdal_calc.py`` command line computing ``f`` from ``image``.

    gdal_calc names its inputs with single letters: each band of the formula becomes ``-A
    IMAGE --A_band=N`` (``band_numbers``: band name -> 1-based band of ``image``). Every term is
    float (gdal_calc computes in the file's type, and unsigned differences would wrap);
    ``scaling`` (band name -> (scale, offset), the file's GDAL
    metadata) converts raw values to the physical units the model was trained on.
    """
    bands = sorted({t.band for t in f.terms}, key=lambda b: (band_numbers.get(b, 0), b))
    if len(bands) > len(_GDAL_CALC_LETTERS):
        raise NdgeoError(f"{f.name} uses {len(bands)} bands; gdal_calc takes at most 26 inputs")
    missing = [b for b in bands if b not in band_numbers]
    if missing:
        raise NdgeoError(f"no band number for band(s) {missing} of {f.name}")
    letters = dict(zip(bands, _GDAL_CALC_LETTERS, strict=False))
    placeholders = {b: f"v{i}" for i, b in enumerate(bands)}
    text = to_numexpr(f, placeholders)
    # gdal_calc computes in the file's type: an integer coefficient or a bare variable would
    # keep unsigned pixels unsigned (B - A wraps), so every term is made float.
    text = re.sub(r"(?<![\w.])(\d+)\*(?=v\d)", r"\1.0*", text)
    text = re.sub(r"(?<![\w*.])(v\d+)\b", r"1.0*\1", text)
    for band, var in placeholders.items():
        scale, offset = (scaling or {}).get(band, (1.0, 0.0))
        value = letters[band]
        if offset:
            value = f"({value}*{scale!r} {'-' if offset < 0 else '+'} {abs(offset)!r})"
        elif scale != 1.0:
            value = f"({value}*{scale!r})"
        text = re.sub(rf"\b{var}\b", value, text)
    args = ["gdal_calc.py"]
    for band in bands:
        letter = letters[band]
        args += [f"-{letter}", shlex.quote(image), f"--{letter}_band={band_numbers[band]}"]
    args += [f"--outfile={shlex.quote(outfile or f.name + '.tif')}", "--type=Float32",
             f'--calc="{text}"']
    return " ".join(args)


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
        "approximation": approximation(f),
        "nearest_catalogue": [{"short_name": n, "cosine": c, "same_bands_as": same_bands_as(n)}
                              for n, c in nearest],
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
    default 1, 0 to skip); ``latex``: ``NAME = expression`` lines; ``numexpr``: one bare
    expression per line, in index order, that ``numexpr.evaluate`` takes as is (``names``
    option); ``gdal_calc``: one ``gdal_calc.py`` command line per index (options
    ``band_numbers``, ``image``, ``scaling`` of :func:`to_gdal_calc`); ``asi``:
    ``{"SpectralIndices": {KEY: entry}}`` (options of :func:`to_asi` except ``short_name``),
    plus an ``"ndgeo"`` section recording each approximate formula's dropped weight and error
    bound; ``json``: :func:`to_json`.
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
        return "\n".join(to_numexpr(f, names) for f in formulas)
    if fmt == "gdal_calc":
        numbers = options.pop("band_numbers", None)
        if numbers is None:
            raise NdgeoError("format 'gdal_calc' needs band_numbers (band name -> band number)")
        image = options.pop("image", "IMAGE.tif")
        scaling = options.pop("scaling", None)
        _no_options(fmt, options)
        return "\n".join(to_gdal_calc(f, numbers, image=image, scaling=scaling)
                         for f in formulas)
    if fmt == "asi":
        if "short_name" in options:
            raise NdgeoError("format 'asi' names each entry after its index; drop short_name")
        entries = {f.name: to_asi(f, **options) for f in formulas}
        doc: dict[str, Any] = {"SpectralIndices": entries}
        approximate = {f.name: approximation(f) for f in formulas
                       if not approximation(f)["exact"]}
        if approximate:
            doc["ndgeo"] = {"approximate_formulas": approximate}
        return json.dumps(doc, indent=2)
    if fmt == "json":
        top = options.pop("top", 1)
        _no_options(fmt, options)
        return to_json(formulas, top=top)
    raise NdgeoError(f"unknown formula format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _no_options(fmt: str, options: Mapping[str, Any]) -> None:
    if options:
        raise NdgeoError(f"format {fmt!r} takes no option(s) {sorted(options)}")


