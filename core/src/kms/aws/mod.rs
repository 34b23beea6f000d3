//! The `aws` provider: ring keys wrapped by an AWS KMS key.
//!
//! AWS KMS's JSON 1.1 protocol (`POST /`, `X-Amz-Target:
//! TrentService.<Op>`), signed with SigV4 by AWS's `aws-sigv4`, over the
//! provider-neutral HTTP layer (`kms::http`). Every call carries the
//! binding as its EncryptionContext, which KMS authenticates with the
//! ciphertext and logs in CloudTrail. Rows record the key ARN that
//! wrapped them; unwrapping asks KMS to use exactly that key, so a row
//! wrapped before an alias moved still unwraps, and ciphertext of another
//! key is refused by KMS itself.
//!
//! Config, a JSON object holding nothing secret:
//! `{"region": "eu-west-1", "key_id": "alias/vault", "endpoint": "https://...",
//! "ca_file": "/path/ca.pem"}`; credentials come from the server's AWS
//! environment (see `credentials`).

pub mod credentials;
pub mod env;
mod errors;
pub mod profile;
pub mod sign;
pub mod sts;
mod xml;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::http::{self, Http, Request, Verdict};
use super::{Binding, Call, KmsProvider, Wrapped};
use crate::keys::KeyBytes;
use crate::KmsError;
use credentials::CredentialChain;
use env::Env;
use errors::{Class, Ctx};
use sign::sign_request;

/// GenerateDataKey's range for NumberOfBytes.
const MAX_DATA_KEY: usize = 1024;
/// Encrypt's limit on plaintext.
const MAX_PLAINTEXT: usize = 4096;
/// Decrypt's and ReEncrypt's limit on ciphertext.
const MAX_CIPHERTEXT: usize = 6144;

/// A registered `aws` key's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub region: String,
    /// A key id, key ARN, alias name (`alias/x`) or alias ARN.
    pub key_id: String,
    pub endpoint: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl AwsConfig {
    pub fn parse(config: &serde_json::Value) -> Result<AwsConfig, KmsError> {
        let obj = config.as_object().ok_or_else(|| KmsError::Config("config must be a JSON object".into()))?;
        let mut region = None;
        let mut key_id = None;
        let mut endpoint = None;
        let mut ca_file = None;
        for (k, v) in obj {
            let text =
                || v.as_str().map(str::to_string).ok_or_else(|| KmsError::Config(format!("{k} must be a string")));
            match k.as_str() {
                "region" => region = Some(text()?),
                "key_id" => key_id = Some(text()?),
                "endpoint" => endpoint = Some(text()?),
                "ca_file" => ca_file = Some(PathBuf::from(text()?)),
                other => return Err(KmsError::Config(format!("unknown config key \"{other}\" for provider aws"))),
            }
        }
        let region = region.ok_or_else(|| KmsError::Config("region is required for provider aws".into()))?;
        let key_id = key_id.ok_or_else(|| KmsError::Config("key_id is required for provider aws".into()))?;
        check_region(&region)?;
        check_key_id(&key_id, &region)?;
        if let Some(e) = &endpoint {
            endpoint_url(e, "endpoint")?;
        }
        if let Some(p) = &ca_file {
            if !p.is_absolute() {
                return Err(KmsError::Config("ca_file must be an absolute path".into()));
            }
        }
        Ok(AwsConfig { region, key_id, endpoint, ca_file })
    }

    /// The KMS endpoint, as the SDKs pick it: the configured one, else
    /// `AWS_ENDPOINT_URL_KMS`, else `AWS_ENDPOINT_URL`, else the regional one.
    pub fn endpoint(&self, env: &Env) -> Result<String, KmsError> {
        if let Some(e) = &self.endpoint {
            return endpoint_url(e, "endpoint");
        }
        for var in ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"] {
            if let Some(e) = env.get(var) {
                return endpoint_url(e.trim(), var);
            }
        }
        Ok(format!("https://kms.{}.{}/", self.region, dns_suffix(&self.region)))
    }
}

/// Checks a registered `aws` key's config without building a provider.
pub fn check_config(config: &serde_json::Value) -> Result<(), KmsError> {
    AwsConfig::parse(config).map(|_| ())
}

/// AWS's domain for a region (China's partition has its own).
pub(crate) fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

pub(crate) fn endpoint_url(url: &str, what: &str) -> Result<String, KmsError> {
    let parsed = http::check_url(url, what)?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(KmsError::Config(format!("{what} \"{url}\" must not have a query or fragment")));
    }
    Ok(parsed.to_string())
}

pub(crate) fn check_region(region: &str) -> Result<(), KmsError> {
    // It becomes part of a host name: letters, digits and dashes only.
    let ok = !region.is_empty()
        && region.len() <= 64
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(KmsError::Config(format!("region \"{region}\" is not an AWS region name (like eu-west-1)")))
    }
}

fn check_key_id(key_id: &str, region: &str) -> Result<(), KmsError> {
    let bad = || {
        KmsError::Config(format!(
            "key_id \"{key_id}\" is not a KMS key id, key ARN, alias name (alias/...) or alias ARN"
        ))
    };
    let name_ok = |s: &str, extra: &[u8]| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || extra.contains(&b))
    };
    if key_id.len() > 2048 {
        return Err(bad());
    }
    if key_id.starts_with("arn:") {
        let Some(arn) = Arn::parse(key_id) else { return Err(bad()) };
        let resource_ok = match arn.resource.split_once('/') {
            Some(("key", id)) => name_ok(id, b""),
            Some(("alias", name)) => name_ok(name, b"/_"),
            _ => false,
        };
        if arn.service != "kms" || arn.account.is_empty() || !resource_ok {
            return Err(bad());
        }
        if arn.region != region {
            return Err(KmsError::Config(format!(
                "key_id \"{key_id}\" is a key in region {}, but region is {region}",
                arn.region
            )));
        }
        Ok(())
    } else if let Some(name) = key_id.strip_prefix("alias/") {
        if name_ok(name, b"/_") {
            Ok(())
        } else {
            Err(bad())
        }
    } else if name_ok(key_id, b"") {
        Ok(())
    } else {
        Err(bad())
    }
}

/// An ARN's parts: `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`.
struct Arn<'a> {
    service: &'a str,
    region: &'a str,
    account: &'a str,
    resource: &'a str,
}

impl Arn<'_> {
    fn parse(s: &str) -> Option<Arn<'_>> {
        let mut parts = s.splitn(6, ':');
        let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(resource)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        (!partition.is_empty()).then_some(Arn { service, region, account, resource })
    }

    /// The region of a KMS key's ARN; None for anything else (aliases included).
    fn key_region(s: &str) -> Option<&str> {
        let arn = Arn::parse(s)?;
        let id = arn.resource.strip_prefix("key/")?;
        (arn.service == "kms" && !arn.region.is_empty() && !arn.account.is_empty() && !id.is_empty())
            .then_some(arn.region)
    }
}

#[derive(Clone, Copy)]
enum Op {
    DescribeKey,
    GenerateDataKey,
    Encrypt,
    Decrypt,
    ReEncrypt,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::DescribeKey => "DescribeKey",
            Op::GenerateDataKey => "GenerateDataKey",
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::ReEncrypt => "ReEncrypt",
        }
    }
}

/// One request shape serves the four operations that name one key.
#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct KmsRequest<'a> {
    key_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    number_of_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext_blob: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_context: Option<BTreeMap<&'a str, &'a str>>,
}

impl KmsRequest<'_> {
    /// The JSON body, in a buffer sized so that it is never reallocated
    /// (an Encrypt body holds the key) and wiped after use.
    fn body(&self) -> Zeroizing<Vec<u8>> {
        let strings = self.key_id.len()
            + self.plaintext.map_or(0, str::len)
            + self.ciphertext_blob.map_or(0, str::len)
            + self.encryption_context.as_ref().map_or(0, |c| c.iter().map(|(k, v)| k.len() + v.len() + 8).sum());
        // JSON escaping at most sextuples a byte (\u00XX).
        let mut out = Zeroizing::new(Vec::with_capacity(512 + 6 * strings));
        serde_json::to_writer(&mut *out, self).expect("a map of strings always serializes");
        out
    }
}

/// ReEncrypt names two keys and two contexts (here always the same one).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptRequest<'a> {
    ciphertext_blob: &'a str,
    source_key_id: &'a str,
    source_encryption_context: BTreeMap<&'a str, &'a str>,
    destination_key_id: &'a str,
    destination_encryption_context: BTreeMap<&'a str, &'a str>,
}

/// The fields of the answers we read; the key plaintext is borrowed from
/// the (zeroizing) answer buffer, never copied into a String.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KmsAnswer<'a> {
    key_id: Option<String>,
    #[serde(borrow, default)]
    plaintext: Option<&'a str>,
    #[serde(borrow, default)]
    ciphertext_blob: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeAnswer {
    key_metadata: KeyMetadata,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyMetadata {
    arn: String,
    key_state: Option<String>,
    key_usage: Option<String>,
    key_spec: Option<String>,
    customer_master_key_spec: Option<String>,
}

pub struct AwsKms {
    region: String,
    key_id: String,
    endpoint: String,
    http: Http,
    credentials: CredentialChain,
}

impl AwsKms {
    /// A provider for `config`, with credentials from the process's environment.
    pub fn from_config(config: &serde_json::Value, connect_timeout: Duration) -> Result<AwsKms, KmsError> {
        AwsKms::from_config_in(config, connect_timeout, Env::process())
    }

    /// As `from_config`, with the environment given (tests, tools).
    pub fn from_config_in(config: &serde_json::Value, connect_timeout: Duration, env: Env) -> Result<AwsKms, KmsError> {
        let cfg = AwsConfig::parse(config)?;
        let endpoint = cfg.endpoint(&env)?;
        let http = Http::new(cfg.ca_file.as_deref(), connect_timeout)?;
        Ok(AwsKms {
            credentials: CredentialChain::new(env, &cfg.region),
            region: cfg.region,
            key_id: cfg.key_id,
            endpoint,
            http,
        })
    }

    /// The key as configured (an alias stays an alias).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn credentials(&self) -> &CredentialChain {
        &self.credentials
    }

    /// One KMS operation, retried as the call allows; the answer's body.
    fn call_kms(&self, op: Op, key: &str, body: &[u8], call: &Call) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let creds = self.credentials.get(&self.http, call)?;
        let what = format!("AWS KMS {} at {}", op.name(), self.endpoint);
        let target = format!("TrentService.{}", op.name());
        let rejected = Cell::new(false);
        let result = self.http.retrying(call, || {
            let mut req = Request {
                method: "POST",
                url: self.endpoint.clone(),
                headers: vec![
                    ("content-type".into(), "application/x-amz-json-1.1".into()),
                    ("x-amz-target".into(), target.clone()),
                ],
                body: Zeroizing::new(body.to_vec()),
            };
            // Signed per attempt: a retry carries a fresh x-amz-date.
            if let Err(e) = sign_request(&mut req, &creds, &self.region, "kms", SystemTime::now()) {
                return Verdict::Fail(e);
            }
            match self.http.send(req, call.request_timeout, call.interrupted) {
                Err(t) => Verdict::from_transport(t, &what),
                Ok(resp) if resp.status == 200 => Verdict::Done(resp.body),
                Ok(resp) => {
                    let ctx = Ctx { op: op.name(), key, credentials: creds.source() };
                    let m = errors::kms_error(&ctx, resp.status, &resp.body);
                    rejected.set(m.class == Class::BadCredentials);
                    if m.class.retry() {
                        Verdict::Retry(m.error)
                    } else {
                        Verdict::Fail(m.error)
                    }
                }
            }
        });
        if rejected.get() {
            // Rotated or expired: look them up again before the next call.
            self.credentials.invalidate();
        }
        result
    }

    /// DescribeKey of the configured key: an alias is resolved to the key
    /// it targets now.
    fn describe(&self, call: &Call) -> Result<KeyMetadata, KmsError> {
        let op = Op::DescribeKey;
        let body = KmsRequest { key_id: &self.key_id, ..Default::default() }.body();
        let answer = self.call_kms(op, &self.key_id, &body, call)?;
        Ok(read_answer::<DescribeAnswer>(op, &self.key_id, &answer)?.key_metadata)
    }

    /// The checks unwrap and rewrap make before any call.
    fn own_row(&self, wrapped_by: &str, wrapped: &[u8]) -> Result<(), KmsError> {
        if Arn::key_region(wrapped_by) != Some(self.region.as_str()) {
            // Another provider's id, or a key of another region: this
            // endpoint cannot unwrap it.
            return Err(KmsError::WrongMasterKey {
                wrapped_by: wrapped_by.to_string(),
                configured: self.key_id.clone(),
            });
        }
        if wrapped.is_empty() || wrapped.len() > MAX_CIPHERTEXT {
            return Err(KmsError::WrappedKeyCorrupt { key_id: wrapped_by.to_string() });
        }
        Ok(())
    }

    /// The key ARN an answer names, checked.
    fn answered_key(&self, op: Op, key_id: Option<String>) -> Result<String, KmsError> {
        match key_id {
            Some(arn) if Arn::key_region(&arn).is_some() => Ok(arn),
            Some(other) => Err(KmsError::Refused(format!(
                "AWS KMS {} on {} answered with KeyId \"{other}\", which is not a key ARN",
                op.name(),
                self.key_id
            ))),
            None => Err(unexpected(op, &self.key_id, "no KeyId")),
        }
    }
}

fn context_map<'a>(pairs: &'a [(&'static str, String); 4]) -> BTreeMap<&'a str, &'a str> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn unexpected(op: Op, key: &str, what: &str) -> KmsError {
    KmsError::Refused(format!("AWS KMS {} on {key} answered unexpectedly: {what}", op.name()))
}

/// Reads an answer. serde's messages can quote the offending value, which
/// here could be key material: only the position is kept.
fn read_answer<'a, T: Deserialize<'a>>(op: Op, key: &str, body: &'a [u8]) -> Result<T, KmsError> {
    serde_json::from_slice(body).map_err(|e| {
        unexpected(op, key, &format!("not the JSON expected (at line {} column {})", e.line(), e.column()))
    })
}

/// Base64 key plaintext into key bytes, through wiped buffers only.
fn decode_key(op: Op, key: &str, b64: &str) -> Result<KeyBytes, KmsError> {
    let mut buf = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let n = STANDARD.decode_slice(b64, &mut buf[..]).map_err(|_| unexpected(op, key, "Plaintext is not base64"))?;
    buf.truncate(n);
    // from_vec copies (and wipes) when there is spare capacity.
    Ok(KeyBytes::from_vec(std::mem::take(&mut *buf)))
}

fn decode_blob(op: Op, key: &str, b64: Option<&str>) -> Result<Vec<u8>, KmsError> {
    let b64 = b64.ok_or_else(|| unexpected(op, key, "no CiphertextBlob"))?;
    STANDARD.decode(b64).map_err(|_| unexpected(op, key, "CiphertextBlob is not base64"))
}

impl KmsProvider for AwsKms {
    fn provider(&self) -> &'static str {
        "aws"
    }

    /// DescribeKey: the key (an alias resolved to its current target)
    /// must exist, be enabled and be a symmetric encryption key.
    fn check(&self, call: &Call) -> Result<String, KmsError> {
        let op = Op::DescribeKey;
        let meta = self.describe(call)?;
        let arn = meta.arn;
        let unusable = |why: String| Err(KmsError::KeyUnusable(format!("AWS KMS key {} ({arn}) {why}", self.key_id)));
        match meta.key_state.as_deref() {
            Some("Enabled") => {}
            Some("PendingDeletion") | Some("PendingReplicaDeletion") => {
                return unusable(
                    "is pending deletion; cancel the deletion (aws kms cancel-key-deletion) and enable it".into(),
                )
            }
            Some(state) => return unusable(format!("is in state {state}, not Enabled")),
            None => return unusable("has no KeyState".into()),
        }
        // Absent only from emulators (moto leaves KeyUsage null); AWS always says.
        if let Some(usage) = meta.key_usage.as_deref().filter(|u| *u != "ENCRYPT_DECRYPT") {
            return unusable(format!("has key usage {usage}; a symmetric ENCRYPT_DECRYPT key is needed"));
        }
        if let Some(spec) = meta.key_spec.or(meta.customer_master_key_spec).filter(|s| s != "SYMMETRIC_DEFAULT") {
            return unusable(format!("has key spec {spec}; a SYMMETRIC_DEFAULT key is needed"));
        }
        match Arn::key_region(&arn) {
            Some(r) if r == self.region => Ok(arn),
            Some(r) => Err(KmsError::Config(format!(
                "AWS KMS key {} is {arn}, in region {r}, but region is {}",
                self.key_id, self.region
            ))),
            None => Err(unexpected(op, &self.key_id, "KeyMetadata.Arn is not a key ARN")),
        }
    }

    /// DescribeKey's KeyMetadata.Arn: the key the configured id (an alias
    /// resolved) names now, which Encrypt and GenerateDataKey record.
    ///
    /// Only an alias moved to another key changes it. A rotation of the
    /// key itself (yearly or on demand) keeps its ARN and KMS decrypts
    /// older material transparently, so rows need no re-wrap for it
    /// (`rewrap` would still move them to the newest material).
    fn current_key_id(&self, call: &Call) -> Result<String, KmsError> {
        let arn = self.describe(call)?.arn;
        self.answered_key(Op::DescribeKey, Some(arn))
    }

    /// Encrypt under the configured key.
    fn wrap(&self, key: &KeyBytes, binding: &Binding, call: &Call) -> Result<Wrapped, KmsError> {
        let op = Op::Encrypt;
        if key.is_empty() || key.len() > MAX_PLAINTEXT {
            return Err(KmsError::Refused(format!(
                "AWS KMS Encrypt takes 1 to {MAX_PLAINTEXT} bytes, not {}",
                key.len()
            )));
        }
        let mut b64 = Zeroizing::new(String::with_capacity(key.len().div_ceil(3) * 4));
        STANDARD.encode_string(key.as_bytes(), &mut b64);
        let context = binding.context();
        let body = KmsRequest {
            key_id: &self.key_id,
            plaintext: Some(&b64),
            encryption_context: Some(context_map(&context)),
            ..Default::default()
        }
        .body();
        let answer = self.call_kms(op, &self.key_id, &body, call)?;
        let out: KmsAnswer = read_answer(op, &self.key_id, &answer)?;
        let wrapped = decode_blob(op, &self.key_id, out.ciphertext_blob)?;
        Ok(Wrapped { key_id: self.answered_key(op, out.key_id)?, wrapped })
    }

    /// Decrypt with exactly the key that wrapped the row (KMS refuses
    /// ciphertext of any other), and the row's binding as context.
    fn unwrap(&self, wrapped_by: &str, wrapped: &[u8], binding: &Binding, call: &Call) -> Result<KeyBytes, KmsError> {
        let op = Op::Decrypt;
        self.own_row(wrapped_by, wrapped)?;
        let blob = STANDARD.encode(wrapped);
        let context = binding.context();
        let body = KmsRequest {
            key_id: wrapped_by,
            ciphertext_blob: Some(&blob),
            encryption_context: Some(context_map(&context)),
            ..Default::default()
        }
        .body();
        let answer = self.call_kms(op, wrapped_by, &body, call)?;
        let out: KmsAnswer = read_answer(op, wrapped_by, &answer)?;
        decode_key(op, wrapped_by, out.plaintext.ok_or_else(|| unexpected(op, wrapped_by, "no Plaintext"))?)
    }

    /// ReEncrypt from the row's key (SourceKeyId: AWS refuses ciphertext of
    /// another key) to the configured one, an alias resolving to its
    /// current target, with the binding as both contexts: the key never
    /// leaves KMS. Errors are reported under the row's key, as for unwrap.
    /// IAM: kms:ReEncryptFrom on the row's key, kms:ReEncryptTo on the
    /// configured one (`kms:ReEncrypt*` grants both).
    fn rewrap(&self, wrapped_by: &str, wrapped: &[u8], binding: &Binding, call: &Call) -> Result<Wrapped, KmsError> {
        let op = Op::ReEncrypt;
        self.own_row(wrapped_by, wrapped)?;
        let blob = STANDARD.encode(wrapped);
        let context = binding.context();
        let request = ReEncryptRequest {
            ciphertext_blob: &blob,
            source_key_id: wrapped_by,
            source_encryption_context: context_map(&context),
            destination_key_id: &self.key_id,
            destination_encryption_context: context_map(&context),
        };
        // No key material in it: a plain buffer will do.
        let body = serde_json::to_vec(&request).expect("a map of strings always serializes");
        let answer = self.call_kms(op, wrapped_by, &body, call)?;
        let out: KmsAnswer = read_answer(op, wrapped_by, &answer)?;
        let wrapped = decode_blob(op, wrapped_by, out.ciphertext_blob)?;
        Ok(Wrapped { key_id: self.answered_key(op, out.key_id)?, wrapped })
    }

    /// GenerateDataKey: KMS makes the key and wraps it in one call.
    fn generate(&self, len: usize, binding: &Binding, call: &Call) -> Result<(KeyBytes, Wrapped), KmsError> {
        let op = Op::GenerateDataKey;
        if !(1..=MAX_DATA_KEY).contains(&len) {
            return Err(KmsError::Refused(format!(
                "AWS KMS GenerateDataKey makes 1 to {MAX_DATA_KEY} bytes, not {len}"
            )));
        }
        let context = binding.context();
        let body = KmsRequest {
            key_id: &self.key_id,
            number_of_bytes: Some(len),
            encryption_context: Some(context_map(&context)),
            ..Default::default()
        }
        .body();
        let answer = self.call_kms(op, &self.key_id, &body, call)?;
        let out: KmsAnswer = read_answer(op, &self.key_id, &answer)?;
        let key =
            decode_key(op, &self.key_id, out.plaintext.ok_or_else(|| unexpected(op, &self.key_id, "no Plaintext"))?)?;
        if key.len() != len {
            return Err(unexpected(op, &self.key_id, &format!("{} bytes instead of {len}", key.len())));
        }
        let wrapped = decode_blob(op, &self.key_id, out.ciphertext_blob)?;
        Ok((key, Wrapped { key_id: self.answered_key(op, out.key_id)?, wrapped }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn config_error(v: serde_json::Value) -> String {
        match AwsConfig::parse(&v) {
            Err(KmsError::Config(m)) => m,
            other => panic!("{v}: {other:?}"),
        }
    }

    #[test]
    fn config_accepts_each_form_of_key_id() {
        for key_id in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/vault/prod_1",
            ARN,
            "arn:aws:kms:eu-west-1:111122223333:alias/vault",
        ] {
            let c = AwsConfig::parse(&json!({"region": "eu-west-1", "key_id": key_id})).unwrap();
            assert_eq!(c.key_id, key_id);
        }
        let c = AwsConfig::parse(&json!({
            "region": "eu-west-1", "key_id": "alias/v", "endpoint": "http://127.0.0.1:4566", "ca_file": "/etc/ca.pem"
        }))
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    }

    #[test]
    fn config_refuses_what_it_cannot_use() {
        assert!(config_error(json!("eu-west-1")).contains("JSON object"));
        assert!(config_error(json!({"key_id": "alias/v"})).contains("region is required"));
        assert!(config_error(json!({"region": "eu-west-1"})).contains("key_id is required"));
        let m = config_error(json!({"region": "eu-west-1", "key_id": "alias/v", "secret_access_key": "hush"}));
        assert!(m.contains("unknown config key \"secret_access_key\"") && !m.contains("hush"), "{m}");
        assert!(config_error(json!({"region": "eu-west-1", "key_id": 5})).contains("key_id must be a string"));
        for region in ["", "EU-WEST-1", "eu-west-1.evil.com/", "-eu"] {
            assert!(
                config_error(json!({"region": region, "key_id": "alias/v"})).contains("not an AWS region"),
                "{region}"
            );
        }
        for key_id in
            ["", "alias/", "alias/has space", "arn:aws:s3:::bucket", "arn:aws:kms:eu-west-1:1:grant/x", "key id"]
        {
            assert!(
                config_error(json!({"region": "eu-west-1", "key_id": key_id})).contains("is not a KMS key id"),
                "{key_id}"
            );
        }
        let m = config_error(json!({"region": "us-east-1", "key_id": ARN}));
        assert!(m.contains("in region eu-west-1, but region is us-east-1"), "{m}");
        assert!(config_error(json!({"region": "eu-west-1", "key_id": "alias/v", "endpoint": "http://10.0.0.1"}))
            .contains("plain http"));
        assert!(config_error(json!({"region": "eu-west-1", "key_id": "alias/v", "endpoint": "https://h/?x=1"}))
            .contains("query"));
        assert!(
            config_error(json!({"region": "eu-west-1", "key_id": "alias/v", "ca_file": "ca.pem"})).contains("absolute")
        );
        assert!(matches!(check_config(&json!({"region": "eu-west-1"})), Err(KmsError::Config(_))));
    }

    #[test]
    fn the_endpoint_is_configured_else_from_the_environment_else_regional() {
        let c = AwsConfig::parse(&json!({"region": "eu-west-1", "key_id": "alias/v"})).unwrap();
        let none = Env::from_pairs::<&str, &str>([]);
        assert_eq!(c.endpoint(&none).unwrap(), "https://kms.eu-west-1.amazonaws.com/");
        let general = Env::from_pairs([("AWS_ENDPOINT_URL", "http://127.0.0.1:1")]);
        assert_eq!(c.endpoint(&general).unwrap(), "http://127.0.0.1:1/");
        let both = Env::from_pairs([
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:2"),
        ]);
        assert_eq!(c.endpoint(&both).unwrap(), "http://127.0.0.1:2/");
        let bad = Env::from_pairs([("AWS_ENDPOINT_URL_KMS", "http://kms.example")]);
        assert!(matches!(c.endpoint(&bad), Err(KmsError::Config(m)) if m.contains("AWS_ENDPOINT_URL_KMS")));
        let configured = AwsConfig { endpoint: Some("https://vpce.example/".into()), ..c.clone() };
        assert_eq!(configured.endpoint(&both).unwrap(), "https://vpce.example/");
        let china = AwsConfig { region: "cn-north-1".into(), ..c };
        assert_eq!(china.endpoint(&none).unwrap(), "https://kms.cn-north-1.amazonaws.com.cn/");
    }

    #[test]
    fn only_a_kms_key_arn_of_this_region_is_unwrapped() {
        let kms = AwsKms::from_config_in(
            &json!({"region": "eu-west-1", "key_id": "alias/v"}),
            Duration::from_secs(1),
            Env::from_pairs::<&str, &str>([]),
        )
        .unwrap();
        let binding = Binding {
            scheme: crate::aad::RingKeyBinding::V2,
            group: &[1; 16],
            version: 1,
            purpose: "p",
            key_bytes: 32,
        };
        for other in [
            "local:sha256:00",
            "alias/v",
            "arn:aws:kms:eu-west-1:111122223333:alias/v",
            "arn:aws:kms:us-east-1:111122223333:key/1234",
            "transit:vault:3",
        ] {
            let unwrapped = kms.unwrap(other, b"x", &binding, &Call::patient()).map(|_| ());
            let rewrapped = kms.rewrap(other, b"x", &binding, &Call::patient()).map(|_| ());
            for r in [unwrapped, rewrapped] {
                match r {
                    Err(KmsError::WrongMasterKey { wrapped_by, configured }) => {
                        assert_eq!((wrapped_by.as_str(), configured.as_str()), (other, "alias/v"))
                    }
                    r => panic!("{other}: {r:?}"),
                }
            }
        }
        assert!(
            matches!(kms.unwrap(ARN, b"", &binding, &Call::patient()), Err(KmsError::WrappedKeyCorrupt { key_id }) if key_id == ARN)
        );
        let too_long = vec![1u8; MAX_CIPHERTEXT + 1];
        for wrapped in [&b""[..], &too_long] {
            assert!(
                matches!(kms.rewrap(ARN, wrapped, &binding, &Call::patient()), Err(KmsError::WrappedKeyCorrupt { key_id }) if key_id == ARN)
            );
        }
        assert!(matches!(kms.generate(0, &binding, &Call::patient()), Err(KmsError::Refused(_))));
        assert!(matches!(kms.generate(1025, &binding, &Call::patient()), Err(KmsError::Refused(_))));
    }

    #[test]
    fn request_bodies_carry_the_binding_as_encryption_context() {
        let binding = Binding {
            scheme: crate::aad::RingKeyBinding::V2,
            group: &[0xab; 16],
            version: 7,
            purpose: "export",
            key_bytes: 32,
        };
        let context = binding.context();
        let body = KmsRequest {
            key_id: "alias/v",
            number_of_bytes: Some(32),
            encryption_context: Some(context_map(&context)),
            ..Default::default()
        }
        .body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"KeyId": "alias/v", "NumberOfBytes": 32, "EncryptionContext": {
                "secret_vault:group": "ab".repeat(16), "secret_vault:version": "7",
                "secret_vault:purpose": "export", "secret_vault:key_bytes": "32"}})
        );
        assert!(body.capacity() >= body.len());
    }

    #[test]
    fn a_rewrap_is_one_signed_re_encrypt_and_records_the_destination_arn() {
        const NEW: &str = "arn:aws:kms:eu-west-1:111122223333:key/new";
        let (port, h) = fake_kms(
            200,
            r#"{"CiphertextBlob":"AQID","KeyId":"arn:aws:kms:eu-west-1:111122223333:key/new","SourceKeyId":"x"}"#,
            1,
        );
        let binding =
            Binding { scheme: crate::aad::RingKeyBinding::V2, group: &[1; 16], version: 2, purpose: "p", key_bytes: 32 };
        let w = kms_at(port).rewrap(ARN, b"old", &binding, &Call::patient()).unwrap();
        assert_eq!(w, Wrapped { key_id: NEW.into(), wrapped: vec![1, 2, 3] });
        let heads = h.join().unwrap();
        assert!(heads[0].contains("x-amz-target: trentservice.reencrypt"), "{}", heads[0]);

        let context = binding.context();
        let request = ReEncryptRequest {
            ciphertext_blob: "b2xk",
            source_key_id: ARN,
            source_encryption_context: context_map(&context),
            destination_key_id: "alias/v",
            destination_encryption_context: context_map(&context),
        };
        let ctx = json!({"secret_vault:group": "01".repeat(16), "secret_vault:version": "2",
                         "secret_vault:purpose": "p", "secret_vault:key_bytes": "32"});
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"CiphertextBlob": "b2xk", "SourceKeyId": ARN, "SourceEncryptionContext": ctx,
                   "DestinationKeyId": "alias/v", "DestinationEncryptionContext": ctx})
        );
    }

    /// A KMS that answers every request with `status` and `body`, and
    /// records the requests' heads.
    fn fake_kms(status: u16, body: &'static str, connections: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for s in l.incoming().take(connections) {
                let mut s = s.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&req).contains("\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0);
                    req.extend_from_slice(&buf[..n]);
                }
                heads.push(String::from_utf8_lossy(&req).split("\r\n\r\n").next().unwrap().to_ascii_lowercase());
                let reply =
                    format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                s.write_all(reply.as_bytes()).unwrap();
            }
            heads
        });
        (port, h)
    }

    fn kms_at(port: u16) -> AwsKms {
        let env = Env::from_pairs([("AWS_ACCESS_KEY_ID", "AKIDTEST"), ("AWS_SECRET_ACCESS_KEY", "secret")]);
        let config =
            json!({"region": "eu-west-1", "key_id": "alias/v", "endpoint": format!("http://127.0.0.1:{port}")});
        AwsKms::from_config_in(&config, Duration::from_secs(1), env).unwrap()
    }

    #[test]
    fn throttling_is_retried_with_signed_requests_and_reported_when_attempts_run_out() {
        let (port, h) = fake_kms(400, r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#, 3);
        let r = kms_at(port).check(&Call::patient());
        assert!(matches!(&r, Err(KmsError::Throttled(m)) if m.contains("Rate exceeded")), "{r:?}");
        let heads = h.join().unwrap();
        assert_eq!(heads.len(), 3, "three attempts");
        for head in heads {
            assert!(head.starts_with("post / "), "{head}");
            assert!(head.contains("x-amz-target: trentservice.describekey"), "{head}");
            assert!(head.contains("content-type: application/x-amz-json-1.1"), "{head}");
            assert!(head.contains("x-amz-date: "), "{head}");
            assert!(head.contains("authorization: aws4-hmac-sha256 credential=akidtest/"), "{head}");
            assert!(head.contains("/eu-west-1/kms/aws4_request"), "{head}");
        }
    }

    #[test]
    fn a_refusal_is_not_retried() {
        let (port, h) = fake_kms(400, r#"{"__type":"DisabledException","message":"arn is disabled."}"#, 1);
        let r = kms_at(port).check(&Call::patient());
        assert!(matches!(&r, Err(KmsError::KeyUnusable(m)) if m.contains("enable the key")), "{r:?}");
        assert_eq!(h.join().unwrap().len(), 1);
    }

    #[test]
    fn describe_key_refuses_keys_that_cannot_wrap() {
        let meta = |state: &str, usage: &str, spec: &str| {
            format!(
                r#"{{"KeyMetadata":{{"Arn":"{ARN}","KeyState":"{state}","KeyUsage":"{usage}","KeySpec":"{spec}"}}}}"#
            )
        };
        for (body, expect) in [
            (meta("Enabled", "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT"), None),
            (meta("Disabled", "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT"), Some("state Disabled")),
            (meta("PendingDeletion", "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT"), Some("cancel the deletion")),
            (meta("Enabled", "SIGN_VERIFY", "RSA_2048"), Some("key usage SIGN_VERIFY")),
            (meta("Enabled", "ENCRYPT_DECRYPT", "RSA_2048"), Some("key spec RSA_2048")),
        ] {
            let (port, h) = fake_kms(200, Box::leak(body.into_boxed_str()), 1);
            match (kms_at(port).check(&Call::patient()), expect) {
                (Ok(arn), None) => assert_eq!(arn, ARN),
                (Err(KmsError::KeyUnusable(m)), Some(text)) => assert!(m.contains(text) && m.contains(ARN), "{m}"),
                (r, _) => panic!("{expect:?}: {r:?}"),
            }
            h.join().unwrap();
        }
    }

    #[test]
    fn unreadable_answers_do_not_quote_their_values() {
        let e = read_answer::<KmsAnswer>(Op::Decrypt, ARN, br#"{"KeyId": 5, "Plaintext": "c2VjcmV0"}"#).err().unwrap();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        let e = read_answer::<KmsAnswer>(Op::Decrypt, ARN, br#"{"Plaintext": ["c2VjcmV0"]}"#).err().unwrap();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        assert!(decode_key(Op::Decrypt, ARN, "!!").is_err());
        assert_eq!(decode_key(Op::Decrypt, ARN, "AAECAw==").unwrap().as_bytes(), &[0, 1, 2, 3]);
    }
}
