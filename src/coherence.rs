//! Keeping every backend's view of the cache equal to what is committed.
//!
//! A function that changes a group marks it dirty for the rest of its
//! transaction: this backend then bypasses the shared cache for that name
//! (it must see its own uncommitted change; nobody else may). At commit the
//! group's slot is invalidated (which bumps the shared epoch, so every
//! backend re-resolves its names), after the commit is visible to new
//! snapshots and before the client hears COMMIT; at abort nothing happens.
//!
//! A transaction that wrote to the vault cannot be prepared: after `COMMIT
//! PREPARED` (possibly in another backend, or after a restart) nobody would
//! run these callbacks, and the cache would go on serving what it replaced.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::atomic::Ordering;

use pgrx::{register_xact_callback, PgXactCallbackEvent};
use secret_vault_core::cache::SlotKey;

use crate::shmem;

thread_local! {
    static DIRTY: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    static STALE: RefCell<Vec<SlotKey>> = const { RefCell::new(Vec::new()) };
    static PURGE: RefCell<Vec<(u32, u32)>> = const { RefCell::new(Vec::new()) };
    static TOUCH: Cell<bool> = const { Cell::new(false) };
    static ROTATIONS: Cell<u64> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Records that this transaction changed the object known as `dirty` (a
/// group name, or a secret's coherence key), whose cache slot, if it has
/// one, is `slot`; and whether it rotated it.
pub fn note_change(dirty: &str, slot: Option<SlotKey>, rotated: bool) {
    DIRTY.with(|d| d.borrow_mut().insert(dirty.to_string()));
    match slot {
        Some(k) => STALE.with(|s| s.borrow_mut().push(k)),
        // No slot (a secret): every backend-local cache checks the epoch.
        None => TOUCH.set(true),
    }
    if rotated {
        ROTATIONS.set(ROTATIONS.get() + 1);
    }
    register();
}

/// Records a write that needs no invalidation (a creation: nothing can be
/// cached for an id that did not exist), so that PREPARE is still refused.
pub fn note_write() {
    register();
}

/// DROP EXTENSION: wipe that incarnation's slots when the drop commits (they
/// were wiped once already when the drop began; this catches any refill).
pub fn note_purge(database: u32, extension: u32) {
    PURGE.with(|p| p.borrow_mut().push((database, extension)));
    register();
}

fn register() {
    if !REGISTERED.get() {
        REGISTERED.set(true);
        register_xact_callback(PgXactCallbackEvent::Commit, on_commit);
        register_xact_callback(PgXactCallbackEvent::Abort, reset);
        register_xact_callback(PgXactCallbackEvent::PrePrepare, refuse_prepare);
    }
}

/// Whether this transaction changed `name` and must bypass the cache for it.
pub fn is_dirty(name: &str) -> bool {
    DIRTY.with(|d| {
        let d = d.borrow();
        !d.is_empty() && d.contains(name)
    })
}

fn on_commit() {
    DIRTY.with(|d| d.borrow_mut().clear());
    let slots: Vec<SlotKey> = STALE.with(|s| s.borrow_mut().drain(..).collect());
    let purges: Vec<(u32, u32)> = PURGE.with(|p| p.borrow_mut().drain(..).collect());
    let touch = TOUCH.replace(false);
    let rotations = ROTATIONS.replace(0);
    REGISTERED.set(false);
    if !slots.is_empty() || !purges.is_empty() || touch {
        shmem::with_exclusive(|c| {
            for k in &slots {
                c.invalidate(k);
            }
            for (db, ext) in &purges {
                c.purge(*db, Some(*ext));
            }
            if touch {
                c.touch();
            }
        });
    }
    shmem::bump(|c| {
        c.rotations.fetch_add(rotations, Ordering::Relaxed);
    });
}

fn reset() {
    DIRTY.with(|d| d.borrow_mut().clear());
    STALE.with(|s| s.borrow_mut().clear());
    PURGE.with(|p| p.borrow_mut().clear());
    TOUCH.set(false);
    ROTATIONS.set(0);
    REGISTERED.set(false);
}

fn refuse_prepare() {
    reset();
    pgrx::pg_sys::panic::ErrorReport::new(
        pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "cannot PREPARE a transaction that changed secret_vault objects",
        "secret_vault",
    )
    .set_hint("Run vault changes in an ordinary transaction: a prepared one could commit where its cache invalidation never runs.")
    .report(pgrx::PgLogLevel::ERROR);
}
