//! The `aws` provider end to end against moto (AWS KMS, IAM and STS on
//! loopback) with SigV4 checked: each test starts its own moto with
//! `INITIAL_NO_AUTH_ACTION_COUNT=3`, makes an IAM user with exactly those
//! three unauthenticated calls, and from then on moto verifies every
//! signature and enforces IAM policies. boto3 (in the same venv) sets up
//! keys, aliases and roles.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secret_vault_core::aad::RingKeyBinding;
use secret_vault_core::kms::aws::env::Env;
use secret_vault_core::kms::aws::AwsKms;
use secret_vault_core::kms::http::Http;
use secret_vault_core::kms::{Binding, Call, KmsProvider};
use secret_vault_core::{KeyBytes, KmsError};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const GROUP: [u8; 16] = [0x5e; 16];

fn peers_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers/bin");
    assert!(
        bin.join("moto_server").exists() && bin.join("python").exists(),
        "moto is missing from {}: run make deps-peers",
        bin.display()
    );
    bin
}

/// A moto server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    _log_dir: tempfile::TempDir,
}

impl Moto {
    fn start(no_auth_actions: u32) -> Moto {
        let bin = peers_bin();
        let log_dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(log_dir.path().join("moto.log")).unwrap();
        let child = Command::new(bin.join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", no_auth_actions.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        let mut moto = Moto { child, port, _log_dir: log_dir };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto_server exited ({status}): {}", moto.log());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "moto_server did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._log_dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Lets the next `n` requests through without authentication (moto's
    /// test hook; see the web identity test for why).
    fn allow_unauthenticated(&self, n: u32) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = n.to_string();
        write!(
            s,
            "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// Runs one boto3 step of SETUP against this moto; its JSON output.
    fn boto(&self, step: &str, args: Value) -> Value {
        let out = Command::new(peers_bin().join("python"))
            .args(["-c", SETUP, step, &self.url(), &args.to_string()])
            .output()
            .expect("run the venv's python");
        assert!(out.status.success(), "boto3 step {step} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The boto3 side: `python -c SETUP STEP ENDPOINT ARGS_JSON`.
const SETUP: &str = r#"
import boto3, json, sys
step, endpoint, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def client(service, creds):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"])
def policy(actions):
    return json.dumps({"Version": "2012-10-17",
                       "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]})
def user(iam, name, actions):
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=policy(actions))
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return {"access_key": k["AccessKeyId"], "secret_key": k["SecretAccessKey"]}
out = {}
if step == "bootstrap":
    # Exactly three unauthenticated calls: INITIAL_NO_AUTH_ACTION_COUNT=3.
    out = user(client("iam", {"access_key": "bootstrap", "secret_key": "bootstrap"}), "vault", ["kms:*", "sts:*", "iam:*"])
    kms = client("kms", out)
    key = kms.create_key(Description="secret_vault test")["KeyMetadata"]
    kms.create_alias(AliasName="alias/vault", TargetKeyId=key["KeyId"])
    out["key_arn"] = key["Arn"]
elif step == "user":
    out = user(client("iam", args["creds"]), args["name"], args["actions"])
elif step == "new_key":
    kms = client("kms", args["creds"])
    out["key_arn"] = kms.create_key()["KeyMetadata"]["Arn"]
    if args.get("alias"):
        kms.update_alias(AliasName=args["alias"], TargetKeyId=out["key_arn"])
elif step == "disable":
    client("kms", args["creds"]).disable_key(KeyId=args["key"])
elif step == "irsa_role":
    iam = client("iam", args["creds"])
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
             "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.example/id/X"},
             "Action": "sts:AssumeRoleWithWebIdentity"}]}
    role = iam.create_role(RoleName="vault-irsa", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    iam.put_role_policy(RoleName="vault-irsa", PolicyName="kms", PolicyDocument=policy(["kms:*"]))
    out["role_arn"] = role["Arn"]
print(json.dumps(out))
"#;

/// A moto with a user allowed kms:*, and a key with alias `alias/vault`.
struct Fixture {
    moto: Moto,
    creds: Value,
    key_arn: String,
}

impl Fixture {
    fn new() -> Fixture {
        let moto = Moto::start(3);
        let out = moto.boto("bootstrap", json!({}));
        let key_arn = out["key_arn"].as_str().unwrap().to_string();
        Fixture { moto, creds: json!({"access_key": out["access_key"], "secret_key": out["secret_key"]}), key_arn }
    }

    fn access_key(&self) -> String {
        self.creds["access_key"].as_str().unwrap().to_string()
    }

    fn secret_key(&self) -> String {
        self.creds["secret_key"].as_str().unwrap().to_string()
    }

    /// A provider for `key_id` at this moto with the environment `vars`.
    fn kms_with(&self, key_id: &str, vars: Vec<(&str, String)>) -> AwsKms {
        let config = json!({"region": REGION, "key_id": key_id, "endpoint": self.moto.url()});
        AwsKms::from_config_in(&config, Duration::from_secs(2), Env::from_pairs(vars)).unwrap()
    }

    /// The user's static keys from the environment variables.
    fn kms(&self, key_id: &str) -> AwsKms {
        self.kms_with(
            key_id,
            vec![("AWS_ACCESS_KEY_ID", self.access_key()), ("AWS_SECRET_ACCESS_KEY", self.secret_key())],
        )
    }
}

fn binding(version: u32) -> Binding<'static> {
    Binding { scheme: RingKeyBinding::V2, group: &GROUP, version, purpose: "export", key_bytes: 32 }
}

fn call() -> Call<'static> {
    Call::patient()
}

#[test]
fn check_resolves_the_alias_and_data_keys_round_trip() {
    let f = Fixture::new();
    let kms = f.kms("alias/vault");
    assert_eq!(kms.check(&call()).unwrap(), f.key_arn);

    let (key, wrapped) = kms.generate(32, &binding(1), &call()).unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(wrapped.key_id, f.key_arn, "the row records the key ARN, not the alias");
    assert_eq!(kms.unwrap(&wrapped.key_id, &wrapped.wrapped, &binding(1), &call()).unwrap(), key);

    let mine = KeyBytes::random(32);
    let w = kms.wrap(&mine, &binding(2), &call()).unwrap();
    assert_eq!(w.key_id, f.key_arn);
    assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &binding(2), &call()).unwrap(), mine);

    // The key ARN and the alias ARN configure the same key.
    let alias_arn = f.key_arn.split(":key/").next().unwrap().to_string() + ":alias/vault";
    for key_id in [f.key_arn.as_str(), alias_arn.as_str()] {
        let other = f.kms(key_id);
        assert_eq!(other.check(&call()).unwrap(), f.key_arn);
        assert_eq!(other.unwrap(&wrapped.key_id, &wrapped.wrapped, &binding(1), &call()).unwrap(), key);
    }
}

#[test]
fn another_binding_or_altered_bytes_are_wrapped_key_corrupt() {
    let f = Fixture::new();
    let kms = f.kms("alias/vault");
    let (_, w) = kms.generate(32, &binding(7), &call()).unwrap();
    let corrupt =
        |r: Result<KeyBytes, KmsError>| matches!(r, Err(KmsError::WrappedKeyCorrupt { key_id }) if key_id == f.key_arn);

    // moto checks the EncryptionContext like AWS: it is the AEAD's associated data.
    assert!(corrupt(kms.unwrap(&w.key_id, &w.wrapped, &binding(8), &call())));
    let other_group = Binding { group: &[1; 16], ..binding(7) };
    assert!(corrupt(kms.unwrap(&w.key_id, &w.wrapped, &other_group, &call())));
    let mut altered = w.wrapped.clone();
    *altered.last_mut().unwrap() ^= 1;
    assert!(corrupt(kms.unwrap(&w.key_id, &altered, &binding(7), &call())));

    // Not a key ARN: another provider's row.
    assert!(matches!(
        kms.unwrap("local:sha256:abcd", &w.wrapped, &binding(7), &call()),
        Err(KmsError::WrongMasterKey { configured, .. }) if configured == "alias/vault"
    ));

    // Named as wrapped by another key: AWS answers IncorrectKeyException
    // (WrappedKeyCorrupt); moto answers AccessDeniedException instead.
    let other_key = f.moto.boto("new_key", json!({"creds": f.creds}))["key_arn"].as_str().unwrap().to_string();
    match kms.unwrap(&other_key, &w.wrapped, &binding(7), &call()) {
        Err(KmsError::AccessDenied(m)) => assert!(m.contains("AccessDeniedException") && m.contains(&other_key), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_row_wrapped_before_the_alias_moved_still_unwraps() {
    let f = Fixture::new();
    let kms = f.kms("alias/vault");
    let (old_key, old) = kms.generate(32, &binding(1), &call()).unwrap();
    let new_arn = f.moto.boto("new_key", json!({"creds": f.creds, "alias": "alias/vault"}))["key_arn"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_arn, f.key_arn);

    assert_eq!(kms.check(&call()).unwrap(), new_arn, "check follows the alias");
    assert_eq!(kms.unwrap(&old.key_id, &old.wrapped, &binding(1), &call()).unwrap(), old_key);
    let (new_key, new) = kms.generate(32, &binding(2), &call()).unwrap();
    assert_eq!(new.key_id, new_arn);
    assert_eq!(kms.unwrap(&new.key_id, &new.wrapped, &binding(2), &call()).unwrap(), new_key);
}

/// The alias moves to a new key: rows on the old key are found by their
/// ARN and moved with ReEncrypt, the key never leaving KMS.
#[test]
fn after_the_alias_moves_rewrap_moves_rows_to_the_new_key() {
    let f = Fixture::new();
    let kms = f.kms("alias/vault");
    assert_eq!(kms.current_key_id(&call()).unwrap(), f.key_arn);
    let (key, old) = kms.generate(32, &binding(1), &call()).unwrap();
    let new_arn = f.moto.boto("new_key", json!({"creds": f.creds, "alias": "alias/vault"}))["key_arn"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(kms.current_key_id(&call()).unwrap(), new_arn, "follows the alias");

    let moved = kms.rewrap(&old.key_id, &old.wrapped, &binding(1), &call()).unwrap();
    assert_eq!(moved.key_id, new_arn);
    assert_ne!(moved.wrapped, old.wrapped);
    assert_eq!(kms.unwrap(&moved.key_id, &moved.wrapped, &binding(1), &call()).unwrap(), key);
    // The new row is bound like the old one (DestinationEncryptionContext).
    assert!(matches!(
        kms.unwrap(&moved.key_id, &moved.wrapped, &binding(2), &call()),
        Err(KmsError::WrappedKeyCorrupt { .. })
    ));
    // The answer lost, the caller tries again: the old row is still valid
    // and gives another wrapping of the same key; so does the new row.
    for (id, w) in [(&old.key_id, &old.wrapped), (&moved.key_id, &moved.wrapped)] {
        let again = kms.rewrap(id, w, &binding(1), &call()).unwrap();
        assert_eq!(again.key_id, new_arn);
        assert_eq!(kms.unwrap(&again.key_id, &again.wrapped, &binding(1), &call()).unwrap(), key);
    }
    assert_eq!(kms.unwrap(&old.key_id, &old.wrapped, &binding(1), &call()).unwrap(), key);

    // moto checks SourceEncryptionContext like Decrypt's context. (It
    // ignores SourceKeyId; AWS answers IncorrectKeyException to a wrong one.)
    match kms.rewrap(&old.key_id, &old.wrapped, &binding(2), &call()) {
        Err(KmsError::WrappedKeyCorrupt { key_id }) => assert_eq!(key_id, f.key_arn),
        other => panic!("{other:?}"),
    }

    // IAM: ReEncrypt is kms:ReEncryptFrom + kms:ReEncryptTo on AWS; moto
    // checks a single "kms:ReEncrypt", which kms:ReEncrypt* covers in both.
    let user = |name: &str, actions: Value| {
        let u = f.moto.boto("user", json!({"creds": f.creds, "name": name, "actions": actions}));
        f.kms_with(
            "alias/vault",
            vec![
                ("AWS_ACCESS_KEY_ID", u["access_key"].as_str().unwrap().into()),
                ("AWS_SECRET_ACCESS_KEY", u["secret_key"].as_str().unwrap().into()),
            ],
        )
    };
    let usual = json!(["kms:DescribeKey", "kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"]);
    match user("no-reencrypt", usual.clone()).rewrap(&old.key_id, &old.wrapped, &binding(1), &call()) {
        Err(KmsError::AccessDenied(m)) => assert!(m.contains("kms:ReEncryptFrom on") && m.contains(&f.key_arn), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut with = usual.as_array().unwrap().clone();
    with.push(json!("kms:ReEncrypt*"));
    let allowed = user("reencrypt", Value::Array(with)).rewrap(&old.key_id, &old.wrapped, &binding(1), &call());
    assert_eq!(allowed.unwrap().key_id, new_arn);
}

#[test]
fn bad_credentials_and_missing_permissions_are_access_denied() {
    let f = Fixture::new();
    let denied = |kms: &AwsKms, code: &str| match kms.check(&call()) {
        Err(KmsError::AccessDenied(m)) => {
            assert!(m.contains(code) && m.contains("alias/vault") && m.contains("DescribeKey"), "{m}");
            m
        }
        other => panic!("{code}: {other:?}"),
    };

    let wrong_secret = "wrong".to_string() + &f.secret_key()[5..];
    let kms = f.kms_with(
        "alias/vault",
        vec![("AWS_ACCESS_KEY_ID", f.access_key()), ("AWS_SECRET_ACCESS_KEY", wrong_secret.clone())],
    );
    let m = denied(&kms, "SignatureDoesNotMatch");
    assert!(!m.contains(&wrong_secret) && !m.contains(&f.secret_key()), "{m}");

    let kms = f.kms_with(
        "alias/vault",
        vec![("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN0000000000".into()), ("AWS_SECRET_ACCESS_KEY", f.secret_key())],
    );
    denied(&kms, "InvalidClientTokenId");

    let kms = f.kms_with(
        "alias/vault",
        vec![
            ("AWS_ACCESS_KEY_ID", f.access_key()),
            ("AWS_SECRET_ACCESS_KEY", f.secret_key()),
            ("AWS_SESSION_TOKEN", "bogus".into()),
        ],
    );
    denied(&kms, "InvalidClientTokenId");

    // A user that may only describe keys: moto enforces its IAM policy.
    let reader = f.moto.boto("user", json!({"creds": f.creds, "name": "reader", "actions": ["kms:DescribeKey"]}));
    let kms = f.kms_with(
        "alias/vault",
        vec![
            ("AWS_ACCESS_KEY_ID", reader["access_key"].as_str().unwrap().into()),
            ("AWS_SECRET_ACCESS_KEY", reader["secret_key"].as_str().unwrap().into()),
        ],
    );
    assert_eq!(kms.check(&call()).unwrap(), f.key_arn);
    match kms.generate(32, &binding(1), &call()) {
        Err(KmsError::AccessDenied(m)) => {
            assert!(m.contains("not authorized") && m.contains("kms:GenerateDataKey on alias/vault"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_disabled_or_missing_key_is_unusable_at_check() {
    let f = Fixture::new();
    match f.kms("alias/nope").check(&call()) {
        Err(KmsError::KeyUnusable(m)) => {
            assert!(m.contains("NotFoundException") && m.contains("check key_id and region"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // By key id: moto 5.2.5 answers DisableKey by ARN with a 500.
    let key_id = f.key_arn.rsplit('/').next().unwrap();
    f.moto.boto("disable", json!({"creds": f.creds, "key": key_id}));
    match f.kms("alias/vault").check(&call()) {
        Err(KmsError::KeyUnusable(m)) => assert!(m.contains("Disabled") && m.contains(&f.key_arn), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn credentials_and_endpoint_from_a_profile_and_the_sdk_variables() {
    let f = Fixture::new();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = AKIAWRONG\naws_secret_access_key = wrong\n\n[prod]\naws_access_key_id = {}\naws_secret_access_key = {}\n", f.access_key(), f.secret_key()),
    )
    .unwrap();
    // No endpoint in the config: AWS_ENDPOINT_URL_KMS, as the SDKs read it.
    let config = json!({"region": REGION, "key_id": "alias/vault"});
    let env = Env::from_pairs([
        ("HOME", home.path().to_str().unwrap().to_string()),
        ("AWS_PROFILE", "prod".to_string()),
        ("AWS_ENDPOINT_URL_KMS", f.moto.url()),
    ]);
    let kms = AwsKms::from_config_in(&config, Duration::from_secs(2), env).unwrap();
    assert_eq!(kms.endpoint(), format!("{}/", f.moto.url()));
    let (key, w) = kms.generate(16, &binding(1), &call()).unwrap();
    assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &binding(1), &call()).unwrap(), key);
}

/// IRSA: only a token file, a role ARN and the STS endpoint; no static keys.
///
/// moto 5.2.5 cannot take AssumeRoleWithWebIdentity unsigned while it
/// checks signatures (it reads the missing Authorization header and answers
/// 500), although AWS takes it unsigned, as it must. So the one STS call is
/// let through unauthenticated with moto's test hook; the KMS calls after
/// it are signed with the temporary credentials STS issued, and moto
/// verifies those (signature, session token, the role's policy).
#[test]
fn web_identity_credentials_from_sts_sign_the_kms_calls() {
    let f = Fixture::new();
    let role_arn = f.moto.boto("irsa_role", json!({"creds": f.creds}))["role_arn"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGI6cGcifQ.c2ln\n").unwrap();
    let kms = f.kms_with(
        "alias/vault",
        vec![
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap().to_string()),
            ("AWS_ROLE_ARN", role_arn.clone()),
            ("AWS_ENDPOINT_URL_STS", f.moto.url()),
        ],
    );
    f.moto.allow_unauthenticated(1);
    assert_eq!(kms.check(&call()).unwrap(), f.key_arn);

    // The cached credentials are STS's temporary ones.
    let creds = kms.credentials().get(&Http::new(None, Duration::from_secs(1)).unwrap(), &call()).unwrap();
    assert!(creds.access_key_id().starts_with("ASIA"), "{creds:?}");
    assert!(creds.session_token().is_some() && creds.expiry().is_some(), "{creds:?}");
    assert!(creds.source().contains(&role_arn), "{creds:?}");

    let (key, w) = kms.generate(32, &binding(3), &call()).unwrap();
    assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &binding(3), &call()).unwrap(), key);
    assert!(matches!(kms.unwrap(&w.key_id, &w.wrapped, &binding(4), &call()), Err(KmsError::WrappedKeyCorrupt { .. })));
}
