//! The ring cache: unwrapped ring keys in one fixed-size region that every
//! backend maps (PostgreSQL shared memory in production, a `Vec` in tests).
//!
//! This module knows the layout and the rules, not the locking: the caller
//! holds a shared lock around the read methods (`&self`) and an exclusive
//! lock around the write methods (`&mut self`). Counters and the LRU clock
//! are atomics, so readers may bump them under a shared lock.
//!
//! Layout: `[Header][hash of slot 0..n][slot 0][slot 1]...` where a slot is
//! `[SlotMeta][Entry; versions]`. A zero hash marks an empty slot.
//!
//! A slot is addressed by identity, never by a name: the database, the
//! extension's incarnation (its pg_extension OID) and the group's UUID.
//! Names are resolved per backend against that database's catalog, so one
//! database can never be handed another's key, nor a re-created extension
//! the keys of the one it replaced.

use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroize;

pub const MAX_KEY: usize = crate::policy::MAX_EXPORT_KEY_BYTES as usize;
const MAGIC: u64 = 0x7365_6372_6574_7632; // "secretv2"

/// Who a slot belongs to: a group of one incarnation of the extension in one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub database: u32,
    pub extension: u32,
    pub group: [u8; 16],
}

/// Counters since server start, shown by `vault.stats()`.
#[repr(C)]
#[derive(Default)]
pub struct Counters {
    // Hits and misses are counted per backend by the glue (no shared line on the hot path).
    pub evictions: AtomicU64,
    pub kms_calls: AtomicU64,
    /// The same calls by provider kind.
    pub kms_calls_local: AtomicU64,
    pub kms_calls_aws: AtomicU64,
    pub kms_calls_transit: AtomicU64,
    pub rotations: AtomicU64,
    pub invalidations: AtomicU64,
    pub fills: AtomicU64,
}

/// The longest prefix of `msg` of at most `max` bytes that ends on a
/// character boundary: for fixed-size message buffers in shared memory.
pub fn truncate_on_char_boundary(msg: &str, max: usize) -> &str {
    let mut n = msg.len().min(max);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    &msg[..n]
}

#[repr(C)]
struct Header {
    magic: u64,
    slots: u64,
    versions: u64,
    epoch: AtomicU64,
    clock: AtomicU64,
    counters: Counters,
}

#[repr(C)]
struct SlotMeta {
    database: u32,
    extension: u32,
    purpose: u32,
    key_bytes: u32,
    entries: u32,
    window_low: i32,
    max_version: i32,
    change_seq: i64,
    last_used: AtomicU64,
    group_id: [u8; 16],
}

#[repr(C)]
struct Entry {
    version: i32,
    retired: u32,
    activates_at: i64,
    key_len: u32,
    _pad: u32,
    key: [u8; MAX_KEY],
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Key bytes copied out of the cache; wiped when dropped.
pub struct KeyBuf {
    len: usize,
    /// How much of `bytes` was ever written: only that is wiped on drop.
    written: usize,
    bytes: [u8; MAX_KEY],
}

impl KeyBuf {
    pub fn new() -> Self {
        KeyBuf { len: 0, written: 0, bytes: [0; MAX_KEY] }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    pub fn set(&mut self, key: &[u8]) {
        self.bytes[..key.len()].copy_from_slice(key);
        self.len = key.len();
        self.written = self.written.max(key.len());
    }
}

impl Default for KeyBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBuf {
    /// Zeroes every byte this buffer ever held (drop does this).
    pub fn wipe(&mut self) {
        self.bytes[..self.written].zeroize();
        self.len = 0;
        self.written = 0;
    }
}

impl Drop for KeyBuf {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// What a group's slot says, besides its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub group_id: [u8; 16],
    pub purpose: u8,
    pub key_bytes: u32,
    pub change_seq: i64,
}

/// Outcome of a cache probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The key was copied out; the version is given.
    Hit(i32),
    /// The version is in the cached window and retired.
    Retired,
    /// The cache cannot answer; ask storage.
    Miss,
}

/// One version to store in a slot. `key` is None for retired versions.
pub struct FillEntry<'a> {
    pub version: i32,
    pub activates_at: i64,
    pub retired: bool,
    pub key: Option<&'a [u8]>,
}

/// A group's newest versions as loaded from storage.
pub struct Fill<'a> {
    pub key: SlotKey,
    pub info: SlotInfo,
    /// Every version from `window_low` to the newest is in `entries`.
    pub window_low: i32,
    pub entries: &'a [FillEntry<'a>],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    Filled { evicted: bool },
    /// An invalidation happened since the caller read the epoch: the loaded
    /// data may predate it, so it was not stored.
    Stale,
    /// Too large for this cache (key or too many versions), or a key that
    /// does not match the group it claims to be.
    Unfit,
}

/// A view of the region. Cheap to build; holds only the base pointer.
pub struct RingCache {
    base: *mut u8,
    slots: usize,
    versions: usize,
}

// The region is process-shared memory guarded by the caller's lock.
unsafe impl Send for RingCache {}
unsafe impl Sync for RingCache {}

pub fn key_hash(key: &SlotKey) -> u64 {
    // FNV-1a over the identity: keys are OIDs and random UUIDs, and the
    // index is scanned linearly anyway; 0 is reserved for "empty".
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = key.database.to_le_bytes().into_iter().chain(key.extension.to_le_bytes()).chain(key.group);
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

impl RingCache {
    fn header_size() -> usize {
        align8(size_of::<Header>())
    }
    fn slot_stride(versions: usize) -> usize {
        align8(size_of::<SlotMeta>()) + versions * align8(size_of::<Entry>())
    }

    /// Bytes needed for `slots` groups of `versions` versions each.
    pub fn region_size(slots: usize, versions: usize) -> usize {
        Self::header_size() + align8(slots * 8) + slots * Self::slot_stride(versions)
    }

    /// # Safety
    /// `base` must point to `region_size(slots, versions)` bytes, 8-aligned,
    /// valid for the life of the returned view. With `initialize`, the caller
    /// must be the only user of the region.
    pub unsafe fn attach(base: *mut u8, slots: usize, versions: usize, initialize: bool) -> Self {
        let cache = RingCache { base, slots, versions };
        if initialize {
            std::ptr::write_bytes(base, 0, Self::region_size(slots, versions));
            let h = &mut *(base as *mut Header);
            h.magic = MAGIC;
            h.slots = slots as u64;
            h.versions = versions as u64;
        }
        cache
    }

    fn header(&self) -> &Header {
        unsafe { &*(self.base as *const Header) }
    }
    fn header_mut(&mut self) -> &mut Header {
        unsafe { &mut *(self.base as *mut Header) }
    }

    pub fn counters(&self) -> &Counters {
        &self.header().counters
    }

    pub fn slots(&self) -> usize {
        self.slots
    }
    pub fn versions(&self) -> usize {
        self.versions
    }

    /// The invalidation epoch: read it before loading from storage and pass
    /// it to `fill`.
    pub fn epoch(&self) -> u64 {
        self.header().epoch.load(Ordering::Acquire)
    }

    fn hashes(&self) -> *mut u64 {
        unsafe { self.base.add(Self::header_size()) as *mut u64 }
    }
    fn hash_at(&self, i: usize) -> u64 {
        unsafe { *self.hashes().add(i) }
    }
    fn set_hash(&mut self, i: usize, h: u64) {
        unsafe { *self.hashes().add(i) = h }
    }
    fn slot_ptr(&self, i: usize) -> *mut u8 {
        debug_assert!(i < self.slots);
        let first = Self::header_size() + align8(self.slots * 8);
        unsafe { self.base.add(first + i * Self::slot_stride(self.versions)) }
    }
    fn meta(&self, i: usize) -> &SlotMeta {
        unsafe { &*(self.slot_ptr(i) as *const SlotMeta) }
    }
    fn meta_mut(&mut self, i: usize) -> &mut SlotMeta {
        unsafe { &mut *(self.slot_ptr(i) as *mut SlotMeta) }
    }
    fn entry(&self, i: usize, j: usize) -> &Entry {
        unsafe {
            let p = self.slot_ptr(i).add(align8(size_of::<SlotMeta>()) + j * align8(size_of::<Entry>()));
            &*(p as *const Entry)
        }
    }
    fn entry_mut(&mut self, i: usize, j: usize) -> &mut Entry {
        unsafe {
            let p = self.slot_ptr(i).add(align8(size_of::<SlotMeta>()) + j * align8(size_of::<Entry>()));
            &mut *(p as *mut Entry)
        }
    }

    fn slot_key(&self, i: usize) -> SlotKey {
        let m = self.meta(i);
        SlotKey { database: m.database, extension: m.extension, group: m.group_id }
    }

    /// Slot index of `key`, touching it for LRU.
    pub fn find(&self, key: &SlotKey) -> Option<usize> {
        let h = key_hash(key);
        let found = (0..self.slots).find(|&i| self.hash_at(i) == h && self.slot_key(i) == *key)?;
        // Stamp "used since the last fill" without writing when the stamp is
        // already there: concurrent readers of a hot group then share the
        // cache line read-only instead of bouncing it on every hit.
        let stamp = self.header().clock.load(Ordering::Relaxed) + 1;
        let used = &self.meta(found).last_used;
        if used.load(Ordering::Relaxed) != stamp {
            used.store(stamp, Ordering::Relaxed);
        }
        Some(found)
    }

    pub fn info(&self, slot: usize) -> SlotInfo {
        let m = self.meta(slot);
        SlotInfo { group_id: m.group_id, purpose: m.purpose as u8, key_bytes: m.key_bytes, change_seq: m.change_seq }
    }

    /// The current version at `now` (newest active, unretired), copied to `out`.
    pub fn current(&self, slot: usize, now: i64, out: &mut KeyBuf) -> Probe {
        let m = self.meta(slot);
        // The newest active version decides, whether or not its key has been
        // unwrapped yet (keys are unwrapped lazily): never fall back to an
        // older version that happens to be loaded.
        let best = (0..m.entries as usize)
            .map(|j| self.entry(slot, j))
            .filter(|e| e.retired == 0 && e.activates_at <= now)
            .max_by_key(|e| e.version);
        match best {
            Some(e) if e.key_len > 0 => {
                out.set(&e.key[..e.key_len as usize]);
                Probe::Hit(e.version)
            }
            // Not unwrapped yet; or older versions outside the window might
            // qualify: storage decides.
            _ => Probe::Miss,
        }
    }

    /// Whether the slot of `key` lacks the key of its current version or of
    /// a pending one (the worker unwraps those ahead of need, so that a
    /// version activating during a KMS outage is served).
    pub fn lacks_current_or_pending(&self, key: &SlotKey, now: i64) -> bool {
        let Some(slot) = self.find(key) else { return false };
        let m = self.meta(slot);
        let entries = || (0..m.entries as usize).map(|j| self.entry(slot, j)).filter(|e| e.retired == 0);
        let current = entries().filter(|e| e.activates_at <= now).max_by_key(|e| e.version);
        current.is_some_and(|e| e.key_len == 0) || entries().any(|e| e.activates_at > now && e.key_len == 0)
    }

    /// The key of `version`, if it is inside the cached window.
    pub fn at_version(&self, slot: usize, version: i32, out: &mut KeyBuf) -> Probe {
        let m = self.meta(slot);
        if version < m.window_low || version > m.max_version {
            return Probe::Miss;
        }
        match (0..m.entries as usize).map(|j| self.entry(slot, j)).find(|e| e.version == version) {
            Some(e) if e.retired != 0 => Probe::Retired,
            Some(e) if e.key_len > 0 => {
                out.set(&e.key[..e.key_len as usize]);
                Probe::Hit(version)
            }
            _ => Probe::Miss,
        }
    }

    /// Every cached group with the change sequence it was loaded at.
    pub fn cached_groups(&self) -> Vec<(SlotKey, i64)> {
        (0..self.slots)
            .filter(|&i| self.hash_at(i) != 0)
            .map(|i| (self.slot_key(i), self.meta(i).change_seq))
            .collect()
    }

    fn wipe_slot(&mut self, i: usize) {
        self.set_hash(i, 0);
        for j in 0..self.versions {
            let e = self.entry_mut(i, j);
            e.key.zeroize();
            e.key_len = 0;
            e.version = 0;
            e.retired = 0;
            e.activates_at = 0;
        }
        let m = self.meta_mut(i);
        m.database = 0;
        m.extension = 0;
        m.entries = 0;
        m.group_id = [0; 16];
    }

    fn bump_epoch(&mut self) {
        self.header_mut().epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops `key` from the cache (wiping its keys) and bumps the epoch so
    /// that no load begun before now can store older data.
    pub fn invalidate(&mut self, key: &SlotKey) -> bool {
        self.bump_epoch();
        self.counters().invalidations.fetch_add(1, Ordering::Relaxed);
        match self.find(key) {
            Some(i) => {
                self.wipe_slot(i);
                true
            }
            None => false,
        }
    }

    /// Wipes every slot of `database` (of one incarnation of the extension,
    /// or of all), for DROP DATABASE and DROP EXTENSION; bumps the epoch.
    /// Returns how many slots were wiped.
    pub fn purge(&mut self, database: u32, extension: Option<u32>) -> usize {
        self.bump_epoch();
        self.counters().invalidations.fetch_add(1, Ordering::Relaxed);
        let doomed: Vec<usize> = (0..self.slots)
            .filter(|&i| self.hash_at(i) != 0)
            .filter(|&i| {
                let k = self.slot_key(i);
                k.database == database && extension.is_none_or(|e| e == k.extension)
            })
            .collect();
        for &i in &doomed {
            self.wipe_slot(i);
        }
        doomed.len()
    }

    /// Bumps the epoch without dropping a slot: every backend-local cache
    /// validated by the epoch (secrets) reloads on next use.
    pub fn touch(&mut self) {
        self.bump_epoch();
        self.counters().invalidations.fetch_add(1, Ordering::Relaxed);
    }

    fn same_window(&self, slot: usize, fill: &Fill<'_>) -> bool {
        let m = self.meta(slot);
        m.change_seq == fill.info.change_seq
            && m.group_id == fill.info.group_id
            && m.purpose == fill.info.purpose as u32
            && m.key_bytes == fill.info.key_bytes
            && m.window_low == fill.window_low
            && m.entries as usize == fill.entries.len()
            && fill.entries.iter().enumerate().all(|(j, f)| {
                let e = self.entry(slot, j);
                e.version == f.version && e.activates_at == f.activates_at && (e.retired != 0) == f.retired
            })
    }

    /// Stores a loaded group, replacing its old slot or evicting the least
    /// recently used one. Refuses data loaded before the last invalidation.
    pub fn fill(&mut self, expected_epoch: u64, fill: &Fill<'_>) -> FillOutcome {
        if self.epoch() != expected_epoch {
            return FillOutcome::Stale;
        }
        if fill.key.group != fill.info.group_id
            || fill.entries.len() > self.versions
            || fill.entries.iter().any(|e| e.key.is_some_and(|k| k.len() > MAX_KEY))
            || self.slots == 0
        {
            return FillOutcome::Unfit;
        }
        // The same group at the same change sequence has the same versions:
        // add the keys just unwrapped to those already there (each version is
        // unwrapped on first use, not the whole window at once).
        if let Some(i) = self.find(&fill.key) {
            if self.same_window(i, fill) {
                for (j, f) in fill.entries.iter().enumerate() {
                    if let (Some(k), false) = (f.key, f.retired) {
                        let e = self.entry_mut(i, j);
                        e.key[..k.len()].copy_from_slice(k);
                        e.key_len = k.len() as u32;
                    }
                }
                self.counters().fills.fetch_add(1, Ordering::Relaxed);
                return FillOutcome::Filled { evicted: false };
            }
        }
        let mut evicted = false;
        let slot = match self.find(&fill.key) {
            Some(i) => i,
            None => match (0..self.slots).find(|&i| self.hash_at(i) == 0) {
                Some(i) => i,
                None => {
                    let victim = (0..self.slots)
                        .min_by_key(|&i| self.meta(i).last_used.load(Ordering::Relaxed))
                        .expect("at least one slot");
                    evicted = true;
                    self.counters().evictions.fetch_add(1, Ordering::Relaxed);
                    victim
                }
            },
        };
        self.wipe_slot(slot);
        for (j, f) in fill.entries.iter().enumerate() {
            let e = self.entry_mut(slot, j);
            e.version = f.version;
            e.retired = f.retired as u32;
            e.activates_at = f.activates_at;
            match f.key {
                Some(k) if !f.retired => {
                    e.key[..k.len()].copy_from_slice(k);
                    e.key_len = k.len() as u32;
                }
                _ => e.key_len = 0,
            }
        }
        // Fills step the clock past every "used" stamp handed out so far.
        let tick = self.header().clock.fetch_add(2, Ordering::Relaxed) + 2;
        let m = self.meta_mut(slot);
        m.database = fill.key.database;
        m.extension = fill.key.extension;
        m.purpose = fill.info.purpose as u32;
        m.key_bytes = fill.info.key_bytes;
        m.group_id = fill.info.group_id;
        m.change_seq = fill.info.change_seq;
        m.entries = fill.entries.len() as u32;
        m.window_low = fill.window_low;
        m.max_version = fill.entries.iter().map(|e| e.version).max().unwrap_or(0);
        m.last_used.store(tick, Ordering::Relaxed);
        self.set_hash(slot, key_hash(&fill.key));
        self.counters().fills.fetch_add(1, Ordering::Relaxed);
        FillOutcome::Filled { evicted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Region {
        _mem: Vec<u64>,
        cache: RingCache,
    }

    fn region(slots: usize, versions: usize) -> Region {
        let size = RingCache::region_size(slots, versions);
        let mut mem = vec![0u64; size / 8 + 1];
        let cache = unsafe { RingCache::attach(mem.as_mut_ptr() as *mut u8, slots, versions, true) };
        Region { _mem: mem, cache }
    }

    const DB: u32 = 16384;
    const EXT: u32 = 24576;

    fn key(id: u8) -> SlotKey {
        SlotKey { database: DB, extension: EXT, group: [id; 16] }
    }

    fn info(id: u8) -> SlotInfo {
        SlotInfo { group_id: [id; 16], purpose: 1, key_bytes: 32, change_seq: id as i64 }
    }

    fn fill_at(c: &mut RingCache, k: SlotKey, keys: &[(i32, i64, bool, [u8; 32])]) -> FillOutcome {
        let entries: Vec<FillEntry<'_>> = keys
            .iter()
            .map(|(v, at, retired, k)| FillEntry { version: *v, activates_at: *at, retired: *retired, key: Some(&k[..]) })
            .collect();
        let low = keys.iter().map(|k| k.0).min().unwrap_or(1);
        let epoch = c.epoch();
        let info = SlotInfo { group_id: k.group, purpose: 1, key_bytes: 32, change_seq: 1 };
        c.fill(epoch, &Fill { key: k, info, window_low: low, entries: &entries })
    }

    fn fill_group(c: &mut RingCache, id: u8, keys: &[(i32, i64, bool, [u8; 32])]) -> FillOutcome {
        fill_at(c, key(id), keys)
    }

    fn region_contains(r: &Region, needle: &[u8]) -> bool {
        let bytes = unsafe { std::slice::from_raw_parts(r._mem.as_ptr() as *const u8, r._mem.len() * 8) };
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn current_is_newest_active_version_and_pending_ones_wait_for_their_time() {
        let mut r = region(4, 4);
        let c = &mut r.cache;
        fill_group(c, 1, &[(1, 0, false, [1; 32]), (2, 100, false, [2; 32])]);
        let slot = c.find(&key(1)).unwrap();
        let mut out = KeyBuf::new();
        assert_eq!(c.current(slot, 99, &mut out), Probe::Hit(1));
        assert_eq!(out.as_slice(), &[1; 32]);
        assert_eq!(c.current(slot, 100, &mut out), Probe::Hit(2));
        assert_eq!(out.as_slice(), &[2; 32]);
    }

    #[test]
    fn keys_are_added_one_version_at_a_time_and_current_never_falls_back_to_an_older_one() {
        let mut r = region(2, 4);
        let c = &mut r.cache;
        let fill = |c: &mut RingCache, v1: Option<&[u8]>, v2: Option<&[u8]>, seq: i64| {
            let entries = [
                FillEntry { version: 1, activates_at: 0, retired: false, key: v1 },
                FillEntry { version: 2, activates_at: 0, retired: false, key: v2 },
            ];
            let info = SlotInfo { change_seq: seq, ..info(1) };
            let e = c.epoch();
            c.fill(e, &Fill { key: key(1), info, window_low: 1, entries: &entries })
        };
        let mut out = KeyBuf::new();
        // Only version 1 unwrapped (someone asked for it): current is 2, not loaded.
        fill(c, Some(&[1; 32]), None, 7);
        let s = c.find(&key(1)).unwrap();
        assert_eq!(c.current(s, 10, &mut out), Probe::Miss);
        assert_eq!(c.at_version(s, 1, &mut out), Probe::Hit(1));
        // Then version 2: both stay.
        fill(c, None, Some(&[2; 32]), 7);
        assert_eq!(c.current(s, 10, &mut out), Probe::Hit(2));
        assert_eq!(out.as_slice(), &[2; 32]);
        assert_eq!(c.at_version(s, 1, &mut out), Probe::Hit(1));
        assert_eq!(out.as_slice(), &[1; 32]);
        // A new change sequence replaces the slot: older keys are not kept.
        fill(c, None, Some(&[2; 32]), 8);
        assert_eq!(c.at_version(s, 1, &mut out), Probe::Miss);
        assert_eq!(c.at_version(s, 2, &mut out), Probe::Hit(2));
    }

    #[test]
    fn versions_outside_the_window_are_misses_and_retired_ones_say_so() {
        let mut r = region(2, 4);
        let c = &mut r.cache;
        let entries = [
            FillEntry { version: 3, activates_at: 0, retired: true, key: None },
            FillEntry { version: 4, activates_at: 0, retired: false, key: Some(&[4u8; 32][..]) },
        ];
        let e = c.epoch();
        c.fill(e, &Fill { key: key(1), info: info(1), window_low: 3, entries: &entries });
        let s = c.find(&key(1)).unwrap();
        let mut out = KeyBuf::new();
        assert_eq!(c.at_version(s, 2, &mut out), Probe::Miss);
        assert_eq!(c.at_version(s, 3, &mut out), Probe::Retired);
        assert_eq!(c.at_version(s, 4, &mut out), Probe::Hit(4));
        assert_eq!(c.at_version(s, 5, &mut out), Probe::Miss);
    }

    #[test]
    fn full_cache_evicts_the_least_recently_used_group_and_wipes_its_keys() {
        let mut r = region(2, 2);
        fill_group(&mut r.cache, 1, &[(1, 0, false, [0xA1; 32])]);
        fill_group(&mut r.cache, 2, &[(1, 0, false, [0xB1; 32])]);
        // Touch 1 so 2 is the least recently used.
        assert!(r.cache.find(&key(1)).is_some());
        assert_eq!(fill_group(&mut r.cache, 3, &[(1, 0, false, [0xC1; 32])]), FillOutcome::Filled { evicted: true });
        assert!(r.cache.find(&key(2)).is_none());
        assert!(r.cache.find(&key(1)).is_some() && r.cache.find(&key(3)).is_some());
        assert_eq!(r.cache.counters().evictions.load(Ordering::Relaxed), 1);
        assert!(!region_contains(&r, &[0xB1; 32]), "evicted key bytes must be zeroed");
        assert!(region_contains(&r, &[0xA1; 32]));
    }

    #[test]
    fn invalidation_wipes_the_slot_and_rejects_loads_begun_before_it() {
        let mut r = region(4, 2);
        fill_group(&mut r.cache, 1, &[(1, 0, false, [0x77; 32])]);
        let before = r.cache.epoch();
        assert!(r.cache.invalidate(&key(1)));
        assert!(r.cache.find(&key(1)).is_none());
        assert!(!region_contains(&r, &[0x77; 32]));
        let k = [0x78u8; 32];
        let entries = [FillEntry { version: 1, activates_at: 0, retired: false, key: Some(&k[..]) }];
        let fill = Fill { key: key(1), info: info(1), window_low: 1, entries: &entries };
        assert_eq!(r.cache.fill(before, &fill), FillOutcome::Stale);
        assert!(r.cache.find(&key(1)).is_none());
        let now = r.cache.epoch();
        assert_eq!(r.cache.fill(now, &fill), FillOutcome::Filled { evicted: false });
    }

    #[test]
    fn refill_replaces_the_same_slot_and_keeps_other_groups() {
        let mut r = region(3, 2);
        fill_group(&mut r.cache, 1, &[(1, 0, false, [1; 32])]);
        fill_group(&mut r.cache, 2, &[(1, 0, false, [2; 32])]);
        fill_group(&mut r.cache, 1, &[(1, 0, false, [1; 32]), (2, 0, false, [3; 32])]);
        let mut ids: Vec<_> = r.cache.cached_groups().into_iter().map(|g| g.0.group[0]).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        let s = r.cache.find(&key(1)).unwrap();
        let mut out = KeyBuf::new();
        assert_eq!(r.cache.current(s, 0, &mut out), Probe::Hit(2));
    }

    #[test]
    fn oversized_or_mislabelled_fills_are_refused_not_truncated() {
        let mut r = region(1, 1);
        let two = [(1, 0, false, [1; 32]), (2, 0, false, [2; 32])];
        assert_eq!(fill_group(&mut r.cache, 1, &two), FillOutcome::Unfit);
        let entries = [FillEntry { version: 1, activates_at: 0, retired: false, key: Some(&[1u8; 32][..]) }];
        let e = r.cache.epoch();
        // The slot key names group 1, the loaded data group 2.
        assert_eq!(r.cache.fill(e, &Fill { key: key(1), info: info(2), window_low: 1, entries: &entries }), FillOutcome::Unfit);
    }

    #[test]
    fn the_same_group_id_in_another_database_or_incarnation_is_another_slot() {
        let mut r = region(4, 1);
        let a = key(1);
        let other_db = SlotKey { database: DB + 1, ..a };
        let other_ext = SlotKey { extension: EXT + 1, ..a };
        fill_at(&mut r.cache, a, &[(1, 0, false, [0xAA; 32])]);
        assert!(r.cache.find(&other_db).is_none(), "another database never sees this slot");
        assert!(r.cache.find(&other_ext).is_none(), "a re-created extension never sees this slot");
        fill_at(&mut r.cache, other_db, &[(1, 0, false, [0xBB; 32])]);
        let mut out = KeyBuf::new();
        let s = r.cache.find(&a).unwrap();
        assert_eq!(r.cache.current(s, 0, &mut out), Probe::Hit(1));
        assert_eq!(out.as_slice(), &[0xAA; 32]);
    }

    #[test]
    fn purge_wipes_one_database_or_one_incarnation_and_nothing_else() {
        let mut r = region(4, 1);
        let a = key(1);
        let b = SlotKey { extension: EXT + 1, ..key(2) };
        let c = SlotKey { database: DB + 1, ..key(3) };
        fill_at(&mut r.cache, a, &[(1, 0, false, [0xA1; 32])]);
        fill_at(&mut r.cache, b, &[(1, 0, false, [0xB1; 32])]);
        fill_at(&mut r.cache, c, &[(1, 0, false, [0xC1; 32])]);
        let before = r.cache.epoch();
        assert_eq!(r.cache.purge(DB, Some(EXT)), 1);
        assert!(r.cache.epoch() > before);
        assert!(r.cache.find(&a).is_none() && r.cache.find(&b).is_some());
        assert!(!region_contains(&r, &[0xA1; 32]), "purged key bytes are zeroed");
        assert_eq!(r.cache.purge(DB, None), 1);
        assert!(r.cache.find(&b).is_none() && r.cache.find(&c).is_some());
        assert!(!region_contains(&r, &[0xB1; 32]));
    }

    #[test]
    fn keybuf_wipe_covers_everything_it_ever_held() {
        let mut k = KeyBuf::new();
        k.set(&[0xAA; 64]);
        k.set(&[0xBB; 16]);
        assert_eq!(k.as_slice(), &[0xBB; 16]);
        k.wipe();
        assert!(k.bytes.iter().all(|b| *b == 0));
        assert!(k.as_slice().is_empty());
    }

    #[test]
    fn last_error_is_truncated_on_a_char_boundary() {
        let msg = "é".repeat(200);
        let got = truncate_on_char_boundary(&msg, 256);
        assert!(got.len() <= 256 && msg.starts_with(got));
        assert_eq!(got.len(), 256, "2-byte characters fill 256 bytes exactly");
        let odd = truncate_on_char_boundary(&msg, 255);
        assert_eq!(odd.len(), 254, "never cut a character in half");
    }
}
