#!/usr/bin/env bash
# Run a command with a private, throwaway PostgreSQL cluster on 127.0.0.1.
#
#   scripts/with-postgres.sh COMMAND...
#
# Installs Debian's postgresql if it is missing (as root), creates a cluster under
# build/postgres (trust auth, a free port), exports TAPEAGENTS_TEST_POSTGRES_URL for the command
# and stops the cluster afterwards, whatever the command did. As root, the server runs as the
# `postgres` user through runuser.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin="$(find_bin)"
if [ -z "$bin" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "Installing PostgreSQL (Debian package)..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin="$(find_bin)"
  else
    echo "PostgreSQL is not installed: sudo apt-get install postgresql" >&2
    exit 1
  fi
fi

# A cluster of its own per invocation, so that runs side by side never share (or wipe) one.
mkdir -p "$root/build"
base="$(mktemp -d "$root/build/postgres.XXXXXX")"
as_owner=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres:postgres "$base"
  as_owner=(runuser -u postgres --)
  # A checkout under a private home (say /root) is out of the postgres user's reach.
  if ! runuser -u postgres -- test -w "$base"; then
    rm -rf "$base"
    base="$(mktemp -d /tmp/tapeagents-postgres.XXXXXX)"
    chown postgres:postgres "$base"
  fi
fi
data="$base/data"
socket="$base/socket"
"${as_owner[@]}" mkdir -p "$data" "$socket"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

"${as_owner[@]}" "$bin/initdb" -D "$data" --auth=trust -U postgres -E UTF8 >"$base/initdb.log" 2>&1 \
  || { cat "$base/initdb.log" >&2; exit 1; }
"${as_owner[@]}" "$bin/pg_ctl" -D "$data" -l "$base/server.log" -w -t 60 \
  -o "-p $port -k $socket -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
  || { cat "$base/server.log" >&2; exit 1; }
stop() {
  "${as_owner[@]}" "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$base"
}
trap stop EXIT

export TAPEAGENTS_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
"$@"
