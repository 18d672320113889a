"""``apply --products entropy,margin``: per-pixel uncertainty of the class probabilities."""

from __future__ import annotations

import math

import numpy as np
import rasterio
import torch
from typer.testing import CliRunner

from ndgeo.checkpoint import save_model
from ndgeo.cli import app
from ndgeo.io.raster import open_raster
from ndgeo.nn import NDClassifier

runner = CliRunner()


def _apply(model, image, out, products):
    result = runner.invoke(app, ["-q", "apply", str(model), str(image), "-o", str(out),
                                 "--products", products, "--chunk-size", "64"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        return src.read(), src.descriptions


def _metadata(info, n_classes):
    return {"bands": [{"name": b.name, "letter": b.letter} for b in info.bands],
            "classes": [{"id": i, "name": f"c{i}"} for i in range(n_classes)]}


def test_identical_class_weights_give_entropy_log_c_and_margin_0(sample_scene, tmp_path):
    info = open_raster(sample_scene.image)
    model = NDClassifier(info.count, 4, n_indices=3, head_norm="none").eval()
    with torch.no_grad():
        model.head.weight.copy_(model.head.weight[:1].expand(4, -1))
        model.head.bias.zero_()
    path = tmp_path / "flat.safetensors"
    save_model(path, model, _metadata(info, 4))
    data, names = _apply(path, sample_scene.image, tmp_path / "u.tif", "entropy,margin")
    assert names == ("entropy", "margin")
    valid = np.isfinite(data[0])
    assert valid.mean() > 0.5
    np.testing.assert_allclose(data[0][valid], math.log(4), rtol=1e-5)
    np.testing.assert_allclose(data[1][valid], 0.0, atol=1e-6)


def test_entropy_and_margin_stay_in_range_and_agree_with_proba(nd_model, sample_scene, tmp_path):
    data, names = _apply(nd_model.path, sample_scene.image, tmp_path / "all.tif",
                         "proba,entropy,margin")
    n = len(names) - 2
    proba, entropy, margin = data[:n], data[n], data[n + 1]
    valid = np.isfinite(entropy)
    assert not valid.all() and np.array_equal(valid, np.isfinite(margin))  # nodata kept
    p = proba[:, valid].astype(np.float64)
    expected = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(0)
    np.testing.assert_allclose(entropy[valid], expected, atol=1e-5)
    top = np.sort(p, axis=0)
    np.testing.assert_allclose(margin[valid], top[-1] - top[-2], atol=1e-6)
    assert entropy[valid].min() >= 0 and entropy[valid].max() <= math.log(n) + 1e-6
    assert margin[valid].min() >= 0 and margin[valid].max() <= 1
