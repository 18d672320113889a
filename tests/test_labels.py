"""Labels -> training pixels, on tiny GeoTIFFs and vector files written in tmp_path."""

from __future__ import annotations

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from ndgeo.errors import NdgeoError
from ndgeo.io.labels import TILE, load_many, load_training_pixels, read_manifest
from ndgeo.sample import make_sample

X0, Y0, RES = 500_000.0, 4_200_000.0, 10.0
TRANSFORM = from_origin(X0, Y0, RES, RES)


def write_image(path, data, *, crs="EPSG:32610", transform=TRANSFORM, nodata=None,
                names=None, tiled=False):
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata)
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if names:
            dst.descriptions = tuple(names)
    return path


def coded_image(height=40, width=50, count=3):
    """Band b at (r, c) holds (b + 1) * 10000 + r * 100 + c: each value tells where it is from."""
    b, r, c = np.indices((count, height, width))
    return ((b + 1) * 10000 + r * 100 + c).astype("float32")


def pixel_box(r0, c0, r1, c1, transform=TRANSFORM):
    """Polygon exactly covering pixel rows r0..r1-1 and cols c0..c1-1."""
    x0, y0 = transform @ (c0, r0)
    x1, y1 = transform @ (c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def pixel_centre(r, c, transform=TRANSFORM):
    return shapely.Point(*(transform @ (c + 0.5, r + 0.5)))


def write_vector(path, geoms, values, *, field="class", crs="EPSG:32610", driver="GPKG"):
    values = np.array(values, dtype=object if isinstance(values[0], str) else "int64")
    pyogrio.raw.write(str(path), np.array(shapely.to_wkb(geoms), dtype=object), [values],
                      [field], geometry_type="Unknown", crs=CRS.from_user_input(crs).to_wkt(),
                      driver=driver)
    return path


def decode(pixels):
    """(row, col) of every pixel recovered from its band-1 value."""
    v = pixels.X[:, 0].astype(int) - 10000
    return v // 100, v % 100


def test_vector_polygons_and_points_string_classes(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    geoms = [pixel_box(3, 2, 7, 6), pixel_centre(20, 30), pixel_box(10, 40, 12, 45)]
    lab = write_vector(tmp_path / "lab.gpkg", geoms, ["water", "crop", "crop"])
    p = load_training_pixels(img, lab)
    assert p.classes == ["crop", "water"]
    assert p.class_counts == {"water": 16, "crop": 1 + 10}
    rows, cols = decode(p)
    np.testing.assert_array_equal(rows, p.rows)
    np.testing.assert_array_equal(cols, p.cols)
    water = p.y == p.classes.index("water")
    assert set(zip(p.rows[water], p.cols[water], strict=True)) == {
        (r, c) for r in range(3, 7) for c in range(2, 6)
    }
    assert (20, 30) in set(zip(p.rows[~water], p.cols[~water], strict=True))
    assert [b.name for b in p.bands] == ["band_1", "band_2", "band_3"]
    assert p.X.dtype == np.float32 and p.y.dtype == np.int64


def test_integer_class_field_and_class_names_shapefile(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    lab = write_vector(tmp_path / "lab.shp", [pixel_box(0, 0, 2, 2), pixel_box(5, 5, 6, 8)],
                       [10, 2], field="code", driver="ESRI Shapefile")
    p = load_training_pixels(img, lab, label_field="code")
    assert p.classes == ["2", "10"]  # numeric order
    assert p.class_counts == {"2": 3, "10": 4}
    assert [(c.value, c.name) for c in p.class_info] == [(2, "2"), (10, "10")]  # kept values
    named = load_training_pixels(img, lab, label_field="code", class_names={2: "b", 10: "a"})
    assert named.classes == ["b", "a"] and named.class_counts == {"a": 4, "b": 3}  # by value
    assert [c.value for c in named.class_info] == [2, 10]


def test_band_selection_by_name(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image(), names=["red", "nir", "swir16"])
    lab = write_vector(tmp_path / "lab.gpkg", [pixel_box(0, 0, 2, 2), pixel_box(5, 5, 6, 8)],
                       ["a", "b"])
    p = load_training_pixels(img, lab, bands=["S1", "red"])
    assert [b.name for b in p.bands] == ["swir16", "red"]
    assert np.all(p.X[:, 0] // 10000 == 3) and np.all(p.X[:, 1] // 10000 == 1)


def test_label_raster_on_coarser_grid_is_resampled_nearest(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    lab = np.zeros((20, 25), "uint8")
    lab[2:4, 3:5] = 1
    lab[10, 10] = 2
    write_image(tmp_path / "lab.tif", lab[None], transform=from_origin(X0, Y0, 20, 20), nodata=0)
    p = load_training_pixels(img, tmp_path / "lab.tif")
    expected = {(r, c, int(lab[r // 2, c // 2])) for r in range(40) for c in range(50)
                if lab[r // 2, c // 2]}
    got = {(r, c, int(p.classes[k])) for r, c, k in zip(p.rows, p.cols, p.y, strict=True)}
    assert got == expected


def test_float_label_raster_with_nan_nodata(tmp_path):
    """NaN (the usual float nodata) marks unlabelled pixels; it is not a class."""
    img = write_image(tmp_path / "img.tif", coded_image())
    lab = np.full((1, 40, 50), np.nan, "float32")
    lab[0, 2:4, 3:5] = 1
    lab[0, 10, 10:13] = 2
    write_image(tmp_path / "lab.tif", lab, nodata=float("nan"))
    p = load_training_pixels(img, tmp_path / "lab.tif")
    assert p.class_counts == {"1": 4, "2": 3}


def test_label_raster_in_other_crs_is_reprojected(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    # A geographic label raster over the image, two classes in halves.
    dst_t = from_origin(-123.0, 37.94, 0.0001, 0.0001)
    src_lab = np.zeros((60, 80), "uint8")
    src_lab[10:30, 10:40] = 1
    src_lab[30:50, 40:70] = 2
    with rasterio.open(tmp_path / "img.tif") as src:
        x, y = rasterio.warp.transform(src.crs, "EPSG:4326", [src.bounds.left], [src.bounds.top])
    dst_t = from_origin(x[0] - 0.0001, y[0] + 0.0001, 0.00005, 0.00005)
    write_image(tmp_path / "lab.tif", src_lab[None], crs="EPSG:4326", transform=dst_t)
    p = load_training_pixels(img, tmp_path / "lab.tif")
    oracle = np.zeros((40, 50), "uint8")
    reproject(src_lab, oracle, src_transform=dst_t, src_crs="EPSG:4326", dst_transform=TRANSFORM,
              dst_crs="EPSG:32610", resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    assert oracle.any()
    expected = {(r, c, int(oracle[r, c])) for r, c in zip(*np.nonzero(oracle), strict=True)}
    got = {(r, c, int(p.classes[k])) for r, c, k in zip(p.rows, p.cols, p.y, strict=True)}
    assert got == expected


def test_nad83_and_harn_utm_are_treated_as_the_same(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image(), crs="EPSG:26910")
    geoms = [pixel_box(3, 2, 7, 6), pixel_box(20, 20, 22, 22)]
    same = load_training_pixels(img, write_vector(tmp_path / "a.gpkg", geoms, ["a", "b"],
                                                  crs="EPSG:26910"))
    with pytest.warns(UserWarning, match="datum"):
        harn = load_training_pixels(img, write_vector(tmp_path / "b.gpkg", geoms, ["a", "b"],
                                                      crs="EPSG:3740"))
    np.testing.assert_array_equal(harn.rows, same.rows)
    np.testing.assert_array_equal(harn.cols, same.cols)
    np.testing.assert_array_equal(harn.y, same.y)


def test_epsg_and_equivalent_wkt_need_no_warning(tmp_path, recwarn):
    img = write_image(tmp_path / "img.tif", coded_image(), crs=CRS.from_epsg(32610).to_wkt())
    lab = write_vector(tmp_path / "a.gpkg", [pixel_box(0, 0, 2, 2), pixel_box(4, 4, 5, 5)],
                       ["a", "b"], crs="EPSG:32610")
    assert len(load_training_pixels(img, lab)) == 5
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_vector_labels_in_geographic_crs_are_reprojected(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    centre = pixel_centre(12, 17)
    x, y = rasterio.warp.transform("EPSG:32610", "EPSG:4326", [centre.x], [centre.y])
    other = pixel_centre(30, 5)
    x2, y2 = rasterio.warp.transform("EPSG:32610", "EPSG:4326", [other.x], [other.y])
    lab = write_vector(tmp_path / "p.gpkg", [shapely.Point(x[0], y[0]),
                                             shapely.Point(x2[0], y2[0])], ["a", "b"],
                       crs="EPSG:4326")
    p = load_training_pixels(img, lab)
    assert sorted(zip(p.rows.tolist(), p.cols.tolist(), strict=True)) == [(12, 17), (30, 5)]


def test_labels_outside_the_image_are_an_error(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    far = [shapely.box(X0 + 1e5, Y0, X0 + 1e5 + 50, Y0 + 50), shapely.Point(X0 + 2e5, Y0)]
    with pytest.raises(NdgeoError, match="do not overlap"):
        load_training_pixels(img, write_vector(tmp_path / "far.gpkg", far, ["a", "b"]))
    lab = np.ones((1, 10, 10), "uint8")
    write_image(tmp_path / "far.tif", lab, transform=from_origin(X0 + 1e5, Y0, 10, 10))
    with pytest.raises(NdgeoError, match="do not overlap"):
        load_training_pixels(img, tmp_path / "far.tif")


def test_unknown_field_lists_available_fields(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    lab = write_vector(tmp_path / "lab.gpkg", [pixel_box(0, 0, 2, 2)], ["a"], field="landcover")
    with pytest.raises(NdgeoError, match="'class' not found.*landcover"):
        load_training_pixels(img, lab)


def test_ungeoreferenced_image_with_vector_labels_is_an_error(tmp_path):
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=3,
                       dtype="float32") as dst:
        dst.write(coded_image())
    lab = write_vector(tmp_path / "lab.gpkg", [pixel_box(0, 0, 2, 2)], ["a"])
    with pytest.raises(NdgeoError, match="no georeferencing"):
        load_training_pixels(path, lab)


def test_one_class_only_is_an_error(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    lab = write_vector(tmp_path / "lab.gpkg", [pixel_box(0, 0, 2, 2), pixel_box(5, 5, 7, 7)],
                       ["a", "a"])
    with pytest.raises(NdgeoError, match="only one class"):
        load_training_pixels(img, lab)
    # With a fixed class list (evaluation) one class is fine.
    assert load_training_pixels(img, lab, classes=["a", "b"]).class_counts == {"a": 8, "b": 0}


def test_nodata_nan_negative_and_zero_pixels_are_excluded_and_counted(tmp_path):
    data = coded_image()
    data[:, 0, 0] = -9999  # nodata
    data[1, 0, 1] = np.nan
    data[2, 1, 0] = -0.5  # negative in one band
    data[:, 1, 1] = 0  # all-zero
    img = write_image(tmp_path / "img.tif", data, nodata=-9999)
    lab = write_vector(tmp_path / "lab.gpkg", [pixel_box(0, 0, 2, 3), pixel_box(5, 5, 6, 7)],
                       ["a", "b"])
    p = load_training_pixels(img, lab)
    assert p.excluded == {"nodata": 1, "nonfinite": 1, "negative": 0, "zero": 1}
    assert p.clipped == 1 and len(p) == 5
    clipped = (p.rows == 1) & (p.cols == 0)
    assert p.X[clipped, 2] == 0 and np.all(np.isfinite(p.X))
    ex = load_training_pixels(img, lab, negative="exclude")
    assert ex.excluded["negative"] == 1 and len(ex) == 4
    # A nodata override turns another value into nodata.
    over = load_training_pixels(img, lab, nodata=10000 + 505)
    assert over.excluded["nodata"] == 1 and over.excluded["zero"] == 2
    assert over.class_counts == {"a": 3, "b": 1}


def test_zero_labelled_pixels_after_masking_is_an_error(tmp_path):
    data = coded_image()
    data[:, :5, :5] = 0
    img = write_image(tmp_path / "img.tif", data, nodata=0)
    lab = write_vector(tmp_path / "lab.gpkg", [pixel_box(0, 0, 2, 2), pixel_box(3, 3, 5, 5)],
                       ["a", "b"])
    with pytest.raises(NdgeoError, match="after masking"):
        load_training_pixels(img, lab)


def test_only_labelled_windows_are_read(tmp_path):
    size = 3 * TILE  # 9 tiles, labels in two of them
    data = np.ones((2, size, size), "uint16")
    img = write_image(tmp_path / "big.tif", data, tiled=True)
    geoms = [pixel_box(10, 10, 15, 15), pixel_box(1400, 1300, 1402, 1310)]
    p = load_training_pixels(img, write_vector(tmp_path / "lab.gpkg", geoms, ["a", "b"]))
    assert len(p) == 25 + 20
    assert p.pixels_read == 25 + 20  # the bounding windows of the labels, nothing else
    lab = np.zeros((1, size, size), "uint8")
    lab[0, 10:15, 10:15] = 1
    lab[0, 700, 700] = 2
    lab[0, 710, 703] = 2  # same tile: one bounding window 11 x 4
    write_image(tmp_path / "lab.tif", lab, tiled=True, nodata=0)
    q = load_training_pixels(img, tmp_path / "lab.tif")
    assert len(q) == 27 and q.pixels_read == 25 + 11 * 4


def test_max_pixels_subsamples_reproducibly(tmp_path):
    img = write_image(tmp_path / "img.tif", coded_image())
    lab = write_vector(tmp_path / "lab.gpkg", [pixel_box(0, 0, 20, 20), pixel_box(25, 0, 40, 50)],
                       ["a", "b"])
    full = load_training_pixels(img, lab)
    a = load_training_pixels(img, lab, max_pixels=100, seed=3)
    b = load_training_pixels(img, lab, max_pixels=100, seed=3)
    c = load_training_pixels(img, lab, max_pixels=100, seed=4)
    assert len(a) == 100 and a.subsampled_from == len(full) == 400 + 750
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.rows, c.rows)
    rows, cols = decode(a)
    np.testing.assert_array_equal(rows, a.rows)


def test_load_many_matches_bands_by_name_and_unifies_classes(tmp_path):
    one = write_image(tmp_path / "one.tif", coded_image(), names=["red", "nir", "swir16"])
    data = coded_image()[[1, 2, 0]]  # same bands, other order
    two = write_image(tmp_path / "two.tif", data, names=["nir", "swir16", "red"])
    lab1 = write_vector(tmp_path / "l1.gpkg", [pixel_box(0, 0, 2, 2), pixel_box(5, 5, 6, 6)],
                        ["water", "crop"])
    lab2 = write_vector(tmp_path / "l2.gpkg", [pixel_box(0, 0, 1, 3), pixel_box(9, 9, 10, 10)],
                        ["urban", "crop"])
    p = load_many([(one, lab1), (two, lab2)])
    assert p.classes == ["crop", "urban", "water"]
    assert p.class_counts == {"crop": 2, "urban": 3, "water": 4}
    assert [b.name for b in p.bands] == ["red", "nir", "swir16"]
    assert np.all(p.X[:, 0] // 10000 == 1) and np.all(p.X[:, 1] // 10000 == 2)
    assert p.scene_ids == ["one", "two"] and set(p.scene.tolist()) == {0, 1}
    bad = write_image(tmp_path / "bad.tif", coded_image(), names=["red", "nir", "blue"])
    with pytest.raises(NdgeoError, match="S1"):
        load_many([(one, lab1), (bad, lab2)])


def test_read_manifest_csv_and_toml(tmp_path):
    (tmp_path / "m.csv").write_text("image,labels\n# comment\na.tif, a.gpkg\n\nsub/b.tif,b.tif\n")
    assert read_manifest(tmp_path / "m.csv") == [
        (tmp_path / "a.tif", tmp_path / "a.gpkg"), (tmp_path / "sub/b.tif", tmp_path / "b.tif")
    ]
    (tmp_path / "m.toml").write_text('[[scene]]\nimage = "a.tif"\nlabels = "a.gpkg"\n')
    assert read_manifest(tmp_path / "m.toml") == [(tmp_path / "a.tif", tmp_path / "a.gpkg")]
    (tmp_path / "bad.csv").write_text("a.tif\n")
    with pytest.raises(NdgeoError, match="image,labels"):
        read_manifest(tmp_path / "bad.csv")


def test_sample_scene_vector_and_raster_labels_agree(tmp_path):
    scene = make_sample(tmp_path / "sample", size=96)
    # The sample's classes.csv gives the polygons the label raster's values and colours.
    vec = load_training_pixels(scene.image, scene.labels_vector, class_table=scene.classes_csv)
    ras = load_training_pixels(scene.image, scene.labels_raster)
    expected = {c["name"]: c["labelled_pixels"] for c in scene.truth["classes"]}
    assert vec.class_counts == ras.class_counts == expected
    assert vec.classes == ras.classes and len(vec.bands) == 10
    assert vec.class_info == ras.class_info
    assert [(c.value, c.name, list(c.color)) for c in ras.class_info] == [
        (c["id"], c["name"], c["color"]) for c in scene.truth["classes"]]
    np.testing.assert_array_equal(vec.X, ras.X)
    np.testing.assert_array_equal(vec.y, ras.y)
