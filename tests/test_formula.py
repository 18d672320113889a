"""Formula export, catalogue matching and the restricted evaluator (ndgeo.formula)."""

from __future__ import annotations

import json
import warnings

import numexpr
import numpy as np
import pytest
import spyndex
from hypothesis import given, settings
from hypothesis import strategies as st

from ndgeo.bands import Band
from ndgeo.errors import NdgeoError
from ndgeo.formula import (
    FORMATS,
    IndexFormula,
    catalogue_expression,
    evaluate,
    expression_variables,
    formulas_from_coefficients,
    nearest_catalogue,
    parse_expression,
    render,
    same_bands_as,
    to_asi,
    to_latex,
    to_numexpr,
    to_text,
)

S2 = [Band("B02", "B"), Band("B03", "G"), Band("B04", "R"), Band("B05", "RE1"), Band("B08", "N")]
LETTER = {b.name: b.letter for b in S2}
RNG = np.random.default_rng(7)
ARRAYS = {b.name: RNG.uniform(0.01, 0.6, size=(40, 30)) for b in S2}
LETTER_ARRAYS = {LETTER[name]: a for name, a in ARRAYS.items()}

NDVI_LIKE = {"name": "ND1", "positive": {"B08": 1.0, "B05": 0.153}, "negative": {"B04": 0.6712}}


def direct_nd(coeff: dict, arrays: dict) -> np.ndarray:
    """(sum a x - sum b x) / (sum (a + b) x) straight from a coefficient dict."""
    p = sum(w * arrays[b] for b, w in coeff["positive"].items())
    q = sum(w * arrays[b] for b, w in coeff["negative"].items())
    return (p - q) / (p + q)


def rounding_bound(f: IndexFormula, arrays: dict) -> np.ndarray:
    """Per-pixel bound on |printed formula - exact formula| implied by rounding the weights.

    With every printed weight off by at most h = 0.5 * 10**-precision (weights rescaled so the
    largest is 1), numerator and denominator each move by at most h*X, X = sum of the terms'
    band values; with S the exact denominator and r = h*X/S, |dy| <= (h X S + |P - Q| h X) /
    (S (S - h X)) <= 2 r / (1 - r).
    """
    h = 0.5 * 10.0 ** -f.precision
    x = sum(arrays[t.band] for t in f.terms)
    s = sum(t.weight * arrays[t.band] for t in f.terms)
    r = h * x / s
    return 2 * r / (1 - r) + 1e-12


def exact_from_formula(f: IndexFormula, arrays: dict) -> np.ndarray:
    """The formula's own ND with unrounded kept weights (largest rescaled to 1)."""
    p = sum(t.weight * arrays[t.band] for t in f.positive)
    q = sum(t.weight * arrays[t.band] for t in f.negative)
    return (p - q) / (p + q)


def spyndex_style_eval(formula: str, params: dict):
    """How spyndex evaluates catalogue formulas, minus builtins."""
    return eval(formula, {"__builtins__": {}}, dict(params))  # noqa: S307 - the reference path


# ---------------------------------------------------------------------------- rendering


def test_ndvi_like_renders_in_every_format():
    (f,) = formulas_from_coefficients([NDVI_LIKE], S2, precision=2)
    assert f.dropped == 0
    assert to_text(f).startswith("ND1 = (N + 0.15*RE1 - 0.67*R) / (N + 0.15*RE1 + 0.67*R)")
    assert "all terms kept" in to_text(f)
    latex = to_latex(f)
    assert latex.startswith(r"\mathrm{ND1} = \frac{")
    assert r"0.67\,\mathrm{R}" in latex and r"\mathrm{RE1}" in latex
    assert latex.count("{") == latex.count("}")
    assert to_numexpr(f) == "(N + 0.15*RE1 - 0.67*R)/(N + 0.15*RE1 + 0.67*R)"
    assert to_numexpr(f, "bands") == "(B08 + 0.15*B05 - 0.67*B04)/(B08 + 0.15*B05 + 0.67*B04)"
    gdal = to_numexpr(f, {"B08": "A", "B05": "B", "B04": "C"})
    assert expression_variables(gdal) == {"A", "B", "C"}

    for fmt in FORMATS:
        options = {"band_numbers": {"B08": 8, "B05": 5, "B04": 4}} if fmt == "gdal_calc" else {}
        out = render([f, f], fmt, **options)
        assert ("ND1" in out) if fmt != "numexpr" else out.count("\n") == 1
    doc = json.loads(render([f], "json"))
    (record,) = doc["indices"]
    assert record["formula"] == to_numexpr(f)
    assert {t["band"]: t["weight"] for t in record["positive"]} == {"B08": 1.0, "B05": 0.15}
    assert record["nearest_catalogue"][0]["short_name"] == "NDVI"
    assert "nearest catalogue index: NDVI" in render([f], "text")
    with pytest.raises(NdgeoError, match="unknown formula format"):
        render([f], "yaml")


def test_asi_entry_is_a_valid_v0_entry_and_evaluates_like_spyndex():
    (f,) = formulas_from_coefficients([NDVI_LIKE], S2, precision=3)
    entry = to_asi(f, platforms=["Sentinel-2"], date_of_addition="2026-01-15")
    catalogue_keys = set(spyndex.indices["NDVI"].__dict__)
    assert set(entry) == catalogue_keys and len(entry) == 9
    assert set(entry["bands"]) == expression_variables(entry["formula"])
    assert entry["application_domain"] in {i.application_domain for i in spyndex.indices.values()}
    doc = json.loads(render([f], "asi", date_of_addition="2026-01-15"))
    assert doc["SpectralIndices"]["ND1"]["formula"] == entry["formula"]
    with pytest.raises(NdgeoError, match="application domain"):
        to_asi(f, application_domain="learned")


def test_letterless_band_uses_its_name_and_is_refused_by_asi():
    bands = [Band("nir_raw", None), Band("B04", "R")]
    coeff = {"name": "ND2", "positive": {"nir_raw": 1.0}, "negative": {"B04": 0.5}}
    (f,) = formulas_from_coefficients([coeff], bands)
    assert to_numexpr(f) == "(nir_raw - 0.5*R)/(nir_raw + 0.5*R)"
    with pytest.raises(NdgeoError, match="nir_raw"):
        to_asi(f)
    with pytest.raises(NdgeoError, match="not usable"):
        to_numexpr(f, {"nir_raw": "a b", "B04": "R"})


@pytest.mark.parametrize("precision", [1, 2, 3, 5])
def test_exported_formula_reproduces_direct_nd_three_ways(precision):
    (f,) = formulas_from_coefficients([NDVI_LIKE], S2, threshold=0.0, precision=precision)
    direct = direct_nd(NDVI_LIKE, ARRAYS)
    bound = rounding_bound(f, ARRAYS)
    asi_formula = to_asi(f)["formula"]

    ours = evaluate(asi_formula, LETTER_ARRAYS)
    theirs = spyndex_style_eval(asi_formula, LETTER_ARRAYS)
    fast = numexpr.evaluate(to_numexpr(f), local_dict=LETTER_ARRAYS)
    by_band = evaluate(to_numexpr(f, "bands"), ARRAYS)
    for result in (ours, theirs, fast, by_band):
        assert np.all(np.abs(result - direct) <= bound)
    # The bound is not vacuous: coarse rounding really moves the values.
    if precision == 1:
        assert np.abs(ours - direct).max() > 1e-4


def test_dropped_weight_is_reported():
    coeff = {"name": "ND3", "positive": {"B08": 2.0, "B03": 0.06}, "negative": {"B04": 1.0}}
    (f,) = formulas_from_coefficients([coeff], S2, threshold=0.05)
    assert [t.band for t in f.terms] == ["B08", "B04"]
    assert f.dropped == pytest.approx(0.06 / 3.06)
    assert "G" not in to_numexpr(f)
    assert "drops 2.0% of the weight" in to_text(f)
    # The pruned formula is exactly the ND of the kept terms.
    kept = exact_from_formula(f, ARRAYS)
    printed = evaluate(to_numexpr(f), LETTER_ARRAYS)
    assert np.all(np.abs(printed - kept) <= rounding_bound(f, ARRAYS))
    (g,) = formulas_from_coefficients([coeff], S2, threshold=0.0)
    assert g.dropped == 0 and len(g.terms) == 3


def test_bad_coefficients_are_refused():
    with pytest.raises(NdgeoError, match="B99"):
        formulas_from_coefficients([{"name": "X", "positive": {"B99": 1.0}}], S2)
    with pytest.raises(NdgeoError, match="-0.5"):
        formulas_from_coefficients([{"name": "X", "positive": {"B08": -0.5}}], S2)
    with pytest.raises(NdgeoError, match="no non-zero weight"):
        formulas_from_coefficients([{"name": "X", "positive": {"B08": 0.0}}], S2)
    with pytest.raises(NdgeoError, match="threshold"):
        formulas_from_coefficients([NDVI_LIKE], S2, threshold=1.5)


# ---------------------------------------------------------------------------- catalogue


def test_catalogue_ndvi_and_constant_indices_match_spyndex():
    n, r = LETTER_ARRAYS["N"], LETTER_ARRAYS["R"]
    formula, bands, consts = catalogue_expression("NDVI")
    assert bands == ["N", "R"] and consts == {}
    np.testing.assert_allclose(
        evaluate(formula, {"N": n, "R": r}), spyndex.computeIndex("NDVI", {"N": n, "R": r})
    )
    for name in ("SAVI", "EVI"):
        formula, bands, consts = catalogue_expression(name)
        assert consts and all(v is not None for v in consts.values())
        arrays = {k: LETTER_ARRAYS[k] for k in bands}
        expected = spyndex.computeIndex(name, {**arrays, **consts})
        np.testing.assert_allclose(evaluate(formula, arrays, consts), expected, rtol=1e-12)
        with pytest.raises(NdgeoError, match="needs"):
            evaluate(formula, arrays)


def test_catalogue_name_errors_suggest_close_matches():
    assert catalogue_expression("ndvi")[0] == catalogue_expression("NDVI")[0]
    with pytest.raises(NdgeoError, match="did you mean NDVI"):
        catalogue_expression("NDVII")


def test_nearest_catalogue_finds_ndvi_and_red_edge_indices():
    ndvi = {"name": "a", "positive": {"B08": 1.0}, "negative": {"B04": 1.0}}
    assert nearest_catalogue(ndvi, S2) == [("NDVI", pytest.approx(1.0))]
    (f,) = formulas_from_coefficients([ndvi], S2)
    assert nearest_catalogue(f)[0][0] == "NDVI"

    red_edge = {"name": "b", "positive": {"B08": 0.7}, "negative": {"B05": 0.7}}
    name, cosine = nearest_catalogue(red_edge, S2)[0]
    formula, bands, _ = catalogue_expression(name)
    assert set(bands) == {"N", "RE1"} and cosine == pytest.approx(1.0)
    n, re1 = LETTER_ARRAYS["N"], LETTER_ARRAYS["RE1"]
    np.testing.assert_allclose(evaluate(formula, {"N": n, "RE1": re1}), (n - re1) / (n + re1))

    # A weighted catalogue ND is recognised as such: (N - 0.66*S1)/(N + 0.66*S1).
    swir = [Band("nir", "N"), Band("swir", "S1")]
    afri = {"name": "c", "positive": {"nir": 1.0}, "negative": {"swir": 0.66}}
    assert nearest_catalogue(afri, swir)[0] == ("AFRI1600", pytest.approx(1.0))

    # A reversed ND is the sign-flipped NDVI (classic indices win ties), and the catalogue's
    # negated NDVIs (same bands) follow with positive cosine.
    reverse = {"name": "d", "positive": {"B04": 1.0}, "negative": {"B08": 1.0}}
    top = nearest_catalogue(reverse, S2, top=3)
    assert top[0] == ("NDVI", pytest.approx(-1.0))
    assert top[1][1] == pytest.approx(1.0)
    n, r = LETTER_ARRAYS["N"], LETTER_ARRAYS["R"]
    np.testing.assert_allclose(
        evaluate(catalogue_expression(top[1][0])[0], {"N": n, "R": r}), (r - n) / (r + n)
    )
    assert set(same_bands_as("NDVI")) >= {top[1][0], top[2][0]}

    mixed = {"name": "e", "positive": {"B08": 1.0, "B05": 0.2}, "negative": {"B04": 0.8}}
    assert 0.9 < nearest_catalogue(mixed, S2)[0][1] < 1.0


# ---------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize(
    "text, word",
    [
        ("__import__('os').system('touch {marker}')", "function call"),
        ("a.b", "attribute access"),
        ("f(x)", "function call"),
        ("x if y else z", "conditional expression"),
        ("[1]", "list"),
        ("'s'", "str literal"),
        ("1 < 2", "comparison"),
        ("N % 2", "'%'"),
        ("N // 2", "'//'"),
        ("not N", "'not'"),
        ("N and R", "boolean operator"),
        ("(lambda: 1)", "lambda"),
        ("N[0]", "subscript"),
        ("True", "bool literal"),
        ("N + (R := 1)", "assignment expression"),
    ],
)
def test_refused_expressions_never_execute(text, word, tmp_path):
    marker = tmp_path / "pwned"
    text = text.replace("{marker}", str(marker))
    with pytest.raises(NdgeoError, match="refused") as info:
        evaluate(text, {"N": np.ones(2), "R": np.ones(2), "a": 1, "f": abs, "x": 1})
    assert word in str(info.value) and "column" in str(info.value)
    assert not marker.exists()


def test_refusal_names_the_position():
    with pytest.raises(NdgeoError, match="column 9"):
        parse_expression("N - R + f(N)")


def test_unknown_names_and_builtins_are_not_resolved():
    for text in ("abs", "N + open", "__import__"):
        with pytest.raises(NdgeoError, match="needs"):
            evaluate(text, {"N": np.ones(3)})
    with pytest.raises(NdgeoError, match="not valid arithmetic"):
        parse_expression("N +")


def test_evaluate_numbers_powers_and_division_by_zero():
    n = np.array([0.0, 1.0, 4.0])
    r = np.array([0.0, 1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = evaluate("(N - R)/(N + R)", {"N": n, "R": r})
        assert np.isnan(out[0]) and out[1] == 0
        np.testing.assert_allclose(evaluate("-N**2 + +R/2", {"N": n, "R": r}), -(n**2) + r / 2)
        assert np.isinf(evaluate("1/0", {}))
    assert evaluate("2**-1", {}).shape == ()


def test_evaluate_unsigned_integers_do_not_wrap():
    n = np.array([100], dtype=np.uint16)
    r = np.array([300], dtype=np.uint16)
    np.testing.assert_allclose(evaluate("(N - R)/(N + R)", {"N": n, "R": r}), [-0.5])


def test_expression_variables():
    assert expression_variables("g*(N-R)/(N+C1*R-C2*B+L)") == {"g", "N", "R", "C1", "C2", "B", "L"}


# ---------------------------------------------------------------------------- round trip

WEIGHT = st.floats(0.05, 1.0, allow_nan=False)
SIDE = st.dictionaries(st.sampled_from([b.name for b in S2]), WEIGHT, min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    positive=SIDE,
    negative=SIDE | st.just({}),
    precision=st.integers(2, 5),
    names=st.sampled_from(["letters", "bands"]),
)
def test_round_trip_numexpr_text_evaluates_to_direct_nd(positive, negative, precision, names):
    coeff = {"name": "NDh", "positive": positive, "negative": negative}
    (f,) = formulas_from_coefficients([coeff], S2, threshold=0.0, precision=precision)
    assert f.dropped == 0
    arrays = ARRAYS if names == "bands" else LETTER_ARRAYS
    result = evaluate(to_numexpr(f, names), arrays)
    direct = direct_nd(coeff, ARRAYS)
    assert np.all(np.abs(result - direct) <= rounding_bound(f, ARRAYS))


def test_every_catalogue_formula_parses_and_evaluates_like_spyndex():
    rng = np.random.default_rng(3)
    checked = 0
    for name in spyndex.indices:
        formula, bands, consts = catalogue_expression(name)
        if any(v is None for v in consts.values()):
            continue  # wavelength constants without defaults: the user must supply them
        arrays = {b: rng.uniform(0.05, 0.6, 16) for b in bands}
        with np.errstate(all="ignore"):
            expected = spyndex.computeIndex(name, {**arrays, **consts})
            np.testing.assert_allclose(evaluate(formula, arrays, consts), expected, rtol=1e-12)
        checked += 1
    assert checked > 250
