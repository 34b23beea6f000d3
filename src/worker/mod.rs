//! Background work: a launcher (launcher.rs) and one worker per database
//! where the extension is installed, addressed by database OID, with their
//! state in a shared registry (registry.rs).
//!
//! Each worker wakes every `secret_vault.worker_interval`, rotates due
//! groups and secrets (only where the server accepts writes and
//! `secret_vault.rotation` is on), reconciles this database's cache slots
//! with its tables every `secret_vault.sync_interval`, and fills free slots.
//! KMS calls happen between transactions, never inside one; every statement
//! runs as the vault owner role, never as a superuser.

pub mod launcher;
pub mod registry;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use secret_vault_core::aad::GroupId;
use secret_vault_core::cache::KeyBuf;
use secret_vault_core::secret::Generator;

use crate::catalog;
use crate::error::{VaultError, VaultResult};
use crate::identity::{self, Identity};
use crate::kms::rewrap;
use secret_vault_core::KmsError;
use crate::{audit, coherence, credentials, guc, keyring, kms, secret_store, secrets, shmem};
use registry::{ItemKind, Slot, State};

const DUE_BATCH: i64 = 32;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Minting time per round after which the remaining due credentials wait
/// for the next round (one call may still take its KMS call budget).
const CREDENTIAL_ROUND_BUDGET: Duration = Duration::from_secs(5);

pub fn register() {
    launcher::register();
}

/// One transaction as the vault owner. A PostgreSQL error inside it (a
/// timeout, a read-only database, a value out of range in one row) is
/// caught and returned, and the transaction is rolled back: the worker
/// survives it and goes on with its other work. A typed error rolls back
/// too, so a step never commits half of what it meant to write.
fn txn<R>(f: impl FnOnce(&Identity) -> VaultResult<R>) -> VaultResult<R> {
    txn_raw(|| identity::as_owner(f))
}

fn txn_raw<R>(f: impl FnOnce() -> VaultResult<R>) -> VaultResult<R> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let r = PgTryBuilder::new(AssertUnwindSafe(|| {
        let r = f();
        if r.is_ok() {
            // Inside the try block: COMMIT can fail too (a serialization
            // failure, a deferred constraint).
            unsafe {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
        }
        r
    }))
    .catch_others(|e| Err(caught(e)))
    .execute();
    if r.is_err() {
        // SAFETY: the error state was flushed when the error was caught;
        // this releases locks, snapshots, SPI and the role switch.
        unsafe { pg_sys::AbortCurrentTransaction() };
    }
    r
}

/// Runs one item or step with every PostgreSQL error and Rust panic caught,
/// also those raised between transactions (a KMS client, the cache code):
/// the worker reports it and goes on, it does not exit.
fn guarded<R>(f: impl FnOnce() -> VaultResult<R>) -> VaultResult<R> {
    PgTryBuilder::new(AssertUnwindSafe(f))
        .catch_others(|e| {
            // SAFETY: the error state was flushed when it was caught; a
            // transaction left open by the failed code is rolled back.
            if unsafe { pg_sys::IsTransactionState() } {
                unsafe { pg_sys::AbortCurrentTransaction() };
            }
            Err(caught(e))
        })
        .execute()
}

fn caught(e: pg_sys::panic::CaughtError) -> VaultError {
    use pg_sys::panic::CaughtError;
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
            VaultError::Postgres { code: r.sql_error_code(), message: r.message().to_string() }
        }
    }
}

fn record_error(slot: &Slot, context: &str, e: VaultError) {
    let msg = format!("{context}: {}", e.message().escape_debug());
    pgrx::log!("secret_vault worker: {msg}");
    slot.set_last_error(&msg);
    slot.errors.fetch_add(1, Relaxed);
}

/// What this database's worker does about rotation (and minting and
/// re-wrapping), decided in one place for the worker and `vault.stats()`.
pub enum Rotation {
    /// In recovery: nothing is written.
    Standby,
    /// `secret_vault.rotation` is off (as on a logical subscriber).
    Off,
    /// Rotation is on, but this database has an enabled subscription (named)
    /// replicating the vault tables: a rotation here would fork versions.
    Subscribed(String),
    On,
}

impl Rotation {
    /// `subscription` finds an enabled subscription replicating the vault
    /// tables; it is asked only on a writable server with rotation on.
    pub fn current(subscription: impl FnOnce() -> VaultResult<Option<String>>) -> VaultResult<Rotation> {
        if unsafe { pg_sys::RecoveryInProgress() } {
            return Ok(Rotation::Standby);
        }
        if !guc::ROTATION.get() {
            return Ok(Rotation::Off);
        }
        Ok(subscription()?.map_or(Rotation::On, Rotation::Subscribed))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Rotation::Standby => "standby",
            Rotation::Off => "off",
            Rotation::Subscribed(_) => "subscribed",
            Rotation::On => "on",
        }
    }
}

struct Worker {
    slot: &'static Slot,
    database: u32,
    extension: Option<u32>,
    last_sync: Option<Instant>,
    secrets_fingerprint: Option<(i64, i64, i64)>,
    last_prune: Option<Instant>,
    /// Every item that failed and when to try it next (µs). Unbounded, so
    /// that however many items fail, all of them are kept out of the due
    /// batches until their time; shared memory shows the newest of them.
    backoff: HashMap<(ItemKind, [u8; 16]), (u32, i64)>,
    last_kms_check: Option<Instant>,
    /// Re-wrap pacing: rows this worker may move now (a token bucket filled
    /// at secret_vault.rewrap_rate per second, holding at most one second).
    rewrap_allowance: f64,
    rewrap_filled_at: Option<Instant>,
    last_audit_prune: Option<Instant>,
    /// Whether vault.change_seq was moved past every stored value since this
    /// worker last became the writer (see `catch_up_change_seq`).
    change_seq_caught_up: bool,
    /// Whether the last round held off rotating for a subscription (the
    /// WARNING is said once per episode).
    held_off_for_subscription: bool,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn secret_vault_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    crate::kms::mark_worker();
    let database = arg.value() as u32;
    let Some(slot) = registry::find(database) else {
        pgrx::log!("secret_vault worker: no registry slot for database {database}");
        return;
    };
    // Clear the slot's pid however this process ends (an ERROR too), so
    // nobody ever signals a pid the OS may have handed to another process.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(slot as *const Slot as usize)) };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    let pid = unsafe { pg_sys::MyProcPid };
    slot.pid.store(pid, Relaxed);
    slot.started_at.store(catalog::now_micros(), Relaxed);
    slot.set_state(State::Running);

    let mut w = Worker {
        slot,
        database,
        extension: None,
        last_sync: None,
        secrets_fingerprint: None,
        last_prune: None,
        backoff: slot.failures().into_iter().map(|f| ((f.kind, f.id), (f.failures, f.next_attempt))).collect(),
        last_kms_check: None,
        rewrap_allowance: 0.0,
        rewrap_filled_at: None,
        last_audit_prune: None,
        change_seq_caught_up: false,
        held_off_for_subscription: false,
    };
    // A row lock held by a session (an open transaction that rotated or
    // updated the item) must not stall every other item: waits end after
    // this, as an error of that one item, retried with backoff.
    // (statement_timeout is not armed in background workers.)
    // And in a deadlock with a session (DROP EXTENSION takes the vault
    // tables one by one while the worker reads two of them), the worker
    // looks first and so is the one that gives way: its item is retried,
    // the session's command goes through.
    for (name, value) in [(c"lock_timeout", c"2s"), (c"deadlock_timeout", c"100ms")] {
        unsafe {
            pg_sys::SetConfigOption(name.as_ptr(), value.as_ptr(), pg_sys::GucContext::PGC_SUSET, pg_sys::GucSource::PGC_S_OVERRIDE);
        }
    }
    loop {
        if let Some(exit) = w.tick() {
            if exit == State::NotInstalled {
                // Databases without the extension hold no slot.
                slot.pid.store(0, Relaxed);
                registry::release(slot);
                return;
            }
            slot.set_state(exit);
            break;
        }
        let interval = Duration::from_millis(guc::WORKER_INTERVAL_MS.get().max(10) as u64);
        // A shutdown seen during a KMS wait is remembered there (pgrx's flag
        // is cleared when read).
        if crate::kms::shutdown_requested() || !BackgroundWorker::wait_latch(Some(interval)) {
            // Stopping: what the queue holds would be lost with shared
            // memory. (Sessions are being stopped too; records they settle
            // after this are written by the next start only if the server
            // keeps running, see docs/access.md.)
            if !unsafe { pg_sys::RecoveryInProgress() } {
                let _ = guarded(|| w.write_audit());
            }
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, arg: pg_sys::Datum) {
    // SAFETY: the datum is the address of this worker's registry slot, in
    // shared memory that outlives the process.
    let slot = unsafe { &*(arg.value() as *const Slot) };
    if slot.pid.load(Relaxed) == unsafe { pg_sys::MyProcPid } {
        if matches!(slot.state(), State::Running | State::Starting) {
            slot.set_state(State::Idle);
        }
        slot.pid.store(0, Relaxed);
    }
}

impl Worker {
    /// One round of work; `Some(state)` when this worker should exit.
    /// Every item (a group, a secret, a key) is worked on in its own
    /// transactions; one that fails is recorded with its error and retried
    /// after a backoff, and never keeps the others from their turn.
    fn tick(&mut self) -> Option<State> {
        // Resolve the extension here (read-only: a standby allows nothing else).
        let ident = match txn_raw(identity::current) {
            Ok(i) => i,
            Err(VaultError::NotInstalled) => {
                self.forget_incarnation(None);
                return Some(State::NotInstalled);
            }
            Err(VaultError::SchemaVersion { .. }) => return Some(State::Outdated),
            Err(e) => {
                record_error(self.slot, "extension lookup", e);
                return None;
            }
        };
        self.forget_incarnation(Some(ident.extension));
        let writable = !unsafe { pg_sys::RecoveryInProgress() };
        // A subscriber left with rotation on must not rotate: its versions
        // would fork from the publisher's and stop the subscription.
        let lookup = || txn(|_| Spi::connect(|c| catalog::vault_subscription(&c)));
        let rotating = match Rotation::current(lookup) {
            Ok(Rotation::On) => {
                self.held_off_for_subscription = false;
                true
            }
            Ok(Rotation::Subscribed(name)) => {
                if !self.held_off_for_subscription {
                    pgrx::warning!(
                        "secret_vault worker: not rotating: this database subscribes to the vault tables (subscription \"{}\"); set secret_vault.rotation = off here",
                        name.escape_debug()
                    );
                }
                self.held_off_for_subscription = true;
                false
            }
            Ok(Rotation::Off | Rotation::Standby) => {
                self.held_off_for_subscription = false;
                false
            }
            // Unknown (the lookup failed): hold off this round, fail closed.
            Err(e) => {
                record_error(self.slot, "subscription check", e);
                false
            }
        };
        if !rotating {
            self.change_seq_caught_up = false;
        }
        if rotating && !self.change_seq_caught_up {
            self.step("change sequence catch-up", |w| w.catch_up_change_seq());
        }
        // Nothing is written with a change number that may be handed out
        // twice: until the catch-up succeeds, this node does not rotate.
        if rotating && self.change_seq_caught_up {
            self.step("re-binding keys written by 0.1.0", |w| w.rebind_legacy());
            self.step("scheduled group rotation", |w| w.rotate_due());
            self.step("scheduled secret rotation", |w| w.rotate_due_secrets(&ident));
            self.step("secret version pruning", |w| w.prune_secrets());
            self.step("KMS material check", |w| w.check_kms_keys());
            self.step("ring key re-wrap", |w| w.rewrap_rows());
            self.step("credential refresh", |w| w.refresh_credentials(&ident));
        }
        if writable {
            // Whatever the rotation setting: a subscriber keeps its own log.
            self.step("audit log", |w| w.write_audit());
            self.log_orphaned_audit();
            let retention = guc::AUDIT_RETENTION_S.get() as i64;
            if retention > 0 && self.last_audit_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                self.last_audit_prune = Some(Instant::now());
                self.step("audit log retention", |_| {
                    use audit::writer::{self, Source};
                    let Source::Chain(src) = txn(|_| Spi::connect(|c| writer::source(c)))? else { return Ok(()) };
                    let key = writer::open(&src)?;
                    txn(|_| writer::prune(&key, retention)).map(|_| ())
                });
            }
        }
        let sync_every = Duration::from_millis(guc::SYNC_INTERVAL_MS.get().max(10) as u64);
        if self.last_sync.is_none_or(|t| t.elapsed() >= sync_every) {
            self.step("cache sync", |w| w.sync(&ident));
            self.last_sync = Some(Instant::now());
        }
        // The worker never resets a name map, where backends drop their
        // cached key schedule: drop it once per round instead.
        secret_vault_core::aead::forget_cached_schedule();
        self.slot.runs.fetch_add(1, Relaxed);
        self.slot.last_run.store(catalog::now_micros(), Relaxed);
        None
    }

    /// Runs one step of a round; its own failure (listing what is due, say)
    /// is recorded and the round goes on with the next step.
    fn step(&mut self, context: &str, f: impl FnOnce(&mut Self) -> VaultResult<()>) {
        // Stopping: the rest of the round would only start KMS calls that
        // end at once.
        if crate::kms::shutdown_requested() {
            return;
        }
        if let Err(e) = guarded(|| f(self)) {
            record_error(self.slot, context, e);
        }
    }

    /// Items of `kind` that failed and are still waiting for their next attempt.
    fn backing_off(&self, kind: ItemKind) -> Vec<[u8; 16]> {
        let now = catalog::now_micros();
        self.backoff.iter().filter(|((k, _), (_, next))| *k == kind && *next > now).map(|((_, id), _)| *id).collect()
    }

    /// Forgets failures of `kind` whose backoff is over but that a complete
    /// listing of due items no longer holds: dropped, or repaired and
    /// rescheduled by hand. Nothing is failing there any more.
    fn forget_settled(&mut self, kind: ItemKind, listed: &[[u8; 16]]) {
        let now = catalog::now_micros();
        let settled: Vec<[u8; 16]> = self
            .backoff
            .iter()
            .filter(|((k, id), (_, next))| *k == kind && *next <= now && !listed.contains(id))
            .map(|((_, id), _)| *id)
            .collect();
        for id in settled {
            self.backoff.remove(&(kind, id));
            self.slot.item_ok(kind, &id);
        }
    }

    /// The outcome of one item: success clears its record, failure records
    /// the error and schedules the next attempt with exponential backoff.
    fn outcome(&mut self, kind: ItemKind, id: &[u8; 16], name: &str, r: VaultResult<()>) {
        // Names come from table rows, which a superuser, a restore or
        // replication may have written without validation: escaped, a
        // newline in one cannot forge log lines.
        let name = name.escape_debug().to_string();
        match r {
            Ok(()) => {
                if self.backoff.remove(&(kind, *id)).is_some() {
                    self.slot.item_ok(kind, id);
                }
            }
            Err(e) => {
                let msg = e.message().escape_debug().to_string();
                let base = guc::WORKER_INTERVAL_MS.get().max(10) as i64 * 1000;
                let failures = self.backoff.get(&(kind, *id)).map_or(0, |f| f.0).saturating_add(1);
                let delay = base.saturating_mul(1i64 << (failures - 1).min(20)).min(MAX_BACKOFF.as_micros() as i64);
                let next = catalog::now_micros() + delay;
                self.backoff.insert((kind, *id), (failures, next));
                self.slot.item_failed(kind, id, &msg, failures, next);
                let wait = delay / 1000;
                pgrx::log!("secret_vault worker: {} of \"{name}\" failed, next attempt in {wait} ms: {msg}", kind.label());
                self.slot.set_last_error(&format!("{} of \"{name}\": {msg}", kind.label()));
                self.slot.errors.fetch_add(1, Relaxed);
            }
        }
    }

    /// Wipes the cache slots of an incarnation of the extension that is no
    /// longer the one installed here (dropped, or dropped and re-created:
    /// on a standby nothing else notices).
    fn forget_incarnation(&mut self, now: Option<u32>) {
        if let Some(old) = self.extension.filter(|old| Some(*old) != now) {
            shmem::with_exclusive(|c| c.purge(self.database, Some(old)));
            self.secrets_fingerprint = None;
        }
        self.extension = now;
    }

    /// Re-binds ring keys wrapped by 0.1.0 (bound to group and version only)
    /// to their group's purpose and key size, a batch per round, so that an
    /// edited `purpose` makes upgraded keys unusable too. Unwrap and wrap
    /// happen between transactions; the update is a compare-and-set.
    fn rebind_legacy(&mut self) -> VaultResult<()> {
        let skip = self.backing_off(ItemKind::KeyRebind);
        let rows = txn(|_| Spi::connect(|c| catalog::legacy_bound_keys(c, DUE_BATCH, &skip)))?;
        let mut failed: Vec<GroupId> = Vec::new();
        for (group, row) in rows {
            if failed.contains(&group.id) {
                continue;
            }
            let r = guarded(|| {
                let key = kms::unwrap(&group, &row)?;
                let (key_id, wrapped) = kms::rebind_ring_key(&group, row.version, &key)?;
                txn(|_| Spi::connect_mut(|c| catalog::rebind_key(c, &group.id, row.version, &row.wrapped, &group.kms_key, &key_id, &wrapped))).map(|_| ())
            });
            if r.is_err() {
                failed.push(group.id);
            }
            self.outcome(ItemKind::KeyRebind, &group.id, &group.name, r);
        }
        Ok(())
    }

    /// Rotates each due group once for its due time. The new key is made and
    /// wrapped between two transactions; the claim in the second one fails if
    /// a manual rotation or another worker got there first.
    fn rotate_due(&mut self) -> VaultResult<()> {
        let skip = self.backing_off(ItemKind::GroupRotation);
        let due = txn(|_| Spi::connect(|c| catalog::due_groups(c, catalog::clock(), DUE_BATCH, &skip)))?;
        if (due.len() as i64) < DUE_BATCH {
            let listed: Vec<[u8; 16]> = due.iter().map(|(g, _)| g.id).collect();
            self.forget_settled(ItemKind::GroupRotation, &listed);
        }
        for (group, due_at) in due {
            let r = guarded(|| Self::rotate_group(&group, due_at));
            self.outcome(ItemKind::GroupRotation, &group.id, &group.name, r);
        }
        Ok(())
    }

    fn rotate_group(group: &catalog::GroupRow, due_at: pgrx::datum::TimestampWithTimeZone) -> VaultResult<()> {
        {
            let next = group.last_version.checked_add(1).ok_or_else(|| VaultError::VersionOverflow(group.name.clone()))?;
            let (key_id, wrapped) = kms::next_ring_key(group, next)?;
            let rotated = txn(|ident| {
                Spi::connect_mut(|c| -> VaultResult<bool> {
                    let now = catalog::clock();
                    if !catalog::claim_version(c, &group.id, next, now, Some(due_at))? {
                        return Ok(false);
                    }
                    catalog::insert_key(c, &group.id, next, &group.kms_key, &key_id, &wrapped, now, false)?;
                    coherence::note_change(&group.name, Some(ident.cache_key(group.id)), true);
                    Ok(true)
                })
            })?;
            if rotated {
                pgrx::log!("secret_vault worker: rotated key group \"{}\" to version {next}", group.name.escape_debug());
            }
        }
        Ok(())
    }

    /// Rotates each due rotating secret once for its due time. The value is
    /// generated and sealed between transactions with a ring key from the
    /// cache (warmed first on a miss), so no KMS call happens inside one.
    fn rotate_due_secrets(&mut self, ident: &Identity) -> VaultResult<()> {
        let skip = self.backing_off(ItemKind::SecretRotation);
        let due = txn(|_| Spi::connect(|c| secret_store::due(c, catalog::clock(), DUE_BATCH, &skip)))?;
        if (due.len() as i64) < DUE_BATCH {
            let listed: Vec<[u8; 16]> = due.iter().map(|(s, _)| s.id).collect();
            self.forget_settled(ItemKind::SecretRotation, &listed);
        }
        for (s, due_at) in due {
            let r = guarded(|| self.rotate_secret(ident, &s, due_at));
            self.outcome(ItemKind::SecretRotation, &s.id, &s.name, r);
        }
        Ok(())
    }

    fn rotate_secret(&self, ident: &Identity, s: &secret_store::SecretRow, due_at: pgrx::datum::TimestampWithTimeZone) -> VaultResult<()> {
        {
            let spec = s.generator.as_deref().ok_or_else(|| VaultError::ManualSecret(s.name.clone()))?;
            let value = Generator::parse(spec)?.generate();
            let next = s.current_version.checked_add(1).ok_or_else(|| VaultError::VersionOverflow(s.name.clone()))?;
            let mut keybuf = KeyBuf::new();
            let slot_key = ident.cache_key(s.group_id);
            let key = match keyring::cached_current(&slot_key, &mut keybuf) {
                Some(k) => k,
                None => {
                    self.warm(ident, &s.group_id)?;
                    keyring::cached_current(&slot_key, &mut keybuf)
                        .ok_or_else(|| VaultError::NoCurrentVersion(s.group.clone()))?
                }
            };
            let ct = secrets::seal_with(&keybuf, key, &s.id, next, value.as_bytes())?;
            let rotated = txn(|_| {
                Spi::connect_mut(|c| -> VaultResult<bool> {
                    let now = catalog::clock();
                    if !secret_store::claim_next(c, &s.name, next, &ct, now, Some(due_at))? {
                        return Ok(false);
                    }
                    coherence::note_change(&secrets::dirty_key(&s.name), None, true);
                    Ok(true)
                })
            })?;
            if rotated {
                pgrx::log!("secret_vault worker: rotated secret \"{}\" to version {next}", s.name.escape_debug());
            }
        }
        Ok(())
    }

    /// Drops this database's cache slots that the tables no longer agree
    /// with (changes replayed on a standby, applied by a subscriber,
    /// restored, or made by hand), then loads groups into free slots.
    fn sync(&mut self, ident: &Identity) -> VaultResult<()> {
        let (seqs, fingerprint) =
            txn(|_| Spi::connect(|c| Ok::<_, VaultError>((catalog::group_sequences(c)?, secret_store::fingerprint(c)?))))?;
        // Secrets and names are cached per backend against the epoch: a
        // change the worker did not see committed here bumps it.
        // The first sync of a worker cannot know what changed while no
        // worker ran (a crash, a stop, a standby catching up): it assumes
        // everything did.
        if self.secrets_fingerprint != Some(fingerprint) {
            shmem::with_exclusive(|c| c.touch());
        }
        self.secrets_fingerprint = Some(fingerprint);
        let table: HashMap<GroupId, i64> = seqs.iter().copied().collect();
        let cached = shmem::with_shared(|c| c.cached_groups()).unwrap_or_default();
        let mut present: Vec<GroupId> = Vec::new();
        let mut used = 0usize;
        for (key, seq) in cached {
            used += 1;
            if key.database != self.database {
                continue;
            }
            if key.extension == ident.extension && table.get(&key.group) == Some(&seq) {
                // Filled by a backend's miss with only the version it needed:
                // the worker adds the current and pending keys.
                let now = catalog::now_micros();
                if !shmem::with_shared(|c| c.lacks_current_or_pending(&key, now)).unwrap_or(false) {
                    present.push(key.group);
                }
            } else {
                shmem::with_exclusive(|c| c.invalidate(&key));
                used -= 1;
            }
        }
        let slots = shmem::with_shared(|c| c.slots()).unwrap_or(0);
        let mut free = slots.saturating_sub(used);
        let skip = self.backing_off(ItemKind::CacheWarm);
        for (id, _) in &seqs {
            if free == 0 {
                break;
            }
            if present.contains(id) || skip.contains(id) {
                continue;
            }
            let r = guarded(|| self.warm(ident, id));
            self.outcome(ItemKind::CacheWarm, id, &pgrx::Uuid::from_bytes(*id).to_string(), r);
            free -= 1;
        }
        Ok(())
    }

    /// When this node becomes the writer (a start, a promotion, rotation
    /// turned on on a former subscriber): logical replication carries rows
    /// but not sequences, so a promoted subscriber's vault.change_seq may
    /// lag the values its replicated rows hold. Caches treat an equal
    /// change_seq as "unchanged", so a number handed out twice could keep a
    /// stale copy alive; move the sequence past every stored value first.
    fn catch_up_change_seq(&mut self) -> VaultResult<()> {
        if let Some(to) = txn(|_| Spi::connect_mut(catalog::catch_up_change_seq))? {
            pgrx::log!("secret_vault worker: vault.change_seq moved to {to}, past values replicated or restored into this database");
        }
        self.change_seq_caught_up = true;
        Ok(())
    }

    /// Asks each KMS key in use for its current material (every
    /// secret_vault.rewrap_check_interval) and records it: rows on other
    /// material are then re-wrapped by `rewrap_rows`.
    fn check_kms_keys(&mut self) -> VaultResult<()> {
        let every = Duration::from_millis(guc::REWRAP_CHECK_INTERVAL_MS.get().max(100) as u64);
        if self.last_kms_check.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        self.last_kms_check = Some(Instant::now());
        let keys = txn(|_| Spi::connect(|c| rewrap::keys_in_use(c, None)))?;
        for k in keys {
            // The live call between transactions.
            let (found, error) = match guarded(|| kms::current_key_id(&k.spec())) {
                Ok(id) => (Ok(id), None),
                Err(e) => (Err(()), Some(e.message())),
            };
            txn(|_| {
                Spi::connect_mut(|c| {
                    if let Ok(id) = &found {
                        rewrap::record_key_id(c, &k.name, id)?;
                    }
                    rewrap::note(c, &k.name, 0, found.is_ok(), error.as_deref())
                })
            })?;
        }
        Ok(())
    }

    /// Moves ring key rows to their group's KMS key's current material, at
    /// most secret_vault.rewrap_rate per second: each row's KMS call between
    /// transactions, its update a compare-and-set. A group whose row fails
    /// backs off like any other item; reads and rotations go on throughout
    /// (a re-wrapped row holds the same key, so no cache is invalidated).
    fn rewrap_rows(&mut self) -> VaultResult<()> {
        let rate = guc::REWRAP_RATE.get().max(0) as f64;
        let now = Instant::now();
        if rate == 0.0 {
            // Paused: nothing banked carries over.
            self.rewrap_allowance = 0.0;
            self.rewrap_filled_at = Some(now);
            return Ok(());
        }
        let elapsed = self.rewrap_filled_at.map_or(1.0, |t| now.duration_since(t).as_secs_f64());
        self.rewrap_filled_at = Some(now);
        self.rewrap_allowance = (self.rewrap_allowance + rate * elapsed).min(rate.max(1.0));
        let budget = self.rewrap_allowance.floor() as i64;
        if budget < 1 {
            return Ok(());
        }
        let skip = self.backing_off(ItemKind::Rewrap);
        let cands = txn(|_| Spi::connect(|c| rewrap::candidates(c, budget, &skip)))?;
        let mut failed: Vec<GroupId> = Vec::new();
        let mut moved: HashMap<String, i64> = HashMap::new();
        for cand in cands {
            if failed.contains(&cand.group.id) || crate::kms::shutdown_requested() {
                continue;
            }
            self.rewrap_allowance -= 1.0;
            let r = guarded(|| {
                let (key_id, wrapped) = rewrap::rewrap_row(&cand)?;
                let stored = txn(|_| {
                    Spi::connect_mut(|c| {
                        let stored = rewrap::store(c, &cand, &key_id, &wrapped)?;
                        // The KMS answered with its current material: if the
                        // recorded one is older (an alias moved since the
                        // last check), record it, so rows are not moved twice.
                        if stored && cand.to_key_id.as_deref() != Some(key_id.as_str()) && cand.row.kms.name == cand.to.name {
                            rewrap::record_key_id(c, &cand.to.name, &key_id)?;
                        }
                        Ok::<_, VaultError>(stored)
                    })
                })?;
                if stored {
                    *moved.entry(cand.to.name.clone()).or_default() += 1;
                }
                Ok(())
            });
            // The error is recorded twice: per group (backoff, worker_failures)
            // and per KMS key (vault.rewrap_status).
            // An unreachable, throttling or hung KMS ends this round's pass:
            // trying every other row would hold the worker's other work for
            // a retry budget each.
            let stop = matches!(
                &r,
                Err(VaultError::KmsCall { error: KmsError::Unavailable(_) | KmsError::Throttled(_) | KmsError::Interrupted, .. })
            );
            let r = r.map_err(|e| {
                failed.push(cand.group.id);
                let msg = e.message();
                let name = cand.to.name.clone();
                let _ = guarded(|| txn(|_| Spi::connect_mut(|c| rewrap::note(c, &name, 0, false, Some(&msg)))));
                VaultError::Internal(msg)
            });
            self.outcome(ItemKind::Rewrap, &cand.group.id, &cand.group.name, r);
            if stop {
                break;
            }
        }
        for (name, n) in moved {
            txn(|_| Spi::connect_mut(|c| rewrap::note(c, &name, n, false, None)))?;
        }
        Ok(())
    }

    /// Deletes superseded secret values whose grace window has ended (beyond
    /// the newest `secret_vault.secret_versions_kept`), a batch at a time,
    /// once a minute.
    fn prune_secrets(&mut self) -> VaultResult<()> {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return Ok(());
        }
        self.last_prune = Some(Instant::now());
        let kept = guc::SECRET_VERSIONS_KEPT.get();
        for _ in 0..16 {
            let n = txn(|_| Spi::connect_mut(|c| secret_store::prune(c, catalog::clock(), kept, 1000)))?;
            if n < 1000 {
                break;
            }
        }
        Ok(())
    }

    /// Records queued for a database that no worker serves any more (the
    /// database or its extension was dropped with records in the queue)
    /// would hold their entries until a restart: they go to the server log.
    fn log_orphaned_audit(&mut self) {
        let before = catalog::now_micros() - 30_000_000;
        for db in audit::queue::waiting_elsewhere(self.database, before) {
            if registry::find(db).is_some_and(|s| s.pid.load(Relaxed) > 0) {
                continue;
            }
            let (_, taken) = audit::queue::take(db, usize::MAX);
            for t in &taken {
                audit::log_record(&t.fields);
            }
            audit::queue::release(&taken.iter().map(|t| t.index).collect::<Vec<_>>());
        }
    }

    /// Writes this database's queued audit records to the chain, a batch
    /// per transaction. The chain key is opened (a KMS call, made once)
    /// between transactions, never inside one.
    fn write_audit(&mut self) -> VaultResult<()> {
        use audit::writer::{self, Source};
        // Entries a failed round left taken are ours to retry.
        audit::queue::untake(self.database);
        for _ in 0..20 {
            let (generation, taken) = audit::queue::take(self.database, writer::BATCH);
            let indexes: Vec<usize> = taken.iter().map(|t| t.index).collect();
            let r = (|| {
                let (src, staged) = txn(|_| Spi::connect(|c| Ok((writer::source(c)?, writer::staged(c)?))))?;
                if taken.is_empty() && !staged {
                    return Ok(false);
                }
                let src = match src {
                    Source::Chain(s) => s,
                    Source::None(kms_key) => {
                        let (key_id, wrapped) = writer::new_key(&kms_key)?;
                        txn(|_| Spi::connect_mut(|c| writer::start(c, &kms_key.name, &key_id, &wrapped)))?;
                        match txn(|_| Spi::connect(|c| writer::source(c)))? {
                            Source::Chain(s) => s,
                            Source::None(_) => return Err(VaultError::Internal("the audit chain was not started".into())),
                        }
                    }
                };
                let key = writer::open(&src)?;
                let n = txn(|_| writer::append(&key, self.database, generation, &taken))?;
                Ok(n >= writer::BATCH || taken.len() >= writer::BATCH)
            })();
            match r {
                Ok(more) => {
                    audit::queue::release(&indexes);
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    audit::queue::untake(self.database);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Mints each credential whose refresh time has come: what it signs
    /// with is read in one transaction, the mint (signing, HTTP) happens
    /// between transactions, and the sealed token is stored in another with
    /// a compare-and-set on the generation read. A failure is recorded on
    /// the credential with its next attempt (backoff); the previous token
    /// stays and is served until it expires. A hung upstream holds this
    /// loop for at most the KMS call budget per credential.
    fn refresh_credentials(&mut self, ident: &Identity) -> VaultResult<()> {
        use credentials::{mint, store};
        let due = txn(|_| Spi::connect(|c| store::due(c, catalog::clock(), DUE_BATCH)))?;
        let started = Instant::now();
        for d in due {
            // Unreachable upstreams must not hold the audit log, the cache
            // sync and rotations: the rest waits for the next round.
            if crate::kms::shutdown_requested() || started.elapsed() >= CREDENTIAL_ROUND_BUDGET {
                break;
            }
            let Err(e) = guarded(|| self.refresh_credential(ident, &d)) else { continue };
            let msg = e.message().escape_debug().to_string();
            let failures = d.failures.saturating_add(1);
            let next = std::time::SystemTime::now() + secret_vault_core::credentials::retry_delay(failures as u32);
            let _ = guarded(|| {
                txn(|_| Spi::connect_mut(|c| store::store_failure(c, &d.id, d.generation, failures, &msg, catalog::clock(), mint::tstz(next))))
            });
            let name = d.name.escape_debug();
            pgrx::log!("secret_vault worker: minting credential \"{name}\" failed ({failures} in a row): {msg}");
            self.slot.set_last_error(&format!("credential refresh of \"{name}\": {msg}"));
            self.slot.errors.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    fn refresh_credential(&self, ident: &Identity, d: &credentials::store::Due) -> VaultResult<()> {
        use credentials::{mint, store};
        use secret_vault_core::credentials::{next_refresh, Config, Provider};
        use secret_vault_core::MintError;
        let provider = Provider::parse(&d.provider)
            .ok_or_else(|| VaultError::Mint(MintError::Config("the stored provider is not one this version knows".into())))?;
        let config = Config::parse(provider, &d.config).map_err(VaultError::Mint)?;
        let material = txn(|_| Spi::connect(|c| mint::read_material(c, &config)))?;
        let minted = mint::mint(ident, &config, &material)?;
        drop(material);
        let minted_at = std::time::SystemTime::now();
        let mut keybuf = KeyBuf::new();
        let slot_key = ident.cache_key(d.group_id);
        let key = match keyring::cached_current(&slot_key, &mut keybuf) {
            Some(k) => k,
            None => {
                self.warm(ident, &d.group_id)?;
                keyring::cached_current(&slot_key, &mut keybuf).ok_or(VaultError::GroupNotFound)?
            }
        };
        let generation = d.generation.checked_add(1).ok_or_else(|| VaultError::VersionOverflow(d.name.clone()))?;
        let ct = mint::seal(&keybuf, key, &d.id, &d.name, generation as u64, &minted)?;
        let next = next_refresh(minted_at, minted.expires_at, mint::from_micros(d.refresh_before_us));
        let stored = txn(|_| {
            Spi::connect_mut(|c| {
                store::store_minted(c, &d.id, d.generation, &ct, mint::tstz(minted_at), mint::tstz(minted.expires_at), mint::tstz(next))
            })
        })?;
        if stored {
            let life = minted.expires_at.duration_since(minted_at).unwrap_or_default().as_secs();
            pgrx::log!("secret_vault worker: minted credential \"{}\", valid for {life} s", d.name.escape_debug());
        }
        Ok(())
    }

    fn warm(&self, ident: &Identity, id: &GroupId) -> VaultResult<()> {
        let Some(epoch) = shmem::epoch() else { return Ok(()) };
        let Some(window) = txn(|_| Spi::connect(|c| keyring::read_window_by_id(c, id)))? else {
            // Dropped since we listed it.
            return Ok(());
        };
        // The current key and any pending one: older versions are unwrapped
        // when first asked for, so a cold start costs one KMS call per group.
        let keys = keyring::unwrap_versions(&window, &keyring::versions_to_warm(&window, catalog::now_micros()))?;
        keyring::store(ident, epoch, &window, &keys);
        Ok(())
    }
}
