//! The shared-memory region that holds the ring cache, and its lock.
//!
//! Sized at server start from `secret_vault.cache_groups` and
//! `secret_vault.cache_versions`. The region is page-aligned so that it can
//! be excluded from core dumps (MADV_DONTDUMP) and locked in memory (mlock)
//! without touching PostgreSQL's own shared memory around it.

use std::ffi::CStr;
use std::ptr::null_mut;

use pgrx::prelude::*;
use secret_vault_core::cache::{Counters, RingCache};

use crate::guc;

const REGION_NAME: &CStr = c"secret_vault ring cache";
const PER_BACKEND_NAME: &CStr = c"secret_vault per-backend counters";

/// Hit and miss counts of one backend, on a cache line of its own: a hit
/// then costs a plain store, with no line shared between backends.
#[repr(C, align(64))]
pub struct BackendCounters {
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
}
const TRANCHE: &CStr = c"secret_vault";

// Set in the postmaster by the startup hook and inherited by every child.
static mut REGION: *mut u8 = null_mut();
static mut LOCK: *mut pg_sys::LWLock = null_mut();
static mut SLOTS: usize = 0;
static mut PER_BACKEND: *mut BackendCounters = null_mut();
static mut PER_BACKEND_LEN: usize = 0;
static mut VERSIONS: usize = 0;
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// `AddinShmemInitLock` is a C macro (slot 21 of the main LWLock array in
/// PostgreSQL 15's lwlocknames.h), so bindgen does not export it.
unsafe fn addin_shmem_init_lock() -> *mut pg_sys::LWLock {
    unsafe { &raw mut (*pg_sys::MainLWLockArray.add(21)).lock }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

fn layout() -> (usize, usize) {
    (guc::CACHE_GROUPS.get().max(0) as usize, guc::CACHE_VERSIONS.get().max(1) as usize)
}

fn region_len(slots: usize, versions: usize) -> usize {
    let page = page_size();
    RingCache::region_size(slots, versions).div_ceil(page) * page
}

/// Installs the hooks; called from `_PG_init` in the postmaster.
pub fn init() {
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        let (slots, versions) = layout();
        // One extra page so the region can start on a page boundary.
        pg_sys::RequestAddinShmemSpace(region_len(slots, versions) + page_size());
        // Lock 0 guards the ring cache, 1 the worker registry, 2 the
        // lockout table, 3 the audit queue.
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 4);
        pg_sys::RequestAddinShmemSpace(per_backend_len() * std::mem::size_of::<BackendCounters>());
        pg_sys::RequestAddinShmemSpace(crate::worker::registry::size());
        pg_sys::RequestAddinShmemSpace(crate::access::lockout::size());
        pg_sys::RequestAddinShmemSpace(crate::audit::queue::size());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let (slots, versions) = layout();
        let len = region_len(slots, versions);
        pg_sys::LWLockAcquire(addin_shmem_init_lock(), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let raw = pg_sys::ShmemInitStruct(REGION_NAME.as_ptr(), len + page_size(), &mut found) as *mut u8;
        let page = page_size();
        let aligned = ((raw as usize).div_ceil(page) * page) as *mut u8;
        REGION = aligned;
        SLOTS = slots;
        VERSIONS = versions;
        LOCK = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
        if !found {
            RingCache::attach(aligned, slots, versions, true);
            protect(aligned, len);
        }
        let n = per_backend_len();
        let bytes = n * std::mem::size_of::<BackendCounters>();
        let mut found_pb = false;
        let pb = pg_sys::ShmemInitStruct(PER_BACKEND_NAME.as_ptr(), bytes, &mut found_pb) as *mut BackendCounters;
        if !found_pb {
            std::ptr::write_bytes(pb as *mut u8, 0, bytes);
        }
        PER_BACKEND = pb;
        PER_BACKEND_LEN = n;
        crate::worker::registry::startup(&raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr()).add(1)).lock);
        crate::access::lockout::startup(&raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr()).add(2)).lock);
        crate::audit::queue::startup(&raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr()).add(3)).lock);
        pg_sys::LWLockRelease(addin_shmem_init_lock());
    }
}

/// Keeps key bytes out of core dumps and swap where the OS allows it.
unsafe fn protect(ptr: *mut u8, len: usize) {
    unsafe {
        if libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_DONTDUMP) != 0 {
            pgrx::log!(
                "secret_vault: could not exclude the key cache from core dumps: {}",
                std::io::Error::last_os_error()
            );
        }
        if libc::mlock(ptr as *const libc::c_void, len) != 0 {
            pgrx::log!(
                "secret_vault: could not lock the key cache ({len} bytes) in memory, it may be swapped: {} \
                 (raise the memlock limit of the server to fix this)",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Backend ids run from 1 to MaxBackends (client backends, background and
/// parallel workers); slot 0 is shared by processes without one.
fn per_backend_len() -> usize {
    unsafe { pg_sys::MaxBackends.max(0) as usize + 1 }
}

fn my_counters() -> Option<&'static BackendCounters> {
    unsafe {
        if PER_BACKEND.is_null() {
            return None;
        }
        // 1-based backend ids until PostgreSQL 17, 0-based proc numbers since.
        #[cfg(feature = "pg15")]
        let id = pg_sys::MyBackendId;
        #[cfg(not(feature = "pg15"))]
        let id = pg_sys::MyProcNumber + 1;
        let i = if id >= 1 && (id as usize) < PER_BACKEND_LEN { id as usize } else { 0 };
        Some(&*PER_BACKEND.add(i))
    }
}

/// Counts a cache hit (or miss) for this backend.
pub fn count_lookup(hit: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(c) = my_counters() {
        let a = if hit { &c.hits } else { &c.misses };
        // Slot 0 may be shared, so it takes an atomic add; others have one writer.
        if std::ptr::eq(c, unsafe { &*PER_BACKEND }) {
            a.fetch_add(1, Relaxed);
        } else {
            a.store(a.load(Relaxed) + 1, Relaxed);
        }
    }
}

/// (hits, misses) summed over every backend since server start.
pub fn lookup_totals() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    unsafe {
        if PER_BACKEND.is_null() {
            return (0, 0);
        }
        (0..PER_BACKEND_LEN).fold((0, 0), |(h, m), i| {
            let c = &*PER_BACKEND.add(i);
            (h + c.hits.load(Relaxed), m + c.misses.load(Relaxed))
        })
    }
}

fn view() -> Option<RingCache> {
    unsafe {
        if REGION.is_null() || LOCK.is_null() || SLOTS == 0 {
            return None;
        }
        Some(RingCache::attach(REGION, SLOTS, VERSIONS, false))
    }
}

/// Counters (atomics: no lock needed).
pub fn counters() -> Option<&'static Counters> {
    unsafe {
        if REGION.is_null() {
            return None;
        }
        let cache = RingCache::attach(REGION, SLOTS, VERSIONS, false);
        // SAFETY: the region lives as long as the process.
        Some(&*(cache.counters() as *const Counters))
    }
}

pub fn bump(f: impl FnOnce(&Counters)) {
    if let Some(c) = counters() {
        f(c)
    }
}

/// Runs `f` under the shared lock. The closure must not raise errors: it
/// only copies bytes.
pub fn with_shared<R>(f: impl FnOnce(&RingCache) -> R) -> Option<R> {
    let cache = view()?;
    unsafe {
        pg_sys::LWLockAcquire(LOCK, pg_sys::LWLockMode::LW_SHARED);
        let r = f(&cache);
        pg_sys::LWLockRelease(LOCK);
        Some(r)
    }
}

/// Runs `f` under the exclusive lock.
pub fn with_exclusive<R>(f: impl FnOnce(&mut RingCache) -> R) -> Option<R> {
    let mut cache = view()?;
    unsafe {
        pg_sys::LWLockAcquire(LOCK, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let r = f(&mut cache);
        pg_sys::LWLockRelease(LOCK);
        Some(r)
    }
}

pub fn epoch() -> Option<u64> {
    view().map(|c| c.epoch())
}
