//! Where SQL functions get unwrapped ring keys.
//!
//! Hot path: the shared-memory cache, under a shared lock held only while a
//! key is copied out; no SPI, no KMS, no allocation. Miss path: read the
//! group's newest versions from the tables (as the extension owner, through
//! a fresh snapshot), unwrap them through the KMS, store them in the cache
//! when that is safe, and answer from what was read.

use pgrx::prelude::*;
use secret_vault_core::aad::GroupId;
use secret_vault_core::cache::{Fill, FillEntry, KeyBuf, Probe, SlotInfo};
use secret_vault_core::policy::{self, Purpose, VersionFacts};
use secret_vault_core::KeyBytes;

use crate::catalog::{self, GroupRow, KeyRow};
use crate::error::{VaultError, VaultResult};
use crate::{coherence, guc, kms, shmem};

#[derive(Clone, Copy)]
pub enum Want {
    Current,
    Version(i64),
}

/// Which key was handed out; its bytes are in the caller's `KeyBuf`.
#[derive(Clone, Copy)]
pub struct Resolved {
    pub group_id: GroupId,
    pub version: i32,
}

fn purpose_code(p: Purpose) -> u8 {
    match p {
        Purpose::Export => 1,
        Purpose::Encrypt => 2,
    }
}

fn purpose_of(code: u8) -> Purpose {
    if code == 1 { Purpose::Export } else { Purpose::Encrypt }
}

fn wrong_purpose(name: &str, actual: Purpose, operation: &'static str) -> VaultError {
    VaultError::WrongPurpose { group: name.to_string(), purpose: actual, operation }
}

/// The key `want`ed from group `name`, which must have purpose `purpose`,
/// copied into `out` (the caller's buffer: no copy of key bytes is moved around).
pub fn resolve(name: &str, purpose: Purpose, operation: &'static str, want: Want, out: &mut KeyBuf) -> VaultResult<Resolved> {
    let dirty = coherence::is_dirty(name);
    if !dirty {
        if let Some((info, probe)) = probe_cache(name, want, out) {
            shmem::count_lookup(true);
            if info.purpose != purpose_code(purpose) {
                return Err(wrong_purpose(name, purpose_of(info.purpose), operation));
            }
            return match probe {
                Probe::Hit(version) => Ok(Resolved { group_id: info.group_id, version }),
                Probe::Retired => Err(retired(name, want)),
                Probe::Miss => unreachable!("probe_cache filters misses"),
            };
        }
    }
    shmem::count_lookup(false);
    load(name, purpose, operation, want, !dirty, out)
}

/// The current key of an 'encrypt' group if the shared cache holds it; for
/// the worker, which must not reach the KMS inside a transaction.
pub fn cached_current(name: &str, out: &mut KeyBuf) -> Option<Resolved> {
    match probe_cache(name, Want::Current, out)? {
        (info, Probe::Hit(version)) if info.purpose == purpose_code(Purpose::Encrypt) => {
            Some(Resolved { group_id: info.group_id, version })
        }
        _ => None,
    }
}

fn retired(name: &str, want: Want) -> VaultError {
    let version = match want {
        Want::Version(v) => v,
        Want::Current => 0,
    };
    VaultError::VersionRetired { group: name.to_string(), version }
}

fn probe_cache(name: &str, want: Want, out: &mut KeyBuf) -> Option<(SlotInfo, Probe)> {
    // Only `current` depends on the time; reading the clock costs a syscall.
    let now = match want {
        Want::Current => catalog::now_micros(),
        Want::Version(_) => 0,
    };
    shmem::with_shared(|c| {
        let slot = c.find(name)?;
        let info = c.info(slot);
        let probe = match want {
            Want::Current => c.current(slot, now, out),
            Want::Version(v) => match i32::try_from(v) {
                Ok(v) => c.at_version(slot, v, out),
                Err(_) => Probe::Miss,
            },
        };
        (probe != Probe::Miss).then_some((info, probe))
    })
    .flatten()
}

fn to_resolved(group: &GroupRow, version: i32, key: &KeyBytes, out: &mut KeyBuf) -> Resolved {
    out.set(key.as_bytes());
    Resolved { group_id: group.id, version }
}

/// A group's hot window as read from the tables.
pub struct Window {
    pub group: GroupRow,
    pub rows: Vec<KeyRow>,
    pub low: i32,
}

/// Reads group `name` and its newest versions (caller provides the SPI
/// connection, snapshot and identity).
pub fn read_window(c: &pgrx::spi::SpiClient<'_>, name: &str) -> VaultResult<Window> {
    let group = catalog::group(c, name)?;
    let limit = (guc::CACHE_VERSIONS.get().max(1) as i64).min(group.ring_size as i64);
    let rows = catalog::newest_keys(c, &group.id, limit)?;
    // The window reaches version 1 when fewer rows than the limit came back.
    let low = if (rows.len() as i64) < limit { 1 } else { rows.iter().map(|r| r.version).min().unwrap_or(1) };
    Ok(Window { group, rows, low })
}

/// Unwraps every unretired key of the window through the KMS.
pub fn unwrap_window(w: &Window) -> VaultResult<Vec<Option<KeyBytes>>> {
    w.rows
        .iter()
        .map(|r| if r.retired { Ok(None) } else { kms::unwrap(&w.group, r).map(Some) })
        .collect()
}

/// Stores a window in the shared cache unless an invalidation happened
/// since `epoch` was read.
pub fn store(epoch: u64, w: &Window, keys: &[Option<KeyBytes>]) {
    let entries: Vec<FillEntry<'_>> = w
        .rows
        .iter()
        .zip(keys)
        .map(|(r, k)| FillEntry {
            version: r.version,
            activates_at: r.activates_at,
            retired: r.retired,
            key: k.as_ref().map(|k| k.as_bytes()),
        })
        .collect();
    let info = SlotInfo {
        group_id: w.group.id,
        purpose: purpose_code(w.group.purpose),
        key_bytes: w.group.key_bytes as u32,
        change_seq: w.group.change_seq,
    };
    shmem::with_exclusive(|c| c.fill(epoch, &Fill { name: &w.group.name, info, window_low: w.low, entries: &entries }));
}

fn load(
    name: &str,
    purpose: Purpose,
    operation: &'static str,
    want: Want,
    cacheable: bool,
    out: &mut KeyBuf,
) -> VaultResult<Resolved> {
    // Read the epoch before the snapshot: an invalidation after this point
    // makes the store below a no-op, so nothing older than it is cached.
    let epoch = shmem::epoch();
    let window = catalog::as_owner(|| {
        Spi::connect(|c| {
            let w = read_window(c, name)?;
            if w.group.purpose != purpose {
                return Err(wrong_purpose(name, w.group.purpose, operation));
            }
            Ok(w)
        })
    })?;
    let keys = unwrap_window(&window)?;
    if let (true, Some(epoch)) = (cacheable && catalog::may_fill_shared_cache(), epoch) {
        store(epoch, &window, &keys);
    }
    let Window { group, rows, low: window_low } = window;

    let find = |v: i32| rows.iter().position(|r| r.version == v);
    match want {
        Want::Current => {
            let facts: Vec<VersionFacts> = rows
                .iter()
                .map(|r| VersionFacts { version: r.version as u32, activates_at: r.activates_at, retired: r.retired })
                .collect();
            match policy::current_version(&facts, catalog::now_micros()) {
                Some(v) => {
                    let i = find(v as i32).expect("current comes from rows");
                    Ok(to_resolved(&group, v as i32, keys[i].as_ref().expect("current is not retired"), out))
                }
                None if window_low <= 1 => Err(VaultError::NoCurrentVersion(name.to_string())),
                // Every cached version is pending or retired: the current one is older.
                None => {
                    let row = catalog::as_owner(|| {
                        Spi::connect(|c| catalog::current_key_row(c, &group, catalog::clock()))
                    })?;
                    Ok(to_resolved(&group, row.version, &kms::unwrap(&group, &row)?, out))
                }
            }
        }
        Want::Version(v) => {
            let not_found = || VaultError::VersionNotFound { group: name.to_string(), version: v };
            let v = i32::try_from(v).map_err(|_| not_found())?;
            if v < 1 || v > group.last_version {
                return Err(not_found());
            }
            if let Some(i) = find(v) {
                return match &keys[i] {
                    Some(k) => Ok(to_resolved(&group, v, k, out)),
                    None => Err(retired(name, want)),
                };
            }
            // Older than the hot window: served from storage, not cached.
            let row = catalog::as_owner(|| Spi::connect(|c| catalog::key_row_at(c, &group.id, v)))?
                .ok_or_else(not_found)?;
            if row.retired {
                return Err(retired(name, want));
            }
            Ok(to_resolved(&group, v, &kms::unwrap(&group, &row)?, out))
        }
    }
}
