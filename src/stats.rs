//! `vault.stats()`: counters since server start, so an operator can see the
//! hot path never reaches the KMS and that the worker is alive.

use std::sync::atomic::Ordering;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

use crate::shmem;


fn ts(micros: i64) -> Option<TimestampWithTimeZone> {
    (micros != 0).then(|| TimestampWithTimeZone::try_from(micros).ok()).flatten()
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
)> {
    let (cached, slots, last_error) = shmem::with_shared(|c| {
        let e = c.last_error();
        (c.cached_groups().len() as i32, c.slots() as i32, (!e.is_empty()).then_some(e))
    })
    .unwrap_or((0, 0, None));
    let (hits, misses) = shmem::lookup_totals();
    let row = match shmem::counters() {
        Some(c) => {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
            let pid = c.worker_pid.load(Ordering::Relaxed);
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
                (pid != 0).then_some(pid as i32),
                n(&c.worker_runs),
                ts(c.worker_last_run.load(Ordering::Relaxed)),
                n(&c.worker_errors),
                last_error,
                ts(c.worker_last_error_at.load(Ordering::Relaxed)),
            )
        }
        None => (0, 0, 0, 0, 0, 0, 0, 0, 0, None, 0, None, 0, None, None),
    };
    TableIterator::once(row)
}
