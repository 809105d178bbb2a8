"""The package installs whole: a wheel built from this checkout, installed into a fresh virtual
environment, runs every entry point and finds its bundled configs; the lint configuration holds."""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from helpers import REPO

ENTRY_POINTS = ["train", "eval", "lm-eval", "plan", "pretrain", "generate", "demo", "make-tiny", "make-recall-data", "make-fact-data",
                "prepare-model", "prepare-corpus"]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """A fresh venv holding only the wheel of this checkout; the other dependencies are read from
    the test's own environment through a .pth line (no downloads), and its editable install of
    uio_ds is not (a .pth line adds a folder but does not run that folder's .pth files)."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(root / "dist"), REPO], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = glob.glob(str(root / "dist" / "uio_ds-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              wheel], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    work = root / "elsewhere"  # not the checkout: nothing may come from the source tree
    work.mkdir()
    return venv, work


def _run(venv, work, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    return subprocess.run([*args], cwd=work, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_wheel_runs_every_entry_point(installed_wheel):
    venv, work = installed_wheel
    where = _run(venv, work, str(venv / "bin" / "python"), "-c", "import uio_ds.eval, uio_ds; print(uio_ds.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(venv)), f"uio_ds imported from {where.stdout}, not from the wheel"
    installed = os.path.dirname(where.stdout.strip())
    for root, _dirs, files in os.walk(os.path.join(REPO, "uio_ds")):
        for f in files:
            if f.endswith((".py", ".json")):
                rel = os.path.relpath(os.path.join(root, f), os.path.join(REPO, "uio_ds"))
                assert os.path.isfile(os.path.join(installed, rel)), f"the wheel left out uio_ds/{rel}"
    top = _run(venv, work, str(venv / "bin" / "uio-ds"), "--help")
    assert top.returncode == 0, top.stderr
    for name in ENTRY_POINTS:
        assert name in top.stdout
        proc = _run(venv, work, str(venv / "bin" / "uio-ds"), name, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout, f"uio-ds {name} --help: {proc.stderr[-2000:]}"
    module = _run(venv, work, str(venv / "bin" / "python"), "-m", "uio_ds.train", "--help")
    assert module.returncode == 0 and "uio.segment_length" in module.stdout  # every config key is listed
    listed = _run(venv, work, str(venv / "bin" / "uio-ds"), "train", "--list-configs")
    assert listed.returncode == 0
    for name in ("zero2", "zero2_offload", "tiny", "smollm2"):
        assert name in listed.stdout
    # a bundled config is found by name from anywhere; its relative data path is the first problem here
    bundled = _run(venv, work, str(venv / "bin" / "uio-ds"), "train", "--config", "tiny", "--deepspeed", "zero2")
    assert bundled.returncode == 2 and "data source file 'data/kjv' not found" in bundled.stderr


def test_every_config_key_has_a_meaning():
    from uio_ds.config import TrainConfig, option_reference

    rows = option_reference(TrainConfig)
    assert len(rows) > 40
    undocumented = [key for key, _default, doc in rows if not doc]
    assert not undocumented, f"config keys without a docstring: {undocumented}"


@pytest.mark.skipif(shutil.which("ruff", path=os.path.dirname(sys.executable)) is None,
                    reason="ruff is not installed (pip install -e '.[dev]' installs it)")
def test_lint_configuration_holds():
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ruff"), "check", REPO],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


MAKEFILE_EXTRAS = {"dev", "plot", "gguf", "longbench", "serve", "lmeval"}  # what `make install` installs: .[dev] and what it names


def _project_requirements():
    """The requirements of pyproject.toml that `make install` installs, read from its metadata."""
    import tomllib

    from packaging.requirements import Requirement

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in MAKEFILE_EXTRAS:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in found if r.name != "uio_ds" and (r.marker is None or r.marker.evaluate())]


def test_the_lock_pins_every_requirement_within_its_range():
    """requirements/lock.txt (made by `make lock`) pins each requirement of pyproject.toml, torch
    excepted, to one version its range allows: a requirement added or narrowed without a new lock
    fails here, and `make install`'s `pip check` covers what they pull in."""
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    sys.path.insert(0, os.path.join(REPO, "requirements"))
    try:
        from compare_lock import read_lock
    finally:
        sys.path.pop(0)
    pins = read_lock(os.path.join(REPO, "requirements", "lock.txt"))
    assert "torch" not in pins and not any(name.startswith("uio") for name in pins)
    problems = []
    requirements = _project_requirements()
    assert len(requirements) > 20
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        if name not in pins:
            problems.append(f"{name} is not in the lock")
        elif Version(pins[name]) not in requirement.specifier:
            problems.append(f"{name}=={pins[name]} is outside {requirement.specifier}")
    assert not problems, "run `make lock`: " + "; ".join(problems)
