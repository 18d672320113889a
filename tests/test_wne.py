"""Properties of the WNE wrapper and the denoiser backbones (pure torch, float64, tiny inputs)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from ndgeo.checkpoint import load_model, save_model
from ndgeo.errors import NdgeoError
from ndgeo.nn.denoisers import (
    BACKBONES,
    DnCNN,
    NEArch,
    WindowTransformer,
    build_denoiser,
    window_transformer_receptive_field,
)
from ndgeo.nn.registry import build_model
from ndgeo.nn.wne import (
    WNE,
    backbone_field,
    block_moments,
    combine_moments,
    measure_receptive_field,
    moments_to_stats,
    wne_stats,
)

C = 3
SMALL = {
    "dncnn": {"depth": 5, "width": 16},
    "dncnn-bf": {"depth": 5, "width": 16},
    "transformer": {"dim": 16, "window": 4, "depth": 2, "heads": 2},
    "ne-arch": {"depth": 5, "width": 16},
}
FAST = settings(max_examples=6, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and kinder to a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _make(name: str, wne: bool, pooling: str = "joint", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_denoiser(name, C, wne=wne, pooling=pooling, eps=0.0, **SMALL[name])
    return net.double().eval()


@functools.cache
def _model(name: str, wne: bool = True, pooling: str = "joint") -> torch.nn.Module:
    return _make(name, wne, pooling)


def _image(seed: int, n: int = 2, size: int = 20) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, C, size, size, generator=gen, dtype=torch.float64)


def _defect(f, y: torch.Tensor, a, b) -> float:
    """Affine-equivariance defect relative to the size of the model's correction a*(y - f(y))."""
    with torch.no_grad():
        fy = f(y)
        err = (f(a * y + b) - (a * fy + b)).norm()
        return float(err / (a * (y - fy)).norm())


@FAST
@given(
    log_a=st.floats(-2, 2),
    b=st.floats(-1, 1),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["dncnn", "transformer", "ne-arch"]),
)
def test_normalization_equivariance(log_a, b, seed, name):
    # NEArch is NE by construction; the others through the wrapper (eps = 0: exact).
    assert _defect(_model(name), _image(seed), 10.0**log_a, b) < 1e-10


@pytest.mark.parametrize("name", ["dncnn", "transformer"])
def test_unwrapped_backbones_are_not_equivariant(name):
    bare, wrapped = _model(name, wne=False), _model(name)
    y = _image(1)
    for a, b in [(0.01, 0.5), (100.0, -0.3), (3.0, 0.0)]:
        assert _defect(bare, y, a, b) > 1e-2
        assert _defect(wrapped, y, a, b) < 1e-10


@pytest.mark.parametrize("name", ["dncnn", "transformer", "ne-arch"])
def test_equivariance_survives_training(name):
    model = _make(name, wne=True, seed=3).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(4)
    for _ in range(4):
        clean = _image(int(torch.randint(0, 999, (1,), generator=gen)), n=4, size=16)
        noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
        loss = torch.mean((model(noisy) - clean) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert _defect(model, _image(5), 0.05, 0.7) < 1e-10
    assert _defect(model, _image(6), 40.0, -2.0) < 1e-10


def test_default_eps_is_in_data_units_and_nearly_equivariant():
    torch.manual_seed(0)
    model = build_denoiser("dncnn", C, data_range=10_000.0, **SMALL["dncnn"]).double().eval()
    assert model.eps == pytest.approx(0.1)
    y = 10_000.0 * _image(7)
    assert 1e-12 < _defect(model, y, 2.0, 500.0) < 1e-4


def test_band_pooling_is_equivariant_per_band():
    y = _image(8)
    a = torch.tensor([0.02, 1.0, 50.0], dtype=torch.float64).view(1, C, 1, 1)
    b = torch.tensor([0.3, -1.0, 7.0], dtype=torch.float64).view(1, C, 1, 1)
    for name in ["dncnn", "transformer"]:
        band = _model(name, pooling="band")
        with torch.no_grad():
            fy = band(y)
            assert torch.allclose(band(a * y + b), a * fy + b, rtol=1e-9, atol=1e-9)
            joint = _model(name)
            err = (joint(a * y + b) - (a * joint(y) + b)).abs().max()
        assert err > 1e-2  # joint pooling is a smaller group: per-band changes are not absorbed


def test_constant_input_is_returned_and_gradients_are_finite():
    model = _model("dncnn")
    y = torch.full((2, C, 16, 16), 0.37, dtype=torch.float64, requires_grad=True)
    out = model(y)
    assert torch.equal(out, y)
    out.sum().backward()
    assert torch.isfinite(y.grad).all()


def test_near_constant_input_is_finite_and_close():
    torch.manual_seed(0)
    model = build_denoiser("transformer", C, **SMALL["transformer"]).double().eval()
    y = 0.37 + 1e-7 * _image(9)  # std ~3e-8: above tau, below eps
    with torch.no_grad():
        out = model(y)
    assert torch.isfinite(out).all()
    assert (out - 0.37).abs().max() < 1e-3


def test_band_pooling_returns_constant_band_unchanged():
    y = _image(10)
    y[:, 1] = 0.25
    with torch.no_grad():
        out = _model("dncnn", pooling="band")(y)
    assert torch.equal(out[:, 1], y[:, 1])
    assert not torch.equal(out[:, 0], y[:, 0])


def test_all_nodata_input_is_returned_unchanged():
    y = _image(11)
    y[0, :, :5] = float("nan")
    y[1] = -9999.0
    mask = torch.zeros(2, 20, 20, dtype=torch.bool)
    for name in ["dncnn", "transformer"]:
        with torch.no_grad():
            out = _model(name)(y, mask=mask)
        assert torch.equal(torch.isnan(out), torch.isnan(y))
        assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(y))


def test_masked_statistics_ignore_fill_values_and_nodata_is_restored():
    y = _image(12)
    mask = torch.ones(2, 1, 20, 20, dtype=torch.bool)
    mask[:, :, 3:9, 4:15] = False
    mask[1, :, 15:] = False
    filled_a, filled_b = y.clone(), y.clone()
    filled_a[~mask.expand_as(y)] = -9999.0
    filled_b[~mask.expand_as(y)] = float("nan")
    valid = mask.expand_as(y)

    mean, std = wne_stats(filled_a, mask)
    for i in range(2):
        vals = y[i][valid[i]].numpy()
        assert mean[i].item() == pytest.approx(vals.mean(), rel=1e-12)
        assert std[i].item() == pytest.approx(vals.std(), rel=1e-12)

    for name in ["dncnn", "transformer", "ne-arch"]:
        model = _model(name) if name != "ne-arch" else WNE(_model(name), eps=0.0)
        with torch.no_grad():
            out_a = model(filled_a, mask=mask)
            out_b = model(filled_b, mask=mask[:, 0])
        assert torch.allclose(out_a[valid], out_b[valid], rtol=0, atol=1e-12)
        assert torch.equal(out_a[~valid], filled_a[~valid])
        assert torch.isnan(out_b[~valid]).all()
        assert torch.isfinite(out_b[valid]).all()


def test_nan_nodata_gives_finite_gradients():
    y = _image(13)
    mask = torch.ones(2, 20, 20, dtype=torch.bool)
    mask[:, 5:10] = False
    y[:, :, 5:10] = float("nan")
    y.requires_grad_(True)
    out = _model("transformer")(y, mask=mask)
    out[mask.unsqueeze(1).expand_as(out)].sum().backward()
    assert torch.isfinite(y.grad[mask.unsqueeze(1).expand_as(y)]).all()
    assert (y.grad[~mask.unsqueeze(1).expand_as(y)] == 0).all()


@pytest.mark.parametrize("pooling", ["joint", "band"])
def test_blockwise_moments_equal_whole_image_statistics(pooling):
    gen = torch.Generator().manual_seed(14)
    y = 1000.0 + 50.0 * torch.randn(2, C, 30, 23, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 1, 30, 23, generator=gen) > 0.3
    mask[:, :, :10] = False  # first row of blocks is entirely nodata
    parts = [
        block_moments(y[..., r:r + 10, c:c + 8], mask[..., r:r + 10, c:c + 8], pooling)
        for r in range(0, 30, 10)
        for c in range(0, 23, 8)
    ]
    mean, std = moments_to_stats(combine_moments(parts))
    ref_mean, ref_std = wne_stats(y, mask, pooling)
    assert mean.dtype == torch.float64
    assert mean.shape == ((2, 1, 1, 1) if pooling == "joint" else (2, C, 1, 1))
    assert torch.allclose(mean, ref_mean, rtol=1e-13, atol=0)
    assert torch.allclose(std, ref_std, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    ("name", "size", "box", "tile"),
    [
        # box = interior crop (rows and columns); tile = processed window around it
        ("dncnn", 40, (12, 28), (7, 33)),
        ("ne-arch", 40, (12, 28), (7, 34)),
        # transformer: origins on multiples of the window (4); halo 8 >= measured RF 7
        ("transformer", 48, (16, 32), (8, 42)),
    ],
)
def test_tiles_with_scene_statistics_match_whole_image(name, size, box, tile):
    backbone = _model(name, wne=False)
    halo = min(box[0] - tile[0], tile[1] - box[1])
    assert halo >= measure_receptive_field(backbone, C, size=48)
    model = WNE(backbone, eps=1e-5)
    y = _image(15, size=size)
    mask = torch.ones(2, 1, size, size, dtype=torch.bool)
    mask[:, :, 20:24, 30:] = False
    stats = wne_stats(y, mask)
    lo, hi = box[0] - tile[0], box[1] - tile[0]
    with torch.no_grad():
        whole = model(y, mask=mask)[..., box[0]:box[1], box[0]:box[1]]
        piece = y[..., tile[0]:tile[1], tile[0]:tile[1]]
        piece_mask = mask[..., tile[0]:tile[1], tile[0]:tile[1]]
        tiled = model(piece, mask=piece_mask, stats=stats)[..., lo:hi, lo:hi]
        per_tile = model(piece, mask=piece_mask)[..., lo:hi, lo:hi]
    assert torch.allclose(tiled, whole, rtol=0, atol=1e-12)
    assert (per_tile - whole).abs().max() > 1e-6  # per-tile statistics change the function


def test_gradients_flow_through_statistics():
    model = _model("dncnn")
    y = _image(16).requires_grad_(True)
    (model(y) ** 2).sum().backward()
    grad_full = y.grad.clone()

    y.grad = None
    mean, std = wne_stats(y)
    (model(y, stats=(mean.detach(), std.detach())) ** 2).sum().backward()
    assert (grad_full - y.grad).abs().max() > 1e-6

    mean, std = (t.detach().requires_grad_(True) for t in wne_stats(y))
    (model(y.detach(), stats=(mean, std)) ** 2).sum().backward()
    assert (mean.grad.abs() > 0).all() and (std.grad.abs() > 0).all()


@pytest.mark.parametrize("name", ["dncnn", "transformer", "ne-arch"])
def test_receptive_field_attribute_matches_measurement(name):
    model = _model(name, wne=False)
    assert measure_receptive_field(model, C, size=48) == model.receptive_field
    assert _model(name).receptive_field == model.receptive_field


def test_transformer_receptive_field_grows_with_shifted_windows():
    rf = [window_transformer_receptive_field(4, d) for d in (1, 2, 3)]
    assert rf[0] < rf[1] < rf[2]
    model = WindowTransformer(C, dim=8, window=4, depth=3, heads=2).double()
    assert measure_receptive_field(model, C, size=48) == rf[2]


@pytest.mark.parametrize("shape", [(1, 13, 29), (5, 5), (1, 1)])
def test_backbones_accept_any_size(shape):
    h, w = shape[-2:]
    y = _image(17, n=1, size=max(h, w))[..., :h, :w]
    for name in ["dncnn", "transformer", "ne-arch"]:
        with torch.no_grad():
            out = _model(name)(y)
        assert out.shape == y.shape
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["dncnn", "transformer", "ne-arch"])
def test_config_rebuilds_the_same_model(name):
    for wne in (True, False):
        model = _model(name, wne=wne, pooling="band")
        clone = build_model(model.config()).double().eval()
        assert clone.config() == model.config()
        clone.load_state_dict(model.state_dict())
        y = _image(18)
        with torch.no_grad():
            assert torch.equal(clone(y), model(y))
    assert isinstance(_model("ne-arch"), NEArch)  # never wrapped
    assert isinstance(_model("dncnn").backbone, DnCNN)


def test_ne_arch_kernels_are_affine_combinations():
    model = _model("ne-arch")
    for conv in [model.head, model.tail, *model.body]:
        sums = conv.effective_weight().flatten(1).sum(dim=1)
        np.testing.assert_allclose(sums.detach().numpy(), 1.0, rtol=0, atol=1e-12)


def test_user_errors_name_the_offending_value():
    with pytest.raises(NdgeoError, match="'unet'"):
        build_denoiser("unet", C)
    with pytest.raises(NdgeoError, match="'pixel'"):
        build_denoiser("dncnn", C, pooling="pixel")
    with pytest.raises(NdgeoError, match="width=15"):
        NEArch(C, width=15)


# --- any nn.Module (issue 15) -----------------------------------------------------------------


class Attn(nn.Module):
    """A user's denoiser written outside ndgeo: pixel embedding, LayerNorm, global multi-head
    softmax attention, MLP, residual. No receptive_field, tile_alignment or config()."""

    def __init__(self, channels: int = C, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(channels, dim, 3, padding=1)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.out = nn.Conv2d(dim, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        t = self.embed(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm1(t)).view(n, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        t = t + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, -1)
        t = t + self.mlp(self.norm2(t))
        return x + self.out(t.transpose(1, 2).reshape(n, -1, h, w))


class Local(nn.Module):
    """A local user backbone with LayerNorm (two 3x3 convolutions and a 5x5 one: radius 4)."""

    def __init__(self, channels: int = C, dim: int = 8) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, dim, 3, padding=1)
        self.norm = nn.LayerNorm(dim)
        self.b = nn.Conv2d(dim, dim, 5, padding=2)
        self.c = nn.Conv2d(dim, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x - self.c(torch.relu(self.b(torch.relu(h))))


@functools.cache
def _attn_wne() -> WNE:
    torch.manual_seed(0)
    return WNE(Attn().double().eval(), eps=0.0)


@FAST
@given(log_a=st.floats(-2, 2), b=st.floats(-1, 1), seed=st.integers(0, 2**16))
def test_any_module_with_attention_and_layernorm_is_normalization_equivariant(log_a, b, seed):
    model = _attn_wne()
    assert not hasattr(model.backbone, "receptive_field")
    y = _image(seed, size=12)
    assert _defect(model, y, 10.0**log_a, b) < 1e-10
    assert _defect(model.backbone, y, 3.0, 0.5) > 1e-3  # the backbone alone is not NE


def test_undeclared_receptive_field_is_measured_once_and_cached():
    torch.manual_seed(0)
    local = WNE(Local())
    calls = []
    local.backbone.register_forward_hook(lambda *_: calls.append(1))
    assert local.receptive_field == 4 and not local.is_global
    first = len(calls)
    assert first > 0 and local.receptive_field == 4 and len(calls) == first  # cached
    assert not calls or local.backbone.c.weight.grad is None  # measured on a copy

    torch.manual_seed(0)
    attn = WNE(Attn())
    assert attn.receptive_field is None and attn.is_global
    with pytest.raises(NdgeoError, match="has no config"):
        attn.config()


def test_zero_initialised_output_does_not_hide_the_field():
    torch.manual_seed(0)
    net = Local()
    nn.init.zeros_(net.c.weight)  # the identity start of training: no gradient reaches the input
    assert measure_receptive_field(net, C, size=24) == 0
    assert WNE(net).receptive_field == 4


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("size", ["small", "default"])
def test_measured_receptive_field_equals_declared_for_every_backbone(name, size):
    torch.manual_seed(0)
    # "default": the constructor defaults (the transformer's window 8, made shallow and narrow
    # to keep the 8 x 8 phases of the probe cheap)
    kw = SMALL[name] if size == "small" else {"dim": 8, "depth": 2} if name == "transformer" else {}
    net = BACKBONES[name](C, **kw).eval()
    declared = net.receptive_field
    assert backbone_field(net, C, net.tile_alignment) == declared
    if name != "ne-arch":
        assert WNE(net).receptive_field == declared


def test_standard_and_bias_free_dncnn():
    std = build_denoiser("dncnn", C, wne=False, depth=4, width=8)
    bf = build_denoiser("dncnn-bf", C, wne=False, depth=4, width=8)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in std.modules()) == 2
    assert std.noise[0].bias is not None and std.noise[-1].bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bf.modules())
    assert all(m.bias is None for m in bf.modules() if isinstance(m, nn.Conv2d))
    y = _image(19).float()
    with torch.no_grad():  # bias-free + ReLU: positively homogeneous, scale-equivariant alone
        assert torch.allclose(bf(7.0 * y), 7.0 * bf(y), rtol=1e-5, atol=1e-5)
    assert build_model(bf.config()).config() == {"kind": "dncnn-bf", "channels": C, "depth": 4,
                                                  "width": 8}


def test_old_dncnn_files_load_as_their_own_architecture(tmp_path):
    """A file written before the config version ('dncnn' = bias-free inner layers, first conv
    with bias, no BatchNorm) is rebuilt as that architecture, weights and outputs intact."""
    torch.manual_seed(0)
    old = DnCNN(C, 4, 8, batchnorm=False, bias=False, first_bias=True).eval()
    for p in old.parameters():
        p.data.normal_(0, 0.1)
    legacy = {"kind": "wne", "pooling": "joint", "eps": 1e-5, "tau": 1e-9,
              "backbone": {"kind": "dncnn", "channels": C, "depth": 4, "width": 8,
                           "batchnorm": False}}
    meta = {"task": "denoise", "bands": [{"name": f"B{i}", "letter": None} for i in range(C)],
            "backbone": "dncnn", "wne": True, "sigma": 0.02, "data_min": 0.0, "data_range": 1.0,
            "config": legacy, "ndgeo_version": "0.1.0"}
    state = {f"backbone.{k}": v.contiguous() for k, v in old.state_dict().items()}
    path = tmp_path / "old.safetensors"
    save_file(state, str(path), metadata={"ndgeo": __import__("json").dumps(meta)})
    model, _ = load_model(path)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.backbone.noise[0].bias is not None and model.backbone.noise[-1].bias is None
    y = _image(20).float()
    with torch.no_grad():
        assert torch.equal(model(y), WNE(old, eps=1e-5)(y))
    save_model(tmp_path / "again.safetensors", model, {k: v for k, v in meta.items()
                                                       if k != "config"})
    again, meta2 = load_model(tmp_path / "again.safetensors")
    assert meta2["config"]["backbone"]["version"] == 2 and not meta2["config"]["backbone"]["bias"]
    with torch.no_grad():
        assert torch.equal(again(y), model(y))
