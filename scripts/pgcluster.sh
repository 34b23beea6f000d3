#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for a test tier, as user postgres, on a
# free loopback port. Sourced: defines pgc_start / pgc_stop / PGC_* vars.
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGC_BIN=$("$PG_CONFIG" --bindir)

pgc_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# pgc_start NAME [extra postgresql.conf lines...]
pgc_start() {
    local name=$1; shift
    PGC_DIR=$(mktemp -d "/tmp/secret_vault-$name-XXXXXX")
    chown postgres:postgres "$PGC_DIR"
    PGC_PORT=$(pgc_free_port)
    PGC_DATA="$PGC_DIR/data"
    runuser -u postgres -- "$PGC_BIN/initdb" -D "$PGC_DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $PGC_PORT"
        echo "unix_socket_directories = '$PGC_DIR'"
        echo "shared_preload_libraries = 'secret_vault'"
        echo "fsync = off"
        for line in "$@"; do echo "$line"; done
    } >>"$PGC_DATA/postgresql.conf"
    runuser -u postgres -- "$PGC_BIN/pg_ctl" -D "$PGC_DATA" -l "$PGC_DIR/postgres.log" -w start >/dev/null
}

pgc_stop() {
    [ -n "${PGC_DATA:-}" ] || return 0
    runuser -u postgres -- "$PGC_BIN/pg_ctl" -D "$PGC_DATA" -w stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$PGC_DIR"
}
