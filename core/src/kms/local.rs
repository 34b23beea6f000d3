//! The `local` provider: a 32-byte master key in a file. For development and
//! tests only: the key lives beside the data it protects.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::KmsProvider;
use crate::aead::Algorithm;
use crate::keys::KeyBytes;
use crate::KmsError;

const WRAP_FORMAT_V1: u8 = 0x01;
const WRAP_LABEL: &[u8] = b"secret_vault/local-wrap/v1";
const FINGERPRINT_LABEL: &[u8] = b"secret_vault/local-master-key/v1";
const MAX_KEY_FILE_LEN: u64 = 4096;

pub struct LocalKms {
    key: KeyBytes,
    id: String,
}

/// Outcome of `LocalKms::ensure_key_file`.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyFile {
    Created,
    Existing,
}

impl LocalKms {
    pub fn from_key(key: KeyBytes) -> Result<Self, KmsError> {
        if key.len() != 32 {
            return Err(KmsError::Config(format!(
                "local master key must be 32 bytes, got {}",
                key.len()
            )));
        }
        let mut h = Sha256::new();
        h.update(FINGERPRINT_LABEL);
        h.update(key.as_bytes());
        let id = format!("local:sha256:{}", hex::encode(h.finalize()));
        Ok(LocalKms { key, id })
    }

    /// Reads a master key file: 64 hex digits, base64 of 32 bytes, or 32 raw
    /// bytes. Refuses files readable by group or others, like PostgreSQL does
    /// for its TLS key.
    pub fn from_file(path: &Path) -> Result<Self, KmsError> {
        let shown = path.display();
        let meta = fs::metadata(path).map_err(|e| {
            KmsError::Config(format!("cannot read local master key file \"{shown}\": {e}"))
        })?;
        if !meta.is_file() {
            return Err(KmsError::Config(format!("local master key \"{shown}\" is not a regular file")));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KmsError::Config(format!(
                "local master key file \"{shown}\" has group or world access; chmod 600 it"
            )));
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KmsError::Config(format!("local master key file \"{shown}\" is too large")));
        }
        let raw = Zeroizing::new(fs::read(path).map_err(|e| {
            KmsError::Config(format!("cannot read local master key file \"{shown}\": {e}"))
        })?);
        let key = parse_key_material(&raw).ok_or_else(|| {
            KmsError::Config(format!(
                "local master key file \"{shown}\" must hold 32 bytes: 64 hex digits, base64, or raw"
            ))
        })?;
        Self::from_key(key)
    }

    /// Creates a new random key file with mode 0600 unless one exists.
    /// Uses O_EXCL so two processes racing here never overwrite each other.
    pub fn ensure_key_file(path: &Path) -> Result<KeyFile, KmsError> {
        let key = KeyBytes::random(32);
        let mut text = Zeroizing::new(hex::encode(key.as_bytes()));
        text.push('\n');
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut f) => {
                f.write_all(text.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| KmsError::Config(format!("cannot write \"{}\": {e}", path.display())))?;
                Ok(KeyFile::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(KeyFile::Existing),
            Err(e) => Err(KmsError::Config(format!(
                "cannot create local master key file \"{}\": {e}",
                path.display()
            ))),
        }
    }
}

fn parse_key_material(raw: &[u8]) -> Option<KeyBytes> {
    if raw.len() == 32 {
        return Some(KeyBytes::from_slice(raw));
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() == 64 {
        if let Ok(bytes) = hex::decode(text) {
            return Some(KeyBytes::from_vec(bytes));
        }
    }
    let bytes = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text).ok()?);
    (bytes.len() == 32).then(|| KeyBytes::from_slice(&bytes))
}

fn wrap_aad(aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(WRAP_LABEL.len() + aad.len());
    v.extend_from_slice(WRAP_LABEL);
    v.extend_from_slice(aad);
    v
}

impl KmsProvider for LocalKms {
    fn provider(&self) -> &'static str {
        "local"
    }

    fn key_id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, key: &KeyBytes, aad: &[u8]) -> Result<Vec<u8>, KmsError> {
        let alg = Algorithm::Aes256GcmSiv;
        let master = self.key.as_aead_key().map_err(|e| KmsError::Config(e.to_string()))?;
        let nonce = alg.random_nonce();
        let sealed = alg
            .seal(master, &nonce, &wrap_aad(aad), key.as_bytes())
            .map_err(|e| KmsError::Refused(e.to_string()))?;
        let mut out = Vec::with_capacity(1 + nonce.len() + sealed.len());
        out.push(WRAP_FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, wrapped_by: &str, wrapped: &[u8], aad: &[u8]) -> Result<KeyBytes, KmsError> {
        if wrapped_by != self.id {
            return Err(KmsError::WrongMasterKey {
                wrapped_by: wrapped_by.to_string(),
                configured: self.id.clone(),
            });
        }
        let corrupt = || KmsError::WrappedKeyCorrupt { key_id: self.id.clone() };
        let alg = Algorithm::Aes256GcmSiv;
        if wrapped.len() < 1 + alg.nonce_len() || wrapped[0] != WRAP_FORMAT_V1 {
            return Err(corrupt());
        }
        let (nonce, sealed) = wrapped[1..].split_at(alg.nonce_len());
        let master = self.key.as_aead_key().map_err(|e| KmsError::Config(e.to_string()))?;
        alg.open(master, nonce, &wrap_aad(aad), sealed)
            .map(KeyBytes::from_vec)
            .map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kms() -> LocalKms {
        LocalKms::from_key(KeyBytes::random(32)).unwrap()
    }

    #[test]
    fn wrap_unwrap_round_trip_bound_to_aad() {
        let k = kms();
        let ring = KeyBytes::random(32);
        let w = k.wrap(&ring, b"g1/v1").unwrap();
        assert_eq!(k.unwrap(k.key_id(), &w, b"g1/v1").unwrap(), ring);
        assert!(matches!(k.unwrap(k.key_id(), &w, b"g1/v2"), Err(KmsError::WrappedKeyCorrupt { .. })));
    }

    #[test]
    fn another_master_key_is_reported_as_wrong_master_key() {
        let a = kms();
        let b = kms();
        let w = a.wrap(&KeyBytes::random(32), b"x").unwrap();
        match b.unwrap(a.key_id(), &w, b"x") {
            Err(KmsError::WrongMasterKey { wrapped_by, configured }) => {
                assert_eq!(wrapped_by, a.key_id());
                assert_eq!(configured, b.key_id());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tampered_or_truncated_wrapped_key_is_corrupt() {
        let k = kms();
        let mut w = k.wrap(&KeyBytes::random(32), b"x").unwrap();
        for cut in [0, 1, 12, w.len() - 1] {
            assert!(matches!(k.unwrap(k.key_id(), &w[..cut], b"x"), Err(KmsError::WrappedKeyCorrupt { .. })));
        }
        let last = w.len() - 1;
        w[last] ^= 1;
        assert!(matches!(k.unwrap(k.key_id(), &w, b"x"), Err(KmsError::WrappedKeyCorrupt { .. })));
    }

    #[test]
    fn fingerprint_is_stable_and_does_not_contain_the_key() {
        let key = KeyBytes::from_slice(&[0x5a; 32]);
        let a = LocalKms::from_key(key.clone()).unwrap();
        let b = LocalKms::from_key(key).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert!(a.key_id().starts_with("local:sha256:"));
        assert!(!a.key_id().contains(&hex::encode([0x5a; 32])));
        assert!(!a.key_id().contains("5a5a5a5a"));
    }

    #[test]
    fn key_file_is_created_0600_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        assert_eq!(LocalKms::ensure_key_file(&p).unwrap(), KeyFile::Created);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = LocalKms::from_file(&p).unwrap();
        assert_eq!(LocalKms::ensure_key_file(&p).unwrap(), KeyFile::Existing);
        assert_eq!(LocalKms::from_file(&p).unwrap().key_id(), first.key_id());
    }

    #[test]
    fn key_file_formats_hex_base64_raw_are_equivalent() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = [9u8; 32];
        let write = |name: &str, content: &[u8]| {
            let p = dir.path().join(name);
            fs::write(&p, content).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            LocalKms::from_file(&p).unwrap().key_id().to_string()
        };
        let a = write("hex", format!("{}\n", hex::encode(bytes)).as_bytes());
        let b = write("b64", base64::engine::general_purpose::STANDARD.encode(bytes).as_bytes());
        let c = write("raw", &bytes);
        assert_eq!(a, b);
        assert_eq!(b, c);
    }

    #[test]
    fn key_file_errors_are_config_errors_without_key_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let missing = LocalKms::from_file(&dir.path().join("nope"));
        assert!(matches!(missing, Err(KmsError::Config(_))));

        let open = dir.path().join("open");
        fs::write(&open, hex::encode([1u8; 32])).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        match LocalKms::from_file(&open) {
            Err(KmsError::Config(m)) => assert!(m.contains("chmod 600"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }

        let short = dir.path().join("short");
        fs::write(&short, "abcd").unwrap();
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
        match LocalKms::from_file(&short) {
            Err(KmsError::Config(m)) => assert!(!m.contains("abcd"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
