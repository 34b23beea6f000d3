-- Invariants: no unwrapped key in any table; errors never carry key bytes;
-- each wrapped row records the KMS key id that wrapped it.
\pset null '(null)'
SELECT vault.create_group('sec/export', propagation_delay => '0');
SELECT vault.rotate('sec/export');
SELECT vault.create_group('sec/encrypt', 'encrypt');

-- neither exported key appears in any stored column of the vault tables
SELECT count(*) AS rows_containing_a_key
  FROM vault.ring_keys r,
       (SELECT vault.resolve('sec/export', v) AS k FROM generate_series(1, 2) v) keys
 WHERE position(keys.k IN r.wrapped_key) > 0
    OR position(keys.k IN convert_to(r::text, 'UTF8')) > 0;
SELECT count(*) AS groups_rows_containing_a_key
  FROM vault.key_groups g,
       (SELECT vault.resolve('sec/export', v) AS k FROM generate_series(1, 2) v) keys
 WHERE position(encode(keys.k, 'hex') IN g::text) > 0;

-- every wrapped row records the local master key's fingerprint, never the key
SELECT DISTINCT kms_key_id ~ '^local:sha256:[0-9a-f]{64}$' AS fingerprint_shape FROM vault.ring_keys;
SELECT provider, is_default FROM vault.kms_keys;

-- an error raised while a key is in hand does not echo it
CREATE FUNCTION pg_temp.errmsg(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE m text; d text; h text;
BEGIN
    EXECUTE q;
    RETURN '';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RETURN coalesce(m, '') || coalesce(d, '') || coalesce(h, '');
END $$;
CREATE TABLE sec_ct AS SELECT vault.encrypt('sec/encrypt', 'top secret plaintext', 'a') AS ct;
SELECT position('top secret' IN pg_temp.errmsg($$SELECT vault.decrypt('sec/encrypt', ct, 'b') FROM sec_ct$$)) = 0 AS no_plaintext_in_error;
SELECT position(encode(vault.resolve('sec/export', 1), 'hex') IN pg_temp.errmsg($$SELECT vault.retire('sec/export', 3)$$)) = 0 AS no_key_in_error;

-- the vault tables are extension configuration, so pg_dump carries them
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) cfg JOIN pg_class c ON c.oid = cfg
 WHERE e.extname = 'secret_vault' ORDER BY 1;
