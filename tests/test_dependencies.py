"""The dependency locks: one per supported Python, in step with pyproject.toml, each installable.

Only Python 3.11 runs on the CI machine, so 3.12 and 3.13 are proven the way pip would install
them there: pip resolves each locked set for that Python version from binary wheels alone.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SUPPORTED = [
    c.rsplit(" ", 1)[-1]
    for c in PROJECT["classifiers"]
    if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
]
Lock = tuple[str, str]
LOCKS: list[Lock] = [(version, extra) for version in SUPPORTED for extra in ("dev", "service")]


def lock_path(version: str, extra: str) -> Path:
    name = f"py{version}.txt" if extra == "dev" else f"service-py{version}.txt"
    return ROOT / "requirements" / name


def pins(path: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), re.MULTILINE)
    return {canonicalize_name(name): version for name, version in found}


def wanted(version: str, extra: str) -> set[str]:
    """Direct requirements that apply on the locks' platform (Linux x86_64) for that Python."""
    environment = {
        **default_environment(),
        "python_version": version,
        "sys_platform": "linux",
        "platform_machine": "x86_64",
        "extra": "",
    }
    extras = PROJECT["optional-dependencies"]
    # The image's lock carries tracing (otel); the full lock everything `.[dev]` pulls in.
    requirements = [*PROJECT["dependencies"], *extras["otel"]]
    if extra == "dev":
        requirements += extras["dev"]
    names = set()
    for line in requirements:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
            for own in requirement.extras:  # `mnist-serving[otel]` inside another extra
                requirements += extras[own]
        elif requirement.marker is None or requirement.marker.evaluate(environment):
            names.add(canonicalize_name(requirement.name))
    return names


def test_supported_pythons_match_requires_python() -> None:
    assert SUPPORTED == ["3.11", "3.12", "3.13"]
    allowed = SpecifierSet(PROJECT["requires-python"])
    assert all(f"{v}.0" in allowed for v in SUPPORTED)
    assert "3.10.0" not in allowed
    assert "3.14.0" not in allowed


@pytest.mark.parametrize(("version", "extra"), LOCKS)
def test_lock_pins_every_requirement_of_pyproject(version: str, extra: str) -> None:
    locked = pins(lock_path(version, extra))
    missing = wanted(version, extra) - locked.keys()
    assert not missing, f"{lock_path(version, extra).name} lacks {missing}: run `make lock`"
    if extra == "service":
        assert "pytest" not in locked  # the image carries no test tools


def test_installed_environment_matches_its_lock() -> None:
    """What `make install` put in this environment is exactly what the lock says."""
    from importlib.metadata import distributions

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    locked = pins(lock_path(version, "dev"))
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    differing = {
        name: (pinned, installed[name])
        for name, pinned in locked.items()
        if name in installed and installed[name] != pinned
    }
    assert not differing, f"installed versions differ from the lock: {differing}"


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Lock, Popen[str]]]:
    """pip resolving every lock at once: each is ~20 s of mostly CPU, run one after another they
    were the suite's slowest minute and a half; side by side they share the machine's cores."""
    started = {}
    for version, extra in LOCKS:
        target = tmp_path_factory.mktemp(f"resolve-{version}-{extra}")
        started[version, extra] = Popen(
            [
                sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                "--ignore-installed", "--python-version", version, "--only-binary=:all:",
                "--target", str(target), "-r", str(lock_path(version, extra)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("version", "extra"), LOCKS)
def test_locked_set_resolves_for_its_python(
    version: str, extra: str, resolutions: dict[Lock, Popen[str]]
) -> None:
    process = resolutions[version, extra]
    _, stderr = process.communicate(timeout=600)
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    assert process.returncode == 0, "\n".join(errors) or stderr[-2000:]
