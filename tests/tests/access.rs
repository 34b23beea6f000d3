//! Access rules, client address allowlists, lockout and the audit log end
//! to end (issue 11): real clusters, roles that log in over loopback TCP or
//! a Unix socket, and a relay that makes a second client address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use postgres::types::ToSql;
use secret_vault_it::relay::Relay;
use secret_vault_it::{eventually, pg_major, Client, Cluster, NoTls};

const SENTINEL: &str = "SENTINEL-a11ce55-7e5t-4c1d";

/// How long the audit worker gets to write a record (it usually takes 1-2 s).
const AUDIT_WAIT: Duration = Duration::from_secs(10);

const READER_DEFAULTS: &str = "SELECT vault.revoke_access('vault_reader', ARRAY['read','verify','encrypt','decrypt'], '**')";

fn connect(c: &Cluster, user: &str) -> Client {
    connect_with(c, user, "")
}

fn connect_with(c: &Cluster, user: &str, extra: &str) -> Client {
    let info = format!("host=127.0.0.1 port={} user={user} dbname=postgres connect_timeout=10 {extra}", c.port);
    Client::connect(&info, NoTls).unwrap_or_else(|e| panic!("connect {info}: {e}"))
}

/// A connection over the cluster's Unix socket.
fn connect_unix(c: &Cluster, user: &str) -> Client {
    let info = format!("host={} port={} user={user} dbname=postgres connect_timeout=10", c.dir.display(), c.port);
    Client::connect(&info, NoTls).unwrap_or_else(|e| panic!("connect {info}: {e}"))
}

/// Lets clients from all of 127.0.0.0/8 in (initdb's pg_hba.conf trusts
/// 127.0.0.1/32 only); before `start`, or followed by a reload.
fn trust_loopback_net(c: &Cluster) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(c.data.join("pg_hba.conf")).unwrap();
    f.write_all(b"host all all 127.0.0.0/8 trust\n").unwrap();
}

/// A failed call's SQLSTATE, and everything the client was told (message,
/// detail, hint) so that tests can check what it does not say.
#[derive(Debug)]
struct Failure {
    code: String,
    message: String,
    told: String,
}

fn failure(e: postgres::Error, sql: &str) -> Failure {
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not a database error: {e}"));
    Failure {
        code: db.code().code().to_string(),
        message: db.message().to_string(),
        told: format!("{} {} {}", db.message(), db.detail().unwrap_or(""), db.hint().unwrap_or("")),
    }
}

fn fails(db: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Failure {
    match db.query(sql, params) {
        Ok(rows) => panic!("{sql}: expected an error, got {} row(s)", rows.len()),
        Err(e) => failure(e, sql),
    }
}

fn ok(db: &mut Client, sql: &str) {
    db.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error().map(|d| d.message())));
}

fn read(db: &mut Client, name: &str) -> Result<String, Failure> {
    db.query_one("SELECT vault.read_secret($1)", &[&name])
        .map(|r| r.get(0))
        .map_err(|e| failure(e, "read_secret"))
}

fn verify(db: &mut Client, name: &str, candidate: &str) -> Result<bool, Failure> {
    db.query_one("SELECT vault.verify_secret($1, $2)", &[&name, &candidate])
        .map(|r| r.get(0))
        .map_err(|e| failure(e, "verify_secret"))
}

fn names(db: &mut Client, sql: &str) -> Vec<String> {
    db.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect()
}

fn count(db: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    db.query_one(sql, params).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// (outcome, sqlstate, role) of the audit records of `action` on `object`, oldest first.
fn audit(db: &mut Client, action: &str, object: &str) -> Vec<(String, Option<String>, String)> {
    db.query(
        "SELECT outcome, sqlstate, role FROM vault.audit_log WHERE action = $1 AND object IS NOT DISTINCT FROM $2 ORDER BY id",
        &[&action, &object],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Waits until the audit log holds a record of `action` on `object` with `outcome`.
fn await_audit(db: &mut Client, action: &str, object: &str, outcome: &str) {
    let seen = eventually(AUDIT_WAIT, || audit(db, action, object).iter().any(|(o, _, _)| o == outcome));
    assert!(seen, "no audit record ({action}, {object}, {outcome}); have {:?}", audit(db, action, object));
}

/// The denial a scoped role gets: SQLSTATE 42501, the documented message,
/// and never the name it asked for.
fn assert_denied(f: &Failure, role: &str, privilege: &str, name: &str, what: &str) {
    assert_eq!(f.code, "42501", "{what}: {}", f.told);
    assert_eq!(
        f.message,
        format!("permission denied: no access rule lets role \"{role}\" {privilege} this object"),
        "{what}"
    );
    assert!(!f.told.contains(name), "{what}: the refusal names the object: {}", f.told);
}

#[test]
fn a_role_scoped_to_one_prefix_reaches_only_those_names_through_every_function_and_view() {
    // Many denials below: lockout is not what this test is about.
    let c = Cluster::start_with("access-scope", &["secret_vault.lockout_threshold = 0"]);
    let mut su = c.client();
    ok(
        &mut su,
        &format!(
            "CREATE ROLE pay LOGIN IN ROLE vault_reader;
             {READER_DEFAULTS};
             SELECT vault.grant_access('pay', ARRAY['read','verify','encrypt','decrypt'], 'stripe/*');
             GRANT SELECT ON vault.decrypted_secrets TO pay;
             GRANT EXECUTE ON FUNCTION vault._open_secret(text, text, uuid, int, bytea) TO pay;
             SELECT vault.create_secret('stripe/key', 'sk-stripe');
             SELECT vault.create_secret('github/key', 'gh-token');
             SELECT vault.create_group('stripe/sign', propagation_delay => '0');
             SELECT vault.create_group('github/sign', propagation_delay => '0');
             SELECT vault.create_group('stripe/pii', 'encrypt');
             SELECT vault.create_group('github/pii', 'encrypt');"
        ),
    );
    let rules: Vec<(String, String, String)> = su
        .query("SELECT role::text, privilege, pattern FROM vault.access_rules WHERE role::text IN ('pay', 'vault_reader') ORDER BY 1, 2", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected: Vec<(String, String, String)> = ["decrypt", "encrypt", "read", "verify"]
        .iter()
        .map(|p| ("pay".to_string(), p.to_string(), "stripe/*".to_string()))
        .collect();
    assert_eq!(rules, expected, "the reader defaults are gone, pay's rule is listed");
    let github_ct: Vec<u8> = su.query_one("SELECT vault.encrypt('github/pii', 'x')", &[]).unwrap().get(0);

    let mut pay = connect(&c, "pay");
    let mut denials = Vec::new();

    // Secrets: read, verify, versions.
    assert_eq!(read(&mut pay, "stripe/key").unwrap(), "sk-stripe");
    denials.push((read(&mut pay, "github/key").unwrap_err(), "read", "github", "read_secret"));
    assert!(verify(&mut pay, "stripe/key", "sk-stripe").unwrap());
    denials.push((verify(&mut pay, "github/key", "gh-token").unwrap_err(), "verify", "github", "verify_secret"));
    assert_eq!(count(&mut pay, "SELECT count(*) FROM vault.secret_versions('stripe/key')", &[]), 1);
    let f = fails(&mut pay, "SELECT * FROM vault.secret_versions('github/key')", &[]);
    assert_eq!(f.code, "42501", "secret_versions: {}", f.told);
    assert!(!f.told.contains("github"), "secret_versions names the object: {}", f.told);

    // Export groups: current and resolve.
    let row = pay.query_one("SELECT version, key FROM vault.current('stripe/sign')", &[]).unwrap();
    let (v, key): (i32, Vec<u8>) = (row.get(0), row.get(1));
    let resolved: Vec<u8> = pay.query_one("SELECT vault.resolve('stripe/sign', $1)", &[&v]).unwrap().get(0);
    assert_eq!(resolved, key);
    denials.push((fails(&mut pay, "SELECT * FROM vault.current('github/sign')", &[]), "read", "github", "current"));
    denials.push((fails(&mut pay, "SELECT vault.resolve('github/sign', 1)", &[]), "read", "github", "resolve"));

    // Encrypt groups: encrypt and decrypt.
    let ct: Vec<u8> = pay.query_one("SELECT vault.encrypt('stripe/pii', 'card')", &[]).unwrap().get(0);
    let back: Vec<u8> = pay.query_one("SELECT vault.decrypt('stripe/pii', $1)", &[&ct]).unwrap().get(0);
    assert_eq!(back, b"card");
    denials.push((fails(&mut pay, "SELECT vault.encrypt('github/pii', 'card')", &[]), "encrypt", "github", "encrypt"));
    denials.push((fails(&mut pay, "SELECT vault.decrypt('github/pii', $1)", &[&github_ct]), "decrypt", "github", "decrypt"));

    // A name that does not exist is refused exactly like one that does:
    // the refusal is no oracle for which names exist.
    denials.push((read(&mut pay, "github/nope").unwrap_err(), "read", "github", "read_secret of a missing name"));
    let missing = read(&mut pay, "stripe/nope").unwrap_err();
    assert_eq!(missing.code, "42704", "a covered missing name is just missing: {}", missing.told);

    for (f, privilege, name, what) in &denials {
        assert_denied(f, "pay", privilege, name, what);
    }

    // Views show only covered names.
    assert_eq!(names(&mut pay, "SELECT name FROM vault.secrets ORDER BY name"), ["stripe/key"]);
    assert_eq!(names(&mut pay, "SELECT name FROM vault.groups ORDER BY name"), ["stripe/pii", "stripe/sign"]);
    assert_eq!(
        names(&mut pay, "SELECT DISTINCT group_name FROM vault.group_versions ORDER BY 1"),
        ["stripe/pii", "stripe/sign"]
    );
    let dec: Vec<(String, String)> = pay
        .query("SELECT name, value FROM vault.decrypted_secrets ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(dec, [("stripe/key".to_string(), "sk-stripe".to_string())]);

    // The superuser passes every rule and sees everything.
    assert_eq!(names(&mut su, "SELECT name FROM vault.secrets WHERE name LIKE '%/key' ORDER BY name"), ["github/key", "stripe/key"]);
    assert_eq!(
        names(&mut su, "SELECT name FROM vault.groups WHERE name ~ '^(stripe|github)/' ORDER BY name"),
        ["github/pii", "github/sign", "stripe/pii", "stripe/sign"]
    );
    assert_eq!(read(&mut su, "github/key").unwrap(), "gh-token");
}

#[test]
fn double_star_spans_one_or_more_segments_and_single_star_only_one() {
    let c = Cluster::start_with("access-glob", &["secret_vault.lockout_threshold = 0"]);
    let mut su = c.client();
    ok(
        &mut su,
        &format!(
            "CREATE ROLE t LOGIN IN ROLE vault_reader;
             {READER_DEFAULTS};
             SELECT vault.create_secret('tenant', 'root');
             SELECT vault.create_secret('tenant/a', 'a');
             SELECT vault.create_secret('tenant/a/b', 'ab');
             SELECT vault.create_secret('tenants/a', 'other');
             SELECT vault.grant_access('t', ARRAY['read'], 'tenant/*');"
        ),
    );
    // A fresh session per rule set: what is checked here is matching, not
    // how fast a change reaches an open session.
    let mut t = connect(&c, "t");
    assert_eq!(read(&mut t, "tenant/a").unwrap(), "a", "'tenant/*' covers tenant/a");
    assert_eq!(read(&mut t, "tenant/a/b").unwrap_err().code, "42501", "'*' stays within one segment");
    assert_eq!(read(&mut t, "tenant").unwrap_err().code, "42501", "'tenant/*' needs a segment after tenant");
    assert_eq!(read(&mut t, "tenants/a").unwrap_err().code, "42501", "segments match whole, not as prefixes");
    assert_eq!(names(&mut t, "SELECT name FROM vault.secrets ORDER BY name"), ["tenant/a"]);
    drop(t);

    ok(
        &mut su,
        "SELECT vault.revoke_access('t', ARRAY['read'], 'tenant/*');
         SELECT vault.grant_access('t', ARRAY['read'], 'tenant/**');",
    );
    let mut t = connect(&c, "t");
    assert_eq!(read(&mut t, "tenant/a").unwrap(), "a", "'**' matches one segment");
    assert_eq!(read(&mut t, "tenant/a/b").unwrap(), "ab", "'**' matches several segments");
    assert_eq!(read(&mut t, "tenant").unwrap_err().code, "42501", "'**' matches one or more segments, never zero");
    assert_eq!(read(&mut t, "tenants/a").unwrap_err().code, "42501");
    assert_eq!(names(&mut t, "SELECT name FROM vault.secrets ORDER BY name"), ["tenant/a", "tenant/a/b"]);
}

#[test]
fn revoke_and_grant_reach_an_open_session_at_its_next_call_once_committed() {
    let c = Cluster::start_with("access-revoke", &["secret_vault.lockout_threshold = 0"]);
    let mut su = c.client();
    ok(&mut su, "CREATE ROLE app LOGIN IN ROLE vault_reader; SELECT vault.create_secret('app/key', 'v1');");
    let mut app = connect(&c, "app");
    // Warm: the session has compiled the rules and cached its decision.
    assert_eq!(read(&mut app, "app/key").unwrap(), "v1");
    assert_eq!(read(&mut app, "app/key").unwrap(), "v1");

    // The default rule is revoked; until that commits, nothing changes.
    let mut tx = su.transaction().unwrap();
    tx.batch_execute(READER_DEFAULTS).unwrap();
    assert_eq!(read(&mut app, "app/key").unwrap(), "v1", "an uncommitted revoke has no effect");
    tx.commit().unwrap();
    let f = read(&mut app, "app/key").unwrap_err();
    assert_denied(&f, "app", "read", "app/key", "the same session right after the revoke committed");

    // A grant reaches the same session the same way.
    ok(&mut su, "SELECT vault.grant_access('app', ARRAY['read'], 'app/*')");
    assert_eq!(read(&mut app, "app/key").unwrap(), "v1", "the grant applies at the next call");
    ok(&mut su, "SELECT vault.revoke_access('app', ARRAY['read'], 'app/*')");
    assert_eq!(read(&mut app, "app/key").unwrap_err().code, "42501", "and so does revoking it");
}

#[test]
fn an_address_allowlist_admits_only_listed_clients_and_unix_sockets_per_setting() {
    // Listen on 127.0.0.2 too (a later line wins over the harness's).
    let mut c = Cluster::init("access-addr", true, &["listen_addresses = '127.0.0.1,127.0.0.2'"]);
    trust_loopback_net(&c);
    c.start();
    let mut su = c.client();
    ok(
        &mut su,
        "CREATE EXTENSION secret_vault;
         CREATE ROLE app LOGIN IN ROLE vault_reader;
         SELECT vault.create_secret('app/key', 'v');
         SELECT vault.set_allowed_addresses('app', '{127.0.0.2/32}');",
    );
    let listed: Vec<String> = names(&mut su, "SELECT addresses::text FROM vault.allowed_addresses WHERE role::text = 'app'");
    assert_eq!(listed, ["{127.0.0.2/32}"]);

    // From 127.0.0.1 (the direct connection): refused.
    let mut direct = connect(&c, "app");
    assert_eq!(names(&mut direct, "SELECT host(inet_client_addr())"), ["127.0.0.1"]);
    let f = read(&mut direct, "app/key").unwrap_err();
    assert_eq!(f.code, "42501", "{}", f.told);
    assert_eq!(f.message, "permission denied: role \"app\" may not use the vault from this client address");
    assert!(!f.told.contains("app/key"));
    assert_eq!(verify(&mut direct, "app/key", "v").unwrap_err().code, "42501");
    assert_eq!(fails(&mut direct, "SELECT * FROM vault.secret_versions('app/key')", &[]).code, "42501");
    assert!(names(&mut direct, "SELECT name FROM vault.secrets").is_empty(), "nothing is listed from a refused address");

    // From 127.0.0.2 (through the relay, bound to that source): allowed.
    let upstream = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), c.port);
    let relay = Relay::start(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), upstream);
    let info = format!("{} user=app dbname=postgres connect_timeout=10", relay.host_port());
    let mut listed_client = Client::connect(&info, NoTls).unwrap();
    assert_eq!(names(&mut listed_client, "SELECT host(inet_client_addr())"), ["127.0.0.2"], "the relay's source address");
    assert_eq!(read(&mut listed_client, "app/key").unwrap(), "v");
    assert!(verify(&mut listed_client, "app/key", "v").unwrap());
    assert_eq!(names(&mut listed_client, "SELECT name FROM vault.secrets"), ["app/key"]);

    // NULL removes the limit: the direct session works again at its next call.
    ok(&mut su, "SELECT vault.set_allowed_addresses('app', NULL)");
    assert_eq!(read(&mut direct, "app/key").unwrap(), "v");

    // Unix sockets: with the default local_connections = loopback, a local
    // connection counts as loopback, which 127.0.0.1/32 allows; 'deny'
    // refuses it (new sessions and the open one alike).
    ok(&mut su, "SELECT vault.set_allowed_addresses('app', '{127.0.0.1/32}')");
    let mut local = connect_unix(&c, "app");
    assert_eq!(names(&mut local, "SELECT coalesce(host(inet_client_addr()), 'local')"), ["local"]);
    assert_eq!(read(&mut local, "app/key").unwrap(), "v", "a Unix socket counts as loopback by default");
    // (ALTER SYSTEM cannot run in the implicit transaction of a multi-statement batch.)
    ok(&mut su, "ALTER SYSTEM SET secret_vault.local_connections = 'deny'");
    ok(&mut su, "SELECT pg_reload_conf()");
    assert!(
        eventually(Duration::from_secs(10), || names(&mut connect_unix(&c, "app"), "SHOW secret_vault.local_connections") == ["deny"]),
        "the reload reached new sessions"
    );
    let f = read(&mut connect_unix(&c, "app"), "app/key").unwrap_err();
    assert_eq!(f.code, "42501", "a new Unix-socket session under 'deny': {}", f.told);
    assert!(f.message.contains("may not use the vault from this client address"), "{}", f.message);
    // TCP from the listed address is unaffected by the Unix-socket setting.
    assert_eq!(read(&mut direct, "app/key").unwrap(), "v");
    drop(listed_client);
    drop(relay);

    // The Unix-socket session opened before the reload: it has reloaded
    // too (SHOW says 'deny'), so its next call is refused like a new
    // session's, a tightened setting being no weaker than a revoke. Both a
    // name it never asked about and the one it read before.
    assert_eq!(names(&mut local, "SHOW secret_vault.local_connections"), ["deny"], "the open session reloaded too");
    let fresh_name = read(&mut local, "app/other").map_err(|f| f.code);
    let asked_before = read(&mut local, "app/key").map_err(|f| f.code);
    assert_eq!(
        (&fresh_name, &asked_before),
        (&Err("42501".to_string()), &Err("42501".to_string())),
        "the open Unix-socket session under 'deny' (read_secret of a new name, of the name it read before)"
    );
}

#[test]
fn repeated_failures_lock_a_role_out_from_its_address_until_unlocked() {
    let mut c = Cluster::init("access-lockout", true, &["secret_vault.lockout_threshold = 3"]);
    trust_loopback_net(&c);
    c.start();
    let mut su = c.client();
    ok(
        &mut su,
        "CREATE EXTENSION secret_vault;
         CREATE ROLE app LOGIN IN ROLE vault_reader;
         CREATE ROLE other LOGIN IN ROLE vault_reader;
         CREATE ROLE ops LOGIN IN ROLE vault_admin;
         SELECT vault.create_secret('app/key', 'right');",
    );
    let mut app = connect(&c, "app");
    for i in 1..=3 {
        assert!(!verify(&mut app, "app/key", "wrong").unwrap(), "guess {i} is answered (false)");
    }
    // Locked: even the right value, and a plain read, are refused.
    let f = verify(&mut app, "app/key", "right").unwrap_err();
    assert_eq!(f.code, "28000", "{}", f.told);
    assert!(!f.told.contains("app/key"));
    assert_eq!(read(&mut app, "app/key").unwrap_err().code, "28000");
    // A new session from the same address is the same pair.
    assert_eq!(read(&mut connect(&c, "app"), "app/key").unwrap_err().code, "28000");

    let rows = su
        .query(
            "SELECT host(client_addr), failures, locked_until > now() + interval '1 minute' FROM vault.lockouts WHERE role = 'app'",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (addr, failures, future): (String, i32, bool) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert_eq!((addr.as_str(), failures, future), ("127.0.0.1", 3, true), "locked for lockout_duration (900 s)");

    // Another role from the same address, the same role from another
    // address, and the superuser (however often it fails) are not locked.
    let mut other = connect(&c, "other");
    assert!(verify(&mut other, "app/key", "right").unwrap());
    assert_eq!(read(&mut other, "app/key").unwrap(), "right");
    let relay = Relay::start(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), SocketAddr::from(([127, 0, 0, 1], c.port)));
    let mut app2 = Client::connect(&format!("{} user=app dbname=postgres", relay.host_port()), NoTls).unwrap();
    assert_eq!(names(&mut app2, "SELECT host(inet_client_addr())"), ["127.0.0.2"]);
    assert_eq!(read(&mut app2, "app/key").unwrap(), "right", "the lock is per (role, address)");
    for _ in 0..5 {
        assert!(!verify(&mut su, "app/key", "wrong").unwrap());
    }
    assert_eq!(read(&mut su, "app/key").unwrap(), "right", "superusers are never locked");

    // Denied calls count as failures too: a role with EXECUTE but no rule
    // is locked after three refusals.
    ok(&mut su, "CREATE ROLE guest LOGIN; GRANT USAGE ON SCHEMA vault TO guest; GRANT EXECUTE ON FUNCTION vault.read_secret(text) TO guest;");
    let mut guest = connect(&c, "guest");
    for i in 1..=3 {
        assert_eq!(read(&mut guest, "app/key").unwrap_err().code, "42501", "refusal {i}");
    }
    assert_eq!(read(&mut guest, "app/key").unwrap_err().code, "28000", "locked after three refusals");
    assert_eq!(count(&mut su, "SELECT count(*) FROM vault.lockouts WHERE role = 'guest' AND failures = 3 AND locked_until > now()", &[]), 1);

    // An administrator (vault_admin, not a superuser) lifts it; the open
    // session works again at its next call.
    let mut ops = connect(&c, "ops");
    let n: i32 = ops.query_one("SELECT vault.unlock('app')", &[]).unwrap().get(0);
    assert_eq!(n, 1, "one (role, address) pair was locked");
    assert!(verify(&mut app, "app/key", "right").unwrap());
    assert_eq!(read(&mut app, "app/key").unwrap(), "right");
    assert_eq!(count(&mut su, "SELECT count(*) FROM vault.lockouts WHERE role = 'app' AND locked_until IS NOT NULL", &[]), 0);

    // The lock is in the audit log, with the guesses that led to it.
    await_audit(&mut su, "verify_secret", "app/key", "locked out");
    let records = audit(&mut su, "verify_secret", "app/key");
    let by_app: Vec<&str> = records.iter().filter(|(_, _, r)| r == "app").map(|(o, _, _)| o.as_str()).collect();
    assert!(by_app.iter().filter(|o| **o == "mismatch").count() >= 3, "{records:?}");
    assert!(records.iter().any(|(o, s, r)| o == "locked out" && s.as_deref() == Some("28000") && r == "app"), "{records:?}");
    drop(app2);
    drop(relay);
}

#[test]
fn the_audit_log_records_how_each_write_denial_and_read_ended() {
    let c = Cluster::start_with("access-audit", &["secret_vault.lockout_threshold = 0"]);
    let mut su = c.client();
    ok(
        &mut su,
        &format!(
            "CREATE ROLE payments NOLOGIN IN ROLE vault_reader;
             CREATE ROLE alice LOGIN IN ROLE payments;
             {READER_DEFAULTS};
             SELECT vault.grant_access('payments', ARRAY['read'], 'stripe/*');"
        ),
    );
    // A committed write.
    ok(&mut su, "SELECT vault.create_secret('stripe/key', 'v')");
    ok(&mut su, "SELECT vault.create_secret('github/key', 'v')");
    // Refusals name only objects that exist (a name matching nothing may be
    // a value passed in the wrong argument): github/other exists.
    ok(&mut su, "SELECT vault.create_secret('github/other', 'v')");
    await_audit(&mut su, "create_secret", "stripe/key", "ok");
    let row = su
        .query_one(
            "SELECT role, session_role, database, sqlstate FROM vault.audit_log WHERE action = 'create_secret' AND object = 'stripe/key'",
            &[],
        )
        .unwrap();
    let (role, session, database, sqlstate): (String, String, String, Option<String>) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((role.as_str(), session.as_str(), database.as_str(), sqlstate), ("postgres", "postgres", "postgres", None));

    // A denial, by a role the session switched to: who (both roles), from
    // where, which application.
    let mut alice = connect_with(&c, "alice", "application_name=payments-api");
    ok(&mut alice, "SET ROLE payments");
    assert_eq!(read(&mut alice, "stripe/key").unwrap(), "v", "covered reads work (and are not recorded: audit_reads is off)");
    assert_eq!(read(&mut alice, "github/key").unwrap_err().code, "42501");
    await_audit(&mut su, "read_secret", "github/key", "denied");
    let row = su
        .query_one(
            "SELECT role, session_role, host(client_addr), application_name, sqlstate, database
               FROM vault.audit_log WHERE action = 'read_secret' AND object = 'github/key'",
            &[],
        )
        .unwrap();
    let got: (String, String, String, String, Option<String>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
    assert_eq!(
        got,
        (
            "payments".into(),
            "alice".into(),
            "127.0.0.1".into(),
            "payments-api".into(),
            Some("42501".into()),
            "postgres".into()
        )
    );

    // A denial in a transaction the caller rolls back is still recorded.
    ok(&mut alice, "BEGIN");
    assert_eq!(read(&mut alice, "github/other").unwrap_err().code, "42501");
    ok(&mut alice, "ROLLBACK");

    // A failed write: its SQLSTATE.
    let f = fails(&mut su, "SELECT vault.create_secret('stripe/key', 'again')", &[]);
    assert_eq!(f.code, "42710");

    // Rolled back writes: the whole transaction, and a savepoint within a
    // committed one.
    ok(&mut su, "BEGIN; SELECT vault.create_secret('rb/tx', 'v'); ROLLBACK;");
    ok(
        &mut su,
        "BEGIN;
         SELECT vault.create_secret('sp/kept', 'v');
         SAVEPOINT s;
         SELECT vault.create_secret('sp/gone', 'v');
         ROLLBACK TO SAVEPOINT s;
         COMMIT;",
    );
    assert_eq!(names(&mut su, "SELECT name FROM vault.secrets WHERE name LIKE 'sp/%'"), ["sp/kept"]);

    // With audit_reads on, a successful read is recorded too.
    ok(&mut su, "SET secret_vault.audit_reads = on");
    assert_eq!(read(&mut su, "github/key").unwrap(), "v");
    assert!(verify(&mut su, "github/key", "v").unwrap());
    assert!(!verify(&mut su, "github/key", "wrong").unwrap());
    ok(&mut su, "RESET secret_vault.audit_reads");

    await_audit(&mut su, "read_secret", "github/other", "denied");
    await_audit(&mut su, "create_secret", "stripe/key", "error");
    await_audit(&mut su, "create_secret", "rb/tx", "rolled back");
    await_audit(&mut su, "create_secret", "sp/kept", "ok");
    await_audit(&mut su, "create_secret", "sp/gone", "rolled back");
    await_audit(&mut su, "read_secret", "github/key", "ok");

    let p = |o: &str, s: Option<&str>, r: &str| (o.to_string(), s.map(str::to_string), r.to_string());
    assert_eq!(audit(&mut su, "read_secret", "github/other"), [p("denied", Some("42501"), "payments")]);
    assert_eq!(
        audit(&mut su, "create_secret", "stripe/key"),
        [p("ok", None, "postgres"), p("error", Some("42710"), "postgres")],
        "one record per call, the failed one with its SQLSTATE"
    );
    assert_eq!(audit(&mut su, "create_secret", "rb/tx"), [p("rolled back", None, "postgres")]);
    assert_eq!(audit(&mut su, "create_secret", "sp/kept"), [p("ok", None, "postgres")]);
    assert_eq!(audit(&mut su, "create_secret", "sp/gone"), [p("rolled back", None, "postgres")]);
    assert_eq!(
        audit(&mut su, "read_secret", "github/key"),
        [p("denied", Some("42501"), "payments"), p("ok", None, "postgres")],
        "the audited read is recorded once, ok"
    );
    // The covered read made while audit_reads was off left no record.
    assert!(audit(&mut su, "read_secret", "stripe/key").is_empty());
    // The grant itself is an audited administrative action.
    assert_eq!(audit(&mut su, "grant_access", "stripe/*"), [p("ok", None, "postgres")]);
    // The two audited verifications: the true one a read that went 'ok',
    // the false one a 'mismatch', once (not also an 'ok' read).
    await_audit(&mut su, "verify_secret", "github/key", "mismatch");
    assert_eq!(audit(&mut su, "verify_secret", "github/key"), [p("ok", None, "postgres"), p("mismatch", None, "postgres")]);
}

/// The ids of the audit records, oldest first.
fn audit_ids(db: &mut Client) -> Vec<i64> {
    db.query("SELECT id FROM vault.audit_log ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

fn verify_audit(db: &mut Client) -> Option<i64> {
    db.query_one("SELECT vault.verify_audit()", &[]).unwrap().get(0)
}

/// Waits until the worker has written the record of every verify_audit()
/// call made so far (each call appends one, after the ones before it), so
/// that the log's last record is known.
fn await_verify_records(db: &mut Client, calls: i64) {
    assert!(
        eventually(AUDIT_WAIT, || count(db, "SELECT count(*) FROM vault.audit_log WHERE action = 'verify_audit'", &[]) == calls),
        "verify_audit records: {} of {calls}",
        count(db, "SELECT count(*) FROM vault.audit_log WHERE action = 'verify_audit'", &[])
    );
}

#[test]
fn verify_audit_names_the_first_edited_deleted_or_reordered_record() {
    let c = Cluster::start_with_extension("access-chain");
    let mut su = c.client();
    for name in ["a", "b", "c", "d", "e"] {
        su.execute("SELECT vault.create_secret($1, 'v')", &[&name]).unwrap();
    }
    await_audit(&mut su, "create_secret", "e", "ok");
    let id = |db: &mut Client, object: &str| -> i64 {
        db.query_one("SELECT id FROM vault.audit_log WHERE action = 'create_secret' AND object = $1", &[&object]).unwrap().get(0)
    };
    let (b, cc, d) = (id(&mut su, "b"), id(&mut su, "c"), id(&mut su, "d"));
    assert!(b < cc && cc < d);
    let mut calls = 0;
    assert_eq!(verify_audit(&mut su), None, "an untouched chain is intact");
    calls += 1;
    await_verify_records(&mut su, calls);
    assert_eq!(verify_audit(&mut su), None, "its own records keep it intact");
    calls += 1;

    // (a) An edited record is named; put back, the chain is intact again.
    ok(&mut su, &format!("UPDATE vault.audit_log SET outcome = 'denied' WHERE id = {b}"));
    assert_eq!(verify_audit(&mut su), Some(b), "edited outcome");
    calls += 1;
    ok(&mut su, &format!("UPDATE vault.audit_log SET outcome = 'ok' WHERE id = {b}"));
    assert_eq!(verify_audit(&mut su), None, "restored");
    calls += 1;
    ok(&mut su, &format!("UPDATE vault.audit_log SET application_name = application_name || 'x' WHERE id = {d}"));
    assert_eq!(verify_audit(&mut su), Some(d), "edited application_name");
    calls += 1;
    ok(&mut su, &format!("UPDATE vault.audit_log SET application_name = left(application_name, -1) WHERE id = {d}"));
    assert_eq!(verify_audit(&mut su), None);
    calls += 1;

    // (c) Two records swapped whole (MACs included), ids kept: the first
    // out of order is named.
    let swap = format!(
        "UPDATE vault.audit_log l SET (at, database, role, session_role, client_addr, application_name, action, object, outcome, sqlstate, mac) =
                (SELECT o.at, o.database, o.role, o.session_role, o.client_addr, o.application_name, o.action, o.object, o.outcome, o.sqlstate, o.mac
                   FROM vault.audit_log o WHERE o.id = CASE l.id WHEN {b} THEN {d} ELSE {b} END)
          WHERE l.id IN ({b}, {d})"
    );
    ok(&mut su, &swap);
    assert_eq!(names(&mut su, &format!("SELECT object FROM vault.audit_log WHERE id IN ({b}, {d}) ORDER BY id")), ["d", "b"]);
    assert_eq!(verify_audit(&mut su), Some(b), "reordered records");
    calls += 1;
    ok(&mut su, &swap);
    assert_eq!(verify_audit(&mut su), None, "swapped back");
    calls += 1;

    // (b) A deleted record in the middle: the one after it is named;
    // put back, intact again.
    ok(
        &mut su,
        &format!("CREATE TABLE saved AS SELECT * FROM vault.audit_log WHERE id = {cc}; DELETE FROM vault.audit_log WHERE id = {cc};"),
    );
    assert_eq!(verify_audit(&mut su), Some(d), "the record after the deleted one");
    calls += 1;
    ok(&mut su, "INSERT INTO vault.audit_log SELECT * FROM saved");
    assert_eq!(verify_audit(&mut su), None, "reinserted");
    calls += 1;

    // (d) The last record deleted: the chain's head knows of it, so the
    // id it had (the one the next record would have after those left) is
    // named.
    await_verify_records(&mut su, calls);
    let last = *audit_ids(&mut su).last().unwrap();
    ok(&mut su, &format!("DELETE FROM vault.audit_log WHERE id = {last}"));
    assert_eq!(verify_audit(&mut su), Some(last), "deleted at the end");
}

#[test]
fn no_audit_record_and_no_log_line_carries_a_secret_value() {
    let c = Cluster::start_with("access-sentinel", &["secret_vault.lockout_threshold = 0", "secret_vault.audit_reads = on"]);
    let mut su = c.client();
    ok(
        &mut su,
        "CREATE ROLE pay LOGIN IN ROLE vault_reader;
         CREATE ROLE ops LOGIN IN ROLE vault_admin;
         SELECT vault.revoke_access('vault_reader', ARRAY['read','verify','encrypt','decrypt'], '**');
         SELECT vault.revoke_access('vault_admin', ARRAY['read','verify','encrypt','decrypt','write','rotate'], '**');
         SELECT vault.grant_access('pay', ARRAY['read','verify'], 'app/*');
         SELECT vault.grant_access('ops', ARRAY['write'], 'ops/*');
         GRANT SELECT ON vault.decrypted_secrets TO pay;
         GRANT EXECUTE ON FUNCTION vault._open_secret(text, text, uuid, int, bytea) TO pay;
         SELECT vault.create_secret('other/key', 'o');",
    );
    let v1 = format!("{SENTINEL}-1");
    let v2 = format!("{SENTINEL}-2");
    let wrong = format!("{SENTINEL}-wrong");
    // Values as bind parameters, as applications send them.
    su.execute("SELECT vault.create_secret('app/key', $1)", &[&v1]).unwrap();
    su.execute("SELECT vault.update_secret('app/key', $1)", &[&v2]).unwrap();
    let mut pay = connect(&c, "pay");
    assert!(verify(&mut pay, "app/key", &v2).unwrap());
    assert!(!verify(&mut pay, "app/key", &wrong).unwrap(), "a mismatch (always recorded)");
    assert_eq!(read(&mut pay, "app/key").unwrap(), v2, "an audited read");
    let dec: String = pay.query_one("SELECT value FROM vault.decrypted_secrets WHERE name = 'app/key'", &[]).unwrap().get(0);
    assert_eq!(dec, v2);
    // Denied, with the value as an argument: a verify, and a write.
    assert_eq!(verify(&mut pay, "other/key", &v1).unwrap_err().code, "42501");
    let mut ops = connect(&c, "ops");
    assert_eq!(fails(&mut ops, "SELECT vault.create_secret('other/key', $1)", &[&v1]).code, "42501", "denied before it could be a duplicate");
    assert_eq!(fails(&mut ops, "SELECT vault.update_secret('app/key', $1)", &[&v1]).code, "42501");
    ops.execute("SELECT vault.create_secret('ops/key', $1)", &[&v1]).unwrap();
    // Failing, with the value as an argument.
    assert_eq!(fails(&mut su, "SELECT vault.create_secret('app/key', $1)", &[&v1]).code, "42710");
    assert_eq!(fails(&mut ops, "SELECT vault.create_secret('ops/key', $1)", &[&v2]).code, "42710");
    assert_eq!(fails(&mut su, "SELECT vault.update_secret('app/missing', $1)", &[&v1]).code, "42704");
    // Rolled back, with the value as an argument.
    let mut tx = su.transaction().unwrap();
    tx.execute("SELECT vault.create_secret('app/rb', $1)", &[&v1]).unwrap();
    tx.rollback().unwrap();

    // Every one of those calls is recorded...
    for (action, object, outcome) in [
        ("create_secret", "app/key", "ok"),
        ("update_secret", "app/key", "ok"),
        ("verify_secret", "app/key", "ok"),
        ("verify_secret", "app/key", "mismatch"),
        ("read_secret", "app/key", "ok"),
        ("decrypted_secrets", "app/key", "ok"),
        ("verify_secret", "other/key", "denied"),
        ("create_secret", "other/key", "denied"),
        ("update_secret", "app/key", "denied"),
        ("create_secret", "ops/key", "ok"),
        ("create_secret", "app/key", "error"),
        ("create_secret", "ops/key", "error"),
        ("create_secret", "app/rb", "rolled back"),
    ] {
        await_audit(&mut su, action, object, outcome);
    }
    // A failure on a name that matches nothing is recorded without it (the
    // name may be a value passed in the wrong argument).
    let missing = "SELECT count(*) FROM vault.audit_log
                    WHERE action = 'update_secret' AND outcome = 'error' AND sqlstate = '42704' AND object IS NULL";
    assert!(eventually(AUDIT_WAIT, || count(&mut su, missing, &[]) == 1));
    // ...and none carries the value, in any column, as text or hex.
    let hits = count(
        &mut su,
        "SELECT count(*) FROM vault.audit_log a WHERE position('SENTINEL' IN a::text) > 0
            OR position(encode(convert_to('SENTINEL', 'UTF8'), 'hex') IN a::text) > 0",
        &[],
    );
    assert_eq!(hits, 0, "a secret value reached vault.audit_log");
    let chain = count(&mut su, "SELECT count(*) FROM vault.audit_chain a WHERE position('SENTINEL' IN a::text) > 0", &[]);
    assert_eq!(chain, 0);
    let log = c.log();
    let audit_lines: Vec<&str> = log.lines().filter(|l| l.contains("secret_vault audit:") && l.contains("SENTINEL")).collect();
    assert!(audit_lines.is_empty(), "audit records with the value in the server log: {audit_lines:?}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("SENTINEL")).collect();
    assert!(lines.is_empty(), "the value reached the server log: {lines:?}");
}

/// What an adversarial review found, closed: a parallel worker acting for
/// a locked or address-limited client, SET ROLE for fresh guesses, a write
/// failing with PostgreSQL's own error (unrecorded, its queue entry
/// leaked), a locked administrator unlocking itself, a value passed as a
/// name kept in the log, and records cut from the end of the log hidden by
/// editing the chain's head.
#[test]
fn parallel_workers_set_role_postgres_errors_self_unlock_swapped_names_and_head_edits_are_closed() {
    let c = Cluster::start_with(
        "access-review",
        &["secret_vault.lockout_threshold = 3", "secret_vault.audit_queue_size = 16", "max_parallel_workers_per_gather = 2"],
    );
    let mut su = c.client();
    ok(
        &mut su,
        &format!(
            "CREATE ROLE grp NOLOGIN IN ROLE vault_reader;
             CREATE ROLE app LOGIN IN ROLE vault_reader, grp;
             CREATE ROLE remote LOGIN IN ROLE vault_reader;
             CREATE ROLE ops LOGIN IN ROLE vault_admin;
             CREATE ROLE wr LOGIN IN ROLE vault_admin;
             {READER_DEFAULTS};
             SELECT vault.grant_access(r, ARRAY['read','verify'], 'stripe/*') FROM unnest(ARRAY['app','grp','remote']::regrole[]) r;
             SELECT vault.create_secret('stripe/key', '{SENTINEL}');
             SELECT vault.create_secret('github/token', 'x');
             SELECT vault.set_allowed_addresses('remote', '{{10.9.0.0/16}}');"
        ),
    );
    // PostgreSQL 16 renamed force_parallel_mode to debug_parallel_query.
    let force = if pg_major() >= 16 { "debug_parallel_query" } else { "force_parallel_mode" };
    let parallel = format!("SET {force} = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;");
    let parallel = parallel.as_str();

    // An address-limited role gets nothing through a parallel worker either.
    let mut remote = connect(&c, "remote");
    assert_eq!(read(&mut remote, "stripe/key").unwrap_err().code, "42501");
    ok(&mut remote, parallel);
    let plan: Vec<String> = names(&mut remote, "EXPLAIN (COSTS OFF) SELECT vault.read_secret('stripe/key')");
    assert!(plan.iter().any(|l| l.contains("Gather")), "runs in a parallel worker: {plan:?}");
    assert_eq!(read(&mut remote, "stripe/key").unwrap_err().code, "42501", "a parallel worker acts for its leader's address");

    // A value passed as a name is refused and recorded without it.
    let candidate = "CANDIDATE-PW-0xDEADBEEF";
    let mut app = connect(&c, "app");
    assert_eq!(fails(&mut app, "SELECT vault.verify_secret($1, 'stripe/key')", &[&candidate]).code, "42501");
    // Three failures lock app: that refusal, and two wrong guesses.
    for _ in 0..2 {
        assert!(!verify(&mut app, "stripe/key", "wrong").unwrap());
    }
    assert_eq!(read(&mut app, "stripe/key").unwrap_err().code, "28000");
    // Neither a parallel worker nor SET ROLE gives fresh guesses.
    ok(&mut app, parallel);
    assert_eq!(verify(&mut app, "stripe/key", SENTINEL).unwrap_err().code, "28000", "parallel worker");
    ok(&mut app, &format!("RESET {force}; SET ROLE grp"));
    assert_eq!(verify(&mut app, "stripe/key", SENTINEL).unwrap_err().code, "28000", "SET ROLE");
    ok(&mut app, "RESET ROLE");

    // A locked administrator cannot lift its own lock; another can.
    let mut ops = connect(&c, "ops");
    for _ in 0..3 {
        assert!(!verify(&mut ops, "stripe/key", "wrong").unwrap());
    }
    assert_eq!(fails(&mut ops, "SELECT vault.unlock('ops')", &[]).code, "42501", "its own lock");
    let mut wr = connect(&c, "wr");
    let f = fails(&mut connect(&c, "ops"), "SELECT vault.unlock('ops'::regrole, '10.0.0.1')", &[]);
    assert!(f.code == "42501" || f.code == "28000", "{f:?}");
    let n: i32 = wr.query_one("SELECT vault.unlock('ops')", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    assert_eq!(fails(&mut ops, "SELECT vault.unlock('ops')", &[]).code, "42501", "not its own, even unlocked");

    // PostgreSQL's own errors inside a write (a lock timeout) are recorded
    // with their SQLSTATE, and leave no queue entry behind: with a 16-entry
    // queue, 30 of them in one session and then a write still work.
    let mut holder = c.client();
    holder.batch_execute("BEGIN; SELECT vault.update_secret('github/token', 'y');").unwrap();
    ok(&mut wr, "SET lock_timeout = '50ms'");
    for _ in 0..30 {
        assert_eq!(fails(&mut wr, "SELECT vault.delete_secret('github/token')", &[]).code, "55P03");
    }
    holder.batch_execute("ROLLBACK").unwrap();
    ok(&mut wr, "RESET lock_timeout; SELECT vault.create_secret('stripe/new', 'n')");
    await_audit(&mut su, "create_secret", "stripe/new", "ok");
    let timeouts = count(
        &mut su,
        "SELECT count(*) FROM vault.audit_log WHERE action = 'delete_secret' AND outcome = 'error' AND sqlstate = '55P03'",
        &[],
    );
    assert!(timeouts >= 14, "lock timeouts recorded (a full 16-entry queue sends the rest to the server log): {timeouts}");

    // The refusal with the swapped arguments names no object.
    await_audit(&mut su, "verify_secret", "stripe/key", "locked out");
    assert_eq!(count(&mut su, "SELECT count(*) FROM vault.audit_log a WHERE a::text LIKE '%' || $1 || '%'", &[&candidate]), 0);
    assert!(!c.log().lines().any(|l| l.contains(candidate)), "nor the server log");
    assert!(count(&mut su, "SELECT count(*) FROM vault.audit_log WHERE action = 'verify_secret' AND object IS NULL AND outcome = 'denied'", &[]) >= 1);

    // Cutting the newest records and editing the head to match is seen.
    assert_eq!(verify_audit(&mut su), None);
    let last: i64 = su.query_one("SELECT max(id) FROM vault.audit_log", &[]).unwrap().get(0);
    ok(
        &mut su,
        &format!(
            "BEGIN;
             UPDATE vault.audit_chain SET last_id = {k}, last_mac = (SELECT mac FROM vault.audit_log WHERE id = {k});
             DELETE FROM vault.audit_log WHERE id > {k};
             COMMIT;",
            k = last - 3
        ),
    );
    assert!(verify_audit(&mut su).is_some(), "a moved head does not match its MAC");
}

/// A standby can write nothing: its records go to the server log, one JSON
/// line each, and rules replicated from the primary apply there too.
#[test]
fn a_standby_enforces_replicated_rules_and_logs_its_audit_records() {
    let c = Cluster::start_with("access-primary", &["secret_vault.lockout_threshold = 0"]);
    let mut su = c.client();
    ok(
        &mut su,
        &format!(
            "CREATE ROLE app LOGIN IN ROLE vault_reader;
             {READER_DEFAULTS};
             SELECT vault.grant_access('app', ARRAY['read'], 'app/*');
             SELECT vault.create_secret('app/key', '{SENTINEL}');
             SELECT vault.create_secret('other/key', '{SENTINEL}');"
        ),
    );
    let standby = c.standby("access-standby", &["secret_vault.audit_reads = on", "secret_vault.sync_interval = 200ms"]);
    let mut app = Client::connect(&format!("host=127.0.0.1 port={} user=app dbname=postgres", standby.port), NoTls).unwrap();
    assert!(eventually(Duration::from_secs(20), || read(&mut app, "app/key").is_ok()), "the standby serves app/key");
    assert_eq!(read(&mut app, "other/key").unwrap_err().code, "42501", "replicated rules apply on the standby");

    // A revoke on the primary reaches the standby's open session.
    ok(&mut su, "SELECT vault.revoke_access('app', ARRAY['read'], 'app/*')");
    assert!(
        eventually(Duration::from_secs(20), || read(&mut app, "app/key").map_err(|f| f.code) == Err("42501".into())),
        "revoked on the standby too"
    );

    let log = standby.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("secret_vault audit: {")).collect();
    let has = |object: &str, outcome: &str| {
        lines.iter().any(|l| {
            l.contains("\"action\":\"read_secret\"")
                && l.contains(&format!("\"object\":\"{object}\""))
                && l.contains(&format!("\"outcome\":\"{outcome}\""))
                && l.contains("\"role\":\"app\"")
                && l.contains("\"client_addr\":\"127.0.0.1\"")
        })
    };
    assert!(has("app/key", "ok"), "an audited read: {lines:?}");
    assert!(has("other/key", "denied"), "a denial: {lines:?}");
    assert!(!log.contains(SENTINEL), "no value in the standby's log");
}
