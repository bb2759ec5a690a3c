#!/usr/bin/env bash
# Installs and starts what the test suite talks to, when it is not already there.
# PostgreSQL and Redis are started if stopped; clamd, SMTP (aiosmtpd) and the
# S3-compatible server (moto) are started by the test fixtures themselves.
set -euo pipefail

need_apt=()
command -v clamd >/dev/null || need_apt+=(clamav-daemon)
command -v etcd >/dev/null || need_apt+=(etcd-server)
# The image smoke tests (tests/images): podman builds and runs them; debootstrap makes the stand-in base.
for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The face text previews are drawn in (tests/unit/test_text_preview.py).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ] || need_apt+=(fonts-dejavu-core)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi

for _ in $(seq 1 30); do
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q && exit 0
  sleep 1
done
echo "redis or postgresql did not come up" >&2
exit 1
