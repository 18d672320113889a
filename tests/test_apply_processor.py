"""ModelProcessor through the engine on inputs the CLI tests do not make: float reflectance
with negative values, no nodata value, all-zero pixels, and windows mostly or barely valid."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from ndgeo.checkpoint import save_model
from ndgeo.engine import Execution, run
from ndgeo.io.raster import open_raster
from ndgeo.nn import NDClassifier
from ndgeo.processors.classify import model_processor


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
    run(processor, info, positions, out, execution=Execution(chunk_size=48))
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


def _write(path, data, nodata, names):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(data),
                   dtype=str(data.dtype), nodata=nodata, tiled=True, blockxsize=16,
                   blockysize=16, crs="EPSG:32633",
                   transform=rasterio.transform.from_origin(500000, 5000000, 10, 10))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    return path


def _save_nd(path, n_classes, names, *, winner=None, seed=0):
    torch.manual_seed(seed)
    model = NDClassifier(len(names), n_classes, n_indices=3, head_norm="none").eval()
    if winner is not None:
        with torch.no_grad():
            model.head.bias[winner] = 100.0
    save_model(path, model, {
        "bands": [{"name": n} for n in names],
        "classes": [{"id": i, "name": f"c{i}"} for i in range(n_classes)],
    })
    return path


def _apply_lib(model, image, out, **kwargs):
    info = open_raster(image)
    processor, positions = model_processor(model, info, device="cpu", **kwargs)
    run(processor, info, positions, out, execution=Execution(chunk_size=32))
    with rasterio.open(out) as src:
        return src.read(), src.profile, src.tags()


NAMES = ["B02", "B04", "B08"]


def test_256_classes_write_the_last_class_id_not_nodata(tmp_path):
    data = np.random.default_rng(0).integers(1, 3000, (3, 40, 40)).astype("uint16")
    image = _write(tmp_path / "in.tif", data, 0, NAMES)
    model = _save_nd(tmp_path / "m.safetensors", 256, NAMES, winner=255)
    out, profile, _ = _apply_lib(model, image, tmp_path / "o.tif")
    assert profile["dtype"] == "uint16" and (out == 256).all()


def test_signed_input_pixels_without_a_positive_band_are_nodata(tmp_path):
    """As in training: negatives are clipped to 0 and all-zero pixels dropped, also when the
    nodata value is 0 (an int16 pixel can be all negative without being nodata)."""
    data = np.random.default_rng(1).integers(1, 3000, (3, 40, 40)).astype("int16")
    data[:, 3:6, 3:6] = -5
    data[0, 10, 10] = -7  # one negative band, others positive: still classified
    image = _write(tmp_path / "in.tif", data, 0, NAMES)
    model = _save_nd(tmp_path / "m.safetensors", 3, NAMES)
    out, _, _ = _apply_lib(model, image, tmp_path / "o.tif")
    assert (out[0, 3:6, 3:6] == 0).all() and out[0, 10, 10] > 0
    assert (out[0] > 0).sum() == 40 * 40 - 9


def test_quantized_proba_and_class_band_agree_across_output_sets(nd_model, float_scene,
                                                                 tmp_path):
    single, _, _ = _apply_lib(nd_model.path, float_scene, tmp_path / "c.tif")
    stacked, _, _ = _apply_lib(nd_model.path, float_scene, tmp_path / "s.tif",
                               outputs=["class", "proba", "indices"])
    quant, profile, tags = _apply_lib(nd_model.path, float_scene, tmp_path / "q.tif",
                                      outputs=["proba"], quantize_proba=True)
    valid = single[0] > 0
    assert np.array_equal(single[0][valid], stacked[0][valid])  # same logits, same ties
    proba = stacked[1 : 1 + quant.shape[0]]
    assert profile["dtype"] == "uint8" and profile["nodata"] == 255 and tags["SCALE"] == "0.004"
    np.testing.assert_array_equal(quant[:, valid], np.round(proba[:, valid] * 250))
    assert (quant[:, ~valid] == 255).all()
