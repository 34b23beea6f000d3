//! The `aws` provider against moto (AWS KMS and STS) on loopback, with SigV4
//! verified: static credentials from the server's environment, a shared
//! credentials file, IRSA web identity through STS; alias resolution, cold
//! restarts, outages and throttling through a fault proxy.

use std::time::{Duration, Instant};

use secret_vault_it::peers::{peer_dir, write_server_file, Moto};
use secret_vault_it::proxy::{Mode, Proxy};
use secret_vault_it::{db_error, eventually, stat, Client, Cluster};

fn config(endpoint: &str, key_id: &str) -> String {
    format!(r#"{{"region": "us-east-1", "key_id": "{key_id}", "endpoint": "{endpoint}"}}"#)
}

fn add_key(db: &mut Client, name: &str, config: &str) -> Result<String, postgres::Error> {
    db.query_one("SELECT vault.add_kms_key($1, 'aws', $2::text::jsonb)", &[&name, &config]).map(|r| r.get(0))
}

fn static_env(moto: &Moto) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), moto.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), moto.secret_access_key.clone()),
    ]
}

fn cluster(name: &str, env: &[(String, String)], conf: &[&str]) -> Cluster {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = Cluster::init_env(name, true, conf, &env);
    c.start();
    c.client().batch_execute("CREATE EXTENSION secret_vault").unwrap();
    c
}

fn data(db: &mut Client) {
    db.batch_execute(
        "SELECT vault.create_group('a/sign', kms_key => 'aws');
         SELECT vault.create_group('a/col', 'encrypt', propagation_delay => '0', kms_key => 'aws');
         CREATE TABLE t AS SELECT i, vault.encrypt('a/col', int4send(i)) AS ct FROM generate_series(1, 20) i;
         SELECT vault.create_secret('a/api', 'aws-sekrit', NULL, 'a/col');",
    )
    .unwrap();
}

fn reads_work(db: &mut Client) {
    let n: i64 = db
        .query_one("SELECT count(*) FROM t WHERE vault.decrypt('a/col', ct) = int4send(i)", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
    let v: String = db.query_one("SELECT vault.read_secret('a/api')", &[]).unwrap().get(0);
    assert_eq!(v, "aws-sekrit");
    let key: Vec<u8> = db.query_one("SELECT vault.resolve('a/sign', 1)", &[]).unwrap().get(0);
    assert_eq!(key.len(), 32);
}

#[test]
fn an_alias_resolves_to_its_key_arn_and_every_row_records_it_across_a_cold_restart() {
    let moto = Moto::start();
    let arn = moto.create_key();
    moto.create_alias("alias/secret-vault", &arn);
    let mut c = cluster("aws-basic", &static_env(&moto), &[]);
    let mut db = c.client();
    let id = add_key(&mut db, "aws", &config(&moto.endpoint(), "alias/secret-vault")).unwrap();
    assert_eq!(id, arn, "the alias became the key ARN");
    let shown: String = db.query_one("SELECT key_id FROM vault.kms_keys WHERE name = 'aws'", &[]).unwrap().get(0);
    assert_eq!(shown, arn);
    data(&mut db);
    let ids: Vec<String> = db.query("SELECT DISTINCT kms_key_id FROM vault.ring_keys", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![arn.clone()]);
    c.restart();
    let mut db = c.client();
    reads_work(&mut db);
    assert!(stat(&mut db, "kms_calls_aws") > 0);
    assert_eq!(stat(&mut db, "kms_calls_transit"), 0);

    // The alias moves to a new key: new wraps use it, old rows still open.
    let arn2 = moto.create_key();
    moto.update_alias("alias/secret-vault", &arn2);
    db.execute("SELECT vault.rotate('a/col')", &[]).unwrap();
    let newest: String = db
        .query_one(
            "SELECT kms_key_id FROM vault.ring_keys r JOIN vault.key_groups g ON g.id = r.group_id
              WHERE g.name = 'a/col' ORDER BY version DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(newest, arn2);
    c.restart();
    reads_work(&mut c.client());
}

#[test]
fn a_wrong_secret_is_refused_by_sigv4_verification_and_named_as_access_denied() {
    let moto = Moto::start();
    let arn = moto.create_key();
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), moto.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "not-the-secret-at-all-0000000000000000000".to_string()),
    ];
    let c = cluster("aws-badsig", &env, &[]);
    let mut db = c.client();
    let e = add_key(&mut db, "aws", &config(&moto.endpoint(), &arn)).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "42501", "{msg}");
    assert!(msg.contains("KMS key \"aws\"") && msg.contains("access denied"), "{msg}");
    assert!(!msg.contains("not-the-secret") && !msg.contains(&moto.access_key_id[4..]), "{msg}");
    assert_eq!(db.query_one("SELECT count(*) FROM vault.kms_keys", &[]).unwrap().get::<_, i64>(0), 1, "nothing registered");
}

#[test]
fn credentials_come_from_a_shared_credentials_file_or_from_irsa_web_identity() {
    let moto = Moto::start();
    let arn = moto.create_key();
    let dir = peer_dir("aws-creds");
    // A profile in a shared credentials file.
    let file = write_server_file(
        &dir,
        "credentials",
        &format!("[vault]\naws_access_key_id = {}\naws_secret_access_key = {}\n", moto.access_key_id, moto.secret_access_key),
    );
    let env = vec![
        ("AWS_SHARED_CREDENTIALS_FILE".to_string(), file.display().to_string()),
        ("AWS_PROFILE".to_string(), "vault".to_string()),
    ];
    let c = cluster("aws-profile", &env, &[]);
    let mut db = c.client();
    add_key(&mut db, "aws", &config(&moto.endpoint(), &arn)).unwrap();
    data(&mut db);
    reads_work(&mut db);
    drop(db);
    drop(c);

    // IRSA: only a role and a token file; STS hands out temporary credentials.
    let (role, token_file) = moto.web_identity(&dir);
    let env = vec![
        ("AWS_ROLE_ARN".to_string(), role),
        ("AWS_WEB_IDENTITY_TOKEN_FILE".to_string(), token_file.display().to_string()),
        ("AWS_ENDPOINT_URL_STS".to_string(), moto.endpoint()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ];
    let mut c = cluster("aws-irsa", &env, &[]);
    let mut db = c.client();
    add_key(&mut db, "aws", &config(&moto.endpoint(), &arn)).unwrap();
    data(&mut db);
    c.restart();
    reads_work(&mut c.client());
}

#[test]
fn aws_outages_keep_warm_reads_working_fail_cold_ones_fast_and_retry_throttling_within_bounds() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let arn = moto.create_key();
    let mut c = cluster(
        "aws-faults",
        &static_env(&moto),
        &["secret_vault.kms_max_attempts = 3", "secret_vault.kms_retry_budget = 5s", "secret_vault.kms_request_timeout = 1s"],
    );
    let mut db = c.client();
    add_key(&mut db, "aws", &config(&proxy.address(), &arn)).unwrap();
    data(&mut db);
    reads_work(&mut db);
    db.execute("SELECT vault.rotate('a/col')", &[]).unwrap();
    reads_work(&mut db);

    // Warm: the KMS answering 500 to everything changes nothing for reads.
    proxy.set_mode(Mode::aws_internal_error());
    let calls = stat(&mut db, "kms_calls");
    reads_work(&mut db);
    assert_eq!(stat(&mut db, "kms_calls"), calls);

    // Cold: after a restart, data under version 1 needs the KMS.
    proxy.set_mode(Mode::Pass);
    c.restart();
    let mut db = c.client();
    assert!(eventually(Duration::from_secs(20), || stat(&mut db, "cached_groups") == 2));
    assert!(eventually(Duration::from_secs(10), || stat(&mut db, "worker_runs") >= 2));
    proxy.set_mode(Mode::aws_throttling());
    let n = proxy.requests();
    let e = db.query_one("SELECT vault.decrypt('a/col', ct) FROM t LIMIT 1", &[]).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "53000", "{msg}");
    assert!(msg.contains("ThrottlingException") || msg.contains("throttled"), "{msg}");
    assert_eq!(proxy.requests() - n, 3, "three signed attempts");

    // No answer at all: each attempt times out (1 s), retried within the budget.
    proxy.set_mode(Mode::Hang);
    let start = Instant::now();
    let (code, msg) = db_error(&db.query_one("SELECT vault.decrypt('a/col', ct) FROM t LIMIT 1", &[]).unwrap_err());
    assert_eq!(code, "58000", "{msg}");
    assert!(start.elapsed() < Duration::from_secs(8), "{:?}", start.elapsed());

    // Recovery.
    proxy.set_mode(Mode::Pass);
    reads_work(&mut db);
}
