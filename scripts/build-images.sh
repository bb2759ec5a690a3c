#!/usr/bin/env bash
# Builds every image in images/ with podman (`make images`): the api, router and
# autoscaler, and one worker image per task (EXTRAS=documents for the tasks that
# read documents, as in skaffold.yaml). Layers are cached: the dependency layer
# of each image is rebuilt only when its lock changes, so a rebuild with nothing
# changed takes seconds.
#
# The Python base is pulled when a registry is reachable; where none is (this
# sandbox), scripts/build-base-image.sh builds a stand-in from Debian under the
# same name, once.
#
# Usage: scripts/build-images.sh [image ...]   e.g. api router worker-scan
# Environment: PODMAN (podman), TAG (dev), PODMAN_BUILD_FLAGS (extra flags).
set -euo pipefail

cd "$(dirname "$0")/.."
PODMAN=${PODMAN:-podman}
TAG=${TAG:-dev}
# This sandbox refuses crun's cgroup calls and any rlimit above what its runc
# may set: runc, with explicit ulimits (podman's default nofile is 1048576).
# shellcheck disable=SC2206
flags=(--runtime runc --ulimit nofile=16384:16384 --ulimit nproc=16384:16384 --layers ${PODMAN_BUILD_FLAGS:-})

command -v "$PODMAN" >/dev/null || { echo "podman is not installed (apt-get install podman buildah runc)" >&2; exit 1; }

base_name=$(sed -n 's/^ARG PYTHON_IMAGE=//p' images/api.Dockerfile)
if ! $PODMAN image exists "$base_name" && ! $PODMAN pull -q "$base_name" >/dev/null 2>&1; then
  echo "cannot pull $base_name: building a stand-in from Debian"
  scripts/build-base-image.sh
fi

# name -> Dockerfile and build args. Worker tasks and their extras follow skaffold.yaml.
declare -A dockerfile=([api]=api [router]=router [autoscaler]=autoscaler)
declare -A build_args=()
for task in scan store admin receipt maintenance similarity thumbnail; do
  dockerfile[worker-$task]=worker
  extras=""
  case "$task" in similarity | thumbnail) extras=documents ;; esac
  build_args[worker-$task]="--build-arg TASK=$task --build-arg EXTRAS=$extras"
done
order=(api router autoscaler worker-scan worker-store worker-admin worker-receipt worker-maintenance
  worker-similarity worker-thumbnail)

selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${order[@]}")
for name in "${selected[@]}"; do
  [ -n "${dockerfile[$name]:-}" ] || { echo "no image named $name (one of: ${order[*]})" >&2; exit 2; }
  started=$SECONDS
  log=$(mktemp)
  # shellcheck disable=SC2086
  if ! $PODMAN build "${flags[@]}" ${build_args[$name]:-} -f "images/${dockerfile[$name]}.Dockerfile" \
    -t "localhost/handin-$name:$TAG" . >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "building handin-$name failed" >&2
    exit 1
  fi
  rm -f "$log"
  size=$($PODMAN image inspect --format '{{.Size}}' "localhost/handin-$name:$TAG")
  printf 'built localhost/handin-%s:%s  %d MB  in %d s\n' "$name" "$TAG" $((size / 1000000)) $((SECONDS - started))
done
