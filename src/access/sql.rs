//! The SQL face of access control: rules, allowlists, lockouts, and the
//! checks the views call.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use secret_vault_core::access::address::Cidr;
use secret_vault_core::access::glob::Pattern;
use secret_vault_core::access::Privilege;

use crate::audit;
use crate::error::{required, OrRaise, VaultError, VaultResult};
use crate::identity::{self, sql};
use crate::kms::registry::require_superuser;

fn role_arg(role: Option<pg_sys::Oid>) -> VaultResult<(pg_sys::Oid, String)> {
    let oid = required(role, "role")?;
    // SAFETY: a syscache lookup; noerr returns NULL for an OID that names no role.
    let name = unsafe { pg_sys::GetUserNameFromId(oid, true) };
    if name.is_null() {
        return Err(VaultError::Policy(secret_vault_core::PolicyError::Invalid("role does not exist".into())));
    }
    Ok((oid, unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned()))
}

fn privileges_arg(privileges: Option<Vec<Option<String>>>) -> VaultResult<Vec<Privilege>> {
    let list = required(privileges, "privileges")?;
    if list.is_empty() {
        return Err(VaultError::Policy(secret_vault_core::PolicyError::Invalid("privileges must not be empty".into())));
    }
    let mut out = Vec::new();
    for p in list {
        let p = Privilege::parse(p.as_deref().ok_or(VaultError::NullArgument("privileges element"))?)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

fn is_default(role: &str, pattern: &str, p: Privilege) -> bool {
    pattern == "**" && super::DEFAULT_RULES.iter().any(|(r, ps)| *r == role && ps.contains(&p.as_str()))
}

fn note_rules_changed() {
    crate::coherence::note_change(super::RULES_DIRTY, None, false);
}

/// Grants `privileges` on the names `pattern` matches to `role` (and to
/// the roles that have its privileges). Superusers only: rules are what
/// confine every other role, vault_admin included.
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"CREATE FUNCTION vault.grant_access("role" regrole, privileges text[], pattern text) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"#
)]
fn grant_access(role: Option<pg_sys::Oid>, privileges: Option<Vec<Option<String>>>, pattern: Option<&str>) {
    change_rules("grant_access", role, privileges, pattern, true)
}

/// Takes back what `grant_access` gave (also the default rules: the
/// reader and admin roles on '**'). Effective in every session at its next
/// call once committed.
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"CREATE FUNCTION vault.revoke_access("role" regrole, privileges text[], pattern text) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"#
)]
fn revoke_access(role: Option<pg_sys::Oid>, privileges: Option<Vec<Option<String>>>, pattern: Option<&str>) {
    change_rules("revoke_access", role, privileges, pattern, false)
}

/// Adds (`grant`) or removes rules of `role`. A granted pattern must parse;
/// a revoked one is taken as stored, so a row edited by hand can still go.
/// A default rule is granted by forgetting its revocation and revoked by
/// recording one (defaults are not rows: see vault.access_rules).
fn change_rules(
    action: &'static str,
    role: Option<pg_sys::Oid>,
    privileges: Option<Vec<Option<String>>>,
    pattern: Option<&str>,
    grant: bool,
) {
    audit::write(action, pattern, || {
        require_superuser("change access rules")?;
        crate::error::require_writable("change access rules")?;
        let (_, role) = role_arg(role)?;
        let privileges = privileges_arg(privileges)?;
        let pattern = required(pattern, "pattern")?;
        if grant {
            Pattern::parse(pattern)?;
        }
        let (rule_sql, default_sql) = if grant {
            (
                "INSERT INTO vault.access_grants (role, privilege, pattern) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                "DELETE FROM vault.access_defaults_revoked WHERE role OPERATOR(pg_catalog.=) $1
                    AND privilege OPERATOR(pg_catalog.=) $2",
            )
        } else {
            (
                "DELETE FROM vault.access_grants WHERE role OPERATOR(pg_catalog.=) $1
                    AND privilege OPERATOR(pg_catalog.=) $2 AND pattern OPERATOR(pg_catalog.=) $3",
                "INSERT INTO vault.access_defaults_revoked (role, privilege) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
        };
        identity::as_owner_write(|_| {
            Spi::connect_mut(|c| {
                for p in &privileges {
                    c.update(&sql(rule_sql)?, None, &[role.as_str().into(), p.as_str().into(), pattern.into()])?;
                    if is_default(&role, pattern, *p) {
                        c.update(&sql(default_sql)?, None, &[role.as_str().into(), p.as_str().into()])?;
                    }
                }
                Ok(())
            })
        })?;
        note_rules_changed();
        Ok(())
    })
}

/// Limits `role` to client addresses in `addresses` (NULL or empty: no
/// limit). Called through `vault.set_allowed_addresses(regrole, cidr[])`,
/// which hands the ranges over as text.
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"CREATE FUNCTION vault._set_allowed_addresses("role" oid, addresses text[]) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
CREATE FUNCTION vault.set_allowed_addresses("role" regrole, addresses cidr[]) RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT vault._set_allowed_addresses($1::pg_catalog.oid, $2::pg_catalog.text[]) $$;"#,
    requires = [grant_access]
)]
fn set_allowed_addresses_impl(role: Option<pg_sys::Oid>, addresses: Option<Vec<Option<String>>>) {
    let (_, name) = role_arg(role).or_raise();
    audit::write("set_allowed_addresses", Some(&name), || {
        require_superuser("set allowed addresses")?;
        crate::error::require_writable("set allowed addresses")?;
        let list = addresses.unwrap_or_default();
        let mut ranges = Vec::with_capacity(list.len());
        for a in list {
            let a = a.ok_or(VaultError::NullArgument("addresses element"))?;
            ranges.push(Cidr::parse(&a)?.to_string());
        }
        identity::as_owner_write(|_| {
            Spi::connect_mut(|c| {
                if ranges.is_empty() {
                    c.update(&sql("DELETE FROM vault.allowed_addresses WHERE role OPERATOR(pg_catalog.=) $1")?, None, &[name.as_str().into()])?;
                } else {
                    c.update(
                        &sql("INSERT INTO vault.allowed_addresses (role, addresses) VALUES ($1, $2::pg_catalog.cidr[])
                              ON CONFLICT (role) DO UPDATE SET addresses = EXCLUDED.addresses,
                                     change_seq = pg_catalog.nextval('vault.change_seq'::pg_catalog.regclass)")?,
                        None,
                        &[name.as_str().into(), ranges.clone().into()],
                    )?;
                }
                Ok(())
            })
        })?;
        note_rules_changed();
        Ok(())
    })
}

/// Lifts the lockout of `role` from `client_addr` (NULL: every address);
/// how many (role, address) pairs were cleared. Called through
/// `vault.unlock(regrole, inet)`.
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"CREATE FUNCTION vault._unlock("role" oid, client_addr text) RETURNS int
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
CREATE FUNCTION vault.unlock("role" regrole, client_addr inet DEFAULT NULL) RETURNS int
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT vault._unlock($1::pg_catalog.oid, pg_catalog.host($2)) $$;"#,
    requires = [grant_access]
)]
fn unlock_impl(role: Option<pg_sys::Oid>, client_addr: Option<&str>) -> i32 {
    let (oid, name) = role_arg(role).or_raise();
    audit::write("unlock", Some(&name), || {
        // A locked role must not lift its own lock (nor one of a role whose
        // rights it has): only a superuser or an unrelated administrator.
        // SAFETY: membership tests on the backend's own user ids.
        let (user, session) = unsafe { (pg_sys::GetUserId(), pg_sys::GetSessionUserId()) };
        let own = unsafe { pg_sys::has_privs_of_role(user, oid) || pg_sys::has_privs_of_role(session, oid) };
        if own && !unsafe { pg_sys::superuser() } {
            return Err(VaultError::PermissionDenied("vault.unlock of a role the caller acts as (ask another administrator)"));
        }
        let addr = match client_addr {
            None => None,
            Some(a) => {
                let ip: std::net::IpAddr = a.parse().map_err(|_| VaultError::Policy(secret_vault_core::PolicyError::Invalid("invalid client address".into())))?;
                let b = super::client_bytes(secret_vault_core::access::address::Client::Ip(secret_vault_core::access::address::canonical(ip)));
                Some((false, b.expect("an IP address has bytes")))
            }
        };
        Ok(super::lockout::unlock(oid, addr) as i32)
    })
}

/// Every (role, client address) pair with failures or a lock, for the
/// view `vault.lockouts`. Local connections show a NULL address.
#[pg_extern(
    stable,
    parallel_safe,
    sql = r#"CREATE FUNCTION vault._lockouts() RETURNS TABLE ("role" text, client_addr text, failures int, locked_until timestamptz)
LANGUAGE c STABLE PARALLEL SAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"#
)]
#[allow(clippy::type_complexity)]
fn lockouts_impl() -> TableIterator<
    'static,
    (
        name!(role, String),
        name!(client_addr, Option<String>),
        name!(failures, i32),
        name!(locked_until, Option<TimestampWithTimeZone>),
    ),
> {
    let now = crate::catalog::now_micros();
    let rows: Vec<_> = super::lockout::list()
        .into_iter()
        .map(|e| {
            let addr = (!e.local).then(|| crate::audit::writer::addr_text(&e.addr));
            let until = (e.locked_until > now).then(|| TimestampWithTimeZone::try_from(e.locked_until).ok()).flatten();
            (super::role_name(pg_sys::Oid::from(e.role)), addr, e.failures.min(i32::MAX as u32) as i32, until)
        })
        .collect();
    TableIterator::new(rows)
}

/// Whether the caller holds any privilege on `name` (the metadata views).
#[pg_extern(stable, strict, parallel_safe, name = "_visible")]
fn visible_sql(name: &str) -> bool {
    super::visible(name).or_raise()
}

/// Whether the caller holds `privilege` on `name` (rows of
/// `vault.decrypted_secrets`).
#[pg_extern(stable, strict, parallel_safe, name = "_may")]
fn may_sql(privilege: &str, name: &str) -> bool {
    (|| super::holds(Privilege::parse(privilege)?, name))().or_raise()
}
