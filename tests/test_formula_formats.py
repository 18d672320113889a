"""``ndgeo formula --format vrt|gee|qgis``: the model's own indices where GIS users compute them.

The VRT is read back by rasterio (GDAL's pixel functions, no Python); the Earth Engine and QGIS
expressions are evaluated by small evaluators of those grammars written here (Python's ``ast``
with only the node types each grammar has), against ``ndgeo apply --products indices``.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from test_newuser import readme_session  # the README block reader both README tests use
from typer.testing import CliRunner

from ndgeo.checkpoint import save_model
from ndgeo.cli import app
from ndgeo.nn import NDClassifier

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _apply_indices(model, image, out, *extra):
    _ok("-q", "apply", str(model), str(image), "-o", str(out), "--products", "indices",
        "--chunk-size", "64", *extra)
    with rasterio.open(out) as src:
        return src.read(), src.descriptions


# --------------------------------------------------------------------------------------------
# VRT


def _read_vrt(path):
    with rasterio.open(path) as src:
        return src.read(masked=True), src.descriptions, src.dtypes


def test_vrt_equals_apply_and_index(nd_model, sample_scene, tmp_path):
    vrt = tmp_path / "index.vrt"
    _ok("formula", str(nd_model.path), "--format", "vrt", "--image", str(sample_scene.image),
        "-o", str(vrt))
    values, names, dtypes = _read_vrt(vrt)
    expected, expected_names = _apply_indices(nd_model.path, sample_scene.image,
                                              tmp_path / "apply.tif")
    valid = np.isfinite(expected)
    assert 0 < valid[0].mean() < 1  # the scene has nodata pixels
    assert names == expected_names and set(dtypes) == {"float32"}
    np.testing.assert_array_equal(~values.mask, valid)  # nodata through the mask band
    np.testing.assert_array_equal(np.isfinite(values.data), valid)  # and NaN in the values
    np.testing.assert_allclose(values.data[valid], expected[valid], rtol=0, atol=1e-6)

    # GDAL's CreateCopy (what gdal_translate runs) materialises it, mask included.
    copied = tmp_path / "copy.tif"
    rasterio.shutil.copy(vrt, copied, driver="GTiff")
    with rasterio.open(copied) as src:
        np.testing.assert_array_equal(src.read(masked=True).mask, values.mask)
        np.testing.assert_array_equal(src.read(), values.data)

    # ndgeo index on the exported formulas (no eps; 12 decimals) agrees too.
    asi = tmp_path / "f.json"
    asi.write_text(_ok("formula", str(nd_model.path), "--format", "asi", "--precision", "12"))
    _ok("-q", "index", str(sample_scene.image), "--formula-file", str(asi), "-o",
        str(tmp_path / "index.tif"))
    with rasterio.open(tmp_path / "index.tif") as src:
        index = src.read()
    np.testing.assert_array_equal(np.isfinite(index), valid)
    np.testing.assert_allclose(values.data[valid], index[valid], rtol=0, atol=1e-6)

    # Existing output: refused in one line without --overwrite, replaced whole with it.
    result = runner.invoke(app, ["formula", str(nd_model.path), "--format", "vrt", "--image",
                                 str(sample_scene.image), "-o", str(vrt)])
    assert result.exit_code == 2 and "exists; use --overwrite" in result.output
    _ok("formula", str(nd_model.path), "--format", "vrt", "--image", str(sample_scene.image),
        "-o", str(vrt), "--overwrite")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".index.vrt")] == []


def test_vrt_reflectance_with_offset_nan_all_zero_and_file_mask(nd_model, sample_scene,
                                                                tmp_path):
    """Float reflectance with an offset (negative physical values, clipped at 0 by the
    model), NaN pixels, pixels below 0 in every band (the all-zero rule) and a GDAL mask."""
    with rasterio.open(sample_scene.image) as src:
        raw = src.read().astype(np.float32)
        profile = src.profile | {"dtype": "float32", "nodata": None}
        names = src.descriptions
    raw[:, :8, :8] = np.nan
    raw[:, 20:30, 20:30] = 50.0  # 50 x 1e-4 - 0.01 < 0 in every band: all-zero rule
    raw[2, 40:60, :] = 10.0  # one band negative: clipped to 0, pixel valid
    keep = np.full(raw.shape[1:], 255, np.uint8)
    keep[-10:, -10:] = 0
    image = tmp_path / "reflectance.tif"
    with rasterio.open(image, "w", **profile) as dst:
        dst.write(raw)
        dst.descriptions = names
        dst.scales = [1e-4] * len(names)
        dst.offsets = [-0.01] * len(names)
        dst.write_mask(keep)
    vrt = tmp_path / "r.vrt"
    _ok("formula", str(nd_model.path), "--format", "vrt", "--image", str(image), "-o", str(vrt))
    values, _, _ = _read_vrt(vrt)
    expected, _ = _apply_indices(nd_model.path, image, tmp_path / "r.tif")
    valid = np.isfinite(expected)
    assert not valid[:, :8, :8].any() and not valid[:, 20:30, 20:30].any()
    assert not valid[:, -10:, -10:].any() and valid[:, 40:60, 10:].mean() > 0.9
    np.testing.assert_array_equal(~values.mask, valid)
    np.testing.assert_array_equal(np.isfinite(values.data), valid)
    np.testing.assert_allclose(values.data[valid], expected[valid], rtol=0, atol=1e-6)


def test_vrt_needs_image_and_output(nd_model, sample_scene):
    result = runner.invoke(app, ["formula", str(nd_model.path), "--format", "vrt",
                                 "--image", str(sample_scene.image)])
    assert result.exit_code == 2 and "needs --image IMAGE" in result.output


# --------------------------------------------------------------------------------------------
# Evaluators of the Earth Engine and QGIS expression grammars


def _evaluate(node: ast.AST, env: dict, calls: dict) -> np.ndarray | float:
    """Arithmetic over numpy: numbers, names, + - * / (float64), unary -, comparisons where
    ``calls`` allows ``>`` and the functions in ``calls``; anything else fails the test."""
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
        left, right = _evaluate(node.left, env, calls), _evaluate(node.right, env, calls)
        return {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                ast.Div: np.divide}[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, env, calls)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id]
    if (isinstance(node, ast.Compare) and ">" in calls and len(node.ops) == 1
            and isinstance(node.ops[0], ast.Gt)):
        left = _evaluate(node.left, env, calls)
        return (left > _evaluate(node.comparators[0], env, calls)).astype(np.float64)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in calls:
        return calls[node.func.id](*[_evaluate(a, env, calls) if not isinstance(a, ast.Constant)
                                     or not isinstance(a.value, str) else a.value
                                     for a in node.args])
    raise AssertionError(f"not in the grammar: {ast.dump(node)}")


def ee_evaluate(expression: str, variables: dict[str, np.ndarray],
                bands: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """Earth Engine ``image.expression``: ``NAME = expr`` with the map's variables,
    ``b('band')`` of the image and ``max(a, b)``."""
    tree = ast.parse(expression)
    (assign,) = tree.body
    assert isinstance(assign, ast.Assign) and isinstance(assign.targets[0], ast.Name)
    calls = {"b": lambda name: bands[name], "max": np.maximum}
    with np.errstate(divide="ignore", invalid="ignore"):
        return assign.targets[0].id, _evaluate(assign.value, variables, calls)


def qgis_evaluate(expression: str, layers: dict[str, np.ndarray]) -> np.ndarray:
    """QGIS raster calculator: ``"layer@band"`` references, arithmetic and ``>`` (1 or 0)."""
    refs: dict[str, np.ndarray] = {}

    def name(match: re.Match) -> str:
        key = f"r{len(refs)}"
        layer, band = match.group(1).rsplit("@", 1)
        refs[key] = layers[layer][int(band) - 1]
        return key

    text = re.sub(r'"([^"]+)"', name, expression)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _evaluate(ast.parse(text, mode="eval").body, refs, {">": None})


# --------------------------------------------------------------------------------------------
# Earth Engine


_JS_EXPR = re.compile(r"^    image\.expression\('([^']*)', bands\),?$", re.M)
_PY_EXPR = re.compile(r"^        image\.expression\('([^']*)', bands\),$", re.M)


def _ee_parts(text: str) -> tuple[list[str], list[str], dict, dict]:
    js_map = dict(re.findall(r"(\w+): image\.select\('(\w+)'\)", text.split("\n\n")[0]))
    py_map = dict(re.findall(r"'(\w+)': image\.select\('(\w+)'\)", text.split("\n\n")[1]))
    return _JS_EXPR.findall(text), _PY_EXPR.findall(text), js_map, py_map


def _ee_band(name: str) -> str:
    """Sentinel-2 band ids of the sample scene (B02, B8A) as Earth Engine names them."""
    return f"B{int(name[1:])}" if name[1:].isdigit() else name


def test_gee_expressions_equal_apply(nd_model, sample_scene, tmp_path):
    text = _ok("formula", str(nd_model.path), "--format", "gee")  # sensor from B02 ... B8A
    assert "warning: the model was trained on digital numbers" in text  # DN x 0.0001 here
    js, py, js_map, py_map = _ee_parts(text)
    assert js == py and len(js) == 4 and js_map == py_map
    assert "ee.ImageCollection('COPERNICUS/S2_SR_HARMONIZED')" in text
    assert js_map["N"] == "B8" and js_map["N2"] == "B8A" and js_map["RE1"] == "B5"
    with rasterio.open(sample_scene.image) as src:
        raw = src.read().astype(np.float64)
        bands = {_ee_band(n): raw[i] for i, n in enumerate(src.descriptions)}
    variables = {letter: bands[band] for letter, band in js_map.items()}
    # The collection's reflectance scaling by default: the model sees DN x 0.0001.
    expected, names = _apply_indices(nd_model.path, sample_scene.image, tmp_path / "a.tif",
                                     "--scale", "0.0001")
    valid = np.isfinite(expected[0])
    for k, expression in enumerate(js):
        name, values = ee_evaluate(expression, variables, bands)
        assert name == f"ND{k + 1}" and names[k].startswith(name + " = ")
        np.testing.assert_allclose(values[valid], expected[k][valid], rtol=0, atol=1e-6)

    # --scale 1 --offset 0: a model trained on unscaled digital numbers, as this one was.
    js, _, js_map, _ = _ee_parts(_ok("formula", str(nd_model.path), "--format", "gee",
                                     "--sensor", "sentinel-2", "--scale", "1", "--offset", "0"))
    expected, _ = _apply_indices(nd_model.path, sample_scene.image, tmp_path / "b.tif")
    for k, expression in enumerate(js):
        _, values = ee_evaluate(expression, variables, bands)
        np.testing.assert_allclose(values[valid], expected[k][valid], rtol=0, atol=1e-6)


def test_gee_landsat_offset_clips_negative_reflectance(tmp_path):
    """Landsat Collection 2 L2: DN x 2.75e-05 - 0.2 is negative for dark pixels; the
    expression clips it at 0 with ``max`` as the model does."""
    letters = {"SR_B2": "B", "SR_B3": "G", "SR_B4": "R", "SR_B5": "N", "SR_B6": "S1"}
    torch.manual_seed(0)
    model = NDClassifier(5, 3, n_indices=3, band_scale=[3.0, 2.0, 4.0, 1.5, 2.5]).eval()
    meta = {"bands": [{"name": n, "letter": v} for n, v in letters.items()],
            "classes": [{"id": i, "name": f"c{i}"} for i in range(3)]}
    path = tmp_path / "l8.safetensors"
    save_model(path, model, meta)
    text = _ok("formula", str(path), "--format", "gee", "--sensor", "landsat-9")
    js, py, js_map, _ = _ee_parts(text)
    assert js == py and "LANDSAT/LC09/C02/T1_L2" in text and "max(" in js[0]
    assert js_map == {"B": "SR_B2", "G": "SR_B3", "R": "SR_B4", "N": "SR_B5", "S1": "SR_B6"}
    rng = np.random.default_rng(0)
    dn = rng.integers(6000, 30000, size=(5, 40, 40)).astype(np.float64)  # 7273 ~ 0
    variables = {letters[b]: dn[i] for i, b in enumerate(letters)}
    physical = np.clip(dn * 2.75e-05 - 0.2, 0, None)
    assert (dn * 2.75e-05 - 0.2 < 0).mean() > 0.02
    with torch.no_grad():
        expected = model.double().indices(torch.from_numpy(physical.reshape(5, -1).T)
                                          ).numpy().T
    positive = physical.max(0).ravel() > 0
    for k, expression in enumerate(js):
        _, values = ee_evaluate(expression, variables, {})
        np.testing.assert_allclose(values.ravel()[positive], expected[k][positive], rtol=0,
                                   atol=1e-6)


def test_gee_option_errors(nd_model):
    result = runner.invoke(app, ["formula", str(nd_model.path), "--format", "gee",
                                 "--precision", "3"])
    assert result.exit_code == 2 and "--precision does not apply to --format gee" in result.output
    result = runner.invoke(app, ["formula", str(nd_model.path), "--format", "gee",
                                 "--sensor", "landsat-8"])
    assert result.exit_code == 2 and "has no band in LANDSAT/LC08/C02/T1_L2" in result.output


# --------------------------------------------------------------------------------------------
# QGIS


def test_qgis_expressions_equal_apply(nd_model, sample_scene, tmp_path):
    text = _ok("formula", str(nd_model.path), "--format", "qgis", "--image",
               str(sample_scene.image))
    header, *expressions = text.strip().splitlines()
    assert header.startswith("# QGIS raster calculator") and len(expressions) == 4
    assert '"scene@7"' in text  # layer named after the file, bands by number
    with rasterio.open(sample_scene.image) as src:
        raw = src.read().astype(np.float64)
    expected, _ = _apply_indices(nd_model.path, sample_scene.image, tmp_path / "a.tif")
    valid = np.isfinite(expected[0])
    for k, expression in enumerate(expressions):
        values = qgis_evaluate(expression, {"scene": raw})
        np.testing.assert_allclose(values[valid], expected[k][valid], rtol=0, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, -0.01])
def test_qgis_folds_scale_and_clips_with_offset(nd_model, sample_scene, tmp_path, offset):
    with rasterio.open(sample_scene.image) as src:
        raw = src.read()
        profile, names = src.profile, src.descriptions
    image = tmp_path / "scaled.tif"
    with rasterio.open(image, "w", **profile) as dst:
        dst.write(raw)
        dst.descriptions = names
        dst.scales = [1e-4] * len(names)
        dst.offsets = [offset] * len(names)
    expressions = _ok("formula", str(nd_model.path), "--format", "qgis", "--image", str(image),
                      "--layer", "L8 scene").strip().splitlines()[1:]
    assert ("> 0" in expressions[0]) == (offset < 0)
    expected, _ = _apply_indices(nd_model.path, image, tmp_path / "a.tif")
    valid = np.isfinite(expected[0])
    for k, expression in enumerate(expressions):
        values = qgis_evaluate(expression, {"L8 scene": raw.astype(np.float64)})
        np.testing.assert_allclose(values[valid], expected[k][valid], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The README's examples, as printed


def test_readme_gis_formats_example_is_reproducible_as_printed(tmp_path, monkeypatch):
    (tmp_path / "sample_data").symlink_to(REPO / "sample_data")
    monkeypatch.chdir(tmp_path)
    train = readme_session("### `ndgeo formula MODEL")[0][0]
    session = readme_session("**Where GIS users compute them")
    assert [shlex.split(c)[4] for c, _ in session] == ["vrt", "qgis", "gee"]
    for command, expected in [(train, None), *session]:
        result = runner.invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, (command, result.output)
        if expected is None:
            continue
        got = result.stdout.splitlines()
        # The trained weights may move in their last digits on another CPU; nothing else may.
        number = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")
        assert [number.sub("#", ln) for ln in got] == [number.sub("#", ln) for ln in expected]
        for a, b in zip(number.findall("\n".join(got)), number.findall("\n".join(expected)),
                        strict=True):
            assert float(a) == pytest.approx(float(b), rel=1e-6), (a, b)
    values, _, _ = _read_vrt(tmp_path / "two.vrt")
    expected, _ = _apply_indices("two.safetensors", "sample_data/scene.tif", tmp_path / "i.tif")
    valid = np.isfinite(expected)
    np.testing.assert_array_equal(~values.mask, valid)
    np.testing.assert_allclose(values.data[valid], expected[valid], rtol=0, atol=1e-6)
