"""requirements.lock pins every package that pyproject.toml asks for (with the dev extra), each within the
declared range, and this environment was installed from it: the versions the suite passes with."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, pinned = line.partition("==")
        assert separator, f"requirements.lock: {line!r} is not pinned with =="
        pins[canonicalize_name(name)] = pinned
    return pins


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [
        Requirement(text) for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    ]


def test_every_declared_dependency_is_locked_within_its_range():
    pins = locked_versions()
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is declared in pyproject.toml but not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={pins[name]}, outside pyproject's {requirement}"
        )


def test_this_environment_was_installed_from_the_lock():
    mismatched = []
    for name, pinned in locked_versions().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            mismatched.append(f"{name}: locked {pinned}, not installed")
            continue
        if installed.split("+")[0] != pinned.split("+")[0]:
            mismatched.append(f"{name}: locked {pinned}, installed {installed}")
    if mismatched and not (REPO / ".venv").is_dir():
        pytest.skip("not running in the project's .venv")
    assert not mismatched, "run `make setup` (or `make lock` after changing pyproject.toml): " + "; ".join(
        mismatched
    )


def test_every_install_path_goes_through_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -r $(LOCK)" in makefile and "--no-deps --no-build-isolation -e ." in makefile
    assert "$(STAMP): pyproject.toml $(LOCK)" in makefile, "a changed lock reinstalls"
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")
    dockerfile = (REPO / "Dockerfile").read_text()
    assert (
        "pip install -r requirements.lock" in dockerfile
        and "pip install --no-deps --no-build-isolation ." in dockerfile
    )
    assert "$(grep -E '^(torch|torchvision)==' requirements.lock)" in dockerfile, (
        "PyTorch at the locked version"
    )
