"""ndgeo.engine: chunked runs equal whole-image processing, locally and on dask clusters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_validate

from ndgeo.checkpoint import CACHE_SIZE, cached_load
from ndgeo.engine import Execution, Processor, run, scene_statistics
from ndgeo.engine import plan as engine_plan
from ndgeo.errors import NdgeoError
from ndgeo.io.raster import open_raster
from ndgeo.io.tiles import chunk_shape

TRANSFORM = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5100000.0)
NODATA = 0
HERE = Path(__file__).resolve().parent


# --- test processors (module level: picklable and importable by dask workers) ---------------


class NormalizedDifference(Processor):
    """Per-pixel (a - b) / (a + b) of the first two bands."""

    halo = 0
    out_count = 1
    out_dtype = "float32"
    out_nodata = -9999.0
    descriptions = ["(A-B)/(A+B)"]
    tags = {"formula": "(A-B)/(A+B)"}

    def __call__(self, block, valid):
        a, b = block[0], block[1]
        return ((a - b) / (a + b))[None]


class BoxMean(Processor):
    """Mean of the valid pixels in a (2 halo + 1)^2 window, per band; needs a halo."""

    out_dtype = "float32"
    out_nodata = -1.0

    def __init__(self, halo=1, bands=2):
        self.halo = halo
        self.out_count = bands
        self.descriptions = [f"box{i}" for i in range(bands)]

    def __call__(self, block, valid):
        k = self.halo
        values = np.pad(np.where(valid, block, 0.0), ((0, 0), (k, k), (k, k)))
        weight = np.pad(valid.astype("float32"), k)
        h, w = valid.shape
        total = np.zeros_like(block)
        count = np.zeros(valid.shape, dtype="float32")
        for dy in range(2 * k + 1):
            for dx in range(2 * k + 1):
                total += values[:, dy : dy + h, dx : dx + w]
                count += weight[dy : dy + h, dx : dx + w]
        return total / np.maximum(count, 1)


class Classes(Processor):
    """Three classes from the normalized difference; uint8 with a colour table."""

    halo = 0
    out_count = 1
    out_dtype = "uint8"
    out_nodata = 255
    descriptions = ["class"]
    tags = {"classes": json.dumps(["low", "mid", "high"])}
    colormap = {0: (0, 0, 255, 255), 1: (0, 200, 0, 255), 2: (200, 0, 0, 255)}

    def __call__(self, block, valid):
        nd = (block[0] - block[1]) / (block[0] + block[1])
        return np.digitize(nd, [-0.3, 0.3])[None]


class TorchThreads(Processor):
    """Writes the torch thread count a task sees after ``one_torch_thread``."""

    halo = 0
    out_count = 1
    out_dtype = "uint8"
    out_nodata = 255

    def __call__(self, block, valid):
        import torch

        from ndgeo.device import one_torch_thread

        one_torch_thread()
        return np.full((1, *valid.shape), torch.get_num_threads(), dtype="uint8")


class CountingND(NormalizedDifference):
    """Appends one line per call to a file: counts calls across threads and processes."""

    def __init__(self, log):
        self.log = str(log)

    def __call__(self, block, valid):
        with open(self.log, "a") as f:
            f.write(f"{block.shape}\n")
        return super().__call__(block, valid)


class FailingND(NormalizedDifference):
    """Raises on the n-th block it sees (a processor bug mid-run)."""

    def __init__(self, log, fail_at=3):
        self.log, self.fail_at = str(log), fail_at

    def __call__(self, block, valid):
        with open(self.log, "a") as f:
            f.write("x\n")
        if len(Path(self.log).read_text().splitlines()) >= self.fail_at:
            raise RuntimeError("processor failed")
        return super().__call__(block, valid)


class SlowND(NormalizedDifference):
    def __init__(self, delay):
        self.delay = delay

    def __call__(self, block, valid):
        time.sleep(self.delay)
        return super().__call__(block, valid)


# --- helpers ---------------------------------------------------------------------------------


def make_image(path, height=77, width=100, count=3, dtype="uint16", nodata=NODATA, seed=0,
               block=32):
    """A tiled GeoTIFF with a nodata border, an isolated nodata pixel per band and noise."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 5000, (count, height, width)).astype(dtype)
    if nodata is not None:
        data[:, :, :7] = nodata  # left border: every band
        data[1, 40, 50] = nodata  # one band only -> pixel invalid
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=dtype,
        crs="EPSG:32632", transform=TRANSFORM, nodata=nodata, tiled=True,
        blockxsize=block, blockysize=block, compress="deflate",
    ) as dst:
        dst.write(data)
    return data


def whole_image(processor, raw, positions, nodata):
    """The reference: the processor on the whole in-memory image, masked like the engine."""
    sel = raw[positions]
    invalid = ~np.isfinite(sel.astype("float64")).all(axis=0)
    if nodata is not None:
        invalid |= (sel == nodata).any(axis=0)
    block = sel.astype("float32")
    block[:, invalid] = np.nan
    out = np.asarray(processor(block, ~invalid))
    out[:, invalid] = processor.out_nodata
    return out.astype(processor.out_dtype)


def read(path):
    with rasterio.open(path) as src:
        return src.read()


# --- local runs ------------------------------------------------------------------------------


def test_chunk_shape_rounds_to_file_blocks():
    assert chunk_shape(1000, (256, 256), (10000, 9000)) == (1024, 1024)
    assert chunk_shape(40, (32, 32), (77, 100)) == (32, 32)
    assert chunk_shape(5000, (32, 32), (77, 100)) == (77, 100)
    assert chunk_shape(100, (1, 300), (50, 300)) == (50, 300)  # striped file
    with pytest.raises(NdgeoError, match="positive"):
        chunk_shape(0, (32, 32), (77, 100))


@pytest.mark.parametrize("chunk", [32, 64, 96, 1000])
def test_per_pixel_output_equals_whole_image(tmp_path, chunk):
    raw = make_image(tmp_path / "in.tif")
    image = open_raster(tmp_path / "in.tif")
    proc = NormalizedDifference()
    result = run(proc, image, [2, 1], tmp_path / 'out.tif', execution=Execution(chunk_size=chunk))
    out = read(tmp_path / "out.tif")
    np.testing.assert_array_equal(out, whole_image(proc, raw, [2, 1], NODATA))
    assert (out[0, :, :7] == -9999).all() and out[0, 40, 50] == -9999
    assert result.pixels == 77 * 100 and result.skipped == 0


@pytest.mark.parametrize(("halo", "chunk"), [(1, 32), (1, 64), (2, 32), (3, 96)])
def test_halo_processor_is_seamless(tmp_path, halo, chunk):
    raw = make_image(tmp_path / "in.tif")
    proc = BoxMean(halo=halo)
    run(proc, open_raster(tmp_path / 'in.tif'), [0, 1], tmp_path / 'out.tif',
        execution=Execution(chunk_size=chunk))
    np.testing.assert_array_equal(read(tmp_path / "out.tif"), whole_image(proc, raw, [0, 1], 0))


def test_non_finite_float_input_becomes_output_nodata(tmp_path):
    raw = make_image(tmp_path / "in.tif", dtype="float32", nodata=None)
    raw[0, 10, 10], raw[1, 20, 30], raw[0, 70:, :] = np.nan, np.inf, np.nan
    with rasterio.open(tmp_path / "in.tif", "r+") as dst:
        dst.write(raw)
    proc = NormalizedDifference()
    run(proc, open_raster(tmp_path / 'in.tif'), [0, 1], tmp_path / 'out.tif',
        execution=Execution(chunk_size=32))
    out = read(tmp_path / "out.tif")
    assert out[0, 10, 10] == out[0, 20, 30] == -9999 and (out[0, 70:] == -9999).all()
    np.testing.assert_array_equal(out, whole_image(proc, raw, [0, 1], None))


def test_nodata_override_masks_more(tmp_path):
    raw = make_image(tmp_path / "in.tif")
    raw[:, 50:, :] = 4242
    with rasterio.open(tmp_path / "in.tif", "r+") as dst:
        dst.write(raw)
    proc = NormalizedDifference()
    run(proc, open_raster(tmp_path / "in.tif", nodata=4242), [0, 1], tmp_path / "o.tif")
    out = read(tmp_path / "o.tif")
    assert (out[0, 50:] == -9999).all()
    np.testing.assert_array_equal(out, whole_image(proc, raw, [0, 1], 4242))


@pytest.mark.parametrize("kind", ["internal_mask", "alpha_band"])
def test_gdal_mask_or_alpha_band_marks_pixels_invalid(tmp_path, kind):
    """A GDAL per-dataset mask or an alpha band (no nodata value) masks output and statistics."""
    path = tmp_path / "in.tif"
    raw = make_image(path, nodata=None, count=3 if kind == "internal_mask" else 4)
    keep = np.ones(raw.shape[1:], dtype=bool)
    keep[:, :9] = False
    keep[30:40, 60:90] = False
    if kind == "internal_mask":
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
            dst.write_mask(np.where(keep, 255, 0).astype("uint8"))
    else:
        raw[3] = np.where(keep, 65535, 0)
        with rasterio.open(path) as src:
            profile = src.profile
        with rasterio.open(path, "w", **profile) as dst:
            dst.colorinterp = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined,
                               ColorInterp.alpha]
            dst.write(raw)
        with rasterio.open(path) as src:
            assert src.colorinterp[3] == ColorInterp.alpha
    image = open_raster(path)
    assert image.has_mask and image.nodata is None
    proc = NormalizedDifference()
    run(proc, image, [0, 1], tmp_path / 'out.tif', execution=Execution(chunk_size=32))
    out = read(tmp_path / "out.tif")[0]
    assert (out[~keep] == -9999).all() and (out[keep] != -9999).all()
    expected = whole_image(proc, raw, [0, 1], None)[0]
    np.testing.assert_array_equal(out[keep], expected[keep])
    stats = scene_statistics(image, [0, 1], execution=Execution(chunk_size=32))
    assert stats["count"] == keep.sum()
    np.testing.assert_allclose(stats["mean"], raw[:2, keep].mean(axis=1), rtol=1e-12)


def test_tasks_run_torch_on_one_thread_even_after_someone_changed_it(tmp_path):
    """Training restores its caller's torch thread count; engine tasks must still get one
    thread each (two per task made inference 3.6x slower and changed float results)."""
    import torch

    make_image(tmp_path / "in.tif")
    image = open_raster(tmp_path / "in.tif")
    before = torch.get_num_threads()
    try:
        run(TorchThreads(), image, [0], tmp_path / 'a.tif',
            execution=Execution(chunk_size=32, threads=2))
        torch.set_num_threads(2)  # e.g. ndgeo.train restoring the caller's count
        run(TorchThreads(), image, [0], tmp_path / 'b.tif',
            execution=Execution(chunk_size=32, threads=2))
    finally:
        torch.set_num_threads(before)
    for name in ("a.tif", "b.tif"):
        seen = read(tmp_path / name)[0]
        assert set(np.unique(seen[seen != 255]).tolist()) == {1}


def test_all_nodata_windows_are_not_processed(tmp_path):
    raw = make_image(tmp_path / "in.tif")
    raw[:, :, :64] = NODATA  # first two 32-px window columns are empty
    with rasterio.open(tmp_path / "in.tif", "r+") as dst:
        dst.write(raw)
    log = tmp_path / "calls.log"
    proc = CountingND(log)
    result = run(proc, open_raster(tmp_path / 'in.tif'), [0, 1], tmp_path / 'out.tif',
        execution=Execution(chunk_size=32))
    calls = log.read_text().splitlines()
    assert result.windows == 12 and result.skipped == 6 and len(calls) == 6
    np.testing.assert_array_equal(read(tmp_path / "out.tif"), whole_image(proc, raw, [0, 1], 0))


def test_georeferencing_descriptions_tags_colour_table(tmp_path):
    raw = make_image(tmp_path / "in.tif")
    proc = Classes()
    run(proc, open_raster(tmp_path / 'in.tif'), [2, 0], tmp_path / 'c.tif',
        creation_options={'BLOCKXSIZE': 64, 'BLOCKYSIZE': 64},
        execution=Execution(chunk_size=64))
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.crs.to_epsg() == 32632 and src.transform == TRANSFORM
        assert src.descriptions == ("class",) and src.nodata == 255
        assert json.loads(src.tags()["classes"]) == ["low", "mid", "high"]
        assert src.colormap(1)[1] == (0, 200, 0, 255)
        assert src.block_shapes[0] == (64, 64) and src.dtypes[0] == "uint8"
        np.testing.assert_array_equal(src.read(), whole_image(proc, raw, [2, 0], 0))


def test_progress_reports_all_pixels(tmp_path):
    make_image(tmp_path / "in.tif")
    seen = []
    run(NormalizedDifference(), open_raster(tmp_path / 'in.tif'), [0, 1], tmp_path / 'o.tif',
        progress=lambda done, total: seen.append((done, total)),
        execution=Execution(chunk_size=32))
    assert len(seen) == 12 and seen[-1] == (7700, 7700)
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:], strict=False))


def test_processor_error_leaves_nothing_and_keeps_existing_output(tmp_path):
    make_image(tmp_path / "in.tif")
    image = open_raster(tmp_path / "in.tif")
    with pytest.raises(RuntimeError, match="processor failed"):
        run(FailingND(tmp_path / 'a.log'), image, [0, 1], tmp_path / 'out.tif',
            execution=Execution(chunk_size=32))
    assert sorted(os.listdir(tmp_path)) == ["a.log", "in.tif"]
    (tmp_path / "out.tif").write_bytes(b"keep me")
    with pytest.raises(RuntimeError, match="processor failed"):
        run(FailingND(tmp_path / 'b.log'), image, [0, 1], tmp_path / 'out.tif', overwrite=True,
            execution=Execution(chunk_size=32))
    assert (tmp_path / "out.tif").read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["a.log", "b.log", "in.tif", "out.tif"]


def test_output_checks_happen_before_compute(tmp_path):
    make_image(tmp_path / "in.tif")
    image = open_raster(tmp_path / "in.tif")
    (tmp_path / "out.tif").write_bytes(b"x")
    log = tmp_path / "calls.log"
    with pytest.raises(NdgeoError, match="exists; use --overwrite"):
        run(CountingND(log), image, [0, 1], tmp_path / "out.tif")
    with pytest.raises(NdgeoError, match="does not exist"):
        run(CountingND(log), image, [0, 1], tmp_path / "missing" / "out.tif")
    with pytest.raises(NdgeoError, match="is the input"):
        run(CountingND(log), image, [0, 1], tmp_path / "in.tif", overwrite=True)
    with pytest.raises(NdgeoError, match=r"band positions \[3\]"):
        run(CountingND(log), image, [0, 3], tmp_path / "new.tif")
    assert not log.exists()


def test_dry_run_returns_json_plan_without_writing(tmp_path):
    make_image(tmp_path / "in.tif")
    plan = engine_plan(BoxMean(halo=2), open_raster(tmp_path / 'in.tif'), [1, 0],
        tmp_path / 'o.tif',
        execution=Execution(chunk_size=64, threads=2))
    assert json.loads(json.dumps(plan)) == plan
    assert plan["chunks"] == 4 and plan["chunk_shape"] == [64, 64] and plan["halo"] == 2
    assert plan["bands"] == ["band_2", "band_1"] and plan["read_shape"] == [68, 68]
    assert plan["output_profile"]["creation_options"]["COMPRESS"] == "ZSTD"  # float32 output
    assert plan["in_flight"] == 4 and plan["estimated_peak_memory_mb"] > 0
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


def test_cog_output_validates(tmp_path):
    raw = make_image(tmp_path / "in.tif", height=600, width=520, block=64)
    proc = NormalizedDifference()
    run(proc, open_raster(tmp_path / 'in.tif'), [0, 1], tmp_path / 'c.tif', cog=True,
        execution=Execution(chunk_size=128))
    assert cog_validate(str(tmp_path / "c.tif"), quiet=True)[0]
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.overviews(1) == [2, 4]
        np.testing.assert_array_equal(src.read(), whole_image(proc, raw, [0, 1], 0))
        assert np.abs(src.read(1, out_shape=(300, 260))[:, 10:]).max() > 0
    assert sorted(os.listdir(tmp_path)) == ["c.tif", "in.tif"]


def test_scene_statistics_match_numpy(tmp_path):
    raw = make_image(tmp_path / "in.tif")
    stats = scene_statistics(open_raster(tmp_path / 'in.tif'), [2, 0],
        execution=Execution(chunk_size=32))
    sel = raw[[2, 0]].astype("float64")
    valid = (sel != 0).all(axis=0)
    values = sel[:, valid]
    assert stats["count"] == valid.sum() and stats["joint_count"] == 2 * valid.sum()
    np.testing.assert_allclose(stats["mean"], values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], values.std(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats["joint_mean"], values.mean(), rtol=1e-12)
    np.testing.assert_allclose(stats["joint_std"], values.std(), rtol=1e-12)


def test_cached_load_once_per_file_version(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"v1")
    loads = []

    def loader(path):
        loads.append(path)
        return Path(path).read_bytes()

    assert cached_load(weights, loader) == b"v1"
    assert cached_load(str(weights), loader) == b"v1"
    assert len(loads) == 1
    weights.write_bytes(b"v2")
    os.utime(weights, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert cached_load(weights, loader) == b"v2" and len(loads) == 2


def test_cached_load_keeps_only_the_most_recently_used(tmp_path):
    loads = []

    def loader(path):
        loads.append(Path(path).name)
        return Path(path).name

    files = []
    for i in range(CACHE_SIZE + 1):
        files.append(tmp_path / f"m{i}.bin")
        files[-1].write_bytes(b"x")
    for f in files[:CACHE_SIZE]:
        cached_load(f, loader)
    cached_load(files[0], loader)  # m0 is now the most recent; m1 the least
    cached_load(files[CACHE_SIZE], loader)  # evicts m1
    assert len(loads) == CACHE_SIZE + 1
    cached_load(files[0], loader)
    assert len(loads) == CACHE_SIZE + 1
    cached_load(files[1], loader)
    assert loads[-1] == "m1.bin" and len(loads) == CACHE_SIZE + 2


# --- distributed -----------------------------------------------------------------------------


def _worker_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_workers(address, n, timeout=30):
    from distributed import Client

    with Client(address, timeout="20s") as client:
        client.wait_for_workers(n, timeout=timeout)


def test_local_cluster_processes_equal_local_threads(tmp_path):
    make_image(tmp_path / "in.tif", height=130, width=100)
    image = open_raster(tmp_path / "in.tif")
    run(BoxMean(), image, [0, 2], tmp_path / 'local.tif', execution=Execution(chunk_size=32))
    result = run(BoxMean(), image, [0, 2], tmp_path / 'dist.tif',
        execution=Execution(chunk_size=32, workers=2))
    assert result.scheduler.startswith("distributed") and result.windows == 20
    assert read(tmp_path / "dist.tif").tobytes() == read(tmp_path / "local.tif").tobytes()


def test_scheduler_and_worker_subprocesses_equal_local(tmp_path):
    make_image(tmp_path / "in.tif", height=130, width=100)
    image = open_raster(tmp_path / "in.tif")
    run(NormalizedDifference(), image, [1, 0], tmp_path / 'local.tif',
        execution=Execution(chunk_size=64))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = _worker_env()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
             "--no-nanny", "--no-dashboard", "--local-directory", str(tmp_path / "w")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        _wait_for_workers(address, 1)
        log = tmp_path / "calls.log"
        result = run(CountingND(log), image, [1, 0], tmp_path / 'remote.tif',
            execution=Execution(chunk_size=64, scheduler=address))
        assert result.scheduler.startswith("distributed tcp://127.0.0.1")
        assert len(log.read_text().splitlines()) == result.windows - result.skipped == 6
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    assert read(tmp_path / "remote.tif").tobytes() == read(tmp_path / "local.tif").tobytes()


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    make_image(tmp_path / "in.tif")
    start = time.monotonic()
    with pytest.raises(NdgeoError, match=r"dask scheduler tcp://127\.0\.0\.1:\d+ "
                                         r"(cannot be reached|did not answer) within 3 s"):
        run(NormalizedDifference(), open_raster(tmp_path / 'in.tif'), [0, 1], tmp_path / 'o.tif',
            execution=Execution(scheduler=f'tcp://127.0.0.1:{_free_port()}', timeout=3))
    assert time.monotonic() - start < 20  # bounded by the timeout, not distributed's default
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


# --- SIGKILL ---------------------------------------------------------------------------------

_KILL_SCRIPT = """
import sys
from ndgeo.engine import Execution, run
from ndgeo.io.raster import open_raster
from test_engine import SlowND
run(SlowND(0.02), open_raster(sys.argv[1]), [0, 1], sys.argv[2],
    execution=Execution(chunk_size=32, threads=2))
"""


def test_sigkill_mid_run_leaves_no_output(tmp_path, helpers):
    raw = make_image(tmp_path / "in.tif", height=512, width=512)
    out = tmp_path / "out.tif"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "in.tif"), str(out)],
        env=_worker_env(),
    )
    helpers.kill_mid_write(proc, tmp_path, "out.tif", timeout=30)
    assert not out.exists()
    proc2 = NormalizedDifference()
    run(proc2, open_raster(tmp_path / 'in.tif'), [0, 1], out, execution=Execution(chunk_size=128))
    np.testing.assert_array_equal(read(out), whole_image(proc2, raw, [0, 1], NODATA))
