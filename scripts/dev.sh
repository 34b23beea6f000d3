#!/usr/bin/env bash
# The local development cluster: PostgreSQL 15 as user postgres, with
# secret_vault preloaded and its local master key. Data under target/pgdev
# (or a /tmp fallback when the postgres user cannot reach the checkout).
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=$("$PG_CONFIG" --bindir)
PORT=${SECRET_VAULT_DEV_PORT:-28815}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

dev_dir() {
    local d="$ROOT/target/pgdev"
    mkdir -p "$d"
    if runuser -u postgres -- test -w "$d" 2>/dev/null || { chown postgres:postgres "$d" && runuser -u postgres -- test -w "$d"; } 2>/dev/null; then
        echo "$d"
    else
        # The checkout is not reachable by the postgres user (e.g. under /root).
        d="/tmp/secret_vault-pgdev-$(echo "$ROOT" | sha256sum | cut -c1-12)"
        mkdir -p "$d" && chown postgres:postgres "$d"
        echo "$d"
    fi
}

DIR=$(dev_dir)
DATA="$DIR/data"
RUN="$DIR/run"
LOG="$DIR/postgres.log"

as_pg() { runuser -u postgres -- "$@"; }
psql_dev() { as_pg "$PGBIN/psql" -X -h "$RUN" -p "$PORT" -U postgres "$@"; }

start() {
    if [ ! -s "$DATA/PG_VERSION" ]; then
        as_pg mkdir -p "$DATA" "$RUN"
        as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=trust \
            -E UTF8 --locale=C.UTF-8 >/dev/null
        cat >>"$DATA/postgresql.conf" <<CONF
# secret_vault development cluster (loopback only, trust auth: never for production)
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$RUN'
shared_preload_libraries = 'secret_vault'
CONF
    fi
    as_pg mkdir -p "$RUN"
    if as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        # Pick up a freshly installed library.
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w restart -m fast >/dev/null
    else
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w start >/dev/null
    fi
    psql_dev -q -d postgres -c "CREATE EXTENSION IF NOT EXISTS secret_vault" 2>&1 | grep -v '^WARNING' || true
    psql_dev -q -d postgres -c "ALTER EXTENSION secret_vault UPDATE" >/dev/null 2>&1 || true
}

stop() {
    if [ -s "$DATA/PG_VERSION" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -w stop -m fast >/dev/null 2>&1 || true
    fi
    echo "dev cluster stopped"
}

demo() {
    psql_dev -d postgres -v ON_ERROR_STOP=1 -f "$ROOT/scripts/demo.sql"
    cat <<MSG

secret_vault is running (PostgreSQL 15, local KMS: development only).
  connect:  psql -h 127.0.0.1 -p $PORT -U postgres postgres     (or: make psql)
  socket:   $RUN
  data:     $DATA    log: $LOG
  stop:     make stop
MSG
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    demo) demo ;;
    psql) shift; psql_dev -d postgres "$@" ;;
    dir) echo "$DIR" ;;
    *) echo "usage: $0 start|stop|demo|psql|dir" >&2; exit 2 ;;
esac
