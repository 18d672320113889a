"""ndgeo.writer: atomic, tiled, compressed, self-describing GeoTIFFs and the COG pass."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from ndgeo.errors import NdgeoError
from ndgeo.io.writer import GeoTIFFWriter, creation_profile, write_raster

TRANSFORM = Affine(20.0, 0.0, 300000.0, 0.0, -20.0, 5000000.0)


def _options(**extra):
    return dict(width=100, height=77, count=2, dtype="int16", crs="EPSG:32633",
                transform=TRANSFORM, nodata=-1, **extra)


def _data():
    return np.arange(2 * 77 * 100, dtype="int16").reshape(2, 77, 100) % 1000


def test_windows_written_in_any_order_with_metadata(tmp_path):
    out = tmp_path / "out.tif"
    data = _data()
    windows = [Window(c, r, min(32, 100 - c), min(32, 77 - r))
               for r in range(0, 77, 32) for c in range(0, 100, 32)]
    with GeoTIFFWriter(
        out, **_options(), descriptions=["first", "second"], tags={"formula": "(N-R)/(N+R)"},
        band_tags=[{"scale": 0.5}, {}],
    ) as dst:
        for w in reversed(windows):
            dst.write(data[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width], w)
    assert sorted(os.listdir(tmp_path)) == ["out.tif"]
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), data)
        assert src.crs.to_epsg() == 32633 and src.transform == TRANSFORM
        assert src.nodata == -1
        assert src.descriptions == ("first", "second")
        assert src.tags()["formula"] == "(N-R)/(N+R)"
        assert src.tags(1)["scale"] == "0.5"
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        assert src.compression.name == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"


def test_float_predictor_and_creation_option_overrides(tmp_path):
    data = np.random.default_rng(0).random((1, 64, 64), dtype="float32")
    write_raster(tmp_path / "f.tif", data, crs="EPSG:4326", transform=TRANSFORM)
    with rasterio.open(tmp_path / "f.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
    write_raster(tmp_path / "l.tif", data, creation_options={"compress": "lzw", "BLOCKXSIZE": 32,
                                                             "blockysize": "32"})
    with rasterio.open(tmp_path / "l.tif") as src:
        assert src.compression.name == "lzw" and src.block_shapes[0] == (32, 32)
        np.testing.assert_array_equal(src.read(), data)
    with pytest.raises(NdgeoError, match="BLOCKXSIZE=30"):
        write_raster(tmp_path / "x.tif", data, creation_options={"BLOCKXSIZE": 30})


def test_colour_table_for_classes(tmp_path):
    classes = np.array([[[0, 1, 2, 255]]], dtype="uint8").repeat(8, axis=1)
    cmap = {0: (0, 0, 255, 255), 1: (0, 200, 0, 255), 2: (200, 0, 0, 255)}
    write_raster(tmp_path / "c.tif", classes, nodata=255, colormap=cmap,
                 tags={"class_names": '["water", "veg", "soil"]'})
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.colormap(1)[1] == (0, 200, 0, 255)
        assert src.tags()["class_names"] == '["water", "veg", "soil"]'


def test_refuses_existing_output_unless_overwrite(tmp_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    with pytest.raises(NdgeoError, match="exists; use --overwrite"):
        GeoTIFFWriter(out, **_options())
    assert out.read_bytes() == b"precious"
    write_raster(out, _data(), overwrite=True)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), _data())


def test_missing_and_unwritable_directories(tmp_path):
    with pytest.raises(NdgeoError, match="does not exist"):
        GeoTIFFWriter(tmp_path / "no" / "out.tif", **_options())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root ignores permission bits; /proc refuses new files even for root.
    target = Path("/proc") if os.access(locked, os.W_OK) else locked
    try:
        with pytest.raises(NdgeoError, match="not writable"):
            GeoTIFFWriter(target / "out.tif", **_options())
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_leaves_no_output_and_keeps_existing(tmp_path, error):
    fresh = tmp_path / "fresh.tif"
    with pytest.raises(error), GeoTIFFWriter(fresh, **_options()) as dst:
        dst.write(_data()[:, :32, :32], Window(0, 0, 32, 32))
        assert os.path.exists(dst.temp_path)
        assert os.path.basename(dst.temp_path).startswith(".fresh.tif.")
        raise error("boom")
    assert os.listdir(tmp_path) == []

    existing = tmp_path / "existing.tif"
    existing.write_bytes(b"old")
    with pytest.raises(error), GeoTIFFWriter(existing, overwrite=True, **_options()) as dst:
        dst.write(_data()[:, :32, :32], Window(0, 0, 32, 32))
        raise error("boom")
    assert os.listdir(tmp_path) == ["existing.tif"]
    assert existing.read_bytes() == b"old"


def test_cog_has_real_overviews_and_keeps_metadata(tmp_path):
    rng = np.random.default_rng(3)
    data = (rng.random((1, 512, 512), dtype="float32") * 100 + 1).astype("float32")
    data[:, :64, :] = -9999  # nodata rows aligned with the 2x2 decimation
    out = tmp_path / "cog.tif"
    with GeoTIFFWriter(
        out, width=512, height=512, count=1, dtype="float32", crs="EPSG:32633",
        transform=TRANSFORM, nodata=-9999, descriptions=["nd"], tags={"formula": "(N-R)/(N+R)"},
        band_tags=[{"scale": "1"}], cog=True,
    ) as dst:
        for row in range(0, 512, 128):  # streamed like the engine does
            dst.write(data[:, row : row + 128], Window(0, row, 512, 128))
    assert os.listdir(tmp_path) == ["cog.tif"]
    valid, errors, _ = cog_validate(str(out), quiet=True)
    assert valid, errors
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2]
        np.testing.assert_array_equal(src.read(), data)
        assert src.descriptions == ("nd",) and src.tags()["formula"] == "(N-R)/(N+R)"
        assert src.tags(1)["scale"] == "1" and src.nodata == -9999
        overview = src.read(1, out_shape=(256, 256))
    expected = data[0].reshape(256, 2, 256, 2).mean(axis=(1, 3))
    expected[:32] = -9999
    assert overview[32:].min() > 0  # not the all-zero overviews of COG + dask
    np.testing.assert_allclose(overview, expected, rtol=1e-5)


def test_cog_class_output_keeps_colour_table(tmp_path):
    classes = np.tile(np.array([0, 1, 2, 255], dtype="uint8"), (1, 512, 128))
    cmap = {0: (0, 0, 255, 255), 1: (0, 200, 0, 255), 2: (200, 0, 0, 255)}
    out = write_raster(tmp_path / "c.tif", classes, crs="EPSG:32633", transform=TRANSFORM,
                       nodata=255, colormap=cmap, cog=True)
    assert cog_validate(out, quiet=True)[0]
    with rasterio.open(out) as src:
        assert src.colormap(1)[2] == (200, 0, 0, 255)
        assert src.overviews(1) == [2]
        assert set(np.unique(src.read(1, out_shape=(256, 256)))) <= {0, 1, 2, 255}


def test_default_compression_depends_on_output_type_and_co_wins(tmp_path):
    assert creation_profile("float32")["COMPRESS"] == "ZSTD"
    assert creation_profile("float32")["ZSTD_LEVEL"] == "1"
    assert creation_profile("uint8")["COMPRESS"] == "DEFLATE"
    assert creation_profile("uint8")["ZLEVEL"] == "6"
    deflate = creation_profile("float32", {"compress": "deflate"})
    assert deflate["ZLEVEL"] == "6" and deflate["PREDICTOR"] == "3" and "ZSTD_LEVEL" not in deflate
    assert creation_profile("float32", {"zstd_level": 9})["ZSTD_LEVEL"] == "9"
    data = np.linspace(-1, 1, 64 * 64, dtype="float32").reshape(1, 64, 64)
    write_raster(tmp_path / "f.tif", data)
    with rasterio.open(tmp_path / "f.tif") as src:
        assert src.compression.name == "zstd" and (src.read() == data).all()
