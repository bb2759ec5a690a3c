"""The images' locks (requirements/*.lock) are current with pyproject.toml.

A lock is stale when the requirements it was compiled from differ from what
pyproject.toml declares now, when a pin falls outside a declared range, or when
a dependency of a pinned package is missing from it. Each failure says
"run make lock". No network: transitive dependencies are read from the
packages installed in this environment wherever their version is the pinned one.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import deque
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_MAKE_LOCK = "run `make lock` and commit requirements/"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def _lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("handin_lock", REPO_ROOT / "scripts/lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lock = _lock_module()
LOCK_NAMES = [lock.BUILD_LOCK, lock.DEV_LOCK, *lock.LOCKS]
# The images' interpreter: the lock's markers are evaluated for Linux, Python 3.11.
ENVIRONMENT = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def pins(name: str) -> dict[str, Version]:
    """Package -> pinned version, of the entries that apply to the images' interpreter."""
    pinned: dict[str, Version] = {}
    for line in (REPO_ROOT / "requirements" / f"{name}.lock").read_text().splitlines():
        match = PIN.match(line)
        if not match:
            continue
        marker = match["marker"]
        if marker and not Requirement(f"x; {marker}").marker.evaluate(ENVIRONMENT):  # type: ignore[union-attr]
            continue
        pinned[canonicalize_name(match["name"])] = Version(match["version"])
    return pinned


def applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**ENVIRONMENT, "extra": extra}) for extra in extras | {""})


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_lock_was_compiled_from_what_pyproject_declares_now(name: str) -> None:
    path = REPO_ROOT / "requirements" / f"{name}.lock"
    assert path.exists(), f"requirements/{name}.lock is missing: {RUN_MAKE_LOCK}"
    recorded = lock.recorded_digest(path)
    assert recorded == lock.digest(lock.lock_inputs(name)), (
        f"requirements/{name}.lock was compiled from other requirements than pyproject.toml declares: {RUN_MAKE_LOCK}"
    )


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_every_pin_has_hashes(name: str) -> None:
    text = (REPO_ROOT / "requirements" / f"{name}.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[-1])
    unhashed = [entry.split()[0] for entry in entries if "==" in entry and "--hash=sha256:" not in entry]
    assert not unhashed, f"pins without hashes in requirements/{name}.lock: {unhashed}: {RUN_MAKE_LOCK}"


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_pins_satisfy_the_declared_ranges_and_cover_every_dependency(name: str) -> None:
    pinned = pins(name)
    problems: list[str] = []
    queue = deque((Requirement(text), True) for text in lock.lock_inputs(name))
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        requirement, declared = queue.popleft()
        key = canonicalize_name(requirement.name)
        if declared and not applies(requirement, set()):
            continue
        version = pinned.get(key)
        if version is None:
            problems.append(f"{requirement} is not pinned")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{key}=={version} is outside {requirement}")
        if (key, frozenset(requirement.extras)) in seen:
            continue
        seen.add((key, frozenset(requirement.extras)))
        try:
            installed = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue
        if Version(installed.version) != version:
            continue  # another version here: its dependencies cannot be read without the network
        for text in installed.requires or []:
            child = Requirement(text)
            if applies(child, set(requirement.extras)):
                queue.append((child, False))
    assert not problems, f"requirements/{name}.lock: {'; '.join(problems)}: {RUN_MAKE_LOCK}"


@pytest.mark.parametrize(
    ("name", "absent"),
    [
        ("api", {"kubernetes", "pillow", "pypdfium2"}),
        ("router", {"kubernetes", "pillow", "aioboto3", "fastapi"}),
        ("autoscaler", {"pillow", "pypdfium2", "aioboto3", "fastapi"}),
        ("worker", {"pillow", "pypdfium2", "kubernetes", "fastapi"}),
        ("worker-documents", {"kubernetes", "fastapi"}),
    ],
)
def test_each_lock_holds_only_what_its_image_needs(name: str, absent: set[str]) -> None:
    assert not absent & set(pins(name)), f"requirements/{name}.lock pins {sorted(absent & set(pins(name)))}"
