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

-- Minted credentials: metadata and the state of refreshing, never a token.
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

-- Per-database workers, for operators.
CREATE VIEW vault.workers AS SELECT * FROM vault.worker_status();
ALTER VIEW vault.workers OWNER TO vault_owner;

-- Items the workers failed on (a group that cannot rotate, a secret whose
-- key group is gone...), with names for this database.
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

-- Locked (role, client address) pairs of the server, for operators.
CREATE VIEW vault.lockouts AS
SELECT role, client_addr::pg_catalog.inet AS client_addr, failures, locked_until FROM vault._lockouts();
ALTER VIEW vault.lockouts OWNER TO vault_owner;

-- Grants the extension did not make (default privileges of the installing
-- role, ALTER DEFAULT PRIVILEGES ... GRANT ... TO someone) are taken back
-- before the extension's own: nobody reads the vault tables or runs its
-- functions by accident of a default.
DO $strip_grants$
DECLARE g record;
BEGIN
    FOR g IN
        SELECT pg_catalog.format('REVOKE ALL ON %s %s FROM %s',
                   CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::pg_catalog.regclass,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END) AS sql
          FROM pg_catalog.pg_class c
          CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
         WHERE c.relnamespace OPERATOR(pg_catalog.=) 'vault'::pg_catalog.regnamespace
           AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
        UNION
        SELECT pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %s', p.oid::pg_catalog.regprocedure,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END)
          FROM pg_catalog.pg_proc p
          CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'vault'::pg_catalog.regnamespace
           AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        EXECUTE g.sql;
    END LOOP;
END
$strip_grants$;

-- Nothing in the vault is reachable by PUBLIC; access goes through the roles.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA vault FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA vault FROM PUBLIC;
REVOKE ALL ON SCHEMA vault FROM PUBLIC;

GRANT USAGE ON SCHEMA vault TO vault_reader, vault_admin;

GRANT EXECUTE ON FUNCTION
    vault.current(text),
    vault.resolve(text, int),
    vault.encrypt(text, bytea, bytea),
    vault.decrypt(text, bytea, bytea)
  TO vault_reader;

GRANT EXECUTE ON FUNCTION
    vault.create_group(text, text, interval, interval, int, int, text),
    vault.rotate(text),
    vault.retire(text, int),
    vault.drop_group(text),
    vault.destroy(text, int),
    vault.stats()
  TO vault_admin;

GRANT SELECT ON vault.groups, vault.group_versions TO vault_reader, vault_admin;
GRANT SELECT ON vault.kms_keys, vault.rewrap_status TO vault_admin;
GRANT EXECUTE ON FUNCTION vault.rewrap(text) TO vault_admin;

REVOKE ALL ON vault.decrypted_secrets FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA vault FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA vault FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    vault.read_secret(text),
    vault.verify_secret(text, text),
    vault.secret_versions(text)
  TO vault_reader;

GRANT EXECUTE ON FUNCTION
    vault.create_secret(text, text, text, text),
    vault.create_rotating_secret(text, interval, interval, text, text, text),
    vault.update_secret(text, text),
    vault.rotate_secret(text),
    vault.delete_secret(text)
  TO vault_admin;

GRANT SELECT ON vault.secrets TO vault_reader, vault_admin;

GRANT EXECUTE ON FUNCTION vault.credential(text) TO vault_reader;
GRANT EXECUTE ON FUNCTION
    vault.create_credential(text, text, jsonb, interval),
    vault.drop_credential(text)
  TO vault_admin;
GRANT SELECT ON vault.credentials TO vault_reader, vault_admin;

-- Per-database workers, for operators.
REVOKE ALL ON vault.workers FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.worker_status() TO vault_admin;
GRANT SELECT ON vault.workers TO vault_admin;
REVOKE ALL ON vault.worker_failures FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.worker_item_failures() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.worker_item_failures() TO vault_admin;
GRANT SELECT ON vault.worker_failures TO vault_admin;

-- None is SECURITY DEFINER since 0.2.0 (they check the caller's access
-- rules, then switch to vault_owner themselves); should one ever be, it runs
-- as vault_owner, never as the superuser who ran CREATE EXTENSION.
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

-- Access rules: the checks are open to every vault role (they answer only
-- for the caller); rules and allowlists are set by superusers only (not
-- granted: the functions check); vault_admin reads them, the audit log
-- and the lockouts, and lifts lockouts.
GRANT EXECUTE ON FUNCTION vault._visible(text), vault._may(text, text) TO vault_reader, vault_admin;
GRANT SELECT ON vault.access_rules, vault.allowed_addresses, vault.audit_log, vault.lockouts TO vault_admin;
GRANT EXECUTE ON FUNCTION vault._lockouts(), vault.unlock(regrole, inet), vault._unlock(oid, text),
    vault.verify_audit() TO vault_admin;
