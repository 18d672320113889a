"""`ndgeo train`, `ndgeo formula` and `ndgeo evaluate` end to end on the sample scene.

Expected values come from the loaded model run on the scene's pixels in memory (or from the
sample's designed ground truth), never from the command's own output.
"""

from __future__ import annotations

import json
import pickle
import re

import numexpr
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from typer.testing import CliRunner

from ndgeo.checkpoint import load_model
from ndgeo.cli import app
from ndgeo.formula import evaluate

runner = CliRunner()

#: Awesome Spectral Indices letters of the Sentinel-2 bands (the ASI standard).
S2_LETTERS = {"B02": "B", "B03": "G", "B04": "R", "B05": "RE1", "B06": "RE2", "B07": "RE3",
              "B08": "N", "B8A": "N2", "B11": "S1", "B12": "S2"}
ASI_KEYS = {"short_name", "long_name", "formula", "bands", "application_domain", "reference",
            "platforms", "contributor", "date_of_addition"}


def _train(*args: str, quiet: bool = True):
    return runner.invoke(app, [*(["-q"] if quiet else []), "train", *map(str, args)])


def _write_like(template, path, data, **changes):
    """Write ``data`` (bands, h, w) with ``template``'s profile updated by ``changes``."""
    with rasterio.open(template) as src:
        profile, descriptions, tags = src.profile, src.descriptions, src.tags()
    profile.update(count=data.shape[0], dtype=str(data.dtype), **changes)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if len(descriptions) == data.shape[0]:
            dst.descriptions = descriptions
        if "CLASSES" in tags:
            dst.update_tags(CLASSES=tags["CLASSES"])
    return path


def _labels(sample):
    with rasterio.open(sample.labels_raster) as src:
        return src.read(1)


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------ train


def test_train_on_vector_labels_writes_model_metrics_and_formulas(nd_model, sample_scene):
    model, meta = load_model(nd_model.path)
    assert [b["name"] for b in meta["bands"]] == list(S2_LETTERS)
    assert [b["letter"] for b in meta["bands"]] == list(S2_LETTERS.values())
    truth_classes = {c["name"] for c in sample_scene.truth["classes"]}
    assert {c["name"] for c in meta["classes"]} == truth_classes
    assert meta["config"]["kind"] == "nd" and meta["config"]["n_indices"] == 4
    metrics = meta["metrics"]
    assert 0 <= metrics["kappa"] <= metrics["overall_accuracy"] <= 1
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (5, 5) and cm.sum() == metrics["n_pixels"] > 0

    out = nd_model.result.stdout
    assert f"overall accuracy {metrics['overall_accuracy']:.4f}" in out
    assert f"kappa {metrics['kappa']:.4f}" in out
    assert "confusion matrix" in out
    for name, row in zip([c["name"] for c in meta["classes"]], cm, strict=True):
        printed = re.search(rf"│ {name}\s+│(.*)│", out).group(1)
        assert [int(v) for v in printed.split("│")[:5]] == row.tolist()
    for k in range(1, 5):
        assert re.search(rf"^ND{k} = \(.+\) / \(.+\)", out, re.M), out
    # The printed formulas use the bands' ASI letters only.
    variables = set(re.findall(r"[A-Z][A-Z0-9]*", " ".join(re.findall(r"^ND\d = (.*?)  #", out,
                                                                           re.M))))
    assert variables <= set(S2_LETTERS.values()) | {"ND"}

    with open(nd_model.report, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert min(matplotlib.image.imread(nd_model.report).shape[:2]) > 100


def test_train_on_raster_labels_quietly(nd_model, sample_scene, tmp_path):
    out = tmp_path / "r.safetensors"
    result = _train(sample_scene.image, sample_scene.labels_raster, "-o", out, "--epochs", "2",
                    "--indices", "2", "--no-report")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors"]
    _, meta = load_model(out)
    _, vector_meta = load_model(nd_model.path)
    # The label raster's CLASSES tag names its values like the polygons' class field; the
    # raster keeps its own values and colours, string classes are numbered 1..n by name.
    by_name = {c["name"]: c for c in meta["classes"]}
    assert set(by_name) == {c["name"] for c in vector_meta["classes"]}
    for c in sample_scene.truth["classes"]:
        assert by_name[c["name"]]["value"] == c["id"]
        assert by_name[c["name"]]["color"] == "#{:02x}{:02x}{:02x}".format(*c["color"])
    assert [c["value"] for c in vector_meta["classes"]] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in vector_meta["classes"]] == sorted(by_name)
    assert meta["bands"] == vector_meta["bands"]


def test_compare_prints_nd_and_mlp_rows(sample_scene, tmp_path):
    out = tmp_path / "c.safetensors"
    result = _train(sample_scene.image, sample_scene.labels_raster, "-o", out, "--epochs", "2",
                    "--indices", "2", "--no-report", "--compare", quiet=False)
    assert result.exit_code == 0, result.output
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^│ (nd|mlp)\s+│ ([0-9.]+)", result.stdout, re.M)}
    assert set(rows) == {"nd", "mlp"}
    _, meta = load_model(out)
    assert meta["config"]["kind"] == "nd"  # the ND model is the one written
    assert rows["nd"] == f"{meta['metrics']['overall_accuracy']:.4f}"


def test_seed_makes_runs_bit_identical(sample_scene, tmp_path):
    states = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        path = tmp_path / f"{name}.safetensors"
        result = _train(sample_scene.image, sample_scene.labels_raster, "-o", path,
                        "--epochs", "2", "--indices", "2", "--no-report", "--seed", seed)
        assert result.exit_code == 0, result.output
        states[name] = load_model(path)[0].state_dict()
    assert states["a"].keys() == states["b"].keys()
    for key in states["a"]:
        assert torch.equal(states["a"][key], states["b"][key]), key
    assert any(not torch.equal(states["a"][k], states["c"][k]) for k in states["a"])


def test_learned_index_recovers_the_designed_crop_grassland_index(sample_scene, tmp_path):
    """One dense index without head normalisation finds (B08 - 2*B05) / (B08 + 2*B05).

    Checked for training seeds 0-4 on this scene (sample seed 1): ratio 2.0-2.2. The designed
    index is not the only perfect separator of the sample: on sample seed 3 some training seeds
    converge to N2 - 0.6 RE1 - 0.9 RE2 (also 100 % accurate), so the scene is pinned here.
    """
    truth = sample_scene.truth["separating_index"]
    ids = {c["name"]: c["id"] for c in sample_scene.truth["classes"]}
    keep = [ids[name] for name in truth["classes"]]
    labels = _labels(sample_scene)
    two = _write_like(sample_scene.labels_raster, tmp_path / "two.tif",
                      np.where(np.isin(labels, keep), labels, 0)[None].astype("uint8"))
    out = tmp_path / "nd1.safetensors"
    result = _train(sample_scene.image, two, "-o", out, "--indices", "1", "--head-norm", "none",
                    "--epochs", "25", "--no-report", "--seed", "0")
    assert result.exit_code == 0, result.output
    model, meta = load_model(out)
    assert meta["metrics"]["overall_accuracy"] >= 0.95
    names = [b["name"] for b in meta["bands"]]
    (coeff,) = model.index_coefficients(names)
    net = {b: coeff["positive"].get(b, 0.0) - coeff["negative"].get(b, 0.0) for b in names}
    # An ND's sign is arbitrary (the head can flip it): orient it so that crop lies above,
    # as in the truth, using the pixels themselves.
    with rasterio.open(sample_scene.image) as src:
        x = src.read().astype(np.float64)
    w = np.array([net[b] for b in names])[:, None, None]
    index = (w * x).sum(0)
    crop_mean = index[labels == ids[truth["above"]]].mean()
    grass_mean = index[labels == ids[truth["below"]]].mean()
    if crop_mean < grass_mean:
        net = {b: -v for b, v in net.items()}
    positive = {b: v for b, v in net.items() if v > 0}
    negative = {b: -v for b, v in net.items() if v < 0}
    nir = positive.get("B08", 0.0) + positive.get("B8A", 0.0)
    assert max(positive, key=positive.get) in ("B08", "B8A"), net
    assert nir >= 0.8 * sum(positive.values()), net
    assert max(negative, key=negative.get) == "B05", net
    assert negative["B05"] >= 0.8 * sum(negative.values()), net
    true_ratio = truth["negative"]["B05"] / truth["positive"]["B08"]
    assert 0.8 * true_ratio <= negative["B05"] / nir <= 1.25 * true_ratio, net


@pytest.fixture(scope="module")
def bad_inputs(sample_scene, tmp_path_factory):
    """Files for the refused-input cases, written once."""
    d = tmp_path_factory.mktemp("bad")
    (d / "text.tif").write_text("this is not a raster\n")
    labels = _labels(sample_scene)
    _write_like(sample_scene.labels_raster, d / "one_class.tif",
                np.where(labels > 0, 1, 0)[None].astype("uint8"))
    border = np.zeros_like(labels)
    border[:3, 10:60], border[:3, 60:110] = 1, 2  # only inside the nodata border
    _write_like(sample_scene.labels_raster, d / "border.tif", border[None])
    with rasterio.open(sample_scene.labels_raster) as src:
        far = Affine.translation(1e6, 0) * src.transform  # 1000 km east
    _write_like(sample_scene.labels_raster, d / "far.tif", labels[None], transform=far)
    with rasterio.open(sample_scene.image) as src:
        shape = (src.count, src.height, src.width)
    _write_like(sample_scene.image, d / "nan.tif", np.full(shape, np.nan, dtype="float32"),
                nodata=None, predictor=1)
    return d


@pytest.mark.parametrize(
    "case",
    ["missing_image", "text_image", "label_field", "one_class", "masked_out", "missing_band",
     "far_labels", "nan_image"],
)
def test_bad_training_input_is_one_line_exit_2_and_writes_nothing(
    case, sample_scene, bad_inputs, tmp_path
):
    image, labels = sample_scene.image, sample_scene.labels_raster
    extra: list[str] = []
    expect: tuple[str, ...]
    if case == "missing_image":
        image, expect = tmp_path / "nope.tif", ("not found", "nope.tif")
    elif case == "text_image":
        image, expect = bad_inputs / "text.tif", ("text.tif",)
    elif case == "label_field":
        labels, extra = sample_scene.labels_vector, ["--label-field", "landuse"]
        expect = ("'landuse'", "available fields: class")
    elif case == "one_class":
        labels, expect = bad_inputs / "one_class.tif", ("only one class",)
    elif case == "masked_out":
        labels, expect = bad_inputs / "border.tif", ("no labelled pixels left", "'nodata': 300")
    elif case == "missing_band":
        extra, expect = ["--bands", "B04,B01"], ("B01", "not found")
    elif case == "far_labels":
        labels, expect = bad_inputs / "far.tif", ("do not overlap",)
    else:
        image, expect = bad_inputs / "nan.tif", ("no labelled pixels left", "'nonfinite'")
    out = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["train", str(image), str(labels), "-o", str(out), "--epochs",
                                 "1", *extra])
    _assert_one_line_error(result, *expect)
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_model_needs_overwrite(sample_scene, tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["train", str(sample_scene.image), str(sample_scene.labels_raster),
                                 "-o", str(out), "--epochs", "1"])
    _assert_one_line_error(result, "exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# ---------------------------------------------------------------------------------- formula


@pytest.fixture(scope="module")
def pixels(nd_model, sample_scene):
    """Valid pixels of the scene as model input (N, C) and as {letter: float64 array}."""
    _, meta = load_model(nd_model.path)
    with rasterio.open(sample_scene.image) as src:
        data = src.read()
        order = [list(src.descriptions).index(b["name"]) for b in meta["bands"]]
    data = data[order]
    valid = (data != 0).all(axis=0)
    x = data[:, valid].T.astype(np.float32)
    arrays = {b["letter"]: x[:, i].astype(np.float64) for i, b in enumerate(meta["bands"])}
    return x, arrays


@pytest.mark.parametrize("precision", [2, 4])
def test_exported_formulas_reproduce_model_indices(nd_model, pixels, precision, helpers):
    model, meta = load_model(nd_model.path)
    x, arrays = pixels
    with torch.no_grad():
        direct = model.indices(torch.from_numpy(x)).numpy().astype(np.float64)
    names = [b["name"] for b in meta["bands"]]
    coeffs = model.index_coefficients(names)
    common = ["--precision", str(precision), "--threshold", "0"]

    asi = runner.invoke(app, ["formula", str(nd_model.path), "--format", "asi", *common])
    assert asi.exit_code == 0, asi.output
    entries = json.loads(asi.stdout)["SpectralIndices"]
    assert list(entries) == [f"ND{k + 1}" for k in range(4)]
    ne = runner.invoke(app, ["formula", str(nd_model.path), "--format", "numexpr", *common])
    assert ne.exit_code == 0, ne.output
    # One bare expression per index, in order.
    expressions = dict(zip(entries, ne.stdout.strip().splitlines(), strict=True))

    worst = 0.0
    for k, (name, entry) in enumerate(entries.items()):
        assert set(entry) == ASI_KEYS
        assert set(entry["bands"]) <= set(S2_LETTERS.values())
        bound = helpers.rounding_bound(coeffs[k], names, x, precision) + helpers.float32_slack
        namespace = {v: arrays[v] for v in entry["bands"]}
        results = [
            evaluate(entry["formula"], arrays),
            eval(entry["formula"], {"__builtins__": {}}, namespace),  # noqa: S307 - as spyndex
            numexpr.evaluate(expressions[name], local_dict=arrays),
        ]
        for values in results:
            err = np.abs(values - direct[:, k])
            assert np.all(err <= bound), (name, err.max(), bound[err.argmax()])
            worst = max(worst, err.max())
    if precision == 2:  # not vacuous: 2 decimals move values beyond the ~1e-3 of 4 decimals
        assert worst > 1e-3


@pytest.mark.parametrize("fmt", ["text", "latex", "asi", "numexpr", "json"])
def test_formula_formats(nd_model, fmt):
    result = runner.invoke(app, ["formula", str(nd_model.path), "--format", fmt])
    assert result.exit_code == 0, result.output
    out = result.stdout
    if fmt == "numexpr":
        assert len(out.strip().splitlines()) == 4 and "ND" not in out
    else:
        assert all(f"ND{k}" in out for k in range(1, 5))
    if fmt in ("asi", "json"):
        json.loads(out)
    if fmt == "latex":
        assert out.count(r"\frac{") == 4


@pytest.fixture(scope="module")
def mlp_model(sample_scene, tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp") / "mlp.safetensors"
    result = _train(sample_scene.image, sample_scene.labels_raster, "-o", path, "--model", "mlp",
                    "--epochs", "1", "--no-report")
    assert result.exit_code == 0, result.output
    return path


def test_formula_refuses_mlp_and_pickles(mlp_model, tmp_path):
    result = runner.invoke(app, ["formula", str(mlp_model)])
    _assert_one_line_error(result, "no learned indices", "'mlp'")
    model, _ = load_model(mlp_model)
    for path, data in ((tmp_path / "m.pkl", pickle.dumps({"a": 1})), (tmp_path / "m.pt", None)):
        if data is None:
            torch.save(model.state_dict(), path)
        else:
            path.write_bytes(data)
        result = runner.invoke(app, ["formula", str(path)])
        _assert_one_line_error(result, "pickle", path.name)


# --------------------------------------------------------------------------------- evaluate


def _confusion(nd_model, sample_scene, model_classes):
    """Our own confusion matrix of the model on every labelled valid pixel of labels.tif."""
    model, meta = load_model(nd_model.path)
    with rasterio.open(sample_scene.labels_raster) as src:
        labels = src.read(1)
        names = {int(k): v for k, v in json.loads(src.tags()["CLASSES"]).items()}
    with rasterio.open(sample_scene.image) as src:
        data = src.read().astype(np.float32)
    keep = (labels > 0) & (data != 0).all(axis=0)
    with torch.no_grad():
        pred = model(torch.from_numpy(data[:, keep].T.copy())).argmax(1).numpy()
    true = np.array([model_classes.index(names[v]) for v in labels[keep]])
    cm = np.zeros((len(model_classes),) * 2, dtype=int)
    np.add.at(cm, (true, pred), 1)
    return cm, model, data[:, keep].T


def test_evaluate_json_matches_own_confusion_matrix(nd_model, sample_scene):
    result = runner.invoke(app, ["evaluate", str(nd_model.path), str(sample_scene.image),
                                 str(sample_scene.labels_raster), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    classes = report["classes"]
    cm, *_ = _confusion(nd_model, sample_scene, classes)
    assert report["confusion_matrix"] == cm.tolist()
    n = cm.sum()
    po = np.trace(cm) / n
    pe = (cm.sum(0) * cm.sum(1)).sum() / n**2
    assert report["overall_accuracy"] == pytest.approx(po)
    assert report["kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert [row["class"] for row in report["per_class"]] == classes


def test_evaluate_global_noise_does_not_change_nd_accuracy(nd_model, sample_scene):
    result = runner.invoke(app, ["evaluate", str(nd_model.path), str(sample_scene.image),
                                 str(sample_scene.labels_raster), "--json", "--noise-levels",
                                 "0,0.1", "--noise-mode", "global", "--draws", "3"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["noise"]
    assert [r["level"] for r in rows] == [0.0, 0.1]
    assert rows[0]["drop_points"] == 0
    # An ND model is invariant to a common factor on all bands up to float32 rounding and eps:
    # only pixels whose two best logits (nearly) tie can change class.
    _, model, x = _confusion(nd_model, sample_scene, json.loads(result.stdout)["classes"])
    with torch.no_grad():
        top2 = torch.topk(model(torch.from_numpy(x)), 2, dim=1).values.numpy()
    near_ties = np.mean(top2[:, 0] - top2[:, 1] < 1e-3)
    assert abs(rows[1]["drop_points"]) <= 100 * near_ties + 1e-9


def test_evaluate_refuses_a_class_the_model_does_not_know(nd_model, sample_scene, tmp_path):
    labels = _labels(sample_scene)
    labels = np.where(labels == 4, 6, labels).astype("uint8")
    path = _write_like(sample_scene.labels_raster, tmp_path / "l.tif", labels[None])
    with rasterio.open(path, "r+") as dst:
        names = json.loads(dst.tags()["CLASSES"]) | {"6": "wetland"}
        dst.update_tags(CLASSES=json.dumps(names))
    result = runner.invoke(app, ["evaluate", str(nd_model.path), str(sample_scene.image),
                                 str(path)])
    _assert_one_line_error(result, "wetland")
