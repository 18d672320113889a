"""ModelProcessor through the engine on inputs the CLI tests do not make: float reflectance
with negative values, no nodata value, all-zero pixels, and windows mostly or barely valid."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from ndgeo.apply import model_processor
from ndgeo.engine import run
from ndgeo.raster import open_raster


@pytest.fixture(scope="module")
def float_scene(sample_scene, tmp_path_factory):
    """The sample as float32 reflectance without nodata: a slightly negative strip, one 48 x 48
    window almost all zeros (a copy of the valid pixels is processed) and a few zero pixels in
    a mostly valid window (the block is processed as a view and those pixels are masked)."""
    with rasterio.open(sample_scene.image) as src:
        data = src.read().astype(np.float32) / 10000
        profile = src.profile
        names = src.descriptions
    data[:, 20:30, 60:100] -= 0.15
    data[:, 48:96, 0:48] = 0.0
    data[:, 50:52, 10:12] = 0.3  # 4 valid pixels in the mostly-zero window
    data[:, 5:7, 100:103] = 0.0
    profile.update(dtype="float32", nodata=None, tiled=True, blockxsize=16, blockysize=16)
    path = tmp_path_factory.mktemp("float") / "reflectance.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    return path


@pytest.mark.parametrize("outputs", [["class"], ["class", "proba", "indices"]])
def test_float_input_without_nodata_equals_model(nd_model, float_scene, tmp_path, outputs,
                                                 helpers):
    info = open_raster(float_scene)
    processor, positions = model_processor(nd_model.path, info, outputs=outputs, device="cpu",
                                           batch_size=500)
    out = tmp_path / "o.tif"
    run(processor, info, positions, out, chunk_size=48)
    names = [info.bands[p].name for p in positions]
    raw, _ = helpers.read(float_scene, names)
    valid = (raw > 0).any(axis=0)  # no nodata value: only all-zero pixels are invalid
    assert valid[48:96, 0:48].sum() == 4 and not valid[5:7, 100:103].any()
    assert (raw < 0).any()
    expected = helpers.expected(nd_model.path, raw, valid)
    with rasterio.open(out) as src:
        got = src.read().astype(np.float64)
    k = 0
    for name in outputs:
        want = expected[name]
        part = got[k : k + len(want)]
        k += len(want)
        if name == "class":
            sure = valid & (expected["margin"][0] > 1e-5)
            assert np.array_equal(part[0][sure], want[0][sure])
            nodata = 0 if outputs == ["class"] else np.nan
            assert np.array_equal(part[0][~valid], np.full((~valid).sum(), nodata),
                                  equal_nan=True)
        else:
            np.testing.assert_allclose(part[:, valid], want[:, valid], rtol=1e-5, atol=1e-6)
            assert np.isnan(part[:, ~valid]).all()
    assert k == got.shape[0]
