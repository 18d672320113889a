"""Faults and hostile input (issue 13): full disks, signals, races, stale temporaries, tampered
model files, malformed options, silent schedulers, long names, file modes, quiet clusters.

Every case runs the real ``ndgeo`` console script in a subprocess (resource limits, signals and
races need a real process) and checks the README's promises: one line and exit code 2 on bad
input or a failed write, nothing written or half-written, no temporary left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from safetensors.torch import load_file, save_file

NDGEO = shutil.which("ndgeo") or "ndgeo-console-script-not-installed"


def ndgeo(*args, fsize: int | None = None, umask: int | None = None, timeout: float = 180,
          **popen) -> subprocess.CompletedProcess:
    """Run ``ndgeo ARGS``; ``fsize`` caps the size of any file it writes (RLIMIT_FSIZE: writes
    beyond it fail with EFBIG, as on a full disk), ``umask`` sets its umask."""

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if umask is not None:
            os.umask(umask)

    return subprocess.run([NDGEO, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, **popen)


def one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr starting with ``error:``, containing fragments."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    """Hidden ndgeo temporaries in ``directory``."""
    return sorted(n for n in os.listdir(directory) if ".ndgeo-" in n)


@pytest.fixture(scope="module")
def big_scene(sample_scene, tmp_path_factory) -> Path:
    """The sample tiled 4 x 4 (512 x 512, 128 px blocks): slow enough to signal mid-write."""
    with rasterio.open(sample_scene.image) as src:
        profile, data, names = src.profile, src.read(), src.descriptions
    path = tmp_path_factory.mktemp("big") / "big.tif"
    profile.update(width=512, height=512, tiled=True, blockxsize=128, blockysize=128)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.tile(data, (1, 4, 4)))
        dst.descriptions = names
    return path


@pytest.fixture(scope="module")
def denoiser(sample_scene, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("den") / "den.safetensors"
    result = ndgeo("-q", "denoise", "train", sample_scene.image, "-o", path, "--sigma", "2%",
                   "--steps", "3")
    assert result.returncode == 0, result.stderr
    return path


# ------------------------------------------------------------------ 1. full disks


FULL = ("no space left",)


@pytest.mark.parametrize("case", ["apply", "apply-cog", "index", "train-model", "train-report",
                                  "sample-data", "denoise-model", "denoise-apply"])
def test_full_disk_is_one_line_and_leaves_nothing(case, nd_model, sample_scene, denoiser,
                                                  tmp_path):
    out, scene, labels = tmp_path / "out", sample_scene.image, sample_scene.labels_raster
    out.mkdir()
    fsize = 4096
    if case == "apply":
        args, target = ["apply", nd_model.path, scene, "-o", out / "c.tif", "-p",
                        "class,proba"], out / "c.tif"
    elif case == "apply-cog":
        args, target = ["apply", nd_model.path, scene, "-o", out / "c.tif", "-p", "class,proba",
                        "--cog"], out / "c.tif"
        fsize = 200_000  # the GeoTIFF fits, its COG copy with overviews does not
    elif case == "index":
        args, target = ["index", scene, "-o", out / "i.tif", "--name", "NDVI"], out / "i.tif"
    elif case == "train-model":
        args, target = ["train", scene, labels, "-o", out / "m.safetensors", "--epochs", "1",
                        "--no-report"], out / "m.safetensors"
    elif case == "train-report":
        args, target = ["train", scene, labels, "-o", out / "m.safetensors", "--epochs", "1",
                        "--report", out / "r.png"], out / "r.png"
        fsize = 30_000  # the model fits, the PNG does not
    elif case == "sample-data":
        args, target = ["sample-data", out / "s"], out / "s" / "scene.tif"
    elif case == "denoise-model":
        args, target = ["denoise", "train", scene, "-o", out / "d.safetensors", "--sigma", "2%",
                        "--steps", "1"], out / "d.safetensors"
    else:
        args, target = ["denoise", "apply", denoiser, scene, "-o", out / "d.tif"], out / "d.tif"
    result = ndgeo("-q", *args, fsize=fsize)
    one_error_line(result, *FULL)
    assert not target.exists()
    for directory in (out, target.parent):
        if directory.exists():
            assert leftovers(directory) == []


def test_full_disk_with_progress_bar_still_ends_in_one_error_line(nd_model, sample_scene,
                                                                  tmp_path):
    result = ndgeo("apply", nd_model.path, sample_scene.image, "-o", tmp_path / "c.tif", "-p",
                   "class,proba", fsize=4096)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "no space left" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "TIFF" not in result.stderr
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ 2, 3. signals, stale temps


def _run_until_temporary(args: list, directory: Path, out_name: str) -> subprocess.Popen:
    proc = subprocess.Popen([NDGEO, "-q", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(n.startswith(f".{out_name}.") and ".tmp" in n for n in os.listdir(directory)):
        assert proc.poll() is None, ("the run ended before writing", proc.communicate())
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "the run finished before it could be signalled"
    return proc


@pytest.mark.parametrize("command", ["apply", "denoise"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_mid_write_cleans_up(command, signum, nd_model, denoiser, big_scene, tmp_path):
    out = tmp_path / "o.tif"
    if command == "apply":
        args = ["apply", nd_model.path, big_scene, "-o", out, "--chunk-size", "128",
                "--batch-size", "1"]
    else:
        args = ["denoise", "apply", denoiser, big_scene, "-o", out, "--chunk-size", "128"]
    proc = _run_until_temporary(args, tmp_path, "o.tif")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGHUP: 129}[signum]
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_dead_runs_are_removed_live_ones_kept(nd_model, sample_scene,
                                                                     big_scene, tmp_path):
    out = tmp_path / "c.tif"
    proc = _run_until_temporary(["apply", nd_model.path, big_scene, "-o", out, "--chunk-size",
                                 "128", "--batch-size", "1"], tmp_path, "c.tif")
    proc.kill()
    proc.wait(timeout=30)
    stale = leftovers(tmp_path)
    assert stale, "the killed run left no temporary to clean"
    # A live writer's temporary (this test process, same host) and a foreign file stay.
    from ndgeo.io.writer import temp_path

    live = temp_path(out)
    live.write_bytes(b"being written")
    foreign = tmp_path / ".c.tif.backup"
    foreign.write_bytes(b"not ours")
    result = ndgeo("-q", "apply", nd_model.path, sample_scene.image, "-o", out)
    assert result.returncode == 0, result.stderr
    assert leftovers(tmp_path) == [live.name]
    assert foreign.exists()
    with rasterio.open(out) as src:
        assert src.read(1).any()


# ------------------------------------------------------------------ 4. race


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_runs_racing_for_one_output(overwrite, nd_model, big_scene, tmp_path):
    out = tmp_path / "c.tif"
    args = [NDGEO, "-q", "apply", str(nd_model.path), str(big_scene), "-o", str(out),
            "--chunk-size", "128"] + (["--overwrite"] if overwrite else [])
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=180), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    if overwrite:
        assert codes == [0, 0], results
    else:
        assert codes == [0, 2], results
        loser = next(err for code, err in results if code == 2)
        assert "exists" in loser and len(loser.strip().splitlines()) == 1, loser
    with rasterio.open(out) as src:
        assert src.read(1).shape == (512, 512)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ 5. outputs that are inputs


def test_an_output_that_is_an_input_is_refused_whatever_the_flags(sample_scene, tmp_path):
    scene = tmp_path / "scene.tif"
    shutil.copy(sample_scene.image, scene)
    (tmp_path / "link.tif").symlink_to(scene)
    before = scene.read_bytes()
    labels = sample_scene.labels_raster
    for out in (scene, tmp_path / "link.tif"):
        result = ndgeo("-q", "train", scene, labels, "-o", out, "--overwrite", "--epochs", "1",
                       "--no-report")
        one_error_line(result, "is the input")
    result = ndgeo("-q", "train", scene, labels, "-o", tmp_path / "m.safetensors", "--report",
                   scene, "--overwrite", "--epochs", "1")
    one_error_line(result, "is the input")
    result = ndgeo("-q", "index", scene, "-o", tmp_path / "link.tif", "--overwrite", "--name",
                   "NDVI")
    one_error_line(result, "input")
    assert scene.read_bytes() == before
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("command", ["train", "denoise"])
def test_a_model_named_like_a_raster_is_refused_before_training(command, sample_scene,
                                                                tmp_path):
    out = tmp_path / "model.tif"
    args = (["train", sample_scene.image, sample_scene.labels_raster, "-o", out, "--epochs",
             "1", "--no-report"] if command == "train" else
            ["denoise", "train", sample_scene.image, "-o", out, "--sigma", "2%", "--steps", "1"])
    one_error_line(ndgeo("-q", *args), ".safetensors")
    assert os.listdir(tmp_path) == []


def test_an_existing_report_needs_overwrite(sample_scene, tmp_path):
    report = tmp_path / "r.png"
    report.write_bytes(b"keep")
    result = ndgeo("-q", "train", sample_scene.image, sample_scene.labels_raster, "-o",
                   tmp_path / "m.safetensors", "--report", report, "--epochs", "1")
    one_error_line(result, "exists", "--overwrite")
    assert report.read_bytes() == b"keep"


# ------------------------------------------------------------------ 6. option values


@pytest.mark.parametrize("option, fragment", [
    (["--co", "BLOCKXSIZE=abc"], "BLOCKXSIZE must be an integer"),
    (["--co", "COMPRESS=NOPE"], "COMPRESS must be one of"),
    (["--co", "NO_SUCH_OPTION=1"], "no creation option"),
    (["--co", "ZLEVEL=99"], "ZLEVEL must be 1..12"),
    (["--co", "BLOCKXSIZE=100"], "multiple of 16"),
    (["--config", "GDAL_CACHEMAX=abc"], "GDAL_CACHEMAX must be"),
    (["--config", "GDAL_NUM_THREADS=lots"], "GDAL_NUM_THREADS must be"),
    (["--scheduler", "not-a-url"], "tcp://"),
    (["--timeout", "0"], "--timeout"),
])
def test_bad_option_values_are_refused_before_any_pixel(option, fragment, nd_model, sample_scene,
                                                        tmp_path):
    result = ndgeo("-q", "apply", nd_model.path, sample_scene.image, "-o", tmp_path / "c.tif",
                   *option)
    one_error_line(result, fragment)
    assert os.listdir(tmp_path) == []


def test_good_creation_and_config_options_still_work(nd_model, sample_scene, tmp_path):
    result = ndgeo("-q", "apply", nd_model.path, sample_scene.image, "-o", tmp_path / "c.tif",
                   "--co", "COMPRESS=LZW", "--co", "BLOCKXSIZE=128", "--co", "BLOCKYSIZE=128",
                   "--config", "GDAL_CACHEMAX=10%", "--config", "GDAL_NUM_THREADS=ALL_CPUS")
    assert result.returncode == 0, result.stderr
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.compression.name.upper() == "LZW" and src.block_shapes[0] == (128, 128)


# ------------------------------------------------------------------ 7. silent scheduler


def test_a_scheduler_that_never_answers_times_out_in_one_line(nd_model, sample_scene, tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept every connection and never say a word
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        result = ndgeo("-q", "apply", nd_model.path, sample_scene.image, "-o",
                       tmp_path / "c.tif", "--scheduler",
                       f"tcp://127.0.0.1:{server.getsockname()[1]}", "--timeout", "2",
                       timeout=60)
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
    one_error_line(result, "did not answer within 2 s")
    assert accepted, "ndgeo never connected"
    assert elapsed < 30
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ 8. tampered model files


def _tamper(model: Path, out: Path, meta_change=None, tensor_change=None) -> Path:
    from safetensors import safe_open

    with safe_open(str(model), "pt") as f:
        header = f.metadata()
    state = load_file(str(model))
    meta = json.loads(header["ndgeo"])
    if meta_change:
        meta_change(meta)
    if tensor_change:
        tensor_change(state)
    save_file(state, str(out), metadata={**header, "ndgeo": json.dumps(meta)})
    return out


def _drop_class(meta):
    meta["classes"].pop()


def _class_without_id(meta):
    del meta["classes"][0]["id"]


def _bad_colour(meta):
    meta["classes"][0]["color"] = "green"


def _duplicate_band(meta):
    meta["bands"][1]["name"] = meta["bands"][0]["name"]


def _unknown_kind(meta):
    meta["config"]["kind"] = "os.system"


def _wrong_shape(state):
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = state[name][:, :-1].contiguous()


def _nan(state):
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")


def _extra_tensor(state):
    state["backdoor"] = state[next(iter(state))].clone()


@pytest.mark.parametrize("meta_change, tensor_change, fragment", [
    (_drop_class, None, "classes"),
    (_class_without_id, None, "'id'"),
    (_bad_colour, None, "color"),
    (_duplicate_band, None, "band names repeat"),
    (_unknown_kind, None, "unknown model kind"),
    (None, _wrong_shape, "shape"),
    (None, _nan, "NaN"),
    (None, _extra_tensor, "backdoor"),
])
def test_tampered_model_files_are_refused_at_load(meta_change, tensor_change, fragment,
                                                  nd_model, sample_scene, tmp_path):
    model = _tamper(nd_model.path, tmp_path / "bad.safetensors", meta_change, tensor_change)
    result = ndgeo("-q", "apply", model, sample_scene.image, "-o", tmp_path / "o.tif", "-p",
                   "proba")
    one_error_line(result, "not a valid ndgeo model file", fragment)
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]


@pytest.mark.parametrize("command", [["apply", "-p", "class"], ["formula"], ["evaluate"],
                                     ["index"]])
def test_every_command_that_reads_a_model_validates_it(command, nd_model, sample_scene,
                                                       tmp_path):
    model = _tamper(nd_model.path, tmp_path / "bad.safetensors", _drop_class)
    scene, labels = sample_scene.image, sample_scene.labels_raster
    if command[0] == "apply":
        args = ["apply", model, scene, "-o", tmp_path / "o.tif", *command[1:]]
    elif command[0] == "formula":
        args = ["formula", model]
    elif command[0] == "evaluate":
        args = ["evaluate", model, scene, labels]
    else:  # a model file given as a formula file: refused without reading it as a model
        args = ["index", scene, "-o", tmp_path / "o.tif", "--formula-file", model]
    result = ndgeo("-q", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    if command[0] != "index":
        one_error_line(result, "not a valid ndgeo model file", "classes")
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]


# ------------------------------------------------------------------ 9. other tracebacks


def test_a_constant_beside_band_formulas_and_constants_alone(sample_scene, tmp_path):
    out = tmp_path / "i.tif"
    result = ndgeo("-q", "index", sample_scene.image, "-o", out, "--formula",
                   "NDVI=(B08-B04)/(B08+B04)", "--formula", "K=2", "--formula", "INF=1/0")
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as src:
        ndvi, k, inf = src.read(1), src.read(2), src.read(3)
        nodata = ~src.read_masks(1).astype(bool)
    valid = np.isfinite(ndvi)
    assert valid.any()
    assert np.all(k[valid] == 2) and np.all(np.isnan(inf))
    assert not np.any(np.isfinite(k[nodata]))
    one_error_line(ndgeo("-q", "index", sample_scene.image, "-o", tmp_path / "c.tif",
                         "--formula", "K=1/0"), "no band")


def test_csv_points_are_refused_naming_the_supported_formats(sample_scene, tmp_path):
    labels = tmp_path / "points.csv"
    labels.write_text("x,y,class\n10,20,crop\n30,40,grass\n")
    result = ndgeo("-q", "train", sample_scene.image, labels, "-o", tmp_path / "m.safetensors",
                   "--epochs", "1", "--no-report")
    one_error_line(result, "csv", "GeoPackage", "ogr2ogr")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("labels", ["image", "continuous"])
def test_labels_that_are_not_classes_are_refused_quickly(labels, sample_scene, tmp_path):
    if labels == "image":  # IMAGE LABELS given as IMAGE IMAGE
        path, fragment = sample_scene.image, "has 10 bands"
    else:  # a continuous raster (e.g. a DEM) as labels
        with rasterio.open(sample_scene.labels_raster) as src:
            profile = dict(src.profile, dtype="float32", nodata=None)
        path, fragment = tmp_path / "dem.tif", "distinct classes"
        with rasterio.open(path, "w", **profile) as dst:
            values = np.random.default_rng(0).uniform(0, 5000, (profile["height"],
                                                                  profile["width"]))
            dst.write(values.astype("float32"), 1)
    start = time.monotonic()
    result = ndgeo("-q", "train", sample_scene.image, path, "-o", tmp_path / "m.safetensors",
                   "--epochs", "1", "--no-report")
    one_error_line(result, fragment)
    assert time.monotonic() - start < 60
    assert not (tmp_path / "m.safetensors").exists()


# ------------------------------------------------------------------ 10. names and modes


def test_a_long_legal_output_name_works(nd_model, sample_scene, tmp_path):
    out = tmp_path / ("a" * 246 + ".tif")  # 250 bytes: legal; its .aux.xml legend would not be
    result = ndgeo("-q", "apply", nd_model.path, sample_scene.image, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "legend" in result.stderr  # the warning names what could not be written
    with rasterio.open(out) as src:
        assert src.read(1).any()
    assert leftovers(tmp_path) == []
    too_long = tmp_path / ("b" * 256 + ".tif")
    one_error_line(ndgeo("-q", "apply", nd_model.path, sample_scene.image, "-o", too_long),
                   "longer than")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_model_files_and_rasters_get_the_umask_mode(umask, nd_model, sample_scene, tmp_path):
    model = tmp_path / "m.safetensors"
    result = ndgeo("-q", "train", sample_scene.image, sample_scene.labels_raster, "-o", model,
                   "--epochs", "1", "--report", tmp_path / "r.png", umask=umask)
    assert result.returncode == 0, result.stderr
    result = ndgeo("-q", "apply", model, sample_scene.image, "-o", tmp_path / "c.tif",
                   umask=umask)
    assert result.returncode == 0, result.stderr
    wanted = 0o666 & ~umask
    for name in ("m.safetensors", "r.png", "c.tif", "c.tif.aux.xml", "c.qml"):
        assert (tmp_path / name).stat().st_mode & 0o777 == wanted, name


# ------------------------------------------------------------------ 11. quiet clusters


def test_quiet_local_cluster_prints_nothing_and_ctrl_c_prints_one_line(nd_model, sample_scene,
                                                                       big_scene, tmp_path):
    result = ndgeo("-q", "apply", nd_model.path, sample_scene.image, "-o", tmp_path / "a.tif",
                   "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    proc = _run_until_temporary(["apply", nd_model.path, big_scene, "-o", tmp_path / "b.tif",
                                 "--workers", "2", "--chunk-size", "128", "--batch-size", "1"],
                                tmp_path, "b.tif")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.strip().splitlines() == ["interrupted: no output was written"], stderr
    assert not (tmp_path / "b.tif").exists() and leftovers(tmp_path) == []

