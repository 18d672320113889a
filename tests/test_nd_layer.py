"""NDLayer: bounds, invariance, gradients (closed form vs autograd), input checks, pairs."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ndgeo.errors import NdgeoError
from ndgeo.nn import NDLayer, select_pairs
from ndgeo.nn.nd import NDFunction, NDInputError, nd_autograd

FORMS = {
    "dense": {"pairs": None, "signed": False},
    "pairwise": {"pairs": [(0, 1), (2, 1), (3, 0)], "signed": False},
    "signed": {"pairs": None, "signed": True},
    "signed-pairwise": {"pairs": [(0, 1), (2, 1), (3, 0)], "signed": True},
}
SPECIAL = st.sampled_from([0.0, 1e-8, 1e-3, 0.5, 1.0, 1e6])
NONNEG = st.one_of(SPECIAL, st.floats(0, 1e6, width=32))


def _layer(form: str, dtype=torch.float64, seed: int = 0, **kw) -> NDLayer:
    torch.manual_seed(seed)
    return NDLayer(4, 3, **FORMS[form], **kw).to(dtype)


def _input(form: str, n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=g, dtype=torch.float64) + 0.05
    if FORMS[form]["signed"]:
        x = x * torch.where(torch.rand(n, 4, generator=g) < 0.5, -1.0, 1.0).double()
    return x


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "autograd"])
@pytest.mark.parametrize("form", list(FORMS))
def test_gradcheck_float64(form, closed):
    layer = _layer(form)
    x = _input(form).requires_grad_(True)
    nd = NDFunction.apply if closed else nd_autograd
    masks = (layer.mask_pos, layer.mask_neg)

    def fn(x, raw_pos, raw_neg):
        return nd(x, raw_pos, raw_neg, *masks, 1e-6, layer.signed)

    assert torch.autograd.gradcheck(fn, (x, layer.raw_pos, layer.raw_neg))


@pytest.mark.parametrize("form", list(FORMS))
def test_closed_form_gradients_equal_autograd(form):
    grads = []
    for closed in (True, False):
        layer = _layer(form, closed_form=closed)
        x = _input(form, n=50)
        if layer.signed:
            x[0, 0] = 0.0  # sign(0) = 0 convention must agree too
        x.requires_grad_(True)
        w = torch.linspace(-1, 1, 3, dtype=torch.float64)
        (layer(x) * w).sum().backward()
        grads.append((layer(x).detach(), x.grad, layer.raw_pos.grad, layer.raw_neg.grad))
    for closed_t, auto_t in zip(*grads, strict=True):
        torch.testing.assert_close(closed_t, auto_t, rtol=1e-12, atol=1e-12)


def test_pairwise_gradient_is_zero_off_the_mask_and_parameter_counts():
    layer = _layer("pairwise")
    layer(_input("pairwise")).sum().backward()
    assert torch.all(layer.raw_pos.grad[layer.mask_pos == 0] == 0)
    assert torch.all(layer.raw_neg.grad[layer.mask_neg == 0] == 0)
    assert torch.all(layer.raw_pos.grad[layer.mask_pos == 1] != 0)
    assert layer.n_parameters() == 2 * 3
    assert _layer("dense").n_parameters() == 2 * 3 * 4
    alpha, beta = layer.coefficients()
    assert alpha.shape == beta.shape == (3, 4)
    assert np.count_nonzero(alpha) == np.count_nonzero(beta) == 3
    assert alpha[1, 2] > 0 and beta[1, 1] > 0 and alpha[1, 1] == 0


@pytest.mark.parametrize("signed", [False, True])
def test_euler_identity_degree_zero_homogeneity(signed):
    """sum_i x_i dy/dx_i = 0 when eps is negligible (y is homogeneous of degree 0)."""
    layer = NDLayer(4, 3, signed=signed, eps=1e-300).double()
    x = _input("signed" if signed else "dense").requires_grad_(True)
    for k in range(3):
        (grad,) = torch.autograd.grad(layer(x)[:, k].sum(), x)
        assert torch.allclose((grad * x).sum(1), torch.zeros(x.shape[0], dtype=x.dtype), atol=1e-12)


@settings(deadline=None, max_examples=25)
@given(
    x=arrays(np.float32, st.tuples(st.integers(1, 8), st.just(5)), elements=NONNEG),
    seed=st.integers(0, 2**16),
    form=st.sampled_from(["dense", "pairwise"]),
)
def test_unsigned_output_bounded_and_finite(x, seed, form):
    torch.manual_seed(seed)
    pairs = [(0, 4), (3, 1)] if form == "pairwise" else None
    layer = NDLayer(5, 2, pairs=pairs)
    xt = torch.from_numpy(np.vstack([x, np.zeros((1, 5), np.float32)]))  # plus an all-zero pixel
    y = layer(xt)
    assert torch.isfinite(y).all()
    assert (y.abs() <= 1).all()
    assert torch.equal(y[-1], torch.zeros(2))


@settings(deadline=None, max_examples=25)
@given(
    x=arrays(
        np.float32,
        st.tuples(st.integers(1, 8), st.just(5)),
        elements=st.one_of(SPECIAL, SPECIAL.map(lambda v: -v), st.floats(-1e6, 1e6, width=32)),
    ),
    seed=st.integers(0, 2**16),
)
def test_signed_output_bounded_on_signed_input(x, seed):
    torch.manual_seed(seed)
    y = NDLayer(5, 3, signed=True)(torch.from_numpy(x))
    assert torch.isfinite(y).all()
    assert (y.abs() <= 1).all()


def test_signed_equals_unsigned_on_non_negative_input():
    torch.manual_seed(0)
    unsigned = NDLayer(6, 4)
    signed = NDLayer(6, 4, signed=True)
    signed.load_state_dict(unsigned.state_dict())
    x = torch.rand(100, 6)
    x[::7] = 0.0
    torch.testing.assert_close(signed(x), unsigned(x), rtol=1e-6, atol=1e-7)


@settings(deadline=None, max_examples=25)
@given(log10_k=st.floats(-3, 3), seed=st.integers(0, 2**16), signed=st.booleans())
def test_illumination_invariance_within_documented_bound(log10_k, seed, signed):
    """|y(kx) - y(x)| <= eps |k - 1| / (k S + eps) (+ float32 rounding), S = sum (a + b)|x|."""
    k = 10.0**log10_k
    torch.manual_seed(seed)
    layer = NDLayer(6, 4, signed=signed)
    x = torch.rand(64, 6) * 0.99 + 0.01
    if signed:
        x = x * torch.where(torch.rand(64, 6) < 0.5, -1.0, 1.0)
    alpha, beta = layer.coefficients()
    s = np.abs(x.double().numpy()) @ (alpha + beta).T
    bound = layer.eps * abs(k - 1) / (k * s + layer.eps)
    diff = (layer(x * k) - layer(x)).abs().double().detach().numpy()
    assert np.all(diff <= bound + 2e-6)
    layer64 = layer.double()  # in float64 the bound itself is the tolerance
    diff64 = (layer64(x.double() * k) - layer64(x.double())).abs().detach().numpy()
    assert np.all(diff64 <= bound * (1 + 1e-6) + 1e-13)


def test_one_hot_coefficients_reproduce_ndvi():
    nir, red = 3, 2
    layer = NDLayer(4, 1, pairs=[(nir, red)], eps=1e-12).double()
    with torch.no_grad():  # a = b: any equal weights give the classical index
        layer.raw_pos.fill_(0.7)
        layer.raw_neg.fill_(0.7)
    refl = torch.tensor(
        [[0.02, 0.04, 0.10, 0.50], [0.05, 0.08, 0.30, 0.30], [0.10, 0.20, 0.40, 0.05]],
        dtype=torch.float64,
    )
    expected = torch.tensor([[0.4 / 0.6], [0.0], [-0.35 / 0.45]], dtype=torch.float64)
    torch.testing.assert_close(layer(refl), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bad, count", [(-0.25, "1 negative"), (float("nan"), "1 non-finite")])
def test_negative_or_nan_input_raises_clear_error(bad, count):
    layer = NDLayer(3, 2)
    x = torch.rand(10, 3)
    x[4, 1] = bad
    with pytest.raises(NDInputError, match=count) as err:
        layer(x)
    assert isinstance(err.value, ValueError) and isinstance(err.value, NdgeoError)
    if bad < 0:
        assert "min -0.25" in str(err.value)
    NDLayer(3, 2, check_input=False)(x)  # the check can be switched off


def test_clamp_negative_clamps_at_zero_and_signed_layers_accept_negatives():
    torch.manual_seed(0)
    layer = NDLayer(3, 2, clamp_negative=True)
    x = torch.rand(10, 3)
    x[2, 0] = -0.5
    torch.testing.assert_close(layer(x), layer(x.clamp_min(0)))
    NDLayer(3, 2, signed=True)(x)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        layer(torch.rand(4, 5))


def test_init_options():
    torch.manual_seed(0)
    layer = NDLayer(6, 3, init="pairs", init_pairs=[(4, 1), (0, 5)])
    alpha, beta = layer.coefficients()
    assert alpha[:2].argmax(1).tolist() == [4, 0]
    assert beta[:2].argmax(1).tolist() == [1, 5]
    x = torch.rand(20, 6) + 0.1
    classic = (x[:, 4] - x[:, 1]) / (x[:, 4] + x[:, 1])
    assert torch.corrcoef(torch.stack([layer(x)[:, 0], classic]))[0, 1] > 0.9
    jitter = NDLayer(6, 50)
    assert abs(jitter.raw_pos.mean().item() - math.log(math.e - 1)) < 0.1
    assert 0.4 < jitter.raw_pos.std().item() < 0.6
    pairwise = NDLayer(6, 1, pairs=[(1, 2)], init="pairs")
    assert pairwise.coefficients()[0][0, 1] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="invalid band pair"):
        NDLayer(6, 1, pairs=[(1, 1)])


def test_select_pairs_finds_the_informative_pair_and_decorrelates():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 1.0, size=(600, 5))
    labels = ((x[:, 1] - x[:, 3]) / (x[:, 1] + x[:, 3]) > 0).astype(int)
    assert select_pairs(x, labels, 1) == [(1, 3)]
    x_dup = np.column_stack([x, x[:, 3] * 1.001])  # band 5 duplicates band 3
    chosen = select_pairs(torch.from_numpy(x_dup), torch.from_numpy(labels), 3)
    assert chosen[0] in [(1, 3), (1, 5)]
    assert not {(1, 3), (1, 5)} <= set(chosen)
    assert len(chosen) == 3
    with pytest.raises(ValueError, match="2 classes"):
        select_pairs(x, np.zeros(600), 2)
    with pytest.raises(NDInputError):
        select_pairs(-x, labels, 2)
