-- PUBLIC reaches nothing; vault_reader reads keys; vault_admin manages groups.
\pset null '(null)'

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
SELECT public.err($$SELECT vault.current('priv/export')$$);
SELECT public.err($$SELECT vault.create_group('priv/x')$$);
SELECT public.err($$SELECT * FROM vault.ring_keys$$);
SELECT public.err($$SELECT * FROM vault.groups$$);
RESET ROLE;

-- vault_reader: current, resolve, encrypt, decrypt; no management, no tables
SET ROLE vault_test_reader;
SELECT version, length(key) FROM vault.current('priv/export');
SELECT length(vault.resolve('priv/export', 1));
SELECT convert_from(vault.decrypt('priv/encrypt', vault.encrypt('priv/encrypt', 'reader ok')), 'UTF8');
SELECT name FROM vault.groups WHERE name LIKE 'priv/%' ORDER BY name;
SELECT public.err($$SELECT vault.rotate('priv/export')$$);
SELECT public.err($$SELECT vault.create_group('priv/x')$$);
SELECT public.err($$SELECT vault.retire('priv/export', 1)$$);
SELECT public.err($$SELECT vault.drop_group('priv/export')$$);
SELECT public.err($$SELECT * FROM vault.ring_keys$$);
SELECT public.err($$SELECT * FROM vault.key_groups$$);
SELECT public.err($$SELECT * FROM vault.kms_keys$$);
SELECT public.err($$INSERT INTO vault.ring_keys VALUES (gen_random_uuid(), 1, now(), now(), NULL, 'x', 'x')$$);
RESET ROLE;

-- vault_admin: manages groups, and reads like a reader
SET ROLE vault_test_admin;
SELECT vault.create_group('priv/admin-made');
SELECT vault.rotate('priv/admin-made');
SELECT vault.retire('priv/admin-made', 1);
SELECT version FROM vault.current('priv/admin-made');
SELECT vault.drop_group('priv/admin-made');
SELECT public.err($$SELECT * FROM vault.ring_keys$$);
SELECT public.err($$DELETE FROM vault.key_groups$$);
RESET ROLE;

-- a hostile search_path cannot hijack anything: the hot functions run as the
-- caller (SECURITY INVOKER) and every query they run is fully qualified
SELECT count(*) AS definer_functions_without_pinned_search_path
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'vault' AND p.prosecdef
   AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false);
CREATE SCHEMA evil;
CREATE FUNCTION evil.always(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.always);
CREATE FUNCTION evil.always_uuid(uuid, uuid) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.always_uuid);
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
CREATE FUNCTION evil.nextval(regclass) RETURNS bigint LANGUAGE sql AS $$ SELECT 1::bigint $$;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
-- a cold cache forces the storage path, which parses SQL under this search_path
SELECT vault.create_group('priv/evil-a', propagation_delay => '0');
SELECT vault.create_group('priv/evil-b', propagation_delay => '0');
SELECT vault.rotate('priv/evil-b');
SET search_path = evil, pg_catalog, public;
SET ROLE vault_test_reader;
SELECT version FROM vault.current('priv/evil-b');
SELECT vault.resolve('priv/evil-a', 1) <> vault.resolve('priv/evil-b', 1) AS groups_not_confused;
SELECT convert_from(vault.decrypt('priv/encrypt', vault.encrypt('priv/encrypt', 'still mine')), 'UTF8');
RESET ROLE;
SET ROLE vault_test_admin;
SELECT vault.rotate('priv/evil-a');
RESET ROLE;
RESET search_path;
SELECT name, latest_version FROM vault.groups WHERE name LIKE 'priv/evil-%' ORDER BY name;
DROP SCHEMA evil CASCADE;

-- vault.stats() is for vault_admin
SET ROLE vault_test_reader;
SELECT public.err($$SELECT * FROM vault.stats()$$);
RESET ROLE;
SET ROLE vault_test_admin;
SELECT cache_slots > 0 AS has_cache FROM vault.stats();
RESET ROLE;

DROP ROLE vault_test_nobody;
DROP ROLE vault_test_reader;
DROP ROLE vault_test_admin;
