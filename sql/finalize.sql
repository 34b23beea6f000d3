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
    vault.stats()
  TO vault_admin;

GRANT SELECT ON vault.groups, vault.group_versions TO vault_reader, vault_admin;
GRANT SELECT ON vault.kms_keys TO vault_admin;

-- Current values. Granted to no one: to let a role list every value,
-- GRANT SELECT on it and EXECUTE on vault._open_secret (which refuses any
-- caller without SELECT on this view).
CREATE VIEW vault.decrypted_secrets AS
SELECT s.id,
       s.name,
       s.description,
       s.kind,
       s.current_version AS version,
       vault._open_secret(g.name, s.id, s.current_version, s.current_ciphertext) AS value,
       s.created_at,
       s.updated_at
  FROM vault.secret_store s
  JOIN vault.key_groups g ON g.id = s.key_group_id;
ALTER VIEW vault.decrypted_secrets OWNER TO vault_owner;
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

-- Per-database workers, for operators.
CREATE VIEW vault.workers AS SELECT * FROM vault.worker_status();
ALTER VIEW vault.workers OWNER TO vault_owner;
REVOKE ALL ON vault.workers FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vault.worker_status() TO vault_admin;
GRANT SELECT ON vault.workers TO vault_admin;

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
