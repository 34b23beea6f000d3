-- secret_vault 0.1.0 -> 0.2.0 (ALTER EXTENSION secret_vault UPDATE).
--
-- Brings a 0.1.0 schema to what CREATE EXTENSION secret_vault makes in 0.2.0
-- (sql/bootstrap.sql, the generated functions, sql/finalize.sql):
--  * the install-time role checks of bootstrap.sql (the schema check is
--    skipped: at update time schema vault is the extension's own), and role
--    vault_owner, which from now on owns every table, the sequence, every
--    view and every SECURITY DEFINER function, so nothing the extension runs
--    has a superuser's rights;
--  * vault.ring_keys.binding: existing rows get 1, the 0.1.0 binding (group
--    and version); rows written by 0.2.0 are 2 (also purpose and key size);
--  * vault.secret_store gets UNIQUE (id), a foreign key to its key group and
--    an index on key_group_id; vault.secret_values a foreign key to its
--    secret. 0.1.0 could leave orphaned rows, so both foreign keys are added
--    NOT VALID and then validated; if orphans exist, a WARNING says how many
--    and the constraints stay NOT VALID (they still hold for new rows).
--    No row is ever deleted by this script;
--  * vault._open_secret is no longer executable by vault_reader;
--  * new: vault.worker_status() and view vault.workers, for vault_admin;
--  * new: vault.worker_item_failures() and view vault.worker_failures (items
--    the workers failed on, with their backoff), for vault_admin;
--  * new: vault.destroy(group_name, below_version), for vault_admin;
--  * new: minted credentials: table vault.credential_store, view
--    vault.credentials (vault_reader, vault_admin), vault.credential(name)
--    for vault_reader, vault.create_credential and vault.drop_credential
--    for vault_admin;
--  * new: KMS key registry, for superusers only: vault.add_kms_key,
--    vault.set_default_kms_key, vault.drop_kms_key; vault.kms_keys.key_id
--    (the resolved id new wraps record, kept current by the worker);
--  * vault.kms_keys: a trigger moves the default flag, so a dumped or
--    replicated default loads beside the built-in 'local' row;
--  * vault.ring_keys.kms_key: the registered KMS key that wrapped each row
--    (moves re-wrap rows from one to another);
--  * re-wrap: vault.rewrap(kms_key) and view vault.rewrap_status for
--    vault_admin, vault.move_group(group, kms_key) for superusers; table
--    vault.rewrap_state;
--  * vault.stats() gains kms_calls_local, kms_calls_aws, kms_calls_transit
--    and rotation (on, off, standby);
--  * access rules: vault.grant_access / vault.revoke_access and view
--    vault.access_rules (the default rules, vault_reader and vault_admin on
--    '**', keep 0.1.0's behaviour), vault.set_allowed_addresses, lockouts
--    (view vault.lockouts, vault.unlock), the audit log (vault.audit_log,
--    vault.audit_chain, vault.verify_audit()); the views vault.groups,
--    vault.group_versions, vault.secrets and vault.decrypted_secrets show
--    only what the caller may see, and vault._open_secret takes the
--    secret's name; the functions that were SECURITY DEFINER are SECURITY
--    INVOKER (they switch to vault_owner themselves, after their checks).
-- The generated definitions of every other function are unchanged from
-- 0.1.0. Values need no rewrite: 0.2.0 reads 0.1.0 ciphertexts (secret
-- values in format 0x01, ring keys with binding 1) and writes new ones in
-- the 0.2.0 format.
--
-- Released scripts are frozen: change this one only until 0.2.0 ships.

\echo Use "ALTER EXTENSION secret_vault UPDATE TO '0.2.0'" to load this file. \quit

-- ---- schema and roles ---------------------------------------------------------
-- 0.1.0 installed into any pre-existing schema vault. Refuse to carry on in
-- one that is not a superuser's, that others may create objects in, or that
-- holds objects which are not the extension's: those could capture keys.
-- As in bootstrap.sql: pre-existing roles with the extension's role names
-- must be plain NOLOGIN roles, and nobody may be a member of vault_owner.
DO $update_checks$
DECLARE
    r record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) n.nspowner
                WHERE n.oid OPERATOR(pg_catalog.=) 'vault'::pg_catalog.regnamespace AND NOT o.rolsuper)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n
                   CROSS JOIN LATERAL pg_catalog.aclexplode(n.nspacl) a
                   LEFT JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantee
                   WHERE n.oid OPERATOR(pg_catalog.=) 'vault'::pg_catalog.regnamespace
                     AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE' AND NOT coalesce(g.rolsuper, false))
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                   WHERE p.pronamespace OPERATOR(pg_catalog.=) 'vault'::pg_catalog.regnamespace
                     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                      WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
                                        AND d.objid OPERATOR(pg_catalog.=) p.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'))
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                   WHERE c.relnamespace OPERATOR(pg_catalog.=) 'vault'::pg_catalog.regnamespace
                     AND c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'v', 'm', 'f', 'p']::"char"[])
                     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                      WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                                        AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'))
    THEN
        RAISE EXCEPTION 'schema "vault" is not safe to keep the vault in'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'It must belong to a superuser, let no other role create objects, and hold only the extension''s objects.',
                  HINT = 'ALTER SCHEMA vault OWNER TO a superuser, REVOKE CREATE ON SCHEMA vault from other roles, and drop objects that are not the extension''s; then retry.';
    END IF;

    FOR r IN SELECT rolname, rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication
               FROM pg_catalog.pg_roles
              WHERE rolname OPERATOR(pg_catalog.=) ANY (ARRAY['vault_owner', 'vault_reader', 'vault_admin'])
    LOOP
        IF r.rolcanlogin OR r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication THEN
            RAISE EXCEPTION 'role "%" already exists with attributes secret_vault does not give it', r.rolname
                USING ERRCODE = 'duplicate_object',
                      DETAIL = 'The extension''s roles must be NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION.',
                      HINT = pg_catalog.format('ALTER ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION, or drop it.', r.rolname);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) m.roleid
                WHERE o.rolname OPERATOR(pg_catalog.=) 'vault_owner') THEN
        RAISE EXCEPTION 'role "vault_owner" has members'
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'vault_owner owns the vault tables; a member could read and edit them directly.',
                  HINT = 'REVOKE vault_owner FROM every member first.';
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'vault_owner') THEN
        CREATE ROLE vault_owner NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION NOINHERIT;
    END IF;
END
$update_checks$;
-- vault_owner owns the tables and runs every query the extension makes; it
-- is not a superuser, so nothing the extension runs has a superuser's rights.
GRANT USAGE ON SCHEMA vault TO vault_owner;

-- ---- tables -----------------------------------------------------------------
-- What the KMS bound the wrapped key to: 1 = group and version (0.1.0),
-- 2 = also the group's purpose and key size. Every 0.1.0 row is 1.
ALTER TABLE vault.ring_keys
    ADD COLUMN binding smallint NOT NULL DEFAULT 1
        CONSTRAINT ring_keys_binding_check CHECK (binding IN (1, 2));

-- Foreign keys: a secret can never outlive the group that seals it, nor a
-- superseded value its secret. Added NOT VALID (checked for new rows at
-- once), then validated below without ever deleting what 0.1.0 left.
ALTER TABLE vault.secret_store
    ADD CONSTRAINT secret_store_id_key UNIQUE (id);
ALTER TABLE vault.secret_store
    ADD CONSTRAINT secret_store_key_group_fkey FOREIGN KEY (key_group_id) REFERENCES vault.key_groups (id) NOT VALID;
CREATE INDEX secret_store_key_group ON vault.secret_store (key_group_id);
ALTER TABLE vault.secret_values
    ADD CONSTRAINT secret_values_secret_fkey FOREIGN KEY (secret_id) REFERENCES vault.secret_store (id) ON DELETE CASCADE NOT VALID;

DO $validate$
DECLARE
    orphans bigint;
BEGIN
    BEGIN
        ALTER TABLE vault.secret_store VALIDATE CONSTRAINT secret_store_key_group_fkey;
    EXCEPTION WHEN foreign_key_violation THEN
        SELECT count(*) INTO orphans
          FROM vault.secret_store s
         WHERE NOT EXISTS (SELECT 1 FROM vault.key_groups g WHERE g.id OPERATOR(pg_catalog.=) s.key_group_id);
        RAISE WARNING 'secret_vault: % secret(s) in vault.secret_store refer to a key group that no longer exists', orphans
            USING DETAIL = 'Left by secret_vault 0.1.0. Constraint secret_store_key_group_fkey stays NOT VALID; it holds for new rows. Nothing was deleted.',
                  HINT = 'Inspect: SELECT name, key_group_id FROM vault.secret_store s WHERE NOT EXISTS (SELECT 1 FROM vault.key_groups g WHERE g.id = s.key_group_id); '
                         'once they are dealt with: ALTER TABLE vault.secret_store VALIDATE CONSTRAINT secret_store_key_group_fkey;';
    END;
    BEGIN
        ALTER TABLE vault.secret_values VALIDATE CONSTRAINT secret_values_secret_fkey;
    EXCEPTION WHEN foreign_key_violation THEN
        SELECT count(*) INTO orphans
          FROM vault.secret_values v
         WHERE NOT EXISTS (SELECT 1 FROM vault.secret_store s WHERE s.id OPERATOR(pg_catalog.=) v.secret_id);
        RAISE WARNING 'secret_vault: % superseded value(s) in vault.secret_values belong to a secret that no longer exists', orphans
            USING DETAIL = 'Left by secret_vault 0.1.0. Constraint secret_values_secret_fkey stays NOT VALID; it holds for new rows. Nothing was deleted.',
                  HINT = 'Inspect: SELECT secret_id, version FROM vault.secret_values v WHERE NOT EXISTS (SELECT 1 FROM vault.secret_store s WHERE s.id = v.secret_id); '
                         'once they are dealt with: ALTER TABLE vault.secret_values VALIDATE CONSTRAINT secret_values_secret_fkey;';
    END;
END
$validate$;

ALTER TABLE vault.kms_keys ADD COLUMN key_id text;
ALTER TABLE vault.ring_keys ADD COLUMN kms_key text REFERENCES vault.kms_keys (name);
UPDATE vault.ring_keys r SET kms_key = g.kms_key FROM vault.key_groups g WHERE g.id OPERATOR(pg_catalog.=) r.group_id;
ALTER TABLE vault.ring_keys ALTER COLUMN kms_key SET NOT NULL;

CREATE TABLE vault.rewrap_state (
    kms_key        text PRIMARY KEY REFERENCES vault.kms_keys (name) ON DELETE CASCADE,
    rows_moved     bigint NOT NULL DEFAULT 0,
    checked_at     timestamptz,
    last_error     text,
    last_error_at  timestamptz
);
CREATE VIEW vault.rewrap_status AS
SELECT k.name AS kms_key,
       k.provider,
       k.key_id,
       (SELECT count(*) FROM vault.ring_keys r WHERE r.kms_key = k.name
           AND (k.key_id IS NULL OR r.kms_key_id = k.key_id))                    AS rows_current,
       (SELECT count(*) FROM vault.ring_keys r WHERE r.kms_key = k.name
           AND k.key_id IS NOT NULL AND r.kms_key_id <> k.key_id)                AS rows_old,
       (SELECT count(*) FROM vault.ring_keys r JOIN vault.key_groups g ON g.id = r.group_id
         WHERE g.kms_key = k.name AND r.kms_key <> k.name)                       AS rows_moving_in,
       COALESCE(s.rows_moved, 0)                                                AS rows_moved,
       pg_catalog.current_setting('secret_vault.rewrap_rate')::int              AS rate_per_second,
       s.checked_at,
       s.last_error,
       s.last_error_at
  FROM vault.kms_keys k
  LEFT JOIN vault.rewrap_state s ON s.kms_key = k.name;
ALTER TABLE vault.rewrap_state OWNER TO vault_owner;
ALTER VIEW vault.rewrap_status OWNER TO vault_owner;
REVOKE ALL ON vault.rewrap_state, vault.rewrap_status FROM PUBLIC;
GRANT SELECT ON vault.rewrap_status TO vault_admin;
CREATE FUNCTION vault._kms_keys_one_default() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $one_default$
BEGIN
    UPDATE vault.kms_keys SET is_default = false
     WHERE is_default AND name OPERATOR(pg_catalog.<>) NEW.name;
    RETURN NEW;
END
$one_default$;
CREATE TRIGGER kms_keys_one_default BEFORE INSERT OR UPDATE OF is_default ON vault.kms_keys
    FOR EACH ROW WHEN (NEW.is_default) EXECUTE FUNCTION vault._kms_keys_one_default();
ALTER TABLE vault.kms_keys ENABLE ALWAYS TRIGGER kms_keys_one_default;
REVOKE ALL ON FUNCTION vault._kms_keys_one_default() FROM PUBLIC;

ALTER TABLE vault.kms_keys OWNER TO vault_owner;
ALTER TABLE vault.key_groups OWNER TO vault_owner;
ALTER TABLE vault.ring_keys OWNER TO vault_owner;
ALTER TABLE vault.secret_store OWNER TO vault_owner;
ALTER TABLE vault.secret_values OWNER TO vault_owner;
ALTER SEQUENCE vault.change_seq OWNER TO vault_owner;
ALTER VIEW vault.groups OWNER TO vault_owner;
ALTER VIEW vault.group_versions OWNER TO vault_owner;
ALTER VIEW vault.secrets OWNER TO vault_owner;

-- ---- functions --------------------------------------------------------------
-- Generated from src/stats.rs (secret_vault::stats::worker_status).
CREATE FUNCTION vault."worker_status"() RETURNS TABLE (
	"database" TEXT,  /* String */
	"pid" INT,  /* Option < i32 > */
	"state" TEXT,  /* String */
	"started_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_run" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"runs" bigint,  /* i64 */
	"errors" bigint,  /* i64 */
	"last_error" TEXT,  /* Option < String > */
	"last_error_at" timestamp with time zone  /* Option < TimestampWithTimeZone > */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_status_wrapper';

-- Generated from src/stats.rs (secret_vault::stats::worker_item_failures).
CREATE FUNCTION vault."worker_item_failures"() RETURNS TABLE (
	"database" oid,  /* pg_sys :: Oid */
	"kind" TEXT,  /* String */
	"object_id" uuid,  /* pgrx :: Uuid */
	"failures" bigint,  /* i64 */
	"first_failed_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_failed_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"next_attempt_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_error" TEXT  /* String */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_item_failures_wrapper';

-- Generated from src/groups.rs (secret_vault::groups::destroy).
CREATE FUNCTION vault."destroy"(
	"group_name" TEXT, /* & str */
	"below_version" INT /* i32 */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'destroy_wrapper';

-- Generated from src/kms_keys.rs (secret_vault::kms_keys::add_kms_key).
CREATE FUNCTION vault."add_kms_key"(
	"name" TEXT, /* & str */
	"provider" TEXT, /* & str */
	"config" jsonb /* JsonB */
) RETURNS TEXT /* String */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_kms_key_wrapper';

-- Generated from src/kms_keys.rs (secret_vault::kms_keys::set_default_kms_key).
CREATE FUNCTION vault."set_default_kms_key"(
	"name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_default_kms_key_wrapper';

-- Generated from src/kms_keys.rs (secret_vault::kms_keys::drop_kms_key).
CREATE FUNCTION vault."drop_kms_key"(
	"name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_kms_key_wrapper';

-- Generated from src/rewrap.rs (secret_vault::rewrap::rewrap).
CREATE FUNCTION vault."rewrap"(
	"kms_key" TEXT DEFAULT NULL /* core::option::Option<&str> */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rewrap_wrapper';

-- Generated from src/rewrap.rs (secret_vault::rewrap::move_group).
CREATE FUNCTION vault."move_group"(
	"group_name" TEXT, /* & str */
	"kms_key" TEXT /* & str */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'move_group_wrapper';


-- Superusers only: a config names files and endpoints the server will use.
REVOKE ALL ON FUNCTION vault.add_kms_key(text, text, jsonb), vault.set_default_kms_key(text),
    vault.drop_kms_key(text) FROM PUBLIC;

-- Generated from src/stats.rs (secret_vault::stats::stats): new columns.
DROP FUNCTION vault.stats();
CREATE FUNCTION vault."stats"() RETURNS TABLE (
	"cache_hits" bigint,  /* i64 */
	"cache_misses" bigint,  /* i64 */
	"evictions" bigint,  /* i64 */
	"kms_calls" bigint,  /* i64 */
	"rotations" bigint,  /* i64 */
	"invalidations" bigint,  /* i64 */
	"cache_fills" bigint,  /* i64 */
	"cached_groups" INT,  /* i32 */
	"cache_slots" INT,  /* i32 */
	"worker_pid" INT,  /* Option < i32 > */
	"worker_runs" bigint,  /* i64 */
	"worker_last_run" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"worker_errors" bigint,  /* i64 */
	"worker_last_error" TEXT,  /* Option < String > */
	"worker_last_error_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"kms_calls_local" bigint,  /* i64 */
	"kms_calls_aws" bigint,  /* i64 */
	"kms_calls_transit" bigint,  /* i64 */
	"rotation" TEXT  /* String */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stats_wrapper';
REVOKE ALL ON FUNCTION vault.stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.stats() TO vault_admin;

-- ---- views and grants (as in finalize.sql) ----------------------------------
-- Current values. Granted to no one: to let a role list every value,
-- GRANT SELECT on it and EXECUTE on vault._open_secret (which refuses any
-- caller without SELECT on this view).
ALTER VIEW vault.decrypted_secrets OWNER TO vault_owner;
REVOKE EXECUTE ON FUNCTION vault._open_secret(text, uuid, int, bytea) FROM vault_reader;

-- ---- access rules, allowlists, lockouts, audit log -----------------------------
-- Access rules (docs/access.md): privileges of roles on name patterns.
-- Roles are kept by name, as pg_hba.conf and a dump's GRANTs are, so rules
-- survive a dump into another cluster; a rule whose role does not exist
-- gives nothing. Every installation starts with default rules (the reader
-- and admin roles on '**'); they are not rows here but in the view below,
-- less those revoked (vault.access_defaults_revoked), so that a dump
-- restored into a new CREATE EXTENSION neither duplicates them nor brings
-- back a default an administrator removed.
CREATE TABLE vault.access_grants (
    role        text NOT NULL CHECK (length(role) BETWEEN 1 AND 63),
    privilege   text NOT NULL CHECK (privilege IN ('read', 'verify', 'encrypt', 'decrypt', 'write', 'rotate')),
    pattern     text NOT NULL CHECK (length(pattern) BETWEEN 1 AND 255),
    granted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    change_seq  bigint NOT NULL DEFAULT pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass),
    PRIMARY KEY (role, privilege, pattern)
);
CREATE TABLE vault.access_defaults_revoked (
    role        text NOT NULL,
    privilege   text NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    change_seq  bigint NOT NULL DEFAULT pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass),
    PRIMARY KEY (role, privilege)
);
-- Client addresses a role may use the vault from; no row: anywhere.
CREATE TABLE vault.allowed_addresses (
    role        text PRIMARY KEY CHECK (length(role) BETWEEN 1 AND 63),
    addresses   cidr[] NOT NULL,
    change_seq  bigint NOT NULL DEFAULT pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass)
);
CREATE VIEW vault.access_rules AS
SELECT g.role, g.privilege, g.pattern
  FROM vault.access_grants g
UNION
SELECT d.role, d.privilege, '**'
  FROM (VALUES ('vault_reader', 'read'), ('vault_reader', 'verify'), ('vault_reader', 'encrypt'),
               ('vault_reader', 'decrypt'),
               ('vault_admin', 'read'), ('vault_admin', 'verify'), ('vault_admin', 'encrypt'),
               ('vault_admin', 'decrypt'), ('vault_admin', 'write'), ('vault_admin', 'rotate')) d (role, privilege)
 WHERE NOT EXISTS (SELECT 1 FROM vault.access_defaults_revoked r
                    WHERE r.role OPERATOR(pg_catalog.=) d.role AND r.privilege OPERATOR(pg_catalog.=) d.privilege);

-- The audit log: written only by the workers, from the shared-memory queue,
-- each record chained to the one before by a MAC (vault.verify_audit()).
CREATE TABLE vault.audit_log (
    id                bigint PRIMARY KEY,
    at                timestamptz NOT NULL,
    database          text NOT NULL,
    role              text NOT NULL,
    session_role      text NOT NULL,
    client_addr       inet,
    application_name  text NOT NULL,
    action            text NOT NULL,
    object            text,
    outcome           text NOT NULL,
    sqlstate          text,
    mac               bytea NOT NULL
);
CREATE INDEX audit_log_at ON vault.audit_log (at);
-- The chain's key (wrapped by a KMS key) and its ends; one row.
CREATE TABLE vault.audit_chain (
    only_row          boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    kms_key           text NOT NULL REFERENCES vault.kms_keys (name),
    key_id            text NOT NULL,
    wrapped_key       bytea NOT NULL,
    first_id          bigint NOT NULL,
    anchor            bytea NOT NULL,
    last_id           bigint NOT NULL,
    last_mac          bytea NOT NULL,
    queue_database    bigint NOT NULL DEFAULT 0,
    queue_generation  bigint NOT NULL DEFAULT 0,
    queue_seq         bigint NOT NULL DEFAULT 0,
    -- MAC of the two ends under the chain key (NULL until the first write).
    head_mac          bytea
);
-- Records of writes that succeeded, staged in the writing transaction:
-- they commit with the write (or vanish with it) and the worker moves them
-- into the chain. Not dumped: a restore starts with none.
CREATE TABLE vault.audit_staging (
    seq               bigserial PRIMARY KEY,
    at                timestamptz NOT NULL,
    database          text NOT NULL,
    role              text NOT NULL,
    session_role      text NOT NULL,
    client_addr       inet,
    application_name  text NOT NULL,
    action            text NOT NULL,
    object            text
);

SELECT pg_catalog.pg_extension_config_dump('vault.access_grants', '');
SELECT pg_catalog.pg_extension_config_dump('vault.access_defaults_revoked', '');
SELECT pg_catalog.pg_extension_config_dump('vault.allowed_addresses', '');
SELECT pg_catalog.pg_extension_config_dump('vault.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('vault.audit_chain', '');

ALTER TABLE vault.access_grants OWNER TO vault_owner;
ALTER TABLE vault.access_defaults_revoked OWNER TO vault_owner;
ALTER TABLE vault.allowed_addresses OWNER TO vault_owner;
ALTER VIEW vault.access_rules OWNER TO vault_owner;
ALTER TABLE vault.audit_log OWNER TO vault_owner;
ALTER TABLE vault.audit_chain OWNER TO vault_owner;
ALTER TABLE vault.audit_staging OWNER TO vault_owner;

-- The functions that were SECURITY DEFINER now run as their caller, so that
-- access rules and the audit log see who called; each switches to
-- vault_owner itself after its checks.
ALTER FUNCTION vault.create_group(text, text, interval, interval, int, int, text) SECURITY INVOKER;
ALTER FUNCTION vault.rotate(text) SECURITY INVOKER;
ALTER FUNCTION vault.retire(text, int) SECURITY INVOKER;
ALTER FUNCTION vault.drop_group(text) SECURITY INVOKER;
ALTER FUNCTION vault.create_secret(text, text, text, text) SECURITY INVOKER;
ALTER FUNCTION vault.create_rotating_secret(text, interval, interval, text, text, text) SECURITY INVOKER;
ALTER FUNCTION vault.update_secret(text, text) SECURITY INVOKER;
ALTER FUNCTION vault.rotate_secret(text) SECURITY INVOKER;
ALTER FUNCTION vault.delete_secret(text) SECURITY INVOKER;
ALTER FUNCTION vault.secret_versions(text) SECURITY INVOKER;

-- Generated from src/access/sql.rs and src/audit/writer.rs.
CREATE FUNCTION vault."_may"(
	"privilege" TEXT, /* & str */
	"name" TEXT /* & str */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'may_sql_wrapper';
CREATE FUNCTION vault."_visible"(
	"name" TEXT /* & str */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'visible_sql_wrapper';
CREATE FUNCTION vault.grant_access("role" regrole, privileges text[], pattern text) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'grant_access_wrapper';
CREATE FUNCTION vault.revoke_access("role" regrole, privileges text[], pattern text) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'revoke_access_wrapper';
CREATE FUNCTION vault._set_allowed_addresses("role" oid, addresses text[]) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'set_allowed_addresses_impl_wrapper';
CREATE FUNCTION vault.set_allowed_addresses("role" regrole, addresses cidr[]) RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT vault._set_allowed_addresses($1::pg_catalog.oid, $2::pg_catalog.text[]) $$;
CREATE FUNCTION vault._unlock("role" oid, client_addr text) RETURNS int
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'unlock_impl_wrapper';
CREATE FUNCTION vault.unlock("role" regrole, client_addr inet DEFAULT NULL) RETURNS int
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT vault._unlock($1::pg_catalog.oid, pg_catalog.host($2)) $$;
CREATE FUNCTION vault._lockouts() RETURNS TABLE ("role" text, client_addr text, failures int, locked_until timestamptz)
LANGUAGE c STABLE PARALLEL SAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lockouts_impl_wrapper';
CREATE FUNCTION vault."verify_audit"() RETURNS bigint /* Option < i64 > */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'verify_audit_wrapper';

-- The views show only names the caller holds a privilege on; the values
-- view passes the secret's name to vault._open_secret, which checks read.
DROP VIEW vault.group_versions;
DROP VIEW vault.groups;
DROP VIEW vault.secrets;
DROP VIEW vault.decrypted_secrets;
DROP FUNCTION vault._open_secret(text, uuid, int, bytea);
CREATE FUNCTION vault."_open_secret"(
	"name" TEXT, /* & str */
	"key_group" TEXT, /* & str */
	"secret_id" uuid, /* Uuid */
	"version" INT, /* i32 */
	"ciphertext" bytea /* & [u8] */
) RETURNS TEXT /* SecretText */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'open_secret_wrapper';
-- The metadata views show only names the caller holds some privilege on
-- (vault._visible: always true for superusers and the extension itself).
-- security_barrier: a caller's own function in a WHERE clause never sees
-- the rows the filter hides.
CREATE VIEW vault.groups WITH (security_barrier) AS
SELECT g.name,
       g.purpose,
       (SELECT max(k.version) FROM vault.ring_keys k
         WHERE k.group_id = g.id AND k.retired_at IS NULL
           AND k.activates_at <= pg_catalog.clock_timestamp())       AS current_version,
       (SELECT count(*)::int FROM vault.ring_keys k
         WHERE k.group_id = g.id AND k.retired_at IS NULL)            AS versions,
       g.last_version                                                AS latest_version,
       g.next_rotation_at,
       g.kms_key,
       g.rotation_interval,
       g.propagation_delay,
       g.ring_size,
       g.key_bytes,
       g.created_at,
       g.last_rotated_at
  FROM vault.key_groups g
 WHERE vault._visible(g.name);
ALTER VIEW vault.groups OWNER TO vault_owner;

-- Metadata of every version of every group: never key bytes.
CREATE VIEW vault.group_versions WITH (security_barrier) AS
SELECT g.name AS group_name,
       k.version,
       CASE WHEN k.retired_at IS NOT NULL THEN 'retired'
            WHEN k.activates_at > pg_catalog.clock_timestamp() THEN 'pending'
            WHEN k.version = gv.current_version THEN 'current'
            ELSE 'previous' END AS state,
       k.created_at,
       k.activates_at,
       k.retired_at,
       k.kms_key_id
  FROM vault.key_groups g
  JOIN vault.groups gv ON gv.name = g.name
  JOIN vault.ring_keys k ON k.group_id = g.id;
ALTER VIEW vault.group_versions OWNER TO vault_owner;

-- Metadata only, never values.
CREATE VIEW vault.secrets WITH (security_barrier) AS
SELECT s.id,
       s.name,
       s.description,
       s.kind,
       g.name AS key_group,
       s.current_version,
       s.rotation_interval,
       s.grace_period,
       s.generator,
       s.created_at,
       s.updated_at,
       s.next_rotation_at
  FROM vault.secret_store s
  JOIN vault.key_groups g ON g.id = s.key_group_id
 WHERE vault._visible(s.name);
ALTER VIEW vault.secrets OWNER TO vault_owner;

-- The views over functions (they can only be made once the functions exist).
-- Current values. Granted to no one: to let a role list every value,
-- GRANT SELECT on it and EXECUTE on vault._open_secret (which refuses any
-- caller without SELECT on this view). Rows are those the caller may read.
CREATE VIEW vault.decrypted_secrets WITH (security_barrier) AS
SELECT s.id,
       s.name,
       s.description,
       s.kind,
       s.current_version AS version,
       vault._open_secret(s.name, g.name, s.id, s.current_version, s.current_ciphertext) AS value,
       s.created_at,
       s.updated_at
  FROM vault.secret_store s
  JOIN vault.key_groups g ON g.id = s.key_group_id
 WHERE vault._may('read', s.name);
ALTER VIEW vault.decrypted_secrets OWNER TO vault_owner;

-- Locked (role, client address) pairs of the server, for operators.
CREATE VIEW vault.lockouts AS
SELECT role, client_addr::pg_catalog.inet AS client_addr, failures, locked_until FROM vault._lockouts();
ALTER VIEW vault.lockouts OWNER TO vault_owner;

-- Nothing in the vault is reachable by PUBLIC (the new function included).
-- Also records the privileges of the objects that changed owner above as
-- the extension's initial privileges, as CREATE EXTENSION does.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA vault FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA vault FROM PUBLIC;

-- Per-database workers, for operators.
CREATE VIEW vault.workers AS SELECT * FROM vault.worker_status();
ALTER VIEW vault.workers OWNER TO vault_owner;
REVOKE ALL ON vault.workers FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.worker_status() TO vault_admin;
GRANT SELECT ON vault.workers TO vault_admin;

-- Items the workers failed on, with names for this database.
CREATE VIEW vault.worker_failures AS
SELECT d.datname AS database,
       f.kind,
       f.object_id,
       CASE WHEN d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() THEN
           coalesce((SELECT g.name FROM vault.key_groups g WHERE g.id OPERATOR(pg_catalog.=) f.object_id),
                    (SELECT s.name FROM vault.secret_store s WHERE s.id OPERATOR(pg_catalog.=) f.object_id))
       END AS object,
       f.failures,
       f.first_failed_at,
       f.last_failed_at,
       f.next_attempt_at,
       f.last_error
  FROM vault.worker_item_failures() f
  LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) f.database;
ALTER VIEW vault.worker_failures OWNER TO vault_owner;
REVOKE ALL ON vault.worker_failures FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.worker_item_failures() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.worker_item_failures() TO vault_admin;
GRANT SELECT ON vault.worker_failures TO vault_admin;

REVOKE ALL ON FUNCTION vault.destroy(text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.destroy(text, int) TO vault_admin;
REVOKE ALL ON FUNCTION vault.rewrap(text), vault.move_group(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.rewrap(text) TO vault_admin;

-- Access rules: the checks are open to every vault role (they answer only
-- for the caller); rules and allowlists are set by superusers only (not
-- granted: the functions check); vault_admin reads them, the audit log
-- and the lockouts, and lifts lockouts.
GRANT EXECUTE ON FUNCTION vault._visible(text), vault._may(text, text) TO vault_reader, vault_admin;
GRANT SELECT ON vault.access_rules, vault.allowed_addresses, vault.audit_log, vault.lockouts TO vault_admin;
GRANT EXECUTE ON FUNCTION vault._lockouts(), vault.unlock(regrole, inet), vault._unlock(oid, text),
    vault.verify_audit() TO vault_admin;
GRANT SELECT ON vault.groups, vault.group_versions, vault.secrets TO vault_reader, vault_admin;

-- SECURITY DEFINER functions run as vault_owner, never as the superuser who
-- ran CREATE EXTENSION.
DO $owners$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace OPERATOR(pg_catalog.=) 'vault'::pg_catalog.regnamespace AND p.prosecdef
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO vault_owner', f);
    END LOOP;
END
$owners$;

-- Minted credentials (see sql/bootstrap.sql and docs/credentials.md).
CREATE TABLE vault.credential_store (
    name             text PRIMARY KEY,
    id               uuid NOT NULL,
    provider         text NOT NULL,
    config           jsonb NOT NULL,
    refresh_before   interval NOT NULL,
    key_group_id     uuid NOT NULL,
    created_at       timestamptz NOT NULL,
    generation       bigint NOT NULL DEFAULT 0,
    ciphertext       bytea,
    minted_at        timestamptz,
    expires_at       timestamptz,
    next_refresh_at  timestamptz NOT NULL,
    failures         int NOT NULL DEFAULT 0,
    last_error       text,
    last_error_at    timestamptz,
    CONSTRAINT credential_store_id_key UNIQUE (id),
    CONSTRAINT credential_store_key_group_fkey FOREIGN KEY (key_group_id) REFERENCES vault.key_groups (id)
);
CREATE INDEX credential_store_due ON vault.credential_store (next_refresh_at);
CREATE INDEX credential_store_key_group ON vault.credential_store (key_group_id);
SELECT pg_catalog.pg_extension_config_dump('vault.credential_store', '');
ALTER TABLE vault.credential_store OWNER TO vault_owner;
REVOKE ALL ON vault.credential_store FROM PUBLIC;

-- Generated from src/credentials/mod.rs.
CREATE FUNCTION vault."create_credential"(
	"name" TEXT,
	"provider" TEXT,
	"config" jsonb,
	"refresh_before" interval DEFAULT '5 minutes'
) RETURNS uuid
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_credential_wrapper';

CREATE FUNCTION vault."credential"(
	"name" TEXT
) RETURNS TEXT
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'credential_wrapper';

CREATE FUNCTION vault."drop_credential"(
	"name" TEXT
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'drop_credential_wrapper';

CREATE VIEW vault.credentials WITH (security_barrier) AS
SELECT c.id,
       c.name,
       c.provider,
       c.config,
       c.refresh_before,
       c.created_at,
       c.minted_at,
       c.expires_at,
       c.next_refresh_at,
       c.failures,
       c.last_error,
       c.last_error_at
  FROM vault.credential_store c
 WHERE vault._visible(c.name);
ALTER VIEW vault.credentials OWNER TO vault_owner;

REVOKE ALL ON FUNCTION vault.create_credential(text, text, jsonb, interval), vault.credential(text),
    vault.drop_credential(text) FROM PUBLIC;
REVOKE ALL ON vault.credentials FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.credential(text) TO vault_reader;
GRANT EXECUTE ON FUNCTION vault.create_credential(text, text, jsonb, interval), vault.drop_credential(text) TO vault_admin;
GRANT SELECT ON vault.credentials TO vault_reader, vault_admin;
