-- Key groups: the happy paths of every function in DESIGN.md's block.
CREATE EXTENSION secret_vault;
\pset null '(null)'
-- The suite's error probe (every file runs in this database): SQLSTATE and message.
CREATE FUNCTION public.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION public.err(text) TO PUBLIC;

-- create_group makes version 1, active at once
SELECT vault.create_group('sign/api', propagation_delay => '1 hour');
SELECT version, length(key) FROM vault.current('sign/api');
SELECT vault.resolve('sign/api', 1) = (SELECT key FROM vault.current('sign/api')) AS resolve_matches_current;
-- current is a single record with OUT parameters version and key
SELECT pg_get_function_arguments('vault.current(text)'::regprocedure), pg_get_function_result('vault.current(text)'::regprocedure);
SELECT (vault.current('sign/api')).version;

-- rotate writes n+1 as pending: resolvable at once, current after propagation_delay
SELECT vault.rotate('sign/api');
SELECT version FROM vault.current('sign/api');
SELECT length(vault.resolve('sign/api', 2)), vault.resolve('sign/api', 2) <> vault.resolve('sign/api', 1) AS new_key;
SELECT group_name, version, state FROM vault.group_versions WHERE group_name = 'sign/api' ORDER BY version;
-- versions only grow
SELECT vault.rotate('sign/api'), vault.rotate('sign/api');
SELECT current_version, latest_version, versions FROM vault.groups WHERE name = 'sign/api';

-- with no propagation delay the new version is current immediately
SELECT vault.create_group('sign/now', propagation_delay => '0');
SELECT vault.rotate('sign/now');
SELECT version FROM vault.current('sign/now');

-- key_bytes sizes the exported key
SELECT vault.create_group('sign/hmac512', key_bytes => 64);
SELECT length(key) FROM vault.current('sign/hmac512');

-- encrypt groups: ciphertexts from before a rotation keep decrypting
SELECT vault.create_group('pii', 'encrypt', propagation_delay => '0');
CREATE TABLE people (id int, ssn bytea);
INSERT INTO people SELECT i, vault.encrypt('pii', convert_to('ssn-' || i, 'UTF8'), convert_to('people:' || i, 'UTF8'))
  FROM generate_series(1, 3) i;
SELECT vault.rotate('pii');
INSERT INTO people SELECT 4, vault.encrypt('pii', convert_to('ssn-4', 'UTF8'), convert_to('people:4', 'UTF8'));
-- format byte 1, algorithm 1 (AES-256-GCM-SIV), the key version, then nonce and sealed data
SELECT id, get_byte(ssn, 0) AS format, get_byte(ssn, 1) AS alg, substring(ssn from 3 for 4) AS key_version,
       length(ssn) - 6 - 12 - 16 AS plaintext_len
  FROM people ORDER BY id;
SELECT id, convert_from(vault.decrypt('pii', ssn, convert_to('people:' || id, 'UTF8')), 'UTF8') FROM people ORDER BY id;
-- the same plaintext twice gives different ciphertexts (random nonces)
SELECT vault.encrypt('pii', 'x') <> vault.encrypt('pii', 'x') AS nonces_differ;
-- the default context is empty
SELECT convert_from(vault.decrypt('pii', vault.encrypt('pii', 'no context')), 'UTF8');

-- XChaCha20-Poly1305 when chosen; decrypt reads the algorithm from the ciphertext
SET secret_vault.cipher = 'xchacha20-poly1305';
CREATE TABLE xc AS SELECT vault.encrypt('pii', 'chacha') AS ct;
RESET secret_vault.cipher;
SELECT get_byte(ct, 1) AS alg, length(ct) - 6 - 24 - 16 AS plaintext_len, convert_from(vault.decrypt('pii', ct), 'UTF8') FROM xc;

-- retire: versions below are refused, the current one stays
SELECT vault.create_group('tokens', propagation_delay => '0');
SELECT vault.rotate('tokens'), vault.rotate('tokens');
SELECT vault.retire('tokens', 3);
SELECT version, state FROM vault.group_versions WHERE group_name = 'tokens' ORDER BY version;
SELECT length(vault.resolve('tokens', 3));
SELECT version FROM vault.current('tokens');

-- drop_group erases the group and its wrapped keys
SELECT count(*) AS keys_before FROM vault.ring_keys r JOIN vault.key_groups g ON g.id = r.group_id WHERE g.name = 'tokens';
SELECT vault.drop_group('tokens');
SELECT count(*) AS groups_after FROM vault.key_groups WHERE name = 'tokens';
SELECT count(*) AS orphan_keys FROM vault.ring_keys r WHERE NOT EXISTS (SELECT 1 FROM vault.key_groups g WHERE g.id = r.group_id);

-- a dropped and re-created group never decrypts the old group's data
SELECT vault.create_group('recreated', 'encrypt');
CREATE TABLE old_ct AS SELECT vault.encrypt('recreated', 'old') AS ct;
SELECT vault.drop_group('recreated');
SELECT vault.create_group('recreated', 'encrypt');
SELECT vault.decrypt('recreated', ct) FROM old_ct;
SELECT name, purpose, current_version, latest_version, versions, kms_key, rotation_interval, propagation_delay, ring_size, key_bytes
  FROM vault.groups ORDER BY name;
