//! Who may do what to which name: access rules (privileges of roles on name
//! patterns), client address allowlists and lockout, checked by every SQL
//! entry point before it touches a key or a value (docs/access.md).
//!
//! Rules live in tables (`vault.access_rules` shows them); each backend
//! keeps them compiled, with its decisions per (role, name), and drops both
//! when the shared epoch moves (a committed grant or revoke bumps it; on a
//! standby or subscriber the worker's sync does), when role membership or
//! attributes change (a syscache callback), or when the extension is
//! re-resolved. So a revoke takes effect in every open session at its next
//! call, and a warm check costs one hash lookup.
//!
//! Superusers pass, and so does the tables' owner (the extension's own
//! queries, the worker): rules bound roles, not the vault's own work.

pub mod lockout;
pub mod sql;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pgrx::prelude::*;
use secret_vault_core::access::address::{self, Cidr, Client, LocalPolicy};
use secret_vault_core::access::glob::Pattern;
use secret_vault_core::access::{self as rules, Privilege, Privileges};

use crate::error::{VaultError, VaultResult};
use crate::{audit, coherence, guc, identity, shmem};

/// Coherence key of the rules: the transaction that changes them reads
/// them fresh until it ends.
pub(crate) const RULES_DIRTY: &str = "access\u{0}rules";

/// The rules every installation starts with (kept virtual: see
/// `vault.access_rules`), so that installing or upgrading keeps today's
/// behaviour until an administrator removes them.
pub const DEFAULT_RULES: &[(&str, &[&str])] = &[
    ("vault_reader", &["read", "verify", "encrypt", "decrypt"]),
    ("vault_admin", &["read", "verify", "encrypt", "decrypt", "write", "rotate"]),
];

struct LoadedRule {
    role: pg_sys::Oid,
    privileges: Privileges,
    pattern: Pattern,
}

#[derive(Default)]
struct Cache {
    epoch: u64,
    generation: u64,
    membership: u64,
    rules: Vec<LoadedRule>,
    lists: HashMap<pg_sys::Oid, Vec<Cidr>>,
    /// (current user, session user) → name → (privileges, refused by address)
    decisions: HashMap<(pg_sys::Oid, pg_sys::Oid), HashMap<String, Decision>>,
    entries: usize,
    last: Option<(pg_sys::Oid, pg_sys::Oid, String, Decision)>,
    /// `secret_vault.local_connections` when the decisions were made (a
    /// reload may change it under an open session).
    local: Option<LocalPolicy>,
}

#[derive(Clone, Copy, Default)]
struct Decision {
    privileges: Privileges,
    address_refused: bool,
}

const MAX_DECISIONS: usize = 50_000;

thread_local! {
    static CACHE: RefCell<Option<Cache>> = const { RefCell::new(None) };
    /// Bumped by the syscache callbacks on roles and memberships.
    static MEMBERSHIP: Cell<u64> = const { Cell::new(0) };
    static CLIENT: Cell<Option<Client>> = const { Cell::new(None) };
}

/// The caller of a SQL function, as access rules see it.
#[derive(Clone, Copy)]
pub struct Caller {
    pub user: pg_sys::Oid,
    pub session: pg_sys::Oid,
    pub exempt: bool,
}

pub fn caller() -> VaultResult<Caller> {
    let ident = identity::current()?;
    // SAFETY: reads of the backend's user ids; superuser() is cached by PostgreSQL.
    let (user, session) = unsafe { (pg_sys::GetUserId(), pg_sys::GetSessionUserId()) };
    let exempt = user == ident.owner || unsafe { pg_sys::superuser() };
    Ok(Caller { user, session, exempt })
}

/// Where this backend's client connected from (fixed for its lifetime).
pub fn client() -> Client {
    if let Some(c) = CLIENT.get() {
        return c;
    }
    let c = unsafe { read_client() };
    CLIENT.set(Some(c));
    c
}

unsafe fn read_client() -> Client {
    unsafe {
        if pg_sys::ParallelWorkerNumber >= 0 {
            // A parallel worker has no client of its own: it acts for its
            // leader's, which the activity statistics record.
            return leader_client();
        }
        let port = pg_sys::MyProcPort;
        if port.is_null() {
            return Client::Local;
        }
        // `Port` is opaque to the bindings; its first field has always been
        // the client socket (`pgsocket sock`), so ask the kernel for the peer.
        let fd = *(port as *const libc::c_int);
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return Client::Local;
        }
        from_sockaddr(&ss)
    }
}

/// The client of this parallel worker's leader, from the leader's entry in
/// the activity statistics; Unknown (no allowlist matches) if not found.
unsafe fn leader_client() -> Client {
    unsafe {
        let me = pg_sys::MyProc;
        if me.is_null() || (*me).lockGroupLeader.is_null() {
            return Client::Unknown;
        }
        let leader = (*(*me).lockGroupLeader).pid;
        for i in 1..=pg_sys::pgstat_fetch_stat_numbackends() {
            // By index, 1-based: PostgreSQL 16 made this its own function.
            #[cfg(feature = "pg15")]
            let e = pg_sys::pgstat_fetch_stat_beentry(i);
            #[cfg(not(feature = "pg15"))]
            let e = {
                let local = pg_sys::pgstat_get_local_beentry_by_index(i);
                if local.is_null() { std::ptr::null_mut() } else { &raw mut (*local).backendStatus }
            };
            if !e.is_null() && (*e).st_procpid == leader {
                let ss = &(*e).st_clientaddr.addr as *const pg_sys::sockaddr_storage as *const libc::sockaddr_storage;
                return if (*e).st_clientaddr.salen == 0 { Client::Local } else { from_sockaddr(&*ss) };
            }
        }
        Client::Unknown
    }
}

unsafe fn from_sockaddr(ss: &libc::sockaddr_storage) -> Client {
    unsafe {
        match ss.ss_family as i32 {
            libc::AF_INET => {
                let sin = &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in);
                Client::Ip(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in6);
                Client::Ip(address::canonical(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))))
            }
            _ => Client::Local,
        }
    }
}

/// The client as 16 bytes (IPv4 mapped into IPv6) for lockout keys and
/// audit records; None for local connections.
pub fn client_bytes(c: Client) -> Option<[u8; 16]> {
    match c {
        Client::Ip(IpAddr::V4(v4)) => Some(v4.to_ipv6_mapped().octets()),
        Client::Ip(IpAddr::V6(v6)) => Some(v6.octets()),
        Client::Local | Client::Unknown => None,
    }
}

fn local_policy() -> LocalPolicy {
    match guc::LOCAL_CONNECTIONS.get() {
        guc::LocalConnections::Loopback => LocalPolicy::Loopback,
        guc::LocalConnections::Allow => LocalPolicy::Allow,
        guc::LocalConnections::Deny => LocalPolicy::Deny,
    }
}

fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup; noerr=true returns NULL for a dropped role.
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            format!("oid {}", oid.to_u32())
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

pub fn current_role_name() -> String {
    role_name(unsafe { pg_sys::GetUserId() })
}

pub fn session_role_name() -> String {
    role_name(unsafe { pg_sys::GetSessionUserId() })
}

/// Checks that the caller holds `privilege` on `name`; a refusal is
/// counted toward the caller's lockout and recorded in the audit log under
/// `action`. Every SQL entry point that names a group, secret or
/// credential calls this first.
pub fn check(action: &'static str, privilege: Privilege, name: &str) -> VaultResult<()> {
    guard(action, name, privilege.as_str(), |p| p.has(privilege))
}

/// Refuses (as `check` does) a caller who holds no privilege at all on
/// `name`: metadata of a single object (`vault.secret_versions`).
pub fn check_visible(action: &'static str, name: &str) -> VaultResult<()> {
    guard(action, name, "see", |p| p.any())
}

fn guard(action: &'static str, name: &str, label: &'static str, enough: impl Fn(Privileges) -> bool) -> VaultResult<()> {
    let c = caller()?;
    if c.exempt {
        return Ok(());
    }
    lockout::refuse_if_locked(action, Some(name), c.session)?;
    let d = decide(&c, name)?;
    if enough(d.privileges) {
        return Ok(());
    }
    refuse(action, Some(name), &c, label, d.address_refused)
}

/// Whether the caller holds any privilege on `name` (the metadata views
/// and `vault.secret_versions` show only such names). Never counted or
/// recorded: listing is not an attempt.
pub fn visible(name: &str) -> VaultResult<bool> {
    let c = caller()?;
    if c.exempt {
        return Ok(true);
    }
    Ok(decide(&c, name)?.privileges.any())
}

/// Whether the caller holds `privilege` on `name`, without counting or
/// recording a refusal (rows of `vault.decrypted_secrets`).
pub fn holds(privilege: Privilege, name: &str) -> VaultResult<bool> {
    let c = caller()?;
    Ok(c.exempt || decide(&c, name)?.privileges.has(privilege))
}

/// Refuses a call: counts the failure, records the denial (and a lockout
/// it causes), and returns the error to raise.
fn refuse<T>(action: &'static str, object: Option<&str>, c: &Caller, privilege: &'static str, address: bool) -> VaultResult<T> {
    let object = recordable(object);
    audit::refused(action, object, "42501");
    lockout::failure(action, object, c.session);
    Err(VaultError::AccessDenied { role: role_name(c.user), privilege, address })
}

/// The name a refused call is recorded under: only a name that exists (a
/// group, a secret or a minted credential). A refused name that matches nothing may be a value
/// passed in the wrong argument, and the audit log never holds values.
pub(crate) fn recordable(object: Option<&str>) -> Option<&str> {
    let name = object?;
    let known = identity::as_owner(|_| {
        Spi::connect(|c| -> VaultResult<bool> {
            Ok(c.select(
                &identity::sql(
                    "SELECT EXISTS (SELECT 1 FROM vault.key_groups WHERE name OPERATOR(pg_catalog.=) $1)
                         OR EXISTS (SELECT 1 FROM vault.secret_store WHERE name OPERATOR(pg_catalog.=) $1)
                         OR EXISTS (SELECT 1 FROM vault.credential_store WHERE name OPERATOR(pg_catalog.=) $1)",
                )?,
                Some(1),
                &[name.into()],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false))
        })
    });
    known.unwrap_or(false).then_some(name)
}

/// A failed verification (of a secret that exists, so its name may be
/// recorded): counted toward the lockout like a denial.
pub fn failed_verification(action: &'static str, name: &str) {
    if let Ok(c) = caller() {
        if !c.exempt {
            lockout::failure(action, Some(name), c.session);
        }
    }
}

fn decide(c: &Caller, name: &str) -> VaultResult<Decision> {
    let dirty = coherence::is_dirty(RULES_DIRTY);
    let epoch = shmem::epoch().unwrap_or(0);
    let generation = identity::generation();
    let membership = MEMBERSHIP.get();
    let local = local_policy();
    let (hit, from_last) = CACHE.with(|cache| {
        let cache = cache.borrow();
        let Some(cache) = cache.as_ref() else { return (None, false) };
        if dirty
            || cache.epoch != epoch
            || cache.generation != generation
            || cache.membership != membership
            || cache.local != Some(local)
        {
            return (None, false);
        }
        // The name asked last (an application repeats its few names):
        // a compare instead of a hash.
        if let Some((u, s, n, d)) = &cache.last {
            if *u == c.user && *s == c.session && n == name {
                return (Some(Some(*d)), true);
            }
        }
        (Some(cache.decisions.get(&(c.user, c.session)).and_then(|m| m.get(name).copied())), false)
    });
    if let Some(Some(d)) = hit {
        if !from_last {
            CACHE.with(|cache| {
                if let Some(cache) = cache.borrow_mut().as_mut() {
                    cache.last = Some((c.user, c.session, name.to_string(), d));
                }
            });
        }
        return Ok(d);
    }
    if hit.is_none() {
        let (rules, lists) = load()?;
        let fresh = Cache { epoch, generation, membership, rules, lists, local: Some(local), ..Default::default() };
        if dirty {
            // This transaction changed the rules: decide from what it sees,
            // and keep nothing (it may yet roll back).
            return Ok(evaluate(&fresh, c, name));
        }
        CACHE.with(|cache| *cache.borrow_mut() = Some(fresh));
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let cache = cache.as_mut().expect("loaded above");
        let d = evaluate(cache, c, name);
        if cache.entries >= MAX_DECISIONS {
            cache.decisions.clear();
            cache.entries = 0;
        }
        cache.decisions.entry((c.user, c.session)).or_default().insert(name.to_string(), d);
        cache.entries += 1;
        Ok(d)
    })
}

fn evaluate(cache: &Cache, c: &Caller, name: &str) -> Decision {
    let client = client();
    let local = local_policy();
    let usable = |role: pg_sys::Oid| cache.lists.get(&role).is_none_or(|l| address::allowed(l, client, local));
    // The roles the connection acts as are bound by their own lists,
    // whatever rule would apply.
    if !usable(c.user) || !usable(c.session) {
        return Decision { privileges: Privileges::default(), address_refused: true };
    }
    let applicable = cache.rules.iter().filter(|r| {
        // SAFETY: a membership test; PostgreSQL caches it per role.
        r.role == c.user || unsafe { pg_sys::has_privs_of_role(c.user, r.role) }
    });
    let mut limited = false;
    let privileges = rules::privileges_on(
        applicable.map(|r| {
            let ok = usable(r.role);
            limited |= !ok && r.pattern.matches(name);
            rules::Rule { privileges: r.privileges, pattern: &r.pattern, usable: ok }
        }),
        name,
    );
    Decision { privileges, address_refused: !privileges.any() && limited }
}

/// Reads the rules and allowlists (as the tables' owner, fresh snapshot).
/// Roles are stored by name (they survive a dump into another cluster);
/// a rule whose role does not exist gives nothing.
fn load() -> VaultResult<(Vec<LoadedRule>, HashMap<pg_sys::Oid, Vec<Cidr>>)> {
    let (rows, lists) = identity::as_owner(|_| {
        Spi::connect(|c| -> VaultResult<_> {
            let mut rows = Vec::new();
            for r in c.select(&identity::sql("SELECT role::pg_catalog.text, privilege, pattern FROM vault.access_rules")?, None, &[])? {
                let role: Option<String> = r.get(1)?;
                let privilege: Option<String> = r.get(2)?;
                let pattern: Option<String> = r.get(3)?;
                if let (Some(a), Some(b), Some(p)) = (role, privilege, pattern) {
                    rows.push((a, b, p));
                }
            }
            let mut lists = Vec::new();
            for r in c.select(
                &identity::sql("SELECT role::pg_catalog.text, addresses::pg_catalog.text[] FROM vault.allowed_addresses")?,
                None,
                &[],
            )? {
                let role: Option<String> = r.get(1)?;
                let addrs: Option<Vec<Option<String>>> = r.get(2)?;
                if let Some(role) = role {
                    lists.push((role, addrs.unwrap_or_default()));
                }
            }
            Ok((rows, lists))
        })
    })?;
    let mut by_role: HashMap<(pg_sys::Oid, String), Privileges> = HashMap::new();
    for (role, privilege, pattern) in rows {
        let Some(oid) = role_oid(&role) else { continue };
        // A row edited by hand into something invalid gives nothing (fail closed).
        let Ok(p) = Privilege::parse(&privilege) else { continue };
        by_role.entry((oid, pattern)).or_default().add(p);
    }
    let rules = by_role
        .into_iter()
        .filter_map(|((role, pattern), privileges)| Pattern::parse(&pattern).ok().map(|pattern| LoadedRule { role, privileges, pattern }))
        .collect();
    let mut out = HashMap::new();
    for (role, addrs) in lists {
        let Some(oid) = role_oid(&role) else { continue };
        // An unparsable entry matches nothing, so a list never widens.
        let list: Vec<Cidr> = addrs.into_iter().flatten().filter_map(|a| Cidr::parse(&a).ok()).collect();
        out.insert(oid, list);
    }
    Ok((rules, out))
}

fn role_oid(name: &str) -> Option<pg_sys::Oid> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a syscache lookup; missing_ok returns InvalidOid.
    let oid = unsafe { pg_sys::get_role_oid(c.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

#[pg_guard]
unsafe extern "C-unwind" fn on_roles(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    MEMBERSHIP.set(MEMBERSHIP.get().wrapping_add(1));
}

/// Registers the role and membership invalidation callbacks; called from
/// `_PG_init` in the postmaster, so every backend inherits them.
pub fn init() {
    unsafe {
        for cache in [pg_sys::SysCacheIdentifier::AUTHOID, pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE, pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM] {
            pg_sys::CacheRegisterSyscacheCallback(cache as i32, Some(on_roles), pg_sys::Datum::from(0));
        }
    }
    lockout::init();
}

/// A write entry point: checks the caller's `privilege` on `name`, records
/// the action in the audit log, and runs `f` as the tables' owner (the
/// functions are SECURITY INVOKER so that both see the real caller).
pub fn write<T>(action: &'static str, privilege: Privilege, name: &str, f: impl FnOnce() -> VaultResult<T>) -> T {
    if let Err(e) = check(action, privilege, name) {
        e.raise();
    }
    audit::write(action, Some(name), || identity::as_owner_write(|_| f()))
}

/// A read entry point: checks the caller's `privilege` on `name` and runs
/// `f`, recorded when reads are audited.
#[inline]
pub fn read<T>(action: &'static str, privilege: Privilege, name: &str, f: impl FnOnce() -> VaultResult<T>) -> T {
    if let Err(e) = check(action, privilege, name) {
        e.raise();
    }
    match audit::read(action, name, f) {
        Ok(v) => v,
        Err(e) => e.raise_recorded(|code| audit::read_failed(action, name, code)),
    }
}
