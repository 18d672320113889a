"""The command line as a user meets it: help, version, unimplemented commands, errors."""

import shutil
import subprocess
import sys

from typer.testing import CliRunner

import ndgeo
from ndgeo.cli import app

runner = CliRunner()


def test_package_imports_with_version():
    assert ndgeo.__version__.count(".") == 2


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "formula", "apply", "index", "denoise", "sample-data", "demo"):
        assert command in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert ndgeo.__version__ in result.output


def test_console_script_help_runs_as_subprocess():
    exe = shutil.which("ndgeo")
    assert exe, "the ndgeo console script is not installed on PATH"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout


def test_python_dash_m_runs():
    done = subprocess.run(
        [sys.executable, "-m", "ndgeo", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert ndgeo.__version__ in done.stdout


def test_unknown_option_is_a_usage_error():
    result = runner.invoke(app, ["--no-such-option"])
    assert result.exit_code == 2


def test_cli_start_up_imports_no_heavy_library():
    """`ndgeo --help` and argument errors come without importing torch or the xarray stack
    (about 3 s of imports on the project's machine); commands import what they use."""
    code = ("import sys, ndgeo.cli; heavy = ('torch', 'xarray', 'rioxarray', 'dask', 'pyogrio', "
            "'spyndex'); print(sorted(m for m in heavy if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    result = runner.invoke(app, ["denoise", "train", "--help"])
    assert result.exit_code == 0 and "500" in result.output  # DenoiseConfig.steps default
