"""Shared fixtures: one small sample scene and one small ND model trained on it by the CLI.

Training is the slow part of the CLI tests, so the model is trained once per session (few epochs,
4 indices) and reused by the train, formula, evaluate, apply and index tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from ndgeo.checkpoint import load_model
from ndgeo.sample import make_sample

#: Sample scene side in pixels: big enough for every class to reach the validation split.
SCENE_SIZE = 128


@pytest.fixture(scope="session")
def sample_scene(tmp_path_factory):
    """``ndgeo.sample.make_sample`` output (scene.tif, labels.tif, labels.gpkg, truth.json).

    Seed 1 is pinned: the formula-recovery test relies on this scene (see its docstring).
    """
    return make_sample(tmp_path_factory.mktemp("sample"), seed=1, size=SCENE_SIZE)


@pytest.fixture(scope="session")
def nd_model(sample_scene, tmp_path_factory):
    """``ndgeo train`` on the sample's vector labels: the model path, report path and CLI result."""
    from ndgeo.cli import app

    out = tmp_path_factory.mktemp("model")
    path, report = out / "nd.safetensors", out / "nd-report.png"
    result = CliRunner().invoke(app, [
        "train", str(sample_scene.image), str(sample_scene.labels_vector), "-o", str(path),
        "--epochs", "15", "--indices", "4", "--report", str(report),
    ])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(path=path, report=report, result=result)


def read_scene(path: str | Path, bands: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(raw float32 (C, H, W) in ``bands`` order (default file order), valid mask (H, W)).

    Valid follows ndgeo's rule for a nodata value: no band equals it (and all are finite).
    """
    with rasterio.open(path) as src:
        data = src.read().astype(np.float32)
        names = list(src.descriptions)
        nodata = src.nodata
    if bands is not None:
        data = data[[names.index(b) for b in bands]]
    valid = np.isfinite(data).all(axis=0)
    if nodata is not None:
        valid &= (data != nodata).all(axis=0)
    return data, valid


@torch.no_grad()
def expected_outputs(model_path: str | Path, raw: np.ndarray, valid: np.ndarray) -> dict:
    """The loaded model run on all valid pixels at once: class ids (1-based), proba, indices.

    Each output is (K, H, W) with NaN (0 for classes) at invalid pixels, like ``ndgeo apply``;
    ``margin`` is the gap between the two largest probabilities (ties may flip argmax).
    """
    model, meta = load_model(model_path)
    x = torch.from_numpy(np.clip(raw[:, valid].T, 0, None).copy())
    proba = torch.softmax(model(x), dim=1).numpy()
    out = {}
    h, w = valid.shape
    top2 = np.sort(proba, axis=1)[:, -2:]
    for name, values in (("proba", proba), ("class", proba.argmax(1)[:, None] + 1.0),
                         ("margin", (top2[:, 1] - top2[:, 0])[:, None])):
        grid = np.full((values.shape[1], h, w), 0 if name == "class" else np.nan)
        grid[:, valid] = values.T
        out[name] = grid
    if meta["config"]["kind"] == "nd":
        values = model.indices(x).numpy()
        grid = np.full((values.shape[1], h, w), np.nan)
        grid[:, valid] = values.T
        out["indices"] = grid
    return out


#: float32 evaluation of the model (and its eps of 1e-6 on bands scaled to ~1) vs float64 formulas.
FLOAT32_SLACK = 1e-5


def rounding_bound(coeff: dict, names: list[str], x: np.ndarray, precision: int) -> np.ndarray:
    """Bound on |printed formula - exact ND| per pixel (rows of ``x``, bands in ``names`` order).

    ``coeff`` is one ``index_coefficients`` dict (largest weight 1). Each printed band
    coefficient (net weight in the numerator, total in the denominator) is off by at most 2h,
    h = 0.5 * 10**-precision (a band on both sides, or a dropped term below h). With X the sum of
    the pixel's bands and S the exact denominator, numerator and denominator move by at most
    d = 2hX, so |dy| <= (d S + |P - Q| d) / (S (S - d)) <= 2r / (1 - r), r = d / S < 1.
    """
    h = 0.5 * 10.0 ** -precision
    total = np.array([coeff["positive"].get(b, 0) + coeff["negative"].get(b, 0) for b in names])
    r = 2 * h * x.sum(1) / (x @ total)
    with np.errstate(divide="ignore"):
        return np.where(r < 1, 2 * r / (1 - r), np.inf)  # r >= 1: the denominator may vanish


def kill_mid_write(proc, directory: Path, out_name: str, *, timeout: float) -> None:
    """SIGKILL ``proc`` once its temporary output for ``out_name`` exists in ``directory``
    (it is still writing), and check that the kill is what ended it."""
    try:
        deadline = time.monotonic() + timeout
        while not any(n.startswith(f".{out_name}.") and n.endswith(".tmp.tif")
                      for n in os.listdir(directory)):
            assert proc.poll() is None, "the run ended before writing"
            assert time.monotonic() < deadline, "no temporary output appeared"
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@contextmanager
def serve_folder(folder: str | Path):
    """Base URL of a loopback HTTP server with Range support over ``folder``, in its own
    process (tests/range_server.py), stopped on exit."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("range_server.py")),
                             str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def helpers():
    """The helpers above, for test modules (conftest is not imported by name)."""
    return SimpleNamespace(read=read_scene, expected=expected_outputs,
                           rounding_bound=rounding_bound, float32_slack=FLOAT32_SLACK,
                           kill_mid_write=kill_mid_write, serve_folder=serve_folder)
