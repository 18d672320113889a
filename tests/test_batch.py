"""Batch mode (issue 16.5): ``ndgeo apply MODEL 'scenes/*.tif' -o OUTDIR/`` (and ``index``,
``denoise apply``) locally, on a LocalCluster and on a ``dask scheduler`` + ``dask worker``
started as subprocesses: outputs identical to per-scene runs, resumable, failures reported
without stopping the other scenes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from ndgeo.cli import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def scenes(sample_scene, tmp_path_factory) -> Path:
    """Four distinct scenes: the sample, flipped, transposed and cut to 96 px."""
    d = tmp_path_factory.mktemp("scenes")
    with rasterio.open(sample_scene.image) as src:
        profile, data, names = src.profile, src.read(), src.descriptions
    variants = {"a": data, "b": data[:, ::-1], "c": data.transpose(0, 2, 1), "d": data[:, :96, :96]}
    for name, array in variants.items():
        p = dict(profile, height=array.shape[1], width=array.shape[2])
        with rasterio.open(d / f"{name}.tif", "w", **p) as dst:
            dst.write(np.ascontiguousarray(array))
            dst.descriptions = names
    return d


def assert_same_raster(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        px, py = dict(x.profile), dict(y.profile)
        assert str(px.pop("nodata")) == str(py.pop("nodata"))  # NaN != NaN
        assert px == py and x.descriptions == y.descriptions
        assert x.tags() == y.tags()
        np.testing.assert_array_equal(x.read(), y.read())


def single_runs(command: list, scenes: Path, outdir: Path) -> dict[str, Path]:
    """``ndgeo COMMAND... SCENE -o OUTDIR/SCENE`` for every scene, one at a time."""
    outdir.mkdir()
    outputs = {}
    for scene in sorted(scenes.glob("*.tif")):
        out = outdir / scene.name
        result = cli("-q", *command, scene, "-o", out)
        assert result.exit_code == 0, result.output
        outputs[scene.name] = out
    return outputs


@pytest.fixture(scope="module")
def references(nd_model, scenes, tmp_path_factory) -> dict[str, Path]:
    """Per-scene ``ndgeo apply`` outputs (class, proba)."""
    out = tmp_path_factory.mktemp("ref") / "apply"
    return single_runs(["apply", "-p", "class,proba", nd_model.path], scenes, out)


def test_class_maps_get_their_legend_in_batch_mode(nd_model, scenes, tmp_path):
    result = cli("-q", "apply", nd_model.path, scenes / "[ab].tif", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    for stem in ("a", "b"):
        assert (tmp_path / f"{stem}.qml").exists() and (tmp_path / f"{stem}.tif.aux.xml").exists()
        with rasterio.open(tmp_path / f"{stem}.tif") as src:
            assert src.colormap(1)  # class colours in the file too


def test_local_batch_equals_single_runs_and_resumes(nd_model, scenes, references, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = cli("apply", nd_model.path, scenes / "*.tif", "-o", f"{outdir}/", "-p",
                 "class,proba")
    assert result.exit_code == 0, result.output
    assert "wrote 4 of 4 scenes" in result.output
    for name, ref in references.items():
        assert_same_raster(outdir / name, ref)
    # Resumable: a finished output is skipped (untouched), a missing one is written.
    (outdir / "b.tif").unlink()
    before = (outdir / "a.tif").stat().st_mtime_ns
    result = cli("apply", nd_model.path, scenes / "*.tif", "-o", outdir, "-p", "class,proba")
    assert result.exit_code == 0, result.output
    assert "wrote 1 of 4 scenes" in result.output and "3 already there" in result.output
    assert (outdir / "a.tif").stat().st_mtime_ns == before
    assert_same_raster(outdir / "b.tif", references["b.tif"])
    assert not [n for n in os.listdir(outdir) if ".ndgeo-" in n]


def test_local_cluster_batch_writes_on_the_workers(nd_model, scenes, references, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = cli("-q", "apply", nd_model.path, scenes / "*.tif", "-o", outdir, "-p",
                 "class,proba", "--workers", "2")
    assert result.exit_code == 0, result.output
    for name, ref in references.items():
        assert_same_raster(outdir / name, ref)


def test_dask_scheduler_and_worker_subprocesses(nd_model, scenes, references, tmp_path):
    dask = shutil.which("dask")
    assert dask, "distributed's dask command is not installed"
    info = tmp_path / "scheduler.json"
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1",
                                       "--nworkers", "2", "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        outdir = tmp_path / "out"
        outdir.mkdir()
        code = ("from distributed import Client; import sys; c = Client(sys.argv[1]); "
                "c.wait_for_workers(2, timeout=60); c.close()")
        subprocess.run([sys.executable, "-c", code, address], check=True, timeout=120)
        result = cli("-q", "apply", nd_model.path, scenes / "*.tif", "-o", outdir, "-p",
                     "class,proba", "--scheduler", address)
        assert result.exit_code == 0, result.output
        for name, ref in references.items():
            assert_same_raster(outdir / name, ref)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def test_a_failed_scene_is_reported_and_the_others_written(nd_model, scenes, references,
                                                           tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(scenes, inputs)
    data = (inputs / "c.tif").read_bytes()
    (inputs / "c.tif").write_bytes(data[: len(data) // 3])  # truncated
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = cli("-q", "apply", nd_model.path, inputs / "*.tif", "-o", outdir, "-p",
                 "class,proba")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and "c.tif" in lines[0] and "1 of 4 scenes failed" in lines[1], lines
    assert "Traceback" not in result.output
    assert sorted(p.name for p in outdir.glob("*.tif")) == ["a.tif", "b.tif", "d.tif"]
    shutil.copy(scenes / "c.tif", inputs / "c.tif")  # fixed: the re-run does only c
    result = cli("-q", "apply", nd_model.path, inputs / "*.tif", "-o", outdir, "-p",
                 "class,proba")
    assert result.exit_code == 0, result.output
    for name, ref in references.items():
        assert_same_raster(outdir / name, ref)


def test_index_and_denoise_batches_equal_single_runs(scenes, sample_scene, tmp_path):
    den = tmp_path / "den.safetensors"
    result = cli("-q", "denoise", "train", sample_scene.image, "-o", den, "--sigma", "2%",
                 "--steps", "3")
    assert result.exit_code == 0, result.output
    for command in (["index", "--name", "NDVI,NDWI"], ["denoise", "apply", den]):
        refs = single_runs(command, scenes, tmp_path / f"{command[0]}-ref")
        outdir = tmp_path / command[0]
        outdir.mkdir()
        result = cli("-q", *command, scenes / "*.tif", "-o", outdir)
        assert result.exit_code == 0, result.output
        for name, ref in refs.items():
            assert_same_raster(outdir / name, ref)


@pytest.mark.parametrize("case, fragment", [
    ("no-match", "no scene matches"),
    ("no-outdir", "does not exist"),
    ("same-stem", "would both write"),
    ("replace-input", "would replace the input"),
])
def test_batch_refusals_are_one_line(case, fragment, nd_model, scenes, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    pattern = scenes / "*.tif"
    if case == "no-match":
        pattern = scenes / "*.nothing"
    elif case == "no-outdir":
        outdir = f"{tmp_path / 'missing'}/"
    elif case == "same-stem":
        for sub in ("p", "q"):
            (tmp_path / sub).mkdir()
            shutil.copy(scenes / "a.tif", tmp_path / sub / "a.tif")
        pattern = f"{tmp_path}/[pq]/a.tif"
    else:
        outdir = scenes
    before = sorted(os.listdir(scenes))
    result = cli("-q", "apply", nd_model.path, pattern, "-o", outdir)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert sorted(os.listdir(scenes)) == before
