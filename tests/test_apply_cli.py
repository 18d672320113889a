"""`ndgeo apply` end to end: chunked outputs equal the loaded model on the whole in-memory array.

Also `ndgeo formula --format asi` -> `ndgeo index --formula-file` against `apply --output
indices`, refused inputs (exit 2, one line, nothing written) and a SIGKILL mid-run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from ndgeo.checkpoint import load_model
from ndgeo.cli import app
from ndgeo.formula import expression_variables
from ndgeo.sample import make_sample

runner = CliRunner()


def _apply(model, image, out, *args: str, quiet: bool = True):
    argv = [*(["-q"] if quiet else []), "apply", str(model), str(image), "-o", str(out), *args]
    return runner.invoke(app, argv)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src


def _rewrite(src_path, dst_path, *, order=None, window=None, block=None, fill=None):
    """Copy a scene with bands in ``order`` (data and descriptions), cropped to ``window``
    ((row0, row1), (col0, col1)), with ``block`` x ``block`` tiles, and ``fill`` = (rows, cols)
    slices set to nodata in every band."""
    with rasterio.open(src_path) as src:
        profile = src.profile
        data = src.read()
        names = list(src.descriptions)
        transform = src.transform
    order = list(range(len(names))) if order is None else order
    data = data[order]
    if window is not None:
        (r0, r1), (c0, c1) = window
        data = data[:, r0:r1, c0:c1]
        transform = transform * transform.translation(c0, r0)
    if fill is not None:
        data[(slice(None), *fill)] = profile["nodata"]
    profile.update(count=data.shape[0], height=data.shape[1], width=data.shape[2],
                   transform=transform)
    if block is not None:
        profile.update(blockxsize=block, blockysize=block, tiled=True)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = [names[i] for i in order]
    return dst_path


def _model_bands(model_path):
    return [b["name"] for b in load_model(model_path)[1]["bands"]]


def _assert_matches_model(out_path, image, model_path, outputs, helpers):
    """Each output band equals the model on the whole array; nodata exactly where input is."""
    raw, valid = helpers.read(image, _model_bands(model_path))
    expected = helpers.expected(model_path, raw, valid)
    data, src = _read(out_path)
    stacked = len(outputs) > 1
    k = 0
    for name in outputs:
        want = expected[name]
        got = data[k : k + len(want)].astype(np.float64)
        k += len(want)
        if name == "class":
            if not stacked:
                assert src.dtypes[0] == "uint8" and src.nodata == 0
            sure = valid & (expected["margin"][0] > 1e-5)  # exact ties may flip argmax
            assert np.array_equal(got[0][sure], want[0][sure])
            assert (got[0][valid] > 0).all()
            if stacked:
                assert np.isnan(got[0][~valid]).all()
            else:
                assert (got[0][~valid] == 0).all()
        else:
            np.testing.assert_allclose(got[:, valid], want[:, valid], rtol=1e-5, atol=1e-6)
            assert np.isnan(got[:, ~valid]).all()
    assert k == data.shape[0]


@pytest.fixture(scope="module")
def tiled(sample_scene, tmp_path_factory):
    """The sample cropped to an odd 100 x 90 pixels and written with 16-pixel tiles."""
    path = tmp_path_factory.mktemp("tiled") / "tiled.tif"
    return _rewrite(sample_scene.image, path, window=((5, 105), (20, 110)), block=16)


@pytest.mark.parametrize("outputs", [["class"], ["proba"], ["indices"],
                                     ["class", "proba", "indices"]])
def test_outputs_equal_model_on_whole_array(nd_model, tiled, tmp_path, outputs, helpers):
    out = tmp_path / "o.tif"
    result = _apply(nd_model.path, tiled, out, "--products", ",".join(outputs),
                    "--chunk-size", "40")
    assert result.exit_code == 0, result.output
    _assert_matches_model(out, tiled, nd_model.path, outputs, helpers)


def _plan(model, image, out, chunk):
    result = _apply(model, image, out, "--chunk-size", str(chunk), "--dry-run")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("case", ["blocks_larger_than_scene", "odd_size_16px_blocks"])
def test_chunk_size_rounds_to_file_blocks(nd_model, tiled, tmp_path, case, helpers):
    if case == "blocks_larger_than_scene":  # 96 px scene stored in 128 px tiles: one window
        image = make_sample(tmp_path / "s96", seed=2, size=96).image
        chunk, chunks, grid = 40, [96, 96], [1, 1]
    else:  # 44 px -> nearest tile multiple 48; 100 x 90 px -> 3 x 2 windows, last ones partial
        image, chunk = tiled, 44
        chunks, grid = [48, 48], [math.ceil(100 / 48), math.ceil(90 / 48)]
    out = tmp_path / "o.tif"
    plan = _plan(nd_model.path, image, out, chunk)
    assert plan["chunk_shape"] == chunks and plan["chunk_grid"] == grid
    assert plan["chunks"] == grid[0] * grid[1]
    assert plan["batch_size"] == 16384 and plan["batches_per_chunk"] == 1
    assert plan["device"] == "auto"
    assert not out.exists()  # --dry-run writes nothing
    assert plan["output"] == str(out) and plan["output_exists"] is False
    result = _apply(nd_model.path, image, out, "--chunk-size", str(chunk))
    assert result.exit_code == 0, result.output
    _assert_matches_model(out, image, nd_model.path, ["class"], helpers)


def test_all_nodata_chunk_is_skipped_and_written_as_nodata(nd_model, sample_scene, tmp_path,
                                                           helpers):
    image = _rewrite(sample_scene.image, tmp_path / "holes.tif", block=16,
                     fill=(slice(48, 96), slice(0, 48)))
    _, valid = helpers.read(image)
    windows = [valid[r : r + 48, c : c + 48] for r in range(0, 128, 48) for c in range(0, 128, 48)]
    empty = sum(not w.any() for w in windows)
    assert empty >= 1
    out = tmp_path / "o.tif"
    result = _apply(nd_model.path, image, out, "--chunk-size", "48", quiet=False)
    assert result.exit_code == 0, result.output
    assert f"({len(windows)} chunks, {empty} all nodata skipped" in result.stdout
    _assert_matches_model(out, image, nd_model.path, ["class"], helpers)
    data, _ = _read(out)
    assert (data[0, 48:96, 0:48] == 0).all()


def test_bands_are_matched_by_name_not_position(nd_model, tiled, tmp_path):
    shuffled = _rewrite(tiled, tmp_path / "shuffled.tif", order=[7, 2, 9, 0, 4, 1, 8, 3, 6, 5])
    with rasterio.open(shuffled) as src:
        assert src.descriptions[:2] == ("B8A", "B04")
    for image, out in ((tiled, tmp_path / "a.tif"), (shuffled, tmp_path / "b.tif")):
        result = _apply(nd_model.path, image, out, "--products", "class,proba")
        assert result.exit_code == 0, result.output
    assert np.array_equal(_read(tmp_path / "a.tif")[0], _read(tmp_path / "b.tif")[0],
                          equal_nan=True)


def test_band_names_option_names_an_undescribed_image(nd_model, tiled, tmp_path):
    """`--band-names` (as in `ndgeo train`) names the bands of a file without descriptions."""
    bare = tmp_path / "bare.tif"
    with rasterio.open(tiled) as src:
        profile, data, names = src.profile, src.read(), list(src.descriptions)
    with rasterio.open(bare, "w", **profile) as dst:
        dst.write(data)
    result = _apply(nd_model.path, bare, tmp_path / "x.tif")
    assert result.exit_code == 2 and "not found" in result.output
    named = ["--band-names", ",".join(names)]
    for image, out, extra in ((tiled, "a.tif", []), (bare, "b.tif", named)):
        result = _apply(nd_model.path, image, tmp_path / out, "--products", "class,proba", *extra)
        assert result.exit_code == 0, result.output
    assert np.array_equal(_read(tmp_path / "a.tif")[0], _read(tmp_path / "b.tif")[0],
                          equal_nan=True)


def test_class_output_has_colour_table_and_class_names(nd_model, tiled, tmp_path):
    out = tmp_path / "c.tif"
    assert _apply(nd_model.path, tiled, out).exit_code == 0
    _, meta = load_model(nd_model.path)
    with rasterio.open(out) as src:
        colormap = src.colormap(1)
        tags = src.tags()
        assert src.descriptions == ("class",)
    assert colormap[0][3] == 0  # nodata is transparent
    for c in meta["classes"]:
        rgb = tuple(int(c["color"][i : i + 2], 16) for i in (1, 3, 5))
        assert colormap[c["id"] + 1] == (*rgb, 255)
    assert json.loads(tags["CLASSES"]) == {str(c["id"] + 1): c["name"] for c in meta["classes"]}


def test_index_descriptions_carry_the_formulas(nd_model, tiled, tmp_path):
    out = tmp_path / "i.tif"
    assert _apply(nd_model.path, tiled, out, "--products", "indices").exit_code == 0
    with rasterio.open(out) as src:
        descriptions = src.descriptions
    printed = runner.invoke(app, ["formula", str(nd_model.path)]).stdout
    lines = [line.split("  #")[0] for line in printed.splitlines() if line.startswith("ND")]
    assert list(descriptions) == lines and len(lines) == 4
    letters = {b["letter"] for b in load_model(nd_model.path)[1]["bands"]}
    for k, text in enumerate(descriptions, start=1):
        name, expr = text.split(" = ", 1)
        assert name == f"ND{k}"
        assert expression_variables(expr) <= letters


def test_cog_output_validates(nd_model, tiled, tmp_path):
    out = tmp_path / "cog.tif"
    result = _apply(nd_model.path, tiled, out, "--products", "proba", "--cog")
    assert result.exit_code == 0, result.output
    is_valid, errors, _ = cog_validate(str(out))
    assert is_valid, errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cog.tif"]


def test_local_cluster_workers_equal_local_threads(nd_model, tiled, tmp_path):
    common = ["--products", "class,proba,indices", "--chunk-size", "32"]
    for name, extra in (("local", []), ("cluster", ["--workers", "2"])):
        result = _apply(nd_model.path, tiled, tmp_path / f"{name}.tif", *common, *extra)
        assert result.exit_code == 0, result.output
    assert np.array_equal(_read(tmp_path / "local.tif")[0], _read(tmp_path / "cluster.tif")[0],
                          equal_nan=True)


# ------------------------------------------------------------------------------ index link


def test_exported_asi_formulas_through_index_equal_model_indices(nd_model, tiled, tmp_path,
                                                                 helpers):
    precision = 4
    exported = runner.invoke(app, ["formula", str(nd_model.path), "--format", "asi",
                                   "--precision", str(precision), "--threshold", "0"])
    assert exported.exit_code == 0, exported.output
    (tmp_path / "f.json").write_text(exported.stdout)
    idx, own = tmp_path / "idx.tif", tmp_path / "own.tif"
    result = runner.invoke(app, ["-q", "index", str(tiled), "-o", str(idx), "--formula-file",
                                 str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    assert _apply(nd_model.path, tiled, own, "--products", "indices").exit_code == 0

    model, meta = load_model(nd_model.path)
    names = [b["name"] for b in meta["bands"]]
    raw, valid = helpers.read(tiled, names)
    x = raw[:, valid].T.astype(np.float64)
    via_index, via_model = _read(idx)[0], _read(own)[0]
    for k, coeff in enumerate(model.index_coefficients(names)):
        bound = helpers.rounding_bound(coeff, names, x, precision) + helpers.float32_slack
        err = np.abs(via_index[k][valid].astype(np.float64) - via_model[k][valid])
        assert np.all(err <= bound), (k, err.max())
        assert np.isnan(via_index[k][~valid]).all()


# ------------------------------------------------------------------------------ refusals


@pytest.fixture()
def unwritable_dir(tmp_path):
    """A directory nobody can create files in (root too: the immutable attribute)."""
    path = tmp_path / "ro"
    path.mkdir()
    os.chmod(path, 0o500)
    immutable = False
    try:
        (path / ".probe").touch()
    except PermissionError:
        pass
    else:
        (path / ".probe").unlink()
        subprocess.run(["chattr", "+i", str(path)], check=True)
        immutable = True
    yield path
    if immutable:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    os.chmod(path, 0o700)


@pytest.fixture(scope="module")
def broken_inputs(sample_scene, tiled, tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    data = sample_scene.image.read_bytes()
    (d / "truncated.tif").write_bytes(data[: len(data) // 2])
    # Garbage at the start of a compressed tile in the middle of the file: open_raster's
    # first/last block check passes, the engine's read of that window fails mid-run.
    with rasterio.open(tiled) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_3", "TIFF", bidx=1))
    corrupt = bytearray(tiled.read_bytes())
    corrupt[offset : offset + 64] = bytes(range(64, 128))
    (d / "corrupt.tif").write_bytes(bytes(corrupt))
    no_b05 = [i for i in range(10) if i != 3]
    _rewrite(sample_scene.image, d / "no_b05.tif", order=no_b05)
    return d


@pytest.mark.parametrize("case", ["exists", "unwritable", "truncated", "corrupt", "missing_band",
                                  "cuda"])
def test_bad_apply_input_is_one_line_exit_2_and_writes_nothing(
    case, nd_model, tiled, broken_inputs, tmp_path, request
):
    outdir = tmp_path / "out"
    outdir.mkdir()
    image, extra = tiled, []
    if case == "exists":
        (outdir / "o.tif").write_bytes(b"keep me")
        expect = ("exists", "--overwrite")
    elif case == "unwritable":
        outdir = request.getfixturevalue("unwritable_dir")
        expect = ("not writable",)
    elif case in ("truncated", "corrupt"):
        image = broken_inputs / f"{case}.tif"
        expect = (image.name,)
    elif case == "missing_band":
        image, expect = broken_inputs / "no_b05.tif", ("B05",)
    else:
        extra, expect = ["--device", "cuda"], ("cuda",)
    before = {p.name: p.read_bytes() for p in outdir.iterdir()}
    # Refusals found before the run are one line even with the progress bar on; a read error
    # mid-run (corrupt tile) follows the bar, so that case runs quietly.
    result = _apply(nd_model.path, image, outdir / "o.tif", *extra, "--chunk-size", "16",
                    quiet=case == "corrupt")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for fragment in expect:
        assert fragment in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in outdir.iterdir()} == before


def test_mlp_applies_class_and_proba_but_has_no_indices(sample_scene, tiled, tmp_path,
                                                         helpers):
    model = tmp_path / "mlp.safetensors"
    result = runner.invoke(app, ["-q", "train", str(sample_scene.image),
                                 str(sample_scene.labels_raster), "-o", str(model), "--model",
                                 "mlp", "--epochs", "1", "--no-report"])
    assert result.exit_code == 0, result.output
    result = _apply(model, tiled, tmp_path / "o.tif", "--products", "indices")
    assert result.exit_code == 2 and "ND model" in result.output
    assert not (tmp_path / "o.tif").exists()
    result = _apply(model, tiled, tmp_path / "c.tif", "--products", "class,proba", "--chunk-size",
                    "32")  # its band-major form equals the MLP itself
    assert result.exit_code == 0, result.output
    _assert_matches_model(tmp_path / "c.tif", tiled, model, ["class", "proba"], helpers)
    # Scaled input runs on torch, as every model does on a CPU where the numpy kernels are not
    # bit-exact (an MLP once failed there: it has no indices)
    result = _apply(model, tiled, tmp_path / "s.tif", "--products", "proba", "--scale", "2")
    assert result.exit_code == 0, result.output
    raw, valid = helpers.read(tiled, _model_bands(model))
    want = helpers.expected(model, raw * np.float32(2), valid)["proba"]
    got, _ = _read(tmp_path / "s.tif")
    np.testing.assert_allclose(got[:, valid], want[:, valid], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ SIGKILL


def test_sigkill_mid_run_leaves_no_output_and_rerun_succeeds(nd_model, sample_scene, tmp_path,
                                                             helpers):
    """`ndgeo apply` killed with SIGKILL while writing: OUT never appears; a re-run works."""
    with rasterio.open(sample_scene.image) as src:
        profile, data, names = src.profile, src.read(), src.descriptions
    big = tmp_path / "big.tif"  # 512 x 512: the sample tiled 4 x 4, in 128 px blocks
    profile.update(width=512, height=512)
    with rasterio.open(big, "w", **profile) as dst:
        dst.write(np.tile(data, (1, 4, 4)))
        dst.descriptions = names
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "class.tif"
    ndgeo = shutil.which("ndgeo")
    assert ndgeo, "the ndgeo console script is not installed"
    # --batch-size 1 makes each 128 x 128 chunk take long enough to kill the run mid-way.
    proc = subprocess.Popen(
        [ndgeo, "-q", "apply", str(nd_model.path), str(big), "-o", str(out), "--chunk-size",
         "128", "--batch-size", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    helpers.kill_mid_write(proc, outdir, "class.tif", timeout=120)
    assert not out.exists()
    result = _apply(nd_model.path, big, out, "--chunk-size", "128")
    assert result.exit_code == 0, result.output
    _assert_matches_model(out, big, nd_model.path, ["class"], helpers)
