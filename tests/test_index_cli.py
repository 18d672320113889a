"""`ndgeo index`: catalogue and free formulas chunk-wise, equal to spyndex on the same pixels."""

import json

import numpy as np
import pytest
import rasterio
import spyndex
from typer.testing import CliRunner

from ndgeo.cli import app
from ndgeo.sample import make_sample

runner = CliRunner()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("scene"), seed=3, size=96)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.descriptions, src.nodata, src.crs, src.transform


def _bands(scene_path):
    with rasterio.open(scene_path) as src, np.errstate(invalid="ignore", divide="ignore"):
        data = src.read().astype(np.float64)
        return dict(zip(src.descriptions, data, strict=True)), src.read_masks(1) > 0


def test_catalogue_indices_equal_spyndex(scene, tmp_path):
    out = tmp_path / "idx.tif"
    result = runner.invoke(
        app, ["-q", "index", str(scene.image), "-o", str(out), "--name", "NDVI,SAVI",
              "--scale", "0.0001", "--chunk-size", "32"],
    )
    assert result.exit_code == 0, result.output
    data, descriptions, nodata, crs, _ = _read(out)
    assert descriptions[0].startswith("NDVI") and descriptions[1].startswith("SAVI")
    assert np.isnan(nodata)
    bands, valid = _bands(scene.image)
    params = {"N": bands["B08"] * 1e-4, "R": bands["B04"] * 1e-4, "L": 1.0}
    ndvi = spyndex.computeIndex("NDVI", params)
    savi = spyndex.computeIndex("SAVI", params)
    np.testing.assert_allclose(data[0][valid], ndvi[valid], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data[1][valid], savi[valid], rtol=1e-5, atol=1e-6)
    assert np.isnan(data[0][~valid]).all()
    with rasterio.open(scene.image) as src:
        assert crs == src.crs


def test_free_formula_and_formula_file(scene, tmp_path):
    doc = {"SpectralIndices": {"L1": {"short_name": "L1", "formula": "(N - 2*RE1)/(N + 2*RE1)"}}}
    path = tmp_path / "f.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "f.tif"
    result = runner.invoke(
        app, ["-q", "index", str(scene.image), "-o", str(out), "--formula-file", str(path),
              "--formula", "RATIO=B08/B04"],
    )
    assert result.exit_code == 0, result.output
    data, descriptions, *_ = _read(out)
    bands, valid = _bands(scene.image)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (bands["B08"] - 2 * bands["B05"]) / (bands["B08"] + 2 * bands["B05"])
        ratio = bands["B08"] / bands["B04"]
    # free formulas come first, then the file's entries
    assert descriptions == ("RATIO = B08/B04", "L1 = (N - 2*RE1)/(N + 2*RE1)")
    np.testing.assert_allclose(data[0][valid], ratio[valid], rtol=1e-6)
    np.testing.assert_allclose(data[1][valid], expected[valid], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--formula", "__import__('os').system('true')"], "refused"),
        (["--name", "NOT_AN_INDEX"], "not in the spyndex catalogue"),
        (["--formula", "X=N/Q"], "Q"),
        ([], "at least one"),
    ],
)
def test_bad_formulas_are_one_line_exit_2(scene, tmp_path, args, message):
    out = tmp_path / "bad.tif"
    result = runner.invoke(app, ["index", str(scene.image), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_existing_output_needs_overwrite(scene, tmp_path):
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["index", str(scene.image), "-o", str(out), "--name", "NDVI"])
    assert result.exit_code == 2
    assert "overwrite" in result.output
    assert out.read_bytes() == b"keep me"
