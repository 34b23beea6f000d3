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

/// Makes the chain's key with the default KMS key (the worker, once per
/// database, outside any transaction).
pub fn new_key(kms_row: &KmsKeyRow) -> VaultResult<(String, Vec<u8>)> {
    let (_key, key_id, wrapped) = kms::new_audit_key(&kms_row.spec())?;
    Ok((key_id, wrapped))
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
}

const HEAD: &str = "SELECT first_id, anchor, last_id, last_mac, wrapped_key, queue_database, queue_generation, queue_seq
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
        let (mut id, mut prev) = (h.last_id, h.last_mac.clone());
        let same_run = h.database == database as i64 && h.generation == generation as i64;
        let mut last_seq = if same_run { h.seq } else { 0 };
        let mut n = 0;
        for t in taken {
            if same_run && t.seq as i64 <= h.seq {
                continue;
            }
            id += 1;
            let r = record(id, &t.fields);
            let mac = audit::mac(key, &prev, &r);
            let at = TimestampWithTimeZone::try_from(r.at).map_err(|_| VaultError::Internal("audit time out of range".into()))?;
            c.update(
                &sql("INSERT INTO vault.audit_log (id, at, database, role, session_role, client_addr, application_name,
                                                   action, object, outcome, sqlstate, mac)
                      VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.inet, $7, $8, $9, $10, $11, $12)")?,
                None,
                &[
                    r.id.into(),
                    at.into(),
                    r.database.as_str().into(),
                    r.role.as_str().into(),
                    r.session_role.as_str().into(),
                    r.client_addr.as_ref().map(addr_text).into(),
                    r.application_name.as_str().into(),
                    r.action.as_str().into(),
                    r.object.as_deref().into(),
                    r.outcome.as_str().into(),
                    r.sqlstate.as_deref().into(),
                    mac.as_slice().into(),
                ],
            )?;
            prev = mac.to_vec();
            last_seq = t.seq as i64;
            n += 1;
        }
        c.update(
            &sql("UPDATE vault.audit_chain SET last_id = $1, last_mac = $2, queue_database = $3,
                         queue_generation = $4, queue_seq = $5")?,
            None,
            &[id.into(), prev.as_slice().into(), (database as i64).into(), (generation as i64).into(), last_seq.into()],
        )?;
        Ok(n)
    })
}

/// Deletes records older than the retention and moves the chain's anchor
/// to the last one deleted; how many. Runs in the worker's transaction.
pub fn prune(retention_s: i64) -> VaultResult<i64> {
    Spi::connect_mut(|c| {
        let Some(_) = head_locked(c)? else { return Ok(0) };
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
        c.update(
            &sql("UPDATE vault.audit_chain SET first_id = $1 OPERATOR(pg_catalog.+) 1, anchor = $2")?,
            None,
            &[id.into(), mac.as_slice().into()],
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
