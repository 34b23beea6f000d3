//! secret_vault: key rings and secrets inside PostgreSQL, envelope-encrypted
//! under a KMS master key. This crate is the thin pgrx layer; crypto, formats,
//! policy and KMS clients live in `secret_vault_core`.

use pgrx::prelude::*;

mod access;
mod audit;
mod catalog;
mod coherence;
mod credentials;
mod error;
mod groups;
mod guc;
mod hooks;
mod identity;
mod keyring;
mod keys;
mod kms;
mod log_hook;
mod secret_store;
mod secrets;
mod shmem;
mod stats;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: read-only flag set by the postmaster while loading libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "secret_vault must be loaded via shared_preload_libraries",
            "secret_vault",
        )
        .set_hint(
            "Add secret_vault to shared_preload_libraries in postgresql.conf \
             (ALTER SYSTEM SET shared_preload_libraries = 'secret_vault') and restart the server.",
        )
        .report(PgLogLevel::ERROR);
    }
    guc::init();
    shmem::init();
    identity::init();
    access::init();
    hooks::init();
    log_hook::init();
    worker::register();
    kms::ensure_default_local_key();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'secret_vault'"]
    }
}
