#!/usr/bin/env bash
# The local cluster's history database: a PostgreSQL server on the host
# (Debian's postgresql package), run as the unprivileged `postgres` user
# (or nobody), listening on loopback and on the host IP the cluster's pods
# reach, with password authentication. The demo's controller records its
# checkpoints and failovers there, and ferry-report reads them.
#
#   hack/history-db.sh start HOST_IP   # idempotent; prints nothing
#   hack/history-db.sh url HOST        # the ferry role's URL via HOST
#   hack/history-db.sh stop            # stops the server (data stays)
#
# State in $FERRY_CLUSTER_STATE/history-db (hack/cluster.sh down --purge
# deletes it with the rest). Needs root (to switch to the server's user).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE="${FERRY_CLUSTER_STATE:-/var/lib/ferry-cluster}/history-db"
DATA="$STATE/data"
# The server's log and socket: written by the server's user.
RUNDIR="$STATE/run"
PORT="${FERRY_HISTORY_DB_PORT:-15432}"
DATABASE=ferry_history
ROLE=ferry

server_user() { id postgres >/dev/null 2>&1 && echo postgres || echo nobody; }

bin_dir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  [[ -x "$dir/pg_ctl" ]] || die "no PostgreSQL server (/usr/lib/postgresql/*/bin/pg_ctl): apt-get install postgresql"
  echo "$dir"
}

as_server() { runuser -u "$(server_user)" -- "$@"; }

running() { [[ -f "$DATA/postmaster.pid" ]] && as_server "$(bin_dir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

password() { cat "$STATE/password"; }

cmd_start() {
  local host_ip="$1" bin user
  bin="$(bin_dir)"
  user="$(server_user)"
  if ! [[ -f "$DATA/PG_VERSION" ]]; then
    mkdir -p "$STATE"
    chmod 0755 "$STATE"
    [[ -f "$STATE/password" ]] || head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/password"
    chmod 0600 "$STATE/password"
    mkdir -p "$DATA" "$RUNDIR" && chown "$user" "$DATA" "$RUNDIR" && chmod 0700 "$DATA"
    local pwfile
    pwfile="$(mktemp)"
    password >"$pwfile"
    chown "$user" "$pwfile"
    as_server "$bin/initdb" -D "$DATA" --username=postgres --auth-local=peer \
      --auth-host=scram-sha-256 --pwfile="$pwfile" --encoding=UTF8 --locale=C >"$STATE/initdb.log" 2>&1 ||
      { rm -f "$pwfile"; die "initdb failed; see $STATE/initdb.log"; }
    rm -f "$pwfile"
    # The cluster's pod networks (10.88.<node>.0/24) reach the host IP.
    echo "host all all 10.88.0.0/16 scram-sha-256" >>"$DATA/pg_hba.conf"
    echo "host all all $host_ip/32 scram-sha-256" >>"$DATA/pg_hba.conf"
  fi
  if ! running; then
    as_server "$bin/pg_ctl" -D "$DATA" -l "$RUNDIR/server.log" -w -t 30 \
      -o "-p $PORT -k $RUNDIR -c listen_addresses=127.0.0.1,$host_ip" start >/dev/null ||
      die "PostgreSQL did not start; see $RUNDIR/server.log"
  fi
  # The role and its database (idempotent).
  local sql="$bin/psql"
  as_server "$sql" -h "$RUNDIR" -p "$PORT" -U postgres -d postgres -qtA -v ON_ERROR_STOP=1 >/dev/null <<SQL ||
SELECT 'CREATE ROLE $ROLE LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$ROLE')\gexec
ALTER ROLE $ROLE PASSWORD '$(password)';
SELECT 'CREATE DATABASE $DATABASE OWNER $ROLE' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DATABASE')\gexec
SQL
    die "creating the $ROLE role and database failed; see $RUNDIR/server.log"
}

cmd_url() {
  [[ -f "$STATE/password" ]] || die "no history database yet: hack/history-db.sh start HOST_IP"
  echo "postgresql://$ROLE:$(password)@$1:$PORT/$DATABASE?sslmode=disable"
}

cmd_stop() {
  [[ -d "$DATA" ]] || return 0
  if running; then
    as_server "$(bin_dir)/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null || true
  fi
}

case "${1:-}" in
  start) shift; cmd_start "${1:?usage: hack/history-db.sh start HOST_IP}" ;;
  url) shift; cmd_url "${1:-127.0.0.1}" ;;
  stop) cmd_stop ;;
  *) die "usage: hack/history-db.sh start HOST_IP | url [HOST] | stop" ;;
esac
