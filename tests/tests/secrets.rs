//! Secrets end to end (issue 4): the worker's schedule, grace windows, and a
//! sentinel value that must never reach a table, a data file, the WAL or
//! the server log, whatever the API is asked.

use std::time::Duration;

use secret_vault_it::{db_error, eventually, files_containing, stat, Cluster};

const SENTINEL: &str = "SENTINEL-c0ffee-5ecret-9d2b71";
const SENTINEL2: &str = "SENTINEL-2nd-value-a81f04";

fn read(db: &mut postgres::Client, name: &str) -> String {
    db.query_one("SELECT vault.read_secret($1)", &[&name]).unwrap().get(0)
}

fn verify(db: &mut postgres::Client, name: &str, candidate: &str) -> bool {
    db.query_one("SELECT vault.verify_secret($1, $2)", &[&name, &candidate]).unwrap().get(0)
}

#[test]
fn worker_rotates_a_due_secret_and_the_old_value_verifies_until_grace_ends() {
    let c = Cluster::start_with("secret-worker", &["secret_vault.worker_interval = 100ms"]);
    let mut db = c.client();
    db.execute(
        "SELECT vault.create_rotating_secret('svc/token', '1 second', grace_period => '2 seconds')",
        &[],
    )
    .unwrap();
    let first = read(&mut db, "svc/token");
    assert!(eventually(Duration::from_secs(10), || read(&mut db, "svc/token") != first), "worker rotated it");
    // Within grace the first value still verifies, then never again.
    assert!(verify(&mut db, "svc/token", &first) || {
        // it may already have rotated twice; the grace window is 2 s after the first rotation
        let states: Vec<String> = db
            .query("SELECT state FROM vault.secret_versions('svc/token') WHERE version = 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        states == ["expired"]
    });
    assert!(eventually(Duration::from_secs(10), || !verify(&mut db, "svc/token", &first)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!verify(&mut db, "svc/token", &first), "an expired value never verifies again");
    let current = read(&mut db, "svc/token");
    assert!(verify(&mut db, "svc/token", &current));
    assert!(stat(&mut db, "rotations") >= 1);
    assert_eq!(stat(&mut db, "worker_errors"), 0, "{}", c.log());

    // A secret made due once is rotated exactly once.
    db.execute("SELECT vault.create_rotating_secret('svc/daily', '1 day')", &[]).unwrap();
    db.execute("UPDATE vault.secret_store SET next_rotation_at = now() - interval '1 second' WHERE name = 'svc/daily'", &[])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let v: i32 = db.query_one("SELECT current_version FROM vault.secrets WHERE name = 'svc/daily'", &[]).unwrap().get(0);
    assert_eq!(v, 2);
}

#[test]
fn reads_from_another_session_follow_updates_at_once() {
    let c = Cluster::start_with_extension("secret-coherence");
    let mut a = c.client();
    let mut b = c.client();
    a.execute("SELECT vault.create_secret('s', 'one')", &[]).unwrap();
    assert_eq!(read(&mut b, "s"), "one");
    assert_eq!(read(&mut b, "s"), "one");
    let mut t = a.transaction().unwrap();
    t.execute("SELECT vault.update_secret('s', 'two')", &[]).unwrap();
    assert_eq!(t.query_one("SELECT vault.read_secret('s')", &[]).unwrap().get::<_, String>(0), "two");
    assert_eq!(read(&mut b, "s"), "one", "uncommitted update is invisible");
    t.commit().unwrap();
    assert_eq!(read(&mut b, "s"), "two", "committed update is visible at once");
    let mut t = a.transaction().unwrap();
    t.execute("SELECT vault.update_secret('s', 'three')", &[]).unwrap();
    t.rollback().unwrap();
    assert_eq!(read(&mut b, "s"), "two", "rolled-back update never visible");
    a.execute("SELECT vault.delete_secret('s')", &[]).unwrap();
    assert_eq!(db_error(&b.query_one("SELECT vault.read_secret('s')", &[]).unwrap_err()).0, "42704");
}

#[test]
fn a_sentinel_value_never_reaches_tables_files_wal_or_log() {
    let c = Cluster::start_with("sentinel", &["log_min_messages = debug1", "log_statement = 'none'"]);
    let mut db = c.client();
    // Every API, with bind parameters (as applications send secrets).
    db.execute("SELECT vault.create_secret('app/key', $1, 'desc')", &[&SENTINEL]).unwrap();
    assert_eq!(read(&mut db, "app/key"), SENTINEL);
    assert!(verify(&mut db, "app/key", SENTINEL));
    assert!(!verify(&mut db, "app/key", &format!("{SENTINEL}x")));
    db.execute("SELECT vault.update_secret('app/key', $1)", &[&SENTINEL2]).unwrap();
    assert!(!verify(&mut db, "app/key", SENTINEL));
    let rows = db.query("SELECT * FROM vault.secret_versions('app/key')", &[]).unwrap();
    assert_eq!(rows.len(), 2);
    let dec: String = db.query_one("SELECT value FROM vault.decrypted_secrets WHERE name = 'app/key'", &[]).unwrap().get(0);
    assert_eq!(dec, SENTINEL2);
    // Errors, with the sentinel as an argument.
    for (sql, code) in [
        ("SELECT vault.create_secret('app/key', $1)", "42710"),
        ("SELECT vault.create_secret('', $1)", "22023"),
        ("SELECT vault.update_secret('missing', $1)", "42704"),
        ("SELECT vault.verify_secret('missing', $1)::text", "42704"),
        ("SELECT vault.create_secret('x', $1, key_group => 'missing')", "42704"),
    ] {
        let err = db.query_one(sql, &[&SENTINEL]).unwrap_err();
        let (got, msg) = db_error(&err);
        assert_eq!(got, code, "{sql}");
        assert!(!msg.contains("SENTINEL"), "{msg}");
    }
    // Tampered storage: the error says so without the value.
    db.batch_execute(
        "UPDATE vault.secret_store SET current_ciphertext = set_byte(current_ciphertext, 30, get_byte(current_ciphertext, 30) # 1)
          WHERE name = 'app/key'",
    )
    .unwrap();
    let mut fresh = c.client();
    let err = fresh.query_one("SELECT vault.read_secret('app/key')", &[]).unwrap_err();
    assert_eq!(db_error(&err).0, "22000");

    // Tables (as text), then every file of the cluster after a checkpoint, then the log.
    let in_tables: i64 = db
        .query_one(
            "SELECT count(*) FROM (
               SELECT s::text t FROM vault.secret_store s UNION ALL SELECT v::text FROM vault.secret_values v
               UNION ALL SELECT g::text FROM vault.key_groups g UNION ALL SELECT r::text FROM vault.ring_keys r) x
              WHERE position('SENTINEL' IN t) > 0 OR position(encode('SENTINEL', 'hex') IN t) > 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(in_tables, 0);
    db.batch_execute("CHECKPOINT; SELECT pg_switch_wal(); CHECKPOINT;").unwrap();
    drop(db);
    drop(fresh);
    let mut hits = Vec::new();
    files_containing(&c.data, b"SENTINEL", &mut hits);
    assert!(hits.is_empty(), "sentinel found in {hits:?}");
    assert!(!c.log().contains("SENTINEL"), "sentinel in the server log");
}

#[test]
fn pg_dump_carries_secrets_as_ciphertext_and_restore_reads_them() {
    let c = Cluster::start_with_extension("secret-dump");
    let mut db = c.client();
    db.execute("SELECT vault.create_secret('dumped', $1)", &[&SENTINEL]).unwrap();
    db.execute("SELECT vault.create_rotating_secret('dumped/rot', '1 day')", &[]).unwrap();
    let rot = read(&mut db, "dumped/rot");
    let dump = c.dir.join("s.dump");
    c.run_tool("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), "postgres"]);
    let raw = std::fs::read(&dump).unwrap();
    assert!(!raw.windows(8).any(|w| w == b"SENTINEL"));
    db.batch_execute("CREATE DATABASE restored").unwrap();
    c.run_tool("pg_restore", &["-d", "restored", dump.to_str().unwrap()]);
    let mut r = c.client_db("restored");
    assert_eq!(read(&mut r, "dumped"), SENTINEL);
    assert_eq!(read(&mut r, "dumped/rot"), rot);
    assert!(verify(&mut r, "dumped", SENTINEL));
}
