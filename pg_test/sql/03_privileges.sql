-- PUBLIC reaches nothing; vault_reader reads keys; vault_admin manages groups.
\pset null '(null)'
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.err(text) TO PUBLIC;

-- no vault function or table grants anything to PUBLIC
SELECT count(*) AS public_function_grants
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE n.nspname = 'vault' AND a.grantee = 0;
SELECT count(*) AS public_table_grants
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE n.nspname = 'vault' AND a.grantee = 0;
-- every SECURITY DEFINER function pins search_path; every function states volatility and parallel safety
SELECT p.proname, p.prosecdef, p.proconfig, p.provolatile, p.proisstrict, p.proparallel
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'vault' ORDER BY p.proname;

CREATE ROLE vault_test_nobody LOGIN;
CREATE ROLE vault_test_reader LOGIN IN ROLE vault_reader;
CREATE ROLE vault_test_admin LOGIN IN ROLE vault_admin;
SELECT vault.create_group('priv/export');
SELECT vault.create_group('priv/encrypt', 'encrypt');

-- a role without grants is refused everything
SET ROLE vault_test_nobody;
SELECT pg_temp.err($$SELECT vault.current('priv/export')$$);
SELECT pg_temp.err($$SELECT vault.create_group('priv/x')$$);
SELECT pg_temp.err($$SELECT * FROM vault.ring_keys$$);
SELECT pg_temp.err($$SELECT * FROM vault.groups$$);
RESET ROLE;

-- vault_reader: current, resolve, encrypt, decrypt; no management, no tables
SET ROLE vault_test_reader;
SELECT version, length(key) FROM vault.current('priv/export');
SELECT length(vault.resolve('priv/export', 1));
SELECT convert_from(vault.decrypt('priv/encrypt', vault.encrypt('priv/encrypt', 'reader ok')), 'UTF8');
SELECT name FROM vault.groups WHERE name LIKE 'priv/%' ORDER BY name;
SELECT pg_temp.err($$SELECT vault.rotate('priv/export')$$);
SELECT pg_temp.err($$SELECT vault.create_group('priv/x')$$);
SELECT pg_temp.err($$SELECT vault.retire('priv/export', 1)$$);
SELECT pg_temp.err($$SELECT vault.drop_group('priv/export')$$);
SELECT pg_temp.err($$SELECT * FROM vault.ring_keys$$);
SELECT pg_temp.err($$SELECT * FROM vault.key_groups$$);
SELECT pg_temp.err($$SELECT * FROM vault.kms_keys$$);
SELECT pg_temp.err($$INSERT INTO vault.ring_keys VALUES (gen_random_uuid(), 1, now(), now(), NULL, 'x', 'x')$$);
RESET ROLE;

-- vault_admin: manages groups, and reads like a reader
SET ROLE vault_test_admin;
SELECT vault.create_group('priv/admin-made');
SELECT vault.rotate('priv/admin-made');
SELECT vault.retire('priv/admin-made', 1);
SELECT version FROM vault.current('priv/admin-made');
SELECT vault.drop_group('priv/admin-made');
SELECT pg_temp.err($$SELECT * FROM vault.ring_keys$$);
SELECT pg_temp.err($$DELETE FROM vault.key_groups$$);
RESET ROLE;

-- a malicious search_path cannot hijack the SECURITY DEFINER functions
CREATE SCHEMA evil;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
CREATE FUNCTION evil.length(bytea) RETURNS int LANGUAGE sql AS $$ SELECT -1 $$;
SET search_path = evil, public;
SELECT version FROM vault.current('priv/export');
RESET search_path;
DROP SCHEMA evil CASCADE;

DROP ROLE vault_test_nobody;
DROP ROLE vault_test_reader;
DROP ROLE vault_test_admin;
