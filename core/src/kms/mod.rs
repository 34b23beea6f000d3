//! The KMS seam: how ring keys are wrapped by a master key that never leaves
//! the KMS. Callers hold a `&dyn KmsProvider` and never know which provider
//! is behind it: `local` (a key file), `aws` (AWS KMS) or `transit`
//! (HashiCorp Vault / OpenBao).

pub mod aws;
pub mod http;
pub mod local;
pub mod transit;

use std::time::Duration;

use crate::aad::{self, GroupId, RingKeyBinding};
use crate::keys::KeyBytes;
use crate::KmsError;

pub use local::LocalKms;

/// What a wrapped ring key is bound to: the KMS refuses to unwrap it for any
/// other group, version, purpose or key size, so a row copied elsewhere, or
/// edited, never yields a key.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub scheme: RingKeyBinding,
    pub group: &'a GroupId,
    pub version: u32,
    pub purpose: &'a str,
    pub key_bytes: u32,
}

impl Binding<'_> {
    /// As associated data (the `local` provider, and transit's derived-key
    /// context, which must be bytes).
    pub fn aad(&self) -> Vec<u8> {
        aad::ring_key_bound(self.scheme, self.group, self.version, self.purpose, self.key_bytes)
    }

    /// As a readable encryption context (AWS KMS logs it in CloudTrail, so
    /// an auditor sees which group and version each Decrypt was for).
    pub fn context(&self) -> [(&'static str, String); 4] {
        [
            ("secret_vault:group", hex::encode(self.group)),
            ("secret_vault:version", self.version.to_string()),
            ("secret_vault:purpose", self.purpose.to_string()),
            ("secret_vault:key_bytes", self.key_bytes.to_string()),
        ]
    }
}

/// How one KMS operation may run: bounded in time and attempts, and given
/// up as soon as `interrupted` says the caller was cancelled (query cancel,
/// `statement_timeout`, a shutdown request).
pub struct Call<'a> {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// No retry starts after this much time has passed since the first attempt.
    pub total_budget: Duration,
    pub interrupted: &'a dyn Fn() -> bool,
}

impl Call<'static> {
    /// For tests and tools: a few seconds, three attempts, never interrupted.
    pub fn patient() -> Call<'static> {
        Call {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_attempts: 3,
            total_budget: Duration::from_secs(10),
            interrupted: &|| false,
        }
    }
}

/// A wrapped key and the resolved id of the master key that wrapped it (the
/// key ARN, the transit key and version, the local fingerprint): recorded in
/// the row, so a KMS rotation shows up as rows on older material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub key_id: String,
    pub wrapped: Vec<u8>,
}

pub trait KmsProvider {
    /// Provider kind: `local`, `aws`, `transit`.
    fn provider(&self) -> &'static str;

    /// A live check that the key exists and is usable; returns the resolved
    /// id new wraps will record (an alias becomes the key ARN).
    fn check(&self, call: &Call) -> Result<String, KmsError>;

    /// The id a wrap made now would record, from a live call but without
    /// `check`'s requirements: rows whose id differs are on older material
    /// and are candidates for `rewrap`.
    fn current_key_id(&self, call: &Call) -> Result<String, KmsError>;

    /// Wraps `key` under the master key, bound to `binding`.
    fn wrap(&self, key: &KeyBytes, binding: &Binding, call: &Call) -> Result<Wrapped, KmsError>;

    /// Unwraps a key recorded as wrapped by `wrapped_by`. A row wrapped by
    /// another master key is `WrongMasterKey`, distinct from a row whose bytes
    /// do not authenticate (`WrappedKeyCorrupt`).
    fn unwrap(&self, wrapped_by: &str, wrapped: &[u8], binding: &Binding, call: &Call) -> Result<KeyBytes, KmsError>;

    /// Moves a row's wrapped key (wrapped by `wrapped_by`, bound to
    /// `binding`) to the master key's current material, with the same
    /// binding; remote providers do it inside the KMS, so the key never
    /// comes out. The same checks as `unwrap` apply: another master key's
    /// row is `WrongMasterKey`, bytes that do not authenticate under
    /// `binding` are `WrappedKeyCorrupt`. The source row stays valid, so a
    /// repeated call (an answer lost on the way) simply yields another
    /// wrapping of the same key. Moves between providers are not done here:
    /// unwrap with one, wrap with the other.
    fn rewrap(&self, wrapped_by: &str, wrapped: &[u8], binding: &Binding, call: &Call) -> Result<Wrapped, KmsError>;

    /// A fresh random key of `len` bytes and its wrapped form. Providers with
    /// a native data-key call (GenerateDataKey) override it.
    fn generate(&self, len: usize, binding: &Binding, call: &Call) -> Result<(KeyBytes, Wrapped), KmsError> {
        let key = KeyBytes::random(len);
        let wrapped = self.wrap(&key, binding, call)?;
        Ok((key, wrapped))
    }
}
