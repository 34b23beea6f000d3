//! The `transit` provider against a real OpenBao dev server on loopback:
//! registration, groups and secrets, a cold restart, outages (seal, a hung,
//! throttling or failing KMS behind a fault proxy), statement_timeout and
//! cancel, TLS with the test's own CA, and token rotation.

use std::time::{Duration, Instant};

use secret_vault_it::peers::{peer_dir, write_server_file, Bao};
use secret_vault_it::proxy::{Mode, Proxy};
use secret_vault_it::{db_error, eventually, stat, Client, Cluster};

fn config(address: &str, token_file: &std::path::Path, extra: &str) -> String {
    format!(r#"{{"address": "{address}", "key": "app", "token_file": "{}"{extra}}}"#, token_file.display())
}

fn add_key(db: &mut Client, name: &str, config: &str) -> Result<String, postgres::Error> {
    db.query_one("SELECT vault.add_kms_key($1, 'transit', $2::text::jsonb)", &[&name, &config]).map(|r| r.get(0))
}

/// A cluster with a transit key registered as `bao` (and made the default).
fn setup(name: &str, address: &str, bao: &Bao, conf: &[&str]) -> (Cluster, std::path::PathBuf) {
    bao.create_key("app", true);
    let dir = peer_dir("transit");
    let token = bao.write_token_file(&dir);
    let c = Cluster::start_with(name, conf);
    let mut db = c.client();
    let id = add_key(&mut db, "bao", &config(address, &token, "")).unwrap();
    assert_eq!(id, "transit:transit/app:v1");
    db.execute("SELECT vault.set_default_kms_key('bao')", &[]).unwrap();
    (c, token)
}

fn sealed_data(db: &mut Client) {
    db.execute("SELECT vault.create_group('t/sign')", &[]).unwrap();
    db.execute("SELECT vault.create_group('t/col', 'encrypt', propagation_delay => '0')", &[]).unwrap();
    db.batch_execute(
        "CREATE TABLE t AS SELECT i, vault.encrypt('t/col', int4send(i)) AS ct FROM generate_series(1, 50) i;
         SELECT vault.create_secret('t/api', 'sekrit-value', NULL, 't/col');",
    )
    .unwrap();
}

fn reads_work(db: &mut Client) {
    let n: i64 = db
        .query_one("SELECT count(*) FROM t WHERE vault.decrypt('t/col', ct) = int4send(i)", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
    let v: String = db.query_one("SELECT vault.read_secret('t/api')", &[]).unwrap().get(0);
    assert_eq!(v, "sekrit-value");
    let ok: bool = db.query_one("SELECT vault.verify_secret('t/api', 'sekrit-value')", &[]).unwrap().get(0);
    assert!(ok);
    let v: String = db.query_one("SELECT value FROM vault.decrypted_secrets WHERE name = 't/api'", &[]).unwrap().get(0);
    assert_eq!(v, "sekrit-value");
    let (cur, key): (i32, Vec<u8>) = {
        let r = db.query_one("SELECT (vault.current('t/sign')).version, vault.resolve('t/sign', 1)", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((cur, key.len()), (1, 32));
}

#[test]
fn transit_keys_wrap_groups_and_secrets_and_survive_a_cold_restart() {
    let bao = Bao::start();
    let (mut c, _token) = setup("transit-basic", &bao.address(), &bao, &[]);
    let mut db = c.client();
    sealed_data(&mut db);
    // Rows record the transit key version; the wrapped key is Vault's ciphertext.
    let (ids, prefixes): (Vec<String>, Vec<Vec<u8>>) = db
        .query("SELECT kms_key_id, substring(wrapped_key for 9) FROM vault.ring_keys", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .unzip();
    assert!(ids.iter().all(|i| i == "transit:transit/app:v1"), "{ids:?}");
    assert!(prefixes.iter().all(|p| p == b"vault:v1:"));
    // The registry shows what new wraps use and no token.
    let (provider, key_id, cfg): (String, String, String) = {
        let r = db.query_one("SELECT provider, key_id, config::text FROM vault.kms_keys WHERE name = 'bao'", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((provider.as_str(), key_id.as_str()), ("transit", "transit:transit/app:v1"));
    assert!(!cfg.contains("root"), "{cfg}");

    c.restart();
    let mut db = c.client();
    reads_work(&mut db);
    assert!(stat(&mut db, "kms_calls_transit") > 0, "a cold cache unwraps through transit");

    // A transit key rotation: new wraps record v2, old rows keep working.
    bao.rotate_key("app");
    let v: i32 = db.query_one("SELECT vault.rotate('t/sign')", &[]).unwrap().get(0);
    let id: String = db
        .query_one("SELECT kms_key_id FROM vault.ring_keys r JOIN vault.key_groups g ON g.id = r.group_id WHERE g.name = 't/sign' AND version = $1", &[&v])
        .unwrap()
        .get(0);
    assert_eq!(id, "transit:transit/app:v2");
    c.restart();
    reads_work(&mut c.client());

    // pg_dump/pg_restore into another database: the dumped default (bao)
    // loads beside the 'local' row CREATE EXTENSION made, nothing twice.
    let dump = c.dir.join("vault.dump");
    c.run_tool("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), "postgres"]);
    c.run_tool("createdb", &["restored"]);
    let out = c.run_tool("pg_restore", &["-d", "restored", dump.to_str().unwrap()]);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut r = c.client_db("restored");
    reads_work(&mut r);
    let defaults: Vec<String> =
        r.query("SELECT name FROM vault.kms_keys WHERE is_default", &[]).unwrap().iter().map(|x| x.get(0)).collect();
    assert_eq!(defaults, vec!["bao".to_string()]);
    let n: i64 = r.query_one("SELECT count(*) FROM vault.ring_keys", &[]).unwrap().get(0);
    let m: i64 = c.client().query_one("SELECT count(*) FROM vault.ring_keys", &[]).unwrap().get(0);
    assert_eq!(n, m);
}

#[test]
fn with_the_kms_sealed_a_warm_cache_serves_every_read_and_a_cold_one_fails_fast_then_recovers() {
    let bao = Bao::start();
    let (mut c, _token) = setup("transit-outage", &bao.address(), &bao, &["secret_vault.kms_retry_budget = 1000"]);
    let mut db = c.client();
    sealed_data(&mut db);
    reads_work(&mut db); // warms the cache
    // A version that activates during the outage: the worker unwraps pending
    // versions ahead of need.
    db.execute("SELECT vault.create_group('t/soon', propagation_delay => '4 seconds')", &[]).unwrap();
    db.execute("SELECT vault.rotate('t/soon')", &[]).unwrap();
    let rotated_at = Instant::now();
    let calls = stat(&mut db, "kms_calls");
    assert!(eventually(Duration::from_secs(3), || stat(&mut db, "kms_calls") >= calls + 2), "worker warmed v1 and v2");
    bao.seal();
    let calls = stat(&mut db, "kms_calls");
    reads_work(&mut db);
    let mut other = c.client();
    reads_work(&mut other);
    assert_eq!(stat(&mut db, "kms_calls"), calls, "warm reads never reach the KMS");
    std::thread::sleep(Duration::from_secs(5).saturating_sub(rotated_at.elapsed()));
    let v: i32 = db.query_one("SELECT (vault.current('t/soon')).version", &[]).unwrap().get(0);
    assert_eq!(v, 2, "the pending version activated while the KMS was sealed");
    // Writes that need the KMS fail cleanly, with the key named.
    let e = db.execute("SELECT vault.rotate('t/sign')", &[]).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "58000", "{msg}");
    assert!(msg.contains("KMS key \"bao\"") && msg.contains("KMS unavailable") && msg.contains("sealed"), "{msg}");

    // Cold: a clear error within the budget, never a wrong answer.
    c.restart();
    let mut db = c.client();
    let start = Instant::now();
    let e = db.query_one("SELECT vault.decrypt('t/col', ct) FROM t LIMIT 1", &[]).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "58000", "{msg}");
    assert!(msg.contains("KMS unavailable"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(8), "failed fast: {:?}", start.elapsed());
    assert!(!msg.contains("root"), "no token in errors: {msg}");

    bao.unseal();
    reads_work(&mut db);
    // The worker recovers on its own too: a due rotation happens.
    db.execute("UPDATE vault.key_groups SET next_rotation_at = now() WHERE name = 't/sign'", &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            db.query_one("SELECT last_version FROM vault.key_groups WHERE name = 't/sign'", &[]).unwrap().get::<_, i32>(0) == 2
        }),
        "the worker rotated after the KMS came back"
    );
}

#[test]
fn a_hung_kms_call_ends_at_statement_timeout_or_cancel_and_failures_are_retried_only_when_worth_it() {
    let bao = Bao::start();
    let proxy = Proxy::start(bao.port);
    let (mut c, _token) = setup(
        "transit-faults",
        &proxy.address(),
        &bao,
        &["secret_vault.kms_max_attempts = 3", "secret_vault.kms_request_timeout = 30s", "secret_vault.kms_retry_budget = 20s"],
    );
    let mut db = c.client();
    sealed_data(&mut db);
    // The data is sealed under version 1; after a rotation the worker warms
    // only version 2, so decrypting needs the KMS every time until it works.
    db.execute("SELECT vault.rotate('t/col')", &[]).unwrap();
    c.restart();
    let mut db = c.client();
    // Let the worker finish warming: the proxy counts only this session's calls.
    assert!(eventually(Duration::from_secs(20), || stat(&mut db, "cached_groups") == 2));
    assert!(eventually(Duration::from_secs(10), || stat(&mut db, "worker_runs") >= 2));

    // Hang: statement_timeout interrupts the wait.
    proxy.set_mode(Mode::Hang);
    db.batch_execute("SET statement_timeout = '700ms'").unwrap();
    let start = Instant::now();
    let e = db.query_one("SELECT vault.decrypt('t/col', ct) FROM t LIMIT 1", &[]).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "57014", "{msg}");
    assert!(msg.contains("statement timeout"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    db.batch_execute("RESET statement_timeout").unwrap();

    // Hang: a cancel request interrupts it too.
    let cancel = db.cancel_token();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        cancel.cancel_query(postgres::NoTls).unwrap();
    });
    let start = Instant::now();
    let e = db.query_one("SELECT vault.decrypt('t/col', ct) FROM t LIMIT 1", &[]).unwrap_err();
    canceller.join().unwrap();
    assert_eq!(db_error(&e).0, "57014");
    assert!(start.elapsed() < Duration::from_secs(3));

    // Throttling: retried up to the attempt limit, then a clear error.
    proxy.set_mode(Mode::bao_throttling());
    let n = proxy.requests();
    let e = db.query_one("SELECT vault.decrypt('t/col', ct) FROM t LIMIT 1", &[]).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "53000", "{msg}");
    assert!(msg.contains("throttled"), "{msg}");
    assert_eq!(proxy.requests() - n, 3, "three attempts");

    // A 5xx: retried likewise.
    proxy.set_mode(Mode::bao_internal_error());
    let n = proxy.requests();
    let (code, _) = db_error(&db.query_one("SELECT vault.decrypt('t/col', ct) FROM t LIMIT 1", &[]).unwrap_err());
    assert_eq!(code, "58000");
    assert_eq!(proxy.requests() - n, 3);

    // A reset connection is not retried: the KMS is failing, fail fast.
    proxy.set_mode(Mode::Reset);
    let n = proxy.requests();
    let (code, _) = db_error(&db.query_one("SELECT vault.decrypt('t/col', ct) FROM t LIMIT 1", &[]).unwrap_err());
    assert_eq!(code, "58000");
    assert_eq!(proxy.requests() - n, 1);

    // Slow but answering: works.
    proxy.set_mode(Mode::Delay(Duration::from_millis(200)));
    reads_work(&mut db);
    proxy.set_mode(Mode::Pass);
    // The backend is healthy after all of it.
    reads_work(&mut db);

    // The worker hung in a KMS call still stops at once for a shutdown.
    proxy.set_mode(Mode::Hang);
    let n = proxy.requests();
    db.execute("UPDATE vault.key_groups SET next_rotation_at = now() WHERE name = 't/sign'", &[]).unwrap();
    assert!(eventually(Duration::from_secs(10), || proxy.requests() > n), "the worker is waiting on the KMS");
    drop(db);
    let start = Instant::now();
    c.restart();
    assert!(start.elapsed() < Duration::from_secs(10), "shutdown took {:?}", start.elapsed());
    proxy.set_mode(Mode::Pass);
    reads_work(&mut c.client());
}

#[test]
fn transit_over_tls_needs_the_configured_ca() {
    let bao = Bao::start_tls();
    bao.create_key("app", true);
    let dir = peer_dir("transit-tls");
    let token = bao.write_token_file(&dir);
    let c = Cluster::start_with_extension("transit-tls");
    let mut db = c.client();
    let address = bao.address();
    assert!(address.starts_with("https://"));
    // Without the CA the server's certificate is not trusted.
    let e = add_key(&mut db, "bao", &config(&address, &token, "")).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "58000", "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    let ca = write_server_file(&dir, "ca.pem", &std::fs::read_to_string(bao.ca_file()).unwrap());
    let extra = format!(r#", "ca_file": "{}""#, ca.display());
    add_key(&mut db, "bao", &config(&address, &token, &extra)).unwrap();
    db.execute("SELECT vault.create_group('tls/col', 'encrypt', kms_key => 'bao')", &[]).unwrap();
    let pt: Vec<u8> = db
        .query_one("SELECT vault.decrypt('tls/col', vault.encrypt('tls/col', 'over tls'))", &[])
        .unwrap()
        .get(0);
    assert_eq!(pt, b"over tls");
}

#[test]
fn a_rotated_token_file_is_picked_up_and_a_token_without_rights_is_access_denied() {
    let bao = Bao::start();
    let (mut c, token) = setup("transit-token", &bao.address(), &bao, &[]);
    let mut db = c.client();
    sealed_data(&mut db);
    // An agent writes a least-privilege token in place of the root one.
    std::fs::write(&token, bao.transit_token("app")).unwrap();
    c.restart();
    let mut db = c.client();
    reads_work(&mut db);
    db.execute("SELECT vault.rotate('t/sign')", &[]).unwrap();
    // A token without the policy: denied, the key named, no token shown.
    let weak = bao.cli(&["token", "create", "-policy=default", "-field=token"]).unwrap();
    std::fs::write(&token, weak.trim()).unwrap();
    let e = db.execute("SELECT vault.rotate('t/sign')", &[]).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "42501", "{msg}");
    assert!(msg.contains("KMS key \"bao\"") && msg.contains("access denied"), "{msg}");
    assert!(!msg.contains(weak.trim()));
}

#[test]
fn registry_is_for_superusers_validates_configs_and_refuses_drops_in_use() {
    let bao = Bao::start();
    let (c, token) = setup("transit-registry", &bao.address(), &bao, &[]);
    let mut db = c.client();
    // Duplicate, unknown provider, unknown config key, a key that is not derived.
    let dup = add_key(&mut db, "bao", &config(&bao.address(), &token, "")).unwrap_err();
    assert_eq!(db_error(&dup).0, "42710");
    let e = db.query_one("SELECT vault.add_kms_key('x', 'gcp', '{}')", &[]).unwrap_err();
    assert_eq!(db_error(&e).0, "22023");
    let e = add_key(&mut db, "x", &config(&bao.address(), &token, r#", "token": "s.123""#)).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "22023", "{msg}");
    assert!(!msg.contains("s.123"), "{msg}");
    bao.create_key("plain", false);
    let cfg = config(&bao.address(), &token, "").replace("\"app\"", "\"plain\"");
    let e = add_key(&mut db, "plain", &cfg).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "55000", "{msg}");
    assert!(msg.contains("derived"), "{msg}");
    // A key that does not exist is refused by the live check.
    let cfg = config(&bao.address(), &token, "").replace("\"app\"", "\"nope\"");
    assert!(add_key(&mut db, "nope", &cfg).is_err());
    assert_eq!(db.query_one("SELECT count(*) FROM vault.kms_keys", &[]).unwrap().get::<_, i64>(0), 2);

    // Non-superusers, even vault_admin, may not touch the registry.
    db.batch_execute("CREATE ROLE ops LOGIN; GRANT vault_admin TO ops;").unwrap();
    let mut ops = Client::connect(&format!("host=127.0.0.1 port={} user=ops dbname=postgres", c.port), postgres::NoTls).unwrap();
    for sql in [
        format!("SELECT vault.add_kms_key('mine', 'transit', '{}')", config(&bao.address(), &token, "")),
        "SELECT vault.set_default_kms_key('local')".to_string(),
        "SELECT vault.drop_kms_key('bao')".to_string(),
        "SELECT vault.move_group('r/g', 'local')".to_string(),
    ] {
        let e = ops.batch_execute(&sql).unwrap_err();
        assert_eq!(db_error(&e).0, "42501", "{sql}");
    }
    let listed: i64 = ops.query_one("SELECT count(*) FROM vault.kms_keys", &[]).unwrap().get(0);
    assert_eq!(listed, 2, "vault_admin may list the registry");

    // New groups use the default; a key in use or the default cannot be dropped.
    db.execute("SELECT vault.create_group('r/g')", &[]).unwrap();
    let k: String = db.query_one("SELECT kms_key FROM vault.groups WHERE name = 'r/g'", &[]).unwrap().get(0);
    assert_eq!(k, "bao");
    let e = db.execute("SELECT vault.drop_kms_key('bao')", &[]).unwrap_err();
    assert_eq!(db_error(&e).0, "55000", "the default");
    db.execute("SELECT vault.set_default_kms_key('local')", &[]).unwrap();
    let e = db.execute("SELECT vault.drop_kms_key('bao')", &[]).unwrap_err();
    assert_eq!(db_error(&e).0, "2BP01", "in use");
    db.execute("SELECT vault.drop_group('r/g')", &[]).unwrap();
    db.execute("SELECT vault.drop_kms_key('bao')", &[]).unwrap();
    let e = db.execute("SELECT vault.drop_kms_key('bao')", &[]).unwrap_err();
    assert_eq!(db_error(&e).0, "42704");
}
