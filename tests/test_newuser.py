"""What a new user meets (issue 11): each item through the CLI on real files.

Band presets that do not fit a file, class maps that keep the label raster's values, names and
colours (with legend sidecars), exact formula exports, options that would be ignored, indices
with constants on unscaled data, numexpr / gdal_calc exports, help text, Ctrl-C during
training and the PNG report.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numexpr
import numpy as np
import pytest
import rasterio
from PIL import Image
from typer.testing import CliRunner

from ndgeo.bands import Band
from ndgeo.checkpoint import load_model
from ndgeo.cli import app
from ndgeo.formula import formulas_from_coefficients, nearest_catalogue, to_text
from ndgeo.sample import make_sample

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def rewrite(src_path, dst_path, bands: list[str], descriptions: list[str] | None):
    """``bands`` of ``src_path`` (by description) into ``dst_path`` with ``descriptions``
    (None: none at all)."""
    with rasterio.open(src_path) as src:
        names = list(src.descriptions)
        data = src.read([names.index(b) + 1 for b in bands])
        profile = src.profile
    profile.update(count=len(bands))
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
    return dst_path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("scene"), seed=1, size=96)


@pytest.fixture(scope="module")
def model(scene, tmp_path_factory):
    """A small ND model trained on the label raster (quietly)."""
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    result = cli("-q", "train", scene.image, scene.labels_raster, "-o", path, "--epochs", "3",
                 "--indices", "3", "--no-report")
    assert result.exit_code == 0, result.output
    return path


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.tags(), src.colormap(1) if src.count == 1 else None


# -- 1, 12: band naming --------------------------------------------------------------------------


def test_sensor_preset_that_does_not_fit_the_band_count_is_one_clear_error(scene, tmp_path):
    """Old behaviour: 4 bands without descriptions were named B01..B04 and trained on."""
    four = rewrite(scene.image, tmp_path / "four.tif", ["B03", "B04", "B05", "B08"], None)
    result = cli("-q", "train", four, scene.labels_raster, "-o", tmp_path / "m.safetensors",
                 "--sensor", "sentinel-2", "--epochs", "1", "--no-report")
    line = one_line_error(result, "--sensor sentinel-2", "12 bands", "13 bands",
                          "this raster has 4 band(s) and no band descriptions", "--band-names")
    assert "e.g. --band-names B02,B03,B04,B08" in line
    assert not (tmp_path / "m.safetensors").exists()
    # apply too: a model of B02, B03, B04 would otherwise read file bands 2-4 as those.
    three = rewrite(scene.image, tmp_path / "three.tif", ["B02", "B03", "B04"],
                    ["B02", "B03", "B04"])
    m3 = tmp_path / "m3.safetensors"
    assert cli("-q", "train", three, scene.labels_raster, "-o", m3, "--epochs", "1",
               "--indices", "2", "--no-report").exit_code == 0
    one_line_error(cli("-q", "apply", m3, four, "-o", tmp_path / "out.tif", "--sensor", "s2"),
                   "this raster has 4 band(s)", "--band-names")
    assert not (tmp_path / "out.tif").exists()
    # A full 12-band L2A stack without descriptions is named by position.
    with rasterio.open(scene.image) as src:
        data, profile = src.read(), src.profile
    profile.update(count=12)
    with rasterio.open(tmp_path / "l2a.tif", "w", **profile) as dst:
        dst.write(np.concatenate([data[:1], data[:7], data[7:8], data[:1], data[8:]]))
    out = tmp_path / "l2a_classes.tif"
    assert cli("-q", "apply", m3, tmp_path / "l2a.tif", "-o", out, "--sensor", "sentinel-2",
               "--dry-run").exit_code == 0


def test_gee_band_names_are_read_with_sensor_and_the_error_suggests_it(scene, model, tmp_path):
    gee_names = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    esa_names = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    gee = rewrite(scene.image, tmp_path / "gee.tif", esa_names, gee_names)
    line = one_line_error(cli("-q", "apply", model, gee, "-o", tmp_path / "x.tif"),
                          "not found", "--band-names", "--sensor")
    assert "B2, B3, B4, B5" in line  # the unnamed ids it saw
    ok = cli("-q", "apply", model, gee, "-o", tmp_path / "gee_classes.tif", "--sensor",
             "sentinel-2")
    assert ok.exit_code == 0, ok.output
    assert cli("-q", "apply", model, scene.image, "-o", tmp_path / "esa.tif").exit_code == 0
    np.testing.assert_array_equal(read(tmp_path / "gee_classes.tif")[0],
                                  read(tmp_path / "esa.tif")[0])


def test_band_names_errors_talk_about_band_names(scene, model, tmp_path):
    result = cli("-q", "apply", model, scene.image, "-o", tmp_path / "x.tif", "--band-names",
                 "B1,B2,B3")
    line = one_line_error(result, "--band-names gives 3 names", "the raster has 10 bands")
    assert "--bands " not in line


def test_a_geotiff_given_as_model_says_model_comes_first(scene, model, tmp_path):
    result = cli("-q", "apply", scene.image, model, "-o", tmp_path / "x.tif")
    one_line_error(result, "is a GeoTIFF, not a model file", "MODEL comes first")


# -- 2: evaluate's noise table -------------------------------------------------------------------


def test_noise_table_prints_level_accuracy_and_drop_in_their_columns(scene, model):
    args = ("evaluate", model, scene.image, scene.labels_raster, "--noise-levels", "0,0.2",
            "--draws", "2")
    table = cli(*args)
    assert table.exit_code == 0, table.output
    rows = json.loads(cli(*args, "--json").stdout)["noise"]
    assert "noise" in table.stdout and "drop (points)" in table.stdout
    printed = re.findall(r"^│ ([0-9.]+)\s+│ ([0-9.]+)\s+│ (-?[0-9.]+)\s+│$", table.stdout, re.M)
    assert printed == [(f"{r['level']:.4g}", f"{r['accuracy']:.4f}", f"{r['drop_points']:.2f}")
                       for r in rows]


# -- 3: class values, names, colours and their legend --------------------------------------------


def legend(path: Path) -> tuple[list[str], list[tuple], list[tuple]]:
    """(category names by value, RAT rows (value, name, r, g, b, a), QGIS palette entries)."""
    aux = ET.parse(path.with_name(path.name + ".aux.xml")).getroot()
    band = aux.find("PAMRasterBand")
    categories = [c.text or "" for c in band.find("CategoryNames")]
    rat = band.find("GDALRasterAttributeTable")
    usages = [int(f.find("Usage").text) for f in rat.findall("FieldDefn")]
    assert usages == [5, 2, 6, 7, 8, 9]  # GFU_MinMax, GFU_Name, red, green, blue, alpha
    rows = [tuple(int(v.text) if i != 1 else v.text for i, v in enumerate(row.findall("F")))
            for row in rat.findall("Row")]
    qml = ET.parse(path.with_suffix(".qml")).getroot()
    renderer = qml.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted"
    entries = [(int(e.get("value")), e.get("label"), e.get("color"))
               for e in renderer.find("colorPalette")]
    return categories, rows, entries


def test_class_raster_values_names_and_colours_survive_train_and_apply(scene, model, tmp_path):
    """Old behaviour: classes sorted by name (crop = 3) and coloured from tab10."""
    with rasterio.open(scene.labels_raster) as src:
        labels, label_cmap = src.read(1), src.colormap(1)
        label_names = {int(k): v for k, v in json.loads(src.tags()["CLASSES"]).items()}
    assert label_names[1] == "crop" and label_cmap[1][:3] == (230, 190, 40)
    _, meta = load_model(model)
    assert [(c["value"], c["name"]) for c in meta["classes"]] == sorted(label_names.items())

    out = tmp_path / "classes.tif"
    done = cli("apply", model, scene.image, "-o", out)
    assert done.exit_code == 0, done.output
    assert "legend classes.tif.aux.xml, classes.qml" in done.stdout
    data, tags, cmap = read(out)
    assert {int(k): v for k, v in json.loads(tags["CLASSES"]).items()} == label_names
    for value in label_names:
        assert cmap[value] == label_cmap[value]
    # The model separates the sample's classes: most labelled pixels get the label's value.
    assert np.mean(data[0][labels > 0] == labels[labels > 0]) > 0.8
    categories, rows, entries = legend(out)
    assert categories[0] == "" and {v: categories[v] for v in label_names} == label_names
    assert rows == [(v, n, *label_cmap[v][:3], 255) for v, n in sorted(label_names.items())]
    assert entries == [(v, n, "#{:02x}{:02x}{:02x}".format(*label_cmap[v][:3]))
                       for v, n in sorted(label_names.items())]
    # GDAL reads the sidecar with the file (a PAM item added there shows up in its tags).
    aux = out.with_name(out.name + ".aux.xml")
    aux.write_text(aux.read_text().replace(
        '<PAMRasterBand band="1">',
        '<PAMRasterBand band="1"><Metadata><MDI key="PROBE">read</MDI></Metadata>'))
    with rasterio.open(out) as src:
        assert src.tags(1)["PROBE"] == "read"

    # Overwritten by a non-class output, the stale legend goes.
    assert cli("-q", "apply", model, scene.image, "-o", out, "-p", "proba",
               "--overwrite").exit_code == 0
    assert not aux.exists() and not out.with_suffix(".qml").exists()


def test_vector_labels_take_classes_file_integer_values_or_defaults(scene, tmp_path):
    import pyogrio.raw

    # --classes: the polygons' string classes get the file's values, names and colours.
    with_table = tmp_path / "t.safetensors"
    assert cli("-q", "train", scene.image, scene.labels_vector, "-o", with_table, "--classes",
               scene.classes_csv, "--epochs", "1", "--indices", "2",
               "--no-report").exit_code == 0
    table = [ln.split(",") for ln in scene.classes_csv.read_text().splitlines()[1:]]
    assert [(c["value"], c["name"], c["color"]) for c in load_model(with_table)[1]["classes"]] \
        == [(int(v), n, col) for v, n, col in table]
    # JSON form, with a colour the defaults would not pick.
    spec = tmp_path / "classes.json"
    spec.write_text(json.dumps({"10": {"name": "crop", "color": "#ff00ff"}, "20": "grassland",
                                "30": "bare_soil", "40": "water", "50": "built_up"}))
    js = tmp_path / "j.safetensors"
    assert cli("-q", "train", scene.image, scene.labels_vector, "-o", js, "--classes", spec,
               "--epochs", "1", "--indices", "2", "--no-report").exit_code == 0
    classes = load_model(js)[1]["classes"]
    assert [c["value"] for c in classes] == [10, 20, 30, 40, 50]
    assert classes[0]["color"] == "#ff00ff" and classes[3]["color"] == "#286ed2"  # water blue
    out = tmp_path / "j.tif"
    assert cli("-q", "apply", js, scene.image, "-o", out).exit_code == 0
    assert set(np.unique(read(out)[0])) <= {0, 10, 20, 30, 40, 50}
    # A label the file does not list is one clear error.
    spec.write_text(json.dumps({"1": "crop"}))
    one_line_error(cli("-q", "train", scene.image, scene.labels_vector, "-o", tmp_path / "x",
                       "--classes", spec, "--no-report"), "not listed in --classes")

    # Integer class field: its integers are the values.
    meta, _, wkb, (names,) = pyogrio.raw.read(scene.labels_vector, columns=["class"])[:4]
    codes = {"crop": 7, "grassland": 3, "bare_soil": 12, "water": 40, "built_up": 5}
    ints = tmp_path / "codes.gpkg"
    pyogrio.raw.write(str(ints), wkb, [np.array([codes[n] for n in names], dtype="int32")],
                      ["code"], geometry_type="Polygon", crs=meta["crs"], driver="GPKG")
    m = tmp_path / "i.safetensors"
    assert cli("-q", "train", scene.image, ints, "-o", m, "--label-field", "code", "--epochs",
               "1", "--indices", "2", "--no-report").exit_code == 0
    assert [c["value"] for c in load_model(m)[1]["classes"]] == sorted(codes.values())
    # Plain string classes: 1..n by name, colours by what the names say.
    s = tmp_path / "s.safetensors"
    assert cli("-q", "train", scene.image, scene.labels_vector, "-o", s, "--epochs", "1",
               "--indices", "2", "--no-report").exit_code == 0
    by_name = {c["name"]: c for c in load_model(s)[1]["classes"]}
    assert [by_name[n]["value"] for n in sorted(by_name)] == [1, 2, 3, 4, 5]
    assert by_name["water"]["color"] == "#286ed2" and by_name["crop"]["color"] == "#e6be28"


# -- 4, 8: formula exports -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def indices(scene, model, tmp_path_factory):
    """``apply --products indices`` of the model: (values (K, H, W), valid mask)."""
    out = tmp_path_factory.mktemp("indices") / "indices.tif"
    assert cli("-q", "apply", model, scene.image, "-o", out, "-p", "indices").exit_code == 0
    data = read(out)[0]
    return data, np.isfinite(data).all(axis=0)


def test_default_asi_export_reproduces_apply_indices(scene, model, indices, tmp_path):
    """Old behaviour: threshold 0.05 and 3 decimals by default, up to 0.1 off."""
    asi = cli("formula", model, "--format", "asi")
    assert asi.exit_code == 0, asi.output
    assert asi.stderr == ""  # exact: nothing to warn about
    doc = json.loads(asi.stdout)
    assert "ndgeo" not in doc  # no approximation to record
    path = tmp_path / "asi.json"
    path.write_text(asi.stdout)
    out = tmp_path / "from_asi.tif"
    assert cli("-q", "index", scene.image, "-o", out, "--formula-file", path).exit_code == 0
    expected, valid = indices
    got = read(out)[0]
    assert np.abs(got[:, valid] - expected[:, valid]).max() < 1e-4

    # Asked for an approximation: recorded in the document and warned about.
    rough = cli("formula", model, "--format", "asi", "--threshold", "0.05", "--precision", "3")
    assert rough.exit_code == 0, rough.output
    assert "warning:" in rough.stderr and "approximate the model" in rough.stderr
    notes = json.loads(rough.stdout)["ndgeo"]["approximate_formulas"]
    assert set(notes) <= set(doc["SpectralIndices"]) and notes
    for note in notes.values():
        assert note["dropped_weight_fraction"] > 0 and note["bound_equal_bands"] > 0


def test_numexpr_lines_evaluate_in_numexpr_and_gdal_calc_lines_are_commands(
    scene, model, indices
):
    expected, valid = indices
    _, meta = load_model(model)
    with rasterio.open(scene.image) as src:
        raw = src.read()
        names = list(src.descriptions)
    phys = {b["letter"]: raw[names.index(b["name"])][valid].astype(np.float64)
            for b in meta["bands"]}
    ne = cli("formula", model, "--format", "numexpr")
    assert ne.exit_code == 0, ne.output
    lines = ne.stdout.strip().splitlines()
    assert len(lines) == expected.shape[0]
    for k, line in enumerate(lines):
        assert "=" not in line
        values = numexpr.evaluate(line, local_dict=phys)
        assert np.abs(values - expected[k][valid]).max() < 1e-4

    calc = cli("formula", model, "--format", "gdal_calc", "--image", scene.image)
    assert calc.exit_code == 0, calc.output
    commands = calc.stdout.strip().splitlines()
    assert len(commands) == expected.shape[0]
    for k, command in enumerate(commands):
        args = shlex.split(command)
        assert args[0] == "gdal_calc.py" and f"--outfile=ND{k + 1}.tif" in args
        files = {a[1]: args[i + 1] for i, a in enumerate(args) if re.fullmatch(r"-[A-Z]", a)}
        band_of = dict(re.findall(r"--([A-Z])_band=(\d+)", command))
        assert set(files.values()) == {str(scene.image)} and set(files) == set(band_of)
        (expr,) = [a.split("=", 1)[1] for a in args if a.startswith("--calc=")]
        # gdal_calc evaluates with numpy's names, letters bound to the raw bands in file type.
        namespace = {k: getattr(np, k) for k in dir(np) if not k.startswith("_")}
        letters = {v: raw[int(b) - 1][valid] for v, b in band_of.items()}
        with np.errstate(all="ignore"):
            values = eval(expr, namespace, letters)  # noqa: S307 - what gdal_calc does
        assert np.abs(values - expected[k][valid]).max() < 1e-4


def test_nearest_catalogue_index_breaks_ties_by_common_domain():
    """(G - 0.815 N)/(G + 0.815 N) has the bands of NDWI, NDSII (snow) and others."""
    bands = [Band("B03", "G"), Band("B08", "N")]
    (f,) = formulas_from_coefficients(
        [{"name": "ND1", "positive": {"B03": 1.0}, "negative": {"B08": 0.815}}], bands)
    assert nearest_catalogue(f)[0][0] == "NDWI"
    text = to_text(f, nearest_catalogue(f))
    assert "nearest catalogue index: NDWI (0.99; same bands as" in text and "NDSII" in text
    (g,) = formulas_from_coefficients(
        [{"name": "ND2", "positive": {"B08": 1.0}, "negative": {"B03": 0.9}}], bands)
    assert nearest_catalogue(g)[0][0] == "GNDVI"


# -- 5, 6: options that would be ignored, indices with constants on unscaled data ----------------


@pytest.mark.parametrize("args, fragments", [
    (["train", "{image}", "{labels}", "-o", "{tmp}/m.safetensors", "--indices", "2",
      "--pairwise"], ["--pairwise", "--indices"]),
    (["train", "{image}", "{labels}", "-o", "{tmp}/m.safetensors", "--model", "mlp",
      "--indices", "4"], ["--indices", "--model mlp"]),
    (["train", "{image}", "{labels}", "-o", "{tmp}/m.safetensors", "--model", "mlp",
      "--compare"], ["--compare"]),
    (["train", "{image}", "{labels}", "-o", "{tmp}/m.safetensors", "--report", "{tmp}/r.png",
      "--no-report"], ["--report", "--no-report"]),
    (["train", "{image}", "{labels}", "-o", "{tmp}/m.safetensors", "--patience", "5"],
     ["--patience", "--schedule plateau"]),
    (["train", "{image}", "{labels}", "-o", "{tmp}/m.safetensors", "--schedule", "plateau",
      "--no-refit"], ["--no-refit", "cosine"]),
    (["train", "{image}", "{labels}", "-o", "{tmp}/m.safetensors", "--no-budget-table"],
     ["--max-bands"]),
    (["train", "{image}", "{labels}", "-o", "{tmp}/m.safetensors", "--mlp-hidden", "8"],
     ["--mlp-hidden", "--compare"]),
    (["apply", "{model}", "{image}", "-o", "{tmp}/p.tif", "-p", "class,proba", "--quantize"],
     ["--quantize", "proba alone"]),
    (["apply", "{model}", "{image}", "-o", "{tmp}/p.tif", "--quantize"], ["--quantize"]),
    (["evaluate", "{model}", "{image}", "{labels}", "--draws", "3"],
     ["--draws", "--noise-levels"]),
    (["formula", "{model}", "--domain", "water"], ["--domain", "--format asi"]),
    (["formula", "{model}", "--image", "{image}"], ["--image", "--format gdal_calc"]),
    (["denoise", "train", "{image}", "-o", "{tmp}/d.safetensors", "--sigma", "2%",
      "--no-wne", "--pooling", "band"], ["--pooling", "--no-wne"]),
])
def test_options_that_would_be_ignored_are_errors(scene, model, tmp_path, args, fragments):
    """Old behaviour: each of these ran, ignoring one of the options."""
    values = {"image": scene.image, "labels": scene.labels_raster, "model": model,
              "tmp": tmp_path}
    result = cli("-q", *[a.format(**values) for a in args])
    one_line_error(result, *fragments)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_indices_with_constants_on_unscaled_data_warn_about_scale(scene, tmp_path):
    """Old behaviour: EVI on reflectance x 10000 wrote values in the thousands silently."""
    evi = cli("-q", "index", scene.image, "-o", tmp_path / "evi.tif", "--name", "EVI,NDVI")
    assert evi.exit_code == 0, evi.output
    assert "warning:" in evi.stderr and "EVI" in evi.stderr and "--scale 0.0001" in evi.stderr
    assert "NDVI" not in evi.stderr  # scale-invariant
    for args in (["--name", "NDVI"], ["--name", "EVI", "--scale", "0.0001"]):
        quiet = cli("-q", "index", scene.image, "-o", tmp_path / f"{len(args)}.tif", *args)
        assert quiet.exit_code == 0 and quiet.stderr == "", quiet.output


# -- 10, 14, 15: global flags after the command, train's summary, help text ----------------------


def test_global_flags_after_the_subcommand(scene, tmp_path):
    result = cli("index", scene.image, "-o", tmp_path / "n.tif", "--name", "NDVI", "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""


def test_train_prints_a_readable_summary_and_a_row_per_model(scene, tmp_path):
    result = cli("train", scene.image, scene.labels_raster, "-o", tmp_path / "m.safetensors",
                 "--epochs", "2", "--indices", "2", "--no-report", "--compare")
    assert result.exit_code == 0, result.output
    summary = [ln for ln in result.stderr.splitlines() if "labelled pixels from" in ln]
    assert len(summary) == 1
    assert "10 bands B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12" in summary[0]
    assert "crop (value 1)" in summary[0] and "{" not in summary[0]
    rows = re.findall(r"^│ (nd|mlp)\s+│ [0-9.]+\s+│ [0-9.]+\s+│ [0-9.]+\s+│ (\d+)\s+│",
                      result.stdout, re.M)
    assert [r[0] for r in rows] == ["nd", "mlp"] and all(int(r[1]) > 0 for r in rows)


def test_help_shows_no_bool_metavar_keeps_markup_and_denoise_defaults():
    for args in (["--help"], ["train", "--help"], ["apply", "--help"], ["index", "--help"],
                 ["denoise", "train", "--help"]):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, args
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "[[scene]]" in text
    denoise = runner.invoke(app, ["denoise", "train", "--help"], env={"COLUMNS": "200"}).output
    assert "dncnn 8" in denoise and "dncnn 32" in denoise


# -- 17: Ctrl-C during train ---------------------------------------------------------------------


def test_ctrl_c_during_train_keeps_the_model_so_far(scene, tmp_path):
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ndgeo", "train", str(scene.image), str(scene.labels_raster),
         "-o", str(out), "--epochs", "3000", "--indices", "2", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        seen = ""
        deadline = time.monotonic() + 120
        while "training nd model" not in seen:
            line = proc.stderr.readline()
            assert line and time.monotonic() < deadline, seen
            seen += line
        time.sleep(8)  # past the first epoch even on a loaded machine (3000 are asked)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = tmp_path / "m.interrupted.safetensors"
    assert proc.returncode == 130, err
    assert "interrupted" in err and str(kept) in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]  # no temporaries
    net, meta = load_model(kept)
    assert meta["training"]["interrupted"]["after_epoch"] >= 1
    assert [c["value"] for c in meta["classes"]] == [1, 2, 3, 4, 5]
    assert cli("-q", "apply", kept, scene.image, "-o", tmp_path / "c.tif").exit_code == 0


# -- 18: the PNG report --------------------------------------------------------------------------


def test_report_labels_bands_by_name_and_letter_and_draws_the_baseline(scene, tmp_path):
    png = tmp_path / "r.png"
    result = cli("-q", "train", scene.image, scene.labels_raster, "-o", tmp_path / "m", "--epochs",
                 "2", "--indices", "2", "--compare", "--report", png)
    assert result.exit_code == 0, result.output
    image = Image.open(png)
    described = json.loads(image.text["Description"])
    assert "B05 (RE1)" in described["bands"] and "B11 (S1)" in described["bands"]
    assert "alpha - beta" in described["colorbar"]
    assert [m["model"].split()[0] for m in described["models"]] == ["nd", "mlp"]
    assert "MLP model" in image.text["Title"]
    assert image.size[0] > 4 * image.size[1]  # four panels: the comparison is drawn


# -- 7: the README's formula example, as printed -------------------------------------------------


def readme_session(heading: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of the first ``text`` block after ``heading``."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(heading):].split("```text\n", 1)[1].split("```", 1)[0]
    session: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            session.append((line[2:], []))
        else:
            session[-1][1].append(line)
    return session


def test_readme_formula_example_is_reproducible_as_printed(tmp_path, monkeypatch):
    """Old behaviour: it used a file the repository does not ship, and printed another
    formula than the command gives."""
    (tmp_path / "sample_data").symlink_to(REPO / "sample_data")
    monkeypatch.chdir(tmp_path)
    session = readme_session("### `ndgeo formula MODEL")
    assert len(session) == 3
    for command, expected in session:
        argv = shlex.split(command)
        assert argv[0] == "ndgeo"
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, (command, result.output)
        got = result.stdout.splitlines()
        # Printed numbers may move in their last digit on another CPU; nothing else may.
        number = re.compile(r"-?\d+\.\d+")
        assert [number.sub("#", ln) for ln in got] == [number.sub("#", ln) for ln in expected]
        for a, b in zip(number.findall("\n".join(got)), number.findall("\n".join(expected)),
                        strict=True):
            assert abs(float(a) - float(b)) <= 1.5 * 10.0 ** -len(b.split(".")[1]), (a, b)
