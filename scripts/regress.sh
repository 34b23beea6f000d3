#!/usr/bin/env bash
# The pg_regress tier: pg_test/sql/*.sql against pg_test/expected/*.out on a
# throwaway cluster with secret_vault preloaded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/pgcluster.sh"
PGXS=$(dirname "$("$PG_CONFIG" --pgxs)")
PG_REGRESS="$PGXS/../test/regress/pg_regress"

trap pgc_stop EXIT
pgc_start regress
OUT="$PGC_DIR/out"
mkdir -p "$OUT" && chown postgres:postgres "$OUT"
tests=$(cd "$ROOT/pg_test/sql" && ls *.sql | sed 's/\.sql$//' | sort)
# pg_regress reads inputs and writes results as postgres.
INPUT="$PGC_DIR/in"
cp -r "$ROOT/pg_test" "$INPUT" && chown -R postgres:postgres "$INPUT"
status=0
runuser -u postgres -- "$PG_REGRESS" --bindir="$PGC_BIN" --host="$PGC_DIR" --port="$PGC_PORT" --user=postgres \
    --inputdir="$INPUT" --outputdir="$OUT" --dbname=vault_regression $tests || status=$?
if [ $status -ne 0 ]; then
    mkdir -p "$ROOT/pg_test/results"
    cp -r "$OUT"/results/* "$ROOT/pg_test/results/" 2>/dev/null || true
    cp "$OUT/regression.diffs" "$ROOT/pg_test/" 2>/dev/null || true
    echo "pg_regress failed: see pg_test/regression.diffs and pg_test/results/" >&2
    cat "$OUT/regression.diffs" >&2 || true
fi
exit $status
