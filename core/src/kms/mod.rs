//! The KMS seam: how ring keys are wrapped by a master key that never leaves
//! the KMS. Callers hold a `&dyn KmsProvider` and never know which provider
//! is behind it, so AWS KMS and Vault/OpenBao transit slot in beside `local`.

pub mod local;

use crate::keys::KeyBytes;
use crate::KmsError;

pub use local::LocalKms;

pub trait KmsProvider: Send + Sync {
    /// Provider kind: `local`, `aws`, `transit`.
    fn provider(&self) -> &'static str;

    /// The resolved id of the master key that new wraps use (ARN, transit key
    /// and version, or local fingerprint). Recorded in every wrapped row.
    fn key_id(&self) -> &str;

    /// Wraps `key` under the master key, bound to `aad`.
    fn wrap(&self, key: &KeyBytes, aad: &[u8]) -> Result<Vec<u8>, KmsError>;

    /// Unwraps a key recorded as wrapped by `wrapped_by`. A row wrapped by
    /// another master key is `WrongMasterKey`, distinct from a row whose bytes
    /// do not authenticate (`WrappedKeyCorrupt`).
    fn unwrap(&self, wrapped_by: &str, wrapped: &[u8], aad: &[u8]) -> Result<KeyBytes, KmsError>;

    /// A fresh random key of `len` bytes and its wrapped form. Providers with
    /// a native data-key call (GenerateDataKey, transit datakey) override it.
    fn generate(&self, len: usize, aad: &[u8]) -> Result<(KeyBytes, Vec<u8>), KmsError> {
        let key = KeyBytes::random(len);
        let wrapped = self.wrap(&key, aad)?;
        Ok((key, wrapped))
    }
}
