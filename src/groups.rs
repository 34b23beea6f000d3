//! The key-group SQL API (DESIGN.md, "Key groups"). Each function states its
//! volatility, strictness and parallel safety; all are SECURITY INVOKER with
//! a pinned search_path, reachable only through the vault_* roles, check the
//! caller's access rules and are recorded in the audit log, then run as the
//! tables' owner (`access::write`).

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use secret_vault_core::policy::{self, GroupSettings, Purpose, Span};

use crate::catalog::{self, NewGroup};
use crate::error::{require_writable, required, OrRaise, VaultError, VaultResult};
use crate::{access, coherence, identity, kms};
use secret_vault_core::access::Privilege;

/// How often a rotation retries after losing a race for the next version.
const ROTATE_ATTEMPTS: usize = 8;

#[allow(clippy::too_many_arguments)]
fn create_group_impl(
    name: Option<&str>,
    purpose: Option<&str>,
    rotation_interval: Option<Interval>,
    propagation_delay: Option<Interval>,
    ring_size: Option<i32>,
    key_bytes: Option<i32>,
    kms_key: Option<&str>,
) -> VaultResult<()> {
    require_writable("create a key group")?;
    let name = required(name, "name")?;
    let purpose = Purpose::parse(required(purpose, "purpose")?)?;
    let propagation_delay = required(propagation_delay, "propagation_delay")?;
    let settings = GroupSettings {
        purpose,
        rotation_interval: rotation_interval.as_ref().map(catalog::span),
        propagation_delay: catalog::span(&propagation_delay),
        ring_size: required(ring_size, "ring_size")?,
        key_bytes: required(key_bytes, "key_bytes")?,
    };
    policy::validate_name("key group", name)?;
    settings.validate()?;
    if let Some(iv) = &rotation_interval {
        catalog::check_schedule("rotation_interval", iv, true)?;
    }
    catalog::check_schedule("propagation_delay", &propagation_delay, false)?;

    Spi::connect_mut(|client| {
        if catalog::load_group(client, name)?.is_some() {
            return Err(VaultError::GroupExists(name.to_string()));
        }
        let inserted = insert_new_group(client, name, &settings, rotation_interval, propagation_delay, kms_key)?;
        if !inserted {
            return Err(VaultError::GroupExists(name.to_string()));
        }
        coherence::note_write();
        Ok(())
    })
}

/// Creates the group row and its version 1; false if the name was taken
/// meanwhile (by a concurrent transaction that has since committed).
fn insert_new_group(
    client: &mut SpiClient<'_>,
    name: &str,
    settings: &GroupSettings,
    rotation_interval: Option<Interval>,
    propagation_delay: Interval,
    kms_key: Option<&str>,
) -> VaultResult<bool> {
    let kms = catalog::resolve_kms_key(client, kms_key)?;
    let id = secret_vault_core::keys::random_uuid_v4();
    let (key_id, wrapped) = kms::new_ring_key(&id, &kms.spec(), settings.purpose, settings.key_bytes as usize, 1)?;
    let now = catalog::clock();
    let group = NewGroup {
        id,
        name,
        purpose: settings.purpose,
        rotation_interval,
        propagation_delay,
        ring_size: settings.ring_size,
        key_bytes: settings.key_bytes,
        kms_key: &kms.name,
    };
    if !catalog::insert_group(client, &group, now)? {
        return Ok(false);
    }
    catalog::insert_key(client, &id, 1, &kms.name, &key_id, &wrapped, now, true)?;
    Ok(true)
}

/// Creates a group with default settings unless it exists (for the default
/// secrets group, made on first use; a concurrent creator is fine).
pub(crate) fn create_group_in(client: &mut SpiClient<'_>, name: &str, purpose: Purpose) -> VaultResult<()> {
    let settings = GroupSettings {
        purpose,
        rotation_interval: None,
        propagation_delay: Span { months: 0, days: 0, micros: 30_000_000 },
        ring_size: 16,
        key_bytes: 32,
    };
    let delay = Interval::new(0, 0, 30_000_000).map_err(|e| VaultError::Internal(format!("interval: {e:?}")))?;
    insert_new_group(client, name, &settings, None, delay, None)?;
    coherence::note_write();
    Ok(())
}

/// Creates a key group with version 1 active at once.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn create_group(
    name: Option<&str>,
    purpose: default!(Option<&str>, "'export'"),
    rotation_interval: default!(Option<Interval>, "NULL"),
    propagation_delay: default!(Option<Interval>, "'30 seconds'"),
    ring_size: default!(Option<i32>, 16),
    key_bytes: default!(Option<i32>, 32),
    kms_key: default!(Option<&str>, "NULL"),
) {
    let name = required(name, "name").or_raise();
    access::write("create_group", Privilege::Write, name, || {
        create_group_impl(Some(name), purpose, rotation_interval, propagation_delay, ring_size, key_bytes, kms_key)
    })
}

/// Writes version n+1 as pending. The KMS call happens before the version
/// is claimed, so no row lock is held across it; a lost race wraps again.
/// With `due`, only the scheduled rotation for that due time may happen.
pub(crate) fn rotate_impl(
    client: &mut SpiClient<'_>,
    group_name: &str,
    due: Option<TimestampWithTimeZone>,
) -> VaultResult<Option<i32>> {
    for _ in 0..ROTATE_ATTEMPTS {
        let group = catalog::group(client, group_name)?;
        let next = group
            .last_version
            .checked_add(1)
            .ok_or_else(|| VaultError::VersionOverflow(group.name.clone()))?;
        let (key_id, wrapped) = kms::next_ring_key(&group, next)?;
        let now = catalog::clock();
        if catalog::claim_version(client, &group.id, next, now, due)? {
            catalog::insert_key(client, &group.id, next, &group.kms_key, &key_id, &wrapped, now, false)?;
            coherence::note_change(group_name, Some(identity::current()?.cache_key(group.id)), true);
            return Ok(Some(next));
        }
        if due.is_some() {
            // Someone else rotated or rescheduled it: this due time is done.
            return Ok(None);
        }
    }
    Err(VaultError::RotationContention(group_name.to_string()))
}

/// Rotates a group now; returns the new (pending) version.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rotate(group_name: &str) -> i32 {
    access::write("rotate", Privilege::Rotate, group_name, || {
        require_writable("rotate a key group")?;
        Spi::connect_mut(|client| rotate_impl(client, group_name, None))
            .and_then(|v| v.ok_or_else(|| VaultError::RotationContention(group_name.to_string())))
    })
}

/// Retires every version below `below_version`; the current one is kept.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn retire(group_name: &str, below_version: i32) {
    access::write("retire", Privilege::Write, group_name, || {
    require_writable("retire key versions")?;
    Spi::connect_mut(|client| -> VaultResult<()> {
        let group = catalog::group(client, group_name)?;
        let current = catalog::current_key_row(client, &group, catalog::clock())?;
        policy::check_retire(below_version, Some(current.version as u32))?;
        catalog::retire_below(client, &group.id, below_version, catalog::clock())?;
        coherence::note_change(group_name, Some(identity::current()?.cache_key(group.id)), false);
        Ok(())
    })
    })
}

/// Deletes the wrapped keys of retired versions below `below_version` for
/// good; returns how many were destroyed. Data still sealed under them can
/// never be decrypted again, so every version below must be retired first,
/// and secrets whose stored values use them must be updated or rotated.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn destroy(group_name: &str, below_version: i32) -> i64 {
    access::write("destroy", Privilege::Write, group_name, || {
    require_writable("destroy key versions")?;
    Spi::connect_mut(|client| -> VaultResult<i64> {
        let group = catalog::group(client, group_name)?;
        // Waits for every transaction sealing a secret under the group.
        if !catalog::lock_group_for_drop(client, &group.id)? {
            return Err(VaultError::GroupNotFound);
        }
        let current = catalog::current_key_row(client, &group, catalog::clock())?;
        policy::check_retire(below_version, Some(current.version as u32))?;
        let (live, sealed) = catalog::destroy_blockers(client, &group.id, below_version)?;
        if live > 0 {
            return Err(VaultError::DestroyRefused {
                group: group_name.to_string(),
                reason: format!("{live} version(s) below {below_version} are not retired"),
                hint: format!("Retire them first: SELECT vault.retire('{}', {below_version});", group_name.replace('\'', "''")),
            });
        }
        if sealed > 0 {
            return Err(VaultError::DestroyRefused {
                group: group_name.to_string(),
                reason: format!("{sealed} stored secret value(s) are sealed under versions below {below_version}"),
                hint: "Update or rotate those secrets (see vault.secrets.key_group); values still in their grace window count too.".into(),
            });
        }
        let n = catalog::destroy_below(client, &group.id, below_version)?;
        if n > 0 {
            coherence::note_change(group_name, Some(identity::current()?.cache_key(group.id)), false);
        }
        Ok(n)
    })
    })
}

/// Drops a group and erases its wrapped keys.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn drop_group(group_name: &str) {
    access::write("drop_group", Privilege::Write, group_name, || {
    require_writable("drop a key group")?;
    Spi::connect_mut(|client| -> VaultResult<()> {
        let group = catalog::group(client, group_name)?;
        // Wait for every transaction sealing a secret under this group (they
        // hold KEY SHARE on its row) and for a racing drop; then look again.
        if !catalog::lock_group_for_drop(client, &group.id)? {
            return Err(VaultError::GroupNotFound);
        }
        if crate::secret_store::group_in_use(client, &group.id)? {
            return Err(VaultError::GroupInUse(group_name.to_string()));
        }
        if catalog::delete_group(client, &group.id)? {
            coherence::note_change(group_name, Some(identity::current()?.cache_key(group.id)), false);
            Ok(())
        } else {
            Err(VaultError::GroupNotFound)
        }
    })
    })
}
