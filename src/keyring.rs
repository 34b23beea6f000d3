//! Where SQL functions get unwrapped ring keys.
//!
//! Hot path: this backend's map from group name to group id (resolved
//! against this database's catalog, valid while the shared epoch is
//! unchanged), then the shared-memory cache slot of (database, extension,
//! group id), under a shared lock held only while a key is copied out; no
//! SPI, no KMS. Miss path: read the group's newest versions from the tables
//! (as the vault owner, through a fresh snapshot), unwrap them through the
//! KMS, store them in the cache when that is safe, and answer from what was
//! read.

use pgrx::prelude::*;
use secret_vault_core::aad::GroupId;
use secret_vault_core::aead;
use secret_vault_core::cache::{Fill, FillEntry, KeyBuf, Probe, SlotInfo};
use secret_vault_core::policy::{self, Purpose, VersionFacts};
use secret_vault_core::KeyBytes;

use std::cell::RefCell;
use std::collections::HashMap;

use secret_vault_core::cache::SlotKey;

use crate::catalog::{self, GroupRow, KeyRow};
use crate::error::{VaultError, VaultResult};
use crate::identity::{self, Identity};
use crate::{coherence, guc, kms, shmem};

/// Bound on the name map (entries); past it, the map starts over.
const NAMES_MAX: usize = 10_000;

/// FNV-1a: the map holds only names that resolved to an existing group
/// (chosen by administrators), and the hot path hashes one per call.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// This backend's names, valid for one shared epoch and one identity. A
/// remembered name is a hint: the slot it leads to only ever holds that
/// group's own committed keys, and a miss always resolves the name again.
struct Names {
    epoch: u64,
    generation: u64,
    map: HashMap<String, GroupId, std::hash::BuildHasherDefault<Fnv>>,
    /// The last name looked up and its id: a scan calls with one name.
    last: Option<(String, GroupId)>,
}

thread_local! {
    static NAMES: RefCell<Names> =
        RefCell::new(Names { epoch: u64::MAX, generation: u64::MAX, map: HashMap::default(), last: None });
}

/// The group id `name` resolved to, if this backend knows it for `epoch`.
fn named(name: &str, epoch: u64) -> Option<GroupId> {
    NAMES.with(|n| {
        let mut n = n.borrow_mut();
        if n.epoch != epoch || n.generation != identity::generation() {
            return None;
        }
        if let Some((last, id)) = &n.last {
            if last == name {
                return Some(*id);
            }
        }
        let id = *n.map.get(name)?;
        n.last = Some((name.to_string(), id));
        Some(id)
    })
}

/// Remembers `name` → `id`, as read through a snapshot taken after `epoch`.
fn remember(name: &str, id: GroupId, epoch: u64) {
    NAMES.with(|n| {
        let mut n = n.borrow_mut();
        let generation = identity::generation();
        if n.epoch != epoch || n.generation != generation || n.map.len() >= NAMES_MAX {
            if n.epoch != epoch || n.generation != generation {
                // The cache this backend's keys came from was invalidated
                // (or the identity changed): drop the cached key schedule
                // too, so an invalidated key does not linger in it.
                aead::forget_cached_schedule();
            }
            n.map.clear();
            n.last = None;
            n.epoch = epoch;
            n.generation = generation;
        }
        n.map.insert(name.to_string(), id);
    })
}

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
    let ident = identity::current()?;
    // A parallel worker cannot see its leader's list of changed groups: if
    // the transaction has written anything, it reads the tables.
    let dirty = coherence::is_dirty(name) || unsafe { pg_sys::ParallelWorkerNumber >= 0 && pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId };
    if !dirty {
        let hit = shmem::epoch()
            .and_then(|e| named(name, e))
            .and_then(|id| probe_cache(&ident.cache_key(id), want, out));
        if let Some((info, probe)) = hit {
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
    load(&ident, name, purpose, operation, want, !dirty, out)
}

/// The current key of an 'encrypt' group if the shared cache holds it; for
/// the worker, which must not reach the KMS inside a transaction.
pub fn cached_current(key: &SlotKey, out: &mut KeyBuf) -> Option<Resolved> {
    match probe_cache(key, Want::Current, out)? {
        (info, Probe::Hit(version)) if info.purpose == purpose_code(Purpose::Encrypt) => {
            Some(Resolved { group_id: info.group_id, version })
        }
        _ => None,
    }
}

/// Version `version` of an 'encrypt' group if the shared cache holds it
/// (the worker opening a secret it signs with, outside any transaction).
pub fn cached_version(key: &SlotKey, version: i32, out: &mut KeyBuf) -> Option<Resolved> {
    match probe_cache(key, Want::Version(version as i64), out)? {
        (info, Probe::Hit(v)) if info.purpose == purpose_code(Purpose::Encrypt) && v == version => {
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

fn probe_cache(key: &SlotKey, want: Want, out: &mut KeyBuf) -> Option<(SlotInfo, Probe)> {
    // Only `current` depends on the time; reading the clock costs a syscall.
    let now = match want {
        Want::Current => catalog::now_micros(),
        Want::Version(_) => 0,
    };
    shmem::with_shared(|c| {
        let slot = c.find(key)?;
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
    window_of(c, catalog::group(c, name)?)
}

/// Reads the group with id `id` and its newest versions; None if it is gone.
pub fn read_window_by_id(c: &pgrx::spi::SpiClient<'_>, id: &GroupId) -> VaultResult<Option<Window>> {
    catalog::load_group_by_id(c, id)?.map(|g| window_of(c, g)).transpose()
}

fn window_of(c: &pgrx::spi::SpiClient<'_>, group: GroupRow) -> VaultResult<Window> {
    let limit = (guc::CACHE_VERSIONS.get().max(1) as i64).min(group.ring_size as i64);
    let rows = catalog::newest_keys(c, &group.id, limit)?;
    // The window reaches version 1 when fewer rows than the limit came back.
    let low = if (rows.len() as i64) < limit { 1 } else { rows.iter().map(|r| r.version).min().unwrap_or(1) };
    Ok(Window { group, rows, low })
}

/// The keys of the window's `versions` unwrapped (every other left out):
/// what the worker and the miss path store, one KMS call per version.
pub fn unwrap_versions(w: &Window, versions: &[i32]) -> VaultResult<Vec<Option<KeyBytes>>> {
    w.rows
        .iter()
        .map(|r| if versions.contains(&r.version) && !r.retired { kms::unwrap(&w.group, r).map(Some) } else { Ok(None) })
        .collect()
}

/// The versions the worker warms: the current one and those still pending,
/// so that a pending version becomes current without a KMS call (it may
/// activate during a KMS outage).
pub fn versions_to_warm(w: &Window, now: i64) -> Vec<i32> {
    let mut v: Vec<i32> = w.rows.iter().filter(|r| !r.retired && r.activates_at > now).map(|r| r.version).collect();
    v.extend(current_in(w, now));
    v
}

/// The window's current version, if it is inside the window.
pub fn current_in(w: &Window, now: i64) -> Option<i32> {
    let facts: Vec<VersionFacts> = w
        .rows
        .iter()
        .map(|r| VersionFacts { version: r.version as u32, activates_at: r.activates_at, retired: r.retired })
        .collect();
    policy::current_version(&facts, now).map(|v| v as i32)
}

/// Keys of versions older than the shared cache's window, as unwrapped last,
/// per backend: a bounded few, so that a scan over old ciphertexts does not
/// cost a KMS call per row. An entry serves only the very row it was
/// unwrapped from (same wrapped bytes, master key and binding), so a
/// retired, destroyed, re-wrapped or edited row never gets its old key.
struct OldKey {
    slot: SlotKey,
    /// The group's change sequence when unwrapped: any change to the group
    /// (retire, destroy, rotate) drops its entries on the next lookup, so a
    /// destroyed version's key does not linger in memory.
    change_seq: i64,
    version: i32,
    kms_key_id: String,
    wrapped: Vec<u8>,
    binding: secret_vault_core::aad::RingKeyBinding,
    purpose: Purpose,
    key_bytes: i32,
    key: KeyBytes,
}

const OLD_KEYS_MAX: usize = 32;

thread_local! {
    static OLD_KEYS: RefCell<Vec<OldKey>> = const { RefCell::new(Vec::new()) };
}

/// Unwraps an old (out-of-window) row through the per-backend cache.
fn unwrap_old(ident: &Identity, group: &GroupRow, row: &KeyRow) -> VaultResult<KeyBytes> {
    let slot = ident.cache_key(group.id);
    let same = |o: &OldKey| {
        o.slot == slot
            && o.version == row.version
            && o.kms_key_id == row.kms_key_id
            && o.wrapped == row.wrapped
            && o.binding == row.binding
            && o.purpose == group.purpose
            && o.key_bytes == group.key_bytes
    };
    let hit = OLD_KEYS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|o| o.slot != slot || o.change_seq == group.change_seq);
        let i = c.iter().position(same)?;
        // Most recently used last.
        let e = c.remove(i);
        let key = e.key.clone();
        c.push(e);
        Some(key)
    });
    if let Some(k) = hit {
        return Ok(k);
    }
    let key = kms::unwrap(group, row)?;
    OLD_KEYS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= OLD_KEYS_MAX {
            c.remove(0);
        }
        c.push(OldKey {
            slot,
            change_seq: group.change_seq,
            version: row.version,
            kms_key_id: row.kms_key_id.clone(),
            wrapped: row.wrapped.clone(),
            binding: row.binding,
            purpose: group.purpose,
            key_bytes: group.key_bytes,
            key: key.clone(),
        });
    });
    Ok(key)
}

/// Forgets every old key of this backend (identity reset, DROP EXTENSION).
pub fn forget_old_keys() {
    OLD_KEYS.with(|c| c.borrow_mut().clear());
}

/// Stores a window in the shared cache unless an invalidation happened
/// since `epoch` was read.
pub fn store(ident: &Identity, epoch: u64, w: &Window, keys: &[Option<KeyBytes>]) {
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
    let key = ident.cache_key(w.group.id);
    shmem::with_exclusive(|c| c.fill(epoch, &Fill { key, info, window_low: w.low, entries: &entries }));
}

fn load(
    ident: &Identity,
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
    let window = identity::as_owner(|_| {
        Spi::connect(|c| {
            let w = read_window(c, name)?;
            if w.group.purpose != purpose {
                return Err(wrong_purpose(name, w.group.purpose, operation));
            }
            Ok(w)
        })
    })?;
    // The name was unknown here (a new session, or the epoch moved), but the
    // group may well be in shared memory already: if its slot was loaded
    // from the very row just read, answer from it, without the KMS.
    if cacheable {
        let slot = probe_cache(&ident.cache_key(window.group.id), want, out);
        if let Some((info, probe)) = slot.filter(|(i, _)| {
            i.change_seq == window.group.change_seq && i.purpose == purpose_code(purpose)
        }) {
            if let Some(e) = epoch {
                remember(name, window.group.id, e);
            }
            return match probe {
                Probe::Hit(version) => Ok(Resolved { group_id: info.group_id, version }),
                Probe::Retired => Err(retired(name, want)),
                Probe::Miss => unreachable!("probe_cache filters misses"),
            };
        }
    }
    let Window { group, rows, low: window_low } = &window;
    let find = |v: i32| rows.iter().position(|r| r.version == v);
    // The one row that answers: in the window (unwrapped and cached), or
    // older (read from storage, unwrapped through the per-backend cache).
    let in_window = match want {
        Want::Current => match current_in(&window, catalog::now_micros()) {
            Some(v) => Some(v),
            None if *window_low <= 1 => return Err(VaultError::NoCurrentVersion(name.to_string())),
            // Every cached version is pending or retired: the current one is older.
            None => None,
        },
        Want::Version(v) => {
            let not_found = || VaultError::VersionNotFound { group: name.to_string(), version: v };
            let v = i32::try_from(v).map_err(|_| not_found())?;
            if v < 1 || v > group.last_version {
                return Err(not_found());
            }
            match find(v) {
                Some(i) if rows[i].retired => return Err(retired(name, want)),
                Some(_) => Some(v),
                None => None,
            }
        }
    };
    let Some(version) = in_window else {
        let row = identity::as_owner(|_| {
            Spi::connect(|c| match want {
                Want::Current => catalog::current_key_row(c, group, catalog::clock()).map(Some),
                Want::Version(v) => catalog::key_row_at(c, &group.id, v as i32),
            })
        })?
        .ok_or_else(|| VaultError::VersionNotFound { group: name.to_string(), version: match want {
            Want::Version(v) => v,
            Want::Current => 0,
        } })?;
        if row.retired {
            return Err(retired(name, want));
        }
        if let (true, Some(e)) = (cacheable, epoch) {
            remember(name, group.id, e);
        }
        return Ok(to_resolved(group, row.version, &unwrap_old(ident, group, &row)?, out));
    };
    let keys = unwrap_versions(&window, &[version])?;
    if let (true, Some(epoch)) = (cacheable, epoch) {
        if catalog::may_fill_shared_cache() {
            store(ident, epoch, &window, &keys);
        }
        // Only a transaction that has written nothing and reads through a
        // fresh snapshot may fill the shared cache. Remembering the name is
        // safe for any other (a writer, a parallel worker): a slot only ever
        // holds its own group's committed keys, so a stale or uncommitted
        // mapping can only miss, never serve a wrong key; names this
        // transaction changed never get here (they bypass the cache).
        remember(name, group.id, epoch);
    }
    let i = find(version).expect("the version comes from the window");
    Ok(to_resolved(group, version, keys[i].as_ref().expect("unwrapped above"), out))
}
