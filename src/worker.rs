//! The background worker: one per server, connected to
//! `secret_vault.database`. Each wake-up it rotates due groups (only where
//! the server accepts writes and `secret_vault.rotation` is on), reconciles
//! the cache with the tables every `secret_vault.sync_interval`, and fills
//! free cache slots. KMS calls happen between transactions, never inside one.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;

use secret_vault_core::cache::KeyBuf;
use secret_vault_core::secret::Generator;

use crate::catalog;
use crate::error::{VaultError, VaultResult};
use crate::{coherence, guc, keyring, kms, secret_store, secrets, shmem};

const DUE_BATCH: i64 = 32;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub fn register() {
    BackgroundWorkerBuilder::new("secret_vault worker")
        .set_type("secret_vault worker")
        .set_library("secret_vault")
        .set_function("secret_vault_worker_main")
        .enable_spi_access()
        // ConsistentState: a hot standby runs it too (to sync, never to write).
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn txn<R>(f: impl FnOnce() -> R) -> R {
    BackgroundWorker::transaction(AssertUnwindSafe(f))
}

fn record_error(context: &str, e: VaultError) {
    let msg = format!("{context}: {}", e.message());
    pgrx::log!("secret_vault worker: {msg}");
    shmem::with_exclusive(|c| c.set_last_error(&msg));
    shmem::bump(|c| {
        c.worker_errors.fetch_add(1, Ordering::Relaxed);
        c.worker_last_error_at.store(catalog::now_micros(), Ordering::Relaxed);
    });
}

struct Worker {
    last_sync: Option<Instant>,
    secrets_fingerprint: Option<(i64, i64)>,
    rotate_backoff: Duration,
    rotate_not_before: Instant,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn secret_vault_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&guc::database()), None);
    shmem::bump(|c| c.worker_pid.store(unsafe { pg_sys::MyProcPid } as i64, Ordering::Relaxed));
    pgrx::log!("secret_vault worker started on database \"{}\"", guc::database());

    let mut w = Worker { last_sync: None, secrets_fingerprint: None, rotate_backoff: Duration::ZERO, rotate_not_before: Instant::now() };
    loop {
        w.tick();
        let interval = Duration::from_millis(guc::WORKER_INTERVAL_MS.get().max(10) as u64);
        if !BackgroundWorker::wait_latch(Some(interval)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
    shmem::bump(|c| c.worker_pid.store(0, Ordering::Relaxed));
    pgrx::log!("secret_vault worker stopping");
}

impl Worker {
    fn tick(&mut self) {
        // Read-only select (Spi::get_one would assign an xid, refused on a standby).
        let installed = txn(|| {
            Spi::connect(|c| {
                c.select(
                    "SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'secret_vault'",
                    Some(1),
                    &[],
                )
                .map(|t| !t.is_empty())
            })
        });
        if !matches!(installed, Ok(true)) {
            return;
        }
        let writable = !unsafe { pg_sys::RecoveryInProgress() };
        if writable && guc::ROTATION.get() && Instant::now() >= self.rotate_not_before {
            match self.rotate_due().and_then(|_| self.rotate_due_secrets()) {
                Ok(()) => self.rotate_backoff = Duration::ZERO,
                Err(e) => {
                    // Back off on failures (a KMS outage), doubling up to a cap.
                    let base = Duration::from_millis(guc::WORKER_INTERVAL_MS.get().max(10) as u64);
                    self.rotate_backoff = (self.rotate_backoff * 2).max(base).min(MAX_BACKOFF);
                    self.rotate_not_before = Instant::now() + self.rotate_backoff;
                    record_error("scheduled rotation", e);
                }
            }
        }
        let sync_every = Duration::from_millis(guc::SYNC_INTERVAL_MS.get().max(10) as u64);
        if self.last_sync.is_none_or(|t| t.elapsed() >= sync_every) {
            if let Err(e) = self.sync() {
                record_error("cache sync", e);
            }
            self.last_sync = Some(Instant::now());
        }
        shmem::bump(|c| {
            c.worker_runs.fetch_add(1, Ordering::Relaxed);
            c.worker_last_run.store(catalog::now_micros(), Ordering::Relaxed);
        });
    }

    /// Rotates each due group once for its due time. The new key is made and
    /// wrapped between two transactions; the claim in the second one fails if
    /// a manual rotation or another worker got there first.
    fn rotate_due(&mut self) -> VaultResult<()> {
        let due = txn(|| Spi::connect(|c| catalog::due_groups(c, catalog::clock(), DUE_BATCH)))?;
        for (group, due_at) in due {
            let next = group.last_version.checked_add(1).ok_or_else(|| VaultError::VersionOverflow(group.name.clone()))?;
            let (key_id, wrapped) =
                kms::new_ring_key(&group.id, &group.kms_key, &group.kms_provider, group.key_bytes as usize, next)?;
            let rotated = txn(|| {
                Spi::connect_mut(|c| -> VaultResult<bool> {
                    let now = catalog::clock();
                    if !catalog::claim_version(c, &group.id, next, now, Some(due_at))? {
                        return Ok(false);
                    }
                    catalog::insert_key(c, &group.id, next, &key_id, &wrapped, now, false)?;
                    coherence::note_change(&group.name, true);
                    Ok(true)
                })
            })?;
            if rotated {
                pgrx::log!("secret_vault worker: rotated key group \"{}\" to version {next}", group.name);
            }
        }
        Ok(())
    }

    /// Rotates each due rotating secret once for its due time. The value is
    /// generated and sealed between transactions with a ring key from the
    /// cache (warmed first on a miss), so no KMS call happens inside one.
    fn rotate_due_secrets(&mut self) -> VaultResult<()> {
        let due = txn(|| Spi::connect(|c| secret_store::due(c, catalog::clock(), DUE_BATCH)))?;
        for (s, due_at) in due {
            let spec = s.generator.as_deref().ok_or_else(|| VaultError::ManualSecret(s.name.clone()))?;
            let value = Generator::parse(spec)?.generate();
            let next = s.current_version.checked_add(1).ok_or_else(|| VaultError::VersionOverflow(s.name.clone()))?;
            let mut keybuf = KeyBuf::new();
            let key = match keyring::cached_current(&s.group, &mut keybuf) {
                Some(k) => k,
                None => {
                    self.warm(&s.group)?;
                    keyring::cached_current(&s.group, &mut keybuf)
                        .ok_or_else(|| VaultError::NoCurrentVersion(s.group.clone()))?
                }
            };
            let ct = secrets::seal_with(&keybuf, key, &s.id, next, value.as_bytes())?;
            let rotated = txn(|| {
                Spi::connect_mut(|c| -> VaultResult<bool> {
                    let now = catalog::clock();
                    if !secret_store::claim_next(c, &s.name, next, &ct, now, Some(due_at))? {
                        return Ok(false);
                    }
                    coherence::note_change(&secrets::dirty_key(&s.name), true);
                    Ok(true)
                })
            })?;
            if rotated {
                pgrx::log!("secret_vault worker: rotated secret \"{}\" to version {next}", s.name);
            }
        }
        Ok(())
    }

    /// Drops cache slots the tables no longer agree with (changes replayed on
    /// a standby, applied by a subscriber, restored, or made by hand), then
    /// loads groups into free slots.
    fn sync(&mut self) -> VaultResult<()> {
        let (seqs, fingerprint) =
            txn(|| Spi::connect(|c| Ok::<_, VaultError>((catalog::group_sequences(c)?, secret_store::fingerprint(c)?))))?;
        // Secrets are cached per backend against the epoch: a change the
        // worker did not see committed here (replay, apply, restore) bumps it.
        if self.secrets_fingerprint.is_some_and(|f| f != fingerprint) {
            shmem::with_exclusive(|c| c.touch());
        }
        self.secrets_fingerprint = Some(fingerprint);
        let table: HashMap<&str, i64> = seqs.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let cached = shmem::with_shared(|c| c.cached_groups()).unwrap_or_default();
        let mut present: Vec<String> = Vec::with_capacity(cached.len());
        for (name, seq) in cached {
            if table.get(name.as_str()) == Some(&seq) {
                present.push(name);
            } else {
                shmem::with_exclusive(|c| c.invalidate(&name));
            }
        }
        let slots = shmem::with_shared(|c| c.slots()).unwrap_or(0);
        let mut free = slots.saturating_sub(present.len());
        for (name, _) in &seqs {
            if free == 0 {
                break;
            }
            if present.iter().any(|p| p == name) {
                continue;
            }
            self.warm(name)?;
            free -= 1;
        }
        Ok(())
    }

    fn warm(&self, name: &str) -> VaultResult<()> {
        let Some(epoch) = shmem::epoch() else { return Ok(()) };
        let window = match txn(|| Spi::connect(|c| keyring::read_window(c, name))) {
            Ok(w) => w,
            // Dropped since we listed it.
            Err(VaultError::GroupNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let keys = keyring::unwrap_window(&window)?;
        keyring::store(epoch, &window, &keys);
        Ok(())
    }
}
