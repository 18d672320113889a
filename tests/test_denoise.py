"""`ndgeo denoise`: training files, tiled = whole-scene application, apply --denoise, evaluate,
user errors. Tiny scenes (make_sample, 96 px) and tiny backbones trained for a few steps."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from ndgeo import engine
from ndgeo.checkpoint import load_model, save_model
from ndgeo.cli import app
from ndgeo.config import parse_sigma
from ndgeo.errors import NdgeoError
from ndgeo.io.raster import open_raster, read_float_block
from ndgeo.io.tiles import aligned_chunk_size
from ndgeo.nn import WNE, NDClassifier, measure_receptive_field
from ndgeo.processors import denoise as lib
from ndgeo.sample import CLASSES, make_sample

runner = CliRunner()
SIZE = 96
TINY = {
    "dncnn": ["--depth", "3", "--width", "8"],
    "transformer": ["--depth", "2", "--width", "8", "--window", "4"],
}


def cli(*args: object):
    return runner.invoke(app, ["-q", *map(str, args)])


def rewrite(src_path, dst_path, *, tile: int | None = 16, nodata_value: int | None = None):
    """Copy a raster with another internal layout (16 px tiles or 1-row strips) and optionally
    another value under its nodata pixels."""
    with rasterio.open(src_path) as src:
        data, profile, names = src.read(), src.profile, src.descriptions
    if nodata_value is not None:
        data[:, (data == profile["nodata"]).any(axis=0)] = nodata_value
        profile["nodata"] = nodata_value
    layout = {"tiled": True, "blockxsize": tile, "blockysize": tile} if tile else {
        "tiled": False, "blockysize": 1}
    profile.update(layout)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return dst_path


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.nodata, src.descriptions


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("denoise")
    sample = make_sample(root / "sample", size=SIZE, seed=3)
    return {"root": root, "tiled": rewrite(sample.image, root / "tiled.tif"), "sample": sample}


@pytest.fixture(scope="module")
def denoisers(scene):
    """One tiny WNE denoiser per backbone, trained for a few steps through the CLI. Training starts
    at the identity; a large learning rate moves the models far from it in 4 steps, so that their
    output depends on the whole receptive field (the tiling tests would be vacuous otherwise)."""
    out = {}
    for name, extra in TINY.items():
        path = scene["root"] / f"{name}.safetensors"
        result = cli("denoise", "train", scene["tiled"], "-o", path, "--backbone", name,
                     "--sigma", "2%", "--steps", 4, "--patch", 32, "--batch-size", 4, "--lr", 0.03,
                     *extra)
        assert result.exit_code == 0, result.output
        out[name] = path
    return out


def whole_reference(processor, path):
    """The denoiser on the whole in-memory image with the same scene statistics."""
    info = open_raster(path)
    processor.prepare(info)  # the scene statistics pass, as in a run
    with rasterio.open(path) as src:
        block, valid = read_float_block(src, info, range(info.count))
    return processor.denoise(block, valid), valid


# --- training -------------------------------------------------------------------------------


def test_train_writes_safe_file_with_metadata(scene, denoisers):
    model, meta = load_model(denoisers["transformer"])
    assert isinstance(model, WNE) and not model.training
    assert meta["task"] == "denoise" and meta["backbone"] == "transformer" and meta["wne"]
    assert [b["name"] for b in meta["bands"]] == open_raster(scene["tiled"]).band_names
    assert meta["bands"][6] == {"name": "B08", "letter": "N"}
    assert meta["config"]["kind"] == "wne" and meta["pooling"] == "joint"
    assert meta["config"]["backbone"] == {"kind": "transformer", "channels": 10, "dim": 8,
                                          "window": 4, "depth": 2, "heads": 4, "mlp_ratio": 2.0}
    # The stored receptive field is the measured one; the halo rounds it up to the window.
    assert meta["receptive_field"] == measure_receptive_field(model.backbone, 10, size=48)
    assert meta["tile_alignment"] == 4 and meta["halo"] % 4 == 0
    assert meta["receptive_field"] <= meta["halo"] < meta["receptive_field"] + 4
    # sigma in data units: 2% of the training pixels' range.
    assert math.isclose(meta["sigma"], 0.02 * meta["data_range"])
    assert 0 < meta["data_min"] < meta["data_min"] + meta["data_range"] <= 65535
    assert meta["training"]["steps"] == 4 and meta["training"]["final_rmse"] > 0


def test_unwrapped_and_ne_arch_are_not_wrapped(scene):
    for backbone, flag in (("dncnn", "--no-wne"), ("ne-arch", "--wne")):
        path = scene["root"] / f"plain-{backbone}.safetensors"
        result = cli("denoise", "train", scene["tiled"], "-o", path, "--backbone", backbone,
                     flag, "--sigma", "150", "--steps", 2, "--patch", 16, "--batch-size", 2,
                     "--depth", 3, "--width", 8)
        assert result.exit_code == 0, result.output
        model, meta = load_model(path)
        assert not isinstance(model, WNE) and meta["wne"] is False and meta["sigma"] == 150


def test_parse_sigma_forms():
    assert parse_sigma("150", data_range=5000) == 150
    assert parse_sigma("2%", data_range=5000) == 100
    assert parse_sigma("5x", data_range=5000, train_sigma=30) == 150
    for bad in ("5x", "-3", "abc", "0%"):
        with pytest.raises(NdgeoError, match="noise level"):
            parse_sigma(bad, data_range=5000)


# --- tiled application == whole scene -------------------------------------------------------


@pytest.mark.parametrize("backbone", ["dncnn", "transformer"])
@pytest.mark.parametrize("chunk", [32, 48, 64, 1024])
def test_tiled_apply_equals_whole_image(scene, denoisers, tmp_path, backbone, chunk):
    out = tmp_path / "out.tif"
    result = cli("denoise", "apply", denoisers[backbone], scene["tiled"], "-o", out,
                 "--dtype", "float32", "--chunk-size", chunk)
    assert result.exit_code == 0, result.output
    processor, _, _ = lib.denoise_processor(denoisers[backbone], open_raster(scene["tiled"]),
                                            out_dtype="float32")
    reference, valid = whole_reference(processor, scene["tiled"])
    tiled, nodata, names = read(out)
    meta = load_model(denoisers[backbone])[1]
    assert names == tuple(open_raster(scene["tiled"]).band_names) and nodata == 0
    assert np.abs(tiled[:, valid] - reference[:, valid]).max() <= 1e-4 * meta["data_range"]
    assert (tiled[:, ~valid] == 0).all()


def test_tiles_without_halo_differ(scene, denoisers, tmp_path):
    """The equality above is not vacuous: the same run with no halo leaves seams ten times the
    tolerance of the equality tests."""
    info = open_raster(scene["tiled"])
    processor, positions, _ = lib.denoise_processor(denoisers["dncnn"], info, out_dtype="float32")
    engine.run(dataclasses.replace(processor, halo=0), info, positions, tmp_path / "o.tif",
               execution=engine.Execution(chunk_size=32))
    reference, valid = whole_reference(processor, scene["tiled"])
    seams = np.abs(read(tmp_path / "o.tif")[0][:, valid] - reference[:, valid]).max()
    assert seams > 1e-3 * processor.data_range


def test_striped_file_chunks_are_aligned(scene, denoisers, tmp_path):
    striped = rewrite(scene["tiled"], tmp_path / "striped.tif", tile=None)
    info = open_raster(striped)
    assert info.block_shape == (1, SIZE)
    assert aligned_chunk_size(50, info.block_shape, info.shape, 4) == 48
    assert aligned_chunk_size(50, info.block_shape, info.shape, 1) == 50
    out = tmp_path / "out.tif"
    assert cli("denoise", "apply", denoisers["transformer"], striped, "-o", out, "--dtype",
               "float32", "--chunk-size", 50).exit_code == 0
    processor, _, _ = lib.denoise_processor(denoisers["transformer"], info, out_dtype="float32")
    reference, valid = whole_reference(processor, striped)
    tiled = read(out)[0]
    assert np.abs(tiled[:, valid] - reference[:, valid]).max() <= 1e-4 * processor.data_range


def test_default_dtype_nodata_and_statistics_ignore_fill(scene, denoisers, tmp_path):
    """uint16 output rounded from the float result; the nodata border stays nodata, valid pixels
    never become nodata, and the value under nodata pixels does not change anything."""
    other = rewrite(scene["tiled"], tmp_path / "fill.tif", nodata_value=65535)
    outs = {}
    for name, path in (("zero", scene["tiled"]), ("max", other)):
        for dtype in ("same", "float32"):
            outs[name, dtype] = tmp_path / f"{name}-{dtype}.tif"
            result = cli("denoise", "apply", denoisers["dncnn"], path, "-o", outs[name, dtype],
                         "--dtype", dtype, "--chunk-size", 32)
            assert result.exit_code == 0, result.output
    raw, _, _ = read(scene["tiled"])
    invalid = (raw == 0).any(axis=0)
    as_int, nodata, _ = read(outs["zero", "same"])
    exact = read(outs["zero", "float32"])[0]
    assert as_int.dtype == np.uint16 and nodata == 0
    assert (as_int[:, invalid] == 0).all() and (as_int[:, ~invalid] > 0).all()
    expected = np.clip(np.rint(exact[:, ~invalid]), 1, 65535)
    assert np.array_equal(as_int[:, ~invalid], expected)
    other_int, other_nodata, _ = read(outs["max", "same"])
    assert other_nodata == 65535 and (other_int[:, invalid] == 65535).all()
    np.testing.assert_array_equal(read(outs["max", "float32"])[0][:, ~invalid],
                                  exact[:, ~invalid])


def test_nan_nodata_input_to_integer_output_uses_type_minimum(scene, denoisers, tmp_path):
    """A float input with NaN nodata written as int32: NaN cannot be the output nodata, so the
    type's minimum is, and the invalid pixels carry it."""
    with rasterio.open(scene["tiled"]) as src:
        data, profile, names = src.read().astype("float32"), src.profile, src.descriptions
    invalid = (data == 0).any(axis=0)
    data[:, invalid] = np.nan
    profile.update(dtype="float32", nodata=float("nan"))
    nan_path, out = tmp_path / "nan.tif", tmp_path / "int.tif"
    with rasterio.open(nan_path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    result = cli("denoise", "apply", denoisers["dncnn"], nan_path, "-o", out, "--dtype", "int32",
                 "--chunk-size", 32)
    assert result.exit_code == 0, result.output
    values, nodata, _ = read(out)
    low = np.iinfo(np.int32).min
    assert values.dtype == np.int32 and nodata == low
    assert (values[:, invalid] == low).all() and (values[:, ~invalid] > low).all()


# --- apply --denoise --------------------------------------------------------------------------


def test_apply_with_denoise_equals_denoise_then_apply(scene, denoisers, tmp_path):
    info = open_raster(scene["tiled"])
    torch.manual_seed(0)
    classifier = NDClassifier(info.count, len(CLASSES), n_indices=4)
    with rasterio.open(scene["tiled"]) as src:  # fit BatchNorm: several classes, not one
        block, valid = read_float_block(src, info, range(info.count))
    classifier.norm.momentum = None
    with torch.no_grad():
        classifier(torch.from_numpy(block[:, valid].T))
    classifier.eval()
    model_path = tmp_path / "classifier.safetensors"
    save_model(model_path, classifier, {
        "bands": [{"name": b.name, "letter": b.letter} for b in info.bands],
        "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(CLASSES)],
    })
    for backbone in ("dncnn", "transformer"):
        den = denoisers[backbone]
        one, denoised, two, plain = (tmp_path / f"{backbone}-{n}.tif"
                                     for n in ("one", "den", "two", "plain"))
        for args in (("apply", model_path, scene["tiled"], "-o", one, "--denoise", den),
                     ("denoise", "apply", den, scene["tiled"], "-o", denoised, "--dtype",
                      "float32"),
                     ("apply", model_path, denoised, "-o", two),
                     ("apply", model_path, scene["tiled"], "-o", plain)):
            result = cli(*args, "--chunk-size", 32)
            assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(read(one)[0], read(two)[0])
        assert not np.array_equal(read(one)[0], read(plain)[0])  # the stage did something


def test_denoise_stage_checks_bands_and_alignment(scene, denoisers):
    info = open_raster(scene["tiled"])
    stage = lib.denoise_stage(denoisers["transformer"], info, list(range(10))[::-1],
                              chunk_size=32)
    assert stage.halo == 8 and stage.band_index == tuple(range(10))[::-1]
    clone = pickle.loads(pickle.dumps(stage))  # travels to dask workers without weights
    assert clone == stage and len(pickle.dumps(stage)) < 4096
    with pytest.raises(NdgeoError, match="needs band"):
        lib.denoise_stage(denoisers["dncnn"], info, [0, 1, 2], chunk_size=32)


def test_dry_runs_and_refusals_come_before_the_statistics_pass(scene, denoisers, tmp_path,
                                                                nd_model):
    """A tile in the middle of the image is corrupt: only a pass over all pixels can notice.
    Dry runs (denoise apply, apply --denoise) and an existing OUT without --overwrite answer
    without that pass; a real run reports the corrupt file with exit code 2."""
    broken = rewrite(scene["tiled"], tmp_path / "broken.tif")
    with rasterio.open(broken) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_2_2", "TIFF", bidx=1))
    with open(broken, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)
    den, out = denoisers["dncnn"], tmp_path / "out.tif"
    result = cli("denoise", "apply", den, broken, "-o", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chunks"] >= 1
    model = nd_model.path
    result = cli("apply", model, broken, "-o", out, "--denoise", den, "--dry-run")
    assert result.exit_code == 0, result.output
    out.write_bytes(b"keep me")
    result = cli("apply", model, broken, "-o", out, "--denoise", den)
    assert result.exit_code == 2 and "exists" in result.output
    result = cli("denoise", "apply", den, broken, "-o", tmp_path / "new.tif")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert out.read_bytes() == b"keep me" and not (tmp_path / "new.tif").exists()


# --- evaluate ---------------------------------------------------------------------------------


def test_evaluate_reports_psnr_and_wne_tracks_scaled_noise(scene, tmp_path):
    """At sigma_test = a x sigma_train on an image a*x + b the WNE model is exactly as good as at
    sigma_train on x (normalization equivariance is what keeps it from collapsing off its
    training noise); the unwrapped model is not."""
    raw, nodata, names = read(scene["tiled"])
    scaled = tmp_path / "scaled.tif"
    with rasterio.open(scene["tiled"]) as src:
        profile = src.profile | {"dtype": "float32"}
    with rasterio.open(scaled, "w", **profile) as dst:
        dst.write(np.where(raw == 0, 0, raw * 5.0 + 700).astype("float32"))
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    results = {}
    # Training starts at the identity (NE, like WNE); a high training noise moves the models away
    # from it within a few steps, so that the unwrapped one has something to get wrong.
    for flag in ("--wne", "--no-wne"):
        model = tmp_path / f"{flag}.safetensors"
        assert cli("denoise", "train", scene["tiled"], "-o", model, flag, "--sigma", "20%",
                   "--steps", 30, "--patch", 32, "--batch-size", 4, "--lr", 0.01,
                   "--depth", 3, "--width", 8).exit_code == 0
        runs = []
        for image, sigmas in ((scene["tiled"], "1x,5x"), (scaled, "5x")):
            result = cli("denoise", "evaluate", model, image, "--sigmas", sigmas, "--draws", 2,
                         "--json")
            assert result.exit_code == 0, result.output
            runs.append(json.loads(result.stdout)["rows"])
        results[flag] = runs
    (one, five), (scaled_five,) = results["--wne"]
    sigma = load_model(tmp_path / "--wne.safetensors")[1]["sigma"]
    assert math.isclose(five["sigma_data"], 5 * sigma) and five["factor"] == pytest.approx(5)
    # Input PSNR is the noise level: 20 log10(peak / sigma) over valid pixels (unclamped).
    peak = float(raw[:, ~(raw == 0).any(axis=0)].max() - raw[:, ~(raw == 0).any(axis=0)].min())
    assert one["input_psnr"] == pytest.approx(20 * math.log10(peak / sigma), abs=0.1)
    assert one["input_psnr"] - five["input_psnr"] == pytest.approx(20 * math.log10(5), abs=0.1)
    assert all(math.isfinite(r["output_psnr"]) for r in (one, five, scaled_five))
    assert scaled_five["output_psnr"] == pytest.approx(one["output_psnr"], abs=1e-3)
    (plain_one, _), (plain_scaled,) = results["--no-wne"]
    assert abs(plain_scaled["output_psnr"] - plain_one["output_psnr"]) > 1e-2


# --- user errors: one line, exit 2, nothing written -------------------------------------------


def test_user_errors_exit_2_and_write_nothing(scene, denoisers, tmp_path):
    out = tmp_path / "out.tif"
    renamed = ",".join(f"X{i}" for i in range(10))
    existing = tmp_path / "existing.tif"
    existing.write_bytes(b"keep me")
    cases = [
        (("denoise", "apply", tmp_path / "missing.safetensors", scene["tiled"], "-o", out),
         "not found"),
        (("denoise", "apply", denoisers["dncnn"], scene["tiled"], "-o", out, "--band-names",
          renamed), "not found in the raster"),
        (("denoise", "apply", denoisers["dncnn"], scene["tiled"], "-o", existing), "exists"),
        (("denoise", "train", scene["tiled"], "-o", existing, "--sigma", "2%"), "exists"),
        (("denoise", "evaluate", denoisers["dncnn"], scene["tiled"], "--sigmas", "fast"),
         "noise level"),
        (("evaluate", denoisers["dncnn"], scene["tiled"], scene["sample"].labels_raster),
         "not a pixel classifier"),
        (("formula", denoisers["dncnn"]), "no learned indices"),
    ]
    if not torch.cuda.is_available():
        cases.append((("denoise", "apply", denoisers["dncnn"], scene["tiled"], "-o", out,
                       "--device", "cuda"), "no CUDA GPU"))
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert message in lines[0]
    assert not out.exists() and existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.tif"]


def test_apply_denoise_with_workers_starts_one_cluster(scene, denoisers, tmp_path, monkeypatch):
    """One execution context per command: the statistics pass and the run share one
    LocalCluster (it used to start one for each)."""
    import distributed

    starts = []

    class CountingCluster(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            starts.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", CountingCluster)
    info = open_raster(scene["tiled"])
    model_path = tmp_path / "classifier.safetensors"
    save_model(model_path, NDClassifier(info.count, 2, n_indices=2), {
        "bands": [{"name": b.name, "letter": b.letter} for b in info.bands],
        "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}],
    })
    out = tmp_path / "classes.tif"
    result = cli("apply", model_path, scene["tiled"], "-o", out, "--denoise", denoisers["dncnn"],
                 "--workers", "1", "--chunk-size", 32)
    assert result.exit_code == 0, result.output
    assert len(starts) == 1 and out.exists()


# --- user backbones (--backbone pkg.module:Class) and global backbones ----------------------

LOCAL, GLOBAL = "user_backbones:LocalMix", "user_backbones:GlobalAttention"
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def user_denoisers(scene):
    """A local and a global user backbone (tests/user_backbones.py) trained through the CLI."""
    out = {}
    for cls, args in ((LOCAL, '{"width": 6}'), (GLOBAL, '{"width": 8, "heads": 2}')):
        path = scene["root"] / f"{cls.split(':')[1]}.safetensors"
        result = cli("denoise", "train", scene["tiled"], "-o", path, "--backbone", cls,
                     "--backbone-args", args, "--sigma", "2%", "--steps", 3, "--patch", 24,
                     "--batch-size", 2, "--lr", 0.03)
        assert result.exit_code == 0, result.output
        out[cls] = path
    return out


def test_user_backbone_round_trip_through_the_cli(scene, user_denoisers, tmp_path):
    path = user_denoisers[LOCAL]
    model, meta = lib.load_denoiser(path, backbone=LOCAL)
    assert meta["backbone"] == LOCAL and meta["backbone_args"] == {"width": 6}
    assert meta["config"]["backbone"] == {"kind": "user", "class": LOCAL, "channels": 10,
                                          "args": {"width": 6}}
    # measured (the class declares nothing): two 3x3 convolutions
    assert meta["receptive_field"] == 2 and meta["halo"] == 2 and not meta["global_field"]
    out = tmp_path / "out.tif"
    result = cli("denoise", "apply", path, scene["tiled"], "-o", out, "--dtype", "float32",
                 "--chunk-size", 32, "--backbone", LOCAL)
    assert result.exit_code == 0, result.output
    processor, _, _ = lib.denoise_processor(path, open_raster(scene["tiled"]),
                                            out_dtype="float32", backbone=LOCAL)
    reference, valid = whole_reference(processor, scene["tiled"])
    tiled = read(out)[0]
    assert np.abs(tiled[:, valid] - reference[:, valid]).max() <= 1e-4 * meta["data_range"]
    assert np.abs(reference[:, valid] - read_float_block(
        rasterio.open(scene["tiled"]), open_raster(scene["tiled"]), range(10))[0][:, valid]
                  ).max() > 1e-3 * meta["data_range"]  # the model does something
    result = cli("denoise", "evaluate", path, scene["tiled"], "--sigmas", "1x", "--draws", 1,
                 "--json", "--backbone", LOCAL)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["backbone"] == LOCAL
    # The xarray accessor takes the same backbone name and gives the command's values.
    import rioxarray

    import ndgeo.accessor  # noqa: F401  (registers DataArray.ndgeo)

    array = rioxarray.open_rasterio(scene["tiled"], chunks={"x": 32, "y": 32})
    lazy = array.ndgeo.denoise(path, dtype="float32", backbone=LOCAL)
    np.testing.assert_allclose(lazy.values[:, valid], tiled[:, valid],
                               atol=1e-4 * meta["data_range"])
    with pytest.raises(NdgeoError, match="backbone"):
        array.ndgeo.denoise(path, dtype="float32")


def test_user_backbone_file_is_refused_unless_the_class_is_named_again(scene, user_denoisers,
                                                                       tmp_path):
    path, out = user_denoisers[LOCAL], tmp_path / "out.tif"
    model = tmp_path / "model.safetensors"  # denoise train's output (never written here)
    info = open_raster(scene["tiled"])
    classifier = tmp_path / "classifier.safetensors"
    save_model(classifier, NDClassifier(info.count, 2, n_indices=2), {
        "bands": [{"name": b.name, "letter": b.letter} for b in info.bands],
        "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}],
    })
    cases = [
        (("denoise", "apply", path, scene["tiled"], "-o", out), f"pass --backbone {LOCAL}"),
        (("denoise", "apply", path, scene["tiled"], "-o", out, "--backbone", GLOBAL),
         f"(not {GLOBAL})"),
        (("denoise", "evaluate", path, scene["tiled"]), "never imports"),
        (("apply", classifier, scene["tiled"], "-o", out, "--denoise", path),
         f"pass --backbone {LOCAL}"),
        (("denoise", "apply", user_denoisers[GLOBAL], scene["tiled"], "-o", out, "--backbone",
          LOCAL), f"(not {LOCAL})"),
        (("apply", classifier, scene["tiled"], "-o", out, "--backbone", LOCAL), "give --denoise"),
        (("denoise", "train", scene["tiled"], "-o", model, "--sigma", "2%", "--backbone",
          "user_backbones:Missing"), "has no 'Missing'"),
        (("denoise", "train", scene["tiled"], "-o", model, "--sigma", "2%", "--backbone",
          "no_such_module_x:Net"), "cannot import"),
        (("denoise", "train", scene["tiled"], "-o", model, "--sigma", "2%", "--backbone", LOCAL,
          "--backbone-args", "[1]"), "JSON object"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert message in lines[0], lines[0]
    assert not out.exists()
    result = cli("apply", classifier, scene["tiled"], "-o", out, "--denoise", path, "--backbone",
                 LOCAL, "--chunk-size", 32)
    assert result.exit_code == 0, result.output


def test_loading_a_file_never_imports_the_module_it_names(scene, user_denoisers, tmp_path):
    """Real processes: the backbone module logs its import; a refused load imports nothing."""
    log = tmp_path / "imports.log"
    env = {**os.environ, "NDGEO_TEST_IMPORT_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "ndgeo", "-q", "denoise", "apply", str(user_denoisers[LOCAL]),
            str(scene["tiled"]), "-o", str(tmp_path / "out.tif")]
    refused = subprocess.run(base, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert "never imports" in refused.stderr + refused.stdout and not log.exists()
    done = subprocess.run([*base, "--backbone", LOCAL], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() and set(log.read_text().split()) == {"user_backbones"}


def test_global_backbone_runs_whole_or_is_refused(scene, user_denoisers, tmp_path):
    path = user_denoisers[GLOBAL]
    meta = lib.load_denoiser(path, backbone=GLOBAL)[1]
    assert meta["global_field"] and meta["receptive_field"] is None and meta["halo"] is None
    info = open_raster(scene["tiled"])
    out = tmp_path / "out.tif"
    result = cli("denoise", "apply", path, scene["tiled"], "-o", out, "--dtype", "float32",
                 "--chunk-size", 32, "--backbone", GLOBAL)
    assert result.exit_code == 0, result.output
    processor, _, chunk = lib.denoise_processor(path, info, out_dtype="float32", chunk_size=32,
                                                backbone=GLOBAL)
    assert processor.whole_scene and processor.halo == 0 and chunk == SIZE  # one chunk
    reference, valid = whole_reference(processor, scene["tiled"])
    assert np.abs(read(out)[0][:, valid] - reference[:, valid]).max() <= 1e-4 * meta[
        "data_range"]
    with pytest.raises(NdgeoError, match=r"is global .* tiles would show seams; .* larger than "
                                         r"the 4096 px it may process whole"):
        lib.denoise_processor(path, info, backbone=GLOBAL, max_whole_pixels=4096)
    with pytest.raises(NdgeoError, match="global: it runs on the whole scene as one chunk; use "
                                         f"--chunk-size {SIZE}"):
        lib.denoise_stage(path, info, list(range(10)), chunk_size=32, backbone=GLOBAL)
