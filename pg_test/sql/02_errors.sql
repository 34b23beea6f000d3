-- Every error has a SQLSTATE and an actionable message.
\pset null '(null)'

SELECT vault.create_group('e/export');
SELECT vault.create_group('e/encrypt', 'encrypt');

-- unknown group, duplicate group
SELECT public.err($$SELECT vault.current('nope')$$);
SELECT public.err($$SELECT vault.resolve('nope', 1)$$);
SELECT public.err($$SELECT vault.encrypt('nope', 'x')$$);
SELECT public.err($$SELECT vault.decrypt('nope', vault.encrypt('e/encrypt', 'x'))$$);
SELECT public.err($$SELECT vault.rotate('nope')$$);
SELECT public.err($$SELECT vault.retire('nope', 1)$$);
SELECT public.err($$SELECT vault.drop_group('nope')$$);
SELECT public.err($$SELECT vault.create_group('e/export')$$);

-- invalid settings
SELECT public.err($$SELECT vault.create_group(NULL)$$);
SELECT public.err($$SELECT vault.create_group('')$$);
SELECT public.err($$SELECT vault.create_group(E'bad\nname')$$);
SELECT public.err($$SELECT vault.create_group(repeat('x', 256))$$);
SELECT public.err($$SELECT vault.create_group('p', 'sign')$$);
SELECT public.err($$SELECT vault.create_group('p', rotation_interval => '0')$$);
SELECT public.err($$SELECT vault.create_group('p', rotation_interval => '-1 day')$$);
SELECT public.err($$SELECT vault.create_group('p', propagation_delay => '-1 second')$$);
SELECT public.err($$SELECT vault.create_group('p', propagation_delay => NULL)$$);
SELECT public.err($$SELECT vault.create_group('p', ring_size => 0)$$);
SELECT public.err($$SELECT vault.create_group('p', key_bytes => 8)$$);
SELECT public.err($$SELECT vault.create_group('p', 'encrypt', key_bytes => 16)$$);
SELECT public.err($$SELECT vault.create_group('p', kms_key => 'no-such-kms')$$);
SELECT count(*) AS nothing_created FROM vault.key_groups WHERE name = 'p';

-- purposes refuse each other's operations
SELECT public.err($$SELECT vault.current('e/encrypt')$$);
SELECT public.err($$SELECT vault.resolve('e/encrypt', 1)$$);
SELECT public.err($$SELECT vault.encrypt('e/export', 'x')$$);
SELECT public.err($$SELECT vault.decrypt('e/export', vault.encrypt('e/encrypt', 'x'))$$);

-- versions that do not exist or are retired
SELECT public.err($$SELECT vault.resolve('e/export', 0)$$);
SELECT public.err($$SELECT vault.resolve('e/export', 2)$$);
SELECT public.err($$SELECT vault.resolve('e/export', -5)$$);
SELECT vault.create_group('e/retire', propagation_delay => '1 hour');
SELECT vault.rotate('e/retire');
SELECT public.err($$SELECT vault.retire('e/retire', 2)$$);
SELECT public.err($$SELECT vault.retire('e/retire', 0)$$);
SELECT vault.create_group('e/retire2', propagation_delay => '0');
SELECT vault.rotate('e/retire2');
SELECT vault.retire('e/retire2', 2);
SELECT public.err($$SELECT vault.resolve('e/retire2', 1)$$);

-- malformed and tampered ciphertexts
SELECT public.err($$SELECT vault.decrypt('e/encrypt', '')$$);
SELECT public.err($$SELECT vault.decrypt('e/encrypt', '\x07')$$);
SELECT public.err($$SELECT vault.decrypt('e/encrypt', '\x01')$$);
SELECT public.err($$SELECT vault.decrypt('e/encrypt', '\x0109')$$);
SELECT public.err($$SELECT vault.decrypt('e/encrypt', '\x010100000001')$$);
SELECT public.err($$SELECT vault.decrypt('e/encrypt', '\x01010000000000000000000000000000000000000000000000000000000000000000')$$);
SELECT public.err($$SELECT vault.decrypt('e/encrypt', '\x01010000000900000000000000000000000000000000000000000000000000000000')$$);
CREATE TABLE e_ct AS SELECT vault.encrypt('e/encrypt', 'payload', 'ctx-a') AS ct;
SELECT public.err($$SELECT vault.decrypt('e/encrypt', ct, 'ctx-b') FROM e_ct$$);
SELECT public.err($$SELECT vault.decrypt('e/encrypt', set_byte(ct, 20, get_byte(ct, 20) # 1), 'ctx-a') FROM e_ct$$);
SELECT public.err($$SELECT vault.decrypt('e/encrypt', substring(ct from 1 for length(ct) - 1), 'ctx-a') FROM e_ct$$);
-- another group's ciphertext fails even when the version exists there
SELECT vault.create_group('e/encrypt2', 'encrypt');
SELECT public.err($$SELECT vault.decrypt('e/encrypt2', ct, 'ctx-a') FROM e_ct$$);
-- an unknown cipher setting
SELECT public.err($$SET secret_vault.cipher = 'rot13'$$);

-- strict functions return NULL for NULL input
SELECT vault.resolve(NULL, 1) IS NULL AS resolve_null, vault.encrypt('e/encrypt', NULL) IS NULL AS encrypt_null;
