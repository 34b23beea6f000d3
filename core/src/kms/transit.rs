//! The `transit` provider: the transit secrets engine of HashiCorp Vault or
//! OpenBao wraps ring keys; the master key never leaves the server.
//!
//! Config (a JSON object, nothing secret in it):
//! `{"address": "https://bao.example:8200", "key": "secret-vault",
//!   "mount": "transit", "token_file": "/run/bao/token",
//!   "ca_file": "/etc/ssl/bao-ca.pem", "namespace": "team1"}`
//! (`mount` defaults to `transit`; `ca_file` and `namespace` are optional).
//!
//! Binding. Transit's `rewrap` takes no associated data, so ciphertext made
//! with `associated_data` could never be re-wrapped after a key rotation.
//! A *derived* key (`derived=true`) instead takes a `context` that works for
//! datakey, encrypt, decrypt and rewrap alike: every call sends the ring
//! key's binding as that context, so a wrapped key only unwraps for its
//! group, version, purpose and key size. A key that is not derived ignores
//! the context silently, hence `check` refuses one.
//!
//! Rows record `transit:{mount}/{key}:v{N}`, N being the key version in the
//! ciphertext's `vault:vN:` prefix, so rows left on older versions show up
//! after a rotation. The stored wrapped bytes are that ASCII ciphertext.
//!
//! Auto-creation risk: an `encrypt` to a key name that does not exist makes
//! the server create a new key under that name (`datakey` does not). `check`
//! verifies the key when it is registered, but were the key deleted later, a
//! token allowed to create would silently wrap new ring keys under a fresh
//! key of the same name. The server only auto-creates for a token with the
//! `create` capability on the encrypt path: grant `update` alone (the policy
//! below), and an encrypt to a missing key is refused with 403 instead.
//!
//! ```hcl
//! path "transit/datakey/plaintext/<key>" { capabilities = ["update"] }
//! path "transit/encrypt/<key>"           { capabilities = ["update"] }
//! path "transit/decrypt/<key>"           { capabilities = ["update"] }
//! path "transit/rewrap/<key>"            { capabilities = ["update"] }
//! path "transit/keys/<key>"              { capabilities = ["read"] }
//! ```
//!
//! The token comes from `token_file`, which an agent keeps current (see
//! `token.rs`); a 403 re-reads it once in case it was just renewed.

mod token;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::http::{self, Http, Request, Response, Verdict};
use super::{Binding, Call, KmsProvider, Wrapped};
use crate::keys::KeyBytes;
use crate::KmsError;
use token::TokenFile;

/// Key types that can encrypt (the others sign, or are asymmetric).
const KEY_TYPES: [&str; 3] = ["aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"];
/// The sizes `datakey` makes (bits 128, 256, 512); others are made here.
const DATAKEY_LENS: [usize; 3] = [16, 32, 64];
/// Server error text kept in a message: enough to diagnose, bounded.
const MAX_SERVER_TEXT: usize = 300;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    address: String,
    key: String,
    #[serde(default = "default_mount")]
    mount: String,
    token_file: PathBuf,
    ca_file: Option<PathBuf>,
    namespace: Option<String>,
}

fn default_mount() -> String {
    "transit".into()
}

pub struct TransitKms {
    http: Http,
    /// The address as configured, without a trailing slash (messages).
    address: String,
    mount: String,
    key: String,
    namespace: Option<String>,
    token: TokenFile,
    /// Whether `check` passed in this process: a key deleted and re-created
    /// without `derived` would silently ignore the binding context, so new
    /// wraps check the key first (once per provider instance).
    checked: std::cell::Cell<bool>,
}

impl std::fmt::Debug for TransitKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitKms")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("key", &self.key)
            .field("namespace", &self.namespace)
            .field("token", &self.token)
            .finish()
    }
}

/// The operations used, with their paths under the mount.
#[derive(Clone, Copy)]
enum Op {
    ReadKey,
    Encrypt,
    DataKey,
    Decrypt,
    Rewrap,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::ReadKey => "read key",
            Op::Encrypt => "encrypt",
            Op::DataKey => "datakey",
            Op::Decrypt => "decrypt",
            Op::Rewrap => "rewrap",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Op::ReadKey => "keys",
            Op::Encrypt => "encrypt",
            Op::DataKey => "datakey/plaintext",
            Op::Decrypt => "decrypt",
            Op::Rewrap => "rewrap",
        }
    }
}

impl TransitKms {
    /// Validates the config; reads nothing but the CA file. The token file
    /// is read at the first call (an agent may not have written it yet).
    pub fn from_config(config: &serde_json::Value, connect_timeout: Duration) -> Result<TransitKms, KmsError> {
        let bad = |m: String| KmsError::Config(format!("transit config: {m}"));
        if !config.is_object() {
            return Err(bad("must be a JSON object".into()));
        }
        let c = Config::deserialize(config).map_err(|e| bad(e.to_string()))?;
        let url = http::check_url(&c.address, "transit address")?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(format!("address \"{}\" must not have a query or fragment", c.address)));
        }
        let key = name(&c.key, "key", false)?;
        let mount = name(&c.mount, "mount", true)?;
        let namespace = c.namespace.as_deref().map(|n| name(n, "namespace", true)).transpose()?;
        for (what, path) in [("token_file", Some(&c.token_file)), ("ca_file", c.ca_file.as_ref())] {
            if path.is_some_and(|p| !p.is_absolute()) {
                return Err(bad(format!("{what} must be an absolute path")));
            }
        }
        Ok(TransitKms {
            http: Http::new(c.ca_file.as_deref(), connect_timeout)?,
            address: url.as_str().trim_end_matches('/').to_string(),
            mount,
            key,
            namespace,
            token: TokenFile::new(c.token_file),
            checked: std::cell::Cell::new(false),
        })
    }

    fn checked_once(&self, call: &Call) -> Result<(), KmsError> {
        if !self.checked.get() {
            self.check(call)?;
            self.checked.set(true);
        }
        Ok(())
    }

    /// `{mount}/{key}`: what key ids name.
    fn key_path(&self) -> String {
        format!("{}/{}", self.mount, self.key)
    }

    fn key_id(&self, version: u32) -> String {
        format!("transit:{}:v{version}", self.key_path())
    }

    /// Where a message comes from: operation, key, server (never the token).
    fn place(&self, op: Op) -> String {
        let ns = self.namespace.as_ref().map(|n| format!(" namespace {n}")).unwrap_or_default();
        format!("transit {} with key {} at {}{ns}", op.name(), self.key_path(), self.address)
    }

    fn token_file(&self) -> &Path {
        self.token.path()
    }

    /// One operation, retried as `call` allows. `corrupt_id`: for decrypt,
    /// the id a ciphertext that does not authenticate is reported under.
    fn request(
        &self,
        call: &Call,
        op: Op,
        body: Option<Zeroizing<Vec<u8>>>,
        corrupt_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let url = format!("{}/v1/{}/{}/{}", self.address, self.mount, op.path(), self.key);
        let method = if body.is_some() { "POST" } else { "GET" };
        let body = body.unwrap_or_default();
        let send = |token: &str| {
            let mut headers = vec![
                ("X-Vault-Token".to_string(), token.to_string()),
                // Required by an agent or proxy with require_request_header
                // (its defence against request forgery); harmless elsewhere.
                ("X-Vault-Request".to_string(), "true".to_string()),
            ];
            if method == "POST" {
                headers.push(("Content-Type".to_string(), "application/json".to_string()));
            }
            if let Some(ns) = &self.namespace {
                headers.push(("X-Vault-Namespace".to_string(), ns.clone()));
            }
            let req = Request { method, url: url.clone(), headers, body: Zeroizing::new(body.to_vec()) };
            self.http.send(req, call.request_timeout, call.interrupted)
        };
        // Once per operation: a 403 may mean the agent renewed the token
        // since we last looked, within the file stamp's granularity.
        let mut reloaded = false;
        self.http.retrying(call, || {
            let token = match self.token.current() {
                Ok(t) => t,
                Err(e) => return Verdict::Fail(e),
            };
            let mut resp = send(&token);
            if matches!(&resp, Ok(r) if r.status == 403 || r.status == 401) && !reloaded {
                reloaded = true;
                match self.token.reload() {
                    Ok(Some(fresh)) => resp = send(&fresh),
                    Ok(None) => {}
                    Err(e) => return Verdict::Fail(e),
                }
            }
            match resp {
                Ok(r) => self.outcome(op, r, corrupt_id),
                Err(t) => Verdict::from_transport(t, &self.place(op)),
            }
        })
    }

    /// What an answer means. Vault and OpenBao answer errors as
    /// `{"errors": ["..."]}` and mostly with 400, so the text decides.
    fn outcome(&self, op: Op, resp: Response, corrupt_id: Option<&str>) -> Verdict<Zeroizing<Vec<u8>>> {
        let status = resp.status;
        if (200..300).contains(&status) {
            return Verdict::Done(resp.body);
        }
        let text = server_errors(&resp.body);
        let lower = text.to_ascii_lowercase();
        let server = if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") };
        let place = self.place(op);
        let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        match status {
            400 if has(&["disallowed by policy", "too old"]) => Verdict::Fail(KmsError::KeyUnusable(format!(
                "{place}: the key version that wrapped this key was trimmed by min_decryption_version ({server})"
            ))),
            // The ciphertext names a version the key never had: the key was
            // deleted and re-created under the same name.
            400 if has(&["version is too new"]) => Verdict::Fail(KmsError::KeyUnusable(format!(
                "{place}: the key has no such version; was it deleted and re-created? ({server})"
            ))),
            400 if has(&["encryption key not found"]) => {
                Verdict::Fail(KmsError::KeyUnusable(format!("{place}: no such transit key ({server})")))
            }
            400 if has(&["unable to decrypt", "message authentication failed", "invalid ciphertext"]) => {
                match corrupt_id {
                    Some(id) => Verdict::Fail(KmsError::WrappedKeyCorrupt { key_id: id.to_string() }),
                    None => Verdict::Fail(KmsError::Refused(format!("{place}: {server}"))),
                }
            }
            404 => Verdict::Fail(KmsError::KeyUnusable(format!("{place}: no such key, mount or namespace ({server})"))),
            401 | 403 => Verdict::Fail(KmsError::AccessDenied(format!(
                "{place}: permission denied; check the token's policy: it needs \"update\" on {m}/encrypt/{k}, \
                 {m}/decrypt/{k}, {m}/datakey/plaintext/{k} and {m}/rewrap/{k}, \"read\" on {m}/keys/{k}, and an \
                 unexpired token in \"{f}\" ({server})",
                m = self.mount,
                k = self.key,
                f = self.token_file().display()
            ))),
            429 => Verdict::Retry(KmsError::Throttled(format!("{place}: {server}"))),
            500..=599 if lower.contains("sealed") => {
                Verdict::Retry(KmsError::Unavailable(format!("{place}: the server is sealed ({server})")))
            }
            500..=599 => Verdict::Retry(KmsError::Unavailable(format!("{place}: {server}"))),
            _ => Verdict::Fail(KmsError::Refused(format!("{place}: {server}"))),
        }
    }

    /// Parses a success answer's `data`. The error never quotes the answer:
    /// it may hold key plaintext.
    fn data<'a, T: Deserialize<'a>>(&self, op: Op, answer: &'a [u8]) -> Result<T, KmsError> {
        #[derive(Deserialize)]
        struct Answer<T> {
            data: T,
        }
        serde_json::from_slice::<Answer<T>>(answer).map(|a| a.data).map_err(|e| {
            KmsError::Refused(format!(
                "{}: the answer is not the JSON expected ({:?} at line {} column {})",
                self.place(op),
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    }

    fn read_key(&self, call: &Call) -> Result<KeyInfo, KmsError> {
        let answer = self.request(call, Op::ReadKey, None, None)?;
        self.data(Op::ReadKey, &answer)
    }

    /// A row's ciphertext, if the row is this key's and its id and
    /// ciphertext agree on the version (checked before any call).
    fn own_ciphertext<'a>(&self, wrapped_by: &str, wrapped: &'a [u8]) -> Result<&'a str, KmsError> {
        let version = match parse_key_id(wrapped_by) {
            Some((path, v)) if path == self.key_path() => v,
            _ => {
                return Err(KmsError::WrongMasterKey {
                    wrapped_by: wrapped_by.to_string(),
                    configured: format!("transit:{}", self.key_path()),
                })
            }
        };
        std::str::from_utf8(wrapped)
            .ok()
            .filter(|c| ciphertext_version(c) == Some(version))
            .ok_or_else(|| KmsError::WrappedKeyCorrupt { key_id: wrapped_by.to_string() })
    }

    fn wrapped(&self, op: Op, ciphertext: String) -> Result<Wrapped, KmsError> {
        let v = ciphertext_version(&ciphertext).ok_or_else(|| {
            KmsError::Refused(format!("{}: the answer's ciphertext has no vault:vN: prefix", self.place(op)))
        })?;
        Ok(Wrapped { key_id: self.key_id(v), wrapped: ciphertext.into_bytes() })
    }

    fn key_from(&self, op: Op, b64: &str, len: Option<usize>) -> Result<KeyBytes, KmsError> {
        decode_key(b64).filter(|k| len.is_none_or(|n| k.len() == n)).ok_or_else(|| {
            KmsError::Refused(format!("{}: the answer's plaintext is not a key of the expected size", self.place(op)))
        })
    }
}

#[derive(Deserialize)]
struct KeyInfo {
    #[serde(rename = "type")]
    kind: String,
    derived: bool,
    latest_version: u32,
    /// OpenBao only.
    #[serde(default)]
    soft_deleted: bool,
}

#[derive(Deserialize)]
struct Encrypted {
    ciphertext: String,
}

/// Borrowed from the answer buffer (which is wiped), so the plaintext is
/// never copied into a String that would not be. Go's JSON encoder escapes
/// no base64 character, so borrowing never fails on a real answer.
#[derive(Deserialize)]
struct DataKey<'a> {
    ciphertext: String,
    plaintext: &'a str,
}

#[derive(Deserialize)]
struct Decrypted<'a> {
    plaintext: &'a str,
}

impl KmsProvider for TransitKms {
    fn provider(&self) -> &'static str {
        "transit"
    }

    fn check(&self, call: &Call) -> Result<String, KmsError> {
        let info = self.read_key(call)?;
        let place = self.place(Op::ReadKey);
        if info.soft_deleted {
            return Err(KmsError::KeyUnusable(format!("{place}: the key is soft-deleted; restore it first")));
        }
        if !KEY_TYPES.contains(&info.kind.as_str()) {
            return Err(KmsError::KeyUnusable(format!(
                "{place}: a {} key cannot encrypt; use one of type {}",
                info.kind,
                KEY_TYPES.join(", ")
            )));
        }
        if !info.derived {
            return Err(KmsError::KeyUnusable(format!(
                "{place}: the key is not derived, so it cannot bind a wrapped key to its group and version \
                 (transit rewrap takes no associated data); an existing key cannot be made derived: create one \
                 with `bao write -f {}/keys/<name> derived=true` and configure that",
                self.mount
            )));
        }
        Ok(self.key_id(info.latest_version))
    }

    /// `transit:{mount}/{key}:v{latest_version}`: encrypt, datakey and
    /// rewrap use the latest version. Unlike `check`, the key's type and
    /// derivation are not judged here.
    fn current_key_id(&self, call: &Call) -> Result<String, KmsError> {
        Ok(self.key_id(self.read_key(call)?.latest_version))
    }

    fn wrap(&self, key: &KeyBytes, binding: &Binding, call: &Call) -> Result<Wrapped, KmsError> {
        self.checked_once(call)?;
        let body = encrypt_body(key.as_bytes(), &context(binding));
        let answer = self.request(call, Op::Encrypt, Some(body), None)?;
        let data: Encrypted = self.data(Op::Encrypt, &answer)?;
        self.wrapped(Op::Encrypt, data.ciphertext)
    }

    fn unwrap(&self, wrapped_by: &str, wrapped: &[u8], binding: &Binding, call: &Call) -> Result<KeyBytes, KmsError> {
        let ciphertext = self.own_ciphertext(wrapped_by, wrapped)?;
        let body = json_body(serde_json::json!({ "ciphertext": ciphertext, "context": context(binding) }));
        let answer = self.request(call, Op::Decrypt, Some(body), Some(wrapped_by))?;
        let data: Decrypted = self.data(Op::Decrypt, &answer)?;
        self.key_from(Op::Decrypt, data.plaintext, None)
    }

    /// `rewrap`: the server decrypts and encrypts under the latest version
    /// with the same derived context; the key never leaves it. It always
    /// re-encrypts, so a row already on the latest version gets a fresh
    /// ciphertext too. A version trimmed by `min_decryption_version` can no
    /// longer be moved (KeyUnusable, as for unwrap).
    fn rewrap(&self, wrapped_by: &str, wrapped: &[u8], binding: &Binding, call: &Call) -> Result<Wrapped, KmsError> {
        let ciphertext = self.own_ciphertext(wrapped_by, wrapped)?;
        // Writes a new row, as wrap does: the key must still be derived.
        self.checked_once(call)?;
        let body = json_body(serde_json::json!({ "ciphertext": ciphertext, "context": context(binding) }));
        let answer = self.request(call, Op::Rewrap, Some(body), Some(wrapped_by))?;
        let data: Encrypted = self.data(Op::Rewrap, &answer)?;
        self.wrapped(Op::Rewrap, data.ciphertext)
    }

    /// The server makes 16, 32 and 64-byte keys (`datakey`); other sizes
    /// are made here and wrapped.
    fn generate(&self, len: usize, binding: &Binding, call: &Call) -> Result<(KeyBytes, Wrapped), KmsError> {
        if !DATAKEY_LENS.contains(&len) {
            let key = KeyBytes::random(len);
            let wrapped = self.wrap(&key, binding, call)?;
            return Ok((key, wrapped));
        }
        self.checked_once(call)?;
        let body = json_body(serde_json::json!({ "bits": len * 8, "context": context(binding) }));
        let answer = self.request(call, Op::DataKey, Some(body), None)?;
        let data: DataKey = self.data(Op::DataKey, &answer)?;
        let key = self.key_from(Op::DataKey, data.plaintext, Some(len))?;
        Ok((key, self.wrapped(Op::DataKey, data.ciphertext)?))
    }
}

/// A key, mount or namespace name: safe as URL path segments, so nothing
/// needs escaping and nothing can climb out of the mount (`..`).
fn name(value: &str, what: &str, segments: bool) -> Result<String, KmsError> {
    let v = if segments { value.trim_matches('/') } else { value };
    let segment_ok = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    };
    let ok = if segments { v.split('/').all(segment_ok) } else { segment_ok(v) };
    if ok {
        Ok(v.to_string())
    } else {
        Err(KmsError::Config(format!(
            "transit config: {what} \"{value}\" must be letters, digits, '-', '_', '.', '@'{}",
            if segments { " in '/'-separated segments, none of them '.' or '..'" } else { ", and not '.' or '..'" }
        )))
    }
}

/// `transit:{mount}/{key}:v{N}` as (`{mount}/{key}`, N).
fn parse_key_id(id: &str) -> Option<(&str, u32)> {
    let (path, v) = id.strip_prefix("transit:")?.rsplit_once(":v")?;
    Some((path, version(v)?))
}

/// The N of a `vault:vN:` ciphertext.
fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    version(ciphertext.strip_prefix("vault:v")?.split_once(':')?.0)
}

/// A version number as the server writes it: digits, no sign or leading
/// zero, at least 1 (so each version has exactly one spelling).
fn version(s: &str) -> Option<u32> {
    let n: u32 = s.parse().ok()?;
    (n >= 1 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0')).then_some(n)
}

/// The derived key's context: the binding as bytes, base64 as the API wants.
fn context(binding: &Binding) -> String {
    B64.encode(binding.aad())
}

/// For bodies without key material.
fn json_body(v: serde_json::Value) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(serde_json::to_vec(&v).expect("a JSON value serializes"))
}

/// `{"plaintext": b64(key), "context": ...}` built in wiped buffers sized
/// up front: serde_json would leave copies of the key in freed Strings.
fn encrypt_body(key: &[u8], context: &str) -> Zeroizing<Vec<u8>> {
    let mut b64 = Zeroizing::new(vec![0u8; base64::encoded_len(key.len(), true).expect("a key is small")]);
    B64.encode_slice(key, &mut b64[..]).expect("buffer sized for the encoding");
    let (head, mid, tail) = (&b"{\"plaintext\":\""[..], &b"\",\"context\":\""[..], &b"\"}"[..]);
    let mut body = Zeroizing::new(Vec::with_capacity(head.len() + b64.len() + mid.len() + context.len() + tail.len()));
    for part in [head, &b64[..], mid, context.as_bytes(), tail] {
        body.extend_from_slice(part);
    }
    body
}

/// Decodes into a wiped buffer sized up front.
fn decode_key(b64: &str) -> Option<KeyBytes> {
    let mut buf = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let n = B64.decode_slice(b64, &mut buf[..]).ok()?;
    Some(KeyBytes::from_slice(&buf[..n]))
}

/// The server's error texts, joined and tidied into one bounded line.
/// Go's multierror wraps some ("1 error occurred:\n\t* permission
/// denied\n\n"): only the items are kept.
fn server_errors(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let texts = match serde_json::from_slice::<Errors>(body) {
        Ok(e) => e.errors,
        // Not the API's JSON (a proxy's or WAF's page): not quoted, since
        // such a page may echo the request, token header included.
        Err(_) if body.is_empty() => vec![],
        Err(_) => vec![format!("an answer of {} bytes that is not the API's JSON", body.len())],
    };
    let mut items = Vec::new();
    for t in &texts {
        if t.contains("occurred:") && t.contains("* ") {
            items.extend(t.lines().filter_map(|l| l.trim().strip_prefix("* ")));
        } else {
            items.push(t);
        }
    }
    let joined = items.iter().map(|i| i.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|i| !i.is_empty());
    let mut out = joined.collect::<Vec<_>>().join("; ");
    if out.len() > MAX_SERVER_TEXT {
        let mut cut = MAX_SERVER_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aad::RingKeyBinding;
    use serde_json::json;

    fn config() -> serde_json::Value {
        json!({"address": "http://127.0.0.1:8200", "key": "sv", "token_file": "/run/bao/token"})
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut c = config();
        c[key] = value;
        c
    }

    fn kms(c: serde_json::Value) -> Result<TransitKms, KmsError> {
        TransitKms::from_config(&c, Duration::from_secs(1))
    }

    fn config_error(c: serde_json::Value) -> String {
        match kms(c) {
            Err(KmsError::Config(m)) => m,
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_minimal_config_defaults_the_mount_and_the_full_one_is_accepted() {
        let k = kms(config()).unwrap();
        assert_eq!((k.mount.as_str(), k.key.as_str(), k.address.as_str()), ("transit", "sv", "http://127.0.0.1:8200"));
        let full = json!({"address": "https://bao.example:8200/", "key": "ring-keys_1.v2", "mount": "/teams/a/transit/",
                          "token_file": "/run/t", "namespace": "ns1/child"});
        let k = kms(full).unwrap();
        assert_eq!(k.key_id(3), "transit:teams/a/transit/ring-keys_1.v2:v3");
        assert_eq!(k.address, "https://bao.example:8200");
        assert_eq!(k.namespace.as_deref(), Some("ns1/child"));
    }

    #[test]
    fn bad_configs_are_config_errors() {
        assert!(config_error(json!("transit")).contains("JSON object"));
        assert!(config_error(with("tokn", json!("x"))).contains("unknown field `tokn`"));
        let mut c = config();
        c.as_object_mut().unwrap().remove("key");
        assert!(config_error(c).contains("missing field `key`"));
        assert!(config_error(with("address", json!("http://10.1.2.3:8200"))).contains("use https"));
        assert!(config_error(with("address", json!("https://h:8200/?x=1"))).contains("query"));
        for key in ["a/b", "..", ".", "", "k?x", "k#x", "k%2f", "k x", "k:v1"] {
            assert!(config_error(with("key", json!(key))).contains("key"), "{key}");
        }
        for mount in ["a/../b", "..", "a//b", "", "/", "tr ansit"] {
            assert!(config_error(with("mount", json!(mount))).contains("mount"), "{mount}");
        }
        assert!(config_error(with("namespace", json!("a/../b"))).contains("namespace"));
        assert!(config_error(with("token_file", json!("run/token"))).contains("token_file must be an absolute"));
        assert!(config_error(with("ca_file", json!("ca.pem"))).contains("ca_file must be an absolute"));
        assert!(config_error(with("ca_file", json!("/nonexistent/ca.pem"))).contains("/nonexistent/ca.pem"));
        assert!(config_error(with("key", json!(5))).contains("invalid type"));
    }

    #[test]
    fn key_ids_and_ciphertext_versions_parse_strictly() {
        assert_eq!(parse_key_id("transit:transit/sv:v1"), Some(("transit/sv", 1)));
        assert_eq!(parse_key_id("transit:a/b/sv:v42"), Some(("a/b/sv", 42)));
        for bad in ["transit:transit/sv", "transit:transit/sv:v0", "transit:transit/sv:v01", "transit:transit/sv:v+1",
                    "transit:transit/sv:v", "transit:transit/sv:vx", "local:sha256:ab", "aws:transit/sv:v1"] {
            assert_eq!(parse_key_id(bad), None, "{bad}");
        }
        assert_eq!(ciphertext_version("vault:v2:abcd"), Some(2));
        for bad in ["vault:v0:abc", "vault:2:abc", "vault:v2", "v2:abc", "vault:v-1:abc", ""] {
            assert_eq!(ciphertext_version(bad), None, "{bad}");
        }
    }

    fn bind() -> Binding<'static> {
        Binding { scheme: RingKeyBinding::V2, group: &[7; 16], version: 3, purpose: "encrypt", key_bytes: 32 }
    }

    #[test]
    fn unwrap_and_rewrap_refuse_rows_of_other_keys_and_mismatched_versions_before_any_call() {
        // Nothing listens there: any request would fail as Unavailable.
        let k = kms(with("address", json!("http://127.0.0.1:9"))).unwrap();
        let c = Call::patient();
        for other in ["transit:transit/other:v1", "transit:other/sv:v1", "local:sha256:00", "transit:transit/sv"] {
            match k.unwrap(other, b"vault:v1:AAAA", &bind(), &c) {
                Err(KmsError::WrongMasterKey { wrapped_by, configured }) => {
                    assert_eq!((wrapped_by.as_str(), configured.as_str()), (other, "transit:transit/sv"))
                }
                r => panic!("{other}: {r:?}"),
            }
        }
        for wrapped in [&b"vault:v2:AAAA"[..], b"AAAA", b"vault:v1", b"\xff\xfe"] {
            let corrupt = KmsError::WrappedKeyCorrupt { key_id: "transit:transit/sv:v1".into() };
            assert_eq!(k.unwrap("transit:transit/sv:v1", wrapped, &bind(), &c).unwrap_err(), corrupt);
            assert_eq!(k.rewrap("transit:transit/sv:v1", wrapped, &bind(), &c).unwrap_err(), corrupt);
        }
        assert!(matches!(
            k.rewrap("transit:transit/other:v1", b"vault:v1:AAAA", &bind(), &c),
            Err(KmsError::WrongMasterKey { .. })
        ));
    }

    fn outcome(status: u16, body: &str, corrupt: Option<&str>) -> Verdict<Zeroizing<Vec<u8>>> {
        let k = kms(with("namespace", json!("ns1"))).unwrap();
        k.outcome(Op::Decrypt, Response { status, body: Zeroizing::new(body.as_bytes().to_vec()) }, corrupt)
    }

    fn failed(v: Verdict<Zeroizing<Vec<u8>>>) -> KmsError {
        match v {
            Verdict::Fail(e) => e,
            Verdict::Retry(e) => panic!("retry {e:?}"),
            Verdict::Done(_) => panic!("done"),
        }
    }

    fn retried(v: Verdict<Zeroizing<Vec<u8>>>) -> KmsError {
        match v {
            Verdict::Retry(e) => e,
            Verdict::Fail(e) => panic!("fail {e:?}"),
            Verdict::Done(_) => panic!("done"),
        }
    }

    fn errors(texts: &[&str]) -> String {
        json!({ "errors": texts }).to_string()
    }

    /// Bodies as OpenBao 2.7.2 answers them.
    #[test]
    fn server_errors_map_to_kms_errors() {
        let key_id = "transit:transit/sv:v1";
        let id = Some(key_id);
        for text in [
            "cipher: message authentication failed",
            "invalid ciphertext length",
            "invalid ciphertext: no prefix",
            "invalid ciphertext: could not decode base64",
            "unable to decrypt",
        ] {
            let body = errors(&[text]);
            assert_eq!(failed(outcome(400, &body, id)), KmsError::WrappedKeyCorrupt { key_id: key_id.into() });
            assert!(matches!(failed(outcome(400, &body, None)), KmsError::Refused(m) if m.contains(text)));
        }
        let unusable = |status, body: &str| match failed(outcome(status, body, id)) {
            KmsError::KeyUnusable(m) => m,
            other => panic!("{other:?}"),
        };
        let m = unusable(400, &errors(&["ciphertext or signature version is disallowed by policy (too old)"]));
        assert!(m.contains("trimmed by min_decryption_version") && m.ends_with("(too old))"), "{m}");
        let m = unusable(400, &errors(&["invalid ciphertext: version is too new"]));
        assert!(m.contains("re-created"), "{m}");
        let m = unusable(400, &errors(&["encryption key not found"]));
        assert!(m.contains("no such transit key (HTTP 400: encryption key not found)"), "{m}");
        let m = unusable(404, &errors(&[]));
        assert!(m.contains("transit/sv") && m.ends_with("(HTTP 404)"), "{m}");

        match failed(outcome(403, &errors(&["1 error occurred:\n\t* permission denied\n\n"]), None)) {
            KmsError::AccessDenied(m) => {
                assert!(m.contains("permission denied; check the token's policy"), "{m}");
                assert!(m.ends_with("(HTTP 403: permission denied)"), "{m}");
                for part in ["http://127.0.0.1:8200", "namespace ns1", "/run/bao/token", "transit/decrypt/sv"] {
                    assert!(m.contains(part), "{part}: {m}");
                }
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(retried(outcome(429, "{}", None)), KmsError::Throttled(_)));
        match retried(outcome(503, &errors(&["Vault is sealed"]), None)) {
            KmsError::Unavailable(m) => assert!(m.contains("transit decrypt with key transit/sv") && m.contains("sealed")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(retried(outcome(500, "<html>oops</html>", None)), KmsError::Unavailable(m) if !m.contains("oops") && m.contains("17 bytes")));
        let m = failed(outcome(400, &errors(&["missing 'context' for key derivation"]), id));
        assert!(matches!(&m, KmsError::Refused(m) if m.contains("missing 'context'")), "{m:?}");
        assert!(matches!(failed(outcome(307, "", None)), KmsError::Refused(m) if m.contains("HTTP 307")));
        assert!(matches!(outcome(200, "{}", None), Verdict::Done(b) if &b[..] == b"{}"));
    }

    #[test]
    fn long_or_odd_server_texts_are_bounded_and_tidied() {
        assert_eq!(server_errors(br#"{"errors":["a\n  b", "c"]}"#), "a b; c");
        // Not JSON: never quoted (a proxy's page may echo the request).
        assert_eq!(server_errors(b"X-Vault-Token: s.secret"), "an answer of 23 bytes that is not the API's JSON");
        assert_eq!(server_errors("{\"errors\":[\"2 errors occurred:\\n\\t* one\\n\\t* two\\n\\n\"]}".as_bytes()), "one; two");
        let long = server_errors(json!({"errors": ["é".repeat(400)]}).to_string().as_bytes());
        assert!(long.len() <= MAX_SERVER_TEXT + 3 && long.ends_with("..."));
        assert_eq!(server_errors(b""), "");
    }

    #[test]
    fn answers_that_are_not_the_expected_json_are_refused_without_quoting_them() {
        let k = kms(config()).unwrap();
        // A plaintext that would need unescaping (never sent by Go) cannot be borrowed.
        let answer = br#"{"data":{"plaintext":"c2VjcmV0\/c2VjcmV0"}}"#;
        match k.data::<Decrypted>(Op::Decrypt, answer) {
            Err(KmsError::Refused(m)) => assert!(!m.contains("c2VjcmV0"), "{m}"),
            _ => panic!("expected Refused"),
        }
        let answer = br#"{"data":{"plaintext":42}}"#;
        assert!(matches!(k.data::<Decrypted>(Op::Decrypt, answer), Err(KmsError::Refused(m)) if !m.contains("42")));
        assert!(k.key_from(Op::DataKey, "AAAA", Some(16)).is_err());
        assert_eq!(k.key_from(Op::DataKey, &B64.encode([5u8; 16]), Some(16)).unwrap().as_bytes(), &[5u8; 16]);
    }

    /// A server that refuses every token but `s.new`; answers one request
    /// per connection. Returns its port and the tokens it was sent.
    fn token_checking_server(requests: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for s in l.incoming().take(requests) {
                let mut r = BufReader::new(s.unwrap());
                let (mut token, mut length) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(": ").unwrap_or((line, ""));
                    match name.to_ascii_lowercase().as_str() {
                        "x-vault-token" => token = value.to_string(),
                        "content-length" => length = value.parse().unwrap(),
                        _ => {}
                    }
                }
                r.read_exact(&mut vec![0; length]).unwrap();
                let (status, body) = if token == "s.new" {
                    ("200 OK", r#"{"data":{"ciphertext":"vault:v4:AAAA"}}"#)
                } else {
                    ("403 Forbidden", r#"{"errors":["permission denied"]}"#)
                };
                seen.push(token);
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                r.get_mut().write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (port, h)
    }

    #[test]
    fn a_403_rereads_the_token_file_once_and_retries_only_with_a_renewed_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s.old").unwrap();
        let (port, server) = token_checking_server(3);
        let k = kms(json!({"address": format!("http://127.0.0.1:{port}"), "key": "sv", "token_file": p})).unwrap();
        // This server only encrypts: the key counts as checked.
        k.checked.set(true);
        let key = KeyBytes::random(32);
        // The file still holds the refused token: no second request.
        assert!(matches!(k.wrap(&key, &bind(), &Call::patient()), Err(KmsError::AccessDenied(_))));
        // Renewed so quickly that the file's stamp did not move: only the
        // re-read after the 403 finds the new token.
        std::fs::write(&p, "s.new").unwrap();
        k.token.pretend_unchanged();
        assert_eq!(k.wrap(&key, &bind(), &Call::patient()).unwrap().key_id, "transit:transit/sv:v4");
        assert_eq!(server.join().unwrap(), ["s.old", "s.old", "s.new"]);
    }

    #[test]
    fn the_encrypt_body_is_the_json_the_api_expects() {
        let body = encrypt_body(&[1, 2, 3, 250], "Y3R4");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"plaintext": B64.encode([1, 2, 3, 250]), "context": "Y3R4"}));
        assert_eq!(body.capacity(), body.len(), "no reallocation left a copy behind");
    }

    #[test]
    fn the_context_differs_with_each_part_of_the_binding() {
        let b = bind();
        let mut seen = std::collections::HashSet::new();
        for v in [b, Binding { version: 4, ..b }, Binding { purpose: "export", ..b }, Binding { key_bytes: 64, ..b },
                  Binding { group: &[8; 16], ..b }] {
            assert!(seen.insert(context(&v)));
        }
    }

    #[test]
    fn debug_names_the_key_and_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s.TOPSECRETTOKEN").unwrap();
        let k = kms(with("token_file", json!(p))).unwrap();
        k.token.current().unwrap();
        let d = format!("{k:?}");
        assert!(d.contains("transit") && d.contains("sv") && d.contains("redacted"), "{d}");
        assert!(!d.contains("TOPSECRET"), "{d}");
    }
}
