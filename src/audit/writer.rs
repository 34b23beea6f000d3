//! Writing the queue to `vault.audit_log` (the worker) and checking the
//! chain (`vault.verify_audit`).
//!
//! Each record's MAC covers its fields and the previous record's MAC, under
//! a key derived from a random key the default KMS key generated and
//! wrapped when the first record was written. `vault.audit_chain` holds
//! that wrapped key and the chain's ends: the id and MAC before the first
//! record kept (retention moves it) and the last record's, so deleting
//! records at either end is detected too; and the queue position already
//! written, so a worker that stopped between its commit and freeing the
//! queue entries never writes a record twice. The chain is per database
//! and node: a dump carries it, a logical-replication subscriber keeps its
//! own.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv6Addr};

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use secret_vault_core::audit::{self, Record, Verifier};
use zeroize::Zeroizing;

use super::queue::{self, Fields};
use crate::catalog::{column, KmsKeyRow};
use crate::error::{VaultError, VaultResult};
use crate::identity::{self, sql};
use crate::kms;

/// Records written per transaction.
pub const BATCH: usize = 500;

thread_local! {
    /// The last chain key opened, with the wrapped bytes it came from.
    static KEY: RefCell<Option<(Vec<u8>, Zeroizing<[u8; 32]>)>> = const { RefCell::new(None) };
}

/// An address as PostgreSQL prints an `inet` host (IPv4 unmapped).
pub fn addr_text(b: &[u8; 16]) -> String {
    let v6 = Ipv6Addr::from(*b);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

fn addr_bytes(text: &str) -> Option<[u8; 16]> {
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => Some(v6.octets()),
    }
}

/// The chain's wrapped key, and the registered KMS key that wrapped it.
pub struct KeySource {
    kms: KmsKeyRow,
    key_id: String,
    wrapped: Vec<u8>,
}

/// Where the chain key comes from: the chain's own, or (no record written
/// yet) the default KMS key that is to make one.
pub enum Source {
    Chain(KeySource),
    None(KmsKeyRow),
}

/// Stages the record of a write that succeeded, in the caller's
/// transaction (as the tables' owner): it commits with the write.
pub fn stage(f: &Fields) -> VaultResult<()> {
    let at = TimestampWithTimeZone::try_from(f.at).map_err(|_| VaultError::Internal("audit time out of range".into()))?;
    identity::as_owner_write(|_| {
        Spi::connect_mut(|c| {
            c.update(
                &sql("INSERT INTO vault.audit_staging (at, database, role, session_role, client_addr, application_name, action, object)
                      VALUES ($1, $2, $3, $4, $5::pg_catalog.inet, $6, $7, $8)")?,
                None,
                &[
                    at.into(),
                    f.database_name.as_str().into(),
                    f.role.as_str().into(),
                    f.session_role.as_str().into(),
                    f.client_addr.as_ref().map(addr_text).into(),
                    f.application_name.as_str().into(),
                    f.action.as_str().into(),
                    f.object.as_deref().into(),
                ],
            )?;
            Ok(())
        })
    })
}

/// Committed staged records, oldest first, taken out of staging (in the
/// worker's transaction: they move to the log atomically).
fn unstage(c: &mut SpiClient<'_>, max: usize) -> VaultResult<Vec<Fields>> {
    let rows = c.update(
        &sql("DELETE FROM vault.audit_staging WHERE seq OPERATOR(pg_catalog.=) ANY (
                  SELECT seq FROM vault.audit_staging ORDER BY seq LIMIT $1)
              RETURNING seq, at, database, role, session_role, pg_catalog.host(client_addr), application_name, action, object")?,
        None,
        &[(max as i64).into()],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let seq: i64 = column(r.get(1)?, "seq")?;
        let at: TimestampWithTimeZone = column(r.get(2)?, "at")?;
        let client: Option<String> = r.get(6)?;
        out.push((
            seq,
            Fields {
                at: at.into(),
                database: 0,
                database_name: column(r.get(3)?, "database")?,
                role: column(r.get(4)?, "role")?,
                session_role: column(r.get(5)?, "session_role")?,
                client_addr: client.as_deref().and_then(addr_bytes),
                application_name: column(r.get(7)?, "application_name")?,
                action: column(r.get(8)?, "action")?,
                object: r.get(9)?,
                outcome: "ok".into(),
                sqlstate: None,
            },
        ));
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out.into_iter().map(|(_, f)| f).collect())
}

/// Whether committed writes wait in staging.
pub fn staged(c: &SpiClient<'_>) -> VaultResult<bool> {
    Ok(c.select(&sql("SELECT EXISTS (SELECT 1 FROM vault.audit_staging)")?, Some(1), &[])?.first().get_one::<bool>()?.unwrap_or(false))
}

/// Reads the chain's key source (in a transaction).
pub fn source(c: &SpiClient<'_>) -> VaultResult<Source> {
    let t = c.select(
        &sql("SELECT k.name, k.provider, k.config::pg_catalog.text, a.key_id, a.wrapped_key
                FROM vault.audit_chain a LEFT JOIN vault.kms_keys k ON k.name OPERATOR(pg_catalog.=) a.kms_key")?,
        Some(1),
        &[],
    )?;
    if t.is_empty() {
        return Ok(Source::None(crate::catalog::resolve_kms_key(c, None)?));
    }
    let r = t.first();
    let name: Option<String> = r.get(1)?;
    let Some(name) = name else {
        return Err(VaultError::Internal("the audit chain names no registered KMS key".into()));
    };
    Ok(Source::Chain(KeySource {
        kms: KmsKeyRow { name, provider: column(r.get(2)?, "provider")?, config: column(r.get(3)?, "config")? },
        key_id: column(r.get(4)?, "key_id")?,
        wrapped: column(r.get(5)?, "wrapped_key")?,
    }))
}

/// The chain key from its source (a KMS call unless it is the last one
/// opened): outside any transaction in the worker.
pub fn open(s: &KeySource) -> VaultResult<Zeroizing<[u8; 32]>> {
    if let Some(k) = KEY.with(|k| k.borrow().as_ref().filter(|(w, _)| *w == s.wrapped).map(|(_, k)| k.clone())) {
        return Ok(k);
    }
    let raw = kms::unwrap_audit_key(&s.kms.spec(), &s.key_id, &s.wrapped)?;
    let key = audit::chain_key(raw.as_bytes());
    KEY.with(|k| *k.borrow_mut() = Some((s.wrapped.clone(), key.clone())));
    Ok(key)
}

/// Starts the chain with a key the KMS key generated (made outside any
/// transaction); a chain already there is kept.
pub fn start(c: &mut SpiClient<'_>, kms_key: &str, key_id: &str, wrapped: &[u8]) -> VaultResult<()> {
    c.update(
        &sql("INSERT INTO vault.audit_chain (kms_key, key_id, wrapped_key, first_id, anchor, last_id, last_mac)
              VALUES ($1, $2, $3, 1, $4, 0, $4) ON CONFLICT DO NOTHING")?,
        None,
        &[kms_key.into(), key_id.into(), wrapped.into(), vec![0u8; audit::MAC_LEN].into()],
    )?;
    Ok(())
}

/// Wraps the chain's key under the default KMS key (`vault.drop_kms_key`
/// of the one that wraps it now). Two KMS calls in the caller's
/// transaction, as a registry change already makes.
pub fn move_key(c: &mut SpiClient<'_>) -> VaultResult<()> {
    let Source::Chain(src) = source(c)? else { return Ok(()) };
    let to = crate::catalog::resolve_kms_key(c, None)?;
    let raw = kms::unwrap_audit_key(&src.kms.spec(), &src.key_id, &src.wrapped)?;
    let (key_id, wrapped) = kms::wrap_audit_key(&to.spec(), &raw)?;
    c.update(
        &sql("UPDATE vault.audit_chain SET kms_key = $1, key_id = $2, wrapped_key = $3")?,
        None,
        &[to.name.as_str().into(), key_id.as_str().into(), wrapped.as_slice().into()],
    )?;
    Ok(())
}

/// Makes the chain's key with the default KMS key (the worker, once per
/// database, outside any transaction).
pub fn new_key(kms_row: &KmsKeyRow) -> VaultResult<(String, Vec<u8>)> {
    let (_key, key_id, wrapped) = kms::new_audit_key(&kms_row.spec())?;
    Ok((key_id, wrapped))
}

/// Whether the head's ends still match their MAC (the initial head has
/// none). The worker appends to, and prunes, only a head that does: one
/// edited to hide records cut from an end is never signed again.
fn head_intact(key: &[u8; 32], h: &Head) -> bool {
    match &h.head_mac {
        Some(m) => audit::head_ok(key, h.first_id, &h.anchor, h.last_id, &h.last_mac, m),
        None => h.first_id == 1 && h.last_id == 0 && h.anchor.iter().all(|b| *b == 0) && h.last_mac.iter().all(|b| *b == 0),
    }
}

fn tampered() -> VaultError {
    VaultError::Internal(
        "the audit chain's head (vault.audit_chain) does not match its MAC: records were cut from the log; \
         nothing more is appended until it is resolved (see vault.verify_audit() and docs/access.md)"
            .into(),
    )
}

struct Head {
    first_id: i64,
    anchor: Vec<u8>,
    last_id: i64,
    last_mac: Vec<u8>,
    wrapped: Vec<u8>,
    database: i64,
    generation: i64,
    seq: i64,
    head_mac: Option<Vec<u8>>,
}

const HEAD: &str = "SELECT first_id, anchor, last_id, last_mac, wrapped_key, queue_database, queue_generation, queue_seq,
                           head_mac
                      FROM vault.audit_chain";

fn head(c: &SpiClient<'_>) -> VaultResult<Option<Head>> {
    head_of(c.select(&sql(HEAD)?, Some(1), &[])?)
}

/// The head, locked until the transaction ends (one writer at a time).
fn head_locked(c: &mut SpiClient<'_>) -> VaultResult<Option<Head>> {
    head_of(c.update(&sql(&format!("{HEAD} FOR UPDATE"))?, Some(1), &[])?)
}

fn head_of(t: pgrx::spi::SpiTupleTable<'_>) -> VaultResult<Option<Head>> {
    if t.is_empty() {
        return Ok(None);
    }
    let r = t.first();
    Ok(Some(Head {
        first_id: column(r.get(1)?, "first_id")?,
        anchor: column(r.get(2)?, "anchor")?,
        last_id: column(r.get(3)?, "last_id")?,
        last_mac: column(r.get(4)?, "last_mac")?,
        wrapped: column(r.get(5)?, "wrapped_key")?,
        database: column(r.get(6)?, "queue_database")?,
        generation: column(r.get(7)?, "queue_generation")?,
        seq: column(r.get(8)?, "queue_seq")?,
        head_mac: r.get(9)?,
    }))
}

fn record(id: i64, f: &Fields) -> Record {
    Record {
        id,
        at: f.at,
        database: f.database_name.clone(),
        role: f.role.clone(),
        session_role: f.session_role.clone(),
        client_addr: f.client_addr,
        application_name: f.application_name.clone(),
        action: f.action.clone(),
        object: f.object.clone(),
        outcome: f.outcome.clone(),
        sqlstate: f.sqlstate.clone(),
    }
}

/// Appends taken queue records to the chain (in the worker's transaction);
/// how many were written. Records this database's chain already holds
/// (same queue generation, sequence not past the head's) are skipped.
pub fn append(key: &[u8; 32], database: u32, generation: u64, taken: &[queue::Taken]) -> VaultResult<usize> {
    Spi::connect_mut(|c| {
        let h = head_locked(c)?.ok_or_else(|| VaultError::Internal("the audit chain has no head".into()))?;
        let opened = KEY.with(|k| k.borrow().as_ref().is_some_and(|(w, _)| *w == h.wrapped));
        if !opened {
            return Err(VaultError::Internal("the audit chain's key changed; the next round opens it".into()));
        }
        if !head_intact(key, &h) {
            return Err(tampered());
        }
        let (mut id, mut prev) = (h.last_id, h.last_mac.clone());
        let same_run = h.database == database as i64 && h.generation == generation as i64;
        let mut last_seq = if same_run { h.seq } else { 0 };
        // Queued records (not yet written) and committed staged writes, in
        // time order.
        let mut batch: Vec<(Option<u64>, Fields)> = taken
            .iter()
            .filter(|t| !(same_run && t.seq as i64 <= h.seq))
            .map(|t| (Some(t.seq), t.fields.clone()))
            .collect();
        batch.extend(unstage(c, BATCH)?.into_iter().map(|f| (None, f)));
        batch.sort_by_key(|(_, f)| f.at);
        // One INSERT for the batch, from arrays: the drain rate bounds how
        // fast audited reads can go once the queue is full.
        let mut cols: (Vec<i64>, Vec<TimestampWithTimeZone>, Vec<String>, Vec<String>, Vec<String>) = Default::default();
        let mut more: (Vec<Option<String>>, Vec<String>, Vec<String>, Vec<Option<String>>, Vec<String>, Vec<Option<String>>) =
            Default::default();
        let mut macs: Vec<Vec<u8>> = Vec::new();
        for (seq, f) in &batch {
            id += 1;
            let r = record(id, f);
            let mac = audit::mac(key, &prev, &r);
            let at = TimestampWithTimeZone::try_from(r.at).map_err(|_| VaultError::Internal("audit time out of range".into()))?;
            cols.0.push(r.id);
            cols.1.push(at);
            more.0.push(r.client_addr.as_ref().map(addr_text));
            more.3.push(r.object);
            more.5.push(r.sqlstate);
            cols.2.push(r.database);
            cols.3.push(r.role);
            cols.4.push(r.session_role);
            more.1.push(r.application_name);
            more.2.push(r.action);
            more.4.push(r.outcome);
            prev = mac.to_vec();
            macs.push(prev.clone());
            if let Some(seq) = seq {
                last_seq = last_seq.max(*seq as i64);
            }
        }
        let n = cols.0.len();
        if n > 0 {
            c.update(
                &sql("INSERT INTO vault.audit_log (id, at, database, role, session_role, client_addr, application_name,
                                                   action, object, outcome, sqlstate, mac)
                      SELECT * FROM ROWS FROM (
                          pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.timestamptz[]),
                          pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]),
                          pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.inet[]),
                          pg_catalog.unnest($7::pg_catalog.text[]), pg_catalog.unnest($8::pg_catalog.text[]),
                          pg_catalog.unnest($9::pg_catalog.text[]), pg_catalog.unnest($10::pg_catalog.text[]),
                          pg_catalog.unnest($11::pg_catalog.text[]), pg_catalog.unnest($12::pg_catalog.bytea[]))")?,
                None,
                &[
                    cols.0.into(),
                    cols.1.into(),
                    cols.2.into(),
                    cols.3.into(),
                    cols.4.into(),
                    more.0.into(),
                    more.1.into(),
                    more.2.into(),
                    more.3.into(),
                    more.4.into(),
                    more.5.into(),
                    macs.into(),
                ],
            )?;
        }
        let head_mac = audit::head_mac(key, h.first_id, &h.anchor, id, &prev);
        c.update(
            &sql("UPDATE vault.audit_chain SET last_id = $1, last_mac = $2, queue_database = $3,
                         queue_generation = $4, queue_seq = $5, head_mac = $6")?,
            None,
            &[
                id.into(),
                prev.as_slice().into(),
                (database as i64).into(),
                (generation as i64).into(),
                last_seq.into(),
                head_mac.as_slice().into(),
            ],
        )?;
        Ok(n)
    })
}

/// Deletes records older than the retention and moves the chain's anchor
/// to the last one deleted; how many. Runs in the worker's transaction.
pub fn prune(key: &[u8; 32], retention_s: i64) -> VaultResult<i64> {
    Spi::connect_mut(|c| {
        let Some(h) = head_locked(c)? else { return Ok(0) };
        if !KEY.with(|k| k.borrow().as_ref().is_some_and(|(w, _)| *w == h.wrapped)) {
            return Err(VaultError::Internal("the audit chain's key changed; the next round opens it".into()));
        }
        if !head_intact(key, &h) {
            return Err(tampered());
        }
        let cutoff = crate::catalog::now_micros() - retention_s * 1_000_000;
        let cutoff = TimestampWithTimeZone::try_from(cutoff).map_err(|_| VaultError::Internal("retention out of range".into()))?;
        let t = c.select(
            &sql("SELECT id, mac FROM vault.audit_log WHERE at OPERATOR(pg_catalog.<) $1 ORDER BY id DESC LIMIT 1")?,
            Some(1),
            &[cutoff.into()],
        )?;
        if t.is_empty() {
            return Ok(0);
        }
        let r = t.first();
        let id: i64 = column(r.get(1)?, "id")?;
        let mac: Vec<u8> = column(r.get(2)?, "mac")?;
        let n = c.update(&sql("DELETE FROM vault.audit_log WHERE id OPERATOR(pg_catalog.<=) $1")?, None, &[id.into()])?.len() as i64;
        let head_mac = audit::head_mac(key, id + 1, &mac, h.last_id, &h.last_mac);
        c.update(
            &sql("UPDATE vault.audit_chain SET first_id = $1, anchor = $2, head_mac = $3")?,
            None,
            &[(id + 1).into(), mac.as_slice().into(), head_mac.as_slice().into()],
        )?;
        Ok(n)
    })
}

/// NULL when the chain is intact; else the id of the first record that
/// does not follow from the one before: the record edited, the one after a
/// deleted record, the first out of order; or, when records at the end
/// were deleted, the id the next record would have had.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn verify_audit() -> Option<i64> {
    crate::audit::write("verify_audit", None, || {
        identity::as_owner(|_| {
            let src = Spi::connect(|c| source(c))?;
            let Source::Chain(src) = src else {
                // Nothing was ever written: intact unless records appeared.
                let any = Spi::connect(|c| -> VaultResult<Option<i64>> {
                    Ok(c.select(&sql("SELECT min(id) FROM vault.audit_log")?, Some(1), &[])?.first().get(1)?)
                })?;
                return Ok(any);
            };
            let key = open(&src)?;
            Spi::connect(|c| {
                let h = head(c)?.ok_or_else(|| VaultError::Internal("the audit chain has no head".into()))?;
                // The ends themselves: moved to hide records cut from either
                // end, they no longer match their MAC (none before the first
                // record is written: then the ends must be the initial ones).
                if !head_intact(&key, &h) {
                    let first: Option<i64> = c.select(&sql("SELECT min(id) FROM vault.audit_log")?, Some(1), &[])?.first().get(1)?;
                    return Ok(Some(first.unwrap_or(h.first_id)));
                }
                let mut v = Verifier::new(&key, &h.anchor, h.first_id);
                let mut after = i64::MIN;
                let mut last = h.anchor.clone();
                loop {
                    let rows = c.select(
                        &sql("SELECT id, at, database, role, session_role, pg_catalog.host(client_addr), application_name,
                                     action, object, outcome, sqlstate, mac
                                FROM vault.audit_log WHERE id OPERATOR(pg_catalog.>) $1 ORDER BY id LIMIT 5000")?,
                        None,
                        &[after.into()],
                    )?;
                    if rows.is_empty() {
                        break;
                    }
                    for r in rows {
                        let id: i64 = column(r.get(1)?, "id")?;
                        // A row that cannot even be read back (a NULL put
                        // where the writer never leaves one) was edited.
                        let parsed = (|| -> VaultResult<(Record, Vec<u8>)> {
                            let at: TimestampWithTimeZone = column(r.get(2)?, "at")?;
                            let client: Option<String> = r.get(6)?;
                            let client_addr = match client {
                                Some(t) => Some(addr_bytes(&t).ok_or_else(|| VaultError::Internal("address".into()))?),
                                None => None,
                            };
                            Ok((
                                Record {
                                    id,
                                    at: at.into(),
                                    database: column(r.get(3)?, "database")?,
                                    role: column(r.get(4)?, "role")?,
                                    session_role: column(r.get(5)?, "session_role")?,
                                    client_addr,
                                    application_name: column(r.get(7)?, "application_name")?,
                                    action: column(r.get(8)?, "action")?,
                                    object: r.get(9)?,
                                    outcome: column(r.get(10)?, "outcome")?,
                                    sqlstate: r.get(11)?,
                                },
                                column(r.get(12)?, "mac")?,
                            ))
                        })();
                        match parsed {
                            Ok((rec, mac)) if v.check(&rec, &mac) => {
                                last = mac;
                                after = id;
                            }
                            _ => return Ok(Some(id)),
                        }
                    }
                }
                // Records deleted at the end: the head knows of more.
                if v.next_id() != h.last_id + 1 || last != h.last_mac {
                    return Ok(Some(v.next_id()));
                }
                Ok(None)
            })
        })
    })
}
