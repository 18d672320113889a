"""``DataArray.ndgeo`` equals the commands' files and stays lazy until computed."""

from __future__ import annotations

import dask.array as da
import numpy as np
import rasterio
import rioxarray
from typer.testing import CliRunner

import ndgeo.accessor  # noqa: F401  (registers .ndgeo)
from ndgeo.cli import app

runner = CliRunner()


def _cli(*args):
    result = runner.invoke(app, ["-q", *map(str, args)])
    assert result.exit_code == 0, result.output


def _read(path):
    with rasterio.open(path) as src:
        return src.read()


def test_classify_and_indices_equal_apply_and_stay_lazy(nd_model, sample_scene, tmp_path):
    scene = rioxarray.open_rasterio(sample_scene.image, chunks={"x": 64, "y": 64})
    classes = scene.ndgeo.classify(nd_model.path)
    indices = scene.ndgeo.indices(nd_model.path)
    assert isinstance(classes.data, da.Array) and isinstance(indices.data, da.Array)
    assert classes.rio.crs == scene.rio.crs and classes.rio.nodata == 0
    _cli("apply", nd_model.path, sample_scene.image, "-o", tmp_path / "c.tif")
    _cli("apply", nd_model.path, sample_scene.image, "-o", tmp_path / "i.tif", "--products",
         "indices")
    np.testing.assert_array_equal(classes.values, _read(tmp_path / "c.tif"))
    np.testing.assert_allclose(indices.values, _read(tmp_path / "i.tif"), atol=1e-6,
                               equal_nan=True)


def test_band_order_is_matched_by_name(nd_model, sample_scene):
    scene = rioxarray.open_rasterio(sample_scene.image, chunks={"x": 64, "y": 64})
    names = list(scene.attrs["long_name"])
    shuffled = scene.isel(band=list(range(scene.sizes["band"]))[::-1])
    shuffled = shuffled.assign_coords(band=names[::-1])
    np.testing.assert_array_equal(shuffled.ndgeo.classify(nd_model.path).values,
                                  scene.ndgeo.classify(nd_model.path).values)


def test_denoise_equals_denoise_apply(sample_scene, tmp_path):
    den = tmp_path / "den.safetensors"
    _cli("denoise", "train", sample_scene.image, "-o", den, "--sigma", "2%", "--steps", "3",
         "--depth", "3", "--width", "8", "--patch", "32")
    _cli("denoise", "apply", den, sample_scene.image, "-o", tmp_path / "d.tif", "--dtype",
         "float32", "--chunk-size", "64")
    scene = rioxarray.open_rasterio(sample_scene.image, chunks={"x": 64, "y": 64})
    clean = scene.ndgeo.denoise(den)
    assert isinstance(clean.data, da.Array)
    np.testing.assert_allclose(clean.values, _read(tmp_path / "d.tif"), rtol=1e-5, atol=1e-3,
                               equal_nan=True)
