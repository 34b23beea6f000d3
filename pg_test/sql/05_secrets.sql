-- Secrets: manual and rotating, versions, grace windows, verify, generators,
-- errors and privileges.
\pset null '(null)'

-- manual secrets
SELECT vault.create_secret('stripe/api-key', 'sk_live_first', 'Stripe key') IS NOT NULL AS created;
SELECT vault.read_secret('stripe/api-key');
SELECT name, kind, key_group, current_version, description FROM vault.secrets;
SELECT vault.update_secret('stripe/api-key', 'sk_live_second');
SELECT vault.read_secret('stripe/api-key');
-- only the current value of a manual secret verifies
SELECT vault.verify_secret('stripe/api-key', 'sk_live_second') AS current_ok,
       vault.verify_secret('stripe/api-key', 'sk_live_first') AS previous_ok,
       vault.verify_secret('stripe/api-key', 'sk_live_secon') AS prefix_ok;
SELECT version, valid_until IS NOT NULL AS closed, state FROM vault.secret_versions('stripe/api-key');
-- the default key group was made on first use
SELECT name, purpose FROM vault.groups WHERE name = 'vault/secrets';

-- rotating secrets: the previous value verifies during its grace period
SELECT vault.create_rotating_secret('db/app-password', '30 days', grace_period => '1 hour', generator => 'hex:16') IS NOT NULL;
CREATE TABLE old_pw AS SELECT vault.read_secret('db/app-password') AS v;
SELECT length(v), v ~ '^[0-9a-f]{32}$' AS hex FROM old_pw;
SELECT vault.rotate_secret('db/app-password');
SELECT vault.read_secret('db/app-password') <> v AS changed FROM old_pw;
SELECT vault.verify_secret('db/app-password', v) AS old_in_grace,
       vault.verify_secret('db/app-password', vault.read_secret('db/app-password')) AS new_ok
  FROM old_pw;
SELECT version, state FROM vault.secret_versions('db/app-password');
SELECT name, kind, current_version, rotation_interval, grace_period, generator, next_rotation_at > now() AS scheduled
  FROM vault.secrets WHERE name = 'db/app-password';

-- grace expiry: after the window the old value never verifies again
SELECT vault.create_rotating_secret('short/grace', '1 day', grace_period => '0.5 seconds') IS NOT NULL;
CREATE TABLE old_short AS SELECT vault.read_secret('short/grace') AS v;
SELECT vault.rotate_secret('short/grace');
SELECT vault.verify_secret('short/grace', v) AS within_grace FROM old_short;
SELECT pg_sleep(0.8);
SELECT vault.verify_secret('short/grace', v) AS after_grace FROM old_short;
SELECT version, state FROM vault.secret_versions('short/grace');

-- generators
SELECT vault.create_rotating_secret('gen/b64', '1 day') IS NOT NULL;
SELECT vault.create_rotating_secret('gen/alnum', '1 day', generator => 'alnum:20') IS NOT NULL;
SELECT vault.create_rotating_secret('gen/uuid', '1 day', generator => 'uuid') IS NOT NULL;
SELECT vault.read_secret('gen/b64') ~ '^[A-Za-z0-9_-]{43}$' AS base64url_32,
       vault.read_secret('gen/alnum') ~ '^[A-Za-z0-9]{20}$' AS alnum_20,
       vault.read_secret('gen/uuid') ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS uuid_v4;

-- a secret in a named group
SELECT vault.create_group('team/secrets', 'encrypt');
SELECT vault.create_secret('team/token', 't0k3n', key_group => 'team/secrets') IS NOT NULL;
SELECT key_group FROM vault.secrets WHERE name = 'team/token';
SELECT vault.read_secret('team/token');

-- errors
SELECT public.err($$SELECT vault.create_secret('stripe/api-key', 'x')$$);
SELECT public.err($$SELECT vault.create_secret('', 'x')$$);
SELECT public.err($$SELECT vault.create_secret(E'a\tb', 'x')$$);
SELECT public.err($$SELECT vault.create_secret(NULL, 'x')$$);
SELECT public.err($$SELECT vault.create_secret('n', NULL)$$);
SELECT public.err($$SELECT vault.create_secret('n', 'x', key_group => 'nope')$$);
SELECT public.err($$SELECT vault.create_secret('n', 'x', key_group => 'sign/api')$$);
SELECT public.err($$SELECT vault.create_rotating_secret('n', '1 day', generator => 'hex:4')$$);
SELECT public.err($$SELECT vault.create_rotating_secret('n', '1 day', generator => 'random:32')$$);
SELECT public.err($$SELECT vault.create_rotating_secret('n', '0')$$);
SELECT public.err($$SELECT vault.create_rotating_secret('n', '1 day', grace_period => '-1 hour')$$);
SELECT public.err($$SELECT vault.create_rotating_secret('n', NULL)$$);
SELECT count(*) AS nothing_created FROM vault.secrets WHERE name = 'n';
SELECT public.err($$SELECT vault.read_secret('nope')$$);
SELECT public.err($$SELECT vault.verify_secret('nope', 'x')$$);
SELECT public.err($$SELECT vault.update_secret('nope', 'x')$$);
SELECT public.err($$SELECT vault.rotate_secret('nope')$$);
SELECT public.err($$SELECT vault.delete_secret('nope')$$);
SELECT public.err($$SELECT * FROM vault.secret_versions('nope')$$);
SELECT public.err($$SELECT vault.rotate_secret('stripe/api-key')$$);
SELECT public.err($$SELECT vault.drop_group('team/secrets')$$);

-- a value's ciphertext moved to another secret fails to decrypt
SELECT vault.create_secret('victim', 'victim value') IS NOT NULL;
UPDATE vault.secret_store SET current_ciphertext =
    (SELECT current_ciphertext FROM vault.secret_store WHERE name = 'team/token')
 WHERE name = 'victim';
\c
SELECT public.err($$SELECT vault.read_secret('victim')$$);

-- views: vault.secrets never has values; decrypted_secrets does
SELECT count(*) AS value_columns FROM information_schema.columns
 WHERE table_schema = 'vault' AND table_name = 'secrets' AND column_name IN ('value', 'secret', 'ciphertext');
SELECT name, version, value FROM vault.decrypted_secrets WHERE name IN ('stripe/api-key', 'team/token') ORDER BY name;

-- privileges
CREATE ROLE vs_reader IN ROLE vault_reader;
CREATE ROLE vs_admin IN ROLE vault_admin;
CREATE ROLE vs_nobody;
SET ROLE vs_reader;
SELECT vault.read_secret('stripe/api-key');
SELECT vault.verify_secret('stripe/api-key', 'sk_live_second');
SELECT count(*) FROM vault.secret_versions('stripe/api-key');
SELECT count(*) > 0 AS sees_metadata FROM vault.secrets;
SELECT public.err($$SELECT vault.create_secret('r', 'x')$$);
SELECT public.err($$SELECT vault.update_secret('stripe/api-key', 'x')$$);
SELECT public.err($$SELECT vault.delete_secret('stripe/api-key')$$);
SELECT public.err($$SELECT * FROM vault.decrypted_secrets$$);
SELECT public.err($$SELECT * FROM vault.secret_values$$);
RESET ROLE;
SET ROLE vs_admin;
SELECT vault.create_secret('admin/made', 'a') IS NOT NULL;
SELECT vault.update_secret('admin/made', 'b');
SELECT vault.read_secret('admin/made');
SELECT vault.delete_secret('admin/made');
SELECT public.err($$SELECT * FROM vault.decrypted_secrets$$);
RESET ROLE;
SET ROLE vs_nobody;
SELECT public.err($$SELECT vault.read_secret('stripe/api-key')$$);
RESET ROLE;
GRANT SELECT ON vault.decrypted_secrets TO vs_reader;
SET ROLE vs_reader;
SELECT count(*) > 0 AS granted_reader_sees_values FROM vault.decrypted_secrets;
RESET ROLE;
REVOKE SELECT ON vault.decrypted_secrets FROM vs_reader;
DROP ROLE vs_reader;
DROP ROLE vs_admin;
DROP ROLE vs_nobody;

-- delete_secret erases every ciphertext
CREATE TABLE gone AS SELECT id FROM vault.secrets WHERE name = 'db/app-password';
SELECT count(*) AS values_before FROM vault.secret_values WHERE secret_id = (SELECT id FROM gone);
SELECT vault.delete_secret('db/app-password');
SELECT count(*) AS values_after FROM vault.secret_values WHERE secret_id = (SELECT id FROM gone);

-- no plaintext value in any vault table
SELECT vault.create_secret('sentinel', 'SENTINEL-7f3a9c') IS NOT NULL;
SELECT count(*) AS rows_with_plaintext FROM (
    SELECT s::text AS t FROM vault.secret_store s
    UNION ALL SELECT encode(s.current_ciphertext, 'escape') FROM vault.secret_store s
    UNION ALL SELECT encode(v.ciphertext, 'escape') FROM vault.secret_values v
    UNION ALL SELECT v::text FROM vault.secret_values v) x
 WHERE t LIKE '%SENTINEL-7f3a9c%' OR t LIKE '%' || encode('SENTINEL-7f3a9c', 'hex') || '%';
