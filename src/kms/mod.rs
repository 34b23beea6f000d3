//! Which KMS provider serves a registered KMS key, cached per backend, and
//! the counted calls through it (`vault.stats()`).
//!
//! Providers are built lazily in each backend (never in shared memory) and
//! rebuilt when their configuration changes: a re-registered name, a SIGHUP
//! that points `secret_vault.local_master_key_file` elsewhere, new timeouts.
//! Every remote call runs in the calling thread, bounded by the
//! `secret_vault.kms_*` settings, and ends early on query cancel,
//! `statement_timeout` or a shutdown request; callers never hold an LWLock
//! across it.

pub mod registry;
pub mod rewrap;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::pg_sys;
use secret_vault_core::aad::{self, RingKeyBinding};
use secret_vault_core::kms::local::KeyFile;
use secret_vault_core::kms::{Binding, Call, KmsProvider, LocalKms, Wrapped};
use secret_vault_core::{KeyBytes, KmsError};

use crate::catalog::{GroupRow, KeyRow};
use crate::error::{VaultError, VaultResult};
use crate::{guc, shmem};

/// What a provider was built from; a change builds a new one.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Recipe {
    name: String,
    kind: String,
    config: String,
    local_path: Option<PathBuf>,
    connect_timeout_ms: i32,
}

/// Per KMS key name: what its provider was built from, and the provider.
type Providers = HashMap<String, (Recipe, Rc<dyn KmsProvider>)>;

thread_local! {
    static PROVIDERS: RefCell<Providers> = RefCell::new(HashMap::new());
}

/// Set in the background worker, whose shutdown request is its own flag.
static IN_WORKER: AtomicBool = AtomicBool::new(false);
/// pgrx clears its SIGTERM flag when it is read: once a KMS wait has seen
/// it, it is kept here, so the worker's loop still exits.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

pub fn mark_worker() {
    IN_WORKER.store(true, Ordering::Relaxed);
}

/// Whether the worker was asked to stop (seen by a KMS wait or its loop).
pub fn shutdown_requested() -> bool {
    if pgrx::bgworkers::BackgroundWorker::sigterm_received() {
        SHUTDOWN.store(true, Ordering::Relaxed);
    }
    SHUTDOWN.load(Ordering::Relaxed)
}

fn interrupted() -> bool {
    if IN_WORKER.load(Ordering::Relaxed) {
        return shutdown_requested();
    }
    // SAFETY: plain flags set by the signal handlers of this (main) thread.
    unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 }
}

/// How a call may run, per the current settings.
pub fn call() -> Call<'static> {
    let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
    Call {
        connect_timeout: ms(guc::KMS_CONNECT_TIMEOUT_MS.get()),
        request_timeout: ms(guc::KMS_REQUEST_TIMEOUT_MS.get()),
        max_attempts: guc::KMS_MAX_ATTEMPTS.get().max(1) as u32,
        total_budget: ms(guc::KMS_RETRY_BUDGET_MS.get()),
        interrupted: &interrupted,
    }
}

/// A KMS key as registered: its name, provider kind and config (jsonb text).
pub struct KeySpec<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub config: &'a str,
}

impl<'a> KeySpec<'a> {
    pub fn of(group: &'a GroupRow) -> KeySpec<'a> {
        KeySpec { name: &group.kms_key, kind: &group.kms_provider, config: &group.kms_config }
    }
}

fn recipe(spec: &KeySpec) -> VaultResult<Recipe> {
    let config: serde_json::Value = serde_json::from_str(spec.config)
        .map_err(|e| KmsError::Config(format!("KMS key \"{}\": config is not JSON: {e}", spec.name)))?;
    let local_path = match spec.kind {
        "local" => Some(match config.get("key_file").and_then(|v| v.as_str()) {
            Some(p) => PathBuf::from(p),
            None => guc::local_master_key_path(),
        }),
        _ => None,
    };
    Ok(Recipe {
        name: spec.name.to_string(),
        kind: spec.kind.to_string(),
        config: spec.config.to_string(),
        local_path,
        connect_timeout_ms: guc::KMS_CONNECT_TIMEOUT_MS.get(),
    })
}

/// Builds a provider from its registration without caching it (for
/// `vault.add_kms_key`, which checks it before anything is stored).
pub fn build(spec: &KeySpec) -> VaultResult<Rc<dyn KmsProvider>> {
    let r = recipe(spec)?;
    construct(&r)
}

fn construct(r: &Recipe) -> VaultResult<Rc<dyn KmsProvider>> {
    let config: serde_json::Value =
        serde_json::from_str(&r.config).map_err(|e| KmsError::Config(format!("config is not JSON: {e}")))?;
    let connect = Duration::from_millis(r.connect_timeout_ms.max(1) as u64);
    let p: Rc<dyn KmsProvider> = match r.kind.as_str() {
        "local" => {
            secret_vault_core::kms::local::check_config(&config)?;
            Rc::new(LocalKms::from_file(r.local_path.as_ref().expect("local has a path"))?)
        }
        "aws" => Rc::new(secret_vault_core::kms::aws::AwsKms::from_config(&config, connect)?),
        "transit" => Rc::new(secret_vault_core::kms::transit::TransitKms::from_config(&config, connect)?),
        other => {
            return Err(VaultError::Kms(KmsError::Config(format!(
                "KMS key \"{}\" uses provider \"{other}\", which this build does not support",
                r.name
            ))))
        }
    };
    Ok(p)
}

/// The provider for a registered KMS key, from this backend's cache.
fn provider(spec: &KeySpec) -> VaultResult<Rc<dyn KmsProvider>> {
    let r = recipe(spec)?;
    if let Some(p) = PROVIDERS.with(|m| m.borrow().get(spec.name).filter(|(have, _)| *have == r).map(|(_, p)| p.clone())) {
        return Ok(p);
    }
    let p = construct(&r)?;
    PROVIDERS.with(|m| m.borrow_mut().insert(spec.name.to_string(), (r, p.clone())));
    Ok(p)
}

/// Counts a call (made or attempted) against its provider.
fn counted(kind: &str) {
    shmem::bump(|c| {
        c.kms_calls.fetch_add(1, Ordering::Relaxed);
        let per = match kind {
            "aws" => &c.kms_calls_aws,
            "transit" => &c.kms_calls_transit,
            _ => &c.kms_calls_local,
        };
        per.fetch_add(1, Ordering::Relaxed);
    });
}

/// Names the KMS key in an error (the provider's text names its key id and
/// the cause, never a credential).
fn named(spec: &KeySpec, e: KmsError) -> VaultError {
    VaultError::KmsCall { kms_key: spec.name.to_string(), error: e }
}

fn binding<'a>(group: &'a GroupRow, scheme: RingKeyBinding, version: i32) -> Binding<'a> {
    Binding {
        scheme,
        group: &group.id,
        version: version as u32,
        purpose: group.purpose.as_str(),
        key_bytes: group.key_bytes as u32,
    }
}

/// Unwraps a stored ring key of `group`. Rows written since 0.2.0 are bound
/// to the group's purpose and key size as the table states them now, so an
/// edited `purpose` or `key_bytes` makes the key fail to unwrap: unusable,
/// never handed out under the other purpose.
pub fn unwrap(group: &GroupRow, row: &KeyRow) -> VaultResult<KeyBytes> {
    // The row's own KMS key: after a move, rows not yet re-wrapped are
    // still under the old one.
    let spec = row.kms.spec();
    let p = provider(&spec)?;
    counted(p.provider());
    let key = p
        .unwrap(&row.kms_key_id, &row.wrapped, &binding(group, row.binding, row.version), &call())
        .map_err(|e| named(&spec, e))?;
    if key.len() != group.key_bytes as usize {
        return Err(named(&spec, KmsError::WrappedKeyCorrupt { key_id: row.kms_key_id.clone() }));
    }
    Ok(key)
}

/// A new ring key for `version` of a group: (wrapping key id, wrapped bytes),
/// bound to the group, version, purpose and key size.
pub fn new_ring_key(
    group_id: &aad::GroupId,
    spec: &KeySpec,
    purpose: secret_vault_core::policy::Purpose,
    key_bytes: usize,
    version: i32,
) -> VaultResult<(String, Vec<u8>)> {
    let p = provider(spec)?;
    counted(p.provider());
    let b = Binding {
        scheme: RingKeyBinding::V2,
        group: group_id,
        version: version as u32,
        purpose: purpose.as_str(),
        key_bytes: key_bytes as u32,
    };
    let (_key, Wrapped { key_id, wrapped }) = p.generate(key_bytes, &b, &call()).map_err(|e| named(spec, e))?;
    Ok((key_id, wrapped))
}

/// A new ring key for `version` of an existing group (rotation).
pub fn next_ring_key(group: &GroupRow, version: i32) -> VaultResult<(String, Vec<u8>)> {
    new_ring_key(&group.id, &KeySpec::of(group), group.purpose, group.key_bytes as usize, version)
}

/// Wraps an existing ring key of `group` again, bound the 0.2.0 way (group,
/// version, purpose, key size): for rows written by 0.1.0.
pub fn rebind_ring_key(group: &GroupRow, version: i32, key: &KeyBytes) -> VaultResult<(String, Vec<u8>)> {
    let spec = KeySpec::of(group);
    let p = provider(&spec)?;
    counted(p.provider());
    let w = p
        .wrap(key, &binding(group, RingKeyBinding::V2, version), &call())
        .map_err(|e| named(&spec, e))?;
    Ok((w.key_id, w.wrapped))
}

/// What a wrap made now by this KMS key would record (a live call): how
/// the worker and vault.rewrap() notice a KMS rotation or an alias move.
pub fn current_key_id(spec: &KeySpec) -> VaultResult<String> {
    let p = provider(spec)?;
    counted(p.provider());
    p.current_key_id(&call()).map_err(|e| named(spec, e))
}

/// Moves a row of this KMS key to its current material with the provider's
/// native re-wrap (AWS ReEncrypt, transit rewrap: the key never leaves the KMS).
pub fn rewrap(spec: &KeySpec, row: &KeyRow, binding: &Binding) -> VaultResult<(String, Vec<u8>)> {
    let p = provider(spec)?;
    counted(p.provider());
    let w = p.rewrap(&row.kms_key_id, &row.wrapped, binding, &call()).map_err(|e| named(spec, e))?;
    Ok((w.key_id, w.wrapped))
}

/// A live check of a KMS key about to be registered: the resolved id.
pub fn check(spec: &KeySpec) -> VaultResult<String> {
    let p = build(spec)?;
    counted(p.provider());
    p.check(&call()).map_err(|e| named(spec, e))
}

/// At postmaster start: when no key file is configured, make sure the
/// embedded default exists, and say loudly that it is for development.
pub fn ensure_default_local_key() {
    let configured = guc::LOCAL_MASTER_KEY_FILE
        .get()
        .map(|c| !c.to_bytes().is_empty())
        .unwrap_or(false);
    if configured {
        return;
    }
    let path = guc::local_master_key_path();
    match LocalKms::ensure_key_file(&path) {
        Ok(KeyFile::Created) => pgrx::warning!(
            "secret_vault: created a local master key at \"{}\"; local mode is for development only, \
             configure a KMS for production",
            path.display()
        ),
        Ok(KeyFile::Existing) => pgrx::warning!(
            "secret_vault: using the local master key \"{}\"; local mode is for development only",
            path.display()
        ),
        Err(e) => pgrx::warning!("secret_vault: {e}"),
    }
}

/// What the audit chain's key is bound to: no ring key has this group id
/// (random ids are v4 UUIDs; this one is not), so no ring key's wrapped
/// bytes unwrap as the audit key or the other way round.
const AUDIT_KEY_ID: aad::GroupId = *b"secret_vault/aud";

fn audit_binding() -> Binding<'static> {
    Binding { scheme: RingKeyBinding::V2, group: &AUDIT_KEY_ID, version: 1, purpose: "audit", key_bytes: 32 }
}

/// A new key for the audit chain, generated by a registered KMS key:
/// (the key, the wrapping key id, the wrapped bytes).
pub fn new_audit_key(spec: &KeySpec) -> VaultResult<(KeyBytes, String, Vec<u8>)> {
    let p = provider(spec)?;
    counted(p.provider());
    let (key, w) = p.generate(32, &audit_binding(), &call()).map_err(|e| named(spec, e))?;
    Ok((key, w.key_id, w.wrapped))
}

/// Unwraps the audit chain's key.
pub fn unwrap_audit_key(spec: &KeySpec, key_id: &str, wrapped: &[u8]) -> VaultResult<KeyBytes> {
    let p = provider(spec)?;
    counted(p.provider());
    p.unwrap(key_id, wrapped, &audit_binding(), &call()).map_err(|e| named(spec, e))
}

/// Wraps the audit chain's key again under another registered KMS key (the
/// one it used is being dropped).
pub fn wrap_audit_key(spec: &KeySpec, key: &KeyBytes) -> VaultResult<(String, Vec<u8>)> {
    let p = provider(spec)?;
    counted(p.provider());
    let w = p.wrap(key, &audit_binding(), &call()).map_err(|e| named(spec, e))?;
    Ok((w.key_id, w.wrapped))
}
