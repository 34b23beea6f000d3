//! Keeping every backend's view of the cache equal to what is committed.
//!
//! A function that changes a group marks it dirty for the rest of its
//! transaction: this backend then bypasses the shared cache for that group
//! (it must see its own uncommitted change; nobody else may). At commit the
//! group's slot is invalidated, after the commit is visible to new
//! snapshots and before the client hears COMMIT; at abort nothing happens.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::atomic::Ordering;

use pgrx::{register_xact_callback, PgXactCallbackEvent};

use crate::shmem;

thread_local! {
    static DIRTY: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    static STALE: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    static ROTATIONS: Cell<u64> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Records that this transaction changed `group` (and whether it rotated it).
///
/// Creation needs no record: nothing can be cached under a name that did not
/// exist, and a transaction that has written never fills a cache, so its own
/// reads of what it created go to the tables.
pub fn note_change(group: &str, rotated: bool) {
    DIRTY.with(|d| d.borrow_mut().insert(group.to_string()));
    STALE.with(|d| d.borrow_mut().insert(group.to_string()));
    if rotated {
        ROTATIONS.set(ROTATIONS.get() + 1);
    }
    register();
}

fn register() {
    if !REGISTERED.get() {
        REGISTERED.set(true);
        register_xact_callback(PgXactCallbackEvent::Commit, on_commit);
        register_xact_callback(PgXactCallbackEvent::Abort, reset);
    }
}

/// Whether this transaction changed `group` and must bypass the cache.
pub fn is_dirty(group: &str) -> bool {
    DIRTY.with(|d| {
        let d = d.borrow();
        !d.is_empty() && d.contains(group)
    })
}

fn on_commit() {
    DIRTY.with(|d| d.borrow_mut().clear());
    let groups: Vec<String> = STALE.with(|d| d.borrow_mut().drain().collect());
    let rotations = ROTATIONS.replace(0);
    REGISTERED.set(false);
    if !groups.is_empty() {
        shmem::with_exclusive(|c| {
            for g in &groups {
                c.invalidate(g);
            }
        });
    }
    shmem::bump(|c| {
        c.rotations.fetch_add(rotations, Ordering::Relaxed);
    });
}

fn reset() {
    DIRTY.with(|d| d.borrow_mut().clear());
    STALE.with(|d| d.borrow_mut().clear());
    ROTATIONS.set(0);
    REGISTERED.set(false);
}
