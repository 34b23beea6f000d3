//! Where SQL functions get unwrapped ring keys. Today every call unwraps
//! through the KMS; this is the seam where the shared-memory cache slots in,
//! so callers never change.

use pgrx::spi::SpiClient;
use secret_vault_core::aad;
use secret_vault_core::KeyBytes;

use crate::catalog::{self, GroupRow, KeyRow};
use crate::error::{VaultError, VaultResult};
use crate::kms;

fn unwrap(group: &GroupRow, row: &KeyRow) -> VaultResult<KeyBytes> {
    let provider = kms::provider(&group.kms_key, &group.kms_provider)?;
    let aad = aad::ring_key(&group.id, row.version as u32);
    Ok(provider.unwrap(&row.kms_key_id, &row.wrapped, &aad)?)
}

/// The current version and its key.
pub fn current(client: &SpiClient<'_>, group: &GroupRow) -> VaultResult<(i32, KeyBytes)> {
    let row = catalog::current_key_row(client, group, catalog::clock())?;
    let key = unwrap(group, &row)?;
    Ok((row.version, key))
}

/// The key of a given version, pending or older, unless retired.
pub fn at_version(client: &SpiClient<'_>, group: &GroupRow, version: i64) -> VaultResult<KeyBytes> {
    let not_found = || VaultError::VersionNotFound { group: group.name.clone(), version };
    let v = i32::try_from(version).map_err(|_| not_found())?;
    if v < 1 {
        return Err(not_found());
    }
    let row = catalog::key_row_at(client, group, v)?.ok_or_else(not_found)?;
    if row.retired {
        return Err(VaultError::VersionRetired { group: group.name.clone(), version });
    }
    unwrap(group, &row)
}
