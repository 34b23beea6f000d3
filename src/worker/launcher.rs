//! The launcher: one per server, connected to no database. It lists the
//! databases that accept connections and keeps one worker running in each
//! where the extension is installed (as TimescaleDB's launcher does). A
//! worker started in a database without the extension says so and exits;
//! that database is probed again every `PROBE_EVERY`, or at once when a
//! CREATE/ALTER EXTENSION commits there (the committing backend wakes us).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use super::registry::{self, State};
use crate::catalog::now_micros;

/// How often a database without the extension is looked at again (a
/// standby learns of CREATE EXTENSION only this way).
const PROBE_EVERY_MICROS: i64 = 30_000_000;
/// How long a database whose worker could not start waits before a retry.
const NO_SLOT_RETRY_MICROS: i64 = 10_000_000;

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
    let mut running: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    loop {
        tick(&mut running);
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
    registry::set_launcher_pid(0);
    pgrx::log!("secret_vault launcher stopping");
}

fn tick(running: &mut HashMap<u32, DynamicBackgroundWorker>) {
    let dbs = databases();
    running.retain(|db, w| dbs.contains(db) && w.pid().is_ok() || matches!(w.pid(), Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted)));
    for db in registry::assign(&dbs) {
        pgrx::warning!("secret_vault: no worker registry slot for database {db}; raise max_worker_processes");
    }
    let now = now_micros();
    for slot in registry::all() {
        let db = slot.database.load(Relaxed);
        if running.contains_key(&db) {
            continue;
        }
        let wanted = slot.wanted.swap(false, Relaxed);
        let retry_at = slot.retry_at.load(Relaxed);
        let suspended = slot.state() == State::Suspended && now < retry_at;
        if suspended || (!wanted && now < retry_at) {
            continue;
        }
        match start_worker(db) {
            Ok(w) => {
                slot.set_state(State::Starting);
                slot.retry_at.store(now + PROBE_EVERY_MICROS, Relaxed);
                running.insert(db, w);
            }
            Err(e) => {
                slot.set_state(State::NoSlot);
                slot.retry_at.store(now + NO_SLOT_RETRY_MICROS, Relaxed);
                slot.set_last_error(&format!(
                    "could not start a worker ({e}): raise max_worker_processes (one per database with the extension, plus one)"
                ));
                slot.errors.fetch_add(1, Relaxed);
            }
        }
    }
}
