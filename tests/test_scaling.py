"""GDAL band scale/offset metadata: values reach models and formulas in physical units.

The same scene is stored twice: as float32 reflectance, and as uint16 the way Sentinel-2 L2A
does from processing baseline 04.00 (DN = (reflectance + 0.1) x 10000, scale 1e-4, offset
-0.1). ND indices are not invariant to that offset, so ignoring the metadata changes them.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from ndgeo.cli import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, ["-q", *map(str, args)])


@pytest.fixture(scope="module")
def pair(sample_scene, tmp_path_factory):
    """(reflectance float32 file, offset-encoded uint16 file, reflectance array, valid)."""
    root = tmp_path_factory.mktemp("scaling")
    with rasterio.open(sample_scene.image) as src:
        dn, profile, names = src.read(), src.profile, list(src.descriptions)
    valid = (dn != 0).all(axis=0)
    encoded = np.where(valid, dn + 1000, 0).astype("uint16")  # DN of the +0.1 offset
    reflectance = np.where(valid, encoded * 1e-4 - 0.1, np.nan).astype("float32")
    paths = []
    for name, data, extra in (("reflectance.tif", reflectance, {"dtype": "float32",
                                                              "nodata": float("nan")}),
                              ("encoded.tif", encoded, {"dtype": "uint16", "nodata": 0})):
        path = root / name
        with rasterio.open(path, "w", **{**profile, **extra}) as dst:
            dst.write(data)
            dst.descriptions = names
            if name == "encoded.tif":
                dst.scales = [1e-4] * len(names)
                dst.offsets = [-0.1] * len(names)
        paths.append(path)
    return paths[0], paths[1], reflectance, valid


def test_index_uses_physical_values(pair, tmp_path):
    refl_path, encoded_path, reflectance, valid = pair
    out = tmp_path / "ndvi.tif"
    assert cli("index", encoded_path, "-o", out, "--name", "NDVI").exit_code == 0
    with rasterio.open(out) as src:
        got = src.read(1)
    with rasterio.open(refl_path) as src:
        names = list(src.descriptions)
    nir, red = reflectance[names.index("B08")], reflectance[names.index("B04")]
    want = (nir - red) / (nir + red)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-5)
    raw_ndvi = ((nir + 0.1) - (red + 0.1)) / ((nir + 0.1) + (red + 0.1))  # metadata ignored
    assert np.abs(raw_ndvi[valid] - want[valid]).max() > 0.05


def test_model_trained_on_one_encoding_applies_to_the_other(pair, sample_scene, tmp_path):
    refl_path, encoded_path, _, valid = pair
    model = tmp_path / "m.safetensors"
    result = cli("train", encoded_path, sample_scene.labels_vector, "-o", model, "--epochs",
                 "15", "--indices", "4", "--no-report")
    assert result.exit_code == 0, result.output
    outs = []
    for image in (encoded_path, refl_path):
        out = tmp_path / f"{image.stem}-class.tif"
        result = cli("apply", model, image, "-o", out, "--chunk-size", "32")
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as src:
            outs.append(src.read(1))
    same = (outs[0] == outs[1])[valid].mean()
    assert same > 0.995, same  # equal up to float rounding near class boundaries
    plan = cli("apply", model, encoded_path, "-o", tmp_path / "x.tif", "--dry-run")
    assert '"B08": [' in plan.stdout and "-0.1" in plan.stdout


def test_training_pixels_are_in_physical_units(pair, sample_scene):
    from ndgeo.io.labels import load_many

    refl_path, encoded_path, _, _ = pair
    from_reflectance = load_many([(refl_path, sample_scene.labels_vector)], seed=0)
    from_encoded = load_many([(encoded_path, sample_scene.labels_vector)], seed=0)
    assert from_encoded.X.shape == from_reflectance.X.shape
    np.testing.assert_allclose(from_encoded.X, from_reflectance.X, atol=1e-6)


@pytest.fixture(scope="module")
def undeclared(pair, tmp_path_factory):
    """The offset-encoded file without its scale/offset metadata (as in Sentinel-2 SAFE JP2)."""
    _, encoded_path, _, _ = pair
    path = tmp_path_factory.mktemp("undeclared") / "undeclared.tif"
    with rasterio.open(encoded_path) as src:
        data, profile, names = src.read(), src.profile, list(src.descriptions)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    with rasterio.open(path) as src:
        assert src.scales[0] == 1.0 and src.offsets[0] == 0.0
    return path


def test_scale_and_offset_options_stand_in_for_missing_metadata(pair, undeclared, sample_scene,
                                                                tmp_path):
    from ndgeo.io.labels import load_many

    _, encoded_path, _, valid = pair
    outs = []
    for image, extra in ((encoded_path, []), (undeclared, ["--scale", "0.0001", "--offset",
                                                           "-0.1"])):
        out = tmp_path / f"{image.stem}-ndvi.tif"
        result = cli("index", image, "-o", out, "--name", "NDVI", *extra)
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as src:
            outs.append(src.read(1))
    np.testing.assert_array_equal(outs[0][valid], outs[1][valid])
    declared = load_many([(encoded_path, sample_scene.labels_vector)], seed=0)
    overridden = load_many([(undeclared, sample_scene.labels_vector)], seed=0, scale=1e-4,
                           offset=-0.1)
    np.testing.assert_allclose(overridden.X, declared.X, atol=1e-6)


@pytest.mark.parametrize("option", [["--scale", "0"], ["--scale", "-1"], ["--offset", "nan"]])
def test_bad_scale_or_offset_is_one_line_exit_2(pair, tmp_path, option):
    _, encoded_path, _, _ = pair
    result = cli("index", encoded_path, "-o", tmp_path / "x.tif", "--name", "NDVI", *option)
    assert result.exit_code == 2 and option[0] in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.tif").exists()
