//! Who this backend's vault is: the database, the incarnation of the
//! extension (its pg_extension OID), the schema it lives in *now* and the
//! role that owns its tables. Resolved per backend from the catalog, never
//! assumed from a name:
//!
//! - internal SQL is written against `vault.` and rewritten to the schema the
//!   extension really lives in, so renaming the schema (and planting a new
//!   `vault`) cannot redirect it;
//! - it runs as the owner of the extension's tables, a dedicated role that is
//!   not a superuser (refused otherwise), never as the caller or a superuser;
//! - shared-memory cache slots are addressed by (database, extension, group).
//!
//! The resolution is dropped whenever the catalog says something changed
//! under it: a relcache invalidation of the extension's tables (DROP and
//! CREATE EXTENSION, ALTER EXTENSION UPDATE, an owner change) or any change
//! to pg_namespace (a rename). Standbys replay those invalidations too.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use pgrx::prelude::*;

use crate::error::{VaultError, VaultResult};

/// The schema version this library serves.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug)]
pub struct Identity {
    pub database: u32,
    pub extension: u32,
    /// Quoted, ready to splice into SQL.
    schema: String,
    pub owner: pg_sys::Oid,
    pub key_groups_rel: pg_sys::Oid,
    pub decrypted_secrets_view: pg_sys::Oid,
}

impl Identity {
    pub fn cache_key(&self, group: [u8; 16]) -> secret_vault_core::cache::SlotKey {
        secret_vault_core::cache::SlotKey { database: self.database, extension: self.extension, group }
    }

    /// `sql`, written against schema `vault`, for the schema the extension is in.
    pub fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        if self.schema == "vault" {
            Cow::Borrowed(sql)
        } else {
            Cow::Owned(sql.replace("vault.", &format!("{}.", self.schema)))
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Identity>>> = const { RefCell::new(None) };
    /// Bumped on every reset, so callers holding derived state (prepared
    /// plans, name maps) can tell theirs is from an older resolution.
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Set by every invalidation, so one that arrives while `resolve` runs
    /// is not lost.
    static INVALIDATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub fn generation() -> u64 {
    GENERATION.get()
}

/// Forgets the resolution; the next use resolves again.
pub fn reset() {
    INVALIDATED.set(true);
    if CURRENT.with(|c| c.borrow_mut().take()).is_some() {
        GENERATION.set(GENERATION.get() + 1);
        // Harmless to keep (each serves only its own row), but an
        // extension dropped or a schema renamed is a good time to wipe.
        crate::keyring::forget_old_keys();
    }
}

/// `sql` (written against schema `vault`) for where the extension lives.
pub fn sql(sql: &str) -> VaultResult<String> {
    Ok(current()?.sql(sql).into_owned())
}

/// This backend's identity, resolved on first use after a reset. Every vault
/// SQL function that takes a name or a value comes here first, so this is
/// where a call is noted for the server-log redaction.
pub fn current() -> VaultResult<Rc<Identity>> {
    crate::log_hook::note_vault_call();
    if let Some(i) = CURRENT.with(|c| c.borrow().clone()) {
        return Ok(i);
    }
    // An invalidation while resolving (the catalog changed under us) means
    // the answer may already be stale: resolve again.
    for _ in 0..4 {
        INVALIDATED.set(false);
        let i = Rc::new(resolve()?);
        if !INVALIDATED.get() {
            CURRENT.with(|c| *c.borrow_mut() = Some(i.clone()));
            return Ok(i);
        }
    }
    Err(VaultError::Internal("the extension's catalog entries kept changing; retry".into()))
}

const RESOLVE: &str = "
SELECT e.oid, e.extversion, pg_catalog.quote_ident(n.nspname), c.oid, c.relowner,
       r.rolsuper OR NOT nr.rolsuper, v.oid
  FROM pg_catalog.pg_extension e
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
  JOIN pg_catalog.pg_roles nr ON nr.oid OPERATOR(pg_catalog.=) n.nspowner
  LEFT JOIN (pg_catalog.pg_class c
             JOIN pg_catalog.pg_depend d
               ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
              AND d.objid OPERATOR(pg_catalog.=) c.oid
              AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
              AND d.deptype OPERATOR(pg_catalog.=) 'e')
         ON c.relnamespace OPERATOR(pg_catalog.=) e.extnamespace
        AND c.relname OPERATOR(pg_catalog.=) 'key_groups'
        AND d.refobjid OPERATOR(pg_catalog.=) e.oid
  LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner
  LEFT JOIN pg_catalog.pg_class v
         ON v.relnamespace OPERATOR(pg_catalog.=) e.extnamespace
        AND v.relname OPERATOR(pg_catalog.=) 'decrypted_secrets'
 WHERE e.extname OPERATOR(pg_catalog.=) 'secret_vault'";

fn resolve() -> VaultResult<Identity> {
    // A read-only select: assigning a transaction id would fail on a standby.
    let row = Spi::connect(|c| -> VaultResult<_> {
        let t = c.select(RESOLVE, Some(1), &[])?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<pg_sys::Oid>(1)?,
            r.get::<String>(2)?,
            r.get::<String>(3)?,
            r.get::<pg_sys::Oid>(4)?,
            r.get::<pg_sys::Oid>(5)?,
            r.get::<bool>(6)?,
            r.get::<pg_sys::Oid>(7)?,
        )))
    })?;
    let Some((ext, version, schema, rel, owner, owner_is_super, view)) = row else {
        return Err(VaultError::NotInstalled);
    };
    let version = version.unwrap_or_default();
    if version != LIBRARY_VERSION {
        return Err(VaultError::SchemaVersion { installed: version, library: LIBRARY_VERSION });
    }
    let (Some(ext), Some(schema), Some(rel), Some(owner)) = (ext, schema, rel, owner) else {
        return Err(VaultError::Internal("the extension's tables are missing from its schema".into()));
    };
    if owner_is_super != Some(false) {
        // Fail closed: internal SQL must never run with a superuser's rights,
        // and a schema owned by anyone else could be renamed and replaced.
        return Err(VaultError::Internal(
            "the vault tables must belong to role vault_owner (not a superuser) and schema vault to a superuser".into(),
        ));
    }
    Ok(Identity {
        database: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        extension: ext.to_u32(),
        schema,
        owner,
        key_groups_rel: rel,
        decrypted_secrets_view: view.unwrap_or(pg_sys::InvalidOid),
    })
}

/// Runs `f` as the owner of the vault tables, so SECURITY INVOKER functions
/// and the worker read them with exactly that role's rights. Where allowed,
/// it reads through a snapshot taken now (not the caller's older one): a load
/// that follows an invalidation then sees the commit that caused it.
/// PostgreSQL restores the user and pops the snapshot itself on error.
pub fn as_owner<R>(f: impl FnOnce(&Identity) -> VaultResult<R>) -> VaultResult<R> {
    let ident = current()?;
    unsafe {
        let mut saved_user = pg_sys::Oid::INVALID;
        let mut saved_ctx = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            ident.owner,
            saved_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        // A parallel operation cannot take new snapshots; it reads with its own.
        let fresh = !pg_sys::IsInParallelMode();
        if fresh {
            pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        }
        let r = f(&ident);
        if fresh {
            pg_sys::PopActiveSnapshot();
        }
        pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx);
        r
    }
}

/// Runs `f` as the owner of the vault tables in the caller's own snapshot:
/// the body of a write function. They are SECURITY INVOKER (so access rules
/// and the audit log see the real caller, also through another SECURITY
/// DEFINER function) and switch here, after their checks, as a SECURITY
/// DEFINER function would. PostgreSQL restores the user on error.
pub fn as_owner_write<R>(f: impl FnOnce(&Identity) -> VaultResult<R>) -> VaultResult<R> {
    let ident = current()?;
    unsafe {
        let mut saved_user = pg_sys::Oid::INVALID;
        let mut saved_ctx = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(ident.owner, saved_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        let r = f(&ident);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx);
        r
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let ours = CURRENT.with(|c| c.borrow().as_ref().map(|i| i.key_groups_rel));
    if relid == pg_sys::InvalidOid || ours.is_none_or(|r| r == relid) {
        reset();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_namespace(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    reset();
}

/// Registers the invalidation callbacks; called from `_PG_init` in the
/// postmaster, so every backend inherits them.
pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            Some(on_namespace),
            pg_sys::Datum::from(0),
        );
    }
}
