//! The audit queue in shared memory: records wait here, outside any
//! transaction, until their database's worker writes them to
//! `vault.audit_log`. A record of a denied or failed call therefore
//! survives the rollback of the caller's transaction.
//!
//! Entries are fixed-size (texts are cut to their field, on a character
//! boundary); the worker drains its database's entries in order.

use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use pgrx::prelude::*;

use crate::guc;

const NAME: &CStr = c"secret_vault audit queue";

const FREE: u8 = 0;
const FILLED: u8 = 1;
const TAKEN: u8 = 2;

/// One record's fields, as the backend captured them.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub at: i64,
    pub database: u32,
    pub database_name: String,
    pub role: String,
    pub session_role: String,
    pub client_addr: Option<[u8; 16]>,
    pub application_name: String,
    pub action: String,
    pub object: Option<String>,
    pub outcome: String,
    pub sqlstate: Option<String>,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Text<const N: usize> {
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> Text<N> {
    fn set(&mut self, s: &str) {
        let mut n = s.len().min(N);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
        self.len = n as u16;
    }
    fn get(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..(self.len as usize).min(N)]).into_owned()
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Entry {
    state: u8,
    has_client: bool,
    has_object: bool,
    has_sqlstate: bool,
    database: u32,
    seq: u64,
    at: i64,
    client: [u8; 16],
    database_name: Text<64>,
    role: Text<64>,
    session_role: Text<64>,
    application_name: Text<64>,
    action: Text<32>,
    object: Text<256>,
    outcome: Text<16>,
    sqlstate: Text<8>,
}

#[repr(C)]
struct Header {
    /// Changes at every server start (and crash restart): sequence numbers
    /// are only comparable within one.
    generation: u64,
    next_seq: u64,
    capacity: u32,
    used: AtomicU32,
    cursor: u32,
}

struct Queue {
    header: *mut Header,
    entries: *mut UnsafeCell<Entry>,
}

static mut QUEUE: Queue = Queue { header: null_mut(), entries: null_mut() };
static mut LOCK: *mut pg_sys::LWLock = null_mut();

fn capacity() -> usize {
    guc::AUDIT_QUEUE_SIZE.get().max(16) as usize
}

pub fn size() -> usize {
    std::mem::size_of::<Header>() + capacity() * std::mem::size_of::<Entry>() + 16
}

/// Attaches (and on first use initialises) the queue; called from the
/// shmem startup hook with AddinShmemInitLock held.
pub unsafe fn startup(lock: *mut pg_sys::LWLock) {
    unsafe {
        let mut found = false;
        let raw = pg_sys::ShmemInitStruct(NAME.as_ptr(), size(), &mut found) as *mut u8;
        let header = raw as *mut Header;
        let entries = raw.add(std::mem::size_of::<Header>().div_ceil(16) * 16) as *mut UnsafeCell<Entry>;
        if !found {
            std::ptr::write_bytes(raw, 0, size());
            (*header).capacity = capacity() as u32;
            (*header).generation = rand::random::<u64>() >> 1;
            (*header).next_seq = 1;
        }
        QUEUE = Queue { header, entries };
        LOCK = lock;
    }
}

fn locked<R>(f: impl FnOnce(&mut Header, &mut [Entry]) -> R) -> Option<R> {
    unsafe {
        let q = &*(&raw const QUEUE);
        if q.header.is_null() || LOCK.is_null() {
            return None;
        }
        pg_sys::LWLockAcquire(LOCK, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let h = &mut *q.header;
        // SAFETY: the entries are read and written only under LOCK.
        let entries = std::slice::from_raw_parts_mut(q.entries as *mut Entry, h.capacity as usize);
        let r = f(h, entries);
        pg_sys::LWLockRelease(LOCK);
        Some(r)
    }
}

/// Entries in use over capacity (0..=1), without the lock.
pub fn fill_ratio() -> f64 {
    unsafe {
        let q = &*(&raw const QUEUE);
        if q.header.is_null() {
            return 0.0;
        }
        (*q.header).used.load(Relaxed) as f64 / (*q.header).capacity.max(1) as f64
    }
}

fn claim_free(h: &mut Header, entries: &mut [Entry]) -> Option<usize> {
    let n = entries.len();
    for k in 0..n {
        let i = (h.cursor as usize + k) % n;
        if entries[i].state == FREE {
            h.cursor = ((i + 1) % n) as u32;
            h.used.fetch_add(1, Relaxed);
            return Some(i);
        }
    }
    None
}

fn fill_in(h: &mut Header, e: &mut Entry, f: &Fields) {
    e.database = f.database;
    e.at = f.at;
    e.has_client = f.client_addr.is_some();
    e.client = f.client_addr.unwrap_or([0; 16]);
    e.database_name.set(&f.database_name);
    e.role.set(&f.role);
    e.session_role.set(&f.session_role);
    e.application_name.set(&f.application_name);
    e.action.set(&f.action);
    e.has_object = f.object.is_some();
    e.object.set(f.object.as_deref().unwrap_or(""));
    e.outcome.set(&f.outcome);
    e.has_sqlstate = f.sqlstate.is_some();
    e.sqlstate.set(f.sqlstate.as_deref().unwrap_or(""));
    e.seq = h.next_seq;
    h.next_seq += 1;
    e.state = FILLED;
}

/// Queues a finished record; false when the queue is full.
pub fn push(f: &Fields) -> bool {
    locked(|h, entries| match claim_free(h, entries) {
        Some(i) => {
            fill_in(h, &mut entries[i], f);
            true
        }
        None => false,
    })
    .unwrap_or(false)
}

/// A record taken by a worker: its entry, sequence number and fields.
pub struct Taken {
    pub index: usize,
    pub seq: u64,
    pub fields: Fields,
}

/// Takes up to `max` filled records of `database`, oldest first, and
/// the queue's generation.
pub fn take(database: u32, max: usize) -> (u64, Vec<Taken>) {
    locked(|h, entries| {
        let mut mine: Vec<usize> = (0..entries.len()).filter(|i| entries[*i].state == FILLED && entries[*i].database == database).collect();
        mine.sort_by_key(|i| entries[*i].seq);
        mine.truncate(max);
        let taken = mine
            .into_iter()
            .map(|i| {
                let e = &mut entries[i];
                e.state = TAKEN;
                Taken {
                    index: i,
                    seq: e.seq,
                    fields: Fields {
                        at: e.at,
                        database: e.database,
                        database_name: e.database_name.get(),
                        role: e.role.get(),
                        session_role: e.session_role.get(),
                        client_addr: e.has_client.then_some(e.client),
                        application_name: e.application_name.get(),
                        action: e.action.get(),
                        object: e.has_object.then(|| e.object.get()),
                        outcome: e.outcome.get(),
                        sqlstate: e.has_sqlstate.then(|| e.sqlstate.get()),
                    },
                }
            })
            .collect();
        (h.generation, taken)
    })
    .unwrap_or((0, Vec::new()))
}

/// Databases other than `mine` with records queued before `before` (µs):
/// candidates for a worker that is gone (a dropped database or extension).
pub fn waiting_elsewhere(mine: u32, before: i64) -> Vec<u32> {
    locked(|_, entries| {
        let mut dbs: Vec<u32> =
            entries.iter().filter(|e| e.state == FILLED && e.database != mine && e.at < before).map(|e| e.database).collect();
        dbs.sort_unstable();
        dbs.dedup();
        dbs
    })
    .unwrap_or_default()
}

/// Frees entries whose records are written (or were written before).
pub fn release(indexes: &[usize]) {
    locked(|h, entries| {
        for &i in indexes {
            if entries[i].state == TAKEN {
                entries[i].state = FREE;
                h.used.fetch_sub(1, Relaxed);
            }
        }
    });
}

/// Puts taken entries of `database` back (their write failed, or a worker
/// stopped between taking and releasing).
pub fn untake(database: u32) {
    locked(|_, entries| {
        for e in entries.iter_mut() {
            if e.state == TAKEN && e.database == database {
                e.state = FILLED;
            }
        }
    });
}
