"""kiln ships as one package, ``kiln`` (``kiln.controller``, ``kiln.agent``): installed from its wheel into a
fresh venv outside the checkout, it bakes, and it puts no top-level ``controller`` or ``agent`` into
site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.playbooks import REPO, image_repo, left_behind, make_playbooks

LOCAL_ONLY = (".venv", ".git", "build", "builds", "*.egg-info", "__pycache__", ".hypothesis", ".ruff_cache", ".kiln")


def build_wheel(dist: Path) -> Path:
    """The wheel, built from a copy of the checkout (setuptools' build/ stays out of it)."""
    source = dist.parent / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*LOCAL_ONLY))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("kiln-*.whl")
    return wheel


def test_the_wheel_holds_only_the_kiln_package(tmp_path):
    names = zipfile.ZipFile(build_wheel(tmp_path / "dist")).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"kiln", "kiln-0.1.0.dist-info"}, top
    assert "kiln/controller/bake.py" in names and "kiln/agent/modules/reboot.py" in names
    assert "kiln/controller/stages/verify.py" in names and "kiln/agent/checks/__init__.py" in names


@pytest.mark.slow
def test_the_wheel_installed_outside_the_checkout_bakes_a_role(engine, tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    assert sorted(p.name for p in Path(site).iterdir() if p.name in ("controller", "agent", "kiln")) == ["kiln"]
    # kiln's dependencies (not kiln) from the test venv: a .pth line adds the directory, not its .pth files
    (Path(site) / "kiln_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "tasks.py", work / "tasks.py")
    make_playbooks(
        work, {"steps.yml": '- name: marker\n  copy: {content: "from the wheel\\n", dest: /etc/kiln-marker}\n'}
    )
    where = subprocess.run(
        [python, "-c", "import kiln.controller, kiln.agent; print(kiln.controller.__file__, kiln.agent.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0 and REPO.as_posix() not in where.stdout and site in where.stdout, where
    env = {**os.environ, "CI": "", "KILN_JSON": "", "KILN_STATE_DIR": str(work / "state")}
    proc = subprocess.run(
        [python, "-m", "invoke", "-r", str(work), "bake", "--role", "tiny"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not left_behind(engine, proc.stdout + proc.stderr)
    assert engine.images(image_repo("tiny")), "the bake tagged no image"
