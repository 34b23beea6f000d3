//! The hot key functions: `vault.current`, `vault.resolve`, `vault.encrypt`,
//! `vault.decrypt`. They are SECURITY INVOKER (EXECUTE is granted to
//! vault_reader) because a SECURITY DEFINER call saves and restores GUCs on
//! every call; on a cache miss they read the tables as the extension owner
//! (see `catalog::as_owner`).
//!
//! They are C-level functions so that `current` returns one record with the
//! contract's OUT parameters, and so key bytes go from the stack buffer
//! straight into the result without an intermediate heap copy.

use pgrx::prelude::*;
use secret_vault_core::format::{self, Binding};
use secret_vault_core::policy::Purpose;

use crate::access;
use crate::error::{OrRaise, VaultError};
use secret_vault_core::access::Privilege;
use crate::guc;
use crate::keyring::{self, Want};
use secret_vault_core::cache::KeyBuf;

unsafe fn arg<'a, T: FromDatum + 'a>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> T {
    // All four functions are STRICT: PostgreSQL never passes NULL.
    unsafe { pgrx::fcinfo::pg_getarg::<T>(fcinfo, n) }.expect("strict function got NULL")
}

fn bytea(bytes: &[u8]) -> pg_sys::Datum {
    bytes.into_datum().expect("bytea datum")
}

macro_rules! finfo_v1 {
    ($finfo:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

finfo_v1!(pg_finfo_vault_current);
finfo_v1!(pg_finfo_vault_resolve);
finfo_v1!(pg_finfo_vault_encrypt);
finfo_v1!(pg_finfo_vault_decrypt);

thread_local! {
    static CURRENT_TUPDESC: std::cell::Cell<pg_sys::TupleDesc> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// The blessed result descriptor of vault.current, built once per backend.
/// A FROM-clause call gets a new FmgrInfo on every execution, so fn_extra
/// would not survive; the OUT parameters are fixed by this library, so one
/// copy in TopMemoryContext serves every call.
unsafe fn result_tupdesc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    let cached = CURRENT_TUPDESC.get();
    if !cached.is_null() {
        return cached;
    }
    unsafe {
        let mut td: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut td)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
        {
            VaultError::Internal("vault.current must be declared with OUT parameters".into()).raise();
        }
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let td = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(td));
        pg_sys::MemoryContextSwitchTo(old);
        CURRENT_TUPDESC.set(td);
        td
    }
}

/// vault.current(group_name text, OUT version int, OUT key bytea)
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn vault_current(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let name: &str = unsafe { arg(fcinfo, 0) };
    let mut key = KeyBuf::new();
    let r = access::read("current", Privilege::Read, name, || keyring::resolve(name, Purpose::Export, "vault.current", Want::Current, &mut key));
    unsafe {
        let td = result_tupdesc(fcinfo);
        let mut values = [pg_sys::Datum::from(r.version), bytea(key.as_slice())];
        let mut nulls = [false, false];
        let tuple = pg_sys::heap_form_tuple(td, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}

/// vault.resolve(group_name text, version int) RETURNS bytea
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn vault_resolve(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let name: &str = unsafe { arg(fcinfo, 0) };
    let version: i32 = unsafe { arg(fcinfo, 1) };
    let mut key = KeyBuf::new();
    access::read("resolve", Privilege::Read, name, || {
        keyring::resolve(name, Purpose::Export, "vault.resolve", Want::Version(version as i64), &mut key)
    });
    bytea(key.as_slice())
}

/// vault.encrypt(group_name text, plaintext bytea, context bytea) RETURNS bytea
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn vault_encrypt(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let name: &str = unsafe { arg(fcinfo, 0) };
    let plaintext: &[u8] = unsafe { arg(fcinfo, 1) };
    let context: &[u8] = unsafe { arg(fcinfo, 2) };
    let alg = guc::cipher();
    // Checked before any key lookup or allocation: the result must fit in
    // one PostgreSQL allocation. It is then made with palloc, so running out
    // of memory is an ordinary ERROR, never an abort of the backend (which
    // would restart the whole cluster).
    let n = format::ciphertext_len(alg, plaintext.len())
        .filter(|n| *n <= MAX_BYTEA)
        .unwrap_or_else(|| too_large("plaintext", plaintext.len(), MAX_BYTEA - (format::ciphertext_len(alg, 0).unwrap_or(0))));
    let mut key = KeyBuf::new();
    let r = access::read("encrypt", Privilege::Encrypt, name, || keyring::resolve(name, Purpose::Encrypt, "vault.encrypt", Want::Current, &mut key));
    unsafe {
        let result = pg_sys::palloc(pg_sys::VARHDRSZ + n) as *mut pg_sys::varlena;
        pgrx::varlena::set_varsize_4b(result, (pg_sys::VARHDRSZ + n) as i32);
        let data = std::slice::from_raw_parts_mut(pgrx::varlena::vardata_4b(result) as *mut u8, n);
        if let Err(e) = format::encrypt_into(alg, key.as_slice(), r.version as u32, &r.group_id, Binding::Data(context), plaintext, data) {
            pg_sys::pfree(result as *mut std::ffi::c_void);
            VaultError::from(e).raise();
        }
        pg_sys::Datum::from(result)
    }
}

/// The largest bytea PostgreSQL can allocate (MaxAllocSize less the header).
const MAX_BYTEA: usize = 0x3fff_ffff - pg_sys::VARHDRSZ;

fn too_large(what: &str, len: usize, limit: usize) -> ! {
    VaultError::TooLarge { what: what.to_string(), len, limit }.raise()
}

/// vault.decrypt(group_name text, ciphertext bytea, context bytea) RETURNS bytea
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn vault_decrypt(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let name: &str = unsafe { arg(fcinfo, 0) };
    let ciphertext: &[u8] = unsafe { arg(fcinfo, 1) };
    let context: &[u8] = unsafe { arg(fcinfo, 2) };
    let parsed = format::parse(ciphertext).map_err(VaultError::from).or_raise();
    if parsed.format != format::FORMAT_V1 {
        // A secret's stored value: its domain is closed to vault.decrypt.
        VaultError::from(secret_vault_core::CryptoError::WrongDomain).raise();
    }
    let mut key = KeyBuf::new();
    let r = access::read("decrypt", Privilege::Decrypt, name, || {
        keyring::resolve(name, Purpose::Encrypt, "vault.decrypt", Want::Version(parsed.key_version as i64), &mut key)
    });
    // Open straight into the result bytea: no intermediate plaintext copy.
    let n = format::plaintext_len(&parsed);
    unsafe {
        let result = pg_sys::palloc(pg_sys::VARHDRSZ + n) as *mut pg_sys::varlena;
        pgrx::varlena::set_varsize_4b(result, (pg_sys::VARHDRSZ + n) as i32);
        let data = std::slice::from_raw_parts_mut(pgrx::varlena::vardata_4b(result) as *mut u8, n);
        if let Err(e) = format::decrypt_into(&parsed, key.as_slice(), &r.group_id, Binding::Data(context), data) {
            pg_sys::pfree(result as *mut std::ffi::c_void);
            VaultError::from(e).raise();
        }
        pg_sys::Datum::from(result)
    }
}

extension_sql!(
    r#"
CREATE FUNCTION vault."current"(group_name text, OUT version int, OUT key bytea)
RETURNS record
LANGUAGE c STRICT STABLE PARALLEL SAFE SECURITY INVOKER
AS 'MODULE_PATHNAME', 'vault_current';

CREATE FUNCTION vault.resolve(group_name text, version int)
RETURNS bytea
LANGUAGE c STRICT STABLE PARALLEL SAFE SECURITY INVOKER
AS 'MODULE_PATHNAME', 'vault_resolve';

CREATE FUNCTION vault.encrypt(group_name text, plaintext bytea, context bytea DEFAULT ''::bytea)
RETURNS bytea
LANGUAGE c STRICT VOLATILE PARALLEL SAFE SECURITY INVOKER
AS 'MODULE_PATHNAME', 'vault_encrypt';

CREATE FUNCTION vault.decrypt(group_name text, ciphertext bytea, context bytea DEFAULT ''::bytea)
RETURNS bytea
LANGUAGE c STRICT STABLE PARALLEL SAFE SECURITY INVOKER
AS 'MODULE_PATHNAME', 'vault_decrypt';
"#,
    name = "key_functions",
    requires = ["bootstrap"],
);
