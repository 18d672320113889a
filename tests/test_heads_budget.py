"""ND model heads and band budgets (issue 10): invariance for every head, band-major inference
for every head, exact formulas of budgeted models, budget recovery of the designed index."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from ndgeo.bands import Band
from ndgeo.checkpoint import load_model
from ndgeo.cli import app
from ndgeo.config import TrainConfig
from ndgeo.formula import evaluate, formulas_from_coefficients, to_plain
from ndgeo.io.labels import pixels_from_arrays
from ndgeo.nn import NDClassifier
from ndgeo.nn.inference import band_major
from ndgeo.training.classifier import effective_max_bands, train_model

runner = CliRunner()
HEADS = [dict(head_hidden=()), dict(head_hidden=(16,)), dict(head_hidden=(16, 8)),
         dict(head_hidden=(8,), depth=2), dict(head_hidden=(8,), max_bands=2)]


def _fitted(kw, seed=0):
    torch.manual_seed(seed)
    model = NDClassifier(6, 3, n_indices=4, **kw)
    x = torch.rand(512, 6) + 0.05
    model.fit_band_scale(x)
    if model.max_bands:
        model.prune()
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(5):
            model(x * torch.rand(1, 6) * 3)
    return model.eval(), x


@pytest.mark.parametrize("kw", HEADS, ids=lambda kw: str(kw))
def test_whole_model_is_invariant_to_a_common_factor_for_every_head(kw):
    model, x = _fitted(kw)
    with torch.no_grad():
        reference = model(x)
        for factor in (1e-3, 1e-2, 0.7, 10.0, 1e3):
            assert torch.allclose(model(x * factor), reference, atol=1e-3), factor


@pytest.mark.parametrize("kw", HEADS, ids=lambda kw: str(kw))
def test_band_major_equals_model_for_every_head(kw):
    model, x = _fitted(kw, seed=1)
    fast = band_major(model)
    with torch.no_grad():
        np.testing.assert_allclose(fast(x.T.contiguous()).T, model(x), atol=1e-4)
        np.testing.assert_allclose(fast.indices(x.T.contiguous()).T, model.indices(x),
                                   atol=1e-5)


def test_budget_masks_are_exact_and_survive_a_round_trip(tmp_path):
    from ndgeo.checkpoint import save_model

    model, x = _fitted(dict(max_bands=2, head_hidden=(8,)))
    alpha, beta = model.nd_layers[0].coefficients()
    assert ((alpha > 0).sum(1) <= 2).all() and ((beta > 0).sum(1) <= 2).all()
    path = tmp_path / "m.safetensors"
    save_model(path, model, {"bands": [{"name": f"b{i}", "letter": None} for i in range(6)],
                             "classes": [{"id": i, "name": str(i)} for i in range(3)]})
    loaded, _ = load_model(path)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(x), model(x))
    assert loaded.n_parameters() == model.n_parameters()


def test_budgeted_formulas_reproduce_the_indices_exactly():
    """With a band budget nothing is dropped: the exported formula *is* the index."""
    model, x = _fitted(dict(max_bands=2))
    bands = [Band(f"b{i}", None) for i in range(6)]
    coeffs = model.index_coefficients([b.name for b in bands])
    formulas = formulas_from_coefficients(coeffs, bands, threshold=0.0, precision=12)
    arrays = {b.name: x[:, i].double().numpy() for i, b in enumerate(bands)}
    with torch.no_grad():
        expected = model.indices(x).double().numpy()
    for k, f in enumerate(formulas):
        assert f.dropped == 0 and len(f.positive) <= 2 and len(f.negative) <= 2
        expression = to_plain(f).split(" = ", 1)[1]
        np.testing.assert_allclose(evaluate(expression, arrays), expected[:, k], atol=1e-6)


def test_max_bands_one_recovers_nir_against_red_edge(sample_scene, tmp_path):
    """One index with at most one band per side on crop vs grassland: N (or N2) against RE1,
    weight ratio within 10% of the designed 2."""
    truth = sample_scene.truth["separating_index"]
    ids = {c["name"]: c["id"] for c in sample_scene.truth["classes"]}
    with rasterio.open(sample_scene.labels_raster) as src:
        labels, profile = src.read(1), src.profile
    keep = [ids[name] for name in truth["classes"]]
    two = tmp_path / "two.tif"
    with rasterio.open(two, "w", **profile) as dst:
        dst.write(np.where(np.isin(labels, keep), labels, 0).astype("uint8"), 1)
    out = tmp_path / "nd1.safetensors"
    result = runner.invoke(app, ["-q", "train", str(sample_scene.image), str(two), "-o", str(out),
                                 "--indices", "1", "--max-bands", "1", "--head", "linear",
                                 "--head-norm", "none", "--epochs", "40", "--no-report",
                                 "--no-budget-table"])
    assert result.exit_code == 0, result.output
    model, meta = load_model(out)
    names = [b["name"] for b in meta["bands"]]
    (coeff,) = model.index_coefficients(names)
    sides = [coeff["positive"], coeff["negative"]]
    assert all(len(side) == 1 for side in sides), coeff
    nir = next(s for s in sides if set(s) & {"B08", "B8A"})
    red_edge = next(s for s in sides if s is not nir)
    assert set(red_edge) == {"B05"}, coeff
    ratio = red_edge["B05"] / next(iter(nir.values()))
    assert 0.9 * 2.0 <= ratio <= 1.1 * 2.0, coeff
    assert meta["metrics"]["overall_accuracy"] >= 0.95


def test_compare_prints_both_parameter_counts(sample_scene, tmp_path):
    out = tmp_path / "c.safetensors"
    result = runner.invoke(app, ["train", str(sample_scene.image), str(sample_scene.labels_raster),
                                 "-o", str(out), "--epochs", "3", "--no-report", "--compare"])
    assert result.exit_code == 0, result.output
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"^│ (nd|mlp)\s+│[^│]+│[^│]+│[^│]+│ (\d+)\s+│", result.stdout, re.M)}
    nd, meta = load_model(out)
    assert rows["nd"] == nd.n_parameters() and rows["mlp"] > 0


def test_permutation_importance_finds_the_index_that_matters():
    """Class = sign of (b0 - b1)/(b0 + b1); a 2-index model whose first index is that ND
    relies on it, not on the other index, whatever its head."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 1.0, (600, 3)).astype("float32")
    y = np.where(x[:, 0] > x[:, 1], "a", "b")
    pixels = pixels_from_arrays(x, y, ["b0", "b1", "b2"])
    result = train_model(pixels, TrainConfig(n_indices=2, epochs=20, split="random",
                                             refit=False, device="cpu"))
    assert result.metrics["overall_accuracy"] >= 0.95
    cost = np.array(result.metrics["index_accuracy_cost"])
    assert cost.max() > 0.2 and cost.min() < 0.05


def _wide_pixels(n_bands: int, seed: int = 0):
    """Three classes, each brighter in one of the first three bands."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 600)
    X = rng.uniform(100, 200, (600, n_bands))
    X[np.arange(600), y] *= 1.5
    return pixels_from_arrays(X.astype(np.float32), y, [f"b{i}" for i in range(n_bands)])


def test_default_band_budget_applies_to_wide_inputs_only():
    """The default budget (ND_MAX_BANDS per side) prunes hyperspectral inputs; narrower ones
    train exactly as with no budget; ``max_bands=None`` ('all') keeps every band."""
    from ndgeo.config import ND_MAX_BANDS

    fast = dict(epochs=2, min_steps_per_epoch=2, refit=False, split="random", n_indices=4)
    wide = _wide_pixels(ND_MAX_BANDS + 8)
    for max_bands, most in (("auto", ND_MAX_BANDS), (None, ND_MAX_BANDS + 8)):
        alpha, beta = train_model(wide, TrainConfig(max_bands=max_bands, **fast)).model \
            .nd_layers[0].coefficients()
        assert max((alpha > 0).sum(1).max(), (beta > 0).sum(1).max()) == most, max_bands
    narrow = _wide_pixels(10)
    a = train_model(narrow, TrainConfig(**fast)).model.state_dict()
    b = train_model(narrow, TrainConfig(max_bands=None, **fast)).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert effective_max_bands(TrainConfig(pairwise=True), 200) is None
    assert effective_max_bands(TrainConfig(model="mlp"), 200) is None
    assert effective_max_bands(replace(TrainConfig(), pairwise=True), 200) is None


def test_max_bands_option_takes_all_and_refuses_nonsense(tmp_path):
    """On a 40-band raster the default budget is applied and recorded; ``all`` lifts it."""
    from ndgeo.config import ND_MAX_BANDS

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(1, 4, dtype=np.uint8), 32 * 32 // 3 + 1)[:32 * 32]
    labels = labels.reshape(32, 32)
    cube = rng.uniform(100, 200, (40, 32, 32)).astype(np.float32)
    cube[labels - 1, np.arange(32)[:, None], np.arange(32)[None, :]] *= 1.5
    profile = dict(driver="GTiff", width=32, height=32, crs="EPSG:32633",
                   transform=rasterio.transform.from_origin(500000, 4000000, 10, 10))
    image, truth = tmp_path / "wide.tif", tmp_path / "truth.tif"
    with rasterio.open(image, "w", count=40, dtype="float32", **profile) as dst:
        dst.write(cube)
    with rasterio.open(truth, "w", count=1, dtype="uint8", nodata=0, **profile) as dst:
        dst.write(labels, 1)
    out = tmp_path / "m.safetensors"
    args = ["-q", "train", str(image), str(truth), "-o", str(out), "--epochs", "2",
            "--no-report", "--split", "random", "--indices", "2", "--overwrite"]
    for bad in ("0", "x", "-3", "\u00b2"):
        result = runner.invoke(app, [*args, "--max-bands", bad])
        assert result.exit_code == 2 and "--max-bands" in result.output, bad
    result = runner.invoke(app, [*args, "--max-bands", "all", "--no-budget-table"])
    assert result.exit_code == 2 and "--max-bands N" in result.output
    for option, budget in (([], ND_MAX_BANDS), (["--max-bands", "all"], None)):
        result = runner.invoke(app, [*args, *option])
        assert result.exit_code == 0, result.output
        model, meta = load_model(out)
        assert model.max_bands == budget and meta["training"]["max_bands"] == budget, option
