#!/usr/bin/env bash
# Start local PostgreSQL and Redis for the real-connection tests when they are installed but stopped.
# Where they are absent this prints why, and those tests skip themselves; it never fails the run.
set -u
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || echo "services: PostgreSQL did not start"
  fi
fi
command -v pg_isready >/dev/null 2>&1 || echo "services: PostgreSQL is not installed; its tests will be skipped"
if command -v redis-server >/dev/null 2>&1; then
  if ! (command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1); then
    echo "services: starting Redis"
    mkdir -p /tmp/sidecar-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /tmp/sidecar-redis \
      --logfile /tmp/sidecar-redis/redis.log || echo "services: Redis did not start"
    sleep 0.5
  fi
else
  echo "services: Redis is not installed; its tests will be skipped"
fi
# Chromium for the dashboard's browser tests comes from Debian's package (Playwright's own download
# cannot work offline); installed when we may, else those tests skip with their reason.
if [ ! -x /usr/bin/chromium ] && [ -z "${SIDECAR_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "services: installing Debian's chromium for the dashboard tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "services: chromium could not be installed; the dashboard's browser tests will be skipped"
  else
    echo "services: chromium is not installed (apt-get install chromium); the dashboard's browser tests will be skipped"
  fi
fi
exit 0
