#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback for the `postgres` tests and print its URL.
#
#   export DLF_TEST_POSTGRES_URL=$(.ci/postgres.sh)   # then: pytest -m postgres
#   .ci/postgres.sh stop                              # stop it and delete its data
#
# Installs Debian's `postgresql` if no server binaries are found. The cluster lives in a
# temporary directory owned by the `postgres` user, listens on 127.0.0.1 only, and trusts local
# connections, so it must never be started on a shared host.
set -euo pipefail

PORT="${DLF_PG_PORT:-54329}"
DATA="${DLF_PG_DATA:-/tmp/dlf-postgres-$PORT}"
DB="dlf_test"

bindir() {
  local ctl
  ctl=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$ctl" ] && [ -x "$ctl/pg_ctl" ] && echo "$ctl"
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
}

BIN=$(bindir || true)
if [ "${1:-start}" = stop ]; then
  [ -n "$BIN" ] && [ -d "$DATA" ] && as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast stop >/dev/null || true
  rm -rf "$DATA"
  exit 0
fi

if [ -z "$BIN" ]; then
  echo "installing postgresql..." >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  BIN=$(bindir)
fi

if ! as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  rm -rf "$DATA"
  mkdir -p "$DATA" && chown postgres "$DATA"
  as_postgres "$BIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
  as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DATA -c max_connections=200" \
    start >/dev/null
fi
if ! as_postgres "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  as_postgres "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
fi
echo "postgresql://postgres@127.0.0.1:$PORT/$DB"
