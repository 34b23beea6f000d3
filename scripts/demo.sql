-- A short tour of key groups, run by `make run`. Safe to run again.
\o /dev/null
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
