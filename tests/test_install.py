"""The package as a user installs it: a wheel built from this checkout, installed into a fresh environment, imported
and run from outside the checkout (its configs, kernel sources and data files come with it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("install")]   # one worker builds the venv


def _run(cmd, cwd, env=None, timeout=600):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}: {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment holding the wheel of this checkout. Its dependencies are the packages of the
    environment running the tests (a ``.pth`` file lists its site-packages, whether that is the system Python, a
    virtualenv or conda): the test is about the package, not about PyPI."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"                              # a copy, so that the build leaves nothing in the checkout
    for package in ("sresformer_jax", "configs"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)], tmp)
    wheel, = (tmp / "dist").glob("sresformer_jax-*.whl")
    _run([sys.executable, "-m", "venv", str(tmp / "venv")], tmp)
    python = tmp / "venv" / "bin" / "python"
    own = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    ours = [p for p in sys.path if p.endswith("-packages") and os.path.isdir(p)]    # this environment's packages
    Path(own, "test_environment.pth").write_text("\n".join(ours) + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp)
    return tmp, python


def test_the_wheel_installs_and_imports_from_outside_the_checkout(venv):
    tmp, python = venv
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"JAX_PLATFORMS": "cpu"}
    out = _run([str(python), "-c", textwrap.dedent("""
        import sresformer_jax as s
        from sresformer_jax import configs
        from sresformer_jax.data import dvs
        from sresformer_jax.ops import kernels
        m = s.create_model("spikingresformer_cifar", num_classes=10, img_size=32, conv_impl="xla")
        print("FILE", s.__file__)
        print("IMPL", m.conv_impl)
        print("CONFIGS", ",".join(configs.names()))
        print("SOURCES", all(p.is_file() for p in kernels.SOURCES + kernels.HEADERS))
        print("SPLIT", sum(len(v) for v in dvs.load_split()["train"].values()))   # the shipped, hashed file
    """)], tmp, env).stdout
    assert f"FILE {tmp / 'venv'}" in out and str(ROOT) not in out.split("FILE ")[1].splitlines()[0]
    assert "IMPL xla" in out and "SOURCES True" in out
    assert "imagenet" in out and "quickstart" in out and "SPLIT 9000" in out


def test_the_console_scripts_run_from_anywhere(venv, tmp_path):
    _, python = venv
    scripts = python.parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"JAX_PLATFORMS": "cpu"}
    p = subprocess.run([str(scripts / "sresformer-train"), "--config=imagenet.py:ti", "--config.data_dir=/none",
                        f"--workdir={tmp_path / 'w'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 1 and "DatasetNotFoundError" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    p = subprocess.run([str(scripts / "sresformer-eval"), f"--workdir={tmp_path / 'nothing'}"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1 and "no checkpoint in" in p.stderr and "Traceback" not in p.stderr
