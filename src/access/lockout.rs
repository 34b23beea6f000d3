//! The lockout table in shared memory: failures per (login role, client
//! address), shared by every database of the server (a role is a server
//! object, and guessing in another database is still guessing). The role
//! is the session's, so `SET ROLE` to another role gives no fresh guesses.
//!
//! The hot path never scans it: a lock (or unlock) bumps `changes`, and a
//! backend re-reads its own pair's state only when that moved.

use std::cell::{Cell, UnsafeCell};
use std::ffi::CStr;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pgrx::prelude::*;
use secret_vault_core::access::lockout::{self, AddrKey, Entry, Policy};

use crate::error::{VaultError, VaultResult};
use crate::{audit, catalog, guc};

const NAME: &CStr = c"secret_vault lockouts";
/// Pairs tracked at once; beyond that the pair seen longest ago that is
/// not locked gives way.
pub const ENTRIES: usize = 1024;

#[repr(C)]
struct Table {
    changes: AtomicU64,
    entries: UnsafeCell<[Entry; ENTRIES]>,
}

// Shared memory; `entries` is read and written only under LOCK.
unsafe impl Sync for Table {}

static mut TABLE: *mut Table = null_mut();
static mut LOCK: *mut pg_sys::LWLock = null_mut();

thread_local! {
    /// (changes seen, role, locked until) of this backend's last look.
    static SEEN: Cell<(u64, u32, i64)> = const { Cell::new((u64::MAX, 0, 0)) };
}

pub fn size() -> usize {
    std::mem::size_of::<Table>()
}

/// Attaches (and on first use zeroes) the table; called from the shmem
/// startup hook with AddinShmemInitLock held.
pub unsafe fn startup(lock: *mut pg_sys::LWLock) {
    unsafe {
        let mut found = false;
        let t = pg_sys::ShmemInitStruct(NAME.as_ptr(), size(), &mut found) as *mut Table;
        if !found {
            std::ptr::write_bytes(t as *mut u8, 0, size());
        }
        TABLE = t;
        LOCK = lock;
    }
}

pub fn init() {}

fn with<R>(mode: pg_sys::LWLockMode::Type, f: impl FnOnce(&mut [Entry; ENTRIES]) -> R) -> Option<R> {
    unsafe {
        if TABLE.is_null() || LOCK.is_null() {
            return None;
        }
        pg_sys::LWLockAcquire(LOCK, mode);
        // SAFETY: exclusive or shared access under the lock, as `mode` says;
        // shared holders only read.
        let r = f(&mut *(*TABLE).entries.get());
        pg_sys::LWLockRelease(LOCK);
        Some(r)
    }
}

fn changes() -> u64 {
    unsafe { if TABLE.is_null() { 0 } else { (*TABLE).changes.load(Relaxed) } }
}

fn bump() {
    unsafe {
        if !TABLE.is_null() {
            (*TABLE).changes.fetch_add(1, Relaxed);
        }
    }
}

fn key() -> (bool, AddrKey) {
    match super::client_bytes(super::client()) {
        Some(b) => (false, b),
        None => (true, [0; 16]),
    }
}

fn policy() -> Policy {
    Policy {
        threshold: guc::LOCKOUT_THRESHOLD.get().max(0) as u32,
        window: guc::LOCKOUT_WINDOW_S.get() as i64 * 1_000_000,
        duration: guc::LOCKOUT_DURATION_S.get() as i64 * 1_000_000,
    }
}

/// Refuses the call when the caller's (role, address) pair is locked.
pub fn refuse_if_locked(action: &'static str, object: Option<&str>, user: pg_sys::Oid) -> VaultResult<()> {
    let seen = changes();
    let (at, role, until) = SEEN.get();
    if at == seen && role == user.to_u32() && until == 0 {
        // Not locked at the last look, and no lock set anywhere since.
        return Ok(());
    }
    let now = catalog::now_micros();
    let until = if at == seen && role == user.to_u32() {
        until
    } else {
        let (local, addr) = key();
        let until = with(pg_sys::LWLockMode::LW_SHARED, |t| lockout::locked_until(t, user.to_u32(), local, &addr, now))
            .flatten()
            .unwrap_or(0);
        SEEN.set((seen, user.to_u32(), until));
        until
    };
    if until > now {
        audit::refused(action, super::recordable(object), "28000");
        return Err(VaultError::LockedOut { role: super::role_name(user), seconds: (until - now + 999_999) / 1_000_000 });
    }
    Ok(())
}

/// Counts a failure of the caller; the one that reaches the threshold
/// locks the pair and is recorded as a lockout, under `object` as the
/// caller already filtered it (`access::recordable`).
pub fn failure(action: &'static str, object: Option<&str>, user: pg_sys::Oid) {
    let p = policy();
    if p.threshold == 0 {
        return;
    }
    let now = catalog::now_micros();
    let (local, addr) = key();
    let locked = with(pg_sys::LWLockMode::LW_EXCLUSIVE, |t| lockout::record_failure(t, user.to_u32(), local, &addr, now, &p)).flatten();
    if locked.is_some() {
        bump();
        audit::refused_as(action, object, "locked out", "28000");
    }
}

/// Lifts the lock of `role` from `addr` (None: every address); returns how
/// many pairs were cleared.
pub fn unlock(role: pg_sys::Oid, addr: Option<(bool, AddrKey)>) -> usize {
    let n = with(pg_sys::LWLockMode::LW_EXCLUSIVE, |t| lockout::unlock(t, role.to_u32(), addr.as_ref().map(|(l, a)| (*l, a)))).unwrap_or(0);
    bump();
    n
}

/// Every tracked pair with failures or a lock: (role, local, address,
/// failures, locked until).
pub fn list() -> Vec<Entry> {
    with(pg_sys::LWLockMode::LW_SHARED, |t| t.iter().filter(|e| e.role != 0).copied().collect()).unwrap_or_default()
}
