"""STAC Item input: one file per band (two of them at half resolution) stacked as a VRT; the
result equals the same bands stacked by hand, locally and over a loopback HTTP server."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from affine import Affine
from typer.testing import CliRunner

from ndgeo.cli import app
from ndgeo.io.raster import open_raster

runner = CliRunner()
COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge", "B06": "rededge",
          "B07": "rededge", "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22"}
COARSE = ("B11", "B12")


def _item(sample_scene, folder):
    """Per-band COG-like files (B11/B12 at 20 m, nearest) and an Item; returns the Item path
    and the full-resolution stack the VRT must reproduce."""
    with rasterio.open(sample_scene.image) as src:
        data, profile, names = src.read(), src.profile, src.descriptions
    assets, expected = {}, data.copy()
    for k, name in enumerate(names):
        band, transform = data[k], profile["transform"]
        if name in COARSE:
            band = band[::2, ::2]
            transform = transform * Affine.scale(2)
            expected[k] = np.repeat(np.repeat(band, 2, 0), 2, 1)[: data.shape[1], : data.shape[2]]
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", **{**profile, "count": 1, "width": band.shape[1],
                                         "height": band.shape[0], "transform": transform,
                                         "blockxsize": 64, "blockysize": 64}) as dst:
            dst.write(band, 1)
        assets[name] = {"href": path.name, "type": "image/tiff; application=geotiff",
                        "eo:bands": [{"name": name, "common_name": COMMON[name]}],
                        "raster:bands": [{"nodata": 0, "scale": 1.0, "offset": 0.0}]}
    assets["thumbnail"] = {"href": "thumb.png", "type": "image/png"}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "sample",
            "properties": {"datetime": "2026-06-01T10:00:00Z"}, "geometry": None,
            "assets": assets, "links": []}
    (folder / "item.json").write_text(json.dumps(item))
    return folder / "item.json", expected


def test_item_stacks_band_assets_on_the_finest_grid(sample_scene, tmp_path):
    item, expected = _item(sample_scene, tmp_path)
    info = open_raster(item)
    assert info.count == 10 and info.shape == expected.shape[1:]
    assert [b.letter for b in info.bands][:4] == ["B", "G", "R", "RE1"]
    assert info.bands[7].letter == "N2" and info.nodata == 0
    with rasterio.open(info.path) as src:
        np.testing.assert_array_equal(src.read(), expected)
    coarse = open_raster(item, grid="B11")
    assert coarse.shape == (expected.shape[1] // 2, expected.shape[2] // 2)


def test_apply_on_an_item_equals_the_stacked_file(sample_scene, nd_model, tmp_path):
    item, expected = _item(sample_scene, tmp_path)
    with rasterio.open(sample_scene.image) as src:
        profile, names = src.profile, src.descriptions
    stacked = tmp_path / "stacked.tif"
    with rasterio.open(stacked, "w", **profile) as dst:
        dst.write(expected)
        dst.descriptions = names
    outs = []
    for image in (item, stacked):
        out = tmp_path / f"{image.stem}-classes.tif"
        result = runner.invoke(app, ["-q", "apply", str(nd_model.path), str(image), "-o",
                                     str(out), "--band-names", ",".join(names)])
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as src:
            outs.append(src.read())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_bad_grid_is_one_line(sample_scene, nd_model, tmp_path):
    item, _ = _item(sample_scene, tmp_path)
    result = runner.invoke(app, ["apply", str(nd_model.path), str(item), "-o",
                                 str(tmp_path / "o.tif"), "--grid", "B99"])
    assert result.exit_code == 2 and "B99" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_item_over_http_equals_local(sample_scene, tmp_path, helpers):
    item, expected = _item(sample_scene, tmp_path)
    with helpers.serve_folder(tmp_path) as base:
        info = open_raster(f"{base}/item.json")
        assert "/vsicurl/http://127.0.0.1" in info.path
        with rasterio.open(info.path) as src:
            np.testing.assert_array_equal(src.read(), expected)
