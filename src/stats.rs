//! `vault.stats()`: counters since server start, so an operator can see the
//! hot path never reaches the KMS and that the worker is alive.

use std::sync::atomic::Ordering;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

use crate::shmem;
use crate::worker::registry;


fn ts(micros: i64) -> Option<TimestampWithTimeZone> {
    (micros != 0).then(|| TimestampWithTimeZone::try_from(micros).ok()).flatten()
}

/// `vault.stats().rotation`: on, off, subscribed or standby (see
/// `worker::Rotation`).
fn rotation() -> String {
    use crate::error::OrRaise;
    crate::worker::Rotation::current(|| Spi::connect(|c| crate::catalog::vault_subscription(&c)))
        .or_raise()
        .label()
        .to_string()
}

/// One row of counters since server start.
// pgrx reads the column names from the inline `name!()` tuple; an alias hides them.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn stats() -> TableIterator<'static, (
    name!(cache_hits, i64),
    name!(cache_misses, i64),
    name!(evictions, i64),
    name!(kms_calls, i64),
    name!(rotations, i64),
    name!(invalidations, i64),
    name!(cache_fills, i64),
    name!(cached_groups, i32),
    name!(cache_slots, i32),
    name!(worker_pid, Option<i32>),
    name!(worker_runs, i64),
    name!(worker_last_run, Option<TimestampWithTimeZone>),
    name!(worker_errors, i64),
    name!(worker_last_error, Option<String>),
    name!(worker_last_error_at, Option<TimestampWithTimeZone>),
    name!(kms_calls_local, i64),
    name!(kms_calls_aws, i64),
    name!(kms_calls_transit, i64),
    name!(rotation, String),
)> {
    let (cached, slots) =
        shmem::with_shared(|c| (c.cached_groups().len() as i32, c.slots() as i32)).unwrap_or((0, 0));
    let (hits, misses) = shmem::lookup_totals();
    // The worker columns describe this database's worker.
    let worker = registry::find(unsafe { pg_sys::MyDatabaseId }.to_u32());
    let row = match shmem::counters() {
        Some(c) => {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
            let pid = worker.map_or(0, |w| w.pid.load(Ordering::Relaxed));
            (
                hits as i64,
                misses as i64,
                n(&c.evictions),
                n(&c.kms_calls),
                n(&c.rotations),
                n(&c.invalidations),
                n(&c.fills),
                cached,
                slots,
                (pid != 0).then_some(pid),
                worker.map_or(0, |w| n(&w.runs)),
                worker.and_then(|w| ts(w.last_run.load(Ordering::Relaxed))),
                worker.map_or(0, |w| n(&w.errors)),
                worker.and_then(|w| w.last_error()),
                worker.and_then(|w| ts(w.last_error_at.load(Ordering::Relaxed))),
                n(&c.kms_calls_local),
                n(&c.kms_calls_aws),
                n(&c.kms_calls_transit),
                rotation(),
            )
        }
        None => (0, 0, 0, 0, 0, 0, 0, 0, 0, None, 0, None, 0, None, None, 0, 0, 0, rotation()),
    };
    TableIterator::once(row)
}

/// The per-database workers: process, state and last error. For operators
/// (vault_admin); the view `vault.workers` selects from it. Errors name
/// groups and secrets, so a non-superuser sees only this database's row.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn worker_status() -> TableIterator<'static, (
    name!(database, String),
    name!(pid, Option<i32>),
    name!(state, String),
    name!(started_at, Option<TimestampWithTimeZone>),
    name!(last_run, Option<TimestampWithTimeZone>),
    name!(runs, i64),
    name!(errors, i64),
    name!(last_error, Option<String>),
    name!(last_error_at, Option<TimestampWithTimeZone>),
)> {
    let everything = unsafe { pg_sys::superuser() };
    let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let rows: Vec<_> = registry::all()
        .filter(|w| everything || w.database.load(Ordering::Relaxed) == here)
        .map(|w| {
            let db = pg_sys::Oid::from(w.database.load(Ordering::Relaxed));
            // SAFETY: a syscache lookup; NULL for a database dropped meanwhile.
            let name = unsafe { pg_sys::get_database_name(db) };
            let name = if name.is_null() {
                format!("(oid {})", db.to_u32())
            } else {
                unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned()
            };
            let pid = w.pid.load(Ordering::Relaxed);
            (
                name,
                (pid != 0).then_some(pid),
                w.state().label().to_string(),
                ts(w.started_at.load(Ordering::Relaxed)),
                ts(w.last_run.load(Ordering::Relaxed)),
                w.runs.load(Ordering::Relaxed) as i64,
                w.errors.load(Ordering::Relaxed) as i64,
                w.last_error(),
                ts(w.last_error_at.load(Ordering::Relaxed)),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Items the workers failed on and are backing off from: one row per
/// (database, kind, group or secret), with the error and the next attempt.
/// The view `vault.worker_failures` adds names for this database. As with
/// `worker_status`, a non-superuser sees only this database's rows.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn worker_item_failures() -> TableIterator<'static, (
    name!(database, pg_sys::Oid),
    name!(kind, String),
    name!(object_id, pgrx::Uuid),
    name!(failures, i64),
    name!(first_failed_at, Option<TimestampWithTimeZone>),
    name!(last_failed_at, Option<TimestampWithTimeZone>),
    name!(next_attempt_at, Option<TimestampWithTimeZone>),
    name!(last_error, String),
)> {
    let everything = unsafe { pg_sys::superuser() };
    let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let mut rows = Vec::new();
    for w in registry::all() {
        let db = w.database.load(Ordering::Relaxed);
        if !everything && db != here {
            continue;
        }
        for f in w.failures() {
            rows.push((
                pg_sys::Oid::from(db),
                f.kind.label().to_string(),
                pgrx::Uuid::from_bytes(f.id),
                f.failures as i64,
                ts(f.first_at),
                ts(f.last_at),
                ts(f.next_attempt),
                f.error(),
            ));
        }
    }
    TableIterator::new(rows)
}
