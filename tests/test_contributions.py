"""``apply --products contributions``: each learned index's term of the winning class logit."""

from __future__ import annotations

import json

import numpy as np
import rasterio
import torch
from typer.testing import CliRunner

from ndgeo.checkpoint import load_model, save_model
from ndgeo.cli import app
from ndgeo.io.raster import open_raster
from ndgeo.nn import NDClassifier

runner = CliRunner()


def _apply(model, image, out, products, *extra):
    result = runner.invoke(app, ["-q", "apply", str(model), str(image), "-o", str(out),
                                 "--products", products, "--chunk-size", "48", *extra])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        return src.read(), src.descriptions, src.tags()


def _linear_model(image, path, n_classes=3):
    """A linear-head ND model with a BatchNorm whose statistics are far from identity (so the
    folding of the normalisation into the head is exercised)."""
    info = open_raster(image)
    torch.manual_seed(3)
    model = NDClassifier(info.count, n_classes, n_indices=4, head_norm="batchnorm")
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.3, 0.3)
        model.norm.running_var.uniform_(0.05, 0.5)
        model.norm.weight.uniform_(0.5, 2.0)
        model.norm.bias.uniform_(-1.0, 1.0)
        model.head.weight.normal_(0.0, 2.0)
        model.head.bias.normal_(0.0, 1.0)
    meta = {"bands": [{"name": b.name, "letter": b.letter} for b in info.bands],
            "classes": [{"id": i, "name": f"c{i}"} for i in range(n_classes)]}
    save_model(path, model.eval(), meta)
    return path


def test_contributions_plus_bias_equal_the_winning_logit(sample_scene, tmp_path):
    model_path = _linear_model(sample_scene.image, tmp_path / "linear.safetensors")
    data, names, tags = _apply(model_path, sample_scene.image, tmp_path / "c.tif",
                               "class,contributions")
    classes, contributions = data[0], data[1:]
    assert len(names) == 5 and names[0] == "class"
    assert all(n.startswith(f"contribution_ND{k + 1} = (") for k, n in enumerate(names[1:]))
    valid = classes > 0
    assert 0.5 < valid.mean() < 1
    np.testing.assert_array_equal(np.isfinite(contributions), np.broadcast_to(
        valid, contributions.shape))  # nodata kept
    bias = json.loads(tags["NDGEO_CONTRIBUTION_BIAS"])

    model, _ = load_model(model_path)
    with rasterio.open(sample_scene.image) as src:
        raw = src.read().astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(np.clip(raw[:, valid].T, 0, None).copy())).numpy()
    winner = classes[valid].astype(int) - 1
    np.testing.assert_array_equal(winner, logits.argmax(1))
    total = contributions[:, valid].astype(np.float64).sum(0) + np.array(
        [bias[f"c{c}"] for c in winner])
    best = logits[np.arange(len(winner)), winner]
    np.testing.assert_allclose(total, best, rtol=1e-5, atol=1e-5)
    assert np.abs(contributions[:, valid]).max() > 0.1  # real terms, not zeros


def test_contributions_equal_across_local_threads_and_cluster(sample_scene, tmp_path):
    model_path = _linear_model(sample_scene.image, tmp_path / "linear.safetensors")
    local, _, _ = _apply(model_path, sample_scene.image, tmp_path / "local.tif",
                         "contributions")
    cluster, _, _ = _apply(model_path, sample_scene.image, tmp_path / "cluster.tif",
                           "contributions", "--workers", "2")
    assert local.dtype == np.float32 and np.isnan(local).any()
    assert np.array_equal(local, cluster, equal_nan=True)


def test_contributions_refused_for_non_linear_heads(nd_model, sample_scene, tmp_path):
    _, meta = load_model(nd_model.path)
    assert meta["config"]["head_hidden"]  # the default head is an MLP
    result = runner.invoke(app, ["apply", str(nd_model.path), str(sample_scene.image), "-o",
                                 str(tmp_path / "x.tif"), "--products", "contributions"])
    assert result.exit_code == 2
    assert "not a sum of per-index terms" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "x.tif").exists()
