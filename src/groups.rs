//! The key-group SQL API (DESIGN.md, "Key groups"). Each function states its
//! volatility, strictness and parallel safety; all are SECURITY DEFINER with
//! a pinned search_path, and reachable only through the vault_* roles.

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use rand::RngCore;
use secret_vault_core::aad;
use secret_vault_core::format;
use secret_vault_core::policy::{self, GroupSettings, Purpose, Span};

use crate::catalog::{self, GroupRow, NewGroup};
use crate::error::{required, OrRaise, VaultError, VaultResult};
use crate::{guc, keyring, kms};

/// How often a rotation retries after losing a race for the next version.
const ROTATE_ATTEMPTS: usize = 8;

fn span(iv: &Interval) -> Span {
    Span { months: iv.months(), days: iv.days(), micros: iv.micros() }
}

fn require_purpose(group: &GroupRow, wanted: Purpose, operation: &'static str) -> VaultResult<()> {
    if group.purpose == wanted {
        Ok(())
    } else {
        Err(VaultError::WrongPurpose { group: group.name.clone(), purpose: group.purpose, operation })
    }
}

fn new_group_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    // RFC 4122 version 4, variant 1, so the id reads as an ordinary UUID.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

#[allow(clippy::too_many_arguments)]
fn create_group_impl(
    name: Option<&str>,
    purpose: Option<&str>,
    rotation_interval: Option<Interval>,
    propagation_delay: Option<Interval>,
    ring_size: Option<i32>,
    key_bytes: Option<i32>,
    kms_key: Option<&str>,
) -> VaultResult<()> {
    let name = required(name, "name")?;
    let purpose = Purpose::parse(required(purpose, "purpose")?)?;
    let propagation_delay = required(propagation_delay, "propagation_delay")?;
    let settings = GroupSettings {
        purpose,
        rotation_interval: rotation_interval.as_ref().map(span),
        propagation_delay: span(&propagation_delay),
        ring_size: required(ring_size, "ring_size")?,
        key_bytes: required(key_bytes, "key_bytes")?,
    };
    policy::validate_name("key group", name)?;
    settings.validate()?;

    Spi::connect_mut(|client| {
        if catalog::load_group(client, name)?.is_some() {
            return Err(VaultError::GroupExists(name.to_string()));
        }
        let (kms_name, kms_kind) = catalog::resolve_kms_key(client, kms_key)?;
        let provider = kms::provider(&kms_name, &kms_kind)?;
        let id = new_group_id();
        let (_key, wrapped) = provider.generate(settings.key_bytes as usize, &aad::ring_key(&id, 1))?;
        let now = catalog::clock();
        let inserted = catalog::insert_group(
            client,
            &NewGroup {
                id,
                name,
                purpose,
                rotation_interval,
                propagation_delay,
                ring_size: settings.ring_size,
                key_bytes: settings.key_bytes,
                kms_key: &kms_name,
            },
            now,
        )?;
        if !inserted {
            return Err(VaultError::GroupExists(name.to_string()));
        }
        catalog::insert_key(client, &id, 1, provider.key_id(), &wrapped, now, true)
    })
}

/// Creates a key group with version 1 active at once.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn create_group(
    name: Option<&str>,
    purpose: default!(Option<&str>, "'export'"),
    rotation_interval: default!(Option<Interval>, "NULL"),
    propagation_delay: default!(Option<Interval>, "'30 seconds'"),
    ring_size: default!(Option<i32>, 16),
    key_bytes: default!(Option<i32>, 32),
    kms_key: default!(Option<&str>, "NULL"),
) {
    create_group_impl(name, purpose, rotation_interval, propagation_delay, ring_size, key_bytes, kms_key)
        .or_raise()
}

/// Writes version n+1 as pending. The KMS call happens before the version
/// is claimed, so no row lock is held across it; a lost race wraps again.
pub(crate) fn rotate_impl(client: &mut SpiClient<'_>, group_name: &str) -> VaultResult<i32> {
    for _ in 0..ROTATE_ATTEMPTS {
        let group = catalog::group(client, group_name)?;
        let next = group
            .last_version
            .checked_add(1)
            .ok_or_else(|| VaultError::VersionOverflow(group.name.clone()))?;
        let provider = kms::provider(&group.kms_key, &group.kms_provider)?;
        let (_key, wrapped) =
            provider.generate(group.key_bytes as usize, &aad::ring_key(&group.id, next as u32))?;
        let now = catalog::clock();
        if catalog::claim_version(client, &group.id, next, now)? {
            catalog::insert_key(client, &group.id, next, provider.key_id(), &wrapped, now, false)?;
            return Ok(next);
        }
    }
    Err(VaultError::RotationContention(group_name.to_string()))
}

/// Rotates a group now; returns the new (pending) version.
#[pg_extern(volatile, strict, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn rotate(group_name: &str) -> i32 {
    Spi::connect_mut(|client| rotate_impl(client, group_name)).or_raise()
}

/// `vault.current(group_name, OUT version int, OUT key bytea)`: a C-level
/// function so that its result is a single record with exactly those OUT
/// parameters, as the contract says, rather than a set.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn vault_current(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let Some(group_name) = (unsafe { pgrx::fcinfo::pg_getarg::<&str>(fcinfo, 0) }) else {
        // STRICT: PostgreSQL never calls us with NULL.
        unsafe { (*fcinfo).isnull = true };
        return pg_sys::Datum::from(0);
    };
    let (version, key) = Spi::connect(|client| -> VaultResult<_> {
        let group = catalog::group(client, group_name)?;
        require_purpose(&group, Purpose::Export, "vault.current")?;
        keyring::current(client, &group)
    })
    .or_raise();

    unsafe {
        let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
        {
            VaultError::Internal("vault.current must be declared with OUT parameters".into()).raise();
        }
        let tupdesc = pg_sys::BlessTupleDesc(tupdesc);
        let key_datum = key.as_bytes().into_datum().expect("bytea datum");
        let mut values = [pg_sys::Datum::from(version), key_datum];
        let mut nulls = [false, false];
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_vault_current() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

extension_sql!(
    r#"
CREATE FUNCTION vault."current"(group_name text, OUT version int, OUT key bytea)
RETURNS record
LANGUAGE c STRICT STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'vault_current';
"#,
    name = "vault_current",
    requires = ["bootstrap"],
);

/// Key bytes of any version that is not retired (pending ones included, so
/// verifiers learn a key before signers use it).
#[pg_extern(stable, strict, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn resolve(group_name: &str, version: i32) -> Vec<u8> {
    Spi::connect(|client| -> VaultResult<Vec<u8>> {
        let group = catalog::group(client, group_name)?;
        require_purpose(&group, Purpose::Export, "vault.resolve")?;
        let key = keyring::at_version(client, &group, version as i64)?;
        Ok(key.as_bytes().to_vec())
    })
    .or_raise()
}

/// Encrypts with the current version of an 'encrypt' group, bound to `context`.
#[pg_extern(volatile, strict, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn encrypt(group_name: &str, plaintext: &[u8], context: default!(&[u8], "''")) -> Vec<u8> {
    let algorithm = guc::cipher();
    Spi::connect(|client| -> VaultResult<Vec<u8>> {
        let group = catalog::group(client, group_name)?;
        require_purpose(&group, Purpose::Encrypt, "vault.encrypt")?;
        let (version, key) = keyring::current(client, &group)?;
        Ok(format::encrypt(algorithm, &key, version as u32, &group.id, context, plaintext)?)
    })
    .or_raise()
}

/// Decrypts a `vault.encrypt` ciphertext with the version it names.
#[pg_extern(stable, strict, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn decrypt(group_name: &str, ciphertext: &[u8], context: default!(&[u8], "''")) -> Vec<u8> {
    let parsed = format::parse(ciphertext).map_err(VaultError::from).or_raise();
    Spi::connect(|client| -> VaultResult<Vec<u8>> {
        let group = catalog::group(client, group_name)?;
        require_purpose(&group, Purpose::Encrypt, "vault.decrypt")?;
        let key = keyring::at_version(client, &group, parsed.key_version as i64)?;
        let plaintext = format::decrypt(&parsed, &key, &group.id, context)?;
        Ok(plaintext.to_vec())
    })
    .or_raise()
}

/// Retires every version below `below_version`; the current one is kept.
#[pg_extern(volatile, strict, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn retire(group_name: &str, below_version: i32) {
    Spi::connect_mut(|client| -> VaultResult<()> {
        let group = catalog::group(client, group_name)?;
        let current = catalog::current_key_row(client, &group, catalog::clock())?;
        policy::check_retire(below_version, Some(current.version as u32))?;
        catalog::retire_below(client, &group.id, below_version, catalog::clock())?;
        Ok(())
    })
    .or_raise()
}

/// Drops a group and erases its wrapped keys.
#[pg_extern(volatile, strict, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_group(group_name: &str) {
    Spi::connect_mut(|client| -> VaultResult<()> {
        if catalog::delete_group(client, group_name)? {
            Ok(())
        } else {
            Err(VaultError::GroupNotFound(group_name.to_string()))
        }
    })
    .or_raise()
}
