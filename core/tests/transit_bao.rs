//! The transit provider against a real OpenBao dev server on loopback: the
//! `bao` binary from the venv `make deps-peers` installs (`target/peers`, or
//! `SECRET_VAULT_PEERS`). Each test starts its own server (in memory, root
//! token `root`, about 0.5 s) and kills it on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secret_vault_core::aad::RingKeyBinding;
use secret_vault_core::kms::http::{Http, Request};
use secret_vault_core::kms::transit::TransitKms;
use secret_vault_core::kms::{Binding, Call, KmsProvider};
use secret_vault_core::{KeyBytes, KmsError};
use serde_json::{json, Value};
use zeroize::Zeroizing;

fn bao_binary() -> PathBuf {
    std::env::var_os("SECRET_VAULT_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers"))
        .join("bin/bao")
}

struct Bao {
    port: u16,
    child: Child,
    /// For the tests' own admin calls, made as root.
    http: Http,
    dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    /// A dev server with transit enabled at `transit/`. It also binds a
    /// cluster listener on port + 1, so both are picked free; they are
    /// released before the server binds them and another test's server may
    /// take one first: a server that exits or does not answer is started
    /// again on other ports (three tries), and its own output is shown if
    /// none comes up.
    fn start() -> Bao {
        let bin = bao_binary();
        let mut last_output = String::new();
        for _ in 0..3 {
            let port = loop {
                let p = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                    break p;
                }
            };
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("bao.log");
            let child = Command::new(&bin)
                .args(["server", "-dev", &format!("-dev-listen-address=127.0.0.1:{port}"), "-dev-root-token-id=root"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("{} (run `make deps-peers`): {e}", bin.display()));
            let http = Http::new(None, Duration::from_secs(1)).unwrap();
            let mut bao = Bao { port, child, http, dir };
            let start = Instant::now();
            loop {
                if bao.try_api("root", "GET", "sys/health", None).map(|r| r.0) == Some(200) {
                    bao.ok("POST", "sys/mounts/transit", json!({"type": "transit"}));
                    return bao;
                }
                let exited = matches!(bao.child.try_wait(), Ok(Some(_)));
                if exited || start.elapsed() > Duration::from_secs(20) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_output = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("OpenBao did not start in three tries; its last output:\n{last_output}");
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn try_api(&self, token: &str, method: &'static str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let req = Request {
            method,
            url: format!("{}/v1/{path}", self.address()),
            headers: vec![("X-Vault-Token".into(), token.into())],
            body: Zeroizing::new(body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default()),
        };
        let r = self.http.send(req, Duration::from_secs(5), &|| false).ok()?;
        Some((r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null)))
    }

    /// An admin call as root that must succeed.
    fn ok(&self, method: &'static str, path: &str, body: Value) -> Value {
        let (status, answer) = self.try_api("root", method, path, Some(&body)).expect("OpenBao answers");
        assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
        answer
    }

    fn derived_key(&self, name: &str) {
        self.ok("POST", &format!("transit/keys/{name}"), json!({"derived": true}));
    }

    /// A token that may use key `key` of mount `transit` and nothing else,
    /// under the policy the provider's documentation recommends:
    ///
    /// ```hcl
    /// path "transit/datakey/plaintext/<k>" { capabilities = ["update"] }
    /// path "transit/encrypt/<k>"           { capabilities = ["update"] }
    /// path "transit/decrypt/<k>"           { capabilities = ["update"] }
    /// path "transit/rewrap/<k>"            { capabilities = ["update"] }
    /// path "transit/keys/<k>"              { capabilities = ["read"] }
    /// ```
    fn policy_token(&self, key: &str) -> String {
        let policy = format!(
            "path \"transit/datakey/plaintext/{key}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/rewrap/{key}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/keys/{key}\" {{ capabilities = [\"read\"] }}\n"
        );
        self.ok("PUT", &format!("sys/policies/acl/sv-{key}"), json!({ "policy": policy }));
        self.token(&[&format!("sv-{key}")])
    }

    fn token(&self, policies: &[&str]) -> String {
        let request = json!({"policies": policies, "no_default_policy": true, "ttl": "1h"});
        let answer = self.ok("POST", "auth/token/create", request);
        answer["auth"]["client_token"].as_str().unwrap().to_string()
    }

    /// Replaces the token file as an agent does: a new file renamed over it.
    fn write_token(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join("token");
        let tmp = self.dir.path().join("token.new");
        std::fs::write(&tmp, format!("{token}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// The provider for `key`, with the token file (root's token unless
    /// the test wrote another) and `extra` config.
    fn kms(&self, key: &str, extra: Value) -> TransitKms {
        let token_file = self.dir.path().join("token");
        if !token_file.exists() {
            self.write_token("root");
        }
        let mut config = json!({"address": self.address(), "key": key, "token_file": token_file});
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        TransitKms::from_config(&config, Duration::from_secs(1)).unwrap()
    }
}

static GROUPS: [[u8; 16]; 2] = [[1; 16], [2; 16]];

fn bind(group: usize, version: u32, purpose: &'static str, key_bytes: u32) -> Binding<'static> {
    Binding { scheme: RingKeyBinding::V2, group: &GROUPS[group], version, purpose, key_bytes }
}

fn unusable(r: Result<impl std::fmt::Debug, KmsError>) -> String {
    match r {
        Err(KmsError::KeyUnusable(m)) => m,
        other => panic!("expected KeyUnusable, got {other:?}"),
    }
}

#[test]
fn check_accepts_a_derived_key_and_refuses_others() {
    let bao = Bao::start();
    bao.derived_key("ring");
    assert_eq!(bao.kms("ring", json!({})).check(&Call::patient()).unwrap(), "transit:transit/ring:v1");

    bao.ok("POST", "transit/keys/plain", json!({}));
    let m = unusable(bao.kms("plain", json!({})).check(&Call::patient()));
    assert!(m.contains("not derived") && m.contains("bao write -f transit/keys/<name> derived=true"), "{m}");

    bao.ok("POST", "transit/keys/signing", json!({"type": "ed25519", "derived": true}));
    let m = unusable(bao.kms("signing", json!({})).check(&Call::patient()));
    assert!(m.contains("ed25519 key cannot encrypt"), "{m}");

    let m = unusable(bao.kms("absent", json!({})).check(&Call::patient()));
    assert!(m.contains("no such key") && m.contains("transit/absent") && m.contains(&bao.address()), "{m}");
    let m = unusable(bao.kms("ring", json!({"mount": "elsewhere"})).check(&Call::patient()));
    assert!(m.contains("no handler for route"), "{m}");
}

#[test]
fn generate_and_unwrap_round_trip_for_16_32_64_and_48_bytes() {
    let bao = Bao::start();
    bao.derived_key("ring");
    let kms = bao.kms("ring", json!({}));
    let c = Call::patient();
    // 16, 32 and 64 bytes are made by the server (datakey), 48 here.
    for len in [16usize, 32, 64, 48] {
        let b = bind(0, 1, "encrypt", len as u32);
        let (key, w) = kms.generate(len, &b, &c).unwrap();
        assert_eq!(key.len(), len);
        assert_eq!(w.key_id, "transit:transit/ring:v1");
        assert!(w.wrapped.starts_with(b"vault:v1:"), "{}", String::from_utf8_lossy(&w.wrapped));
        assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &b, &c).unwrap(), key);
    }
    let key = KeyBytes::random(32);
    let w = kms.wrap(&key, &bind(0, 2, "export", 32), &c).unwrap();
    assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &bind(0, 2, "export", 32), &c).unwrap(), key);
}

#[test]
fn a_wrapped_key_unwraps_only_for_its_own_binding() {
    let bao = Bao::start();
    bao.derived_key("ring");
    bao.derived_key("other");
    let kms = bao.kms("ring", json!({}));
    let c = Call::patient();
    let b = bind(0, 3, "encrypt", 32);
    let (_, w) = kms.generate(32, &b, &c).unwrap();
    let corrupt = KmsError::WrappedKeyCorrupt { key_id: w.key_id.clone() };
    let v1 = Binding { scheme: RingKeyBinding::V1, ..b };
    let others = [bind(1, 3, "encrypt", 32), bind(0, 4, "encrypt", 32), bind(0, 3, "export", 32), bind(0, 3, "encrypt", 64), v1];
    for other in others {
        assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &other, &c).unwrap_err(), corrupt);
    }
    let mut tampered = w.wrapped.clone();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(kms.unwrap(&w.key_id, &tampered, &b, &c).unwrap_err(), corrupt);
    assert_eq!(kms.unwrap(&w.key_id, &w.wrapped[..20], &b, &c).unwrap_err(), corrupt);
    // A row of this key read through a provider configured for another.
    match bao.kms("other", json!({})).unwrap(&w.key_id, &w.wrapped, &b, &c) {
        Err(KmsError::WrongMasterKey { wrapped_by, configured }) => {
            assert_eq!((wrapped_by.as_str(), configured.as_str()), ("transit:transit/ring:v1", "transit:transit/other"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn after_rotation_new_wraps_record_v2_old_rows_unwrap_until_min_decryption_version_trims_them() {
    let bao = Bao::start();
    bao.derived_key("ring");
    let kms = bao.kms("ring", json!({}));
    let c = Call::patient();
    let b = bind(0, 1, "encrypt", 32);
    let (k1, w1) = kms.generate(32, &b, &c).unwrap();
    bao.ok("POST", "transit/keys/ring/rotate", json!({}));
    assert_eq!(kms.check(&c).unwrap(), "transit:transit/ring:v2");
    let (k2, w2) = kms.generate(32, &b, &c).unwrap();
    assert_eq!(w2.key_id, "transit:transit/ring:v2");
    assert!(w2.wrapped.starts_with(b"vault:v2:"));
    let k3 = KeyBytes::random(24);
    let w3 = kms.wrap(&k3, &b, &c).unwrap();
    assert_eq!(w3.key_id, "transit:transit/ring:v2");
    assert_eq!(kms.unwrap(&w1.key_id, &w1.wrapped, &b, &c).unwrap(), k1);
    assert_eq!(kms.unwrap(&w2.key_id, &w2.wrapped, &b, &c).unwrap(), k2);

    bao.ok("POST", "transit/keys/ring/config", json!({"min_decryption_version": 2}));
    let m = unusable(kms.unwrap(&w1.key_id, &w1.wrapped, &b, &c));
    assert!(m.contains("min_decryption_version") && m.contains("(too old)"), "{m}");
    assert_eq!(kms.unwrap(&w2.key_id, &w2.wrapped, &b, &c).unwrap(), k2);
}

/// After a rotation, rows on v1 are moved to v2 by the server (`rewrap`),
/// under the least-privilege policy; once v1 is trimmed, only moved rows
/// still unwrap.
#[test]
fn after_rotation_rewrap_moves_rows_to_the_latest_version() {
    let bao = Bao::start();
    bao.derived_key("ring");
    bao.write_token(&bao.policy_token("ring"));
    let kms = bao.kms("ring", json!({}));
    let c = Call::patient();
    let b = bind(0, 1, "encrypt", 32);
    let (key, old) = kms.generate(32, &b, &c).unwrap();
    assert_eq!(kms.current_key_id(&c).unwrap(), "transit:transit/ring:v1");
    bao.ok("POST", "transit/keys/ring/rotate", json!({}));
    assert_eq!(kms.current_key_id(&c).unwrap(), "transit:transit/ring:v2");

    let moved = kms.rewrap(&old.key_id, &old.wrapped, &b, &c).unwrap();
    assert_eq!(moved.key_id, "transit:transit/ring:v2");
    assert!(moved.wrapped.starts_with(b"vault:v2:"), "{}", String::from_utf8_lossy(&moved.wrapped));
    assert_eq!(kms.unwrap(&moved.key_id, &moved.wrapped, &b, &c).unwrap(), key);
    // The context travels with the rewrap: the new row is bound like the old.
    assert!(matches!(kms.unwrap(&moved.key_id, &moved.wrapped, &bind(1, 1, "encrypt", 32), &c),
                     Err(KmsError::WrappedKeyCorrupt { .. })));
    // Again, as after a lost answer, from the old row or the new one: the
    // server always re-encrypts, so each gives a fresh v2 ciphertext.
    for (id, w) in [(&old.key_id, &old.wrapped), (&moved.key_id, &moved.wrapped)] {
        let again = kms.rewrap(id, w, &b, &c).unwrap();
        assert_eq!(again.key_id, "transit:transit/ring:v2");
        assert_ne!(&again.wrapped, w);
        assert_eq!(kms.unwrap(&again.key_id, &again.wrapped, &b, &c).unwrap(), key);
    }
    assert_eq!(
        kms.rewrap(&old.key_id, &old.wrapped, &bind(0, 2, "encrypt", 32), &c).unwrap_err(),
        KmsError::WrappedKeyCorrupt { key_id: old.key_id.clone() }
    );

    bao.ok("POST", "transit/keys/ring/config", json!({"min_decryption_version": 2}));
    assert_eq!(kms.unwrap(&moved.key_id, &moved.wrapped, &b, &c).unwrap(), key);
    let m = unusable(kms.unwrap(&old.key_id, &old.wrapped, &b, &c));
    assert!(m.contains("min_decryption_version"), "{m}");
    let m = unusable(kms.rewrap(&old.key_id, &old.wrapped, &b, &c));
    assert!(m.contains("transit rewrap") && m.contains("(too old)"), "{m}");
}

/// current_key_id only reads the key; judging it is check's job.
#[test]
fn current_key_id_reads_the_latest_version_without_judging_the_key() {
    let bao = Bao::start();
    bao.ok("POST", "transit/keys/plain", json!({}));
    let kms = bao.kms("plain", json!({}));
    let c = Call::patient();
    assert!(matches!(kms.check(&c), Err(KmsError::KeyUnusable(_))));
    assert_eq!(kms.current_key_id(&c).unwrap(), "transit:transit/plain:v1");
    let m = unusable(bao.kms("absent", json!({})).current_key_id(&c));
    assert!(m.contains("no such key"), "{m}");
}

#[test]
fn a_new_token_in_the_file_is_used_by_the_next_call_and_one_without_permission_is_access_denied() {
    let bao = Bao::start();
    bao.derived_key("ring");
    let first = bao.policy_token("ring");
    bao.write_token(&first);
    let kms = bao.kms("ring", json!({}));
    let c = Call::patient();
    let b = bind(0, 1, "encrypt", 32);
    assert_eq!(kms.check(&c).unwrap(), "transit:transit/ring:v1");
    let (key, w) = kms.generate(32, &b, &c).unwrap();

    // The agent renews: a new token in the file, the old one revoked.
    let second = bao.policy_token("ring");
    bao.write_token(&second);
    bao.ok("POST", "auth/token/revoke", json!({ "token": first }));
    assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &b, &c).unwrap(), key);

    // A token without this key's policy, while `second` is still valid:
    // only a re-read of the file explains the refusal.
    let powerless = bao.token(&["default"]);
    let token_file = bao.write_token(&powerless);
    let refused = [
        kms.unwrap(&w.key_id, &w.wrapped, &b, &c).map(|_| ()),
        kms.check(&c).map(|_| ()),
        kms.generate(32, &b, &c).map(|_| ()),
    ];
    for r in refused {
        match r {
            Err(KmsError::AccessDenied(m)) => {
                assert!(m.contains("permission denied; check the token's policy"), "{m}");
                assert!(m.contains(&token_file.display().to_string()) && m.contains("transit/ring"), "{m}");
                assert!(!m.contains(&powerless) && !m.contains(&second), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
    bao.write_token(&second);
    assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &b, &c).unwrap(), key);

    // Another key's name with this token: refused, not created.
    bao.derived_key("elsewhere");
    assert!(matches!(bao.kms("elsewhere", json!({})).check(&c), Err(KmsError::AccessDenied(_))));
}

/// Why the recommended policy grants `update` and not `create`: an encrypt
/// to a missing key creates it only for a token allowed to create.
#[test]
fn a_deleted_key_is_not_recreated_by_a_wrap_under_the_recommended_policy() {
    let bao = Bao::start();
    bao.derived_key("ring");
    bao.write_token(&bao.policy_token("ring"));
    let kms = bao.kms("ring", json!({}));
    let c = Call::patient();
    let b = bind(0, 1, "encrypt", 32);
    kms.wrap(&KeyBytes::random(32), &b, &c).unwrap();
    bao.ok("POST", "transit/keys/ring/config", json!({"deletion_allowed": true}));
    bao.ok("DELETE", "transit/keys/ring", json!({}));

    assert!(matches!(kms.wrap(&KeyBytes::random(32), &b, &c), Err(KmsError::AccessDenied(_))));
    let m = unusable(kms.generate(32, &b, &c));
    assert!(m.contains("encryption key not found"), "{m}");
    assert_eq!(bao.try_api("root", "GET", "transit/keys/ring", None).unwrap().0, 404, "the key stays deleted");

    // The risk the policy avoids: a token that may create gets a new key.
    bao.write_token("root");
    assert_eq!(kms.wrap(&KeyBytes::random(32), &b, &c).unwrap().key_id, "transit:transit/ring:v1");
    assert_eq!(bao.try_api("root", "GET", "transit/keys/ring", None).unwrap().0, 200);
}

#[test]
fn a_namespace_is_sent_with_every_call() {
    let bao = Bao::start();
    bao.ok("POST", "sys/namespaces/team1", json!({}));
    bao.ok("POST", "team1/sys/mounts/transit", json!({"type": "transit"}));
    bao.ok("POST", "team1/transit/keys/ring", json!({"derived": true}));
    let kms = bao.kms("ring", json!({"namespace": "team1"}));
    let c = Call::patient();
    let b = bind(0, 1, "encrypt", 32);
    assert_eq!(kms.check(&c).unwrap(), "transit:transit/ring:v1");
    let (key, w) = kms.generate(32, &b, &c).unwrap();
    assert_eq!(kms.unwrap(&w.key_id, &w.wrapped, &b, &c).unwrap(), key);
    // The root namespace has no such key.
    let m = unusable(bao.kms("ring", json!({})).check(&c));
    assert!(m.contains("no such key") && !m.contains("team1"), "{m}");
}

#[test]
fn a_sealed_server_is_unavailable_within_the_call_budget() {
    let bao = Bao::start();
    bao.derived_key("ring");
    let kms = bao.kms("ring", json!({}));
    let b = bind(0, 1, "encrypt", 32);
    let (_, w) = kms.generate(32, &b, &Call::patient()).unwrap();
    bao.ok("PUT", "sys/seal", json!({}));

    let budget = Duration::from_millis(1500);
    let c = Call {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_attempts: 20,
        total_budget: budget,
        interrupted: &|| false,
    };
    let calls: [&dyn Fn() -> Result<(), KmsError>; 6] = [
        &|| kms.check(&c).map(|_| ()),
        &|| kms.current_key_id(&c).map(|_| ()),
        &|| kms.rewrap(&w.key_id, &w.wrapped, &b, &c).map(|_| ()),
        &|| kms.generate(32, &b, &c).map(|_| ()),
        &|| kms.wrap(&KeyBytes::random(32), &b, &c).map(|_| ()),
        &|| kms.unwrap(&w.key_id, &w.wrapped, &b, &c).map(|_| ()),
    ];
    for call in calls {
        let start = Instant::now();
        match call() {
            Err(KmsError::Unavailable(m)) => assert!(m.contains("sealed") && m.contains("HTTP 503"), "{m}"),
            other => panic!("{other:?}"),
        }
        // 503 is retried, with backoff, while a retry can start within the
        // budget: the call ends within the budget plus one request.
        assert!(start.elapsed() < budget + c.request_timeout, "took {:?}", start.elapsed());
    }
}
