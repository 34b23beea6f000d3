//! The shared table of per-database workers: which database each slot
//! serves, its process, its state and its last error. The launcher claims a
//! slot when it starts a worker; a worker that finds no extension in its
//! database gives the slot back, so databases without the extension hold
//! none. Each worker writes its own slot; `vault.stats()` and `vault.workers`
//! read them. Sized by `max_worker_processes` (no more workers can exist).

use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use pgrx::prelude::*;

const NAME: &CStr = c"secret_vault worker registry";
pub const LAST_ERROR_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    Idle = 0,
    Starting = 1,
    Running = 2,
    NotInstalled = 3,
    Outdated = 4,
    Suspended = 5,
    NoSlot = 6,
}

impl State {
    fn from_u32(v: u32) -> State {
        match v {
            1 => State::Starting,
            2 => State::Running,
            3 => State::NotInstalled,
            4 => State::Outdated,
            5 => State::Suspended,
            6 => State::NoSlot,
            _ => State::Idle,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Starting => "starting",
            State::Running => "running",
            State::NotInstalled => "extension not installed",
            State::Outdated => "waiting for ALTER EXTENSION secret_vault UPDATE",
            State::Suspended => "stopped for a database command",
            State::NoSlot => "no background worker slot free",
        }
    }
}

#[repr(C)]
pub struct Slot {
    pub database: AtomicU32,
    pub pid: AtomicI32,
    state: AtomicU32,
    pub started_at: AtomicI64,
    pub last_run: AtomicI64,
    pub runs: AtomicU64,
    pub errors: AtomicU64,
    pub last_error_at: AtomicI64,
    /// The launcher starts no worker here before this time (µs, PostgreSQL epoch).
    pub retry_at: AtomicI64,
    last_error_len: AtomicU32,
    last_error: UnsafeCell<[u8; LAST_ERROR_LEN]>,
    /// Items (a group, a secret, a key) whose last attempt failed, with
    /// their backoff. In shared memory so that a restarted worker keeps
    /// backing off and operators can read them (`vault.worker_failures`).
    failures: UnsafeCell<[Failure; FAILURES]>,
}

/// How many failing items shared memory shows per worker; beyond that the
/// one seen longest ago gives way. The worker's own backoff (its process
/// map) covers every failing item, whatever this holds.
pub const FAILURES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ItemKind {
    Empty = 0,
    GroupRotation = 1,
    SecretRotation = 2,
    KeyRebind = 3,
    CacheWarm = 4,
    /// A group's ring key rows being moved to current KMS material.
    Rewrap = 5,
}

impl ItemKind {
    pub fn label(self) -> &'static str {
        match self {
            ItemKind::Empty => "",
            ItemKind::GroupRotation => "group rotation",
            ItemKind::SecretRotation => "secret rotation",
            ItemKind::KeyRebind => "ring key re-binding",
            ItemKind::CacheWarm => "cache warm-up",
            ItemKind::Rewrap => "ring key re-wrap",
        }
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Failure {
    pub kind: ItemKind,
    pub id: [u8; 16],
    pub failures: u32,
    pub first_at: i64,
    pub last_at: i64,
    pub next_attempt: i64,
    error_len: u32,
    error: [u8; LAST_ERROR_LEN],
}

impl Failure {
    pub fn error(&self) -> String {
        String::from_utf8_lossy(&self.error[..(self.error_len as usize).min(LAST_ERROR_LEN)]).into_owned()
    }
}

// Shared memory; `last_error` is written only under the registry lock.
unsafe impl Sync for Slot {}

impl Slot {
    pub fn state(&self) -> State {
        State::from_u32(self.state.load(Relaxed))
    }
    pub fn set_state(&self, s: State) {
        self.state.store(s as u32, Relaxed)
    }
    pub fn last_error(&self) -> Option<String> {
        with_lock(pg_sys::LWLockMode::LW_SHARED, || {
            let n = self.last_error_len.load(Relaxed) as usize;
            // SAFETY: readers hold the registry lock shared, writers exclusively.
            let buf = unsafe { &*self.last_error.get() };
            (n > 0).then(|| String::from_utf8_lossy(&buf[..n.min(LAST_ERROR_LEN)]).into_owned())
        })
    }
    pub fn set_last_error(&self, msg: &str) {
        let msg = secret_vault_core::cache::truncate_on_char_boundary(msg, LAST_ERROR_LEN);
        let n = msg.len();
        with_lock(pg_sys::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: writers hold the registry lock exclusively.
            let buf = unsafe { &mut *self.last_error.get() };
            buf[..n].copy_from_slice(&msg.as_bytes()[..n]);
            self.last_error_len.store(n as u32, Relaxed);
        });
        self.last_error_at.store(crate::catalog::now_micros(), Relaxed);
    }
    fn clear(&self) {
        self.pid.store(0, Relaxed);
        self.set_state(State::Idle);
        for a in [&self.started_at, &self.last_run, &self.last_error_at, &self.retry_at] {
            a.store(0, Relaxed);
        }
        self.runs.store(0, Relaxed);
        self.errors.store(0, Relaxed);
        self.last_error_len.store(0, Relaxed);
        // SAFETY: called under the registry lock held exclusively.
        unsafe { (*self.failures.get()).iter_mut().for_each(|f| f.kind = ItemKind::Empty) };
    }

    /// Shows a failed attempt on one item to operators: its consecutive
    /// failures, the error and the next attempt (the worker decides both).
    /// When the table is full the entry seen longest ago gives way; the
    /// worker's own backoff does not depend on this table.
    pub fn item_failed(&self, kind: ItemKind, id: &[u8; 16], msg: &str, failures: u32, next_attempt: i64) {
        let now = crate::catalog::now_micros();
        let msg = secret_vault_core::cache::truncate_on_char_boundary(msg, LAST_ERROR_LEN);
        with_lock(pg_sys::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: writers hold the registry lock exclusively.
            let table = unsafe { &mut *self.failures.get() };
            let i = table
                .iter()
                .position(|f| f.kind == kind && f.id == *id)
                .or_else(|| table.iter().position(|f| f.kind == ItemKind::Empty))
                .unwrap_or_else(|| (0..FAILURES).min_by_key(|&i| table[i].last_at).unwrap_or(0));
            let f = &mut table[i];
            if f.kind != kind || f.id != *id {
                *f = Failure { kind, id: *id, failures: 0, first_at: now, last_at: now, next_attempt: 0, error_len: 0, error: [0; LAST_ERROR_LEN] };
            }
            f.failures = failures;
            f.last_at = now;
            f.next_attempt = next_attempt;
            f.error[..msg.len()].copy_from_slice(msg.as_bytes());
            f.error_len = msg.len() as u32;
        })
    }

    /// Forgets an item's failures after it succeeded.
    pub fn item_ok(&self, kind: ItemKind, id: &[u8; 16]) {
        // A cheap unlocked look first: almost every item never failed.
        // SAFETY: a racy read of plain data only decides whether to lock.
        let known = unsafe { &*self.failures.get() }.iter().any(|f| f.kind == kind && f.id == *id);
        if !known {
            return;
        }
        with_lock(pg_sys::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: writers hold the registry lock exclusively.
            let table = unsafe { &mut *self.failures.get() };
            table.iter_mut().filter(|f| f.kind == kind && f.id == *id).for_each(|f| f.kind = ItemKind::Empty);
        })
    }

    pub fn failures(&self) -> Vec<Failure> {
        with_lock(pg_sys::LWLockMode::LW_SHARED, || {
            // SAFETY: readers hold the registry lock shared.
            let table = unsafe { &*self.failures.get() };
            table.iter().filter(|f| f.kind != ItemKind::Empty).copied().collect()
        })
    }
}

const WANTED: usize = 32;

#[repr(C)]
struct Header {
    launcher_pid: AtomicI32,
    slots: u32,
    /// Databases where CREATE/ALTER EXTENSION just committed (0 = empty).
    wanted: [AtomicU32; WANTED],
}

static mut BASE: *mut Header = null_mut();
static mut LOCK: *mut pg_sys::LWLock = null_mut();

fn slot_count() -> usize {
    // SAFETY: read-only after the postmaster has read its configuration.
    (unsafe { pg_sys::max_worker_processes }).max(1) as usize
}

pub fn size() -> usize {
    std::mem::size_of::<Header>().next_multiple_of(64) + slot_count() * std::mem::size_of::<Slot>()
}

/// Called from the shmem startup hook, under AddinShmemInitLock.
pub unsafe fn startup(lock: *mut pg_sys::LWLock) {
    unsafe {
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(NAME.as_ptr(), size(), &mut found) as *mut Header;
        if !found {
            std::ptr::write_bytes(p as *mut u8, 0, size());
            (*p).slots = slot_count() as u32;
        }
        BASE = p;
        LOCK = lock;
    }
}

fn slots() -> &'static [Slot] {
    unsafe {
        if BASE.is_null() {
            return &[];
        }
        let first = (BASE as *mut u8).add(std::mem::size_of::<Header>().next_multiple_of(64)) as *const Slot;
        std::slice::from_raw_parts(first, (*BASE).slots as usize)
    }
}

fn with_lock<R>(mode: pg_sys::LWLockMode::Type, f: impl FnOnce() -> R) -> R {
    unsafe {
        if LOCK.is_null() {
            return f();
        }
        pg_sys::LWLockAcquire(LOCK, mode);
        let r = f();
        pg_sys::LWLockRelease(LOCK);
        r
    }
}

/// The slot serving `database`, if one is assigned.
pub fn find(database: u32) -> Option<&'static Slot> {
    slots().iter().find(|s| s.database.load(Relaxed) == database)
}

/// The slot of `database`, claiming a free one if it has none.
pub fn claim(database: u32) -> Option<&'static Slot> {
    with_lock(pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        if let Some(s) = find(database) {
            return Some(s);
        }
        let s = slots().iter().find(|s| s.database.load(Relaxed) == 0)?;
        s.clear();
        s.database.store(database, Relaxed);
        Some(s)
    })
}

/// Gives a slot back (its database has no extension, or is gone).
pub fn release(slot: &Slot) {
    with_lock(pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        slot.clear();
        slot.database.store(0, Relaxed);
    })
}

/// Frees the slots of databases that no longer exist and have no process.
pub fn release_gone(databases: &[u32]) {
    for s in slots() {
        let db = s.database.load(Relaxed);
        if db != 0 && !databases.contains(&db) && s.pid.load(Relaxed) == 0 {
            release(s);
        }
    }
}

/// Databases whose worker was asked for since the last call.
pub fn take_wanted() -> Vec<u32> {
    let Some(h) = (unsafe { BASE.as_ref() }) else { return Vec::new() };
    h.wanted.iter().map(|w| w.swap(0, Relaxed)).filter(|db| *db != 0).collect()
}

/// Every assigned slot.
pub fn all() -> impl Iterator<Item = &'static Slot> {
    slots().iter().filter(|s| s.database.load(Relaxed) != 0)
}

pub fn set_launcher_pid(pid: i32) {
    if let Some(h) = unsafe { BASE.as_ref() } {
        h.launcher_pid.store(pid, Relaxed);
    }
}

/// Asks the launcher to start a worker for `database` now (CREATE/ALTER
/// EXTENSION committed there).
pub fn want(database: u32) {
    if let Some(h) = unsafe { BASE.as_ref() } {
        // A full list only delays the start to the next periodic probe.
        let _ = h.wanted.iter().any(|w| w.compare_exchange(0, database, Relaxed, Relaxed).is_ok());
    }
    wake_launcher();
}

/// Wakes the worker of `database` (the audit queue is filling up).
pub fn wake(database: u32) {
    if let Some(s) = find(database) {
        let pid = s.pid.load(Relaxed);
        if pid > 0 {
            // SIGUSR1 sets a background worker's latch (procsignal handler).
            unsafe { libc::kill(pid, libc::SIGUSR1) };
        }
    }
}

pub fn wake_launcher() {
    if let Some(h) = unsafe { BASE.as_ref() } {
        let pid = h.launcher_pid.load(Relaxed);
        if pid > 0 {
            // SIGUSR1 sets the launcher's latch (procsignal handler).
            unsafe { libc::kill(pid, libc::SIGUSR1) };
        }
    }
}

/// Stops the worker of `database` and keeps the launcher from starting one
/// for `hold_micros`: DROP DATABASE, ALTER DATABASE RENAME and CREATE
/// DATABASE ... TEMPLATE refuse to run while any other session is connected
/// to it. Waits up to `wait` for the worker to exit.
pub fn suspend(database: u32, hold_micros: i64, wait: std::time::Duration) {
    let Some(s) = find(database) else { return };
    s.retry_at.store(crate::catalog::now_micros() + hold_micros, Relaxed);
    s.set_state(State::Suspended);
    let pid = s.pid.load(Relaxed);
    if pid <= 0 {
        return;
    }
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        let gone = s.pid.load(Relaxed) != pid || unsafe { libc::kill(pid, 0) } != 0;
        if gone {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        pg_sys::check_for_interrupts!();
    }
}
