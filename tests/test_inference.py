"""Band-major inference forms: the same function as the trained model, on (C, N) pixels."""

import numpy as np
import pytest
import torch
from torch import nn

from ndgeo.device import run_batched
from ndgeo.nn import MLP, NDClassifier
from ndgeo.nn.inference import argmax_rows, band_major

SCALE = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.2, 4.0])


def _pixels(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 6, generator=g) * 0.99 + 0.01


def _trained(model: nn.Module, steps=20) -> nn.Module:
    """A few Adam steps so weights and BatchNorm statistics are away from their init."""
    x = _pixels()
    labels = (x[:, 4] > x[:, 2]).long() + (x[:, 1] > 0.5).long()
    if hasattr(model, "fit_standardizer"):
        model.fit_standardizer(x * 3 + 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return model.eval()


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
    model = _trained(MODELS[name]())
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
