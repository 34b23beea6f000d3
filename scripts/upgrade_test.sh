#!/usr/bin/env bash
# The upgrade tier: a database made by the 0.1.0 release (commit 87c8bd3)
# survives `ALTER EXTENSION secret_vault UPDATE` to the current build.
#
#  1. builds the current tree, then builds and installs 0.1.0 from the
#     release commit (git archive into target/, its own CARGO_TARGET_DIR);
#  2. on a throwaway cluster: CREATE EXTENSION (0.1.0), groups, vault.encrypt
#     ciphertexts, a key from vault.current, a manual and a rotating secret;
#     a second database gets orphaned rows (a 0.1.0 bug could leave them);
#  3. installs the current build, restarts: functions refuse with 55000 until
#     ALTER EXTENSION secret_vault UPDATE; then updates;
#  4. checks old data reads back, new writes use the new formats, ownership
#     and grants, the orphan warning, a cold restart, and that the upgraded
#     schema equals a fresh CREATE EXTENSION in a third database (catalog
#     listing and pg_dump --schema-only, both sorted).
# Run as root. Always removes the cluster and leaves the current build
# installed. Exits non-zero on any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/pgcluster.sh"
export PATH="$HOME/.cargo/bin:$PATH"

OLD_COMMIT=87c8bd3
OLD_VERSION=0.1.0
NEW_VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)
OLD_TARGET="$ROOT/target/old-$OLD_VERSION"
WT="$ROOT/target/old-$OLD_VERSION-src"
START=$SECONDS
FAILS=0
INSTALLED=current   # which build the system PostgreSQL has: current | old
TMPD=$(mktemp -d /tmp/secret_vault-upgrade-out-XXXXXX)

say()  { echo "== $*"; }
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
die()  { echo "FAIL: $*"; FAILS=$((FAILS + 1)); exit 1; }

install_current() {
    (cd "$ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG") >"$TMPD/install-current.log" 2>&1 || {
        tail -n 30 "$TMPD/install-current.log"
        return 1
    }
    INSTALLED=current
}

cleanup() {
    local status=$?
    set +e
    if [ -n "${PGC_DATA:-}" ] && { [ $status -ne 0 ] || [ $FAILS -ne 0 ]; }; then
        echo "-- last lines of the server log:"
        tail -n 40 "$PGC_DIR/postgres.log" 2>/dev/null
    fi
    pgc_stop
    if [ "$INSTALLED" != current ]; then
        echo "== reinstalling the current build"
        install_current || { echo "FAIL: could not reinstall the current build"; status=1; }
    fi
    [ -n "${KEEP_OUT:-}" ] && echo "outputs kept in $TMPD" || rm -rf "$TMPD"
    if [ $status -eq 0 ] && [ $FAILS -eq 0 ]; then
        echo "upgrade test: PASS ($OLD_VERSION -> $NEW_VERSION) in $((SECONDS - START))s"
    else
        echo "upgrade test: FAIL ($FAILS failed) after $((SECONDS - START))s"
        [ $status -ne 0 ] || status=1
    fi
    exit $status
}
trap cleanup EXIT
trap "exit 130" INT TERM

[ "$(id -u)" = 0 ] || die "run as root (initdb runs as postgres via runuser)"

# q DB [psql args...]: unaligned, tuples only, stop on the first error.
q() {
    local db=$1; shift
    "$PGC_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$PGC_DIR" -p "$PGC_PORT" -U postgres -d "$db" "$@"
}
# expect NAME DB SQL WANT: SQL must print exactly WANT (anything else is shown).
expect() {
    local name=$1 db=$2 sql=$3 want=$4 out
    if out=$(q "$db" -c "$sql" 2>&1) && [ "$out" = "$want" ]; then
        pass "$name"
    else
        fail "$name: ${out:-<no output>}"
    fi
}
# check NAME DB SQL: SQL must print exactly 't'.
check() { expect "$1" "$2" "$3" t; }
pg_stop_fast() { runuser -u postgres -- "$PGC_BIN/pg_ctl" -D "$PGC_DATA" -w -m fast stop >/dev/null; }
pg_start() { runuser -u postgres -- "$PGC_BIN/pg_ctl" -D "$PGC_DATA" -l "$PGC_DIR/postgres.log" -w start >/dev/null; }

# ---- 1. builds ----------------------------------------------------------------
# The current build first: a compile error must not leave 0.1.0 installed.
say "building and installing the current build ($NEW_VERSION)"
install_current || die "cargo pgrx install (current)"

say "building and installing $OLD_VERSION from $OLD_COMMIT"
full=$(git -C "$ROOT" rev-parse --verify "$OLD_COMMIT^{commit}") || die "commit $OLD_COMMIT not found"
# Extracted once and kept, so cargo can reuse the build next time.
if [ "$(cat "$WT/.release-commit" 2>/dev/null)" != "$full" ]; then
    rm -rf "$WT" && mkdir -p "$WT"
    git -C "$ROOT" archive "$full" | tar -x -C "$WT"
    echo "$full" >"$WT/.release-commit"
fi
grep -q "^version = \"$OLD_VERSION\"" "$WT/Cargo.toml" || die "$OLD_COMMIT is not version $OLD_VERSION"
INSTALLED=old
(cd "$WT" && CARGO_TARGET_DIR="$OLD_TARGET" cargo pgrx install --release --pg-config "$PG_CONFIG") \
    >"$TMPD/install-old.log" 2>&1 || { tail -n 30 "$TMPD/install-old.log"; die "cargo pgrx install ($OLD_VERSION)"; }
pass "built and installed $OLD_VERSION"

# ---- 2. a cluster made by 0.1.0 -----------------------------------------------
say "cluster with $OLD_VERSION"
pgc_start upgrade
q postgres -c "CREATE DATABASE upgraded" -c "CREATE DATABASE orphans" -c "CREATE DATABASE fresh"

q upgraded >/dev/null <<'SQL' || die "setting up the $OLD_VERSION database"
CREATE EXTENSION secret_vault;
-- (SQLSTATE, message, hint) of running sql; 00000 if it succeeds.
CREATE FUNCTION public.outcome(sql text, OUT state text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    state := '00000';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
END $$;

SELECT vault.create_group('up/export', 'export');
-- No propagation delay: a rotation after the update is current at once.
SELECT vault.create_group('up/data', 'encrypt', NULL, '0 seconds');

CREATE TABLE public.old_ct AS
SELECT i,
       pg_catalog.convert_to('plaintext ' || i, 'UTF8') AS plaintext,
       CASE WHEN i % 2 = 0 THEN pg_catalog.convert_to('context ' || i, 'UTF8') ELSE ''::bytea END AS context,
       NULL::bytea AS ct
  FROM pg_catalog.generate_series(1, 40) i;
UPDATE public.old_ct SET ct = vault.encrypt('up/data', plaintext, context);

CREATE TABLE public.old_key AS
SELECT k.version, pg_catalog.encode(k.key, 'hex') AS key_hex FROM vault.current('up/export') k;

SELECT vault.create_secret('up/manual', 'manual value 1', 'a manual secret');
SELECT vault.update_secret('up/manual', 'manual value 2');
SELECT vault.create_rotating_secret('up/rotating', '1 day', '1 hour', 'base64url:32', 'a rotating secret');

CREATE TABLE public.old_secret AS
SELECT s.name, s.id, s.current_version AS version, s.current_ciphertext AS ct, vault.read_secret(s.name) AS value
  FROM vault.secret_store s;
SQL

check "installed version is $OLD_VERSION" upgraded \
    "SELECT extversion = '$OLD_VERSION' FROM pg_catalog.pg_extension WHERE extname = 'secret_vault'"
check "$OLD_VERSION: data written (40 ciphertexts, 1 key, 2 secrets)" upgraded \
    "SELECT (SELECT count(*) FROM public.old_ct WHERE ct IS NOT NULL) = 40
        AND (SELECT count(*) FROM public.old_key WHERE length(key_hex) = 64) = 1
        AND (SELECT count(*) FROM public.old_secret WHERE value IS NOT NULL) = 2
        AND (SELECT value FROM public.old_secret WHERE name = 'up/manual') = 'manual value 2'"
# What 0.2.0 closes: 0.1.0 secret values are vault.encrypt ciphertexts of
# group vault/secrets with a context anyone can build.
check "$OLD_VERSION: a secret opens through vault.decrypt with its 0.1.0 context" upgraded \
    "SELECT pg_catalog.convert_from(vault.decrypt('vault/secrets', ct,
            pg_catalog.convert_to('secret_vault/secret/v1', 'UTF8') || pg_catalog.uuid_send(id) || pg_catalog.int4send(version)), 'UTF8') = value
       FROM public.old_secret WHERE name = 'up/manual'"

# Orphaned rows, as 0.1.0 could leave them (made by hand here). Group names
# unique in the cluster: 0.1.0 caches groups by name across databases, so a
# second database using group vault/secrets writes secrets that point at the
# first database's group (orphans of their own, unreadable).
for sql in "CREATE EXTENSION secret_vault" \
           "SELECT vault.create_group('o/data', 'encrypt')" \
           "SELECT vault.create_group('o/values', 'encrypt')" \
           "SELECT vault.create_secret('o/kept', 'kept', NULL, 'o/data')" \
           "SELECT vault.create_secret('o/gone', 'v1', NULL, 'o/values')" \
           "SELECT vault.update_secret('o/gone', 'v2')" \
           "SELECT vault.update_secret('o/gone', 'v3')" \
           "DELETE FROM vault.secret_store WHERE name = 'o/gone'" \
           "DELETE FROM vault.key_groups WHERE name = 'o/data'"; do
    q orphans -c "$sql" >/dev/null || die "setting up the orphans database: $sql"
done
check "$OLD_VERSION: orphans made (1 secret without its group, 2 values without their secret)" orphans \
    "SELECT (SELECT count(*) FROM vault.secret_store s WHERE NOT EXISTS (SELECT 1 FROM vault.key_groups g WHERE g.id = s.key_group_id)) = 1
        AND (SELECT count(*) FROM vault.secret_values v WHERE NOT EXISTS (SELECT 1 FROM vault.secret_store s WHERE s.id = v.secret_id)) = 2"

# ---- 3. the current build on the 0.1.0 cluster ----------------------------------
say "installing the current build ($NEW_VERSION) under the $OLD_VERSION cluster"
pg_stop_fast
install_current || die "cargo pgrx install (current)"
pg_start

for f in "vault.current('up/export')" "vault.decrypt('up/data', (SELECT ct FROM public.old_ct WHERE i = 1))" "vault.read_secret('up/manual')"; do
    check "before UPDATE: $f refuses with 55000 and the ALTER EXTENSION hint" upgraded \
        "SELECT CASE WHEN state = '55000' AND hint LIKE '%ALTER EXTENSION secret_vault UPDATE%' THEN 't'
                ELSE pg_catalog.format('state=%s message=%s hint=%s', state, message, hint) END
           FROM public.outcome(\$q\$SELECT $f\$q\$)"
done

if out=$(q upgraded -c "ALTER EXTENSION secret_vault UPDATE" 2>&1); then
    if [ -n "$out" ]; then fail "ALTER EXTENSION UPDATE printed: $out"; else pass "ALTER EXTENSION secret_vault UPDATE"; fi
else
    die "ALTER EXTENSION secret_vault UPDATE: $out"
fi
check "extversion is $NEW_VERSION" upgraded \
    "SELECT extversion = '$NEW_VERSION' FROM pg_catalog.pg_extension WHERE extname = 'secret_vault'"

# Orphans: warned about, counted, kept; the constraints stay NOT VALID.
if out=$(q orphans -c "ALTER EXTENSION secret_vault UPDATE" 2>&1); then
    if grep -q "WARNING:.* 1 secret(s) in vault.secret_store refer to a key group" <<<"$out" \
        && grep -q "WARNING:.* 2 superseded value(s) in vault.secret_values" <<<"$out"; then
        pass "orphans: UPDATE warns with the counts (1 secret, 2 values)"
    else
        fail "orphans: expected two WARNINGs with counts, got: ${out:-<nothing>}"
    fi
else
    fail "orphans: ALTER EXTENSION UPDATE failed: $out"
fi
check "orphans: nothing deleted, both foreign keys NOT VALID, version $NEW_VERSION" orphans \
    "SELECT (SELECT count(*) FROM vault.secret_store WHERE name = 'o/kept') = 1
        AND (SELECT count(*) FROM vault.secret_values) = 2
        AND (SELECT pg_catalog.array_agg(convalidated ORDER BY conname)::text FROM pg_catalog.pg_constraint
              WHERE conname IN ('secret_store_key_group_fkey', 'secret_values_secret_fkey')) = '{f,f}'
        AND (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'secret_vault') = '$NEW_VERSION'"

# ---- 4. the upgraded database ---------------------------------------------------
say "checking the upgraded database"
check_reads() {
    local when=$1
    check "$when: 40 old vault.encrypt ciphertexts decrypt to their plaintext" upgraded \
        "SELECT count(*) = 40 AND bool_and(vault.decrypt('up/data', ct, context) = plaintext) FROM public.old_ct"
    check "$when: vault.current returns the 0.1.0 key bytes" upgraded \
        "SELECT k.version = o.version AND pg_catalog.encode(k.key, 'hex') = o.key_hex
           FROM vault.current('up/export') k, public.old_key o"
    check "$when: vault.resolve returns the 0.1.0 key by version" upgraded \
        "SELECT pg_catalog.encode(vault.resolve('up/export', o.version), 'hex') = o.key_hex FROM public.old_key o"
    check "$when: vault.read_secret returns the 0.1.0 values" upgraded \
        "SELECT count(*) = 2 AND bool_and(vault.read_secret(name) = value) FROM public.old_secret"
}
check_reads "after UPDATE"
check "vault.verify_secret accepts the 0.1.0 values, refuses others" upgraded \
    "SELECT bool_and(vault.verify_secret(name, value)) AND NOT bool_or(vault.verify_secret(name, value || 'x'))
            AND NOT vault.verify_secret('up/manual', 'manual value 1')
       FROM public.old_secret"
check "0.1.0 rows: ring keys have binding 1 (or 2 once the worker re-bound them), secret values format 0x01" upgraded \
    "SELECT (SELECT bool_and(binding IN (1, 2)) FROM vault.ring_keys)
        AND (SELECT bool_and(pg_catalog.get_byte(current_ciphertext, 0) = 1) FROM vault.secret_store)
        AND (SELECT bool_and(pg_catalog.get_byte(ciphertext, 0) = 1) FROM vault.secret_values)"
check "foreign keys validated" upgraded \
    "SELECT pg_catalog.array_agg(convalidated ORDER BY conname)::text = '{t,t}' FROM pg_catalog.pg_constraint
      WHERE conname IN ('secret_store_key_group_fkey', 'secret_values_secret_fkey')
        AND connamespace = 'vault'::pg_catalog.regnamespace"

# Old secret values cannot be opened as caller data any more.
check "a 0.1.0 secret value is refused by vault.decrypt with its 0.1.0 context" upgraded \
    "SELECT CASE WHEN o.state <> '00000' THEN 't' ELSE 'vault.decrypt opened it' END
       FROM public.old_secret s,
            public.outcome(pg_catalog.format('SELECT vault.decrypt(%L, %L::bytea, %L::bytea)', 'vault/secrets', s.ct,
                pg_catalog.convert_to('secret_vault/secret/v1', 'UTF8') || pg_catalog.uuid_send(s.id) || pg_catalog.int4send(s.version))) o
      WHERE s.name = 'up/manual'"
check "a 0.1.0 secret value is refused by vault.decrypt with an empty context" upgraded \
    "SELECT CASE WHEN o.state <> '00000' THEN 't' ELSE 'vault.decrypt opened it' END
       FROM public.old_secret s,
            public.outcome(pg_catalog.format('SELECT vault.decrypt(%L, %L::bytea)', 'vault/secrets', s.ct)) o
      WHERE s.name = 'up/manual'"

# New writes use the new formats. (Each write is its own statement: a
# query does not see rows its own function calls wrote.)
expect "create_secret after UPDATE" upgraded "SELECT vault.create_secret('up/new', 'new value') IS NOT NULL" t
check "a new secret is stored in format 0x02 and reads back" upgraded \
    "SELECT pg_catalog.get_byte(current_ciphertext, 0) = 2
        AND vault.read_secret('up/new') = 'new value' AND vault.verify_secret('up/new', 'new value')
       FROM vault.secret_store WHERE name = 'up/new'"
expect "update_secret on a 0.1.0 secret returns version 3" upgraded "SELECT vault.update_secret('up/manual', 'manual value 3')" 3
check "the updated secret is stored in format 0x02; its 0x01 value is superseded" upgraded \
    "SELECT pg_catalog.get_byte(s.current_ciphertext, 0) = 2
        AND vault.read_secret('up/manual') = 'manual value 3'
        AND NOT vault.verify_secret('up/manual', 'manual value 2')
        AND (SELECT pg_catalog.get_byte(v.ciphertext, 0) = 1 FROM vault.secret_values v WHERE v.secret_id = s.id AND v.version = 2)
       FROM vault.secret_store s WHERE s.name = 'up/manual'"
expect "rotate_secret on a 0.1.0 secret returns version 2" upgraded "SELECT vault.rotate_secret('up/rotating')" 2
check "the rotated secret is stored in format 0x02; its 0x01 value verifies in its grace period" upgraded \
    "SELECT pg_catalog.get_byte(s.current_ciphertext, 0) = 2
        AND vault.read_secret('up/rotating') <> o.value
        AND vault.verify_secret('up/rotating', o.value)
        AND vault.verify_secret('up/rotating', vault.read_secret('up/rotating'))
        AND (SELECT pg_catalog.get_byte(v.ciphertext, 0) = 1 FROM vault.secret_values v WHERE v.secret_id = o.id AND v.version = 1)
       FROM public.old_secret o JOIN vault.secret_store s ON s.id = o.id WHERE o.name = 'up/rotating'"
expect "vault.rotate on two 0.1.0 groups returns version 2" upgraded "SELECT vault.rotate('up/export') || ',' || vault.rotate('up/data')" 2,2
check "the rotations wrote ring keys with binding 2" upgraded \
    "SELECT pg_catalog.array_agg(k.binding ORDER BY g.name)::text = '{2,2}'
       FROM vault.ring_keys k JOIN vault.key_groups g ON g.id = k.group_id
      WHERE g.name IN ('up/data', 'up/export') AND k.version = 2"
check "encrypt uses the new (binding 2) key; new and old ciphertexts decrypt" upgraded \
    "SELECT pg_catalog.substr(vault.encrypt('up/data', '\\x01'::bytea), 3, 4) = '\\x00000002'::bytea
        AND vault.decrypt('up/data', vault.encrypt('up/data', 'fresh'::bytea, 'c'::bytea), 'c'::bytea) = 'fresh'::bytea
        AND (SELECT bool_and(vault.decrypt('up/data', ct, context) = plaintext) FROM public.old_ct)"
check "vault.current still serves the 0.1.0 key (the new one is pending for 30s)" upgraded \
    "SELECT k.version = o.version AND pg_catalog.encode(k.key, 'hex') = o.key_hex
       FROM vault.current('up/export') k, public.old_key o"

# Ownership and grants.
check "tables, sequence and views owned by vault_owner (25 relations)" upgraded \
    "SELECT count(*) = 25 AND bool_and(pg_catalog.pg_get_userbyid(relowner) = 'vault_owner')
       FROM pg_catalog.pg_class WHERE relnamespace = 'vault'::pg_catalog.regnamespace AND relkind IN ('r', 'S', 'v')"
check "no function is SECURITY DEFINER or owned by vault_owner (they switch after their checks)" upgraded \
    "SELECT NOT bool_or(prosecdef) AND NOT bool_or(pg_catalog.pg_get_userbyid(proowner) = 'vault_owner')
       FROM pg_catalog.pg_proc WHERE pronamespace = 'vault'::pg_catalog.regnamespace"
check "vault_reader has no EXECUTE on vault._open_secret" upgraded \
    "SELECT NOT pg_catalog.has_function_privilege('vault_reader', 'vault._open_secret(text, text, uuid, int, bytea)', 'EXECUTE')
        AND NOT pg_catalog.has_function_privilege('vault_admin', 'vault._open_secret(text, text, uuid, int, bytea)', 'EXECUTE')"
check "vault_owner is NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION NOINHERIT, no members" upgraded \
    "SELECT NOT (rolcanlogin OR rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb OR rolreplication OR rolinherit)
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.roleid = r.oid)
       FROM pg_catalog.pg_roles r WHERE rolname = 'vault_owner'"
# The worker of the upgraded database comes up once the update committed.
worker=""
for _ in $(seq 1 60); do
    worker=$(q upgraded -c "SELECT state FROM vault.workers WHERE database = 'upgraded'" 2>&1) || true
    [ "$worker" = running ] && break
    sleep 0.5
done
if [ "$worker" = running ]; then pass "the upgraded database's worker is running"; else fail "worker state: ${worker:-<none>}"; fi

# The worker re-binds the 0.1.0 ring keys to their purpose and key size.
rebound=""
for _ in $(seq 1 60); do
    rebound=$(q upgraded -c "SELECT count(*) FILTER (WHERE binding = 1) FROM vault.ring_keys" 2>/dev/null || true)
    [ "$rebound" = 0 ] && break
    sleep 0.5
done
if [ "$rebound" = 0 ]; then pass "the worker re-bound every 0.1.0 ring key (binding 2)"; else fail "ring keys still bound the 0.1.0 way: ${rebound:-?}"; fi
check "re-bound keys are the same keys: vault.current, old ciphertexts" upgraded \
    "SELECT k.version = o.version AND pg_catalog.encode(k.key, 'hex') = o.key_hex
            AND (SELECT bool_and(vault.decrypt('up/data', ct, context) = plaintext) FROM public.old_ct)
       FROM vault.current('up/export') k, public.old_key o"
# A flipped purpose on an upgraded encrypt group: checked cold, after the restart below.
q upgraded -c "UPDATE vault.key_groups SET purpose = 'export' WHERE name = 'up/data'" >/dev/null

check "vault.workers: vault_admin only; lists the upgraded database" upgraded \
    "SELECT pg_catalog.has_table_privilege('vault_admin', 'vault.workers', 'SELECT')
        AND NOT pg_catalog.has_table_privilege('vault_reader', 'vault.workers', 'SELECT')
        AND EXISTS (SELECT 1 FROM vault.workers WHERE database = 'upgraded')"

# ---- cold restart ---------------------------------------------------------------
say "restarting the cluster"
pg_stop_fast
pg_start
check "after restart: an upgraded encrypt group whose purpose was flipped exports nothing (XX001)" upgraded \
    "SELECT o.state = 'XX001' FROM public.outcome('SELECT vault.current(''up/data'')') o"
q upgraded -c "UPDATE vault.key_groups SET purpose = 'encrypt' WHERE name = 'up/data'" >/dev/null
check "after restart: 40 old vault.encrypt ciphertexts decrypt to their plaintext" upgraded \
    "SELECT count(*) = 40 AND bool_and(vault.decrypt('up/data', ct, context) = plaintext) FROM public.old_ct"
check "after restart: vault.current and vault.resolve return the 0.1.0 key" upgraded \
    "SELECT k.version = o.version AND pg_catalog.encode(k.key, 'hex') = o.key_hex
            AND pg_catalog.encode(vault.resolve('up/export', o.version), 'hex') = o.key_hex
       FROM vault.current('up/export') k, public.old_key o"
check "after restart: secrets read back (0.1.0, updated, rotated and new)" upgraded \
    "SELECT vault.read_secret('up/manual') = 'manual value 3' AND vault.read_secret('up/new') = 'new value'
        AND vault.verify_secret('up/rotating', (SELECT value FROM public.old_secret WHERE name = 'up/rotating'))
        AND (SELECT count(*) FROM vault.secret_versions('up/manual')) >= 1"

# ---- the upgraded schema equals a fresh install ---------------------------------
say "comparing the upgraded schema with a fresh CREATE EXTENSION"
q fresh -c "CREATE EXTENSION secret_vault" || die "CREATE EXTENSION in a fresh database"
check "fresh database: extversion is $NEW_VERSION" fresh \
    "SELECT extversion = '$NEW_VERSION' FROM pg_catalog.pg_extension WHERE extname = 'secret_vault'"

# One line per fact; ACLs as sorted sets of grantor>grantee:privilege (the
# order of entries in an ACL array is not compared: the update grants
# vault_owner USAGE on the schema after the 0.1.0 grants, a fresh install
# before them).
CATALOG_SQL=$(cat <<'SQL'
WITH ext AS (SELECT * FROM pg_catalog.pg_extension WHERE extname = 'secret_vault'),
ns AS (SELECT extnamespace AS oid FROM ext),
rels AS (SELECT c.* FROM pg_catalog.pg_class c, ns WHERE c.relnamespace = ns.oid),
procs AS (SELECT p.* FROM pg_catalog.pg_proc p, ns WHERE p.pronamespace = ns.oid)
SELECT line FROM (
  SELECT pg_catalog.format('extension version=%s schema=%s relocatable=%s config=%s', e.extversion,
         e.extnamespace::regnamespace, e.extrelocatable,
         (SELECT pg_catalog.string_agg(c::regclass::text || '=' || coalesce(w, '<null>'), ', ' ORDER BY c::regclass::text)
            FROM unnest(e.extconfig, e.extcondition) AS u(c, w))) AS line
    FROM ext e
  UNION ALL
  SELECT pg_catalog.format('schema %s owner=%s', n.nspname, pg_catalog.pg_get_userbyid(n.nspowner))
    FROM pg_catalog.pg_namespace n, ns WHERE n.oid = ns.oid
  UNION ALL
  SELECT pg_catalog.format('member %s', pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid))
    FROM pg_catalog.pg_depend d, ext
   WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
  UNION ALL
  SELECT pg_catalog.format('relation %s kind=%s owner=%s persistence=%s rls=%s/%s replident=%s options=%s',
         c.oid::regclass, c.relkind, pg_catalog.pg_get_userbyid(c.relowner), c.relpersistence,
         c.relrowsecurity, c.relforcerowsecurity, c.relreplident, c.reloptions)
    FROM rels c
  UNION ALL
  SELECT pg_catalog.format('column %s.%s #%s %s notnull=%s default=%s identity=%s generated=%s collation=%s',
         c.oid::regclass, a.attname, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
         pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attcollation::regcollation)
    FROM rels c
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
  UNION ALL
  SELECT pg_catalog.format('constraint %s %s type=%s validated=%s deferrable=%s/%s %s', co.conrelid::regclass, co.conname,
         co.contype, co.convalidated, co.condeferrable, co.condeferred, pg_catalog.pg_get_constraintdef(co.oid))
    FROM pg_catalog.pg_constraint co, ns WHERE co.connamespace = ns.oid
  UNION ALL
  SELECT pg_catalog.format('index %s valid=%s', pg_catalog.pg_get_indexdef(i.indexrelid), i.indisvalid)
    FROM pg_catalog.pg_index i JOIN rels c ON c.oid = i.indrelid
  UNION ALL
  SELECT pg_catalog.format('view %s %s', c.oid::regclass, pg_catalog.regexp_replace(pg_catalog.pg_get_viewdef(c.oid), '\s+', ' ', 'g'))
    FROM rels c WHERE c.relkind IN ('v', 'm')
  UNION ALL
  SELECT pg_catalog.format('sequence %s %s start=%s increment=%s min=%s max=%s cache=%s cycle=%s', s.seqrelid::regclass,
         pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
    FROM pg_catalog.pg_sequence s JOIN rels c ON c.oid = s.seqrelid
  UNION ALL
  SELECT pg_catalog.format('trigger %s', pg_catalog.pg_get_triggerdef(t.oid))
    FROM pg_catalog.pg_trigger t JOIN rels c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL
  SELECT pg_catalog.format('policy %s %s', p.polrelid::regclass, p.polname)
    FROM pg_catalog.pg_policy p JOIN rels c ON c.oid = p.polrelid
  UNION ALL
  SELECT pg_catalog.format('rule %s %s', r.ev_class::regclass, r.rulename)
    FROM pg_catalog.pg_rewrite r JOIN rels c ON c.oid = r.ev_class WHERE r.rulename <> '_RETURN'
  UNION ALL
  SELECT pg_catalog.format('function %s owner=%s %s', p.oid::regprocedure, pg_catalog.pg_get_userbyid(p.proowner),
         pg_catalog.regexp_replace(pg_catalog.pg_get_functiondef(p.oid), '\s+', ' ', 'g'))
    FROM procs p
  UNION ALL
  SELECT pg_catalog.format('comment %s: %s', pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
    FROM pg_catalog.pg_description d
   WHERE (d.classoid = 'pg_catalog.pg_class'::regclass AND d.objoid IN (SELECT oid FROM rels))
      OR (d.classoid = 'pg_catalog.pg_proc'::regclass AND d.objoid IN (SELECT oid FROM procs))
      OR (d.classoid = 'pg_catalog.pg_namespace'::regclass AND d.objoid IN (SELECT oid FROM ns))
      OR (d.classoid = 'pg_catalog.pg_extension'::regclass AND d.objoid IN (SELECT oid FROM ext))
  UNION ALL
  -- privileges: objects, columns, and the extension's initial privileges
  SELECT pg_catalog.format('%s %s %s', kind, obj, coalesce((
           SELECT pg_catalog.string_agg(e, ' ' ORDER BY e COLLATE "C")
             FROM (SELECT pg_catalog.format('%s>%s:%s%s', pg_catalog.pg_get_userbyid(a.grantor),
                          CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                          a.privilege_type, CASE WHEN a.is_grantable THEN '*' ELSE '' END) AS e
                     FROM pg_catalog.aclexplode(acl) a) entries), '<default>'))
    FROM (
      SELECT 'acl' AS kind, 'schema ' || n.nspname AS obj, n.nspacl AS acl FROM pg_catalog.pg_namespace n, ns WHERE n.oid = ns.oid
      UNION ALL SELECT 'acl', 'relation ' || c.oid::regclass, c.relacl FROM rels c WHERE c.relkind <> 'i'
      UNION ALL SELECT 'acl', 'function ' || p.oid::regprocedure, p.proacl FROM procs p
      UNION ALL SELECT 'acl', 'column ' || a.attrelid::regclass || '.' || a.attname, a.attacl
                  FROM pg_catalog.pg_attribute a JOIN rels c ON c.oid = a.attrelid WHERE a.attacl IS NOT NULL
      UNION ALL SELECT 'initprivs', pg_catalog.pg_describe_object(i.classoid, i.objoid, i.objsubid), i.initprivs
                  FROM pg_catalog.pg_init_privs i WHERE i.privtype = 'e'
    ) o
) facts
ORDER BY line COLLATE "C";
SQL
)
q upgraded -c "$CATALOG_SQL" >"$TMPD/catalog-upgraded.txt" || die "catalog listing (upgraded)"
q fresh -c "$CATALOG_SQL" >"$TMPD/catalog-fresh.txt" || die "catalog listing (fresh)"
if diff -u "$TMPD/catalog-fresh.txt" "$TMPD/catalog-upgraded.txt" >"$TMPD/catalog.diff"; then
    pass "catalog listing: upgraded = fresh install ($(wc -l <"$TMPD/catalog-fresh.txt") facts)"
else
    fail "catalog listing differs (- fresh install, + upgraded):"
    head -n 80 "$TMPD/catalog.diff"
fi

# What pg_dump would restore: CREATE EXTENSION, and any grants that differ
# from the extension's initial privileges. The test's own tables live in public.
dump() {
    "$PGC_BIN/pg_dump" --schema-only -N public -h "$PGC_DIR" -p "$PGC_PORT" -U postgres -d "$1" \
        | grep -v -e '^--' -e '^$' -e '^\\restrict ' -e '^\\unrestrict ' | LC_ALL=C sort
}
# (\restrict lines carry a random key per run.)
dump upgraded >"$TMPD/dump-upgraded.txt" || die "pg_dump (upgraded)"
dump fresh >"$TMPD/dump-fresh.txt" || die "pg_dump (fresh)"
if diff -u "$TMPD/dump-fresh.txt" "$TMPD/dump-upgraded.txt" >"$TMPD/dump.diff"; then
    pass "pg_dump --schema-only (sorted): upgraded = fresh install ($(wc -l <"$TMPD/dump-fresh.txt") lines)"
else
    fail "pg_dump --schema-only differs (- fresh install, + upgraded):"
    head -n 80 "$TMPD/dump.diff"
fi

[ $FAILS -eq 0 ] || exit 1
