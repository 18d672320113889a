"""Per-band noise penalty of ND models (issue 10.4): closed-form sensitivity, the penalty lowers
the measured per-band noise of the learned index, the invariance to a common factor is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ndgeo.checkpoint import load_model
from ndgeo.cli import app
from ndgeo.config import ND_NOISE_PENALTY, TrainConfig
from ndgeo.errors import NdgeoError
from ndgeo.io.labels import pixels_from_arrays
from ndgeo.nn import NDLayer
from ndgeo.training.classifier import train_model

runner = CliRunner()


def test_closed_form_sensitivity_is_the_squared_log_band_gradient():
    torch.manual_seed(0)
    layer = NDLayer(7, 3).double()
    x = torch.rand(9, 7, dtype=torch.float64) + 0.01
    y, s = layer.band_noise_sensitivity(x)
    log_x = x.log().requires_grad_(True)
    out = layer(log_x.exp())
    grads = torch.stack([torch.autograd.grad(out[:, k].sum(), log_x, retain_graph=True)[0]
                         for k in range(3)], 1)
    torch.testing.assert_close(y, out.detach())
    torch.testing.assert_close(s, grads.pow(2).sum(-1), rtol=1e-9, atol=1e-12)
    _, s_scaled = layer.band_noise_sensitivity(x * 250.0)
    torch.testing.assert_close(s_scaled, s, rtol=1e-6, atol=1e-9)  # invariant to a factor


def _redundant_bands(seed=0, n=800):
    """Bands 0-3 are one red reflectance, bands 4-7 one NIR reflectance: the class (NIR/red
    ratio 2 or 3) is read as well from any red/NIR pair, but an index spread over the four
    copies of each averages independent per-band noise down by about 4x."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 2, n)
    red = rng.uniform(0.03, 0.12, n)
    nir = red * np.where(cls == 0, 2.0, 3.0) * rng.uniform(0.93, 1.07, n)
    x = np.concatenate([np.repeat(red[:, None], 4, 1), np.repeat(nir[:, None], 4, 1)], 1)
    return x.astype("float32"), np.where(cls == 0, "sparse", "dense")


def _noise_to_signal(model, x, sigma=0.05, draws=20, seed=1):
    """Measured: variance of the learned index under real per-band noise x (1 + sigma N(0, 1)),
    averaged over pixels, over the index's variance across pixels."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        clean = model.indices(torch.from_numpy(x)).numpy()
        noisy = np.stack([model.indices(torch.from_numpy(
            (x * (1 + sigma * rng.standard_normal(x.shape))).astype("float32"))).numpy()
            for _ in range(draws)])
    return float(noisy.var(0).mean() / clean.var(0).mean())


def test_noise_penalty_lowers_measured_band_noise_and_keeps_invariance():
    x, labels = _redundant_bands()
    pixels = pixels_from_arrays(x, labels, [f"b{i}" for i in range(8)])
    test_x, test_labels = _redundant_bands(seed=5, n=400)
    base = dict(n_indices=1, head="linear", epochs=30, split="random", refit=False,
                device="cpu")
    plain = train_model(pixels, TrainConfig(**base, noise_penalty=0.0))
    robust = train_model(pixels, TrainConfig(**base, noise_penalty=0.1))
    for result in (plain, robust):
        assert result.metrics["overall_accuracy"] >= 0.95
    plain_nsr = _noise_to_signal(plain.model, test_x)
    robust_nsr = _noise_to_signal(robust.model, test_x)
    assert robust_nsr < 0.6 * plain_nsr, (plain_nsr, robust_nsr)
    alpha, beta = robust.model.nd_layers[0].coefficients()
    assert (alpha[0, :4] > 0.1 * alpha[0, :4].max()).all() or \
        (beta[0, :4] > 0.1 * beta[0, :4].max()).all()  # weight spread over the red copies
    dn = test_x * np.float32(1e4)  # as digital numbers, so eps stays negligible at x 1e-3
    with torch.no_grad():
        reference = robust.model(torch.from_numpy(dn))
        for factor in (1e-3, 0.7, 1e3):
            scaled = robust.model(torch.from_numpy(dn * np.float32(factor)))
            torch.testing.assert_close(scaled, reference, atol=1e-3, rtol=0)


def test_noise_penalty_options_are_checked(sample_scene, tmp_path):
    with pytest.raises(NdgeoError, match="noise-penalty"):
        TrainConfig(noise_penalty=-1.0)
    with pytest.raises(NdgeoError, match="ND models"):
        TrainConfig(model="mlp", noise_penalty=0.1)
    # the default penalty is an ND default: MLPs (and --compare's baseline) train without it
    assert TrainConfig().noise_penalty == ND_NOISE_PENALTY > 0
    assert TrainConfig(model="mlp").noise_penalty == 0.0
    out = tmp_path / "m.safetensors"
    args = ["-q", "train", str(sample_scene.image), str(sample_scene.labels_raster), "-o",
            str(out), "--epochs", "2", "--no-report"]
    result = runner.invoke(app, [*args, "--noise-penalty-on", "loss"])
    assert result.exit_code == 2 and "--noise-penalty W" in result.output
    result = runner.invoke(app, [*args, "--noise-penalty", "0", "--noise-penalty-on", "indices"])
    assert result.exit_code == 2 and "needs the noise penalty on" in result.output
    result = runner.invoke(app, [*args, "--noise-penalty-on", "indices"])
    assert result.exit_code == 0, result.output
    assert load_model(out)[1]["training"]["noise_penalty"] == ND_NOISE_PENALTY
    result = runner.invoke(app, [*args, "--model", "mlp", "--noise-penalty", "0.1"])
    assert result.exit_code == 2
    result = runner.invoke(app, [*args, "--overwrite", "--noise-penalty", "0.1"])
    assert result.exit_code == 0, result.output
    _, meta = load_model(out)
    assert meta["training"]["noise_penalty"] == 0.1
    result = runner.invoke(app, [*args, "--overwrite", "--model", "mlp"])
    assert result.exit_code == 0, result.output
    assert load_model(out)[1]["training"]["noise_penalty"] == 0.0
