"""ndgeo.raster: validated opening of real GeoTIFFs and the one validity rule."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from ndgeo.errors import NdgeoError
from ndgeo.io.raster import open_raster, to_float, valid_mask


def _write(path, data, *, nodata=None, descriptions=None, block=32, compress="deflate"):
    count, height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count,
        dtype=data.dtype, crs="EPSG:32631", transform=from_origin(500000, 4000000, 10, 10),
        nodata=nodata, tiled=True, blockxsize=block, blockysize=block, compress=compress,
    ) as dst:
        dst.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
    return path


def test_open_raster_reports_file_facts(tmp_path):
    data = np.arange(2 * 77 * 100, dtype="uint16").reshape(2, 77, 100)
    path = _write(tmp_path / "a.tif", data, nodata=0, descriptions=["B04", "B08"])
    info = open_raster(path, sensor="sentinel-2")
    assert (info.width, info.height, info.count, info.dtype) == (100, 77, 2, "uint16")
    assert info.shape == (77, 100)
    assert info.crs.to_epsg() == 32631
    assert info.transform == from_origin(500000, 4000000, 10, 10)
    assert info.nodata == 0.0
    assert info.block_shape == (32, 32)
    assert info.bounds == (500000, 4000000 - 770, 501000, 4000000)
    assert info.res == (10.0, 10.0)
    assert info.band_names == ["B04", "B08"]
    assert [b.letter for b in info.bands] == ["R", "N"]


def test_band_override_and_nodata_override(tmp_path):
    path = _write(tmp_path / "a.tif", np.ones((2, 40, 40), dtype="uint8"))
    info = open_raster(path, bands=["red", "nir"], nodata=255)
    assert [b.letter for b in info.bands] == ["R", "N"]
    assert info.nodata == 255.0


@pytest.mark.parametrize("bad", [256, -1, 1.5, float("nan")])
def test_nodata_override_must_fit_dtype(tmp_path, bad):
    path = _write(tmp_path / "a.tif", np.ones((1, 40, 40), dtype="uint8"))
    with pytest.raises(NdgeoError, match="does not fit pixel type uint8"):
        open_raster(path, nodata=bad)


def test_missing_file(tmp_path):
    with pytest.raises(NdgeoError, match="not found"):
        open_raster(tmp_path / "nope.tif")


def test_not_a_raster(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("hello, I am not a GeoTIFF\n" * 10)
    with pytest.raises(NdgeoError, match="notes.tif"):
        open_raster(path)


def test_truncated_geotiff(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, (3, 200, 200)).astype("uint16")
    path = _write(tmp_path / "full.tif", data)
    raw = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: int(len(raw) * 0.6)])
    with pytest.raises(NdgeoError, match="corrupt or truncated"):
        open_raster(cut)


def test_unsupported_dtype(tmp_path):
    path = _write(tmp_path / "c.tif", np.ones((1, 32, 32), dtype="complex64"), compress=None)
    with pytest.raises(NdgeoError, match="unsupported pixel type 'complex64'"):
        open_raster(path)


def test_valid_mask_nodata_in_any_band_or_non_finite():
    block = np.ones((3, 2, 3), dtype="float32")
    block[1, 0, 0] = -9999  # nodata in one band only
    block[2, 0, 1] = np.nan
    block[0, 1, 2] = np.inf
    expected = np.array([[False, False, True], [True, True, False]])
    np.testing.assert_array_equal(valid_mask(block, -9999), expected)
    # Without a nodata value only non-finite pixels are invalid.
    expected[0, 0] = True
    np.testing.assert_array_equal(valid_mask(block, None), expected)


def test_valid_mask_integer_block_and_float_conversion():
    raw = np.array([[[0, 5], [7, 9]], [[3, 0], [2, 1]]], dtype="uint16")
    valid = valid_mask(raw, 0)
    np.testing.assert_array_equal(valid, [[False, False], [True, True]])
    block = to_float(raw, valid)
    assert block.dtype == np.float32
    assert np.isnan(block[:, ~valid]).all()
    np.testing.assert_array_equal(block[:, valid], raw[:, valid].astype("float32"))


def test_valid_mask_nodata_that_the_pixel_type_cannot_hold_matches_nothing():
    raw = np.array([[[7, 8]], [[7, 9]]], dtype="uint16")
    assert valid_mask(raw, 7.25).all()  # GDAL lets a file say 7.25; no uint16 pixel is 7.25
    assert valid_mask(raw, -9999.0).all()
    np.testing.assert_array_equal(valid_mask(raw, 7.0), [[False, True]])
