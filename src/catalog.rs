//! All SQL the extension runs against its own tables.
//!
//! Some callers are SECURITY INVOKER hot-path functions running under the
//! caller's search_path, so every table, operator and function here is
//! schema-qualified: nothing a caller creates can be picked up instead.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use secret_vault_core::aad::{GroupId, RingKeyBinding};
use secret_vault_core::policy::Purpose;

use crate::error::{VaultError, VaultResult};
use crate::identity::sql;

#[derive(Debug, Clone)]
pub struct GroupRow {
    pub id: GroupId,
    pub name: String,
    pub purpose: Purpose,
    pub kms_key: String,
    pub kms_provider: String,
    pub key_bytes: i32,
    pub ring_size: i32,
    pub last_version: i32,
    pub change_seq: i64,
    /// The KMS key's config as text (non-secret settings): providers are
    /// cached per backend under it, so a re-registered name is never served
    /// by the provider of its predecessor.
    pub kms_config: String,
}

#[derive(Debug)]
pub struct KeyRow {
    pub binding: RingKeyBinding,
    pub version: i32,
    pub activates_at: i64,
    pub retired: bool,
    pub kms_key_id: String,
    pub wrapped: Vec<u8>,
    /// The registered KMS key whose provider unwraps this row.
    pub kms: KmsKeyRow,
}

/// Wall-clock time: rotation and activation follow real time, not the start
/// of the caller's transaction.
pub fn clock() -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(now_micros()).expect("the clock is a finite timestamp")
}

pub fn now_micros() -> i64 {
    // SAFETY: GetCurrentTimestamp only reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

pub(crate) fn uuids(ids: &[GroupId]) -> Vec<Uuid> {
    ids.iter().map(uuid).collect()
}

pub(crate) fn uuid(id: &GroupId) -> Uuid {
    Uuid::from_bytes(*id)
}

/// A column the schema declares NOT NULL; NULL means the row was tampered with.
pub(crate) fn column<T>(v: Option<T>, what: &str) -> VaultResult<T> {
    v.ok_or_else(|| VaultError::Internal(format!("catalog row has NULL {what}")))
}

pub(crate) const GROUP_COLUMNS: &str = "g.id, g.purpose, g.kms_key, k.provider, g.key_bytes, g.ring_size, g.last_version, g.change_seq, g.name, k.config::pg_catalog.text";
/// Columns of GROUP_COLUMNS; a query's own columns follow.
pub(crate) const G: usize = 10;

pub(crate) fn group_row(row: pgrx::spi::SpiHeapTupleData<'_>) -> VaultResult<GroupRow> {
    let id: Uuid = column(row.get(1)?, "id")?;
    let purpose: String = column(row.get(2)?, "purpose")?;
    Ok(GroupRow {
        id: *id.as_bytes(),
        purpose: Purpose::parse(&purpose)?,
        kms_key: column(row.get(3)?, "kms_key")?,
        kms_provider: column(row.get(4)?, "provider")?,
        key_bytes: column(row.get(5)?, "key_bytes")?,
        ring_size: column(row.get(6)?, "ring_size")?,
        last_version: column(row.get(7)?, "last_version")?,
        change_seq: column(row.get(8)?, "change_seq")?,
        name: column(row.get(9)?, "name")?,
        kms_config: column(row.get(10)?, "config")?,
    })
}

/// The one group whose `column` (a key: `name` or `id`) equals `arg`.
fn load_group_where(
    client: &SpiClient<'_>,
    column: &'static str,
    arg: pgrx::datum::DatumWithOid<'_>,
) -> VaultResult<Option<GroupRow>> {
    let rows = client.select(
        &sql(&format!(
            "SELECT {GROUP_COLUMNS}
               FROM vault.key_groups g
               JOIN vault.kms_keys k ON k.name OPERATOR(pg_catalog.=) g.kms_key
              WHERE g.{column} OPERATOR(pg_catalog.=) $1"
        ))?,
        Some(1),
        &[arg],
    )?;
    rows.into_iter().next().map(group_row).transpose()
}

pub fn load_group(client: &SpiClient<'_>, name: &str) -> VaultResult<Option<GroupRow>> {
    load_group_where(client, "name", name.into())
}

/// A group by id, for the worker (which addresses groups by identity).
pub fn load_group_by_id(client: &SpiClient<'_>, id: &GroupId) -> VaultResult<Option<GroupRow>> {
    load_group_where(client, "id", uuid(id).into())
}

/// Locks a group's row for deletion: waits for every transaction that
/// sealed a secret under it (they hold KEY SHARE) to end.
pub fn lock_group_for_drop(client: &mut SpiClient<'_>, id: &GroupId) -> VaultResult<bool> {
    let rows = client.update(
        &sql("SELECT 1 FROM vault.key_groups WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE")?,
        Some(1),
        &[uuid(id).into()],
    )?;
    Ok(!rows.is_empty())
}

pub fn group(client: &SpiClient<'_>, name: &str) -> VaultResult<GroupRow> {
    load_group(client, name)?.ok_or(VaultError::GroupNotFound)
}

/// Groups due for rotation, oldest due first, leaving out `skip` (groups
/// whose last attempt failed and that are still backing off), so that a
/// group that keeps failing never holds the others back.
pub fn due_groups(
    client: &SpiClient<'_>,
    now: TimestampWithTimeZone,
    limit: i64,
    skip: &[GroupId],
) -> VaultResult<Vec<(GroupRow, TimestampWithTimeZone)>> {
    let rows = client.select(
        &sql(&format!(
            "SELECT {GROUP_COLUMNS}, g.next_rotation_at
               FROM vault.key_groups g
               JOIN vault.kms_keys k ON k.name OPERATOR(pg_catalog.=) g.kms_key
              WHERE g.next_rotation_at OPERATOR(pg_catalog.<=) $1
                AND NOT (g.id OPERATOR(pg_catalog.=) ANY ($3))
              ORDER BY g.next_rotation_at
              LIMIT $2"
        ))?,
        None,
        &[now.into(), limit.into(), uuids(skip).into()],
    )?;
    rows.into_iter()
        .map(|row| {
            let due: TimestampWithTimeZone = column(row.get(G + 1)?, "next_rotation_at")?;
            Ok((group_row(row)?, due))
        })
        .collect()
}

/// Every group's id and change sequence, for reconciling the cache.
pub fn group_sequences(client: &SpiClient<'_>) -> VaultResult<Vec<(GroupId, i64)>> {
    let rows = client.select(&sql("SELECT id, change_seq FROM vault.key_groups ORDER BY last_rotated_at DESC")?, None, &[])?;
    rows.into_iter()
        .map(|row| {
            let id: Uuid = column(row.get(1)?, "id")?;
            Ok((*id.as_bytes(), column(row.get(2)?, "change_seq")?))
        })
        .collect()
}

/// A registered KMS key: name, provider kind and config (jsonb as text).
#[derive(Debug, Clone)]
pub struct KmsKeyRow {
    pub name: String,
    pub provider: String,
    pub config: String,
}

impl KmsKeyRow {
    pub fn spec(&self) -> crate::kms::KeySpec<'_> {
        crate::kms::KeySpec { name: &self.name, kind: &self.provider, config: &self.config }
    }
}

/// The registered KMS key to use: the named one, or the default.
pub fn resolve_kms_key(client: &SpiClient<'_>, name: Option<&str>) -> VaultResult<KmsKeyRow> {
    const COLUMNS: &str = "SELECT name, provider, config::pg_catalog.text FROM vault.kms_keys";
    let rows = match name {
        Some(n) => client.select(&sql(&format!("{COLUMNS} WHERE name OPERATOR(pg_catalog.=) $1"))?, Some(1), &[n.into()])?,
        None => client.select(&sql(&format!("{COLUMNS} WHERE is_default"))?, Some(1), &[])?,
    };
    match rows.into_iter().next() {
        Some(row) => Ok(KmsKeyRow {
            name: column(row.get(1)?, "name")?,
            provider: column(row.get(2)?, "provider")?,
            config: column(row.get(3)?, "config")?,
        }),
        None => Err(VaultError::KmsKeyNotFound),
    }
}

/// A ring key row and the registered KMS key that wrapped it (after a move
/// to another KMS key, rows not yet re-wrapped still name the old one).
pub(crate) const KEY_COLUMNS: &str = "r.version, r.activates_at, r.retired_at IS NOT NULL, r.kms_key_id, r.wrapped_key, r.binding, \
                           kr.name, kr.provider, kr.config::pg_catalog.text";
/// LEFT JOIN: a row naming no registered KMS key (replicated or restored
/// without it) is an error when read, never silently skipped (which would
/// make an older version look current).
pub(crate) const KEY_FROM: &str = "vault.ring_keys r LEFT JOIN vault.kms_keys kr ON kr.name OPERATOR(pg_catalog.=) r.kms_key";

/// A key row from KEY_COLUMNS starting at column `at` (1-based).
pub(crate) fn key_row_from(row: &pgrx::spi::SpiHeapTupleData<'_>, at: usize) -> VaultResult<KeyRow> {
    let activates: TimestampWithTimeZone = column(row.get(at + 1)?, "activates_at")?;
    let binding: i16 = column(row.get(at + 5)?, "binding")?;
    Ok(KeyRow {
        version: column(row.get(at)?, "version")?,
        activates_at: activates.into(),
        retired: column(row.get(at + 2)?, "retired")?,
        kms_key_id: column(row.get(at + 3)?, "kms_key_id")?,
        wrapped: column(row.get(at + 4)?, "wrapped_key")?,
        // An unknown binding is a tampered row: refuse it, never guess.
        binding: RingKeyBinding::from_column(binding)
            .ok_or_else(|| VaultError::Internal(format!("ring key row has unknown binding {binding}")))?,
        kms: KmsKeyRow {
            name: column(row.get(at + 6)?, "kms_key")?,
            provider: column(row.get(at + 7)?, "provider")?,
            config: column(row.get(at + 8)?, "config")?,
        },
    })
}

fn key_row(row: pgrx::spi::SpiHeapTupleData<'_>) -> VaultResult<KeyRow> {
    key_row_from(&row, 1)
}

/// Ring keys still bound the 0.1.0 way (group and version only), with their groups.
pub fn legacy_bound_keys(client: &SpiClient<'_>, limit: i64, skip: &[GroupId]) -> VaultResult<Vec<(GroupRow, KeyRow)>> {
    let rows = client.select(
        &sql(&format!(
            "SELECT {GROUP_COLUMNS}, {KEY_COLUMNS}
               FROM {KEY_FROM}
               JOIN vault.key_groups g ON g.id OPERATOR(pg_catalog.=) r.group_id
               JOIN vault.kms_keys k ON k.name OPERATOR(pg_catalog.=) g.kms_key
              WHERE r.binding OPERATOR(pg_catalog.=) 1
                AND NOT (g.id OPERATOR(pg_catalog.=) ANY ($2))
              LIMIT $1"
        ))?,
        None,
        &[limit.into(), uuids(skip).into()],
    )?;
    rows.into_iter()
        .map(|row| {
            let key = key_row_from(&row, G + 1)?;
            Ok((group_row(row)?, key))
        })
        .collect()
}

/// Replaces a 0.1.0-bound wrapped key with its re-bound form, unless the row
/// changed meanwhile (then the next round looks again).
pub fn rebind_key(
    client: &mut SpiClient<'_>,
    group: &GroupId,
    version: i32,
    old_wrapped: &[u8],
    kms_key: &str,
    kms_key_id: &str,
    wrapped: &[u8],
) -> VaultResult<bool> {
    let rows = client.update(
        &sql("UPDATE vault.ring_keys SET wrapped_key = $4, kms_key_id = $5, binding = 2, kms_key = $6
               WHERE group_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2
                 AND binding OPERATOR(pg_catalog.=) 1 AND wrapped_key OPERATOR(pg_catalog.=) $3
              RETURNING 1")?,
        None,
        &[uuid(group).into(), version.into(), old_wrapped.into(), wrapped.into(), kms_key_id.into(), kms_key.into()],
    )?;
    Ok(!rows.is_empty())
}

/// The newest `limit` versions of a group, newest first, retired ones included.
pub fn newest_keys(client: &SpiClient<'_>, group: &GroupId, limit: i64) -> VaultResult<Vec<KeyRow>> {
    let rows = client.select(
        &sql(&format!(
            "SELECT {KEY_COLUMNS} FROM {KEY_FROM}
              WHERE r.group_id OPERATOR(pg_catalog.=) $1
              ORDER BY r.version DESC
              LIMIT $2"
        ))?,
        None,
        &[uuid(group).into(), limit.into()],
    )?;
    rows.into_iter().map(key_row).collect()
}

/// The newest active, unretired version at `now`.
pub fn current_key_row(client: &SpiClient<'_>, group: &GroupRow, now: TimestampWithTimeZone) -> VaultResult<KeyRow> {
    let rows = client.select(
        &sql(&format!(
            "SELECT {KEY_COLUMNS} FROM {KEY_FROM}
              WHERE r.group_id OPERATOR(pg_catalog.=) $1 AND r.retired_at IS NULL
                AND r.activates_at OPERATOR(pg_catalog.<=) $2
              ORDER BY r.version DESC
              LIMIT 1"
        ))?,
        Some(1),
        &[uuid(&group.id).into(), now.into()],
    )?;
    match rows.into_iter().next() {
        Some(row) => key_row(row),
        None => Err(VaultError::NoCurrentVersion(group.name.clone())),
    }
}

pub fn key_row_at(client: &SpiClient<'_>, group: &GroupId, version: i32) -> VaultResult<Option<KeyRow>> {
    let rows = client.select(
        &sql(&format!(
            "SELECT {KEY_COLUMNS} FROM {KEY_FROM}
              WHERE r.group_id OPERATOR(pg_catalog.=) $1 AND r.version OPERATOR(pg_catalog.=) $2"
        ))?,
        Some(1),
        &[uuid(group).into(), version.into()],
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
        &sql("INSERT INTO vault.key_groups
             (id, name, purpose, rotation_interval, propagation_delay, ring_size, key_bytes,
              kms_key, last_version, created_at, last_rotated_at, next_rotation_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9, $9 OPERATOR(pg_catalog.+) $4)
         ON CONFLICT (name) DO NOTHING
         RETURNING 1")?,
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

#[allow(clippy::too_many_arguments)]
/// Stores a wrapped ring key. Version 1 is active at once; later versions
/// after the group's propagation delay.
pub fn insert_key(
    client: &mut SpiClient<'_>,
    group: &GroupId,
    version: i32,
    kms_key: &str,
    kms_key_id: &str,
    wrapped: &[u8],
    now: TimestampWithTimeZone,
    activate_now: bool,
) -> VaultResult<()> {
    client.update(
        &sql("INSERT INTO vault.ring_keys (group_id, version, created_at, activates_at, kms_key_id, wrapped_key, binding, kms_key)
         SELECT g.id, $2, $3, CASE WHEN $4 THEN $3 ELSE $3 OPERATOR(pg_catalog.+) g.propagation_delay END, $5, $6, 2, $7
           FROM vault.key_groups g
          WHERE g.id OPERATOR(pg_catalog.=) $1")?,
        None,
        &[uuid(group).into(), version.into(), now.into(), activate_now.into(), kms_key_id.into(), wrapped.into(), kms_key.into()],
    )?;
    Ok(())
}

/// Claims version `next` for a rotation: succeeds only if no other rotation
/// claimed it first. Under READ COMMITTED a racing claim waits for the
/// winner's commit, re-checks, and fails here. With `due`, the claim also
/// requires the schedule to be unchanged, so a scheduled rotation happens at
/// most once per due time even when manual rotations race it.
pub fn claim_version(
    client: &mut SpiClient<'_>,
    group: &GroupId,
    next: i32,
    now: TimestampWithTimeZone,
    due: Option<TimestampWithTimeZone>,
) -> VaultResult<bool> {
    let due_arg = match due {
        Some(d) => d.into(),
        None => pgrx::datum::DatumWithOid::null::<TimestampWithTimeZone>(),
    };
    let rows = client.update(
        &sql("UPDATE vault.key_groups
            SET last_version = $2, last_rotated_at = $3,
                next_rotation_at = $3 OPERATOR(pg_catalog.+) rotation_interval,
                change_seq = pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass)
          WHERE id OPERATOR(pg_catalog.=) $1
            AND last_version OPERATOR(pg_catalog.=) ($2 OPERATOR(pg_catalog.-) 1)
            AND ($4::pg_catalog.timestamptz IS NULL OR next_rotation_at OPERATOR(pg_catalog.=) $4)
         RETURNING 1")?,
        None,
        &[uuid(group).into(), next.into(), now.into(), due_arg],
    )?;
    Ok(!rows.is_empty())
}

pub fn retire_below(client: &mut SpiClient<'_>, group: &GroupId, below: i32, now: TimestampWithTimeZone) -> VaultResult<()> {
    client.update(
        &sql("UPDATE vault.ring_keys SET retired_at = $3
          WHERE group_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.<) $2 AND retired_at IS NULL")?,
        None,
        &[uuid(group).into(), below.into(), now.into()],
    )?;
    bump_change_seq(client, group)
}

/// Marks a group's keys as changed: every cache holding a copy loaded
/// from an older change_seq drops it.
fn bump_change_seq(client: &mut SpiClient<'_>, group: &GroupId) -> VaultResult<()> {
    client.update(
        &sql("UPDATE vault.key_groups SET change_seq = pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass)
          WHERE id OPERATOR(pg_catalog.=) $1")?,
        None,
        &[uuid(group).into()],
    )?;
    Ok(())
}

/// The name of an enabled subscription of this database that replicates
/// vault.key_groups, if any: such a node takes its keys from a publisher,
/// and a rotation of its own would fork the version numbers.
pub fn vault_subscription(client: &SpiClient<'_>) -> VaultResult<Option<String>> {
    let rows = client.select(
        &sql("SELECT s.subname::pg_catalog.text FROM pg_catalog.pg_subscription_rel r
                JOIN pg_catalog.pg_subscription s ON s.oid OPERATOR(pg_catalog.=) r.srsubid
               WHERE s.subenabled AND r.srrelid OPERATOR(pg_catalog.=) 'vault.key_groups'::pg_catalog.regclass
               ORDER BY 1 LIMIT 1")?,
        None,
        &[],
    )?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(rows.first().get::<String>(1)?)
}

/// Moves vault.change_seq past the largest change_seq stored in any table
/// (rows that arrived by logical replication or a partial restore carry
/// numbers this node's sequence never handed out); returns the new value
/// if it had to move.
pub fn catch_up_change_seq(client: &mut SpiClient<'_>) -> VaultResult<Option<i64>> {
    let rows = client.update(
        &sql("SELECT pg_catalog.setval('vault.change_seq'::pg_catalog.regclass, m)
                FROM (SELECT pg_catalog.max(v) AS m FROM (
                        SELECT pg_catalog.max(change_seq) FROM vault.key_groups
                        UNION ALL SELECT pg_catalog.max(change_seq) FROM vault.secret_store
                        UNION ALL SELECT pg_catalog.max(change_seq) FROM vault.access_grants
                        UNION ALL SELECT pg_catalog.max(change_seq) FROM vault.access_defaults_revoked
                        UNION ALL SELECT pg_catalog.max(change_seq) FROM vault.allowed_addresses) AS t(v)) AS stored,
                     vault.change_seq AS s
               WHERE m OPERATOR(pg_catalog.>) s.last_value OR (m OPERATOR(pg_catalog.=) s.last_value AND NOT s.is_called)")?,
        None,
        &[],
    )?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(rows.first().get::<i64>(1)?)
}

/// Deletes a group; its wrapped keys go with it (ON DELETE CASCADE).
pub fn delete_group(client: &mut SpiClient<'_>, id: &GroupId) -> VaultResult<bool> {
    let rows = client.update(
        &sql("DELETE FROM vault.key_groups WHERE id OPERATOR(pg_catalog.=) $1 RETURNING 1")?,
        None,
        &[uuid(id).into()],
    )?;
    Ok(!rows.is_empty())
}

/// Whether a load in this transaction may be stored in the shared cache: only
/// when it read through a fresh snapshot and the transaction has written
/// nothing (so it cannot see its own uncommitted changes).
pub fn may_fill_shared_cache() -> bool {
    !unsafe { pg_sys::IsInParallelMode() } && has_not_written()
}

/// Whether this transaction (for a parallel worker: its leader's) has written nothing.
pub fn has_not_written() -> bool {
    unsafe { pg_sys::GetTopTransactionIdIfAny() == pg_sys::InvalidTransactionId }
}

/// An interval's parts, for the core's policy checks.
pub fn span(iv: &Interval) -> secret_vault_core::policy::Span {
    secret_vault_core::policy::Span { months: iv.months(), days: iv.days(), micros: iv.micros() }
}

/// Checks a schedule interval with PostgreSQL's own calendar arithmetic
/// (months of their real length, from now): the next due time must exist
/// and, for `positive`, lie after now. Run after the bounds check in core,
/// so this catches only what the calendar alone decides.
pub fn check_schedule(what: &str, iv: &Interval, positive: bool) -> VaultResult<()> {
    let now = clock();
    let at = PgTryBuilder::new(|| unsafe {
        pgrx::direct_function_call::<TimestampWithTimeZone>(
            pg_sys::timestamptz_pl_interval,
            &[now.into_datum(), (*iv).into_datum()],
        )
    })
    .catch_when(PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW, |_| None)
    .execute();
    match at {
        None => Err(VaultError::Policy(secret_vault_core::PolicyError::Invalid(format!(
            "{what} is out of range: now plus it is not a valid timestamp"
        )))),
        Some(at) if positive && at <= now => Err(VaultError::Policy(secret_vault_core::PolicyError::Invalid(format!(
            "{what} must be at least 1 second"
        )))),
        Some(_) => Ok(()),
    }
}

/// What stands in the way of destroying versions below `below` of a group:
/// (versions below it that are not retired, secret values sealed under them).
pub fn destroy_blockers(client: &SpiClient<'_>, id: &GroupId, below: i32) -> VaultResult<(i64, i64)> {
    // A secret value's key version is bytes 3..6 of its ciphertext, big
    // endian, so it compares as bytes with int4send (see core/src/format.rs).
    let row = client.select(
        &sql("SELECT (SELECT pg_catalog.count(*) FROM vault.ring_keys
                WHERE group_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.<) $2 AND retired_at IS NULL),
             (SELECT pg_catalog.count(*) FROM vault.secret_store s
                WHERE s.key_group_id OPERATOR(pg_catalog.=) $1
                  AND pg_catalog.substring(s.current_ciphertext, 3, 4) OPERATOR(pg_catalog.<) pg_catalog.int4send($2))
           OPERATOR(pg_catalog.+)
             (SELECT pg_catalog.count(*) FROM vault.secret_values v
                JOIN vault.secret_store s ON s.id OPERATOR(pg_catalog.=) v.secret_id
               WHERE s.key_group_id OPERATOR(pg_catalog.=) $1
                 AND v.valid_until OPERATOR(pg_catalog.>) pg_catalog.now()
                 AND pg_catalog.substring(v.ciphertext, 3, 4) OPERATOR(pg_catalog.<) pg_catalog.int4send($2))")?,
        Some(1),
        &[uuid(id).into(), below.into()],
    )?;
    let row = row.first();
    Ok((column(row.get(1)?, "not retired")?, column(row.get(2)?, "sealed values")?))
}

/// Deletes the retired wrapped keys below `below` and bumps the group's
/// change sequence (every cache drops its copy); returns how many went.
pub fn destroy_below(client: &mut SpiClient<'_>, id: &GroupId, below: i32) -> VaultResult<i64> {
    let rows = client.update(
        &sql("DELETE FROM vault.ring_keys
               WHERE group_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.<) $2 AND retired_at IS NOT NULL
              RETURNING 1")?,
        None,
        &[uuid(id).into(), below.into()],
    )?;
    let n = rows.len() as i64;
    if n > 0 {
        bump_change_seq(client, id)?;
    }
    Ok(n)
}
