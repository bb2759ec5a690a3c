#!/usr/bin/env bash
# End-to-end on kind: create a cluster, build and load every image, install the
# chart with the kind values, wait for readiness, then run tests/e2e against it
# (upload, live steps over the router, autoscaling, helm test, upgrade, uninstall).
#
# Needs Docker, kind and kubectl; helm is taken from PATH or fetched into .tools/.
#   scripts/e2e-kind.sh            # cluster "handin-e2e", deleted afterwards
#   KEEP_CLUSTER=1 scripts/e2e-kind.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${HANDIN_E2E_CLUSTER:-handin-e2e}"
NAMESPACE=handin-e2e
TAG=e2e
PYTHON="${PYTHON:-.venv/bin/python}"

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e-kind: no Docker engine is running" >&2; exit 2; }
HELM="$("$PYTHON" scripts/fetch_helm.py)"

created=0
# Not `kind get clusters | grep -q`: grep -q exits at the first match, kind may then die of
# SIGPIPE, and under pipefail the pipeline fails although the cluster exists.
clusters="$(kind get clusters 2>/dev/null)"
if ! grep -qx -- "$CLUSTER" <<<"$clusters"; then
  kind create cluster --name "$CLUSTER" --config tests/e2e/kind-config.yaml --wait 120s
  created=1
fi
cleanup() {
  if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "$CLUSTER"
  fi
}
trap cleanup EXIT

mkdir -p .tools
# image<TAB>dockerfile<TAB>--build-arg K=V ... for every artifact in skaffold.yaml
"$PYTHON" - <<'PY' > .tools/e2e-artifacts.tsv
import yaml
for artifact in yaml.safe_load(open("skaffold.yaml"))["build"]["artifacts"]:
    args = " ".join(f"--build-arg {k}={v}" for k, v in artifact["docker"].get("buildArgs", {}).items())
    print(f"{artifact['image']}\t{artifact['docker']['dockerfile']}\t{args}")
PY
while IFS=$'\t' read -r image dockerfile build_args; do
  echo "building $image"
  # shellcheck disable=SC2086
  DOCKER_BUILDKIT=1 docker build -q -f "$dockerfile" $build_args -t "$image:$TAG" .
  kind load docker-image "$image:$TAG" --name "$CLUSTER"
done < .tools/e2e-artifacts.tsv

"$HELM" --kube-context "kind-$CLUSTER" -n "$NAMESPACE" upgrade --install handin charts/handin \
  --create-namespace -f charts/handin/values-kind.yaml --set image.tag="$TAG" --wait --timeout 15m
kubectl --context "kind-$CLUSTER" -n "$NAMESPACE" get pods

HANDIN_E2E_CLUSTER="$CLUSTER" HANDIN_E2E_SKIP_BUILD=1 HANDIN_E2E_KEEP=1 \
  "$PYTHON" -m pytest tests/e2e -v -p no:randomly "$@"
