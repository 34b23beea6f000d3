-- Minted credentials: registration, checks, failing closed. No upstream is
-- reachable here (the token endpoints are closed loopback ports); the
-- integration tests mint against real stand-ins.
\pset null '(null)'

SELECT vault.create_secret('cred/app-key', '-----BEGIN RSA PRIVATE KEY-----not a key-----END RSA PRIVATE KEY-----') IS NOT NULL AS stored;
SELECT vault.create_credential('gh/ci', 'github_app',
         '{"app_id": 123, "installation_id": "456", "private_key_secret": "cred/app-key", "api_url": "http://127.0.0.1:9"}') IS NOT NULL AS created;
SELECT name, provider, config->>'private_key_secret' AS key_secret, refresh_before, minted_at, expires_at
  FROM vault.credentials;
-- never minted: refused, never waits for an upstream
SELECT public.err($$SELECT vault.credential('gh/ci')$$);
-- the name is unique; unknown names are not echoed
SELECT public.err($$SELECT vault.create_credential('gh/ci', 'github_app', '{"app_id": 1, "installation_id": 1, "private_key_secret": "cred/app-key"}')$$);
SELECT public.err($$SELECT vault.credential('sentinel-not-a-name')$$);
SELECT public.err($$SELECT vault.drop_credential('sentinel-not-a-name')$$);
-- configs are checked before anything is stored; values are not echoed
SELECT public.err($$SELECT vault.create_credential('x', 'gitlab', '{}')$$);
SELECT public.err($$SELECT vault.create_credential('x', 'github_app', '{"app_id": 1, "installation_id": 1, "private_key_secret": "cred/app-key", "private_key": "sentinel-pem"}')$$);
SELECT public.err($$SELECT vault.create_credential('x', 'github_app', '{"app_id": 1, "installation_id": 1, "private_key_secret": "cred/app-key", "api_url": "http://203.0.113.9"}')$$);
SELECT public.err($$SELECT vault.create_credential('x', 'github_app', '{"app_id": 1, "installation_id": 1, "private_key_secret": "no/such-secret"}')$$);
SELECT public.err($$SELECT vault.create_credential('x', 'aws_eks', '{"cluster": "prod", "region": "eu-west-1", "access_key_id_secret": "cred/app-key"}')$$);
SELECT public.err($$SELECT vault.create_credential('x', 'aws_eks', '{"cluster": "prod", "region": "eu-west-1"}', refresh_before => '-1 minute')$$);
SELECT public.err($$SELECT vault.create_credential(NULL, 'aws_eks', '{}')$$);
SELECT public.err($$SELECT vault.create_credential(E'bad\nname', 'aws_eks', '{"cluster": "prod", "region": "eu-west-1"}')$$);
-- the sealing group cannot be dropped under a credential
SELECT public.err($$SELECT vault.drop_group('vault/secrets')$$);
-- a secret's ciphertext is no credential token, and vault.decrypt opens neither
SELECT public.err($$SELECT vault.decrypt('vault/secrets', current_ciphertext) FROM vault.secret_store WHERE name = 'cred/app-key'$$);

-- privileges: readers get tokens, admins manage, PUBLIC nothing
CREATE ROLE vault_test_cred_reader LOGIN IN ROLE vault_reader;
CREATE ROLE vault_test_cred_admin LOGIN IN ROLE vault_admin;
SET ROLE vault_test_cred_reader;
SELECT public.err($$SELECT vault.credential('gh/ci')$$);
SELECT public.err($$SELECT vault.create_credential('y', 'aws_eks', '{"cluster": "prod", "region": "eu-west-1"}')$$);
SELECT count(*) FROM vault.credentials;
SET ROLE vault_test_cred_admin;
-- the server's own AWS identity is for superusers
SELECT public.err($$SELECT vault.create_credential('y', 'aws_eks', '{"cluster": "prod", "region": "eu-west-1"}')$$);
RESET ROLE;
-- a reader whose rules do not cover the name neither reads nor sees it
SELECT vault.revoke_access('vault_reader', ARRAY['read', 'verify', 'encrypt', 'decrypt'], '**');
SELECT vault.grant_access('vault_reader', ARRAY['read'], 'other/**');
SET ROLE vault_test_cred_reader;
SELECT public.err($$SELECT vault.credential('gh/ci')$$);
SELECT count(*) FROM vault.credentials;
RESET ROLE;
SELECT vault.revoke_access('vault_reader', ARRAY['read'], 'other/**');
SELECT vault.grant_access('vault_reader', ARRAY['read', 'verify', 'encrypt', 'decrypt'], '**');

SELECT vault.drop_credential('gh/ci');
SELECT count(*) FROM vault.credentials;
SELECT vault.delete_secret('cred/app-key');
DROP ROLE vault_test_cred_reader, vault_test_cred_admin;
