//! The `local` provider: a 32-byte master key in a file. For development and
//! tests only: the key lives beside the data it protects.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Binding, Call, KmsProvider, Wrapped};
use crate::aead::Algorithm;
use crate::keys::KeyBytes;
use crate::secure::SecureBox;
use crate::KmsError;

const WRAP_FORMAT_V1: u8 = 0x01;
const WRAP_LABEL: &[u8] = b"secret_vault/local-wrap/v1";
const FINGERPRINT_LABEL: &[u8] = b"secret_vault/local-master-key/v1";
const MAX_KEY_FILE_LEN: u64 = 4096;

pub struct LocalKms {
    /// Cached for the life of a backend, so on protected pages: kept out
    /// of core dumps and (where RLIMIT_MEMLOCK allows) swap, wiped on drop.
    key: SecureBox<[u8; 32]>,
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
        let mut secure = SecureBox::<[u8; 32]>::zeroed().map_err(|e| KmsError::Config(e.to_string()))?;
        secure.copy_from_slice(key.as_bytes());
        Ok(LocalKms { key: secure, id })
    }

    /// Reads a master key file: 64 hex digits, base64 of 32 bytes, or 32 raw
    /// bytes. Refuses files readable by group or others, like PostgreSQL does
    /// for its TLS key.
    pub fn from_file(path: &Path) -> Result<Self, KmsError> {
        let shown = path.display();
        let meta = fs::metadata(path).map_err(|e| {
            let id_path = id_file(path);
            if e.kind() == std::io::ErrorKind::NotFound && id_path.exists() {
                return lost_key(path, &id_path);
            }
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

    /// Makes sure a key file exists at `path`, creating a random one on
    /// first use. Beside it, `<path>.id` records the id (fingerprint, not
    /// the key) of the key this data directory uses. If that record exists
    /// but the key file does not, the key was lost: keys wrapped by it can
    /// never be unwrapped by a new one, so none is made and the error says
    /// how to recover. Creation is atomic and durable: the key is written
    /// and fsynced under a temporary name, linked into place (never over an
    /// existing file), and the directory is fsynced, so a crash leaves
    /// either no key file or a complete one.
    pub fn ensure_key_file(path: &Path) -> Result<KeyFile, KmsError> {
        let id_path = id_file(path);
        remove_leftovers(path);
        if path.exists() {
            let kms = Self::from_file(path)?;
            match fs::read_to_string(&id_path) {
                Ok(recorded) if recorded.trim() == kms.key_id() => {}
                Ok(recorded) => {
                    // Replaced by hand: keys wrapped by the recorded one will
                    // not unwrap. Said at every start until resolved.
                    return Err(KmsError::Config(format!(
                        "local master key file \"{}\" holds key {}, but this data directory recorded key {}; \
                         keys wrapped by the recorded one will not unwrap. Put the right file back, or, if the \
                         change is intended, delete \"{}\"",
                        path.display(),
                        kms.key_id(),
                        recorded.trim(),
                        id_path.display()
                    )));
                }
                // Written by an older version, or restored without its
                // record: adopt it, so that losing it later is noticed.
                Err(_) => write_atomically(&id_path, format!("{}\n", kms.key_id()).as_bytes(), 0o600)?,
            }
            return Ok(KeyFile::Existing);
        }
        if id_path.exists() {
            return Err(lost_key(path, &id_path));
        }
        let key = KeyBytes::random(32);
        // Hex into a zeroizing buffer: `hex::encode` would leave a copy
        // of the key in a freed String.
        let mut text = Zeroizing::new([0u8; 65]);
        hex::encode_to_slice(key.as_bytes(), &mut text[..64]).map_err(|e| KmsError::Config(e.to_string()))?;
        text[64] = b'\n';
        match write_atomically(path, &text[..], 0o600) {
            Ok(()) => {}
            Err(e) if path.exists() => {
                // Another process won the race; its key stands.
                let _ = e;
                return Ok(KeyFile::Existing);
            }
            Err(e) => return Err(e),
        }
        let id = Self::from_key(key)?.id;
        write_atomically(&id_path, format!("{id}\n").as_bytes(), 0o600)?;
        Ok(KeyFile::Created)
    }
}

/// Deletes temporary files a crash between writing and linking left
/// beside the key file: they may hold a whole key.
fn remove_leftovers(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut prefix = name.to_os_string();
    prefix.push(".tmp.");
    let prefix = prefix.to_string_lossy().into_owned();
    let id_prefix = format!("{}.id.tmp.", name.to_string_lossy());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) || n.starts_with(&id_prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Where the id of a data directory's local key is recorded.
pub fn id_file(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".id");
    path.with_file_name(name)
}

fn lost_key(path: &Path, id_path: &Path) -> KmsError {
    let id = fs::read_to_string(id_path).map(|s| s.trim().to_string()).unwrap_or_default();
    KmsError::Config(format!(
        "local master key file \"{}\" is missing, but this data directory used key {id}; \
         a new key cannot unwrap keys wrapped by it, so none is created. Restore the file from a backup; \
         to start over without the old data, delete \"{}\" and restart",
        path.display(),
        id_path.display()
    ))
}

/// Writes `bytes` to a new file at `path` (never replacing one): a
/// temporary file in the same directory, fsynced, hard-linked into place,
/// then the directory fsynced.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KmsError> {
    let err = |what: &str, e: std::io::Error| KmsError::Config(format!("cannot {what} \"{}\": {e}", path.display()));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err("write", e));
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked.map_err(|e| err("create", e))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err("sync the directory of", e))
}

fn parse_key_material(raw: &[u8]) -> Option<KeyBytes> {
    if raw.len() == 32 {
        return Some(KeyBytes::from_slice(raw));
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() == 64 {
        // Into a fixed buffer: `hex::decode` grows its Vec as it goes,
        // leaving freed, unwiped copies of the first key bytes behind.
        let mut bytes = Zeroizing::new([0u8; 32]);
        if hex::decode_to_slice(text, &mut bytes[..]).is_ok() {
            return Some(KeyBytes::from_slice(&bytes[..]));
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

/// A registered `local` key's config: `{}` (the server's configured key
/// file) or `{"key_file": "/path"}`.
pub fn check_config(config: &serde_json::Value) -> Result<(), KmsError> {
    let obj = config.as_object().ok_or_else(|| KmsError::Config("config must be a JSON object".into()))?;
    for (k, v) in obj {
        match (k.as_str(), v) {
            ("key_file", serde_json::Value::String(p)) if Path::new(p).is_absolute() => {}
            ("key_file", _) => return Err(KmsError::Config("key_file must be an absolute path".into())),
            (other, _) => return Err(KmsError::Config(format!("unknown config key \"{other}\" for provider local"))),
        }
    }
    Ok(())
}

impl LocalKms {
    /// The fingerprint rows record: a SHA-256 of the key, never the key.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    fn seal(&self, key: &KeyBytes, aad: &[u8]) -> Result<Vec<u8>, KmsError> {
        let alg = Algorithm::Aes256GcmSiv;
        let master: &[u8; 32] = &self.key;
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
}

impl KmsProvider for LocalKms {
    fn provider(&self) -> &'static str {
        "local"
    }

    fn check(&self, _call: &Call) -> Result<String, KmsError> {
        Ok(self.id.clone())
    }

    /// One key per provider, so always its fingerprint.
    fn current_key_id(&self, _call: &Call) -> Result<String, KmsError> {
        Ok(self.id.clone())
    }

    fn wrap(&self, key: &KeyBytes, binding: &Binding, _call: &Call) -> Result<Wrapped, KmsError> {
        Ok(Wrapped { key_id: self.id.clone(), wrapped: self.seal(key, &binding.aad())? })
    }

    /// A fresh seal of the same key: the plaintext only passes through this
    /// process, which holds the master key anyway. A row of another key
    /// file is `WrongMasterKey` (moving it takes two providers, in the glue).
    fn rewrap(&self, wrapped_by: &str, wrapped: &[u8], binding: &Binding, call: &Call) -> Result<Wrapped, KmsError> {
        let key = self.unwrap(wrapped_by, wrapped, binding, call)?;
        self.wrap(&key, binding, call)
    }

    fn unwrap(&self, wrapped_by: &str, wrapped: &[u8], binding: &Binding, _call: &Call) -> Result<KeyBytes, KmsError> {
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
        let master: &[u8; 32] = &self.key;
        alg.open(master, nonce, &wrap_aad(&binding.aad()), sealed)
            .map(KeyBytes::from_vec)
            .map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aad::RingKeyBinding;

    fn bind(version: u32) -> Binding<'static> {
        Binding { scheme: RingKeyBinding::V2, group: &[9; 16], version, purpose: "export", key_bytes: 32 }
    }

    fn kms() -> LocalKms {
        LocalKms::from_key(KeyBytes::random(32)).unwrap()
    }

    #[test]
    fn wrap_unwrap_round_trip_bound_to_aad() {
        let k = kms();
        let ring = KeyBytes::random(32);
        let w = k.wrap(&ring, &bind(1), &Call::patient()).unwrap().wrapped;
        assert_eq!(k.unwrap(k.key_id(), &w, &bind(1), &Call::patient()).unwrap(), ring);
        assert!(matches!(k.unwrap(k.key_id(), &w, &bind(2), &Call::patient()), Err(KmsError::WrappedKeyCorrupt { .. })));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn master_key_is_held_on_pages_excluded_from_core_dumps() {
        let k = kms();
        let flags = crate::secure::tests::vm_flags(k.key.addr()).expect("mapping in smaps");
        assert!(flags.iter().any(|f| f == "dd"), "{flags:?}");
    }

    #[test]
    fn another_master_key_is_reported_as_wrong_master_key() {
        let a = kms();
        let b = kms();
        let w = a.wrap(&KeyBytes::random(32), &bind(7), &Call::patient()).unwrap().wrapped;
        match b.unwrap(a.key_id(), &w, &bind(7), &Call::patient()) {
            Err(KmsError::WrongMasterKey { wrapped_by, configured }) => {
                assert_eq!(wrapped_by, a.key_id());
                assert_eq!(configured, b.key_id());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rewrap_reseals_its_own_rows_and_refuses_others() {
        let (old, k) = (kms(), kms());
        let c = Call::patient();
        assert_eq!(k.current_key_id(&c).unwrap(), k.key_id());
        let ring = KeyBytes::random(32);
        let w = k.wrap(&ring, &bind(4), &c).unwrap();
        let again = k.rewrap(&w.key_id, &w.wrapped, &bind(4), &c).unwrap();
        assert_eq!(again.key_id, k.key_id());
        assert_ne!(again.wrapped, w.wrapped, "a fresh nonce");
        assert_eq!(k.unwrap(&again.key_id, &again.wrapped, &bind(4), &c).unwrap(), ring);
        // The source stays valid: a repeated call gives another good wrapping.
        let twice = k.rewrap(&w.key_id, &w.wrapped, &bind(4), &c).unwrap();
        assert_eq!(k.unwrap(&twice.key_id, &twice.wrapped, &bind(4), &c).unwrap(), ring);

        assert!(matches!(k.rewrap(&w.key_id, &w.wrapped, &bind(5), &c), Err(KmsError::WrappedKeyCorrupt { .. })));
        // A row of a previous key file: only the glue, holding both, moves it.
        let o = old.wrap(&ring, &bind(4), &c).unwrap();
        match k.rewrap(&o.key_id, &o.wrapped, &bind(4), &c) {
            Err(KmsError::WrongMasterKey { wrapped_by, configured }) => {
                assert_eq!((wrapped_by.as_str(), configured.as_str()), (old.key_id(), k.key_id()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tampered_or_truncated_wrapped_key_is_corrupt() {
        let k = kms();
        let mut w = k.wrap(&KeyBytes::random(32), &bind(7), &Call::patient()).unwrap().wrapped;
        for cut in [0, 1, 12, w.len() - 1] {
            assert!(matches!(k.unwrap(k.key_id(), &w[..cut], &bind(7), &Call::patient()), Err(KmsError::WrappedKeyCorrupt { .. })));
        }
        let last = w.len() - 1;
        w[last] ^= 1;
        assert!(matches!(k.unwrap(k.key_id(), &w, &bind(7), &Call::patient()), Err(KmsError::WrappedKeyCorrupt { .. })));
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

    #[test]
    fn a_lost_key_file_is_not_replaced_and_the_error_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        assert_eq!(LocalKms::ensure_key_file(&p).unwrap(), KeyFile::Created);
        let id = LocalKms::from_file(&p).unwrap().key_id().to_string();
        assert_eq!(fs::read_to_string(id_file(&p)).unwrap().trim(), id);
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_file(&p).unwrap();
        for e in [LocalKms::ensure_key_file(&p).unwrap_err(), LocalKms::from_file(&p).err().unwrap()] {
            let m = e.to_string();
            assert!(m.contains("is missing") && m.contains(&id) && m.contains("Restore"), "{m}");
        }
        assert!(!p.exists(), "no new key was made");
        // Starting over is a deliberate act: delete the record.
        fs::remove_file(id_file(&p)).unwrap();
        assert_eq!(LocalKms::ensure_key_file(&p).unwrap(), KeyFile::Created);
        assert_ne!(LocalKms::from_file(&p).unwrap().key_id(), id);
    }

    #[test]
    fn an_existing_key_without_a_record_is_adopted_and_no_temporary_files_remain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).unwrap();
        f.write_all(&[5u8; 32]).unwrap();
        drop(f);
        assert_eq!(LocalKms::ensure_key_file(&p).unwrap(), KeyFile::Existing);
        assert!(id_file(&p).exists());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_replaced_key_is_reported_and_crash_leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        assert_eq!(LocalKms::ensure_key_file(&p).unwrap(), KeyFile::Created);
        let leftover = dir.path().join(format!("k.tmp.{}", 99999));
        fs::write(&leftover, b"half a key").unwrap();
        assert_eq!(LocalKms::ensure_key_file(&p).unwrap(), KeyFile::Existing);
        assert!(!leftover.exists(), "a crash leftover is removed");
        fs::remove_file(&p).unwrap();
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).unwrap();
        f.write_all(&[6u8; 32]).unwrap();
        drop(f);
        let m = LocalKms::ensure_key_file(&p).unwrap_err().to_string();
        assert!(m.contains("recorded key") && m.contains("will not unwrap"), "{m}");
    }
}
