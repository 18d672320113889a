"""Splits, training, metrics, noise robustness and the report figure, on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ndgeo.errors import NdgeoError
from ndgeo.io.labels import TrainingPixels, pixels_from_arrays
from ndgeo.training.classifier import TrainConfig, compare_models, split_pixels, train_model
from ndgeo.training.metrics import (
    cohen_kappa,
    confusion_matrix,
    evaluate_model,
    macro_f1,
    noise_robustness,
    overall_accuracy,
    per_class,
)
from ndgeo.training.report import training_report

BANDS = ["blue", "green", "red", "nir"]


def nd_problem(n=600, seed=0) -> TrainingPixels:
    """Class 1 where (nir - red) / (nir + red) > 0.2; brightness varies 0.3-2x per pixel, so no
    single band separates the classes; blue and green are uninformative."""
    rng = np.random.default_rng(seed)
    red = rng.uniform(0.05, 0.3, n)
    ratio = np.where(rng.random(n) < 0.5, rng.uniform(0.2, 1.1, n), rng.uniform(1.9, 4.0, n))
    nir = red * ratio
    X = np.column_stack([rng.uniform(0.05, 0.15, n), rng.uniform(0.05, 0.15, n), red, nir])
    X *= rng.uniform(0.3, 2.0, (n, 1))
    y = np.where((nir - red) / (nir + red) > 0.2, "veg", "bare")
    p = pixels_from_arrays(X, y, BANDS)
    side = int(np.ceil(np.sqrt(n)))
    p.rows, p.cols = np.arange(n) // side, np.arange(n) % side
    return p


def fast(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 25, "patience": 25, "device": "cpu", "block_size": 5, **kw})


def test_block_split_keeps_blocks_whole_and_is_reproducible():
    p = nd_problem(900)
    tr, va = split_pixels(p, "block", val_fraction=0.25, block_size=6, seed=1)
    assert np.intersect1d(tr, va).size == 0 and tr.size + va.size == len(p)
    side = {}
    for idx, is_val in ((tr, False), (va, True)):
        for r, c in zip(p.rows[idx] // 6, p.cols[idx] // 6, strict=True):
            assert side.setdefault((r, c), is_val) == is_val
    assert set(p.y[tr]) == set(p.y[va]) == {0, 1}
    assert 0.15 < va.size / len(p) < 0.35
    again = split_pixels(p, "block", val_fraction=0.25, block_size=6, seed=1)
    np.testing.assert_array_equal(again[1], va)
    other = split_pixels(p, "block", val_fraction=0.25, block_size=6, seed=2)
    assert not np.array_equal(other[1], va)


def test_random_split_is_stratified():
    p = nd_problem(500)
    tr, va = split_pixels(p, "random", val_fraction=0.2, seed=0)
    for k in (0, 1):
        n = int((p.y == k).sum())
        assert int((p.y[va] == k).sum()) == round(0.2 * n)
    with pytest.raises(NdgeoError, match="val_fraction"):
        split_pixels(p, "random", val_fraction=1.0)


def test_nd_learns_the_separating_index_and_its_bands():
    p = nd_problem(600)
    result = train_model(p, fast(n_indices=1, init="jitter", epochs=40, patience=40))
    assert result.metrics["overall_accuracy"] >= 0.95
    coef = result.model.index_coefficients(BANDS)[0]
    signed = np.array([coef["positive"].get(b, 0) - coef["negative"].get(b, 0) for b in BANDS])
    top = set(np.argsort(-np.abs(signed))[:2])
    assert top == {2, 3} and np.sign(signed[2]) == -np.sign(signed[3])
    assert np.abs(signed[:2]).max() < 0.5 * np.abs(signed[2:]).min()


def test_same_seed_gives_identical_weights():
    p = nd_problem(300)
    a = train_model(p, fast(epochs=3, seed=7)).model.state_dict()
    b = train_model(p, fast(epochs=3, seed=7)).model.state_dict()
    c = train_model(p, fast(epochs=3, seed=8)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_compare_models_same_split_and_small_nd():
    p = nd_problem(400)
    nd, mlp = compare_models(p, fast(epochs=10, n_indices=8, head="linear"))
    np.testing.assert_array_equal(nd.val_idx, mlp.val_idx)
    assert nd.config.model == "nd" and mlp.config.model == "mlp"
    assert nd.n_parameters <= 0.25 * mlp.n_parameters
    assert len(nd.history) == 10 and {"train_loss", "val_loss", "val_acc"} <= set(nd.history[0])
    meta = json.loads(json.dumps(nd.metadata()))
    assert meta["config"]["kind"] == "nd" and [b["name"] for b in meta["bands"]] == BANDS


def test_cuda_without_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(NdgeoError, match="cuda"):
        train_model(nd_problem(100), fast(device="cuda"))


def test_global_noise_leaves_nd_accuracy_unchanged():
    p = nd_problem(600)
    result = train_model(p, fast(epochs=30))
    X, y = p.X[result.val_idx], p.y[result.val_idx]
    glob = noise_robustness(result.model, X, y, [0.0, 0.1, 0.2], mode="global", draws=5)
    assert [g["drop_points"] for g in glob] == pytest.approx([0, 0, 0], abs=1e-9)
    band = noise_robustness(result.model, X, y, [0.2], mode="band", draws=5)
    assert band[0]["drop_points"] >= glob[2]["drop_points"]
    assert band[0]["accuracy"] == pytest.approx(glob[0]["accuracy"] - band[0]["drop_points"] / 100)


def test_two_by_two_metrics_from_definitions():
    y_true = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    y_pred = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    cm = confusion_matrix(y_true, y_pred, 2)
    tp0, fn0, fp0 = 3, 2, 2  # class 0: 3 right, 2 called 1; two 1s called 0
    assert cm.tolist() == [[tp0, fn0], [fp0, 5]]
    n = 12
    p_o = (3 + 5) / n
    p_e = (5 / n) * (5 / n) + (7 / n) * (7 / n)
    assert overall_accuracy(cm) == pytest.approx(p_o)
    assert cohen_kappa(cm) == pytest.approx((p_o - p_e) / (1 - p_e))
    prec0, rec0 = tp0 / (tp0 + fp0), tp0 / (tp0 + fn0)
    prec1, rec1 = 5 / 7, 5 / 7
    f0, f1 = 2 * prec0 * rec0 / (prec0 + rec0), 2 * prec1 * rec1 / (prec1 + rec1)
    rows = per_class(cm)
    assert rows[0]["precision"] == pytest.approx(prec0) and rows[0]["recall"] == pytest.approx(rec0)
    assert rows[1]["f1"] == pytest.approx(f1)
    assert macro_f1(cm) == pytest.approx((f0 + f1) / 2)


def test_metrics_with_absent_classes():
    cm = confusion_matrix([0, 0, 1, 1], [0, 0, 1, 3], 4)  # class 2 nowhere, class 3 only predicted
    rows = per_class(cm)
    assert rows[2] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert rows[3]["precision"] == 0.0 and rows[3]["f1"] == 0.0
    f1_class1 = 2 * 1.0 * 0.5 / 1.5
    assert macro_f1(cm) == pytest.approx((1.0 + f1_class1 + 0.0) / 3)
    assert cohen_kappa(confusion_matrix([1, 1], [1, 1], 3)) == 1.0


def test_evaluate_model_remaps_classes_by_name_and_is_json():
    p = nd_problem(300)
    result = train_model(p, fast(epochs=15))
    flipped = TrainingPixels(X=p.X, y=1 - p.y, rows=p.rows, cols=p.cols, scene=p.scene,
                             classes=p.classes[::-1], bands=p.bands, scene_ids=["other"])
    same = evaluate_model(result.model, p)
    remapped = evaluate_model(result.model, flipped, classes=result.classes)
    assert remapped["confusion_matrix"] == same["confusion_matrix"]
    json.dumps(remapped)
    with pytest.raises(NdgeoError, match="unknown to the model"):
        evaluate_model(result.model, flipped, classes=["veg", "water"])


def test_training_report_writes_png(tmp_path):
    p = nd_problem(200)
    for result in compare_models(p, fast(epochs=3)):
        out = training_report(result, tmp_path / f"{result.config.model}.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["mlp.png", "nd.png"]
