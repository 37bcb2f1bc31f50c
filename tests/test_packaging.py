"""A wheel, not the editable install, is what users get: it must carry every file a command reads (issue 15 §3).

The wheel is built from a clean copy of the sources (setuptools writes build/ and *.egg-info beside them, and a
stale build/lib could hide a missing file), without build isolation or an index: nothing is downloaded; the build
backend is the setuptools of facerco[dev].
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "facerco")


def _pip(*args: str) -> None:
    """Run pip of this interpreter; its output only when it fails."""
    done = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--no-index", "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(origin, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src))
    (built,) = (work / "dist").glob("facerco-*.whl")
    return built


def _package_data_files() -> list[str]:
    """Every non-Python file inside the facerco package folder, as wheel member names."""
    package = ROOT / "facerco"
    return sorted(p.relative_to(ROOT).as_posix() for p in package.rglob("*")
                  if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts)


def test_wheel_holds_the_package_data(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"facerco/configs/demo/teacher.yaml", "facerco/configs/demo/student.yaml"} <= names
    missing = [n for n in _package_data_files() if n not in names]
    assert not missing, f"{wheel.name} lacks package files: {missing}"
    strays = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} - {"facerco"})
    assert not strays, f"{wheel.name} installs top-level folders besides facerco: {strays}"


def test_installed_wheel_reads_its_configs_outside_the_source_tree(wheel: Path, tmp_path: Path):
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel))
    probe = (
        "import facerco.configs, facerco.demo\n"
        "from facerco.config import load_config\n"
        "from facerco.configs import config_path\n"
        f"assert facerco.configs.__file__.startswith({str(site)!r}), facerco.configs.__file__\n"
        "teacher = load_config(config_path('demo', 'teacher.yaml'))\n"
        "student = load_config(config_path('demo', 'student.yaml'))\n"
        "print(teacher.model.name, student.model.name, student.kind)\n"
    )
    run = tmp_path / "elsewhere"
    run.mkdir()
    # -S: no site processing, so the editable install's import hook (a .pth file) cannot serve facerco modules;
    # the dependencies come from this interpreter's site-packages, after the wheel's folder.
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), deps])}
    done = subprocess.run([sys.executable, "-S", "-c", probe], cwd=run, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["iresnet_small", "mbf_0.8m", "student"]


def test_a_config_that_is_not_shipped_is_a_clear_error():
    from facerco.configs import config_path

    with pytest.raises(FileNotFoundError, match="demo/nope.yaml: config not shipped with facerco"):
        config_path("demo", "nope.yaml")
