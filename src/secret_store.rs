//! SQL against the secret tables. Statements are prepared once per backend
//! and kept (SPI_keepplan): creating or reading a secret then costs no parse
//! or plan. Every name and operator is schema-qualified (see catalog.rs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::{DatumWithOid, Interval, TimestampWithTimeZone};
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::Uuid;

use crate::error::{VaultError, VaultResult};

type Id = [u8; 16];

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

fn oid(o: pg_sys::Oid) -> PgOid {
    PgOid::from(o)
}

fn plan(client: &SpiClient<'_>, sql: &'static str, types: &[pg_sys::Oid], mutating: bool) -> VaultResult<Rc<OwnedPreparedStatement>> {
    if let Some(p) = PLANS.with(|m| m.borrow().get(sql).cloned()) {
        return Ok(p);
    }
    let types: Vec<PgOid> = types.iter().copied().map(oid).collect();
    let stmt = if mutating { client.prepare_mut(sql, &types)? } else { client.prepare(sql, &types)? };
    let kept = Rc::new(stmt.keep());
    PLANS.with(|m| m.borrow_mut().insert(sql, kept.clone()));
    Ok(kept)
}

fn select<'c>(
    client: &SpiClient<'c>,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[DatumWithOid<'_>],
) -> VaultResult<SpiTupleTable<'c>> {
    let p = plan(client, sql, types, false)?;
    Ok(client.select(&*p, None, args)?)
}

fn update<'c>(
    client: &mut SpiClient<'c>,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[DatumWithOid<'_>],
) -> VaultResult<SpiTupleTable<'c>> {
    let p = plan(client, sql, types, true)?;
    Ok(client.update(&*p, None, args)?)
}

fn req<T>(v: Option<T>, what: &str) -> VaultResult<T> {
    v.ok_or_else(|| VaultError::Internal(format!("secret row has NULL {what}")))
}

fn uuid(id: &Id) -> Uuid {
    Uuid::from_bytes(*id)
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
    let id: Uuid = req(row.get(1)?, "id")?;
    Ok(SecretRow {
        id: *id.as_bytes(),
        name: req(row.get(2)?, "name")?,
        kind: req(row.get(3)?, "kind")?,
        group: req(row.get(4)?, "key group")?,
        current_version: req(row.get(5)?, "current_version")?,
        generator: row.get(6)?,
    })
}

pub fn load(client: &SpiClient<'_>, name: &str) -> VaultResult<Option<SecretRow>> {
    const SQL: &str = "SELECT s.id, s.name, s.kind, g.name, s.current_version, s.generator
                         FROM vault.secret_store s
                         JOIN vault.key_groups g ON g.id OPERATOR(pg_catalog.=) s.key_group_id
                        WHERE s.name OPERATOR(pg_catalog.=) $1";
    let rows = select(client, SQL, &[TEXT], &[name.into()])?;
    rows.into_iter().next().map(secret_row).transpose()
}

pub fn get(client: &SpiClient<'_>, name: &str) -> VaultResult<SecretRow> {
    load(client, name)?.ok_or_else(|| VaultError::SecretNotFound(name.to_string()))
}

/// The current version and every older one whose grace window is still open at `now`.
pub fn live_values(client: &SpiClient<'_>, s: &SecretRow, now: TimestampWithTimeZone) -> VaultResult<Vec<ValueRow>> {
    let rows = select(
        client,
        "SELECT version, valid_until, ciphertext FROM vault.secret_values
          WHERE secret_id OPERATOR(pg_catalog.=) $1
            AND (version OPERATOR(pg_catalog.=) $2 OR valid_until OPERATOR(pg_catalog.>) $3)
          ORDER BY version DESC",
        &[UUID, INT4, TSTZ],
        &[uuid(&s.id).into(), s.current_version.into(), now.into()],
    )?;
    rows.into_iter()
        .map(|r| {
            let until: Option<TimestampWithTimeZone> = r.get(2)?;
            Ok(ValueRow {
                version: req(r.get(1)?, "version")?,
                valid_until: until.map(Into::into),
                ciphertext: req(r.get(3)?, "ciphertext")?,
            })
        })
        .collect()
}

/// Every version's metadata: (version, created_at, valid_until).
pub fn versions(
    client: &SpiClient<'_>,
    id: &Id,
) -> VaultResult<Vec<(i32, TimestampWithTimeZone, Option<TimestampWithTimeZone>)>> {
    let rows = select(
        client,
        "SELECT version, created_at, valid_until FROM vault.secret_values
          WHERE secret_id OPERATOR(pg_catalog.=) $1 ORDER BY version",
        &[UUID],
        &[uuid(id).into()],
    )?;
    rows.into_iter()
        .map(|r| Ok((req(r.get(1)?, "version")?, req(r.get(2)?, "created_at")?, r.get(3)?)))
        .collect()
}

pub struct NewSecret<'a> {
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
              current_version, created_at, updated_at, next_rotation_at)
         VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, '0'::pg_catalog.interval), $8, 1, $9, $9,
                 $9 OPERATOR(pg_catalog.+) $6)
         ON CONFLICT (name) DO NOTHING
         RETURNING 1",
        &[UUID, TEXT, TEXT, TEXT, UUID, INTERVAL, INTERVAL, TEXT, TSTZ],
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
        ],
    )?;
    Ok(!rows.is_empty())
}

pub fn insert_value(client: &mut SpiClient<'_>, id: &Id, version: i32, now: TimestampWithTimeZone, ct: &[u8]) -> VaultResult<()> {
    update(
        client,
        "INSERT INTO vault.secret_values (secret_id, version, created_at, valid_until, ciphertext)
         VALUES ($1, $2, $3, NULL, $4)",
        &[UUID, INT4, TSTZ, BYTEA],
        &[uuid(id).into(), version.into(), now.into(), ct.into()],
    )?;
    Ok(())
}

/// Claims version `next` (like catalog::claim_version for groups), and ends
/// the previous version's validity: at once for a manual secret, after the
/// grace period for a rotating one.
pub fn claim_next(
    client: &mut SpiClient<'_>,
    id: &Id,
    next: i32,
    now: TimestampWithTimeZone,
    due: Option<TimestampWithTimeZone>,
) -> VaultResult<bool> {
    let due_arg = due.map_or_else(DatumWithOid::null::<TimestampWithTimeZone>, Into::into);
    let rows = update(
        client,
        "UPDATE vault.secret_store
            SET current_version = $2, updated_at = $3,
                next_rotation_at = $3 OPERATOR(pg_catalog.+) rotation_interval,
                change_seq = pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass)
          WHERE id OPERATOR(pg_catalog.=) $1
            AND current_version OPERATOR(pg_catalog.=) ($2 OPERATOR(pg_catalog.-) 1)
            AND ($4::pg_catalog.timestamptz IS NULL OR next_rotation_at OPERATOR(pg_catalog.=) $4)
         RETURNING 1",
        &[UUID, INT4, TSTZ, TSTZ],
        &[uuid(id).into(), next.into(), now.into(), due_arg],
    )?;
    if rows.is_empty() {
        return Ok(false);
    }
    update(
        client,
        "UPDATE vault.secret_values v
            SET valid_until = CASE WHEN s.kind OPERATOR(pg_catalog.=) 'rotating'
                                   THEN $3 OPERATOR(pg_catalog.+) s.grace_period ELSE $3 END
           FROM vault.secret_store s
          WHERE s.id OPERATOR(pg_catalog.=) v.secret_id
            AND v.secret_id OPERATOR(pg_catalog.=) $1
            AND v.version OPERATOR(pg_catalog.=) ($2 OPERATOR(pg_catalog.-) 1)",
        &[UUID, INT4, TSTZ],
        &[uuid(id).into(), next.into(), now.into()],
    )?;
    Ok(true)
}

/// Deletes a secret and, by cascade, every ciphertext of it.
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
pub fn due(client: &SpiClient<'_>, now: TimestampWithTimeZone, limit: i64) -> VaultResult<Vec<(SecretRow, TimestampWithTimeZone)>> {
    let rows = select(
        client,
        "SELECT s.id, s.name, s.kind, g.name, s.current_version, s.generator, s.next_rotation_at
           FROM vault.secret_store s
           JOIN vault.key_groups g ON g.id OPERATOR(pg_catalog.=) s.key_group_id
          WHERE s.next_rotation_at OPERATOR(pg_catalog.<=) $1
          ORDER BY s.next_rotation_at
          LIMIT $2",
        &[TSTZ, INT8],
        &[now.into(), limit.into()],
    )?;
    rows.into_iter()
        .map(|r| {
            let due: TimestampWithTimeZone = req(r.get(7)?, "next_rotation_at")?;
            Ok((secret_row(r)?, due))
        })
        .collect()
}

/// Whether any secret is sealed under the group (it may then not be dropped).
pub fn group_in_use(client: &SpiClient<'_>, group_id: &Id) -> VaultResult<bool> {
    let rows = select(
        client,
        "SELECT 1 FROM vault.secret_store WHERE key_group_id OPERATOR(pg_catalog.=) $1 LIMIT 1",
        &[UUID],
        &[uuid(group_id).into()],
    )?;
    Ok(!rows.is_empty())
}

/// A cheap fingerprint of all secrets, for the worker to notice changes it
/// did not make (replay on a standby, a subscriber's apply, a restore).
pub fn fingerprint(client: &SpiClient<'_>) -> VaultResult<(i64, i64)> {
    let rows = select(
        client,
        "SELECT pg_catalog.count(*), COALESCE(pg_catalog.sum(change_seq), 0)::pg_catalog.int8
           FROM vault.secret_store",
        &[],
        &[],
    )?;
    let r = rows.first();
    Ok((req(r.get(1)?, "count")?, req(r.get(2)?, "sum")?))
}
