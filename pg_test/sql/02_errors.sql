-- Every error has a SQLSTATE and an actionable message.
\pset null '(null)'
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT vault.create_group('e/export');
SELECT vault.create_group('e/encrypt', 'encrypt');

-- unknown group, duplicate group
SELECT pg_temp.err($$SELECT vault.current('nope')$$);
SELECT pg_temp.err($$SELECT vault.resolve('nope', 1)$$);
SELECT pg_temp.err($$SELECT vault.encrypt('nope', 'x')$$);
SELECT pg_temp.err($$SELECT vault.decrypt('nope', vault.encrypt('e/encrypt', 'x'))$$);
SELECT pg_temp.err($$SELECT vault.rotate('nope')$$);
SELECT pg_temp.err($$SELECT vault.retire('nope', 1)$$);
SELECT pg_temp.err($$SELECT vault.drop_group('nope')$$);
SELECT pg_temp.err($$SELECT vault.create_group('e/export')$$);

-- invalid settings
SELECT pg_temp.err($$SELECT vault.create_group(NULL)$$);
SELECT pg_temp.err($$SELECT vault.create_group('')$$);
SELECT pg_temp.err($$SELECT vault.create_group(E'bad\nname')$$);
SELECT pg_temp.err($$SELECT vault.create_group(repeat('x', 256))$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', 'sign')$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', rotation_interval => '0')$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', rotation_interval => '-1 day')$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', propagation_delay => '-1 second')$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', propagation_delay => NULL)$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', ring_size => 0)$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', key_bytes => 8)$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', 'encrypt', key_bytes => 16)$$);
SELECT pg_temp.err($$SELECT vault.create_group('p', kms_key => 'no-such-kms')$$);
SELECT count(*) AS nothing_created FROM vault.key_groups WHERE name = 'p';

-- purposes refuse each other's operations
SELECT pg_temp.err($$SELECT vault.current('e/encrypt')$$);
SELECT pg_temp.err($$SELECT vault.resolve('e/encrypt', 1)$$);
SELECT pg_temp.err($$SELECT vault.encrypt('e/export', 'x')$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/export', vault.encrypt('e/encrypt', 'x'))$$);

-- versions that do not exist or are retired
SELECT pg_temp.err($$SELECT vault.resolve('e/export', 0)$$);
SELECT pg_temp.err($$SELECT vault.resolve('e/export', 2)$$);
SELECT pg_temp.err($$SELECT vault.resolve('e/export', -5)$$);
SELECT vault.create_group('e/retire', propagation_delay => '1 hour');
SELECT vault.rotate('e/retire');
SELECT pg_temp.err($$SELECT vault.retire('e/retire', 2)$$);
SELECT pg_temp.err($$SELECT vault.retire('e/retire', 0)$$);
SELECT vault.create_group('e/retire2', propagation_delay => '0');
SELECT vault.rotate('e/retire2');
SELECT vault.retire('e/retire2', 2);
SELECT pg_temp.err($$SELECT vault.resolve('e/retire2', 1)$$);

-- malformed and tampered ciphertexts
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', '')$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', '\x02')$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', '\x01')$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', '\x0109')$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', '\x010100000001')$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', '\x01010000000000000000000000000000000000000000000000000000000000000000')$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', '\x01010000000900000000000000000000000000000000000000000000000000000000')$$);
CREATE TABLE e_ct AS SELECT vault.encrypt('e/encrypt', 'payload', 'ctx-a') AS ct;
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', ct, 'ctx-b') FROM e_ct$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', set_byte(ct, 20, get_byte(ct, 20) # 1), 'ctx-a') FROM e_ct$$);
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt', substring(ct from 1 for length(ct) - 1), 'ctx-a') FROM e_ct$$);
-- another group's ciphertext fails even when the version exists there
SELECT vault.create_group('e/encrypt2', 'encrypt');
SELECT pg_temp.err($$SELECT vault.decrypt('e/encrypt2', ct, 'ctx-a') FROM e_ct$$);
-- an unknown cipher setting
SELECT pg_temp.err($$SET secret_vault.cipher = 'rot13'$$);

-- strict functions return NULL for NULL input
SELECT vault.resolve(NULL, 1) IS NULL AS resolve_null, vault.encrypt('e/encrypt', NULL) IS NULL AS encrypt_null;
