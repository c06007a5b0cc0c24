"""The package as installed: every module and the configs in the wheel, console scripts that
find their configs from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from helpers import CONF_DIR, REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_the_package_list_names_every_package_of_src_and_the_configs() -> None:
    source = REPO_ROOT / "src"
    found = {
        ".".join(init.parent.relative_to(source).parts) for init in source.glob("**/__init__.py")
    }
    settings = PYPROJECT["tool"]["setuptools"]
    assert set(settings["packages"]) == found | {"licexp.conf"}
    assert settings["package-dir"]["licexp.conf"] == "conf"


def test_the_configs_are_the_package_licexp_conf() -> None:
    import importlib.resources

    configs = importlib.resources.files("licexp.conf")
    assert (configs / "train.yaml").is_file()
    assert Path(str(configs)).resolve() == CONF_DIR.resolve()


def system_python() -> str:
    """A Python outside the project's venv that has uv (``make install`` puts it there)."""
    for candidate in ("python3", "python"):
        path = shutil.which(
            candidate, path=os.environ["PATH"].replace(str(REPO_ROOT / ".venv"), "")
        )
        if (
            path
            and subprocess.run([path, "-m", "uv", "--version"], capture_output=True).returncode == 0
        ):
            return path
    pytest.skip("no Python with uv on PATH (make install provides one)")


@pytest.mark.slow
def test_an_installed_wheel_trains_from_another_folder(tmp_path) -> None:
    """The wheel, installed into a fresh venv (its dependencies borrowed from the project's
    venv), carries the configs: its ``licexp-train`` runs a sweep from an unrelated folder."""
    python = system_python()
    build = subprocess.run(
        [
            python,
            "-m",
            "uv",
            "build",
            "--wheel",
            "--out-dir",
            str(tmp_path / "dist"),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("licexp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    configs = {
        f"licexp/conf/{path.relative_to(REPO_ROOT / 'conf').as_posix()}"
        for path in (REPO_ROOT / "conf").rglob("*.yaml")
        if path.parent.name != "local"  # a researcher's own, ignored by git
    }
    assert (
        "licexp/conf/train.yaml" in configs
        and "licexp/conf/hydra/launcher/slurm_gpu.yaml" in configs
    )
    assert configs - set(names) == set()  # every config, the launcher presets included

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # the dependencies as a path entry: the project venv's .pth files (its editable
    # licexp among them) are not processed from there
    (target / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [
            python,
            "-m",
            "uv",
            "pip",
            "install",
            "--no-deps",
            "--python",
            str(venv / "bin" / "python"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import licexp; print(licexp.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    result = subprocess.run(
        [
            str(venv / "bin" / "licexp-train"),
            "-m",
            "lmbda=0.0018,0.013",
            "debug=smoke",
            "evaluate=false",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (work / "logs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
