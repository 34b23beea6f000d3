//! Operations (DESIGN.md, "High availability and operations"): a streaming
//! standby promoted to primary, its old primary following it, and pg_cron
//! driving policy as a non-superuser administrator.

use std::time::Duration;

use secret_vault_it::{as_postgres, db_error, eventually, Client, Cluster};

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
    let mut standby = primary.standby("ops-standby", FAST);
    let mut s = standby.client();
    assert!(in_recovery(&mut s));

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
    let out = as_postgres("chown", &["postgres:postgres", primary.data.join("standby.signal").to_str().unwrap()]);
    let _ = out;
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
    // pg_cron 1.4 schedules by the minute: one job does a round of policy.
    admin
        .batch_execute(
            "SELECT cron.schedule('vault-policy', '* * * * *',
                 $$SELECT vault.rotate('cron/sign'); SELECT vault.retire('cron/sign', 2); SELECT vault.rotate_secret('cron/pw')$$);",
        )
        .unwrap();
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
