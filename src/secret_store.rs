//! SQL against the secret tables. Statements are prepared once per backend
//! and kept (SPI_keepplan): creating or reading a secret then costs no parse
//! or plan. Every name and operator is schema-qualified (see catalog.rs), and
//! the schema is the one the extension lives in now: kept plans are dropped
//! whenever this backend's identity is resolved again (see identity.rs), so
//! no plan is ever re-parsed against a schema that merely has the old name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::{DatumWithOid, Interval, TimestampWithTimeZone};
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::Uuid;

use crate::catalog::{column, uuid};
use crate::error::{VaultError, VaultResult};

type Id = [u8; 16];

thread_local! {
    static PLANS: RefCell<(u64, HashMap<&'static str, Rc<OwnedPreparedStatement>>)> = RefCell::new((u64::MAX, HashMap::new()));
}

fn oid(o: pg_sys::Oid) -> PgOid {
    PgOid::from(o)
}

fn plan(client: &SpiClient<'_>, sql: &'static str, types: &[pg_sys::Oid], mutating: bool) -> VaultResult<Rc<OwnedPreparedStatement>> {
    let ident = crate::identity::current()?;
    let generation = crate::identity::generation();
    if let Some(p) = PLANS.with(|m| {
        let mut m = m.borrow_mut();
        if m.0 != generation {
            m.1.clear();
            m.0 = generation;
        }
        m.1.get(sql).cloned()
    }) {
        return Ok(p);
    }
    let types: Vec<PgOid> = types.iter().copied().map(oid).collect();
    let text = ident.sql(sql);
    let stmt = if mutating { client.prepare_mut(&*text, &types)? } else { client.prepare(&*text, &types)? };
    let kept = Rc::new(stmt.keep());
    PLANS.with(|m| m.borrow_mut().1.insert(sql, kept.clone()));
    Ok(kept)
}

pub(crate) fn select<'c>(
    client: &SpiClient<'c>,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[DatumWithOid<'_>],
) -> VaultResult<SpiTupleTable<'c>> {
    let p = plan(client, sql, types, false)?;
    Ok(client.select(&*p, None, args)?)
}

pub(crate) fn update<'c>(
    client: &mut SpiClient<'c>,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[DatumWithOid<'_>],
) -> VaultResult<SpiTupleTable<'c>> {
    let p = plan(client, sql, types, true)?;
    Ok(client.update(&*p, None, args)?)
}


use pg_sys::{BYTEAOID as BYTEA, INT4OID as INT4, INT8OID as INT8, INTERVALOID as INTERVAL, TEXTOID as TEXT, TIMESTAMPTZOID as TSTZ, UUIDOID as UUID};

#[derive(Debug, Clone)]
pub struct SecretRow {
    pub id: Id,
    pub name: String,
    pub kind: String,
    pub group: String,
    pub current_version: i32,
    pub generator: Option<String>,
    pub current_ciphertext: Vec<u8>,
    pub group_id: Id,
}

impl SecretRow {
    pub fn rotating(&self) -> bool {
        self.kind == "rotating"
    }
}

#[derive(Debug, Clone)]
pub struct ValueRow {
    pub version: i32,
    pub valid_until: Option<i64>,
    pub ciphertext: Vec<u8>,
}

fn secret_row(row: pgrx::spi::SpiHeapTupleData<'_>) -> VaultResult<SecretRow> {
    let id: Uuid = column(row.get(1)?, "id")?;
    Ok(SecretRow {
        id: *id.as_bytes(),
        name: column(row.get(2)?, "name")?,
        kind: column(row.get(3)?, "kind")?,
        group: column(row.get(4)?, "key group")?,
        current_version: column(row.get(5)?, "current_version")?,
        generator: row.get(6)?,
        current_ciphertext: column(row.get(7)?, "current_ciphertext")?,
        group_id: *column::<Uuid>(row.get(8)?, "key_group_id")?.as_bytes(),
    })
}

pub fn load(client: &SpiClient<'_>, name: &str) -> VaultResult<Option<SecretRow>> {
    const SQL: &str = "SELECT s.id, s.name, s.kind, g.name, s.current_version, s.generator, s.current_ciphertext,
                              s.key_group_id
                         FROM vault.secret_store s
                         JOIN vault.key_groups g ON g.id OPERATOR(pg_catalog.=) s.key_group_id
                        WHERE s.name OPERATOR(pg_catalog.=) $1";
    let rows = select(client, SQL, &[TEXT], &[name.into()])?;
    rows.into_iter().next().map(secret_row).transpose()
}

pub fn get(client: &SpiClient<'_>, name: &str) -> VaultResult<SecretRow> {
    load(client, name)?.ok_or(VaultError::SecretNotFound)
}

/// The current version and every older one whose grace window is still open at `now`.
pub fn live_values(client: &SpiClient<'_>, s: &SecretRow, now: TimestampWithTimeZone) -> VaultResult<Vec<ValueRow>> {
    let rows = select(
        client,
        "SELECT version, valid_until, ciphertext FROM vault.secret_values
          WHERE secret_id OPERATOR(pg_catalog.=) $1 AND valid_until OPERATOR(pg_catalog.>) $2
          ORDER BY version DESC",
        &[UUID, TSTZ],
        &[uuid(&s.id).into(), now.into()],
    )?;
    let mut out = vec![ValueRow { version: s.current_version, valid_until: None, ciphertext: s.current_ciphertext.clone() }];
    for r in rows {
        let until: TimestampWithTimeZone = column(r.get(2)?, "valid_until")?;
        out.push(ValueRow {
            version: column(r.get(1)?, "version")?,
            valid_until: Some(until.into()),
            ciphertext: column(r.get(3)?, "ciphertext")?,
        });
    }
    Ok(out)
}

/// Every version's metadata: (version, created_at, valid_until).
pub fn versions(
    client: &SpiClient<'_>,
    id: &Id,
) -> VaultResult<Vec<(i32, TimestampWithTimeZone, Option<TimestampWithTimeZone>)>> {
    let rows = select(
        client,
        "SELECT version, created_at, valid_until FROM vault.secret_values
          WHERE secret_id OPERATOR(pg_catalog.=) $1
         UNION ALL
         SELECT current_version, current_created_at, NULL FROM vault.secret_store
          WHERE id OPERATOR(pg_catalog.=) $1
         ORDER BY 1",
        &[UUID],
        &[uuid(id).into()],
    )?;
    rows.into_iter()
        .map(|r| Ok((column(r.get(1)?, "version")?, column(r.get(2)?, "created_at")?, r.get(3)?)))
        .collect()
}

pub struct NewSecret<'a> {
    pub ciphertext: &'a [u8],
    pub id: Id,
    pub name: &'a str,
    pub kind: &'static str,
    pub description: Option<&'a str>,
    pub group_id: [u8; 16],
    pub rotation_interval: Option<Interval>,
    pub grace_period: Option<Interval>,
    pub generator: Option<&'a str>,
}

/// Inserts a secret at version 1; false when the name is taken.
pub fn insert(client: &mut SpiClient<'_>, s: &NewSecret<'_>, now: TimestampWithTimeZone) -> VaultResult<bool> {
    let opt_interval = |v: Option<Interval>| match v {
        Some(iv) => iv.into(),
        None => DatumWithOid::null::<Interval>(),
    };
    let rows = update(
        client,
        "INSERT INTO vault.secret_store
             (id, name, kind, description, key_group_id, rotation_interval, grace_period, generator,
              current_version, current_created_at, current_ciphertext, created_at, updated_at, next_rotation_at,
              change_seq)
         VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, '0'::pg_catalog.interval), $8, 1, $9, $10, $9, $9,
                 $9 OPERATOR(pg_catalog.+) $6, 0)
         ON CONFLICT (name) DO NOTHING
         RETURNING 1",
        &[UUID, TEXT, TEXT, TEXT, UUID, INTERVAL, INTERVAL, TEXT, TSTZ, BYTEA],
        &[
            uuid(&s.id).into(),
            s.name.into(),
            s.kind.into(),
            s.description.map_or_else(DatumWithOid::null::<&str>, Into::into),
            uuid(&s.group_id).into(),
            opt_interval(s.rotation_interval),
            opt_interval(s.grace_period),
            s.generator.map_or_else(DatumWithOid::null::<&str>, Into::into),
            now.into(),
            s.ciphertext.into(),
        ],
    )?;
    Ok(!rows.is_empty())
}

/// Makes `next` the current version with ciphertext `ct`, moving the
/// previous one to secret_values with the end of its validity: at once for a
/// manual secret, after the grace period for a rotating one. Fails (false)
/// if another rotation claimed `next` first or, with `due`, if the schedule
/// moved: the first statement locks the row, so the second cannot miss.
pub fn claim_next(
    client: &mut SpiClient<'_>,
    name: &str,
    next: i32,
    ct: &[u8],
    now: TimestampWithTimeZone,
    due: Option<TimestampWithTimeZone>,
) -> VaultResult<bool> {
    let due_arg = || due.map_or_else(DatumWithOid::null::<TimestampWithTimeZone>, Into::into);
    let moved = update(
        client,
        "INSERT INTO vault.secret_values (secret_id, version, created_at, valid_until, ciphertext)
         SELECT id, current_version, current_created_at,
                CASE WHEN kind OPERATOR(pg_catalog.=) 'rotating' THEN $3 OPERATOR(pg_catalog.+) grace_period ELSE $3 END,
                current_ciphertext
           FROM vault.secret_store
          WHERE name OPERATOR(pg_catalog.=) $1
            AND current_version OPERATOR(pg_catalog.=) ($2 OPERATOR(pg_catalog.-) 1)
            AND ($4::pg_catalog.timestamptz IS NULL OR next_rotation_at OPERATOR(pg_catalog.=) $4)
            FOR UPDATE
         RETURNING 1",
        &[TEXT, INT4, TSTZ, TSTZ],
        &[name.into(), next.into(), now.into(), due_arg()],
    )?;
    if moved.is_empty() {
        return Ok(false);
    }
    update(
        client,
        "UPDATE vault.secret_store
            SET current_version = $2, current_created_at = $3, current_ciphertext = $4, updated_at = $3,
                next_rotation_at = $3 OPERATOR(pg_catalog.+) rotation_interval,
                change_seq = pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass)
          WHERE name OPERATOR(pg_catalog.=) $1",
        &[TEXT, INT4, TSTZ, BYTEA],
        &[name.into(), next.into(), now.into(), ct.into()],
    )?;
    // Superseded values past their grace window, beyond the newest ones
    // kept, go now: nothing can verify or read them any more.
    update(
        client,
        "DELETE FROM vault.secret_values v
          USING vault.secret_store s
          WHERE s.name OPERATOR(pg_catalog.=) $1 AND v.secret_id OPERATOR(pg_catalog.=) s.id
            AND v.valid_until OPERATOR(pg_catalog.<=) $2
            AND v.version OPERATOR(pg_catalog.<) (s.current_version OPERATOR(pg_catalog.-) $3)",
        &[TEXT, TSTZ, INT4],
        &[name.into(), now.into(), crate::guc::SECRET_VERSIONS_KEPT.get().into()],
    )?;
    Ok(true)
}

/// Deletes, for every secret, the superseded values whose grace window has
/// ended, beyond the newest `kept`; at most `limit` rows per call, so one
/// pass never holds many row locks. Returns how many went.
pub fn prune(client: &mut SpiClient<'_>, now: TimestampWithTimeZone, kept: i32, limit: i64) -> VaultResult<usize> {
    let rows = update(
        client,
        "DELETE FROM vault.secret_values
          WHERE (secret_id, version) IN (
                SELECT v.secret_id, v.version
                  FROM vault.secret_values v
                  JOIN vault.secret_store s ON s.id OPERATOR(pg_catalog.=) v.secret_id
                 WHERE v.valid_until OPERATOR(pg_catalog.<=) $1
                   AND v.version OPERATOR(pg_catalog.<) (s.current_version OPERATOR(pg_catalog.-) $2)
                 LIMIT $3
                   FOR UPDATE OF v SKIP LOCKED)
         RETURNING 1",
        &[TSTZ, INT4, INT8],
        &[now.into(), kept.into(), limit.into()],
    )?;
    Ok(rows.len())
}

/// Deletes a secret; its superseded values go with it (ON DELETE CASCADE,
/// whose check runs after a rotation racing us has committed, so a value it
/// moved to secret_values is deleted too, never orphaned).
pub fn delete(client: &mut SpiClient<'_>, name: &str) -> VaultResult<bool> {
    let rows = update(
        client,
        "DELETE FROM vault.secret_store WHERE name OPERATOR(pg_catalog.=) $1 RETURNING 1",
        &[TEXT],
        &[name.into()],
    )?;
    Ok(!rows.is_empty())
}

/// Rotating secrets due at `now`, with their due time.
/// Rotating secrets that are due, oldest first, leaving out `skip` (still
/// backing off after a failure).
pub fn due(client: &SpiClient<'_>, now: TimestampWithTimeZone, limit: i64, skip: &[Id]) -> VaultResult<Vec<(SecretRow, TimestampWithTimeZone)>> {
    let rows = select(
        client,
        "SELECT s.id, s.name, s.kind, g.name, s.current_version, s.generator, s.current_ciphertext, s.key_group_id,
                s.next_rotation_at
           FROM vault.secret_store s
           JOIN vault.key_groups g ON g.id OPERATOR(pg_catalog.=) s.key_group_id
          WHERE s.next_rotation_at OPERATOR(pg_catalog.<=) $1
            AND NOT (s.id OPERATOR(pg_catalog.=) ANY ($3))
          ORDER BY s.next_rotation_at
          LIMIT $2",
        &[TSTZ, INT8, pg_sys::UUIDARRAYOID],
        &[now.into(), limit.into(), crate::catalog::uuids(skip).into()],
    )?;
    rows.into_iter()
        .map(|r| {
            let due: TimestampWithTimeZone = column(r.get(9)?, "next_rotation_at")?;
            Ok((secret_row(r)?, due))
        })
        .collect()
}

/// Locks a group's row against deletion until this transaction ends (the
/// lock a foreign key check takes): a concurrent `drop_group` waits for us,
/// then sees what we wrote. False if the group no longer exists. Prepared
/// once per backend: it is on every `create_secret`.
pub fn lock_group(client: &mut SpiClient<'_>, group_id: &Id) -> VaultResult<bool> {
    let rows = update(
        client,
        "SELECT 1 FROM vault.key_groups WHERE id OPERATOR(pg_catalog.=) $1 FOR KEY SHARE",
        &[UUID],
        &[uuid(group_id).into()],
    )?;
    Ok(!rows.is_empty())
}

/// Whether any secret or minted credential is sealed under the group (it
/// may then not be dropped).
pub fn group_in_use(client: &SpiClient<'_>, group_id: &Id) -> VaultResult<bool> {
    let rows = select(
        client,
        "SELECT 1 FROM vault.secret_store WHERE key_group_id OPERATOR(pg_catalog.=) $1
         UNION ALL
         SELECT 1 FROM vault.credential_store WHERE key_group_id OPERATOR(pg_catalog.=) $1 LIMIT 1",
        &[UUID],
        &[uuid(group_id).into()],
    )?;
    Ok(!rows.is_empty())
}

/// A fingerprint of all secrets, for the worker to notice changes it did
/// not make (replay on a standby, a subscriber's apply, a restore). It covers
/// each secret's id, so a secret deleted and created again under the same
/// name (a new id, the same version) changes it too. The access rules and
/// allowlists count too: backends cache them against the same epoch.
pub fn fingerprint(client: &SpiClient<'_>) -> VaultResult<(i64, i64, i64)> {
    let rows = select(
        client,
        "SELECT pg_catalog.count(*) OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM vault.access_grants)
                    OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM vault.access_defaults_revoked)
                    OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM vault.allowed_addresses),
                (COALESCE(pg_catalog.sum(change_seq), 0)
                    OPERATOR(pg_catalog.+) (SELECT COALESCE(pg_catalog.sum(change_seq), 0) FROM vault.access_grants)
                    OPERATOR(pg_catalog.+) (SELECT COALESCE(pg_catalog.sum(change_seq), 0) FROM vault.access_defaults_revoked)
                    OPERATOR(pg_catalog.+) (SELECT COALESCE(pg_catalog.sum(change_seq), 0) FROM vault.allowed_addresses))::pg_catalog.int8,
                COALESCE(pg_catalog.sum(pg_catalog.hashtextextended(id::pg_catalog.text, current_version)
                                        OPERATOR(pg_catalog.%) 1000000007), 0)::pg_catalog.int8
           FROM vault.secret_store",
        &[],
        &[],
    )?;
    let r = rows.first();
    Ok((column(r.get(1)?, "count")?, column(r.get(2)?, "sum")?, column(r.get(3)?, "ids")?))
}
