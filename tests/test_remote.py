"""Any GDAL dataset name as input: a tiled GeoTIFF served over HTTP (with Range requests) by a
server on 127.0.0.1 reads like the local file, through ``/vsicurl/`` and plain ``http://``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
from typer.testing import CliRunner

from ndgeo.checkpoint import load_model
from ndgeo.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def served(sample_scene, helpers):
    """(base URL, folder) of a loopback HTTP server over the sample scene's folder."""
    folder = Path(sample_scene.image).parent
    with helpers.serve_folder(folder) as base:
        yield base, folder


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.tags()


@pytest.mark.parametrize("prefix", ["/vsicurl/", ""])
def test_apply_over_http_equals_the_local_run(served, nd_model, tmp_path, prefix):
    base, folder = served
    name = "scene.tif"
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    for image, out in ((folder / name, local), (f"{prefix}{base}/{name}", remote)):
        result = runner.invoke(app, ["-q", "apply", str(nd_model.path), str(image), "-o",
                                     str(out), "--chunk-size", "64"])
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(_read(local)[0], _read(remote)[0])


def test_index_and_train_read_remote_images(served, tmp_path):
    base, folder = served
    url = f"/vsicurl/{base}/scene.tif"
    out = tmp_path / "ndvi.tif"
    assert runner.invoke(app, ["-q", "index", url, "-o", str(out), "--name", "NDVI"]).exit_code == 0
    local = tmp_path / "ndvi-local.tif"
    assert runner.invoke(app, ["-q", "index", str(folder / "scene.tif"), "-o", str(local),
                               "--name", "NDVI"]).exit_code == 0
    np.testing.assert_array_equal(_read(out)[0], _read(local)[0])
    model = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["-q", "train", url, f"/vsicurl/{base}/labels.tif", "-o",
                                 str(model), "--epochs", "2", "--no-report"])
    assert result.exit_code == 0, result.output


def test_missing_remote_file_is_one_line_with_gdal_message(served, nd_model, tmp_path):
    base, _ = served
    result = runner.invoke(app, ["apply", str(nd_model.path), f"/vsicurl/{base}/nope.tif", "-o",
                                 str(tmp_path / "o.tif")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "nope.tif" in lines[0], result.output


def test_labelled_tile_folders_train_and_report_unmatched_tiles(sample_scene, tmp_path):
    """--images 'chips/*.tif' --labels 'masks/{stem}.tif': four chips of the sample, three
    with masks; the one without is reported and the others train."""
    (tmp_path / "chips").mkdir()
    (tmp_path / "masks").mkdir()
    with rasterio.open(sample_scene.image) as img, rasterio.open(sample_scene.labels_raster) as lab:
        half = img.width // 2
        for k, (row, col) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
            window = rasterio.windows.Window(col, row, half, half)
            for src, folder in ((img, "chips"), (lab, "masks")):
                if folder == "masks" and k == 3:
                    continue
                profile = {**src.profile, "width": half, "height": half,
                           "transform": src.window_transform(window), "tiled": False}
                with rasterio.open(tmp_path / folder / f"chip{k}.tif", "w", **profile) as dst:
                    dst.write(src.read(window=window))
                    dst.descriptions = src.descriptions
                    dst.update_tags(**src.tags())
    out = tmp_path / "chips.safetensors"
    result = runner.invoke(app, ["train", "--images", str(tmp_path / "chips" / "*.tif"),
                                 "--labels", str(tmp_path / "masks" / "{stem}.tif"), "-o",
                                 str(out), "--epochs", "2", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "1 image(s) without labels" in result.output and "chip3.tif" in result.output
    _, meta = load_model(out)
    assert meta["training"]["n_train"] + meta["training"]["n_val"] > 0
