//! Re-wrap: moving ring key rows to a KMS key's current material (after an
//! AWS alias moved to another key, a transit key rotation) or to another
//! KMS key (`vault.move_group`), without touching any data sealed under the
//! ring keys: a re-wrapped row holds the same key bytes.
//!
//! State lives in the tables, so a pass is resumable by construction: a row
//! needs moving while it names another KMS key than its group's, or other
//! material than its KMS key's recorded `key_id`. The worker moves rows one
//! at a time, the KMS call between transactions, and stores each with a
//! compare-and-set on the wrapped bytes: a call whose answer was lost, or a
//! row changed meanwhile, costs one more call, never a wrong row.

use pgrx::prelude::*;
use secret_vault_core::aad::RingKeyBinding;
use secret_vault_core::kms::Binding;

use crate::catalog::{self, column, GroupRow, KeyRow, KmsKeyRow};
use crate::error::{require_writable, VaultError, VaultResult};
use crate::{coherence, identity, kms};

/// A row to move and where it goes.
pub struct Candidate {
    pub group: GroupRow,
    pub row: KeyRow,
    /// The group's KMS key (the destination).
    pub to: KmsKeyRow,
    /// What the destination's recorded current material is.
    pub to_key_id: Option<String>,
}

/// Rows on other material than their group's KMS key's current one, leaving
/// out groups in `skip` (backing off). 0.1.0-bound rows wait for re-binding.
pub fn candidates(c: &pgrx::spi::SpiClient<'_>, limit: i64, skip: &[[u8; 16]]) -> VaultResult<Vec<Candidate>> {
    let rows = c.select(
        &identity::sql(&format!(
            "SELECT {}, {}, k.key_id
               FROM {}
               JOIN vault.key_groups g ON g.id OPERATOR(pg_catalog.=) r.group_id
               JOIN vault.kms_keys k ON k.name OPERATOR(pg_catalog.=) g.kms_key
              WHERE r.binding OPERATOR(pg_catalog.=) 2
                AND (r.kms_key OPERATOR(pg_catalog.<>) g.kms_key
                     OR (k.key_id IS NOT NULL AND r.kms_key_id OPERATOR(pg_catalog.<>) k.key_id))
                AND NOT (g.id OPERATOR(pg_catalog.=) ANY ($2))
              ORDER BY g.id, r.version
              LIMIT $1",
            catalog::GROUP_COLUMNS,
            catalog::KEY_COLUMNS,
            catalog::KEY_FROM
        ))?,
        None,
        &[limit.into(), catalog::uuids(skip).into()],
    )?;
    rows.into_iter()
        .map(|r| {
            let row = catalog::key_row_from(&r, catalog::G + 1)?;
            let to_key_id: Option<String> = r.get(catalog::G + 10)?;
            let group = catalog::group_row(r)?;
            let to = KmsKeyRow { name: group.kms_key.clone(), provider: group.kms_provider.clone(), config: group.kms_config.clone() };
            Ok(Candidate { group, row, to, to_key_id })
        })
        .collect()
}

/// Moves one row's wrapping (the KMS calls; no transaction needed): native
/// re-wrap within one KMS key, unwrap and wrap between two.
pub fn rewrap_row(cand: &Candidate) -> VaultResult<(String, Vec<u8>)> {
    let g = &cand.group;
    let binding = Binding {
        scheme: RingKeyBinding::V2,
        group: &g.id,
        version: cand.row.version as u32,
        purpose: g.purpose.as_str(),
        key_bytes: g.key_bytes as u32,
    };
    if cand.row.kms.name == cand.to.name {
        kms::rewrap(&cand.to.spec(), &cand.row, &binding)
    } else {
        let key = kms::unwrap(g, &cand.row)?;
        kms::rebind_ring_key(g, cand.row.version, &key)
    }
}

/// Stores a moved row unless it changed since it was read.
pub fn store(c: &mut pgrx::spi::SpiClient<'_>, cand: &Candidate, key_id: &str, wrapped: &[u8]) -> VaultResult<bool> {
    let rows = c.update(
        &identity::sql(
            "UPDATE vault.ring_keys SET wrapped_key = $5, kms_key_id = $6, kms_key = $7
              WHERE group_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2
                AND wrapped_key OPERATOR(pg_catalog.=) $3 AND kms_key OPERATOR(pg_catalog.=) $4
             RETURNING 1",
        )?,
        None,
        &[
            catalog::uuid(&cand.group.id).into(),
            cand.row.version.into(),
            cand.row.wrapped.as_slice().into(),
            cand.row.kms.name.as_str().into(),
            wrapped.into(),
            key_id.into(),
            cand.to.name.as_str().into(),
        ],
    )?;
    Ok(!rows.is_empty())
}

/// Records what a KMS key's current material is (a live answer), with a
/// WARNING when it moved from other recorded material: an alias moved by
/// someone with access to the KMS account makes every row follow it, so
/// whichever path records the move first (the worker's check, its re-wrap
/// pass, `vault.rewrap()`) says so. The first answer for a key moves
/// nothing and says nothing.
pub fn record_key_id(c: &mut pgrx::spi::SpiClient<'_>, kms_key: &str, key_id: &str) -> VaultResult<()> {
    // The old value comes from a self-join: RETURNING sees only the new row.
    let rows = c.update(
        &identity::sql(
            "UPDATE vault.kms_keys AS k SET key_id = $2
               FROM vault.kms_keys AS o
              WHERE k.name OPERATOR(pg_catalog.=) $1 AND o.name OPERATOR(pg_catalog.=) k.name
                AND k.key_id IS DISTINCT FROM $2
             RETURNING o.key_id IS NOT NULL",
        )?,
        None,
        &[kms_key.into(), key_id.into()],
    )?;
    if !rows.is_empty() && rows.first().get::<bool>(1)? == Some(true) {
        pgrx::warning!(
            "secret_vault: KMS key \"{}\" now wraps with {}; its rows will be re-wrapped",
            kms_key.escape_debug(),
            key_id.escape_debug()
        );
    }
    Ok(())
}

/// Progress and the last outcome per KMS key, for vault.rewrap_status.
pub fn note(c: &mut pgrx::spi::SpiClient<'_>, kms_key: &str, moved: i64, checked: bool, error: Option<&str>) -> VaultResult<()> {
    c.update(
        &identity::sql(
            "INSERT INTO vault.rewrap_state AS s (kms_key, rows_moved, checked_at, last_error, last_error_at)
             VALUES ($1, $2, CASE WHEN $3 THEN pg_catalog.now() END, $4, CASE WHEN $4 IS NOT NULL THEN pg_catalog.now() END)
             ON CONFLICT (kms_key) DO UPDATE SET
                 rows_moved = s.rows_moved OPERATOR(pg_catalog.+) $2,
                 checked_at = COALESCE(EXCLUDED.checked_at, s.checked_at),
                 last_error = COALESCE($4, CASE WHEN $2 OPERATOR(pg_catalog.>) 0 OR $3 THEN NULL ELSE s.last_error END),
                 last_error_at = CASE WHEN $4 IS NOT NULL THEN pg_catalog.now()
                                      WHEN $2 OPERATOR(pg_catalog.>) 0 OR $3 THEN NULL ELSE s.last_error_at END",
        )?,
        None,
        &[kms_key.into(), moved.into(), checked.into(), error.into()],
    )?;
    Ok(())
}

/// The KMS keys that wrap rows or that groups use.
pub fn keys_in_use(c: &pgrx::spi::SpiClient<'_>, only: Option<&str>) -> VaultResult<Vec<KmsKeyRow>> {
    let rows = c.select(
        &identity::sql(
            "SELECT k.name, k.provider, k.config::pg_catalog.text FROM vault.kms_keys k
              WHERE ($1 IS NULL OR k.name OPERATOR(pg_catalog.=) $1)
                AND (EXISTS (SELECT 1 FROM vault.key_groups g WHERE g.kms_key OPERATOR(pg_catalog.=) k.name)
                     OR EXISTS (SELECT 1 FROM vault.ring_keys r WHERE r.kms_key OPERATOR(pg_catalog.=) k.name))
              ORDER BY k.name",
        )?,
        None,
        &[only.into()],
    )?;
    rows.into_iter()
        .map(|r| {
            Ok(KmsKeyRow {
                name: column(r.get(1)?, "name")?,
                provider: column(r.get(2)?, "provider")?,
                config: column(r.get(3)?, "config")?,
            })
        })
        .collect()
}

/// Rows still to move for `only` (or every KMS key).
fn pending(c: &pgrx::spi::SpiClient<'_>, only: Option<&str>) -> VaultResult<i64> {
    Ok(c
        .select(
            &identity::sql(
                "SELECT pg_catalog.count(*) FROM vault.ring_keys r
                   JOIN vault.key_groups g ON g.id OPERATOR(pg_catalog.=) r.group_id
                   JOIN vault.kms_keys k ON k.name OPERATOR(pg_catalog.=) g.kms_key
                  WHERE ($1 IS NULL OR k.name OPERATOR(pg_catalog.=) $1)
                    AND (r.kms_key OPERATOR(pg_catalog.<>) g.kms_key
                         OR (k.key_id IS NOT NULL AND r.kms_key_id OPERATOR(pg_catalog.<>) k.key_id))",
            )?,
            Some(1),
            &[only.into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// Asks the KMS key (or every KMS key in use) for its current material now,
/// records it, and returns how many rows the worker still has to move.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rewrap(kms_key: default!(Option<&str>, "NULL")) -> i64 {
    crate::audit::write("rewrap", kms_key, || identity::as_owner_write(|_| -> VaultResult<i64> {
        require_writable("start a re-wrap")?;
        let keys = identity::as_owner(|_| Spi::connect(|c| keys_in_use(c, kms_key)))?;
        if let (Some(_), true) = (kms_key, keys.is_empty()) {
            // Registered but unused is fine; unknown is not.
            if Spi::connect(|c| catalog::resolve_kms_key(c, kms_key).map(|_| ())).is_err() {
                return Err(VaultError::KmsKeyNotFound);
            }
        }
        // Every live call first, with nothing locked; then the writes.
        let found: Vec<(&KmsKeyRow, Result<String, String>)> =
            keys.iter().map(|k| (k, kms::current_key_id(&k.spec()).map_err(|e| e.message()))).collect();
        Spi::connect_mut(|c| -> VaultResult<()> {
            for (k, r) in &found {
                match r {
                    Ok(id) => {
                        record_key_id(c, &k.name, id)?;
                        note(c, &k.name, 0, true, None)?;
                    }
                    Err(msg) => {
                        pgrx::warning!("{msg}");
                        note(c, &k.name, 0, false, Some(msg))?;
                    }
                }
            }
            Ok(())
        })?;
        Spi::connect(|c| pending(c, kms_key))
    }))
}

/// Moves a group to another registered KMS key: new versions are wrapped
/// by it at once, and the worker re-wraps the existing rows (paced, online);
/// returns how many rows it has to move. For superusers, like the registry:
/// which master key protects a group's keys is theirs to decide (moving a
/// group to the built-in `local` key would put its keys' protection in the
/// data directory, and in every base backup). Not SECURITY DEFINER, so the
/// check is on the real caller.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn move_group(group_name: &str, kms_key: &str) -> i64 {
    crate::audit::write("move_group", Some(group_name), || -> VaultResult<i64> {
        require_writable("move a key group")?;
        crate::kms::registry::require_superuser("vault.move_group (only superusers may change which KMS key protects a group)")?;
        Spi::connect_mut(|c| {
            let group = catalog::group(c, group_name)?;
            let to = catalog::resolve_kms_key(c, Some(kms_key))?;
            if !catalog::lock_group_for_drop(c, &group.id)? {
                return Err(VaultError::GroupNotFound);
            }
            c.update(
                &identity::sql(
                    "UPDATE vault.key_groups SET kms_key = $2,
                            change_seq = pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass)
                      WHERE id OPERATOR(pg_catalog.=) $1",
                )?,
                None,
                &[catalog::uuid(&group.id).into(), to.name.as_str().into()],
            )?;
            coherence::note_change(group_name, Some(identity::current()?.cache_key(group.id)), false);
            let n = c
                .select(
                    &identity::sql(
                        "SELECT pg_catalog.count(*) FROM vault.ring_keys
                          WHERE group_id OPERATOR(pg_catalog.=) $1 AND kms_key OPERATOR(pg_catalog.<>) $2",
                    )?,
                    Some(1),
                    &[catalog::uuid(&group.id).into(), to.name.as_str().into()],
                )?
                .first()
                .get_one::<i64>()?
                .unwrap_or(0);
            Ok(n)
        })
    })
}
