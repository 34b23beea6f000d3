//! Operations (DESIGN.md, "High availability and operations"): a streaming
//! standby promoted to primary and its old primary following it, a logical
//! subscriber taking over rotation after a planned or unplanned failover,
//! dump and restore, and pg_cron driving policy as a non-superuser
//! administrator.

use std::time::Duration;

use secret_vault_it::{as_postgres, db_error, eventually, extension_available, hand_to_postgres, pg_major, Client, Cluster};

const FAST: &[&str] = &["secret_vault.worker_interval = 200ms", "secret_vault.sync_interval = 200ms"];

fn version(db: &mut Client, group: &str) -> i32 {
    db.query_one("SELECT current_version FROM vault.groups WHERE name = $1", &[&group]).unwrap().get(0)
}

fn key(db: &mut Client, group: &str, v: i32) -> Vec<u8> {
    db.query_one("SELECT vault.resolve($1, $2)", &[&group, &v]).unwrap().get(0)
}

fn in_recovery(db: &mut Client) -> bool {
    db.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0)
}

#[test]
fn a_promoted_standby_rotates_on_and_its_old_primary_follows_without_writing() {
    let mut primary = Cluster::start_with("ops-primary", FAST);
    let mut p = primary.client();
    p.batch_execute(
        "SELECT vault.create_group('ops/sign', rotation_interval => '2 seconds', propagation_delay => '0');
         SELECT vault.create_group('ops/col', 'encrypt', propagation_delay => '0');
         CREATE TABLE t AS SELECT i, vault.encrypt('ops/col', int4send(i)) AS ct FROM generate_series(1, 10) i;
         SELECT vault.create_secret('ops/api', 'before-failover');",
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || version(&mut p, "ops/sign") >= 2), "the primary rotates");
    let standby = primary.standby("ops-standby", FAST);
    let mut s = standby.client();
    assert!(in_recovery(&mut s));
    let said: String = s.query_one("SELECT rotation FROM vault.stats()", &[]).unwrap().get(0);
    assert_eq!(said, "standby");

    // The primary goes away cleanly (its last WAL reaches the standby), the
    // standby is promoted.
    let last = version(&mut p, "ops/sign");
    let last_key = key(&mut p, "ops/sign", last);
    drop(p);
    primary.stop();
    assert!(eventually(Duration::from_secs(10), || version(&mut s, "ops/sign") == last), "the standby caught up");
    let out = as_postgres("pg_ctl", &["-D", standby.data.to_str().unwrap(), "-w", "promote"]);
    assert!(out.status.success(), "promote: {}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(10), || !in_recovery(&mut s)));

    // Its worker takes over rotation; versions continue from the primary's,
    // and what the primary wrote still opens.
    assert!(eventually(Duration::from_secs(15), || version(&mut s, "ops/sign") >= last + 2), "the new primary rotates\n{}", standby.log());
    assert_eq!(key(&mut s, "ops/sign", last), last_key);
    let n: i64 = s.query_one("SELECT count(*) FROM t WHERE vault.decrypt('ops/col', ct) = int4send(i)", &[]).unwrap().get(0);
    assert_eq!(n, 10);
    let v: String = s.query_one("SELECT vault.read_secret('ops/api')", &[]).unwrap().get(0);
    assert_eq!(v, "before-failover");
    s.batch_execute("SELECT vault.update_secret('ops/api', 'after-failover')").unwrap();

    // The old primary comes back as a standby of the new one: it follows,
    // serves, refuses writes and never rotates on its own.
    std::fs::write(primary.data.join("standby.signal"), "").unwrap();
    primary.conf(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=postgres'\nrecovery_target_timeline = 'latest'",
        standby.port
    ));
    hand_to_postgres(&primary.data.join("standby.signal"));
    primary.start();
    let mut old = primary.client();
    assert!(in_recovery(&mut old), "the old primary is a standby now");
    assert!(
        eventually(Duration::from_secs(15), || {
            let mine = version(&mut old, "ops/sign");
            mine >= last + 2 && mine == version(&mut s, "ops/sign")
        }),
        "the old primary follows the new one's versions"
    );
    assert!(eventually(Duration::from_secs(10), || {
        old.query_one("SELECT vault.read_secret('ops/api')", &[]).map(|r| r.get::<_, String>(0) == "after-failover").unwrap_or(false)
    }));
    let (code, _) = db_error(&old.query_one("SELECT vault.rotate('ops/sign')", &[]).unwrap_err());
    assert_eq!(code, "25006");
    // Stop the new primary's rotation: the follower must not rotate either.
    s.batch_execute("ALTER SYSTEM SET secret_vault.rotation = off").unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let frozen = version(&mut s, "ops/sign");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(version(&mut s, "ops/sign"), frozen);
    assert_eq!(version(&mut old, "ops/sign"), frozen, "the follower never rotates");
    let log = primary.log();
    let tail = &log[log.rfind("entering standby mode").unwrap_or(0)..];
    assert!(!tail.contains("read-only transaction"), "the follower attempted a write:\n{tail}");
}

#[test]
fn pg_cron_jobs_of_a_non_superuser_administrator_rotate_retire_and_rotate_secrets() {
    // Debian packages pg_cron for its own PostgreSQL (15) only, and no
    // registry we can reach has it for 18: there the test says so and stops.
    // On 15 a missing pg_cron is a failure (the Makefile installs it).
    if pg_major() != 15 && !extension_available("pg_cron") {
        eprintln!("SKIPPED on PostgreSQL {}: pg_cron is not installed for it", pg_major());
        return;
    }
    let mut c = Cluster::init(
        "ops-cron",
        true,
        &[
            "shared_preload_libraries = 'secret_vault,pg_cron'",
            "cron.database_name = 'postgres'",
            "cron.use_background_workers = on",
            "max_worker_processes = 32",
        ],
    );
    c.start();
    let mut su = c.client();
    su.batch_execute(
        "CREATE EXTENSION secret_vault;
         CREATE EXTENSION pg_cron;
         CREATE ROLE ops_admin LOGIN IN ROLE vault_admin;
         GRANT USAGE ON SCHEMA cron TO ops_admin;
         SELECT vault.create_group('cron/sign', propagation_delay => '0');
         SELECT vault.create_rotating_secret('cron/pw', '30 days', grace_period => '0');",
    )
    .unwrap();
    let pw_before: String = su.query_one("SELECT vault.read_secret('cron/pw')", &[]).unwrap().get(0);

    let mut admin = Client::connect(&format!("{} user=ops_admin", c.conninfo("postgres")), secret_vault_it::NoTls).unwrap();
    // pg_cron 1.4 schedules by the minute: one job does a round of policy,
    // docs/operations.md's job as written there, keeping 1 version instead
    // of 4 (so that its first run retires version 1).
    let job = "$$SELECT vault.rotate('cron/sign');
    SELECT vault.retire('cron/sign', (SELECT GREATEST(current_version - 3, 1) FROM vault.groups WHERE name = 'cron/sign'));
    SELECT vault.rotate_secret('cron/pw')$$";
    let documented = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md")).unwrap();
    assert!(
        documented.contains(&job.replace("cron/sign", "app/sign").replace("cron/pw", "db/app-password")),
        "the job is the one docs/operations.md shows"
    );
    let job = job.replace("current_version - 3", "current_version - 0");
    admin.batch_execute(&format!("SELECT cron.schedule('vault-policy', '* * * * *', {job});")).unwrap();
    let owner: String = su.query_one("SELECT username FROM cron.job WHERE jobname = 'vault-policy'", &[]).unwrap().get(0);
    assert_eq!(owner, "ops_admin");
    assert!(
        eventually(Duration::from_secs(130), || {
            su.query_one("SELECT count(*) FROM cron.job_run_details WHERE status = 'succeeded'", &[]).unwrap().get::<_, i64>(0) >= 1
        }),
        "the job ran: {:?}\n{}",
        su.query("SELECT status, return_message FROM cron.job_run_details", &[]).unwrap().iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))).collect::<Vec<_>>(),
        c.log()
    );
    assert!(version(&mut su, "cron/sign") >= 2);
    let retired: bool = su
        .query_one("SELECT state = 'retired' FROM vault.group_versions WHERE group_name = 'cron/sign' AND version = 1", &[])
        .unwrap()
        .get(0);
    assert!(retired, "version 1 retired by the job");
    let pw_after: String = su.query_one("SELECT vault.read_secret('cron/pw')", &[]).unwrap().get(0);
    assert_ne!(pw_after, pw_before, "the secret rotated");
    // Recorded as the administrator's actions.
    let who: i64 = su
        .query_one("SELECT count(*) FROM vault.audit_log WHERE role = 'ops_admin' AND action = 'rotate' AND outcome = 'ok'", &[])
        .unwrap()
        .get(0);
    assert!(eventually(Duration::from_secs(10), || su
        .query_one("SELECT count(*) FROM vault.audit_log WHERE role = 'ops_admin' AND action = 'rotate' AND outcome = 'ok'", &[])
        .unwrap()
        .get::<_, i64>(0)
        >= 1), "audit: {who}");
}

/// Data of every kind, for dump and restore.
fn fill(db: &mut Client) {
    db.batch_execute(
        "SELECT vault.create_group('d/sign', propagation_delay => '0');
         SELECT vault.rotate('d/sign');
         SELECT vault.create_group('d/col', 'encrypt', propagation_delay => '0');
         CREATE TABLE t AS SELECT i, vault.encrypt('d/col', int4send(i), 'row') AS ct FROM generate_series(1, 50) i;
         SELECT vault.create_secret('d/api', 'manual-value');
         SELECT vault.create_rotating_secret('d/pw', '30 days', grace_period => '1 hour');
         SELECT vault.rotate_secret('d/pw');
         CREATE ROLE d_reader IN ROLE vault_reader;
         SELECT vault.grant_access('d_reader', ARRAY['read'], 'd/*');",
    )
    .unwrap();
}

/// What `fill` made, read back; with `original` (the source database) it
/// also compares ciphertexts byte for byte: a restore re-encrypts nothing.
fn check(db: &mut Client, original: Option<&mut Client>) {
    let n: i64 = db.query_one("SELECT count(*) FROM t WHERE vault.decrypt('d/col', ct, 'row') = int4send(i)", &[]).unwrap().get(0);
    assert_eq!(n, 50);
    assert_eq!(version(db, "d/sign"), 2);
    let api: String = db.query_one("SELECT vault.read_secret('d/api')", &[]).unwrap().get(0);
    assert_eq!(api, "manual-value");
    let pw_version: i32 = db.query_one("SELECT current_version FROM vault.secrets WHERE name = 'd/pw'", &[]).unwrap().get(0);
    assert_eq!(pw_version, 2);
    let rules: i64 = db.query_one("SELECT count(*) FROM vault.access_rules WHERE role = 'd_reader'", &[]).unwrap().get(0);
    assert_eq!(rules, 1);
    let kms: i64 = db.query_one("SELECT count(*) FROM vault.kms_keys", &[]).unwrap().get(0);
    assert_eq!(kms, 1, "the built-in KMS key row is not duplicated");
    let audit: Option<i64> = db.query_one("SELECT vault.verify_audit()", &[]).unwrap().get(0);
    assert_eq!(audit, None, "the audit chain is intact after the restore");
    if let Some(o) = original {
        for sql in [
            "SELECT string_agg(encode(ct, 'hex'), ',' ORDER BY i) FROM t",
            "SELECT string_agg(encode(current_ciphertext, 'hex'), ',' ORDER BY name) FROM vault.secret_store",
            "SELECT string_agg(encode(wrapped_key, 'hex'), ',' ORDER BY version) FROM vault.ring_keys",
            "SELECT pw FROM (SELECT vault.read_secret('d/pw') AS pw) s",
            "SELECT encode(key, 'hex') FROM vault.current('d/sign')",
        ] {
            let a: Option<String> = o.query_one(sql, &[]).unwrap().get(0);
            let b: Option<String> = db.query_one(sql, &[]).unwrap().get(0);
            assert_eq!(a, b, "{sql}");
        }
    }
}

fn quiet(out: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("ERROR") && !err.contains("WARNING") && !err.contains("error:") && !err.contains("warning:"),
        "{what} said:\n{err}"
    );
}

#[test]
fn dumps_restore_into_another_database_and_a_cluster_with_the_key_and_fail_clearly_without_it() {
    let c = Cluster::start_with("dump-src", FAST);
    let mut src = c.client();
    fill(&mut src);
    let key_id: String = src.query_one("SELECT kms_key_id FROM vault.ring_keys LIMIT 1", &[]).unwrap().get(0);
    let custom = c.dir.join("vault.dump");
    let plain = c.dir.join("vault.sql");
    c.run_tool("pg_dump", &["-Fc", "-f", custom.to_str().unwrap(), "postgres"]);
    c.run_tool("pg_dump", &["-Fp", "-f", plain.to_str().unwrap(), "postgres"]);

    // Another database of the same cluster, custom format.
    src.batch_execute("CREATE DATABASE twin").unwrap();
    let out = c.run_tool("pg_restore", &["-d", "twin", custom.to_str().unwrap()]);
    quiet(&out, "pg_restore into twin");
    check(&mut c.client_db("twin"), Some(&mut src));

    // A new cluster given the same master key, plain format through psql.
    let mut other = Cluster::init("dump-dst", true, &[&c.shared_master_key()]);
    other.start();
    let mut dst = other.client();
    dst.batch_execute("CREATE ROLE d_reader").unwrap_or(());
    let out = other.run_tool("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f", plain.to_str().unwrap()]);
    quiet(&out, "psql < plain dump");
    check(&mut other.client(), Some(&mut src));
    // Restarted cold, it still opens everything.
    other.restart();
    check(&mut other.client(), None);

    // A cluster with its own (another) master key: the restore loads, and
    // the first read says which key is missing.
    let mut blind = Cluster::init("dump-blind", true, &[]);
    blind.start();
    blind.client().batch_execute("CREATE ROLE d_reader").unwrap();
    let out = blind.run_tool("pg_restore", &["-d", "postgres", custom.to_str().unwrap()]);
    quiet(&out, "pg_restore into a cluster without the key");
    let err = blind.client().query_one("SELECT vault.read_secret('d/api')", &[]).unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "55000", "{msg}");
    assert!(msg.contains(&key_id), "the error names the missing key {key_id}: {msg}");
}

/// The tables a subscriber takes from its publisher: keys, secrets,
/// credentials and access rules. Not kms_keys (each node registers its own
/// KMS keys under the same names: it has the built-in 'local' row already),
/// nor the audit log (each node keeps its own), nor the re-wrap progress.
const PUBLISHED: &str = "vault.key_groups, vault.ring_keys, vault.secret_store, vault.secret_values, \
                         vault.credential_store, vault.access_grants, vault.access_defaults_revoked, vault.allowed_addresses";

/// A publisher rotating `l/sign` every 3 s, with an encrypt group, a table
/// of its ciphertexts and a secret, and a subscriber given the same master
/// key with rotation off, subscribed and caught up with every table.
fn logical_pair() -> (Cluster, Cluster) {
    let mut conf: Vec<&str> = FAST.to_vec();
    conf.push("wal_level = logical");
    let publisher = Cluster::start_with("logical-pub", &conf);
    let mut p = publisher.client();
    p.batch_execute(
        "SELECT vault.create_group('l/sign', rotation_interval => '3 seconds', propagation_delay => '0');
         SELECT vault.create_group('l/col', 'encrypt', propagation_delay => '0');
         CREATE TABLE t (i int PRIMARY KEY, ct bytea);
         INSERT INTO t SELECT i, vault.encrypt('l/col', int4send(i)) FROM generate_series(1, 20) i;
         SELECT vault.create_secret('l/api', 'from-the-publisher');",
    )
    .unwrap();
    p.batch_execute(&format!("CREATE PUBLICATION vault_pub FOR TABLE {PUBLISHED}, public.t")).unwrap();

    // The subscriber: the same master key, rotation off (one node rotates).
    let key_conf = publisher.shared_master_key();
    let mut sub_conf = conf.clone();
    sub_conf.push(&key_conf);
    sub_conf.push("secret_vault.rotation = off");
    let subscriber = Cluster::start_with("logical-sub", &sub_conf);
    let mut s = subscriber.client();
    s.batch_execute("CREATE TABLE t (i int PRIMARY KEY, ct bytea)").unwrap();
    s.batch_execute(&format!(
        "CREATE SUBSCRIPTION vault_sub CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=postgres' PUBLICATION vault_pub",
        publisher.port
    ))
    .unwrap();
    // Tables are copied independently: wait for every one (the recipe's
    // readiness check, docs/operations.md).
    assert!(
        eventually(Duration::from_secs(30), || {
            s.query_one("SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'", &[]).unwrap().get::<_, i64>(0) == 0
        }),
        "the subscriber synchronised every table\n{}",
        subscriber.log()
    );
    (publisher, subscriber)
}

/// Stops subscribing (the publisher is gone: its slot is not dropped) and
/// turns rotation on: the recipe's last two steps. Returns the largest
/// change number replicated.
fn take_over(s: &mut Client) -> i64 {
    s.batch_execute("ALTER SUBSCRIPTION vault_sub DISABLE").unwrap();
    s.batch_execute("ALTER SUBSCRIPTION vault_sub SET (slot_name = NONE)").unwrap();
    s.batch_execute("DROP SUBSCRIPTION vault_sub").unwrap();
    let replicated_seq: i64 = s.query_one("SELECT max(change_seq) FROM vault.key_groups", &[]).unwrap().get(0);
    let seq: i64 = s.query_one("SELECT last_value FROM vault.change_seq", &[]).unwrap().get(0);
    assert!(seq < replicated_seq, "the subscriber's own sequence lags the replicated rows ({seq} < {replicated_seq}), as the catch-up expects");
    s.batch_execute("ALTER SYSTEM SET secret_vault.rotation = on").unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    replicated_seq
}

/// What a new writer must show after a failover: it rotates, versions
/// continue from the last replicated one, its change numbers run past every
/// replicated one (logical replication does not carry sequences), the last
/// replicated keys still resolve, and secrets take writes.
fn continues_as_writer(subscriber: &Cluster, s: &mut Client, before: i32, replicated_seq: i64) {
    assert!(eventually(Duration::from_secs(20), || version(s, "l/sign") >= before + 2), "the new writer rotates\n{}", subscriber.log());
    let said: String = s.query_one("SELECT rotation FROM vault.stats()", &[]).unwrap().get(0);
    assert_eq!(said, "on");
    let (seq, group_seq): (i64, i64) = {
        let r = s
            .query_one("SELECT (SELECT last_value FROM vault.change_seq), change_seq FROM vault.key_groups WHERE name = 'l/sign'", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(group_seq > replicated_seq && seq >= group_seq, "change numbers continue past the replicated ones: {replicated_seq} -> group {group_seq}, sequence {seq}");
    assert!(subscriber.log().contains("vault.change_seq moved to"), "the worker says it moved the sequence");
    let versions: Vec<i32> = s
        .query("SELECT version FROM vault.group_versions WHERE group_name = 'l/sign' ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(versions.windows(2).all(|w| w[1] == w[0] + 1), "versions continue without a gap or a conflict: {versions:?}");
    assert_eq!(key(s, "l/sign", before).len(), 32);
    s.batch_execute("SELECT vault.update_secret('l/api', 'after-failover')").unwrap();
    let api: String = s.query_one("SELECT vault.read_secret('l/api')", &[]).unwrap().get(0);
    assert_eq!(api, "after-failover");
    let n: i64 = s.query_one("SELECT count(*) FROM t WHERE vault.decrypt('l/col', ct) = int4send(i)", &[]).unwrap().get(0);
    assert_eq!(n, 20, "the replicated ciphertexts still open");
}

#[test]
fn a_logical_subscriber_serves_the_same_keys_and_takes_over_rotation_after_a_failover() {
    let (publisher, subscriber) = logical_pair();
    let mut p = publisher.client();
    let mut s = subscriber.client();

    // Same keys, secrets and ciphertexts; rotations arrive.
    let n: i64 = s.query_one("SELECT count(*) FROM t WHERE vault.decrypt('l/col', ct) = int4send(i)", &[]).unwrap().get(0);
    assert_eq!(n, 20, "the subscriber decrypts the publisher's data");
    let api: String = s.query_one("SELECT vault.read_secret('l/api')", &[]).unwrap().get(0);
    assert_eq!(api, "from-the-publisher");
    let pv = version(&mut p, "l/sign");
    assert!(eventually(Duration::from_secs(20), || version(&mut s, "l/sign") > pv), "rotations reach the subscriber");
    let v = version(&mut s, "l/sign");
    assert_eq!(key(&mut s, "l/sign", v), key(&mut p, "l/sign", v));
    let ct: Vec<u8> = s.query_one("SELECT vault.encrypt('l/col', 'written on the subscriber')", &[]).unwrap().get(0);
    let back: Vec<u8> = p.query_one("SELECT vault.decrypt('l/col', $1)", &[&ct]).unwrap().get(0);
    assert_eq!(back, b"written on the subscriber", "ciphertexts travel both ways");

    assert!(!subscriber.log().contains("rotated key group"), "the subscriber never rotated while subscribed");
    let said: String = s.query_one("SELECT rotation FROM vault.stats()", &[]).unwrap().get(0);
    assert_eq!(said, "off", "vault.stats() says the subscriber does not rotate");

    // Rotation turned on by mistake while subscribed: the worker holds off
    // (its versions would fork from the publisher's), says so once, and
    // vault.stats() says why.
    s.batch_execute("ALTER SYSTEM SET secret_vault.rotation = on").unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || subscriber.log().contains("not rotating: this database subscribes to the vault tables")),
        "the worker says it holds off\n{}",
        subscriber.log()
    );
    let said: String = s.query_one("SELECT rotation FROM vault.stats()", &[]).unwrap().get(0);
    assert_eq!(said, "subscribed");
    let pv = version(&mut p, "l/sign");
    assert!(eventually(Duration::from_secs(20), || version(&mut s, "l/sign") > pv), "rotations still arrive from the publisher");
    assert!(!subscriber.log().contains("rotated key group"), "the subscriber never rotated while subscribed");
    assert_eq!(subscriber.log().matches("not rotating: this database subscribes").count(), 1, "said once");
    s.batch_execute("ALTER SYSTEM SET secret_vault.rotation = off").unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();

    // Failover, planned: the publisher stops rotating, the subscriber
    // catches up (the same version), the publisher goes away; the
    // subscriber stops subscribing and turns rotation on.
    p.batch_execute("ALTER SYSTEM SET secret_vault.rotation = off").unwrap();
    p.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let last = version(&mut p, "l/sign");
    assert!(eventually(Duration::from_secs(20), || version(&mut s, "l/sign") == last), "the subscriber caught up");
    drop(p);
    drop(publisher);
    let replicated_seq = take_over(&mut s);
    continues_as_writer(&subscriber, &mut s, last, replicated_seq);
}

#[test]
fn an_unplanned_logical_failover_loses_at_most_the_unreplicated_rotations_and_continues() {
    let (mut publisher, subscriber) = logical_pair();
    let mut p = publisher.client();
    let mut s = subscriber.client();
    let pv = version(&mut p, "l/sign");
    assert!(eventually(Duration::from_secs(20), || version(&mut s, "l/sign") > pv), "rotations reach the subscriber");

    // The publisher dies mid-rotation schedule (immediate stop: no
    // shutdown checkpoint, no last WAL sent).
    drop(p);
    publisher.crash();
    let before = version(&mut s, "l/sign");
    let replicated_seq = take_over(&mut s);
    continues_as_writer(&subscriber, &mut s, before, replicated_seq);
    assert!(!subscriber.log().contains("duplicate key"), "no conflicting version was written:\n{}", subscriber.log());
}
