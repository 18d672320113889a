"""The sample scene: determinism, valid GeoTIFF/GPKG files, consistent labels, the truth claim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine
from typer.testing import CliRunner

from ndgeo.bands import letter_for
from ndgeo.cli import app
from ndgeo.errors import NdgeoError
from ndgeo.sample import describe_scene, make_sample, validate_sample

S2_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
OUTPUTS = {"scene.tif", "labels.tif", "labels.gpkg", "crop_vs_grass.gpkg", "classes.csv",
           "truth.json"}
COMMITTED = Path(__file__).resolve().parents[1] / "sample_data"


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _polygons(path: Path) -> tuple[dict, list[shapely.Geometry], list[str]]:
    meta, _, wkb, fields = pyogrio.raw.read(path)
    names = list(fields[list(meta["fields"]).index("class")])
    return meta, list(shapely.from_wkb(wkb)), names


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("small"), seed=3, size=96)


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """The default scene (seed 0, 256 px), as committed in sample_data/."""
    return make_sample(tmp_path_factory.mktemp("default"))


def test_same_seed_same_scene_other_seed_other_scene(small, tmp_path):
    again = make_sample(tmp_path / "again", seed=3, size=96)
    other = make_sample(tmp_path / "other", seed=4, size=96)
    np.testing.assert_array_equal(_read(small.image), _read(again.image))
    np.testing.assert_array_equal(_read(small.labels_raster), _read(again.labels_raster))
    _, geoms_a, names_a = _polygons(small.labels_vector)
    _, geoms_b, names_b = _polygons(again.labels_vector)
    assert names_a == names_b
    assert all(shapely.equals_exact(a, b, 0.0) for a, b in zip(geoms_a, geoms_b, strict=True))
    assert small.truth == again.truth

    assert not np.array_equal(_read(small.image), _read(other.image))
    _, geoms_c, _ = _polygons(other.labels_vector)
    assert [g.wkt for g in geoms_a] != [g.wkt for g in geoms_c]


def test_image_is_a_tiled_georeferenced_geotiff_with_nodata_border(small):
    with rasterio.open(small.image) as src:
        assert src.driver == "GTiff"
        assert src.crs == CRS.from_epsg(32633)
        assert src.res == (10.0, 10.0)
        assert 166_000 < src.bounds.left < 834_000 and 0 < src.bounds.bottom < 9_400_000
        assert list(src.descriptions) == S2_BANDS
        assert src.dtypes == ("uint16",) * 10
        assert src.nodata == 0
        assert src.profile["tiled"] and src.block_shapes[0] == (128, 128)
        assert src.compression.name.lower() == "deflate"
        assert src.tags()["SEED"] == "3"
        assert "B08" in src.tags()["TRUE_INDEX"]
        image = src.read()
    nodata = image == 0
    invalid = nodata.all(axis=0)
    assert np.array_equal(nodata.any(axis=0), invalid), "nodata must be the same in all bands"
    border = np.ones_like(invalid)
    border[3:-3, 3:-3] = False
    assert invalid[border].all(), "a nodata border at least 3 pixels wide"
    assert invalid[0, -1] and invalid[10, -10], "the clipped swath corner"
    assert 0.7 < (~invalid).mean() < 0.97
    # Reflectance x 10000: vegetation NIR in the thousands, nothing above 1.0 reflectance.
    valid = image[:, ~invalid]
    assert valid.max() < 10_000 and 1_000 < np.median(valid[6]) < 6_000


def test_labels_overlay_the_image_and_match_the_label_raster(small):
    with rasterio.open(small.image) as src:
        grid = (src.crs, src.transform, src.shape)
        bounds = src.bounds
        invalid = (src.read() == 0).all(axis=0)
    with rasterio.open(small.labels_raster) as src:
        assert (src.crs, src.transform, src.shape) == grid
        assert src.dtypes == ("uint8",)
        labels = src.read(1)
    meta, geoms, names = _polygons(small.labels_vector)
    assert CRS.from_user_input(meta["crs"]) == grid[0]
    assert meta["fields"][0] == "class" and meta["geometry_type"] == "Polygon"
    ids = {c["name"]: c["id"] for c in small.truth["classes"]}
    assert set(names) == set(ids)
    assert all(g.is_valid and g.area > 0 for g in geoms)
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    assert bounds.left <= x0 and x1 <= bounds.right and bounds.bottom <= y0 and y1 <= bounds.top

    burned = rasterio.features.rasterize(
        [(g, ids[n]) for g, n in zip(geoms, names, strict=True)],
        out_shape=grid[2],
        transform=grid[1],
        dtype="uint8",
    )
    np.testing.assert_array_equal(burned, labels)
    assert not labels[invalid].any(), "labels only on valid pixels"
    assert set(np.unique(labels)) == {0, *ids.values()}
    assert 0.01 < (labels > 0).mean() < 0.5, "labels cover part of the scene, not all of it"


def test_truth_json_is_machine_readable(small):
    truth = json.loads(small.truth_json.read_text())
    assert truth == small.truth
    assert [c["id"] for c in truth["classes"]] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in truth["classes"]][:2] == ["crop", "grassland"]
    assert all(len(c["color"]) == 3 for c in truth["classes"])
    assert [b["name"] for b in truth["bands"]] == S2_BANDS
    index = truth["separating_index"]
    assert index["positive"] == {"B08": 1.0} and index["negative"] == {"B05": 2.0}
    for side in ("positive", "negative"):
        assert index["letters"][side] == {letter_for(b): w for b, w in index[side].items()}
    assert index["letters"] == {"positive": {"N": 1.0}, "negative": {"RE1": 2.0}}
    assert index["threshold"] == 0.0 and (index["above"], index["below"]) == ("crop", "grassland")
    counts = np.bincount(_read(small.labels_raster).ravel(), minlength=6)
    assert [c["labelled_pixels"] for c in truth["classes"]] == counts[1:].tolist()


def _crop_vs_grass(scene) -> tuple[dict[str, np.ndarray], np.ndarray]:
    image = _read(scene.image).astype(float)
    labels = _read(scene.labels_raster)[0]
    mask = (labels == 1) | (labels == 2)
    return dict(zip(S2_BANDS, image[:, mask], strict=True)), labels[mask] == 1


def _nd(bands, positive, negative):
    p = sum(w * bands[b] for b, w in positive.items())
    q = sum(w * bands[b] for b, w in negative.items())
    return (p - q) / (p + q)


def _best_threshold_accuracy(values: np.ndarray, is_crop: np.ndarray) -> float:
    """The most generous score for a single feature: the best threshold, either direction."""
    order = np.argsort(values, kind="stable")
    y = is_crop[order].astype(float)
    # Predict crop above position k: correct = crops above + grass at or below.
    above_crop = y.sum() - np.concatenate([[0], np.cumsum(y)])
    below_grass = np.concatenate([[0], np.cumsum(1 - y)])
    acc = (above_crop + below_grass) / y.size
    return float(max(acc.max(), (1 - acc).max()))


def test_truth_index_separates_crop_from_grassland(small, default):
    for scene in (small, default):
        bands, is_crop = _crop_vs_grass(scene)
        index = scene.truth["separating_index"]
        value = _nd(bands, index["positive"], index["negative"])
        assert ((value > index["threshold"]) == is_crop).mean() >= 0.95


def test_ndvi_brightness_and_single_bands_do_clearly_worse(default):
    """The README's claim, on the committed (default) scene."""
    bands, is_crop = _crop_vs_grass(default)
    index = default.truth["separating_index"]
    truth_acc = ((_nd(bands, index["positive"], index["negative"]) > 0) == is_crop).mean()
    assert 0.2 < is_crop.mean() < 0.8
    ndvi = _best_threshold_accuracy(_nd(bands, {"B08": 1}, {"B04": 1}), is_crop)
    brightness = _best_threshold_accuracy(np.mean(list(bands.values()), axis=0), is_crop)
    single = max(_best_threshold_accuracy(v, is_crop) for v in bands.values())
    ndre_at_zero = ((_nd(bands, {"B08": 1}, {"B05": 1}) > 0) == is_crop).mean()
    assert truth_acc >= 0.99
    assert ndvi <= truth_acc - 0.2
    assert brightness <= truth_acc - 0.15
    assert single <= truth_acc - 0.1
    assert ndre_at_zero <= max(is_crop.mean(), 1 - is_crop.mean()) + 0.01


def test_cli_writes_files_and_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    out = tmp_path / "scene"
    first = runner.invoke(app, ["sample-data", str(out), "--size", "64", "--seed", "5"])
    assert first.exit_code == 0, first.output
    assert {p.name for p in out.iterdir()} >= OUTPUTS
    assert validate_sample(out) == []
    before = _read(out / "scene.tif")

    second = runner.invoke(app, ["sample-data", str(out), "--size", "64", "--seed", "6"])
    assert second.exit_code == 2
    np.testing.assert_array_equal(_read(out / "scene.tif"), before)

    third = runner.invoke(
        app, ["sample-data", str(out), "--size", "64", "--seed", "6", "--overwrite"]
    )
    assert third.exit_code == 0, third.output
    assert not np.array_equal(_read(out / "scene.tif"), before)


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(NdgeoError, match="size"):
        make_sample(tmp_path, size=16)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NdgeoError, match="is a file"):
        make_sample(tmp_path / "file", size=64)


def test_no_temporary_or_half_files_are_left(tmp_path):
    make_sample(tmp_path, size=64)
    assert {p.name for p in tmp_path.iterdir()} == OUTPUTS
    # A destination that cannot be replaced fails the run without leaving temp files.
    (tmp_path / "truth.json").unlink()
    (tmp_path / "truth.json").mkdir()
    with pytest.raises(NdgeoError, match="cannot write .*truth.json"):
        make_sample(tmp_path, size=64, overwrite=True)
    assert {p.name for p in tmp_path.iterdir()} == OUTPUTS


def test_describe_scene(small):
    info = describe_scene(small.image, small.labels_raster)
    assert (info["width"], info["height"], info["count"]) == (96, 96, 10)
    assert info["crs"] == "EPSG:32633" and info["nodata"] == 0 and info["dtype"] == "uint16"
    assert [b["name"] for b in info["bands"]] == S2_BANDS
    assert [b["letter"] for b in info["bands"]][:4] == ["B", "G", "R", "RE1"]
    invalid = (_read(small.image) == 0).all(axis=0)
    assert info["valid_fraction"] == pytest.approx((~invalid).mean())
    counts = np.bincount(_read(small.labels_raster).ravel(), minlength=6)
    assert [(c["id"], c["name"], c["pixels"]) for c in info["classes"]] == [
        (i, c["name"], int(counts[i])) for i, c in enumerate(small.truth["classes"], start=1)
    ]
    with pytest.raises(NdgeoError, match="no such raster"):
        describe_scene(small.outdir / "missing.tif")


def test_validate_sample_finds_problems(tmp_path):
    scene = make_sample(tmp_path, size=64)
    assert validate_sample(tmp_path) == []
    with rasterio.open(scene.image, "r+") as dst:
        dst.write(np.full((1, 1), 500, dtype="uint16"), 1, window=((0, 1), (0, 1)))
    problems = validate_sample(tmp_path)
    assert any("nodata border" in p for p in problems)
    assert any("some bands only" in p for p in problems)
    scene.labels_vector.unlink()
    assert "labels.gpkg" in validate_sample(tmp_path)[0]


def test_validate_sample_finds_shifted_labels(tmp_path):
    scene = make_sample(tmp_path, size=64)
    with rasterio.open(scene.labels_raster, "r+") as dst:
        t = dst.transform
        dst.transform = Affine(t.a, t.b, t.c + 10.0, t.d, t.e, t.f)
    assert any("grid" in p for p in validate_sample(tmp_path))


def test_committed_sample_is_valid_and_reproducible(default):
    assert validate_sample(COMMITTED) == []
    np.testing.assert_array_equal(_read(COMMITTED / "scene.tif"), _read(default.image))
    np.testing.assert_array_equal(
        _read(COMMITTED / "labels.tif"), _read(default.labels_raster)
    )
    _, committed_geoms, committed_names = _polygons(COMMITTED / "labels.gpkg")
    _, fresh_geoms, fresh_names = _polygons(default.labels_vector)
    assert committed_names == fresh_names
    assert all(
        shapely.equals_exact(a, b, 0.0) for a, b in zip(committed_geoms, fresh_geoms, strict=True)
    )
    assert json.loads((COMMITTED / "truth.json").read_text()) == default.truth
    total = sum(p.stat().st_size for p in COMMITTED.iterdir() if p.is_file())
    assert total < 5 * 1024 * 1024
