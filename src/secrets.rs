//! The secrets SQL API (DESIGN.md, "Secrets").
//!
//! Reads (`read_secret`, `verify_secret`) are SECURITY INVOKER hot paths:
//! a backend-local cache holds each secret's *ciphertexts* (never values),
//! valid while the shared invalidation epoch is unchanged; ring keys come
//! from the shared cache. So a warm read costs no SPI and no KMS call, and
//! the plaintext exists only for the duration of the call.
//! Writes are SECURITY INVOKER with a pinned search_path: they check the
//! caller's access rules, then write as the tables' owner (`access::write`).

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::Uuid;
use secret_vault_core::cache::KeyBuf;
use secret_vault_core::policy::{self, Purpose};
use secret_vault_core::secret::{self, Generator};
use secret_vault_core::format::{self, Binding};
use secret_vault_core::PolicyError;
use zeroize::Zeroizing;

use crate::catalog;
use crate::error::{require_writable, required, OrRaise, VaultError, VaultResult};
use crate::keyring::{self, Want};
use crate::secret_store::{self, NewSecret, SecretRow, ValueRow};
use crate::{access, audit, coherence, guc, identity, shmem};
use secret_vault_core::access::Privilege;

/// Name of the encrypt group used when `key_group` is NULL; made on first use.
pub const DEFAULT_GROUP: &str = "vault/secrets";
/// Bounds on the backend-local ciphertext cache: entries, and bytes (a
/// value may be 1 MiB, and each secret keeps its values in grace).
const LOCAL_CACHE_MAX: usize = 10_000;
const LOCAL_CACHE_BYTES: usize = 16 << 20;

/// Coherence key: secrets share the dirty set and epoch with groups.
pub(crate) fn dirty_key(name: &str) -> String {
    format!("secret\u{0}{name}")
}

#[derive(Clone)]
struct Cached {
    epoch: u64,
    generation: u64,
    secret: SecretRow,
    values: Vec<ValueRow>,
}

impl Cached {
    fn bytes(&self) -> usize {
        let row = &self.secret;
        128 + row.name.len() + row.group.len() + row.current_ciphertext.len()
            + self.values.iter().map(|v| 32 + v.ciphertext.len()).sum::<usize>()
    }
}

thread_local! {
    static LOCAL: RefCell<(usize, HashMap<String, Cached>)> = RefCell::new((0, HashMap::new()));
}

/// A secret and its live ciphertexts: from the local cache when it is still
/// valid, else from the tables (as owner, fresh snapshot), cached when safe.
fn live(name: &str) -> VaultResult<(SecretRow, Vec<ValueRow>)> {
    let dirty = coherence::is_dirty(&dirty_key(name));
    let epoch = shmem::epoch();
    if let (false, Some(e)) = (dirty, epoch) {
        let generation = identity::generation();
        if let Some(c) = LOCAL.with(|l| l.borrow().1.get(name).filter(|c| c.epoch == e && c.generation == generation).cloned()) {
            return Ok((c.secret, c.values));
        }
    }
    let (s, values) = identity::as_owner(|_| {
        Spi::connect(|c| {
            let s = secret_store::get(c, name)?;
            let values = secret_store::live_values(c, &s, catalog::clock())?;
            Ok((s, values))
        })
    })?;
    if let (false, Some(e), true) = (dirty, epoch, catalog::may_fill_shared_cache()) {
        let entry = Cached { epoch: e, generation: identity::generation(), secret: s.clone(), values: values.clone() };
        let size = entry.bytes();
        if size <= LOCAL_CACHE_BYTES / 8 {
            LOCAL.with(|l| {
                let (bytes, map) = &mut *l.borrow_mut();
                if map.len() >= LOCAL_CACHE_MAX || *bytes + size > LOCAL_CACHE_BYTES {
                    map.clear();
                    *bytes = 0;
                }
                if let Some(old) = map.insert(name.to_string(), entry) {
                    *bytes -= old.bytes().min(*bytes);
                }
                *bytes += size;
            });
        }
    }
    Ok((s, values))
}

fn open(group: &str, id: &[u8; 16], version: i32, ciphertext: &[u8], op: &'static str) -> VaultResult<Zeroizing<Vec<u8>>> {
    let parsed = format::parse(ciphertext)?;
    let mut key = KeyBuf::new();
    let r = keyring::resolve(group, Purpose::Encrypt, op, Want::Version(parsed.key_version as i64), &mut key)?;
    Ok(format::decrypt(&parsed, key.as_slice(), &r.group_id, Binding::Secret { id, version: version as u32 })?)
}

fn seal(group: &str, id: &[u8; 16], version: i32, value: &[u8], op: &'static str) -> VaultResult<Vec<u8>> {
    let mut key = KeyBuf::new();
    let r = keyring::resolve(group, Purpose::Encrypt, op, Want::Current, &mut key)?;
    seal_with(&key, r, id, version, value)
}

/// Seals version `version` of secret `id` under a resolved ring key.
pub(crate) fn seal_with(key: &KeyBuf, r: keyring::Resolved, id: &[u8; 16], version: i32, value: &[u8]) -> VaultResult<Vec<u8>> {
    Ok(format::encrypt(
        guc::cipher(),
        key.as_slice(),
        r.version as u32,
        &r.group_id,
        Binding::Secret { id, version: version as u32 },
        value,
    )?)
}

/// A secret's value on its way out of a SQL function. Converting it makes
/// the `text` PostgreSQL returns (in PostgreSQL memory, beyond our reach);
/// the Rust copy is then wiped, where a `String` result would be freed
/// unwiped after the conversion.
pub struct SecretText(pub(crate) Zeroizing<String>);

impl_sql_translatable!(SecretText, "TEXT");

// SAFETY: returns a valid text datum, palloc'd in the caller's context, or
// SQL NULL, exactly as pgrx does for `String`.
unsafe impl pgrx::callconv::BoxRet for SecretText {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        match self.0.as_str().into_datum() {
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

/// The opened value as text: the buffer is moved, not copied, so the one
/// copy there is is wiped whether or not it is UTF-8.
fn utf8(mut bytes: Zeroizing<Vec<u8>>) -> VaultResult<SecretText> {
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(s) => Ok(SecretText(Zeroizing::new(s))),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(VaultError::Internal("stored secret value is not UTF-8".into()))
        }
    }
}

/// The key to seal under: the current key of `key_group` (an 'encrypt'
/// group), or of the default group, created here on first use. Served from
/// the shared cache, so creating a secret runs no query to find its group.
pub(crate) fn seal_key(
    client: &mut pgrx::spi::SpiClient<'_>,
    key_group: Option<&str>,
    out: &mut KeyBuf,
) -> VaultResult<keyring::Resolved> {
    let name = key_group.unwrap_or(DEFAULT_GROUP);
    match keyring::resolve(name, Purpose::Encrypt, "sealing secrets", Want::Current, out) {
        Err(VaultError::GroupNotFound) if key_group.is_none() => {
            crate::groups::create_group_in(client, DEFAULT_GROUP, Purpose::Encrypt)?;
            keyring::resolve(name, Purpose::Encrypt, "sealing secrets", Want::Current, out)
        }
        other => other,
    }
}

fn validate_value(value: &str) -> VaultResult<()> {
    // A secret's value is shown by no error; only its size is checked here.
    if value.len() > 1 << 20 {
        return Err(PolicyError::Invalid("a secret value may be at most 1 MiB".into()).into());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn create(
    name: &str,
    kind: &'static str,
    value: &str,
    description: Option<&str>,
    key_group: Option<&str>,
    rotation_interval: Option<Interval>,
    grace_period: Option<Interval>,
    generator: Option<&str>,
) -> VaultResult<Uuid> {
    require_writable("create a secret")?;
    policy::validate_name("secret", name)?;
    validate_value(value)?;
    Spi::connect_mut(|client| {
        let mut key = KeyBuf::new();
        let found = seal_key(client, key_group, &mut key)?;
        // Hold the group against a concurrent drop_group or destroy until we
        // commit (they wait, then see this secret); a group dropped meanwhile
        // is gone.
        if !secret_store::lock_group(client, &found.group_id)? {
            return Err(VaultError::GroupNotFound);
        }
        // Resolved again under the lock (a cache hit): a rotation, retire
        // and destroy that all committed before the lock was granted cannot
        // leave this value sealed under a destroyed key.
        let sealing = seal_key(client, key_group, &mut key)?;
        if sealing.group_id != found.group_id {
            return Err(VaultError::GroupNotFound);
        }
        let id = secret_vault_core::keys::random_uuid_v4();
        let now = catalog::clock();
        let ct = seal_with(&key, sealing, &id, 1, value.as_bytes())?;
        let new = NewSecret {
            ciphertext: &ct,
            id,
            name,
            kind,
            description,
            group_id: sealing.group_id,
            rotation_interval,
            grace_period,
            generator,
        };
        if !secret_store::insert(client, &new, now)? {
            return Err(VaultError::SecretExists(name.to_string()));
        }
        coherence::note_write();
        Ok(Uuid::from_bytes(id))
    })
}

/// Stores a secret set by hand; returns its id.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn create_secret(
    name: Option<&str>,
    value: Option<&str>,
    description: default!(Option<&str>, "NULL"),
    key_group: default!(Option<&str>, "NULL"),
) -> Uuid {
    let name = required(name, "name").or_raise();
    sealing_allowed("create_secret", key_group);
    access::write("create_secret", Privilege::Write, name, || {
        let value = required(value, "value")?;
        create(name, "manual", value, description, key_group, None, None, None)
    })
}

/// Sealing under a key group named by the caller needs `encrypt` on it
/// (the default group is the vault's own).
fn sealing_allowed(action: &'static str, key_group: Option<&str>) {
    if let Some(g) = key_group {
        access::check(action, Privilege::Encrypt, g).or_raise();
    }
}

/// Stores a secret whose values are generated and rotated on a schedule.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn create_rotating_secret(
    name: Option<&str>,
    rotation_interval: Option<Interval>,
    grace_period: default!(Option<Interval>, "'1 hour'"),
    generator: default!(Option<&str>, "'base64url:32'"),
    description: default!(Option<&str>, "NULL"),
    key_group: default!(Option<&str>, "NULL"),
) -> Uuid {
    let name = required(name, "name").or_raise();
    sealing_allowed("create_rotating_secret", key_group);
    access::write("create_rotating_secret", Privilege::Write, name, || {
        let interval = required(rotation_interval, "rotation_interval")?;
        let grace = required(grace_period, "grace_period")?;
        let spec = required(generator, "generator")?;
        policy::validate_interval("rotation_interval", catalog::span(&interval), true)?;
        policy::validate_interval("grace_period", catalog::span(&grace), false)?;
        catalog::check_schedule("rotation_interval", &interval, true)?;
        catalog::check_schedule("grace_period", &grace, false)?;
        let value = Generator::parse(spec)?.generate();
        create(name, "rotating", &value, description, key_group, Some(interval), Some(grace), Some(spec))
    })
}

/// The current value.
#[pg_extern(stable, strict, parallel_safe)]
fn read_secret(name: &str) -> SecretText {
    access::read("read_secret", Privilege::Read, name, || {
        let (s, values) = live(name)?;
        let v = values
            .iter()
            .find(|v| v.version == s.current_version)
            .ok_or_else(|| VaultError::Internal("the secret has no current value".into()))?;
        utf8(open(&s.group, &s.id, v.version, &v.ciphertext, "vault.read_secret")?)
    })
}

/// Whether `candidate` is the current value or one still inside its grace
/// window. Every live value is decrypted and compared, in constant time,
/// whichever matches.
#[pg_extern(stable, strict, parallel_safe)]
fn verify_secret(name: &str, candidate: &str) -> bool {
    access::check("verify_secret", Privilege::Verify, name).or_raise();
    let ok = (|| {
        let (s, values) = live(name)?;
        let now = catalog::now_micros();
        let mut plain: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(values.len());
        for v in &values {
            if secret::still_valid(v.version == s.current_version, v.valid_until, now) {
                plain.push(open(&s.group, &s.id, v.version, &v.ciphertext, "vault.verify_secret")?);
            }
        }
        Ok(secret::verify(candidate.as_bytes(), plain.iter().map(|p| p.as_slice())))
    })()
    .unwrap_or_else(|e: VaultError| e.raise_recorded(|code| audit::read_failed("verify_secret", name, code)));
    if ok {
        audit::read_ok("verify_secret", name).or_raise();
    } else {
        // What a guess looks like: counted toward the caller's lockout and
        // recorded (as "mismatch", never as a read), whether or not reads
        // are audited.
        audit::mismatch("verify_secret", name);
        access::failed_verification("verify_secret", name);
    }
    ok
}

fn next_version(
    client: &mut pgrx::spi::SpiClient<'_>,
    name: &str,
    value: Option<&str>,
    op: &'static str,
) -> VaultResult<i32> {
    for _ in 0..8 {
        let s = secret_store::get(client, name)?;
        let generated;
        let value: &str = match value {
            Some(v) => v,
            None => {
                let spec = s.generator.as_deref().filter(|_| s.rotating()).ok_or_else(|| VaultError::ManualSecret(name.to_string()))?;
                generated = Generator::parse(spec)?.generate();
                &generated
            }
        };
        let next = s.current_version.checked_add(1).ok_or_else(|| VaultError::VersionOverflow(name.to_string()))?;
        let ct = seal(&s.group, &s.id, next, value.as_bytes(), op)?;
        let now = catalog::clock();
        if secret_store::claim_next(client, name, next, &ct, now, None)? {
            coherence::note_change(&dirty_key(name), None, false);
            return Ok(next);
        }
    }
    Err(VaultError::RotationContention(name.to_string()))
}

/// Sets a new value; returns its version. A manual secret's previous value
/// stops verifying at once; a rotating one's after its grace period.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn update_secret(name: &str, value: &str) -> i32 {
    access::write("update_secret", Privilege::Write, name, || {
        require_writable("update a secret")?;
        validate_value(value)?;
        Spi::connect_mut(|c| next_version(c, name, Some(value), "vault.update_secret"))
    })
}

/// Generates a new value for a rotating secret now; returns its version.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_secret(name: &str) -> i32 {
    access::write("rotate_secret", Privilege::Rotate, name, || {
        require_writable("rotate a secret")?;
        Spi::connect_mut(|c| next_version(c, name, None, "vault.rotate_secret"))
    })
}

/// Deletes a secret and erases every ciphertext of it.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn delete_secret(name: &str) {
    access::write("delete_secret", Privilege::Write, name, || {
        require_writable("delete a secret")?;
        Spi::connect_mut(|c| {
            if !secret_store::delete(c, name)? {
                return Err(VaultError::SecretNotFound);
            }
            coherence::note_change(&dirty_key(name), None, false);
            Ok(())
        })
    })
}

/// Every version's metadata; never a value.
#[pg_extern(stable, strict, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn secret_versions(
    name: &str,
) -> TableIterator<
    'static,
    (
        name!(version, i32),
        name!(created_at, TimestampWithTimeZone),
        name!(valid_until, Option<TimestampWithTimeZone>),
        name!(state, String),
    ),
> {
    access::check_visible("secret_versions", name).or_raise();
    let rows = identity::as_owner(|_| Spi::connect(|c| -> VaultResult<_> {
        let s = secret_store::get(c, name)?;
        let now = catalog::now_micros();
        Ok(secret_store::versions(c, &s.id)?
            .into_iter()
            .map(|(v, created, until)| {
                let state = secret::version_state(v == s.current_version, until.map(Into::into), now);
                (v, created, until, state.to_string())
            })
            .collect::<Vec<_>>())
    }))
    .or_raise();
    TableIterator::new(rows)
}

/// Decrypts one stored value for `vault.decrypted_secrets`. It needs the
/// ciphertext, which only the view (as its owner) can read; the AAD binds it
/// to its secret and version. EXECUTE is granted to no role by default, and
/// even with it the caller must hold SELECT on `vault.decrypted_secrets`:
/// it opens nothing for anyone who may not list every value anyway, and
/// then only rows of secrets it may `read`.
#[pg_extern(stable, strict, parallel_safe, name = "_open_secret")]
fn open_secret(name: &str, key_group: &str, secret_id: Uuid, version: i32, ciphertext: &[u8]) -> SecretText {
    access::read("decrypted_secrets", Privilege::Read, name, || {
        let view = identity::current()?.decrypted_secrets_view;
        // SAFETY: an ACL check on a relation by OID; no state is changed.
        let allowed = view != pg_sys::InvalidOid
            && unsafe { pg_sys::pg_class_aclcheck(view, pg_sys::GetUserId(), pg_sys::ACL_SELECT as pg_sys::AclMode) }
                == pg_sys::AclResult::ACLCHECK_OK;
        if !allowed {
            return Err(VaultError::PermissionDenied("view vault.decrypted_secrets"));
        }
        utf8(open(key_group, secret_id.as_bytes(), version, ciphertext, "vault.decrypted_secrets")?)
    })
}
