-- secret_vault: tables, roles and views. Functions are generated from the
-- Rust sources; grants are applied in finalize.sql once they all exist.

-- The install trusts nothing it did not make. CREATE EXTENSION runs as a
-- superuser, and everything below (and every query the extension runs later)
-- would otherwise be at the mercy of whoever prepared the ground:
--  * schema vault must be an empty schema owned by a superuser in which no
--    other role may create objects: what CREATE EXTENSION makes, and what
--    DROP EXTENSION leaves behind. An owner could plant look-alikes or
--    rename it under us. (Checked whoever created it, even in this very
--    transaction: an ALTER SCHEMA ... OWNER in the same transaction proves
--    nothing about what was planted before.)
--  * pre-existing roles with the extension's role names must be plain
--    NOLOGIN roles, and nobody may be a member of vault_owner.
DO $install_checks$
DECLARE
    ns record;
    r record;
    objects bigint;
BEGIN
    SELECT n.oid, n.nspname, o.rolsuper AS owner_is_superuser,
           EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) a
                     LEFT JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantee
                    WHERE a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
                      AND NOT coalesce(g.rolsuper, false)) AS others_may_create
      INTO ns
      FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) n.nspowner
     WHERE n.nspname OPERATOR(pg_catalog.=) 'vault';
    SELECT (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) ns.oid)
             + (SELECT count(*) FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) ns.oid)
             + (SELECT count(*) FROM pg_catalog.pg_type WHERE typnamespace OPERATOR(pg_catalog.=) ns.oid)
             + (SELECT count(*) FROM pg_catalog.pg_operator WHERE oprnamespace OPERATOR(pg_catalog.=) ns.oid)
             + (SELECT count(*) FROM pg_catalog.pg_collation WHERE collnamespace OPERATOR(pg_catalog.=) ns.oid)
             + (SELECT count(*) FROM pg_catalog.pg_conversion WHERE connamespace OPERATOR(pg_catalog.=) ns.oid)
             + (SELECT count(*) FROM pg_catalog.pg_opfamily WHERE opfnamespace OPERATOR(pg_catalog.=) ns.oid)
             + (SELECT count(*) FROM pg_catalog.pg_ts_config WHERE cfgnamespace OPERATOR(pg_catalog.=) ns.oid)
             + (SELECT count(*) FROM pg_catalog.pg_ts_dict WHERE dictnamespace OPERATOR(pg_catalog.=) ns.oid)
          INTO objects;
    IF NOT ns.owner_is_superuser OR ns.others_may_create OR objects OPERATOR(pg_catalog.>) 0 THEN
        RAISE EXCEPTION 'schema "vault" already exists and was not created by CREATE EXTENSION secret_vault'
                USING ERRCODE = 'duplicate_schema',
                      DETAIL = 'Its owner, anyone allowed to create objects in it, or objects already in it could capture keys and values.',
                      HINT = 'Drop or rename that schema first (DROP SCHEMA vault), then CREATE EXTENSION secret_vault.';
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
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'vault_reader') THEN
        CREATE ROLE vault_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'vault_admin') THEN
        CREATE ROLE vault_admin NOLOGIN;
    END IF;
END
$install_checks$;
GRANT vault_reader TO vault_admin;
-- vault_owner owns the tables and runs every query the extension makes; it
-- is not a superuser, so nothing the extension runs has a superuser's rights.
GRANT USAGE ON SCHEMA vault TO vault_owner;

-- KMS master keys that wrap ring keys, by name. Exactly one is the default.
-- config holds only non-secret settings (region, key, address, paths of the
-- token and CA files): credentials come from the server's environment.
-- key_id is the resolved id new wraps record, as found by the live check of
-- vault.add_kms_key and kept current by the worker (re-wrap); NULL for the
-- built-in 'local' until the worker first looks.
CREATE TABLE vault.kms_keys (
    name        text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    provider    text NOT NULL CHECK (provider IN ('local', 'aws', 'transit')),
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    key_id      text
);
CREATE UNIQUE INDEX kms_keys_one_default ON vault.kms_keys (is_default) WHERE is_default;
-- A key that becomes the default takes the flag from the previous one. Also
-- how a restore or a logical-replication subscriber can load a dumped or
-- published default: CREATE EXTENSION has already flagged the built-in
-- 'local' there (ALWAYS: the trigger fires in replica mode too).
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
INSERT INTO vault.kms_keys (name, provider, is_default) VALUES ('local', 'local', true);

-- Every change to a group takes a new value, so the cache can tell what it
-- holds from what the tables say (standbys, subscribers, restores).
CREATE SEQUENCE vault.change_seq;

-- Key groups: named rings of versioned keys.
CREATE TABLE vault.key_groups (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    purpose            text NOT NULL CHECK (purpose IN ('export', 'encrypt')),
    rotation_interval  interval CHECK (rotation_interval > interval '0'),
    propagation_delay  interval NOT NULL CHECK (propagation_delay >= interval '0'),
    ring_size          int NOT NULL CHECK (ring_size BETWEEN 1 AND 1024),
    key_bytes          int NOT NULL CHECK (key_bytes BETWEEN 16 AND 512),
    kms_key            text NOT NULL REFERENCES vault.kms_keys (name),
    last_version       int NOT NULL CHECK (last_version >= 1),
    created_at         timestamptz NOT NULL,
    last_rotated_at    timestamptz NOT NULL,
    next_rotation_at   timestamptz,
    change_seq         bigint NOT NULL DEFAULT pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass)
);
CREATE INDEX key_groups_due ON vault.key_groups (next_rotation_at) WHERE next_rotation_at IS NOT NULL;

-- Ring keys, only ever stored wrapped by a KMS master key. kms_key_id is the
-- resolved id of the master key that wrapped the row (ARN, transit key and
-- version, or local fingerprint), so a KMS rotation is a re-wrap of rows.
CREATE TABLE vault.ring_keys (
    group_id      uuid NOT NULL REFERENCES vault.key_groups (id) ON DELETE CASCADE,
    version       int NOT NULL CHECK (version >= 1),
    created_at    timestamptz NOT NULL,
    activates_at  timestamptz NOT NULL,
    retired_at    timestamptz,
    kms_key_id    text NOT NULL,
    wrapped_key   bytea NOT NULL,
    -- What the KMS bound the wrapped key to: 1 = group and version (0.1.0),
    -- 2 = also the group's purpose and key size.
    binding       smallint NOT NULL DEFAULT 1 CHECK (binding IN (1, 2)),
    PRIMARY KEY (group_id, version),
    -- The registered KMS key whose provider wrapped the row: the group's,
    -- except for rows a move (vault.move_group) has not re-wrapped yet.
    kms_key       text NOT NULL REFERENCES vault.kms_keys (name)
);

-- pg_dump carries the vault's rows (as ciphertext); the 'local' row is made
-- by CREATE EXTENSION itself.
SELECT pg_catalog.pg_extension_config_dump('vault.kms_keys', 'WHERE name <> ''local''');
SELECT pg_catalog.pg_extension_config_dump('vault.key_groups', '');
SELECT pg_catalog.pg_extension_config_dump('vault.ring_keys', '');
SELECT pg_catalog.pg_extension_config_dump('vault.change_seq', '');


-- Re-wrap progress per KMS key, written by the workers (not dumped: it
-- describes this server's passes).
CREATE TABLE vault.rewrap_state (
    kms_key        text PRIMARY KEY REFERENCES vault.kms_keys (name) ON DELETE CASCADE,
    rows_moved     bigint NOT NULL DEFAULT 0,
    checked_at     timestamptz,
    last_error     text,
    last_error_at  timestamptz
);

-- Per KMS key: rows on its current material, rows on older material (to be
-- re-wrapped), rows of groups moved to it still under another KMS key.
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


-- Secrets: named values stored as versions, each sealed under a ring key of
-- an 'encrypt' group and bound to (secret id, version).
--
-- Written only by the extension's own functions, which validate every value
-- (names, kinds, intervals, generators) before writing, so they carry no
-- CHECK constraints. They do carry foreign keys: a secret can never outlive
-- the group that seals it, nor a superseded value its secret, whatever the
-- interleaving of drop_group, create_secret, delete_secret and rotation.
-- One row per secret, holding its current value's ciphertext: creating a
-- secret writes one row and one index entry. Superseded versions move to
-- vault.secret_values.
CREATE TABLE vault.secret_store (
    name                text PRIMARY KEY,
    id                  uuid NOT NULL,
    kind                text NOT NULL,
    description         text,
    key_group_id        uuid NOT NULL,
    rotation_interval   interval,
    grace_period        interval NOT NULL DEFAULT interval '0',
    generator           text,
    current_version     int NOT NULL,
    current_created_at  timestamptz NOT NULL,
    current_ciphertext  bytea NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    next_rotation_at    timestamptz,
    change_seq          bigint NOT NULL DEFAULT pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass),
    CONSTRAINT secret_store_id_key UNIQUE (id),
    CONSTRAINT secret_store_key_group_fkey FOREIGN KEY (key_group_id) REFERENCES vault.key_groups (id)
);
CREATE INDEX secret_store_key_group ON vault.secret_store (key_group_id);
CREATE INDEX secret_store_due ON vault.secret_store (next_rotation_at) WHERE next_rotation_at IS NOT NULL;

-- Superseded versions, only ciphertext. valid_until ends the grace window:
-- the value verifies until then, never after (at once for manual secrets).
CREATE TABLE vault.secret_values (
    secret_id    uuid NOT NULL,
    version      int NOT NULL,
    created_at   timestamptz NOT NULL,
    valid_until  timestamptz NOT NULL,
    ciphertext   bytea NOT NULL,
    PRIMARY KEY (secret_id, version),
    CONSTRAINT secret_values_secret_fkey FOREIGN KEY (secret_id) REFERENCES vault.secret_store (id) ON DELETE CASCADE
);

SELECT pg_catalog.pg_extension_config_dump('vault.secret_store', '');
SELECT pg_catalog.pg_extension_config_dump('vault.secret_values', '');


-- Minted credentials (docs/credentials.md): short-lived upstream tokens the
-- worker mints before they expire. The config names no secret, only vault
-- secrets to read when minting. The latest token is sealed (format 0x03)
-- under a ring key of key_group_id, bound to (id, generation); the sealed
-- bytes carry the expiry, so expires_at here is for display and scheduling
-- only. On a standby or subscriber the row arrives by replication and is
-- served as it is; only a writable node with rotation on mints.
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

ALTER TABLE vault.kms_keys OWNER TO vault_owner;
ALTER TABLE vault.key_groups OWNER TO vault_owner;
ALTER TABLE vault.ring_keys OWNER TO vault_owner;
ALTER TABLE vault.rewrap_state OWNER TO vault_owner;
ALTER VIEW vault.rewrap_status OWNER TO vault_owner;
ALTER TABLE vault.secret_store OWNER TO vault_owner;
ALTER TABLE vault.secret_values OWNER TO vault_owner;
ALTER TABLE vault.credential_store OWNER TO vault_owner;
ALTER SEQUENCE vault.change_seq OWNER TO vault_owner;
ALTER TABLE vault.access_grants OWNER TO vault_owner;
ALTER TABLE vault.access_defaults_revoked OWNER TO vault_owner;
ALTER TABLE vault.allowed_addresses OWNER TO vault_owner;
ALTER VIEW vault.access_rules OWNER TO vault_owner;
ALTER TABLE vault.audit_log OWNER TO vault_owner;
ALTER TABLE vault.audit_chain OWNER TO vault_owner;
ALTER TABLE vault.audit_staging OWNER TO vault_owner;
