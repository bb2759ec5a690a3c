"""scripts/e2e-kind.sh with stand-in tools on PATH: it must find a cluster that exists.

`kind get clusters | grep -qx NAME` under `set -o pipefail`: grep exits at its
first match, kind then dies of SIGPIPE, the pipeline fails, and the script
tries to create a cluster that is already there. The stand-in `kind` lists the
cluster first and many more after it, as a busy CI host would. Needs no cluster.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "e2e-kind.sh"

# Records its arguments; `kind get clusters` lists ours first, then enough others to fill a pipe.
FAKE_KIND = f"""#!{sys.executable}
import sys
with open(sys.argv[0] + ".calls", "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["get", "clusters"]:
    print("handin-e2e", flush=True)
    for n in range(200000):
        print(f"other-cluster-{{n}}")
    sys.exit(0)
if sys.argv[1:3] == ["create", "cluster"]:
    sys.exit(3)
"""
# `docker info` succeeds; the first `docker build` stops the script there, past the cluster check.
FAKE_DOCKER = """#!/bin/sh
[ "$1" = info ] && exit 0
echo "reached $1" >&2
exit 4
"""
FAKE_OK = "#!/bin/sh\nexit 0\n"


def install(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_the_script_uses_the_existing_cluster(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    install(tools, "kind", FAKE_KIND)
    install(tools, "docker", FAKE_DOCKER)
    install(tools, "kubectl", FAKE_OK)
    install(tools, "helm", FAKE_OK)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "PYTHON": sys.executable}
    env.pop("HANDIN_E2E_CLUSTER", None)
    result = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    calls = (tools / "kind.calls").read_text().splitlines()
    assert not any(call.startswith("create") for call in calls), (calls, result.stderr)
    assert result.returncode == 4 and "reached build" in result.stderr, result.stderr
