#!/usr/bin/env bash
# Builds a stand-in for the Dockerfiles' Python base image from Debian, for
# machines that cannot pull from a container registry but can reach a Debian
# mirror. It is tagged with the exact name the Dockerfiles' FROM uses, so the
# Dockerfiles are the same here and elsewhere; where the registry is reachable,
# skip this script and the real base is pulled.
#
# Debian bookworm's python3 is 3.11 (3.11.2), the same minor version as the real
# base; `python`/`python3` are linked at /usr/local/bin as in the official image.
# CA certificates come from the host's bundle. Built once: an existing tag is
# reused unless --force is given.
#
# Usage: scripts/build-base-image.sh [--force]
set -euo pipefail

cd "$(dirname "$0")/.."
# The one base image name the Dockerfiles use (ARG PYTHON_IMAGE), fully qualified
# as podman stores a docker.io short name.
base_name=$(sed -n 's/^ARG PYTHON_IMAGE=//p' images/api.Dockerfile)
case "$base_name" in
  */*) tag="$base_name" ;;
  *) tag="docker.io/library/$base_name" ;;
esac
PODMAN=${PODMAN:-podman}

if [ "${1:-}" != "--force" ] && $PODMAN image exists "$tag"; then
  echo "base image $tag exists (scripts/build-base-image.sh --force rebuilds it)"
  exit 0
fi

# The mirror this machine's apt uses (deb822 or one-line format).
mirror=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | grep -v -- '-security' | grep -m1 -oE 'https?://[^ ]+/debian/?' || true)
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d /var/tmp/handin-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
# What an image does not need at run time: package caches, docs, man pages.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*

tar --numeric-owner -C "$rootfs" -c . | $PODMAN import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  --message "stand-in for $base_name: Debian bookworm minbase, python3 from Debian" \
  - "$tag"
echo "built $tag"
