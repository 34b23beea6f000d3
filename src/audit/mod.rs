//! The audit log (docs/access.md): every write and administrative action,
//! every denial and lockout, and with `secret_vault.audit_reads` every
//! read, with who, from where, what and how it ended; never a value.
//!
//! A write that succeeds is recorded in its own transaction: a row of
//! `vault.audit_staging`, which commits with the write or vanishes with it
//! (a savepoint too), so nothing can commit unrecorded and no limit applies
//! to how many writes one transaction makes. Everything that must outlive
//! the caller's transaction (a denial, a failure, the note that a write was
//! rolled back, and reads when they are audited) goes through a
//! shared-memory queue ([`queue`]). The database's worker moves both into
//! `vault.audit_log`, chained by MACs ([`writer`]). When the queue stays
//! full an audited read is refused (`secret_vault.audit_when_full`) and a
//! record of a call that fails anyway goes to the server log; on a standby,
//! where nothing can be written, every record goes to the server log.

pub mod queue;
pub mod writer;

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;

use crate::access;
use crate::error::{VaultError, VaultResult};
use crate::{catalog, guc};
use queue::Fields;

/// How long a backend waits for the worker to make room in a full queue
/// before the action is refused (or logged).
const FULL_WAIT_MS: u64 = 2000;

/// A write staged in the current transaction, at this subtransaction level.
struct Pending {
    level: i32,
    fields: Fields,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static OVERFLOW: Cell<u64> = const { Cell::new(0) };
    static DATABASE_NAME: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn database_name() -> String {
    DATABASE_NAME.with(|d| {
        d.borrow_mut()
            .get_or_insert_with(|| unsafe {
                let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
                if p.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            })
            .clone()
    })
}

fn application_name() -> String {
    unsafe {
        let p = pg_sys::application_name;
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

fn fields(action: &str, object: Option<&str>, outcome: &str, sqlstate: Option<&str>) -> Fields {
    Fields {
        at: catalog::now_micros(),
        database: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        database_name: database_name(),
        role: access::current_role_name(),
        session_role: access::session_role_name(),
        client_addr: access::client_bytes(access::client()),
        application_name: application_name(),
        action: action.to_string(),
        object: object.map(str::to_string),
        outcome: outcome.to_string(),
        sqlstate: sqlstate.map(str::to_string),
    }
}

/// What a failure's SQLSTATE says about how the call ended.
fn outcome_of(sqlstate: &str) -> &'static str {
    match sqlstate {
        "42501" => "denied",
        "28000" => "locked out",
        _ => "error",
    }
}

fn on_standby() -> bool {
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Writes a queued record to the server log (its database's worker is gone).
pub fn log_record(f: &Fields) {
    log_line(f)
}

/// The record as one server-log line: `secret_vault audit: {json}`.
fn log_line(f: &Fields) {
    let at = pgrx::datum::TimestampWithTimeZone::try_from(f.at).map(|t| t.to_string()).unwrap_or_default();
    let client = f.client_addr.map(|b| writer::addr_text(&b));
    let json = serde_json::json!({
        "at": at,
        "database": f.database_name,
        "role": f.role,
        "session_role": f.session_role,
        "client_addr": client,
        "application_name": f.application_name,
        "action": f.action,
        "object": f.object,
        "outcome": f.outcome,
        "sqlstate": f.sqlstate,
    });
    crate::log_hook::log_audit(&format!("secret_vault audit: {json}"));
}

fn wake_worker() {
    crate::worker::registry::wake(unsafe { pg_sys::MyDatabaseId }.to_u32());
}

/// Waits for room in the queue: `attempt` returns Some once it got some.
fn with_room<T>(mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    if let Some(v) = attempt() {
        if queue::fill_ratio() > 0.5 {
            wake_worker();
        }
        return Some(v);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(FULL_WAIT_MS);
    let mut n = 0u32;
    while std::time::Instant::now() < deadline {
        if n % 100 == 0 {
            wake_worker();
        }
        n += 1;
        unsafe { pg_sys::pg_usleep(1000) };
        pgrx::check_for_interrupts!();
        if let Some(v) = attempt() {
            return Some(v);
        }
    }
    None
}

/// Records a finished event. A full queue refuses it (Err) unless the
/// setting says to log instead.
fn emit(f: &Fields) -> VaultResult<()> {
    if on_standby() {
        log_line(f);
        return Ok(());
    }
    if with_room(|| queue::push(f).then_some(())).is_some() {
        return Ok(());
    }
    match guc::AUDIT_WHEN_FULL.get() {
        guc::AuditWhenFull::Log => {
            log_line(f);
            Ok(())
        }
        guc::AuditWhenFull::Refuse => Err(VaultError::AuditQueueFull),
    }
}

/// Records an event without waiting for room (inside transaction
/// callbacks and error handling, where nothing may wait or fail): to the
/// queue, or to the server log when it is full.
fn emit_nowait(f: &Fields) {
    if on_standby() || !queue::push(f) {
        log_line(f);
    } else if queue::fill_ratio() > 0.5 {
        wake_worker();
    }
}

/// Records a refused call (denied, locked out). The call fails anyway: a
/// full queue sends the record to the server log rather than lose it.
pub fn refused(action: &str, object: Option<&str>, sqlstate: &str) {
    refused_as(action, object, outcome_of(sqlstate), sqlstate)
}

pub fn refused_as(action: &str, object: Option<&str>, outcome: &str, sqlstate: &str) {
    let f = fields(action, object, outcome, Some(sqlstate));
    if emit(&f).is_err() {
        log_line(&f);
    }
}

/// A failed verification (recorded whether or not reads are audited: a
/// run of them is what a brute-force attempt looks like).
pub fn mismatch(action: &str, object: &str) {
    let f = fields(action, Some(object), "mismatch", None);
    if emit(&f).is_err() {
        log_line(&f);
    }
}

/// Runs a read, recording it when `secret_vault.audit_reads` is on: its
/// record is queued before the result is returned (a full queue refuses
/// the read), or with the SQLSTATE it failed with.
pub fn read<T>(action: &'static str, object: &str, f: impl FnOnce() -> VaultResult<T>) -> VaultResult<T> {
    if !guc::AUDIT_READS.get() {
        return f();
    }
    match f() {
        Ok(v) => {
            emit(&fields(action, Some(object), "ok", None))?;
            Ok(v)
        }
        Err(e) => Err(e),
    }
}

/// Records a read that succeeded, when reads are audited (a full queue
/// refuses it).
pub fn read_ok(action: &str, object: &str) -> VaultResult<()> {
    if guc::AUDIT_READS.get() {
        emit(&fields(action, Some(object), "ok", None))?;
    }
    Ok(())
}

/// Records a read's failure when reads are audited; called with the
/// SQLSTATE as the error is raised.
pub fn read_failed(action: &str, object: &str, sqlstate: &str) {
    if guc::AUDIT_READS.get() {
        refused_as(action, access::recordable(Some(object)), outcome_of(sqlstate), sqlstate);
    }
}

/// Runs a write or administrative action and raises its error. A success
/// is staged in the caller's transaction (it commits with the action, or
/// is rolled back with it, which a queued note then records); a failure,
/// ours or PostgreSQL's (a lock timeout, a cancel), is queued with its
/// SQLSTATE before the error goes on.
pub fn write<T>(action: &'static str, object: Option<&str>, f: impl FnOnce() -> VaultResult<T>) -> T {
    let record = fields(action, object, "", None);
    // A failed call's object is kept only when it names a group or secret
    // that exists: a name that matches nothing may be a value passed in the
    // wrong argument. After PostgreSQL's own error nothing may be queried,
    // so none is kept then.
    let failed = |code: &str, may_query: bool| {
        let mut r = record.clone();
        r.object = if may_query { access::recordable(object).map(str::to_string) } else { None };
        r.outcome = outcome_of(code).to_string();
        r.sqlstate = Some(code.to_string());
        r.at = catalog::now_micros();
        emit_nowait(&r);
    };
    let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .catch_others(|e| {
            let code = match &e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => crate::error::sqlstate(r.sql_error_code()),
            };
            failed(&code, false);
            e.rethrow()
        })
        .execute();
    match result {
        Ok(v) => {
            let mut r = record.clone();
            r.outcome = "ok".into();
            r.at = catalog::now_micros();
            if let Err(e) = writer::stage(&r) {
                e.raise();
            }
            register();
            let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
            PENDING.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < MAX_PENDING {
                    p.push(Pending { level, fields: r });
                } else {
                    OVERFLOW.set(OVERFLOW.get() + 1);
                }
            });
            v
        }
        Err(e) => e.raise_recorded(|code| failed(code, true)),
    }
}

/// Notes of staged writes kept per transaction, to record a rollback;
/// beyond this a rollback is summed up in one server-log line.
const MAX_PENDING: usize = 10_000;

fn settle(pending: Vec<Pending>, outcome: &str) {
    let now = catalog::now_micros();
    for mut p in pending {
        p.fields.outcome = outcome.to_string();
        p.fields.at = now;
        emit_nowait(&p.fields);
    }
}

fn register() {
    if !REGISTERED.get() {
        REGISTERED.set(true);
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            // The staged rows committed with the writes.
            PENDING.with(|p| p.borrow_mut().clear());
            OVERFLOW.set(0);
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            let p = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            settle(p, "rolled back");
            let more = OVERFLOW.replace(0);
            if more > 0 {
                crate::log_hook::log_audit(&format!(
                    "secret_vault audit: {more} more audited write(s) of this transaction were rolled back"
                ));
            }
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            let gone = PENDING.with(|p| {
                let mut p = p.borrow_mut();
                let (gone, kept): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut *p).into_iter().partition(|e| e.level >= level);
                *p = kept;
                gone
            });
            settle(gone, "rolled back");
        }
        SUBXACT_EVENT_COMMIT_SUB => PENDING.with(|p| {
            for e in p.borrow_mut().iter_mut().filter(|e| e.level >= level) {
                e.level = level - 1;
            }
        }),
        _ => {}
    }
}
