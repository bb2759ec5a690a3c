"""Regenerates requirements/*.lock: one hash-pinned lock per image (`make lock`).

Each image installs only its lock, with `pip install --require-hashes --no-deps`,
so a build takes exactly the versions and files reviewed here, whatever PyPI
serves later. A lock covers the project's base dependencies plus the extras
its image needs (LOCKS below); `build.lock` pins the build backend from
[build-system].requires, so the project itself is installed without reaching
for an unpinned setuptools.

Each lock's first line records a digest of the requirements it was compiled
from: tests/images/test_locks.py compares it with pyproject.toml and says
"run make lock" when they differ.

Usage: python scripts/lock.py [--upgrade] [lock name ...]
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO_ROOT / "requirements"
# lock name -> the extras its image installs on top of the base dependencies.
# The worker images: EXTRAS="" takes worker.lock, EXTRAS=documents worker-documents.lock.
LOCKS: dict[str, tuple[str, ...]] = {
    "api": ("api",),
    "router": ("router",),
    "autoscaler": ("autoscaler",),
    "worker": ("worker",),
    "worker-documents": ("worker", "documents"),
}
BUILD_LOCK = "build"
# What `make install` puts in the development venv: every extra plus the test tools.
# Installing from a lock keeps a clean machine out of pip's backtracking over the
# whole graph (moto, aioboto3 and kubernetes-validate pin overlapping ranges).
DEV_LOCK = "dev"
PROJECT_NAME = "handin"
DIGEST_PREFIX = "# inputs-sha256: "
PYTHON_VERSION = "3.11"


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def lock_inputs(name: str, project: dict[str, object] | None = None) -> list[str]:
    """The requirement strings a lock is compiled from, as pyproject.toml declares them now."""
    data = project or pyproject()
    if name == BUILD_LOCK:
        return sorted(data["build-system"]["requires"])  # type: ignore[index]
    declared = data["project"]  # type: ignore[index]
    requirements = list(declared["dependencies"])  # type: ignore[index]
    extras = (DEV_LOCK,) if name == DEV_LOCK else LOCKS[name]
    for extra in extras:
        requirements += _expanded(declared["optional-dependencies"], extra)  # type: ignore[index]
    return sorted(set(requirements))


def _expanded(optional: dict[str, list[str]], extra: str) -> list[str]:
    """An extra's requirements, with the project's own `handin[a,b]` entries replaced by those extras'."""
    requirements: list[str] = []
    for text in optional[extra]:
        name, _, rest = text.partition("[")
        if name.strip() != PROJECT_NAME:
            requirements.append(text)
            continue
        for inner in rest.rstrip("]").split(","):
            requirements += _expanded(optional, inner.strip())
    return requirements


def digest(requirements: list[str]) -> str:
    return hashlib.sha256("\n".join(requirements).encode()).hexdigest()


def recorded_digest(lock: Path) -> str | None:
    first = lock.read_text().splitlines()[0] if lock.exists() else ""
    return first.removeprefix(DIGEST_PREFIX) if first.startswith(DIGEST_PREFIX) else None


def compile_lock(name: str, upgrade: bool) -> None:
    requirements = lock_inputs(name)
    target = REQUIREMENTS / f"{name}.lock"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / f"{name}.in"
        source.write_text("\n".join(requirements) + "\n")
        output = Path(folder) / f"{name}.lock"
        if target.exists() and not upgrade:
            # uv keeps the versions already pinned in the output file when they still fit.
            output.write_text(target.read_text())
        command = [
            sys.executable, "-m", "uv", "pip", "compile", str(source), "--output-file", str(output),
            "--generate-hashes", "--universal", "--python-version", PYTHON_VERSION,
            "--custom-compile-command", "make lock", "--no-annotate", "--quiet",
        ]  # fmt: skip
        if upgrade:
            command.append("--upgrade")
        subprocess.run(command, check=True)
        target.write_text(f"{DIGEST_PREFIX}{digest(requirements)}\n" + output.read_text())
    print(f"wrote {target.relative_to(REPO_ROOT)}")


def main(argv: list[str]) -> int:
    REQUIREMENTS.mkdir(exist_ok=True)
    wanted = [arg for arg in argv if not arg.startswith("--")] or [BUILD_LOCK, DEV_LOCK, *LOCKS]
    for name in wanted:
        compile_lock(name, upgrade="--upgrade" in argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
