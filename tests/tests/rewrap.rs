//! Re-wrap after a KMS rotation and moves between KMS keys, against the real
//! peers: an AWS alias moved to another key (moto), a transit key rotation
//! then `min_decryption_version` raised (OpenBao), moves local → aws →
//! transit → local, `kill -9` of the worker and a KMS outage mid-pass.

use std::time::Duration;

use secret_vault_it::peers::{peer_dir, Bao, Moto};
use secret_vault_it::{eventually, stat, Client, Cluster};

const FAST: &[&str] = &["secret_vault.rewrap_check_interval = 500", "secret_vault.rewrap_rate = 1000"];

fn cluster(name: &str, moto: Option<&Moto>, conf: &[&str]) -> Cluster {
    let mut env: Vec<(&str, &str)> = Vec::new();
    if let Some(m) = moto {
        env.push(("AWS_ACCESS_KEY_ID", &m.access_key_id));
        env.push(("AWS_SECRET_ACCESS_KEY", &m.secret_access_key));
    }
    let mut c = Cluster::init_env(name, true, conf, &env);
    c.start();
    c.client().batch_execute("CREATE EXTENSION secret_vault").unwrap();
    c
}

fn add_transit(db: &mut Client, bao: &Bao, name: &str) {
    let dir = peer_dir("rewrap-transit");
    let token = bao.write_token_file(&dir);
    let cfg = format!(r#"{{"address": "{}", "key": "app", "token_file": "{}"}}"#, bao.address(), token.display());
    db.query_one("SELECT vault.add_kms_key($1, 'transit', $2::text::jsonb)", &[&name, &cfg]).unwrap();
}

fn add_aws(db: &mut Client, moto: &Moto, name: &str, key_id: &str) {
    let cfg = format!(r#"{{"region": "us-east-1", "key_id": "{key_id}", "endpoint": "{}"}}"#, moto.endpoint());
    db.query_one("SELECT vault.add_kms_key($1, 'aws', $2::text::jsonb)", &[&name, &cfg]).unwrap();
}

/// Groups under `kms`, rotated so each has several versions, with data.
fn data(db: &mut Client, kms: &str, groups: usize) {
    for i in 0..groups {
        db.execute(
            "SELECT vault.create_group($1, 'encrypt', propagation_delay => '0', kms_key => $2)",
            &[&format!("rw/{i}"), &kms],
        )
        .unwrap();
        db.execute(&format!("CREATE TABLE IF NOT EXISTS rw (g text, v int, ct bytea)"), &[]).unwrap();
        for v in 1..=3 {
            if v > 1 {
                db.execute("SELECT vault.rotate($1)", &[&format!("rw/{i}")]).unwrap();
            }
            db.execute("INSERT INTO rw SELECT $1, $2, vault.encrypt($1, int4send($2))", &[&format!("rw/{i}"), &v]).unwrap();
        }
    }
    db.execute("SELECT vault.create_secret('rw/secret', 'moves-along', NULL, 'rw/0')", &[]).unwrap();
}

fn all_decrypt(db: &mut Client) {
    let (n, ok): (i64, i64) = {
        let r = db.query_one("SELECT count(*), count(*) FILTER (WHERE vault.decrypt(g, ct) = int4send(v)) FROM rw", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(n, ok, "every ciphertext decrypts");
    let s: String = db.query_one("SELECT vault.read_secret('rw/secret')", &[]).unwrap().get(0);
    assert_eq!(s, "moves-along");
}

fn ids(db: &mut Client) -> Vec<(String, String)> {
    db.query("SELECT DISTINCT kms_key, kms_key_id FROM vault.ring_keys ORDER BY 1, 2", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn settled(db: &mut Client, secs: u64) -> bool {
    eventually(Duration::from_secs(secs), || {
        db.query_one("SELECT coalesce(sum(rows_old + rows_moving_in), 0)::bigint FROM vault.rewrap_status", &[])
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
}

#[test]
fn a_transit_rotation_is_rewrapped_and_old_versions_can_then_be_trimmed() {
    let bao = Bao::start();
    bao.create_key("app", true);
    let mut c = cluster("rw-transit", None, FAST);
    let mut db = c.client();
    add_transit(&mut db, &bao, "bao");
    data(&mut db, "bao", 3);
    assert_eq!(ids(&mut db), vec![("bao".into(), "transit:transit/app:v1".into())]);
    bao.rotate_key("app");
    let todo: i64 = db.query_one("SELECT vault.rewrap('bao')", &[]).unwrap().get(0);
    // The worker's own check (every 500 ms) may have started already.
    assert!(todo > 0 && todo <= 9, "rows on v1: {todo}");
    assert!(settled(&mut db, 30), "the worker re-wrapped every row");
    assert_eq!(ids(&mut db), vec![("bao".into(), "transit:transit/app:v2".into())]);
    let moved: i64 = db.query_one("SELECT rows_moved FROM vault.rewrap_status WHERE kms_key = 'bao'", &[]).unwrap().get(0);
    assert_eq!(moved, 9);
    // Old material trimmed: everything still opens, cold.
    bao.cli(&["write", "transit/keys/app/config", "min_decryption_version=2"]).unwrap();
    c.restart();
    all_decrypt(&mut c.client());
}

#[test]
fn an_aws_alias_moved_to_a_new_key_is_noticed_by_the_worker_and_every_row_follows() {
    let moto = Moto::start();
    let k1 = moto.create_key();
    moto.create_alias("alias/app", &k1);
    let mut c = cluster("rw-aws", Some(&moto), FAST);
    let mut db = c.client();
    add_aws(&mut db, &moto, "aws", "alias/app");
    data(&mut db, "aws", 2);
    assert_eq!(ids(&mut db), vec![("aws".into(), k1.clone())]);
    let k2 = moto.create_key();
    moto.update_alias("alias/app", &k2);
    // No call to vault.rewrap: the worker's own check finds the move.
    assert!(
        eventually(Duration::from_secs(30), || ids(&mut db) == vec![("aws".to_string(), k2.clone())]),
        "rows moved to the new key: {:?}",
        ids(&mut db)
    );
    let key_id: String = db.query_one("SELECT key_id FROM vault.kms_keys WHERE name = 'aws'", &[]).unwrap().get(0);
    assert_eq!(key_id, k2);
    // The move is said once, as a WARNING; the first answer (k1) was not.
    let log = c.log();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("now wraps with")).collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("WARNING") && said[0].contains(&k2), "{said:?}");
    c.restart();
    all_decrypt(&mut c.client());
}

#[test]
fn groups_move_local_to_aws_to_transit_to_local_and_data_opens_after_each() {
    let moto = Moto::start();
    let arn = moto.create_key();
    let bao = Bao::start();
    bao.create_key("app", true);
    let mut c = cluster("rw-moves", Some(&moto), FAST);
    let mut db = c.client();
    add_aws(&mut db, &moto, "aws", &arn);
    add_transit(&mut db, &bao, "bao");
    data(&mut db, "local", 2);
    // Paused mid-move, cold: each row opens with the KMS key that wrapped it.
    db.batch_execute("ALTER SYSTEM SET secret_vault.rewrap_rate = 0").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let todo: i64 = db.query_one("SELECT vault.move_group('rw/0', 'aws')", &[]).unwrap().get(0);
    assert_eq!(todo, 3);
    std::thread::sleep(Duration::from_secs(2));
    let moving: i64 = db.query_one("SELECT rows_moving_in FROM vault.rewrap_status WHERE kms_key = 'aws'", &[]).unwrap().get(0);
    assert_eq!(moving, 3, "rate 0 pauses the pass");
    db.execute("SELECT vault.rotate('rw/0')", &[]).unwrap();
    c.restart();
    db = c.client();
    all_decrypt(&mut db);
    let e = db.execute("SELECT vault.drop_kms_key('aws')", &[]).unwrap_err();
    assert_eq!(secret_vault_it::db_error(&e).0, "2BP01");
    db.batch_execute("ALTER SYSTEM RESET secret_vault.rewrap_rate").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(settled(&mut db, 30), "resumed");
    db.execute("SELECT vault.move_group('rw/0', 'local')", &[]).unwrap();
    assert!(settled(&mut db, 30), "back to local");
    for (to, id_prefix) in [("aws", "arn:aws:kms:"), ("bao", "transit:transit/app:"), ("local", "local:sha256:")] {
        let mut todo = 0;
        for g in ["rw/0", "rw/1"] {
            todo += db.query_one("SELECT vault.move_group($1, $2)", &[&g, &to]).unwrap().get::<_, i64>(0);
        }
        let rows: i64 = db.query_one("SELECT count(*) FROM vault.ring_keys", &[]).unwrap().get(0);
        assert_eq!(todo, rows, "to {to}");
        // Reads and rotations go on during the move.
        all_decrypt(&mut db);
        assert!(settled(&mut db, 30), "moved to {to}");
        let now = ids(&mut db);
        assert!(now.iter().all(|(k, id)| k == to && id.starts_with(id_prefix)), "{to}: {now:?}");
        c.restart();
        db = c.client();
        all_decrypt(&mut db);
        assert!(stat(&mut db, "kms_calls") > 0);
    }
    // The old KMS keys wrap nothing now: they can be dropped.
    db.execute("SELECT vault.drop_kms_key('aws')", &[]).unwrap();
}

#[test]
fn a_pass_survives_kill_9_of_the_worker_and_a_kms_outage_and_loses_no_row() {
    let bao = Bao::start();
    bao.create_key("app", true);
    let mut c = cluster("rw-faults", None, &["secret_vault.rewrap_check_interval = 500", "secret_vault.rewrap_rate = 2"]);
    let mut db = c.client();
    add_transit(&mut db, &bao, "bao");
    data(&mut db, "bao", 6);
    bao.rotate_key("app");
    let todo: i64 = db.query_one("SELECT vault.rewrap('bao')", &[]).unwrap().get(0);
    assert!(todo > 12 && todo <= 18, "rows on v1: {todo}");
    let old = |db: &mut Client| -> i64 {
        db.query_one("SELECT rows_old FROM vault.rewrap_status WHERE kms_key = 'bao'", &[]).unwrap().get(0)
    };
    assert!(eventually(Duration::from_secs(20), || old(&mut db) < 18), "the pass started");
    // kill -9 of the worker: the postmaster restarts the cluster's processes.
    let pid = stat(&mut db, "worker_pid");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut db = c.client();
    let left = old(&mut db);
    assert!(left > 0 && left < 18, "mid-pass: {left}");
    // An outage mid-pass: the error shows, nothing moves, nothing breaks.
    bao.seal();
    assert!(
        eventually(Duration::from_secs(20), || {
            db.query_one("SELECT last_error IS NOT NULL FROM vault.rewrap_status WHERE kms_key = 'bao'", &[]).unwrap().get(0)
        }),
        "the outage is reported"
    );
    let during = old(&mut db);
    bao.unseal();
    assert!(settled(&mut db, 60), "the pass resumed and finished (was {during} left)");
    assert_eq!(ids(&mut db), vec![("bao".into(), "transit:transit/app:v2".into())]);
    let rows: i64 = db.query_one("SELECT count(*) FROM vault.ring_keys", &[]).unwrap().get(0);
    assert_eq!(rows, 18, "no row lost");
    bao.cli(&["write", "transit/keys/app/config", "min_decryption_version=2"]).unwrap();
    c.restart();
    all_decrypt(&mut c.client());
}
