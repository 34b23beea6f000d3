//! Which KMS provider serves a registered KMS key name, cached per backend,
//! and the counted calls through it (`vault.stats().kms_calls`).
//!
//! Providers are built lazily in each backend (never in shared memory) and
//! rebuilt when their configuration changes, e.g. after a SIGHUP points
//! `secret_vault.local_master_key_file` elsewhere.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use secret_vault_core::aad;
use secret_vault_core::kms::local::KeyFile;
use secret_vault_core::kms::{KmsProvider, LocalKms};
use secret_vault_core::{KeyBytes, KmsError};

use crate::catalog::{GroupRow, KeyRow};
use crate::error::{VaultError, VaultResult};
use crate::{guc, shmem};

thread_local! {
    static LOCAL: RefCell<Option<(PathBuf, Rc<LocalKms>)>> = const { RefCell::new(None) };
}

/// The provider for a registered KMS key, given its provider kind.
fn provider(name: &str, kind: &str) -> VaultResult<Rc<dyn KmsProvider>> {
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

fn counted() {
    shmem::bump(|c| {
        c.kms_calls.fetch_add(1, Ordering::Relaxed);
    });
}

/// Unwraps a stored ring key of `group`. Rows written since 0.2.0 are bound
/// to the group's purpose and key size as the table states them now, so an
/// edited `purpose` or `key_bytes` makes the key fail to unwrap: unusable,
/// never handed out under the other purpose.
pub fn unwrap(group: &GroupRow, row: &KeyRow) -> VaultResult<KeyBytes> {
    let p = provider(&group.kms_key, &group.kms_provider)?;
    counted();
    let aad = aad::ring_key_bound(row.binding, &group.id, row.version as u32, group.purpose.as_str(), group.key_bytes as u32);
    let key = p.unwrap(&row.kms_key_id, &row.wrapped, &aad)?;
    if key.len() != group.key_bytes as usize {
        return Err(VaultError::Kms(KmsError::WrappedKeyCorrupt { key_id: row.kms_key_id.clone() }));
    }
    Ok(key)
}

/// A new ring key for `version` of a group: (wrapping key id, wrapped bytes),
/// bound to the group, version, purpose and key size.
pub fn new_ring_key(
    group_id: &aad::GroupId,
    kms_name: &str,
    kms_kind: &str,
    purpose: secret_vault_core::policy::Purpose,
    key_bytes: usize,
    version: i32,
) -> VaultResult<(String, Vec<u8>)> {
    let p = provider(kms_name, kms_kind)?;
    counted();
    let aad = aad::ring_key_bound(aad::RingKeyBinding::V2, group_id, version as u32, purpose.as_str(), key_bytes as u32);
    let (_key, wrapped) = p.generate(key_bytes, &aad)?;
    Ok((p.key_id().to_string(), wrapped))
}

/// A new ring key for `version` of an existing group (rotation).
pub fn next_ring_key(group: &GroupRow, version: i32) -> VaultResult<(String, Vec<u8>)> {
    new_ring_key(&group.id, &group.kms_key, &group.kms_provider, group.purpose, group.key_bytes as usize, version)
}

/// Wraps an existing ring key of `group` again, bound the 0.2.0 way (group,
/// version, purpose, key size): for rows written by 0.1.0.
pub fn rebind_ring_key(group: &GroupRow, version: i32, key: &KeyBytes) -> VaultResult<(String, Vec<u8>)> {
    let p = provider(&group.kms_key, &group.kms_provider)?;
    counted();
    let aad = aad::ring_key_bound(aad::RingKeyBinding::V2, &group.id, version as u32, group.purpose.as_str(), group.key_bytes as u32);
    let wrapped = p.wrap(key, &aad)?;
    Ok((p.key_id().to_string(), wrapped))
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
