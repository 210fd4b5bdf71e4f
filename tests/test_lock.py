"""requirements.lock: what `make install` puts in .venv, and what pyproject.toml asks for."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# Packages the lock leaves out on purpose (pyproject.toml's [tool.uv] override-dependencies) and
# those a CUDA build of torch brings (`make install TORCH=cu130`, the lock's one exception).
LEFT_OUT = {"llm", "llama-cpp-python"}
CUDA_EXTRAS = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")


def locked() -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.M)
    return {canonicalize_name(name): Version(version) for name, version in pins}


def asked() -> list[Requirement]:
    """Every requirement pyproject.toml states: dependencies, the test extra and the dev group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"],
             *project["dependency-groups"]["dev"]]
    return [Requirement(line) for line in lines]


def test_every_requirement_of_pyproject_is_locked_at_a_version_it_allows():
    pins = locked()
    for requirement in asked():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock: run 'make lock'"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's '{requirement}': "
            "run 'make lock'")


def test_every_locked_package_carries_hashes():
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", (ROOT / "requirements.lock").read_text())
    for block in blocks[1:]:
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_lock_leaves_out_the_demo_models_runtime_dependencies():
    assert not LEFT_OUT & set(locked())


def installed_by_make() -> str | None:
    """The torch flavour `make install` recorded, when this interpreter is the project's .venv."""
    stamp = ROOT / ".venv" / ".installed"
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() or not stamp.exists():
        return None
    return stamp.read_text().strip().removeprefix("torch=") or "cpu"


def test_make_install_reproduces_the_locked_set_exactly():
    flavour = installed_by_make()
    if flavour is None:
        pytest.skip("runs in the .venv that `make install` builds")
    pins = locked()
    seen = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}
    seen.pop("textbook-pipeline")
    cuda = flavour != "cpu"
    extra = {n for n in set(seen) - set(pins) if not (cuda and CUDA_EXTRAS.match(n))}
    assert not extra, f"installed but not locked: {sorted(extra)}"
    assert not set(pins) - set(seen), f"locked but not installed: {sorted(set(pins) - set(seen))}"
    differ = {n: (str(pins[n]), str(v)) for n, v in seen.items() if n in pins and v != pins[n]
              and not (cuda and n == "torch" and v.base_version == pins[n].base_version)}
    assert not differ, f"installed versions differ from the lock (locked, installed): {differ}"
