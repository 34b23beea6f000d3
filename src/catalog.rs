//! All SQL the extension runs against its own tables. Callers are
//! `SECURITY DEFINER` functions with `search_path = pg_catalog, pg_temp`, so
//! every name here is schema-qualified and operators resolve in pg_catalog.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use secret_vault_core::aad::GroupId;
use secret_vault_core::policy::Purpose;

use crate::error::{VaultError, VaultResult};

#[derive(Debug, Clone)]
pub struct GroupRow {
    pub id: GroupId,
    pub name: String,
    pub purpose: Purpose,
    pub kms_key: String,
    pub kms_provider: String,
    pub key_bytes: i32,
    pub last_version: i32,
}

#[derive(Debug)]
pub struct KeyRow {
    pub version: i32,
    pub kms_key_id: String,
    pub wrapped: Vec<u8>,
    pub retired: bool,
}

/// Wall-clock time: rotation and activation follow real time, not the start
/// of the caller's transaction.
pub fn clock() -> TimestampWithTimeZone {
    // SAFETY: GetCurrentTimestamp only reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    TimestampWithTimeZone::try_from(now).expect("the clock is a finite timestamp")
}

fn uuid(id: &GroupId) -> Uuid {
    Uuid::from_bytes(*id)
}

fn required<T>(v: Option<T>, what: &str) -> VaultResult<T> {
    v.ok_or_else(|| VaultError::Internal(format!("catalog row has NULL {what}")))
}

pub fn load_group(client: &SpiClient<'_>, name: &str) -> VaultResult<Option<GroupRow>> {
    let rows = client.select(
        "SELECT g.id, g.purpose, g.kms_key, k.provider, g.key_bytes, g.last_version
           FROM vault.key_groups g
           JOIN vault.kms_keys k ON k.name = g.kms_key
          WHERE g.name = $1",
        Some(1),
        &[name.into()],
    )?;
    let Some(row) = rows.into_iter().next() else { return Ok(None) };
    let id: Uuid = required(row.get(1)?, "id")?;
    let purpose: String = required(row.get(2)?, "purpose")?;
    Ok(Some(GroupRow {
        id: *id.as_bytes(),
        name: name.to_string(),
        purpose: Purpose::parse(&purpose)?,
        kms_key: required(row.get(3)?, "kms_key")?,
        kms_provider: required(row.get(4)?, "provider")?,
        key_bytes: required(row.get(5)?, "key_bytes")?,
        last_version: required(row.get(6)?, "last_version")?,
    }))
}

pub fn group(client: &SpiClient<'_>, name: &str) -> VaultResult<GroupRow> {
    load_group(client, name)?.ok_or_else(|| VaultError::GroupNotFound(name.to_string()))
}

/// The registered KMS key to use: the named one, or the default.
pub fn resolve_kms_key(client: &SpiClient<'_>, name: Option<&str>) -> VaultResult<(String, String)> {
    let rows = match name {
        Some(n) => client.select(
            "SELECT name, provider FROM vault.kms_keys WHERE name = $1",
            Some(1),
            &[n.into()],
        )?,
        None => client.select(
            "SELECT name, provider FROM vault.kms_keys WHERE is_default",
            Some(1),
            &[],
        )?,
    };
    match rows.into_iter().next() {
        Some(row) => Ok((required(row.get(1)?, "name")?, required(row.get(2)?, "provider")?)),
        None => Err(VaultError::KmsKeyNotFound(name.unwrap_or("(default)").to_string())),
    }
}

fn key_row(row: pgrx::spi::SpiHeapTupleData<'_>) -> VaultResult<KeyRow> {
    Ok(KeyRow {
        version: required(row.get(1)?, "version")?,
        kms_key_id: required(row.get(2)?, "kms_key_id")?,
        wrapped: required(row.get(3)?, "wrapped_key")?,
        retired: required(row.get(4)?, "retired")?,
    })
}

/// The newest active, unretired version at `now`.
pub fn current_key_row(client: &SpiClient<'_>, group: &GroupRow, now: TimestampWithTimeZone) -> VaultResult<KeyRow> {
    let rows = client.select(
        "SELECT version, kms_key_id, wrapped_key, retired_at IS NOT NULL
           FROM vault.ring_keys
          WHERE group_id = $1 AND retired_at IS NULL AND activates_at <= $2
          ORDER BY version DESC
          LIMIT 1",
        Some(1),
        &[uuid(&group.id).into(), now.into()],
    )?;
    match rows.into_iter().next() {
        Some(row) => key_row(row),
        None => Err(VaultError::NoCurrentVersion(group.name.clone())),
    }
}

pub fn key_row_at(client: &SpiClient<'_>, group: &GroupRow, version: i32) -> VaultResult<Option<KeyRow>> {
    let rows = client.select(
        "SELECT version, kms_key_id, wrapped_key, retired_at IS NOT NULL
           FROM vault.ring_keys
          WHERE group_id = $1 AND version = $2",
        Some(1),
        &[uuid(&group.id).into(), version.into()],
    )?;
    rows.into_iter().next().map(key_row).transpose()
}

pub struct NewGroup<'a> {
    pub id: GroupId,
    pub name: &'a str,
    pub purpose: Purpose,
    pub rotation_interval: Option<Interval>,
    pub propagation_delay: Interval,
    pub ring_size: i32,
    pub key_bytes: i32,
    pub kms_key: &'a str,
}

/// Inserts the group row; false when the name is taken (raced or not).
pub fn insert_group(client: &mut SpiClient<'_>, g: &NewGroup<'_>, now: TimestampWithTimeZone) -> VaultResult<bool> {
    let interval = match g.rotation_interval {
        Some(iv) => iv.into(),
        None => pgrx::datum::DatumWithOid::null::<Interval>(),
    };
    let rows = client.update(
        "INSERT INTO vault.key_groups
             (id, name, purpose, rotation_interval, propagation_delay, ring_size, key_bytes,
              kms_key, last_version, created_at, last_rotated_at, next_rotation_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9, $9 + $4)
         ON CONFLICT (name) DO NOTHING
         RETURNING 1",
        None,
        &[
            uuid(&g.id).into(),
            g.name.into(),
            g.purpose.as_str().into(),
            interval,
            g.propagation_delay.into(),
            g.ring_size.into(),
            g.key_bytes.into(),
            g.kms_key.into(),
            now.into(),
        ],
    )?;
    Ok(!rows.is_empty())
}

/// Stores a wrapped ring key. Version 1 is active at once; later versions
/// after the group's propagation delay.
pub fn insert_key(
    client: &mut SpiClient<'_>,
    group: &GroupId,
    version: i32,
    kms_key_id: &str,
    wrapped: &[u8],
    now: TimestampWithTimeZone,
    activate_now: bool,
) -> VaultResult<()> {
    client.update(
        "INSERT INTO vault.ring_keys (group_id, version, created_at, activates_at, kms_key_id, wrapped_key)
         SELECT g.id, $2, $3, CASE WHEN $4 THEN $3 ELSE $3 + g.propagation_delay END, $5, $6
           FROM vault.key_groups g
          WHERE g.id = $1",
        None,
        &[uuid(group).into(), version.into(), now.into(), activate_now.into(), kms_key_id.into(), wrapped.into()],
    )?;
    Ok(())
}

/// Claims version `next` for a rotation: succeeds only if no other rotation
/// claimed it first. Under READ COMMITTED a racing claim waits for the
/// winner's commit, then sees the bumped counter and fails here.
pub fn claim_version(client: &mut SpiClient<'_>, group: &GroupId, next: i32, now: TimestampWithTimeZone) -> VaultResult<bool> {
    let rows = client.update(
        "UPDATE vault.key_groups
            SET last_version = $2, last_rotated_at = $3, next_rotation_at = $3 + rotation_interval
          WHERE id = $1 AND last_version = $2 - 1
         RETURNING 1",
        None,
        &[uuid(group).into(), next.into(), now.into()],
    )?;
    Ok(!rows.is_empty())
}

pub fn retire_below(client: &mut SpiClient<'_>, group: &GroupId, below: i32, now: TimestampWithTimeZone) -> VaultResult<u64> {
    let rows = client.update(
        "UPDATE vault.ring_keys SET retired_at = $3
          WHERE group_id = $1 AND version < $2 AND retired_at IS NULL",
        None,
        &[uuid(group).into(), below.into(), now.into()],
    )?;
    Ok(rows.len() as u64)
}

/// Deletes a group; its wrapped keys go with it (ON DELETE CASCADE).
pub fn delete_group(client: &mut SpiClient<'_>, name: &str) -> VaultResult<bool> {
    let rows = client.update(
        "DELETE FROM vault.key_groups WHERE name = $1 RETURNING 1",
        None,
        &[name.into()],
    )?;
    Ok(!rows.is_empty())
}
