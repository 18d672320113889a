"""NDClassifier / MLP: invariance, parameter counts, configs, exported coefficients, registry."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ndgeo.errors import NdgeoError
from ndgeo.nn import (
    MLP,
    MODEL_KINDS,
    NDClassifier,
    build_model,
    mlp_hidden_for_budget,
    mlp_n_parameters,
    nd_indices_for_budget,
    register_model,
)
from ndgeo.nn.inference import argmax_rows, band_major, run_batched
from ndgeo.nn.nd import softplus

BANDS = ["B02", "B03", "B04", "B05", "B08", "B11"]
SCALE = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.2, 4.0])


def _pixels(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 6, generator=g) * 0.99 + 0.01


def _trained(model: nn.Module, steps=15) -> nn.Module:
    """A few Adam steps so BatchNorm statistics and weights are not at their initial values."""
    x = _pixels()
    labels = (x[:, 4] > x[:, 2]).long() + (x[:, 1] > 0.5).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def stacked():
    torch.manual_seed(0)
    return _trained(NDClassifier(6, 3, depth=3, hidden_indices=[5, 4], band_scale=SCALE))


@settings(deadline=None, max_examples=25)
@given(log10_k=st.floats(-3, 3))
def test_stacked_classifier_logits_are_illumination_invariant(stacked, log10_k):
    """Documented tolerance: 1e-4 on logits for float32, eps 1e-6, reflectance >= 0.01."""
    x = _pixels(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(stacked(x * 10.0**log10_k), stacked(x), rtol=0, atol=1e-4)


def test_mlp_is_not_illumination_invariant():
    torch.manual_seed(0)
    mlp = MLP(6, 3, hidden=(16, 8))
    mlp.fit_standardizer(_pixels())
    mlp = _trained(mlp)
    x = _pixels(seed=3)
    with torch.no_grad():
        assert (mlp(x * 10) - mlp(x)).abs().max() > 0.1


def test_layers_signedness_shapes_and_indices(stacked):
    assert [layer.signed for layer in stacked.nd_layers] == [False, True, True]
    x = _pixels(10)
    assert stacked(x).shape == (10, 3)
    assert stacked.indices(x).shape == (10, 8)
    with pytest.raises(ValueError, match="negative"):
        stacked(-x)


def test_parameter_counts_are_exact():
    dense = NDClassifier(6, 3, n_indices=8, depth=2, hidden_indices=4, head_norm="batchnorm")
    assert dense.n_parameters() == 2 * 6 * 8 + 2 * 8 * 4 + 2 * 4 + (4 * 3 + 3)
    pairs = [(4, 2), (1, 5), (0, 3)]
    pairwise = NDClassifier(6, 3, pairs=pairs, head_norm="none")
    assert pairwise.n_parameters() == 2 * 3 + (3 * 3 + 3)
    all_pairs = NDClassifier(6, 2, pairwise=True, head_norm="affine")
    assert all_pairs.n_parameters() == 2 * 15 + 2 * 15 + (15 * 2 + 2)
    mlp = MLP(6, 3, hidden=(10, 5))
    assert mlp.n_parameters() == (6 * 10 + 10) + (10 * 5 + 5) + (5 * 3 + 3)
    assert mlp_n_parameters(6, 3, (10, 5)) == mlp.n_parameters()


def test_budget_helpers():
    budget = 1000
    hidden = mlp_hidden_for_budget(12, 5, budget)
    assert abs(mlp_n_parameters(12, 5, hidden) - budget) <= 0.05 * budget
    k = nd_indices_for_budget(12, 5, budget // 4)
    assert NDClassifier(12, 5, n_indices=k).n_parameters() <= budget // 4
    assert NDClassifier(12, 5, n_indices=k + 1).n_parameters() > budget // 4


@pytest.mark.parametrize(
    "model",
    [
        NDClassifier(6, 3, depth=2, band_scale=SCALE, head_norm="affine"),
        NDClassifier(6, 3, pairs=[(4, 2), (1, 5)], depth=2, hidden_indices=[3]),
        NDClassifier(6, 4, pairwise=True, head_norm="none", clamp_negative=True),
        MLP(6, 3, hidden=(7, 5, 3)),
    ],
    ids=["nd-dense", "nd-pairs", "nd-all-pairs", "mlp"],
)
def test_config_rebuilds_identical_architecture(model):
    config = json.loads(json.dumps(model.config()))
    rebuilt = build_model(config)
    assert type(rebuilt) is type(model) and rebuilt.config() == model.config()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict())
    x = _pixels(20)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_index_coefficients_fold_band_scale_back():
    torch.manual_seed(1)
    scaled = NDClassifier(6, 2, n_indices=3, band_scale=SCALE)
    plain = NDClassifier(6, 2, n_indices=3)
    alpha, beta = (softplus(p.detach()) for p in (scaled.nd_layers[0].raw_pos,
                                                   scaled.nd_layers[0].raw_neg))
    with torch.no_grad():  # same raw-band weights: alpha * scale, via softplus^-1(v) = log(expm1 v)
        plain.nd_layers[0].raw_pos.copy_(torch.log(torch.expm1(alpha * SCALE)))
        plain.nd_layers[0].raw_neg.copy_(torch.log(torch.expm1(beta * SCALE)))
    x = _pixels(50)
    torch.testing.assert_close(scaled.indices(x), plain.indices(x), rtol=1e-5, atol=1e-6)
    got, want = scaled.index_coefficients(BANDS), plain.index_coefficients(BANDS)
    for g, w in zip(got, want, strict=True):
        assert g["name"] == w["name"]
        for side in ("positive", "negative"):
            np.testing.assert_allclose(list(g[side].values()), list(w[side].values()), rtol=1e-5)


def test_index_coefficients_evaluate_to_the_indices(stacked):
    x = _pixels(40).double()
    coefs = stacked.index_coefficients(BANDS)
    assert [c["name"] for c in coefs] == [f"ND{k}" for k in range(1, 9)]
    xs = {b: x[:, i] for i, b in enumerate(BANDS)}
    for k, c in enumerate(coefs):
        assert max(*c["positive"].values(), *c["negative"].values()) == pytest.approx(1.0)
        pos = sum(w * xs[b] for b, w in c["positive"].items())
        neg = sum(w * xs[b] for b, w in c["negative"].items())
        formula = (pos - neg) / (pos + neg)
        torch.testing.assert_close(formula.float(), stacked.indices(x.float())[:, k].detach(),
                                   rtol=0, atol=1e-5)
    pairwise = NDClassifier(6, 2, pairs=[(4, 2)]).index_coefficients(BANDS)
    assert list(pairwise[0]["positive"]) == ["B08"] and list(pairwise[0]["negative"]) == ["B04"]
    with pytest.raises(NdgeoError, match="5 band names"):
        stacked.index_coefficients(BANDS[:5])


def test_index_importance():
    torch.manual_seed(0)
    model = _trained(NDClassifier(6, 3, n_indices=4, head_norm="none"))
    x = _pixels(100)
    model.train()
    importance = model.index_importance(x)
    assert model.training  # mode restored
    with torch.no_grad():
        expected = model.head.weight.abs() * model.indices(x).std(0)
    np.testing.assert_allclose(importance, expected.double().numpy(), rtol=1e-5)
    deep = NDClassifier(6, 3, n_indices=4, depth=3).index_importance(x)
    assert deep.shape == (3, 4) and np.all(np.isfinite(deep)) and np.all(deep >= 0)


def test_fit_band_scale_and_standardizer():
    x = _pixels(101)
    x[:, 5] = 0.0
    model = NDClassifier(6, 2)
    model.fit_band_scale(x)
    expected = 1.0 / x[:, :5].double().median(0).values
    torch.testing.assert_close(model.band_scale[:5], expected.float())
    assert model.band_scale[5] == 1.0
    mlp = MLP(6, 2)
    mlp.fit_standardizer(x)
    z = (x - mlp.mean) / mlp.std
    torch.testing.assert_close(z[:, :5].mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, :5].std(0, unbiased=False), torch.ones(5), atol=1e-5, rtol=0)
    assert mlp.std[5] == 1.0
    with pytest.raises(ValueError, match="band_scale"):
        NDClassifier(6, 2, band_scale=[1.0, 0, 1, 1, 1, 1])


def test_init_pairs_from_data_starts_at_the_selected_nd():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 1.0, size=(400, 6))
    labels = ((x[:, 4] - x[:, 2]) / (x[:, 4] + x[:, 2]) > 0.2).astype(int)
    model = NDClassifier(6, 2, n_indices=3)
    pairs = model.init_pairs_from_data(x, labels)
    assert pairs[0] == (2, 4)
    alpha, beta = model.nd_layers[0].coefficients()
    assert (alpha[0].argmax(), beta[0].argmax()) == (2, 4)


def test_training_separates_an_ndvi_threshold():
    torch.manual_seed(0)
    x = _pixels(400)
    labels = ((x[:, 4] - x[:, 2]) / (x[:, 4] + x[:, 2]) > 0).long()
    model = NDClassifier(6, 2, n_indices=2)
    opt = torch.optim.Adam(
        [{"params": model.nd_parameters(), "lr": 5e-2}, {"params": model.head_parameters()}],
        lr=1e-2,
    )
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    accuracy = (model.eval()(x).argmax(1) == labels).float().mean()
    assert accuracy > 0.95


def test_registry():
    with pytest.raises(NdgeoError, match="unknown model kind 'nope'"):
        build_model({"kind": "nope"})
    with pytest.raises(NdgeoError, match="invalid config"):
        build_model({"kind": "nd", "in_bands": 6})
    with pytest.raises(NdgeoError, match="'kind'"):
        build_model({"in_bands": 6})

    @register_model("test-linear")
    def linear(n: int) -> nn.Module:
        return nn.Linear(n, 1)

    try:
        assert build_model({"kind": "test-linear", "n": 3}).in_features == 3
        with pytest.raises(ValueError, match="already registered"):
            register_model("test-linear")(MLP)
    finally:
        del MODEL_KINDS["test-linear"]
    assert {"nd", "mlp"} <= set(MODEL_KINDS)


# --- band-major inference forms (ndgeo.nn.inference) -------------------------------------


MODELS = {
    "nd-batchnorm": lambda: NDClassifier(6, 3, n_indices=5, band_scale=SCALE),
    "nd-affine": lambda: NDClassifier(6, 3, n_indices=4, head_norm="affine"),
    "nd-none-pairwise": lambda: NDClassifier(6, 3, pairwise=True, head_norm="none"),
    "nd-depth3": lambda: NDClassifier(6, 3, depth=3, hidden_indices=[5, 4], band_scale=SCALE),
    "mlp": lambda: MLP(6, 3, hidden=(16, 8)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_band_major_form_equals_the_model(name):
    torch.manual_seed(1)
    model = MODELS[name]()
    if isinstance(model, MLP):
        model.fit_standardizer(_pixels() * 3 + 1)
    model = _trained(model)
    fast = band_major(model)
    x = _pixels(300, seed=5) * 2000  # digital numbers, as rasters hold them
    with torch.no_grad():
        want = model(x)
        got = fast(x.T.contiguous())
        torch.testing.assert_close(got.T, want, rtol=1e-4, atol=1e-4)
        if isinstance(model, NDClassifier):
            torch.testing.assert_close(fast.indices(x.T.contiguous()).T, model.indices(x),
                                       rtol=0, atol=1e-5)
    # The source model is left as it was (still trainable, same outputs).
    assert model(x).requires_grad and torch.equal(model(x).detach(), want)


def test_band_major_takes_a_strided_view_of_a_raster_block():
    """Columns of a (C, h * w) block view, as the engine passes them, need no copy."""
    torch.manual_seed(2)
    model = _trained(MODELS["nd-batchnorm"]())
    block = (_pixels(40 * 30, seed=7).T.reshape(6, 40, 30) * 3000).numpy()
    flat = block.reshape(6, -1)
    fast = band_major(model)
    got = run_batched(lambda b: fast(b), flat, 128, torch.device("cpu"), axis=1)
    with torch.no_grad():
        want = model(torch.from_numpy(flat.T.copy())).numpy().T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_band_major_nan_columns_stay_local():
    torch.manual_seed(3)
    fast = band_major(_trained(MODELS["nd-depth3"]()))
    x = _pixels(64, seed=8).T.contiguous()
    x[:, 10] = float("nan")
    with torch.no_grad():
        out = fast(x)
    assert torch.isnan(out[:, 10]).all() and torch.isfinite(out[:, 11:]).all()


def test_argmax_rows_matches_torch_argmax_with_first_index_on_ties():
    g = torch.Generator().manual_seed(0)
    for rows in (1, 2, 4, 9):
        scores = torch.randn(rows, 1000, generator=g)
        scores[:, :50] = torch.round(scores[:, :50])  # many exact ties
        got = argmax_rows(scores)
        assert got.dtype == torch.uint8
        want = torch.from_numpy(scores.numpy().argmax(axis=0))  # numpy: first on ties
        assert torch.equal(got.long(), want)


def test_argmax_rows_type_leaves_room_for_one_based_ids():
    assert argmax_rows(torch.zeros(255, 3)).dtype == torch.uint8
    scores = torch.zeros(256, 5)
    scores[255, 2] = 1.0
    got = argmax_rows(scores)
    assert got.dtype == torch.int32 and got.tolist() == [0, 0, 255, 0, 0]


def test_run_batched_columns_and_rows_agree():
    x = np.arange(6 * 50, dtype=np.float32).reshape(6, 50)
    cols = run_batched(lambda b: b * 2, x, 7, torch.device("cpu"), axis=1)
    rows = run_batched(lambda b: b * 2, x.T.copy(), 7, torch.device("cpu"))
    np.testing.assert_array_equal(cols, x * 2)
    np.testing.assert_array_equal(rows, x.T * 2)
    ids = run_batched(lambda b: argmax_rows(b), x, 16, torch.device("cpu"), axis=1)
    assert ids.shape == (50,) and ids.dtype == np.uint8 and (ids == 5).all()


def test_band_major_rejects_other_modules():
    with pytest.raises(TypeError, match="Linear"):
        band_major(nn.Linear(3, 2))
