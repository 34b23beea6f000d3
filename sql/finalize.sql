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
