"""Our own Dockerfile lint: fast and without a container engine (tests/images builds and runs the images).

Each Dockerfile under images/: multi-stage; every base image pinned to a
version or digest; every path it COPYs from the build context exists and is
let through by .dockerignore; the final stage runs as a non-root user, installs
nothing and carries no build tools; the packages its program imports are the
packages it copies; the api image carries no Pillow or pypdfium2.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core import keys

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = REPO_ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
PROJECT_PACKAGES = {"api", "router", "workers", "autoscaler", "core"}
# The entry modules each image runs: `handin <command>` dispatches to these.
ENTRY_MODULES = {
    "api.Dockerfile": ["api.main", "core.migrate", "core.demo"],
    "router.Dockerfile": ["router.server"],
    "autoscaler.Dockerfile": ["autoscaler.main"],
    "worker.Dockerfile": ["workers.run", *(f"workers.{task}" for task in (*keys.TASKS, keys.MAINTENANCE_TASK))],
}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|[a-z0-9.+-]+-dev)\b")
DOCUMENT_LIBRARIES = {"PIL", "pypdfium2"}


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def logical_lines(text: str) -> list[str]:
    """Instructions with `\\` continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda match: args.get(match.group(1), match.group(0)), value)


def parse(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=substitute(words[0], args), name=name))
        else:
            assert stages, f"{path.name}: {instruction} before the first FROM"
            stages[-1].instructions.append((instruction, rest))
    return Dockerfile(path=path, args=args, stages=stages)


def copy_sources(rest: str) -> tuple[list[str], str | None]:
    """Source paths of a COPY and its --from stage, if any."""
    words = shlex.split(rest)
    from_stage = next((word.split("=", 1)[1] for word in words if word.startswith("--from=")), None)
    paths = [word for word in words if not word.startswith("--")]
    return paths[:-1], from_stage


def dockerignore_allows(path: str) -> bool:
    """.dockerignore is an allowlist: `*`, then `!top-level` entries."""
    rules = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert "*" in rules, ".dockerignore should start from an empty context"
    return path.strip("./").split("/")[0] in allowed


@pytest.fixture(params=DOCKERFILES, ids=lambda path: path.name)
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse(request.param)


def test_there_is_a_dockerfile_for_each_component():
    assert {path.name for path in DOCKERFILES} == set(ENTRY_MODULES)


def test_multi_stage(dockerfile: Dockerfile):
    assert len(dockerfile.stages) >= 2
    assert dockerfile.stages[0].name, "the build stage needs a name to copy from"


def test_base_images_are_pinned(dockerfile: Dockerfile):
    stage_names = {stage.name for stage in dockerfile.stages if stage.name}
    for stage in dockerfile.stages:
        if stage.image in stage_names:
            continue
        assert "$" not in stage.image, f"unresolved base image {stage.image}"
        repository, _, tag = stage.image.partition("@")[0].rpartition(":")
        pinned_by_digest = re.search(r"@sha256:[0-9a-f]{64}$", stage.image)
        pinned_by_version = repository and re.match(r"\d+\.\d+\.\d+", tag)
        assert pinned_by_digest or pinned_by_version, f"{stage.image} is not pinned to a version or digest"


def test_every_copied_path_exists_and_reaches_the_build_context(dockerfile: Dockerfile):
    stage_names = {stage.name for stage in dockerfile.stages if stage.name}
    copied = 0
    for stage in dockerfile.stages:
        for instruction, rest in stage.instructions:
            if instruction not in ("COPY", "ADD"):
                continue
            sources, from_stage = copy_sources(rest)
            if from_stage:
                assert from_stage in stage_names, f"COPY --from={from_stage}: no such stage"
                continue
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.path.name}: COPY {source}: no such path"
                assert dockerignore_allows(source), f"{dockerfile.path.name}: {source} is excluded by .dockerignore"
                copied += 1
    assert copied


def test_final_stage_runs_as_a_non_root_user(dockerfile: Dockerfile):
    users = [rest.strip() for instruction, rest in dockerfile.final.instructions if instruction == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    assert any(instruction in ("CMD", "ENTRYPOINT") for instruction, _ in dockerfile.final.instructions)


def test_final_stage_has_no_build_tools_and_installs_nothing(dockerfile: Dockerfile):
    for instruction, rest in dockerfile.final.instructions:
        if instruction == "RUN":
            assert "apt-get install" not in rest and "apk add" not in rest, rest
            assert "pip install" not in rest, "install in the build stage, copy the venv"
            assert not BUILD_TOOLS.search(rest), rest
        if instruction == "COPY":
            sources, from_stage = copy_sources(rest)
            if from_stage:
                # The virtualenv, and the text previews' face with its licence (files, no programs).
                assert sources in (["/opt/venv"], ["/opt/fonts"]), f"only these come from the build stage: {rest}"


def test_document_libraries_only_in_the_images_that_need_them():
    api = (IMAGES / "api.Dockerfile").read_text()
    assert "documents" not in api and "EXTRAS" not in api
    worker = parse(IMAGES / "worker.Dockerfile")
    install = " ".join(rest for instruction, rest in worker.stages[0].instructions if instruction == "RUN")
    # Each image installs its own lock (tests/images/test_locks.py checks what each lock holds).
    assert "requirements/worker${EXTRAS:+-$EXTRAS}.lock" in install
    assert "--require-hashes" in install and "--no-deps" in install


def _module_path(module: str) -> Path | None:
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def reachable(entries: list[str], top_level_only: bool) -> tuple[set[str], set[str]]:
    """Project modules reachable from the entries, and every import name they use."""
    seen: set[str] = set()
    names: set[str] = set()
    queue = list(entries)
    while queue:
        module = queue.pop()
        path = _module_path(module)
        if module in seen or path is None or module == "core.cli":
            continue
        seen.add(module)
        for name in _imports(path, module, top_level_only):
            names.add(name)
            if name.split(".")[0] in PROJECT_PACKAGES:
                queue.append(name)
    return seen, names


@pytest.mark.parametrize("name", sorted(ENTRY_MODULES))
def test_each_image_copies_every_package_its_program_imports(name: str):
    dockerfile = parse(IMAGES / name)
    copied = set()
    for instruction, rest in dockerfile.stages[0].instructions:
        if instruction == "COPY":
            sources, from_stage = copy_sources(rest)
            copied |= {source.strip("./").split("/")[0] for source in sources if not from_stage}
    present = [entry for entry in ENTRY_MODULES[name] if _module_path(entry)]
    modules, _ = reachable(present, top_level_only=False)
    needed = {module.split(".")[0] for module in modules}
    assert needed <= copied, f"{name} runs code from {sorted(needed - copied)} but does not COPY it"


def test_the_api_imports_no_document_library_when_it_starts():
    present = [entry for entry in ENTRY_MODULES["api.Dockerfile"] if _module_path(entry)]
    _, names = reachable(present, top_level_only=True)
    assert not {name.split(".")[0] for name in names} & DOCUMENT_LIBRARIES


def test_every_data_file_in_a_package_is_package_data():
    """Images install the project non-editable: a file outside package-data would be missing."""
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    missing = []
    for package in PROJECT_PACKAGES:
        for path in (REPO_ROOT / package).rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            if not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
                missing.append(str(path.relative_to(REPO_ROOT)))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
