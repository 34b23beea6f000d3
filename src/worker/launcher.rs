//! The launcher: one per server, connected to no database. It lists the
//! databases that accept connections and keeps one worker running in each
//! where the extension is installed (as TimescaleDB's launcher does). A
//! worker started in a database without the extension says so, gives its
//! registry slot back and exits; that database is probed again every
//! `PROBE_EVERY_MICROS`, or at once when a CREATE/ALTER EXTENSION commits
//! there (the committing backend wakes us). Probes are spread out (a few per
//! tick), so they never take every background worker slot at once. Each tick
//! also wipes cache slots of databases that no longer exist (a standby
//! replaying DROP DATABASE runs no hook).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use super::registry::{self, State};
use crate::catalog::now_micros;
use crate::shmem;

/// How often a database without the extension is looked at again (a
/// standby learns of CREATE EXTENSION only this way).
const PROBE_EVERY_MICROS: i64 = 30_000_000;
/// How long a database whose worker could not start waits before a retry.
const NO_SLOT_RETRY_MICROS: i64 = 10_000_000;
/// Workers started per tick at most.
const STARTS_PER_TICK: usize = 2;
/// How soon a worker that stopped without saying why (an ERROR, a
/// pg_terminate_backend) is started again.
const RESTART_AFTER_MICROS: i64 = 2_000_000;

pub fn register() {
    BackgroundWorkerBuilder::new("secret_vault launcher")
        .set_type("secret_vault launcher")
        .set_library("secret_vault")
        .set_function("secret_vault_launcher_main")
        .enable_spi_access()
        // ConsistentState: standbys run workers too (they sync, never write).
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Databases that accept connections and are not templates.
fn databases() -> Vec<u32> {
    let mut out = Vec::new();
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let header = (*tup).t_data;
            let form = (header as *mut u8).add((*header).t_hoff as usize) as *const pg_sys::FormData_pg_database;
            if (*form).datallowconn && !(*form).datistemplate {
                out.push((*form).oid.to_u32());
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    out
}

fn start_worker(database: u32) -> Result<DynamicBackgroundWorker, String> {
    BackgroundWorkerBuilder::new(&format!("secret_vault worker {database}"))
        .set_type("secret_vault worker")
        .set_library("secret_vault")
        .set_function("secret_vault_worker_main")
        .set_argument(Some(pg_sys::Datum::from(database)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        // The launcher restarts it, with backoff; the postmaster must not.
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .map_err(|e| format!("{e:?}"))
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn secret_vault_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    registry::set_launcher_pid(unsafe { pg_sys::MyProcPid });
    pgrx::log!("secret_vault launcher started");
    let mut st = Launcher { running: HashMap::new(), next_probe: HashMap::new(), warned: Default::default() };
    loop {
        tick(&mut st);
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
    registry::set_launcher_pid(0);
    pgrx::log!("secret_vault launcher stopping");
    // A zero exit would unregister the launcher for good (after
    // pg_terminate_backend, say); exit 1 and the postmaster starts it again.
    unsafe { pg_sys::proc_exit(1) };
}

struct Launcher {
    running: HashMap<u32, DynamicBackgroundWorker>,
    next_probe: HashMap<u32, i64>,
    warned: std::collections::HashSet<u32>,
}

fn alive(w: &DynamicBackgroundWorker) -> bool {
    matches!(w.pid(), Ok(_) | Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted))
}

fn tick(st: &mut Launcher) {
    let dbs = databases();
    let now = now_micros();
    let mut stopped = Vec::new();
    st.running.retain(|db, w| {
        let keep = dbs.contains(db) && alive(w);
        if !keep {
            stopped.push(*db);
        }
        keep
    });
    for db in stopped {
        // Still holding its slot as idle: it did not exit for a reason of
        // its own (no extension, outdated schema, suspended), so it comes back soon.
        if registry::find(db).is_some_and(|s| s.state() == State::Idle) {
            st.next_probe.insert(db, now + RESTART_AFTER_MICROS);
        }
    }
    st.next_probe.retain(|db, _| dbs.contains(db));
    registry::release_gone(&dbs);
    // Keys of databases that no longer exist: wiped here too, so a standby
    // (where no DROP DATABASE hook runs) never keeps them.
    let gone: Vec<u32> = shmem::with_shared(|c| c.cached_groups())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, _)| k.database)
        .filter(|db| !dbs.contains(db))
        .collect();
    for db in gone {
        shmem::with_exclusive(|c| c.purge(db, None));
    }
    let wanted = registry::take_wanted();
    for &db in &wanted {
        st.next_probe.insert(db, 0);
    }
    // Databases just asked for, then those known to have the extension (they
    // hold a registry slot), then the rest: probes never crowd out a vault.
    let mut order: Vec<u32> = dbs.clone();
    order.sort_by_key(|db| (!wanted.contains(db), registry::find(*db).is_none()));
    let mut started = 0;
    for db in order {
        if started >= STARTS_PER_TICK {
            break;
        }
        if st.running.contains_key(&db) || st.next_probe.get(&db).is_some_and(|t| now < *t) {
            continue;
        }
        if registry::find(db).is_some_and(|s| s.state() == State::Suspended && now < s.retry_at.load(Relaxed)) {
            continue;
        }
        let known = registry::find(db).is_some();
        let Some(slot) = registry::claim(db) else {
            if st.warned.insert(db) {
                pgrx::warning!("secret_vault: no worker registry slot for database {db}; raise max_worker_processes");
            }
            st.next_probe.insert(db, now + NO_SLOT_RETRY_MICROS);
            continue;
        };
        started += 1;
        // Before the start: a worker quick to connect sets Running itself,
        // and must not be overwritten with Starting afterwards.
        slot.set_state(State::Starting);
        match start_worker(db) {
            Ok(w) => {
                st.next_probe.insert(db, now + PROBE_EVERY_MICROS);
                st.running.insert(db, w);
            }
            Err(_) if !known => {
                // Only a probe: nothing says this database has the extension.
                registry::release(slot);
                st.next_probe.insert(db, now + RESTART_AFTER_MICROS);
            }
            Err(e) => {
                slot.set_state(State::NoSlot);
                st.next_probe.insert(db, now + RESTART_AFTER_MICROS);
                slot.set_last_error(&format!(
                    "could not start a worker ({e}): raise max_worker_processes (one per database with the extension, plus one)"
                ));
                slot.errors.fetch_add(1, Relaxed);
            }
        }
    }
}
