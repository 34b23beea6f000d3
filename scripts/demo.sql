-- A short tour of key groups, run by `make run`. Safe to run again.
\o /dev/null
SELECT vault.delete_secret(name) FROM vault.secrets WHERE name LIKE 'demo/%';
SELECT vault.drop_group(name) FROM vault.groups WHERE name IN ('demo/signing', 'demo/columns');
\o
\echo '== an export group: signing keys handed to applications'
SELECT vault.create_group('demo/signing', propagation_delay => '0 seconds');
SELECT version, length(key) AS key_bytes FROM vault.current('demo/signing');
\echo '== rotate: version 2 is resolvable at once and current after propagation_delay'
SELECT vault.rotate('demo/signing') AS new_version;
SELECT version FROM vault.current('demo/signing');
SELECT vault.resolve('demo/signing', 1) <> vault.resolve('demo/signing', 2) AS distinct_keys;
\echo '== an encrypt group: column encryption, key bytes never leave the server'
SELECT vault.create_group('demo/columns', 'encrypt');
CREATE TEMP TABLE demo_cards AS
    SELECT vault.encrypt('demo/columns', convert_to('4111-1111-1111-1111', 'UTF8'), 'card:42') AS card;
SELECT vault.rotate('demo/columns') AS rotated_to;
SELECT convert_from(vault.decrypt('demo/columns', card, 'card:42'), 'UTF8') AS decrypted_after_rotation
  FROM demo_cards;
SELECT name, purpose, current_version, latest_version, versions, kms_key FROM vault.groups ORDER BY name;
\echo '== secrets: set by hand, or generated and rotated with a grace window'
SELECT vault.create_secret('demo/stripe-key', 'sk_test_4eC39HqLyjWDarjtT1zdp7dc') IS NOT NULL AS created;
SELECT vault.read_secret('demo/stripe-key');
SELECT vault.create_rotating_secret('demo/webhook', '30 days', grace_period => '1 hour', generator => 'alnum:24') IS NOT NULL AS created;
CREATE TEMP TABLE demo_old AS SELECT vault.read_secret('demo/webhook') AS v;
SELECT vault.rotate_secret('demo/webhook') AS rotated_to;
SELECT vault.verify_secret('demo/webhook', v) AS old_value_in_grace FROM demo_old;
SELECT version, state FROM vault.secret_versions('demo/webhook');
SELECT name, kind, key_group, current_version FROM vault.secrets ORDER BY name;
\echo '== one background worker per database with the extension'
\o /dev/null
-- CREATE EXTENSION wakes the launcher; give it a moment on a fresh cluster.
DO $$ BEGIN
    FOR i IN 1..50 LOOP
        EXIT WHEN (SELECT worker_pid IS NOT NULL FROM vault.stats());
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
END $$;
\o
SELECT database, state, pid IS NOT NULL AS has_pid FROM vault.workers ORDER BY database;
\echo '== counters since server start (the hot path does not reach the KMS)'
SELECT cache_hits, cache_misses, kms_calls, rotations, cached_groups, worker_pid IS NOT NULL AS worker_running FROM vault.stats();
