"""Start-up of ``ndgeo apply`` on the CPU (issue 16.3): no torch, xarray or dask before the first
pixel, with numpy kernels bit-identical to the torch band-major modules."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch

from ndgeo import kernels
from ndgeo.checkpoint import (
    _exact_weights,
    classifier_inference,
    inference_cache_dir,
    load_classifier,
)
from ndgeo.nn import MLP, NDClassifier
from ndgeo.nn.inference import band_major

HEAVY = ("torch", "xarray", "rioxarray", "dask", "distributed", "matplotlib", "scipy",
         "sklearn", "pandas", "geopandas", "pyogrio", "spyndex")

#: Runs the CLI in this interpreter, then prints the heavy modules it imported (JSON).
_PROBE = (
    "import sys, json\n"
    "from ndgeo.cli import main\n"
    "heavy = json.loads(sys.argv[2])\n"
    "sys.argv = ['ndgeo'] + json.loads(sys.argv[1])\n"
    "try:\n    main()\nexcept SystemExit as e:\n    code = e.code or 0\n"
    "print(json.dumps([code, sorted(m for m in heavy if m in sys.modules)]))\n"
)


def _cli_imports(args: list[str], cache) -> tuple[int, list[str]]:
    env = {**os.environ, "NDGEO_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    code, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    return code, heavy


def test_cpu_apply_imports_no_heavy_library_once_the_model_is_known(nd_model, sample_scene,
                                                                     tmp_path):
    """The first run of a model file folds it with torch and caches the result; every later
    CPU run (same content) reads the cache: no torch, xarray, dask, matplotlib, scipy."""
    cache = tmp_path / "cache"
    outs = [tmp_path / "first.tif", tmp_path / "second.tif"]
    args = ["-q", "apply", str(nd_model.path), str(sample_scene.image), "-o"]
    code, first = _cli_imports([*args, str(outs[0]), "--device", "cpu"], cache)
    assert code == 0 and "torch" in first  # folded once
    assert len(list((cache / "models").glob("*.npz"))) == 1
    code, second = _cli_imports([*args, str(outs[1])], cache)  # --device auto, no GPU here
    assert code == 0
    if not os.path.exists("/dev/nvidiactl"):
        assert second == []
    with rasterio.open(outs[0]) as a, rasterio.open(outs[1]) as b:
        assert np.array_equal(a.read(), b.read())


def test_index_and_help_import_no_heavy_library(sample_scene, tmp_path):
    code, heavy = _cli_imports(["-q", "index", str(sample_scene.image), "-o",
                                str(tmp_path / "ndvi.tif"), "--name", "NDVI"], tmp_path)
    assert code == 0 and [m for m in heavy if m != "spyndex"] == []
    code, heavy = _cli_imports(["--help"], tmp_path)
    assert code == 0 and heavy == []


def test_cpu_class_map_and_indices_equal_the_torch_modules_bit_for_bit(nd_model, sample_scene,
                                                                       tmp_path, helpers):
    """``ndgeo apply`` (numpy kernels) against torch's band-major module on every valid pixel:
    identical class ids and identical float32 indices (not merely close)."""
    from typer.testing import CliRunner

    from ndgeo.cli import app

    model, meta = load_classifier(nd_model.path)
    names = [b["name"] for b in meta["bands"]]
    raw, valid = helpers.read(sample_scene.image, names)
    valid &= (raw > 0).any(axis=0)
    net = band_major(model)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(raw[:, valid]))
        ids = net(x).argmax(dim=0).numpy() + 1
        indices = net.indices(x).numpy()
    for product, want in (("class", ids[None]), ("indices", indices)):
        out = tmp_path / f"{product}.tif"
        result = CliRunner().invoke(app, ["-q", "apply", str(nd_model.path),
                                          str(sample_scene.image), "-o", str(out), "-p", product,
                                          "--device", "cpu", "--batch-size", "1000"])
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as src:
            got = src.read()[:, valid]
        assert got.dtype == want.dtype or product == "class"
        assert np.array_equal(got, want.astype(got.dtype)), product


def _randomised(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        for b in model.buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("make", [
    lambda: NDClassifier(10, 5, n_indices=32, head_norm="batchnorm", head_hidden=[64]),
    lambda: NDClassifier(10, 4, n_indices=16, head_norm="batchnorm"),
    lambda: NDClassifier(10, 4, n_indices=8, depth=2, head_norm="affine", head_hidden=[16]),
    lambda: NDClassifier(6, 3, n_indices=4, head_norm="none"),
    lambda: MLP(10, 5),
], ids=["nd32-h64", "nd16", "nd-depth2", "nd-plain", "mlp"])
def test_kernels_equal_torch_band_major_modules(make, request):
    net = band_major(_randomised(make()))
    weights = net.numpy_weights()
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 6000, (weights.weights[0].shape[1] if weights.kind == "mlp"
                              else weights.first.shape[1], 5000)).astype(np.float32)
    x[:, :7] = 0.0
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
        want_idx = net.indices(torch.from_numpy(x)).numpy() if weights.kind == "nd" else None
    # The layout the first-fold probe trusts must be bit-identical on other pixels too; a
    # layout it does not trust (another BLAS kernel sums a short inner dimension otherwise, e.g.
    # MKL vs OpenBLAS's small-matrix kernels on AVX-512) agrees to rounding, and a model none
    # reproduces stays on torch. The default architecture gets the fast layout and the MLP an
    # exact one on this CPU.
    chosen = _exact_weights(net)
    if request.node.callspec.id == "nd32-h64":
        assert chosen is not None and chosen.layout == "pixels", chosen
    if request.node.callspec.id == "mlp":
        assert chosen is not None, "the probe sends the MLP back to torch on this CPU"
    for layout in ("pixels", "bands"):
        w = dataclasses.replace(weights, layout=layout)
        got = kernels.run_columns(lambda b, w=w: kernels.forward(w, b), x, 1234)
        idx = (kernels.run_columns(lambda b, w=w: kernels.indices(w, b), x, 999)
               if want_idx is not None else None)
        if chosen is not None and chosen.layout == layout:
            assert np.array_equal(got.view(np.uint32), logits.view(np.uint32))
            assert np.array_equal(kernels.argmax_rows(got), logits.argmax(axis=0))
            if idx is not None:
                assert np.array_equal(idx.view(np.uint32), want_idx.view(np.uint32))
        else:
            np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
            if idx is not None:
                np.testing.assert_allclose(idx, want_idx, rtol=0, atol=1e-5)


def test_clamp_keeps_negative_zero_and_nan_like_torch():
    x = np.array([-0.0, 0.0, -1.5, np.nan, 2.0, -np.inf] * 5, dtype=np.float32)
    want = torch.from_numpy(x.copy()).clamp_min(0).numpy()
    assert np.array_equal(kernels.clamp_min_zero(x.copy()).view(np.uint32), want.view(np.uint32))


def test_inference_cache_is_keyed_by_content_and_rebuilt_when_broken(nd_model, tmp_path,
                                                                     monkeypatch):
    from ndgeo import checkpoint

    monkeypatch.setenv("NDGEO_CACHE_DIR", str(tmp_path))
    assert inference_cache_dir() == tmp_path / "models"
    meta, coefficients, weights = checkpoint._classifier_inference(str(nd_model.path))
    entries = list((tmp_path / "models").glob("*.npz"))
    assert len(entries) == 1
    again = checkpoint._classifier_inference(str(nd_model.path))  # read from the entry
    assert again[0] == meta and again[1] == coefficients
    assert all(np.array_equal(a, b) for a, b in zip(again[2].weights, weights.weights,
                                                    strict=True))
    entries[0].write_bytes(b"not an npz")
    rebuilt = checkpoint._classifier_inference(str(nd_model.path))
    assert np.array_equal(rebuilt[2].first, weights.first)
    monkeypatch.setenv("NDGEO_CACHE_DIR", "")
    assert inference_cache_dir() is None
    assert classifier_inference(nd_model.path)[0] == meta


def test_inference_cache_entry_belongs_to_the_machine_that_made_it(nd_model, tmp_path,
                                                                   monkeypatch):
    """Whether the numpy kernels are exact depends on the CPU, torch and MKL_CBWR: an entry
    made under other ones (a shared home directory) is not read, a new one is made."""
    from ndgeo import checkpoint

    monkeypatch.setenv("NDGEO_CACHE_DIR", str(tmp_path))
    checkpoint._classifier_inference(str(nd_model.path))
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    checkpoint._classifier_inference(str(nd_model.path))
    entries = sorted(p.name for p in (tmp_path / "models").glob("*.npz"))
    assert len(entries) == 2
    assert len({name.split(".")[0] for name in entries}) == 1  # same content digest
