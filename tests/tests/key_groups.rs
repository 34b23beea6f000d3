//! Key groups end to end: a real cluster, a real client library.

use std::sync::{Arc, Barrier};
use std::thread;

use secret_vault_it::{db_error, Cluster};

#[test]
fn sign_with_current_and_verify_with_resolve_through_a_client() {
    let c = Cluster::start_with_extension("sign");
    let mut db = c.client();
    db.execute("SELECT vault.create_group($1, propagation_delay => '0')", &[&"app/jwt"]).unwrap();
    let row = db.query_one("SELECT version, key FROM vault.current($1)", &[&"app/jwt"]).unwrap();
    let (v1, k1): (i32, Vec<u8>) = (row.get(0), row.get(1));
    assert_eq!((v1, k1.len()), (1, 32));

    let v2: i32 = db.query_one("SELECT vault.rotate($1)", &[&"app/jwt"]).unwrap().get(0);
    assert_eq!(v2, 2);
    let row = db.query_one("SELECT version, key FROM vault.current($1)", &[&"app/jwt"]).unwrap();
    let k2: Vec<u8> = row.get(1);
    assert_eq!(row.get::<_, i32>(0), 2);
    assert_ne!(k1, k2);
    // The verifier still resolves the key the token was signed with.
    let old: Vec<u8> = db.query_one("SELECT vault.resolve($1, $2)", &[&"app/jwt", &1i32]).unwrap().get(0);
    assert_eq!(old, k1);
}

#[test]
fn encrypted_column_round_trips_with_binary_parameters() {
    let c = Cluster::start_with_extension("column");
    let mut db = c.client();
    db.batch_execute("SELECT vault.create_group('pii', 'encrypt')").unwrap();
    let plaintext: Vec<u8> = (0u8..=255).collect();
    let ct: Vec<u8> = db
        .query_one("SELECT vault.encrypt('pii', $1, $2)", &[&plaintext, &b"row:7".to_vec()])
        .unwrap()
        .get(0);
    assert!(!ct.windows(16).any(|w| plaintext.windows(16).any(|p| p == w)));
    let back: Vec<u8> =
        db.query_one("SELECT vault.decrypt('pii', $1, $2)", &[&ct, &b"row:7".to_vec()]).unwrap().get(0);
    assert_eq!(back, plaintext);
    let err = db.query_one("SELECT vault.decrypt('pii', $1, $2)", &[&ct, &b"row:8".to_vec()]).unwrap_err();
    assert_eq!(db_error(&err).0, "22000");
}

#[test]
fn two_sessions_rotating_one_group_get_distinct_consecutive_versions() {
    let c = Cluster::start_with_extension("race");
    c.client().batch_execute("SELECT vault.create_group('race')").unwrap();
    const SESSIONS: usize = 2;
    const ROTATIONS: usize = 25;
    let barrier = Arc::new(Barrier::new(SESSIONS));
    let handles: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let conninfo = c.conninfo("postgres");
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                let stmt = db.prepare("SELECT vault.rotate('race')").unwrap();
                barrier.wait();
                (0..ROTATIONS).map(|_| db.query_one(&stmt, &[]).unwrap().get::<_, i32>(0)).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<i32> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_unstable();
    let expected: Vec<i32> = (2..=(1 + SESSIONS * ROTATIONS) as i32).collect();
    assert_eq!(all, expected, "versions must be distinct and consecutive");
    let stored: i64 = c
        .client()
        .query_one(
            "SELECT count(*) FROM vault.ring_keys r JOIN vault.key_groups g ON g.id = r.group_id WHERE g.name = 'race'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, 1 + SESSIONS * ROTATIONS);
}

#[test]
fn concurrent_rotations_inside_open_transactions_serialize_on_commit() {
    let c = Cluster::start_with_extension("txrace");
    c.client().batch_execute("SELECT vault.create_group('tx')").unwrap();
    let mut a = c.client();
    let mut b = c.client();
    let mut ta = a.transaction().unwrap();
    let va: i32 = ta.query_one("SELECT vault.rotate('tx')", &[]).unwrap().get(0);
    // b blocks on a's claim until a commits, then takes the next version.
    let conninfo = c.conninfo("postgres");
    let h = thread::spawn(move || {
        let mut b2 = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
        b2.query_one("SELECT vault.rotate('tx')", &[]).unwrap().get::<_, i32>(0)
    });
    thread::sleep(std::time::Duration::from_millis(300));
    ta.commit().unwrap();
    let vb = h.join().unwrap();
    assert_eq!((va, vb), (2, 3));
    // A rolled-back rotation leaves no trace and no gap.
    let mut tb = b.transaction().unwrap();
    tb.query_one("SELECT vault.rotate('tx')", &[]).unwrap();
    tb.rollback().unwrap();
    let next: i32 = b.query_one("SELECT vault.rotate('tx')", &[]).unwrap().get(0);
    assert_eq!(next, 4);
}

#[test]
fn keys_survive_a_restart_and_a_wrong_master_key_is_named_as_such() {
    let mut c = Cluster::start_with_extension("masterkey");
    let mut db = c.client();
    db.batch_execute("SELECT vault.create_group('g', 'encrypt')").unwrap();
    let ct: Vec<u8> = db.query_one("SELECT vault.encrypt('g', 'persisted')", &[]).unwrap().get(0);
    drop(db);

    c.restart();
    let back: Vec<u8> = c.client().query_one("SELECT vault.decrypt('g', $1)", &[&ct]).unwrap().get(0);
    assert_eq!(back, b"persisted");
    assert!(c.log().contains("local mode is for development only"));

    // Point the server at another master key: reads fail with a clear error.
    let other = c.dir.join("other.key");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32))).unwrap();
    secret_vault_it::hand_to_postgres(&other);
    c.conf(&format!("secret_vault.local_master_key_file = '{}'", other.display()));
    c.restart();
    let err = c.client().query_one("SELECT vault.decrypt('g', $1)", &[&ct]).unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "55000");
    assert!(msg.starts_with("KMS key \"local\": wrong master key"), "{msg}");
    assert!(!msg.contains(&"ab".repeat(32)), "{msg}");

    // A missing key file is a configuration error, not a crypto error.
    c.conf(&format!("secret_vault.local_master_key_file = '{}'", c.dir.join("missing.key").display()));
    c.restart();
    let err = c.client().query_one("SELECT vault.decrypt('g', $1)", &[&ct]).unwrap_err();
    assert_eq!(db_error(&err).0, "F0000");

    // Back to the right key (reload is enough: the setting is SIGHUP).
    c.conf("secret_vault.local_master_key_file = ''");
    c.restart();
    let back: Vec<u8> = c.client().query_one("SELECT vault.decrypt('g', $1)", &[&ct]).unwrap().get(0);
    assert_eq!(back, b"persisted");
}

#[test]
fn without_shared_preload_libraries_create_extension_says_how_to_fix_it() {
    let mut c = Cluster::init("nopreload", false, &[]);
    c.start();
    let err = c.client().batch_execute("CREATE EXTENSION secret_vault").unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("shared_preload_libraries"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("shared_preload_libraries"));
}

#[test]
fn pg_dump_and_restore_carry_the_vault_as_ciphertext() {
    let c = Cluster::start_with_extension("dump");
    let mut db = c.client();
    db.batch_execute(
        "SELECT vault.create_group('sig', propagation_delay => '0');
         SELECT vault.rotate('sig');
         SELECT vault.create_group('col', 'encrypt');
         CREATE TABLE t (id int, secret bytea);
         INSERT INTO t SELECT 1, vault.encrypt('col', 'dumped', 't:1');",
    )
    .unwrap();
    let k1: Vec<u8> = db.query_one("SELECT vault.resolve('sig', 1)", &[]).unwrap().get(0);
    let dump = c.dir.join("vault.dump");
    c.run_tool("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), "postgres"]);
    let raw = std::fs::read(&dump).unwrap();
    assert!(!raw.windows(k1.len()).any(|w| w == k1.as_slice()), "dump must not contain key bytes");

    db.batch_execute("CREATE DATABASE restored").unwrap();
    c.run_tool("pg_restore", &["-d", "restored", dump.to_str().unwrap()]);
    let mut r = c.client_db("restored");
    let k1r: Vec<u8> = r.query_one("SELECT vault.resolve('sig', 1)", &[]).unwrap().get(0);
    assert_eq!(k1, k1r);
    let v: i32 = r.query_one("SELECT version FROM vault.current('sig')", &[]).unwrap().get(0);
    assert_eq!(v, 2);
    let pt: Vec<u8> = r.query_one("SELECT vault.decrypt('col', secret, 't:1') FROM t", &[]).unwrap().get(0);
    assert_eq!(pt, b"dumped");
    let kms: i64 = r.query_one("SELECT count(*) FROM vault.kms_keys", &[]).unwrap().get(0);
    assert_eq!(kms, 1, "the restore must not duplicate the built-in KMS key row");
}
