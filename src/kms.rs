//! Which KMS provider serves a registered KMS key name, cached per backend.
//!
//! Providers are built lazily in each backend (never in shared memory) and
//! rebuilt when their configuration changes, e.g. after a SIGHUP points
//! `secret_vault.local_master_key_file` elsewhere.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use secret_vault_core::kms::local::KeyFile;
use secret_vault_core::kms::{KmsProvider, LocalKms};
use secret_vault_core::KmsError;

use crate::error::{VaultError, VaultResult};
use crate::guc;


thread_local! {
    static LOCAL: RefCell<Option<(PathBuf, Rc<LocalKms>)>> = const { RefCell::new(None) };
}

/// The provider for a registered KMS key, given its provider kind.
pub fn provider(name: &str, kind: &str) -> VaultResult<Rc<dyn KmsProvider>> {
    match kind {
        "local" => Ok(local()?),
        other => Err(VaultError::Kms(KmsError::Config(format!(
            "KMS key \"{name}\" uses provider \"{other}\", which this build does not support yet"
        )))),
    }
}

fn local() -> VaultResult<Rc<LocalKms>> {
    let path = guc::local_master_key_path();
    LOCAL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some((cached_path, kms)) = slot.as_ref() {
            if *cached_path == path {
                return Ok(kms.clone());
            }
        }
        let kms = Rc::new(LocalKms::from_file(&path)?);
        *slot = Some((path, kms.clone()));
        Ok(kms)
    })
}

/// At postmaster start: when no key file is configured, make sure the
/// embedded default exists, and say loudly that it is for development.
pub fn ensure_default_local_key() {
    let configured = guc::LOCAL_MASTER_KEY_FILE
        .get()
        .map(|c| !c.to_bytes().is_empty())
        .unwrap_or(false);
    if configured {
        return;
    }
    let path = guc::local_master_key_path();
    match LocalKms::ensure_key_file(&path) {
        Ok(KeyFile::Created) => pgrx::warning!(
            "secret_vault: created a local master key at \"{}\"; local mode is for development only, \
             configure a KMS for production",
            path.display()
        ),
        Ok(KeyFile::Existing) => pgrx::warning!(
            "secret_vault: using the local master key \"{}\"; local mode is for development only",
            path.display()
        ),
        Err(e) => pgrx::warning!("secret_vault: {e}"),
    }
}
