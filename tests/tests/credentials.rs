//! Minted credentials end to end: `vault.create_credential`, the worker
//! minting GitHub App installation tokens against a stand-in of the GitHub
//! API (which checks the App JWT with OpenSSL) and EKS tokens compared byte
//! for byte with botocore's, refreshing before expiry, keeping the last
//! token through upstream failures and failing closed once it expires,
//! access rules, a streaming standby that serves but never mints, and no
//! token in the server log, the tables or the data files.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::types::ToSql;
use secret_vault_it::peers::Moto;
use secret_vault_it::standins::{base64url_decode, eks_reference_token, rsa_test_key, GithubStandin};
use secret_vault_it::{db_error, eventually, files_containing, free_port, stat, Client, Cluster, NoTls};

/// Worker rounds this often in every cluster here, so that a mint due now
/// happens within a fraction of a second.
const FAST_WORKER: &str = "secret_vault.worker_interval = 200ms";

fn cluster(name: &str, conf: &[&str]) -> Cluster {
    let mut all = vec![FAST_WORKER];
    all.extend_from_slice(conf);
    Cluster::start_with(name, &all)
}

fn connect_as(c: &Cluster, role: &str) -> Client {
    let info = format!("host=127.0.0.1 port={} user={role} dbname=postgres connect_timeout=10", c.port);
    Client::connect(&info, NoTls).unwrap_or_else(|e| panic!("connect {info}: {e}"))
}

fn ok(db: &mut Client, sql: &str) {
    db.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error().map(|d| d.message())));
}

/// A github_app config; an empty `api_url` leaves it out (GitHub's own API).
fn github_config(issuer: serde_json::Value, installation: serde_json::Value, key_secret: &str, api_url: &str) -> String {
    let mut c = serde_json::json!({"installation_id": installation, "private_key_secret": key_secret});
    if !api_url.is_empty() {
        c["api_url"] = api_url.into();
    }
    // A numeric app id as a JSON number or a string; anything else is a client id.
    let is_app_id = issuer.is_number() || issuer.as_str().is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
    c[if is_app_id { "app_id" } else { "client_id" }] = issuer;
    c.to_string()
}

fn create(db: &mut Client, name: &str, provider: &str, config: &str, refresh_before: &str) -> Result<String, postgres::Error> {
    db.query_one(
        "SELECT vault.create_credential($1, $2, $3::text::jsonb, $4::text::interval)::text",
        &[&name, &provider, &config, &refresh_before],
    )
    .map(|r| r.get(0))
}

/// `vault.credential(name)`, or (SQLSTATE, message).
fn credential(db: &mut Client, name: &str) -> Result<String, (String, String)> {
    db.query_one("SELECT vault.credential($1)", &[&name]).map(|r| r.get(0)).map_err(|e| db_error(&e))
}

/// A credential's row of `vault.credentials`, times as seconds since the epoch.
#[derive(Debug, Clone)]
struct Row {
    minted_at: Option<f64>,
    expires_at: Option<f64>,
    next_refresh_at: f64,
    failures: i32,
    last_error: Option<String>,
    last_error_at: Option<f64>,
}

fn row_opt(db: &mut Client, name: &str) -> Option<Row> {
    db.query_opt(
        "SELECT extract(epoch FROM minted_at)::float8, extract(epoch FROM expires_at)::float8,
                extract(epoch FROM next_refresh_at)::float8, failures, last_error,
                extract(epoch FROM last_error_at)::float8
           FROM vault.credentials WHERE name = $1",
        &[&name],
    )
    .unwrap()
    .map(|r| Row {
        minted_at: r.get(0),
        expires_at: r.get(1),
        next_refresh_at: r.get(2),
        failures: r.get(3),
        last_error: r.get(4),
        last_error_at: r.get(5),
    })
}

fn row(db: &mut Client, name: &str) -> Row {
    row_opt(db, name).unwrap_or_else(|| panic!("no row for {name} in vault.credentials"))
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Waits until `vault.credential(name)` serves a token `accept` likes; returns it.
fn await_token(db: &mut Client, name: &str, within: Duration, c: &Cluster, mut accept: impl FnMut(&str) -> bool) -> String {
    let mut last = None;
    let got = eventually(within, || {
        let r = credential(db, name);
        let hit = matches!(&r, Ok(t) if accept(t));
        last = Some(r);
        hit
    });
    let row = row_opt(db, name);
    assert!(got, "{name}: no acceptable token within {within:?}; last answer {last:?}\nrow {row:?}\nlog:\n{}", tail(c));
    last.unwrap().unwrap()
}

/// Waits until the credential's row satisfies `f`; returns that row.
fn await_row(db: &mut Client, name: &str, within: Duration, what: &str, mut f: impl FnMut(&Row) -> bool) -> Row {
    let mut last = None;
    let got = eventually(within, || {
        let r = row(db, name);
        let hit = f(&r);
        last = Some(r);
        hit
    });
    assert!(got, "{name}: {what} not seen within {within:?}; last row {last:?}");
    last.unwrap()
}

fn tail(c: &Cluster) -> String {
    let log = c.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn claim_as_string(v: &serde_json::Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
}

/// The presigned URL inside an EKS token.
fn eks_url(token: &str) -> String {
    let body = token.strip_prefix("k8s-aws-v1.").unwrap_or_else(|| panic!("not an EKS token: {token}"));
    assert!(!body.contains('='), "an EKS token is unpadded: {token}");
    String::from_utf8(base64url_decode(body).unwrap()).unwrap()
}

/// A query parameter of a URL, still percent-encoded.
fn query_param<'a>(url: &'a str, name: &str) -> &'a str {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_else(|| panic!("no query in {url}"));
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

// ---------------------------------------------------------------------------
// 1. github_app end to end

#[test]
fn github_app_tokens_are_minted_served_to_every_session_and_refreshed_before_they_expire() {
    let (pkcs8, pkcs1, public) = rsa_test_key();
    // 20 s tokens, refreshed 15 s before expiry: the refresh comes ~5 s
    // after the first mint, well before the first token expires.
    let gh = GithubStandin::start("123", "456", &public, 20);
    // The same key as PKCS#8 for an App known by its client id, on a GitHub
    // Enterprise Server style API under /api/v3.
    let ghes = GithubStandin::start_with_prefix("Iv23liTESTclient", "789", &public, 600, "/api/v3");
    let c = cluster("cred-gh", &[]);
    let mut db = c.client();
    db.execute("SELECT vault.create_secret('github/app-key', $1)", &[&pkcs1]).unwrap();
    db.execute("SELECT vault.create_secret('github/app-key8', $1)", &[&pkcs8]).unwrap();
    let config = github_config(123.into(), "456".into(), "github/app-key", &gh.api_url());
    let id = create(&mut db, "gh/ci", "github_app", &config, "15 seconds").unwrap();
    assert_eq!(id.len(), 36, "a uuid: {id}");
    create(
        &mut db,
        "gh/ghes",
        "github_app",
        &github_config("Iv23liTESTclient".into(), 789.into(), "github/app-key8", &ghes.api_url()),
        "5 minutes",
    )
    .unwrap();

    // The worker mints at once after creation; reads serve the stand-in's token.
    let first = await_token(&mut db, "gh/ci", Duration::from_secs(15), &c, |_| true);
    let stats = gh.stats_json();
    assert_eq!(stats["tokens"][0].as_str(), Some(first.as_str()), "the token GitHub issued is served: {stats}");
    assert!(first.starts_with("ghs_"));
    assert_eq!(stats["minted"], 1, "{stats}");
    assert_eq!(stats["rejected"], serde_json::json!([]), "the JWT was valid: {stats}");
    let claims = &stats["last_claims"];
    assert_eq!(claim_as_string(&claims["iss"]), "123", "{claims}");
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert!(exp - iat <= 600, "a JWT lives at most 10 minutes: {claims}");
    assert!(iat as f64 <= now_secs() && exp as f64 > now_secs() - 5.0, "{claims}");
    let ua = stats["user_agents"][0].as_str().unwrap_or("");
    assert!(!ua.trim().is_empty(), "GitHub needs a User-Agent: {stats}");
    assert_eq!(stats["api_versions"][0].as_str(), Some("2022-11-28"), "{stats}");
    assert_eq!(stats["accept_mismatches"], 0, "Accept: application/vnd.github+json: {stats}");

    // Another session reads the same token, without minting anything.
    let mut other = c.client();
    assert_eq!(credential(&mut other, "gh/ci").unwrap(), first);
    assert_eq!(gh.minted(), 1, "reads never mint");

    let r = row(&mut db, "gh/ci");
    let (minted_at, expires_at) = (r.minted_at.expect("minted_at"), r.expires_at.expect("expires_at"));
    assert!((now_secs() - minted_at).abs() < 10.0, "{r:?}");
    // The stand-in gives whole seconds: expiry is 19-20 s after the mint.
    assert!((expires_at - minted_at - 20.0).abs() <= 1.5, "expires ≈ mint + TTL: {r:?}");
    assert!(r.last_error.is_none() && r.failures == 0, "{r:?}");
    assert!((r.next_refresh_at - (expires_at - 15.0)).abs() < 1.0, "refresh 15 s before expiry: {r:?}");

    // The PKCS#8 key, a client id as issuer and an API under a prefix.
    let ghes_token = await_token(&mut db, "gh/ghes", Duration::from_secs(15), &c, |_| true);
    let s = ghes.stats_json();
    assert_eq!(s["tokens"], serde_json::json!([ghes_token]), "{s}");
    assert_eq!(s["rejected"], serde_json::json!([]), "{s}");
    assert_eq!(claim_as_string(&s["last_claims"]["iss"]), "Iv23liTESTclient", "{s}");

    // The refresh: a second token before the first expires, served at once.
    let second = await_token(&mut db, "gh/ci", Duration::from_secs(15), &c, |t| t != first);
    assert!(now_secs() < expires_at, "refreshed before the first token expired");
    let tokens = gh.tokens();
    assert!(tokens.len() >= 2 && tokens[..2] == [first.clone(), second.clone()], "{tokens:?}");
    let r2 = row(&mut db, "gh/ci");
    assert!(r2.minted_at.unwrap() < expires_at, "{r2:?}");
    assert!(r2.minted_at.unwrap() >= minted_at + 3.0, "not before its refresh time: {r:?} then {r2:?}");
    assert_eq!(credential(&mut other, "gh/ci").unwrap(), second, "the other session follows at once");
    assert!(gh.rejected().is_empty());
}

// ---------------------------------------------------------------------------
// 2. upstream errors

/// Calls the HTTP settings allow per mint below, and how long a hung one waits.
const FLAKY_CONF: &[&str] = &[
    "secret_vault.kms_request_timeout = 1s",
    "secret_vault.kms_connect_timeout = 1s",
    "secret_vault.kms_max_attempts = 3",
    "secret_vault.kms_retry_budget = 6s",
];

/// After a successful mint (nothing in flight: the next is ~2 s away), sets
/// `mode` and waits for the first failure; checks its message and returns
/// how many HTTP calls that one failed mint made.
fn one_failure(gh: &GithubStandin, db: &mut Client, name: &str, mode: &str, expect: &str) -> (u64, Row) {
    let before = gh.calls();
    gh.set_mode(mode, None);
    let r = await_row(db, name, Duration::from_secs(20), &format!("a failure in mode {mode}"), |r| r.failures >= 1);
    // Read at once: the next attempt is at least a second away.
    let calls = gh.calls() - before;
    assert_eq!(r.failures, 1, "{r:?}");
    let e = r.last_error.clone().unwrap_or_default();
    assert!(e.contains(expect), "mode {mode}: last_error {e:?} should contain {expect:?}");
    assert!(r.last_error_at.is_some(), "{r:?}");
    (calls, r)
}

/// Back to "ok": the next attempt mints, and the error is cleared.
fn recovers(gh: &GithubStandin, db: &mut Client, c: &Cluster, name: &str, ttl: u64) -> String {
    let minted = gh.minted();
    gh.set_mode("ok", Some(ttl));
    let token = await_token(db, name, Duration::from_secs(25), c, |t| {
        gh.minted() > minted && gh.tokens().last().map(String::as_str) == Some(t)
    });
    let r = await_row(db, name, Duration::from_secs(5), "a cleared error", |r| r.failures == 0);
    assert!(r.last_error.is_none() && r.last_error_at.is_none(), "{r:?}");
    token
}

#[test]
fn upstream_failures_keep_serving_the_last_token_until_it_expires_then_fail_closed_and_recover() {
    let (_, pkcs1, public) = rsa_test_key();
    // 8 s tokens refreshed 6 s ahead: the first refresh (and so the first
    // failure) comes ~2 s after each mint.
    let gh = GithubStandin::start("42", "7", &public, 8);
    let c = cluster("cred-flaky", FLAKY_CONF);
    let mut db = c.client();
    db.execute("SELECT vault.create_secret('github/app-key', $1)", &[&pkcs1]).unwrap();
    create(&mut db, "gh/flaky", "github_app", &github_config("42".into(), "7".into(), "github/app-key", &gh.api_url()), "6 seconds")
        .unwrap();
    let old = await_token(&mut db, "gh/flaky", Duration::from_secs(15), &c, |_| true);

    // 401: not retried (one call per failed mint), recorded, the old token served meanwhile.
    let refused = "GitHub refused the request (HTTP 401): A JSON web token could not be decoded";
    let (calls, r) = one_failure(&gh, &mut db, "gh/flaky", "401", refused);
    assert_eq!(calls, 1, "a 401 is not retried");
    assert_eq!(credential(&mut db, "gh/flaky").unwrap(), old, "the previous token is still served");
    let expires_at = r.expires_at.unwrap();
    // Failures keep coming (1 s, 2 s... apart) while the old token stays
    // served right up to its expiry, and not a moment after.
    let mut served_late = false;
    let mut max_failures = r.failures;
    // Until just past the expiry: the attempt after that (doubling
    // backoff) should already meet the recovered upstream below.
    while now_secs() < expires_at + 0.3 {
        let before = now_secs();
        let answer = credential(&mut db, "gh/flaky");
        let after = now_secs();
        if after < expires_at - 0.05 {
            assert_eq!(answer.as_deref().ok(), Some(old.as_str()), "before expiry ({after} < {expires_at}): {answer:?}");
        } else if before > expires_at + 0.05 {
            match &answer {
                Ok(_) => served_late = true,
                Err((code, msg)) => {
                    assert_eq!(code, "55000", "{msg}");
                    assert!(msg.starts_with("credential \"gh/flaky\" has no unexpired token: the last token expired"), "{msg}");
                    assert!(!msg.contains(&old), "{msg}");
                }
            }
        }
        max_failures = max_failures.max(row(&mut db, "gh/flaky").failures);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!served_late, "a token was served after its expires_at");
    assert!(max_failures >= 2, "the worker kept retrying: {max_failures}");
    let r = row(&mut db, "gh/flaky");
    assert!(r.last_error.as_deref().unwrap_or("").contains("HTTP 401"), "{r:?}");
    let tries = gh.calls();
    assert!(tries >= 1 + r.failures as u64, "one call per failed mint at least: {tries} calls, {r:?}");

    // Back to normal: a new token, the error cleared.
    let fresh = recovers(&gh, &mut db, &c, "gh/flaky", 8);
    assert_ne!(fresh, old);

    // 404: refused, not retried.
    let (calls, _) = one_failure(&gh, &mut db, "gh/flaky", "404", "GitHub refused the request (HTTP 404): Not Found");
    assert_eq!(calls, 1, "a 404 is not retried");
    recovers(&gh, &mut db, &c, "gh/flaky", 8);

    // 500: retried within kms_max_attempts, then recorded as unavailable.
    let (calls, _) = one_failure(&gh, &mut db, "gh/flaky", "500", "GitHub unavailable: HTTP 500");
    assert_eq!(calls, 3, "a 500 is retried up to kms_max_attempts");
    recovers(&gh, &mut db, &c, "gh/flaky", 8);

    // No answer: each attempt times out after kms_request_timeout (1 s).
    let started = Instant::now();
    let (calls, r) = one_failure(&gh, &mut db, "gh/flaky", "hang", "GitHub unavailable");
    assert_eq!(calls, 3, "a timeout is retried up to kms_max_attempts: {r:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "bounded by the request timeout: {:?}", started.elapsed());
    let e = r.last_error.unwrap();
    assert!(e.contains("no answer within 1000 ms"), "the request timeout is what ended each attempt: {e}");
    // The token minted before the hang is still served while it lasts.
    assert!(credential(&mut db, "gh/flaky").is_ok() || now_secs() >= r.expires_at.unwrap());
    recovers(&gh, &mut db, &c, "gh/flaky", 8);

    let log = c.log();
    assert!(log.contains("minting credential \"gh/flaky\" failed"), "failures are logged:\n{}", tail(&c));
    assert!(gh.rejected().is_empty(), "{:?}", gh.rejected());
}

// ---------------------------------------------------------------------------
// 3. never minted

#[test]
fn a_credential_never_minted_fails_closed_and_says_why() {
    let (_, pkcs1, _) = rsa_test_key();
    // A loopback port nothing listens on.
    let closed = free_port();
    let c = cluster("cred-never", &["secret_vault.kms_connect_timeout = 1s"]);
    let mut db = c.client();
    db.execute("SELECT vault.create_secret('github/app-key', $1)", &[&pkcs1]).unwrap();
    create(
        &mut db,
        "gh/down",
        "github_app",
        &github_config("1".into(), "2".into(), "github/app-key", &format!("http://127.0.0.1:{closed}")),
        "5 minutes",
    )
    .unwrap();
    let (code, msg) = credential(&mut db, "gh/down").unwrap_err();
    assert_eq!(code, "55000", "{msg}");
    assert_eq!(msg, "credential \"gh/down\" has no unexpired token: no token has been minted yet");
    let r = await_row(&mut db, "gh/down", Duration::from_secs(15), "a failed mint", |r| r.failures >= 1);
    let e = r.last_error.clone().unwrap();
    assert!(e.contains("GitHub unavailable"), "{e}");
    assert!(r.minted_at.is_none() && r.expires_at.is_none(), "{r:?}");
    // Retries back off, doubling from a second: 1 s after the first
    // failure, 2 s after the second.
    let backoff = |r: &Row| r.next_refresh_at - r.last_error_at.unwrap();
    let f = r.failures;
    assert!((backoff(&r) - 2f64.powi(f - 1)).abs() < 0.5, "backoff after {f} failure(s): {r:?}");
    let r = await_row(&mut db, "gh/down", Duration::from_secs(10), "another failed mint", |r| r.failures > f);
    assert!((backoff(&r) - 2f64.powi(r.failures - 1)).abs() < 0.5, "backoff after {} failures: {r:?}", r.failures);
    let (code, _) = credential(&mut db, "gh/down").unwrap_err();
    assert_eq!(code, "55000", "still nothing to serve");
    // An unknown name is another error.
    assert_eq!(credential(&mut db, "gh/nope").unwrap_err().0, "42704");
}

// ---------------------------------------------------------------------------
// 4. aws_eks signed with vault secrets

#[test]
fn an_eks_token_signed_with_vault_secrets_equals_botocores_and_its_credentials_are_accepted_by_sts() {
    let moto = Moto::start();
    let c = cluster("cred-eks", &[]);
    let mut db = c.client();
    db.execute("SELECT vault.create_secret('aws/akid', $1)", &[&moto.access_key_id]).unwrap();
    db.execute("SELECT vault.create_secret('aws/secret', $1)", &[&moto.secret_access_key]).unwrap();
    let config = serde_json::json!({
        "cluster": "prod", "region": "us-east-1", "sts_endpoint": moto.endpoint(),
        "access_key_id_secret": "aws/akid", "secret_access_key_secret": "aws/secret",
    })
    .to_string();
    create(&mut db, "eks/prod", "aws_eks", &config, "5 minutes").unwrap();
    let token = await_token(&mut db, "eks/prod", Duration::from_secs(15), &c, |_| true);

    let url = eks_url(&token);
    assert!(url.starts_with(&format!("{}/?Action=GetCallerIdentity&Version=2011-06-15&", moto.endpoint())), "{url}");
    assert_eq!(query_param(&url, "X-Amz-Expires"), "60");
    assert_eq!(query_param(&url, "X-Amz-SignedHeaders"), "host%3Bx-k8s-aws-id");
    let date = query_param(&url, "X-Amz-Date");
    let reference = eks_reference_token(
        &moto.access_key_id,
        &moto.secret_access_key,
        None,
        "us-east-1",
        "prod",
        date,
        Some(&moto.endpoint()),
    );
    assert_eq!(token, reference, "byte for byte what `aws eks get-token` makes at {date}");

    // The STS call the token encodes. moto (5.2.5, auth on) answers any
    // presigned (query-string signed) GET with HTTP 500: it looks for an
    // Authorization header. So the URL's signature is checked by the
    // equality with botocore above, and the credentials it was signed with
    // by a header-signed GetCallerIdentity POST that moto verifies (SigV4,
    // IAM user known to moto): the identity EKS would see.
    let arn = moto.python_args(
        r#"
s = boto3.client("sts", endpoint_url=ENDPOINT, region_name="us-east-1",
                 aws_access_key_id=sys.argv[1], aws_secret_access_key=sys.argv[2])
print(s.get_caller_identity()["Arn"])
"#,
        &[&moto.access_key_id, &moto.secret_access_key],
    );
    assert!(arn.trim().ends_with(":user/secret-vault"), "{arn}");

    let r = row(&mut db, "eks/prod");
    let life = r.expires_at.unwrap() - r.minted_at.unwrap();
    assert!((life - 900.0).abs() <= 2.0, "an EKS token lives 15 minutes: {r:?}");
    assert!((r.next_refresh_at - (r.expires_at.unwrap() - 300.0)).abs() < 1.0, "{r:?}");
    assert!(r.last_error.is_none(), "{r:?}");
    assert!(!c.log().contains(&moto.secret_access_key), "the secret key is not logged");
}

// ---------------------------------------------------------------------------
// 5. aws_eks signed with the server's AWS environment

#[test]
fn an_eks_token_signed_with_the_servers_aws_environment_is_for_superusers_only() {
    // Fixed keys rather than moto's: signing is local, and the token is
    // checked byte for byte against botocore's for the same keys, on the
    // default regional STS endpoint, with a session token.
    const AKID: &str = "ASIAVAULTTESTENVKEY1";
    const SECRET: &str = "vaultTestEnvSecretKey/0123456789abcdefXYZ";
    const SESSION: &str = "FwoGZXIvYXdzEXAMPLEvaultTEST/session+token==";
    let mut c = Cluster::init_env(
        "cred-eks-env",
        true,
        &[FAST_WORKER],
        &[("AWS_ACCESS_KEY_ID", AKID), ("AWS_SECRET_ACCESS_KEY", SECRET), ("AWS_SESSION_TOKEN", SESSION)],
    );
    c.start();
    let mut db = c.client();
    ok(&mut db, "CREATE EXTENSION secret_vault; CREATE ROLE ops LOGIN IN ROLE vault_admin;");
    let config = r#"{"cluster": "prod", "region": "us-east-1"}"#;

    // A vault_admin that is no superuser may not sign with the server's identity.
    let mut ops = connect_as(&c, "ops");
    let (code, msg) = db_error(&create(&mut ops, "eks/env", "aws_eks", config, "5 minutes").unwrap_err());
    assert_eq!(code, "42501", "{msg}");
    assert_eq!(db.query_one("SELECT count(*) FROM vault.credential_store", &[]).unwrap().get::<_, i64>(0), 0);

    create(&mut db, "eks/env", "aws_eks", config, "5 minutes").unwrap();
    let token = await_token(&mut db, "eks/env", Duration::from_secs(15), &c, |_| true);
    let url = eks_url(&token);
    assert!(url.starts_with("https://sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"), "{url}");
    assert!(query_param(&url, "X-Amz-Credential").starts_with(&format!("{AKID}%2F")), "{url}");
    let date = query_param(&url, "X-Amz-Date");
    assert_eq!(token, eks_reference_token(AKID, SECRET, Some(SESSION), "us-east-1", "prod", date, None));
    // The superuser's credential is readable by the vault_admin (default rules).
    assert_eq!(credential(&mut ops, "eks/env").unwrap(), token);
}

// ---------------------------------------------------------------------------
// 6. access rules and config checks

const SENTINEL: &str = "SENTINEL-cred-7f3a9c";

#[test]
fn access_rules_confine_reading_listing_and_creating_credentials_and_bad_configs_never_echo_values() {
    let (_, pkcs1, public) = rsa_test_key();
    let gh = GithubStandin::start("123", "456", &public, 600);
    let c = cluster("cred-access", &["secret_vault.lockout_threshold = 0"]);
    let mut su = c.client();
    ok(
        &mut su,
        "CREATE ROLE ci LOGIN IN ROLE vault_reader;
         CREATE ROLE intruder LOGIN IN ROLE vault_reader;
         CREATE ROLE builder LOGIN IN ROLE vault_admin;
         SELECT vault.revoke_access('vault_reader', ARRAY['read','verify','encrypt','decrypt'], '**');
         SELECT vault.revoke_access('vault_admin', ARRAY['read','verify','encrypt','decrypt','write','rotate'], '**');
         SELECT vault.grant_access('ci', ARRAY['read'], 'gh/*');
         SELECT vault.grant_access('intruder', ARRAY['read'], 'other/*');
         SELECT vault.grant_access('builder', ARRAY['write'], 'gh/**');
         SELECT vault.grant_access('builder', ARRAY['read'], 'pub/*');",
    );
    su.execute("SELECT vault.create_secret('github/app-key', $1)", &[&pkcs1]).unwrap();
    su.execute("SELECT vault.create_secret('pub/app-key', $1)", &[&pkcs1]).unwrap();
    let cfg = |secret: &str| github_config("123".into(), "456".into(), secret, &gh.api_url());
    create(&mut su, "gh/ci", "github_app", &cfg("github/app-key"), "5 minutes").unwrap();
    let token = await_token(&mut su, "gh/ci", Duration::from_secs(15), &c, |_| true);

    // A role with a rule on gh/* reads it and sees it listed.
    let mut ci = connect_as(&c, "ci");
    assert_eq!(credential(&mut ci, "gh/ci").unwrap(), token);
    let listed: Vec<String> = ci.query("SELECT name FROM vault.credentials", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(listed, ["gh/ci"]);

    // A reader without one: refused whether the name exists or not, and it
    // is not listed.
    let mut intruder = connect_as(&c, "intruder");
    for name in ["gh/ci", "gh/missing"] {
        let (code, msg) = credential(&mut intruder, name).unwrap_err();
        assert_eq!(code, "42501", "{name}: {msg}");
        assert!(!msg.contains(name) && !msg.contains(&token), "{msg}");
    }
    let n: i64 = intruder.query_one("SELECT count(*) FROM vault.credentials", &[]).unwrap().get(0);
    assert_eq!(n, 0, "no credential listed without a rule");
    // Readers cannot create or drop at all (no EXECUTE).
    assert_eq!(db_error(&create(&mut ci, "gh/x", "github_app", &cfg("github/app-key"), "5 minutes").unwrap_err()).0, "42501");
    assert_eq!(db_error(&ci.execute("SELECT vault.drop_credential('gh/ci')", &[]).unwrap_err()).0, "42501");

    // A vault_admin may name only secrets it may read, under names it may
    // write. Its configs use GitHub's public API (an endpoint of one's own
    // is for superusers, docs/credentials.md), so the worker must not mint
    // them here: rotation off from now on, no request leaves the machine.
    ok(&mut su, "ALTER SYSTEM SET secret_vault.rotation = off");
    ok(&mut su, "SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(1));
    let cfg_public = |secret: &str| github_config("123".into(), "456".into(), secret, "");
    let mut builder = connect_as(&c, "builder");
    let (code, msg) = db_error(&create(&mut builder, "gh/new", "github_app", &cfg_public("github/app-key"), "5 minutes").unwrap_err());
    assert_eq!(code, "42501", "a secret it cannot read: {msg}");
    assert!(!msg.contains("github/app-key"), "{msg}");
    let (code, msg) = db_error(&create(&mut builder, "gh/new", "github_app", &cfg_public("pub/missing"), "5 minutes").unwrap_err());
    assert_eq!(code, "42704", "a secret that does not exist: {msg}");
    let (code, msg) = db_error(&create(&mut builder, "elsewhere/new", "github_app", &cfg_public("pub/app-key"), "5 minutes").unwrap_err());
    assert_eq!(code, "42501", "a name it may not write: {msg}");
    // An endpoint of its own: the server would connect there and report
    // back in last_error, so only superusers choose one.
    let (code, msg) = db_error(&create(&mut builder, "gh/new", "github_app", &cfg("pub/app-key"), "5 minutes").unwrap_err());
    assert_eq!(code, "42501", "an api_url of its own: {msg}");
    create(&mut builder, "gh/new", "github_app", &cfg_public("pub/app-key"), "5 minutes").unwrap();
    let (code, msg) = db_error(&create(&mut builder, "gh/new", "github_app", &cfg_public("pub/app-key"), "5 minutes").unwrap_err());
    assert_eq!(code, "42710", "a duplicate name: {msg}");
    // A superuser naming a secret that does not exist.
    let (code, _) = db_error(&create(&mut su, "gh/ghost", "github_app", &cfg("github/none"), "5 minutes").unwrap_err());
    assert_eq!(code, "42704");

    // NULL arguments.
    for sql in [
        "SELECT vault.create_credential(NULL, 'github_app', '{}'::jsonb)",
        "SELECT vault.create_credential('gh/n', NULL, '{}'::jsonb)",
        "SELECT vault.create_credential('gh/n', 'github_app', NULL)",
        "SELECT vault.create_credential('gh/n', 'github_app', '{\"app_id\": 1, \"installation_id\": 2, \"private_key_secret\": \"github/app-key\"}'::jsonb, NULL)",
    ] {
        assert_eq!(db_error(&su.query(sql, &[]).unwrap_err()).0, "22004", "{sql}");
    }

    // Configs that cannot work: 22023, and the value never echoed (message,
    // detail, hint), whichever field it was put in, endpoint URLs included.
    let s = SENTINEL;
    let e = SENTINEL;
    let bad: Vec<(&str, String, bool)> = vec![
        ("gitlab", format!(r#"{{"token": "{s}"}}"#), false),
        ("github_app", format!(r#"{{"app_id": "{s}", "installation_id": 1, "private_key_secret": "github/app-key"}}"#), false),
        ("github_app", format!(r#"{{"app_id": 1, "installation_id": "{s}", "private_key_secret": "github/app-key"}}"#), false),
        ("github_app", format!(r#"{{"client_id": "{s} x", "installation_id": 1, "private_key_secret": "github/app-key"}}"#), false),
        ("github_app", format!(r#"{{"app_id": 1, "installation_id": 1, "private_key_secret": "github/app-key", "{s}": 1}}"#), false),
        ("github_app", format!(r#"{{"app_id": 1, "installation_id": 1, "private_key": "-----BEGIN {s}"}}"#), false),
        ("github_app", format!(r#"{{"app_id": 1, "installation_id": 1, "private_key_secret": "k", "api_url": "http://{e}.example.com"}}"#), false),
        ("aws_eks", format!(r#"{{"cluster": "{s} x", "region": "us-east-1"}}"#), false),
        ("aws_eks", format!(r#"{{"cluster": "prod", "region": "{s}"}}"#), false),
        ("aws_eks", format!(r#"{{"cluster": "prod", "region": "us-east-1", "access_key_id_secret": "{s}"}}"#), false),
        ("aws_eks", format!(r#"["{s}"]"#), false),
        ("aws_eks", format!(r#"{{"cluster": "prod", "region": "us-east-1", "sts_endpoint": "http://10.0.0.1/{e}"}}"#), false),
    ];
    // Every case is tried before failing, so that a report lists them all.
    let mut wrong = Vec::new();
    for (provider, config, endpoint) in &bad {
        let e = su
            .query("SELECT vault.create_credential('gh/bad', $1, $2::text::jsonb)", &[provider as &(dyn ToSql + Sync), config])
            .unwrap_err();
        let db = e.as_db_error().unwrap();
        let told = format!("{} {} {}", db.message(), db.detail().unwrap_or(""), db.hint().unwrap_or(""));
        if db.code().code() != "22023" || (!endpoint && told.contains("SENTINEL")) {
            wrong.push(format!("{provider} {config} -> {} {told}", db.code().code()));
        }
    }
    // Nothing was stored by the refused calls (checked before the echo
    // assertion, so that a failure there does not hide this one).
    let n: i64 = su.query_one("SELECT count(*) FROM vault.credential_store", &[]).unwrap().get(0);
    assert_eq!(n, 2, "gh/ci and gh/new only");
    let log = c.log();
    let logged: Vec<&str> = log.lines().filter(|l| l.contains(SENTINEL)).collect();
    assert!(
        wrong.is_empty() && logged.is_empty(),
        "not 22023, or the value echoed:\n{}\nconfig values in the server log:\n{}",
        wrong.join("\n"),
        logged.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 7. a streaming standby

#[test]
fn a_streaming_standby_serves_the_primarys_token_and_never_mints() {
    let (_, pkcs1, public) = rsa_test_key();
    let gh = GithubStandin::start("123", "456", &public, 600);
    let primary = cluster("cred-primary", &[]);
    let mut p = primary.client();
    p.execute("SELECT vault.create_secret('github/app-key', $1)", &[&pkcs1]).unwrap();
    create(&mut p, "gh/ci", "github_app", &github_config("123".into(), "456".into(), "github/app-key", &gh.api_url()), "5 minutes")
        .unwrap();
    let token = await_token(&mut p, "gh/ci", Duration::from_secs(15), &primary, |_| true);

    let standby = primary.standby("cred-standby", &[FAST_WORKER, "secret_vault.sync_interval = 200ms"]);
    let mut s = standby.client();
    assert!(s.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get::<_, bool>(0));
    await_token(&mut s, "gh/ci", Duration::from_secs(20), &standby, |t| t == token);

    // Make the credential due while the primary's worker leaves it alone
    // (rotation off there): only the standby's worker could mint it now.
    ok(&mut p, "ALTER SYSTEM SET secret_vault.rotation = off");
    ok(&mut p, "SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(1));
    ok(&mut p, "UPDATE vault.credential_store SET next_refresh_at = now() - interval '1 second' WHERE name = 'gh/ci'");
    let due = eventually(Duration::from_secs(10), || {
        s.query_one("SELECT next_refresh_at < now() FROM vault.credentials WHERE name = 'gh/ci'", &[]).unwrap().get::<_, bool>(0)
    });
    assert!(due, "the due time replicated");
    let minted = gh.minted();
    let calls = gh.calls();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((gh.minted(), gh.calls()), (minted, calls), "the standby never asks the upstream");
    assert_eq!(credential(&mut s, "gh/ci").unwrap(), token, "the standby keeps serving the replicated token");
    let log = standby.log();
    assert!(!log.contains("read-only transaction"), "the standby attempted a write:\n{log}");
    assert!(!log.contains("minting credential"), "the standby tried to mint:\n{log}");
    assert!(stat(&mut s, "worker_runs") > 0, "the standby's worker is running");

    // Rotation back on at the primary: it mints, and the standby follows.
    ok(&mut p, "ALTER SYSTEM RESET secret_vault.rotation");
    ok(&mut p, "SELECT pg_reload_conf()");
    let fresh = await_token(&mut p, "gh/ci", Duration::from_secs(15), &primary, |t| t != token);
    assert_eq!(gh.tokens().last(), Some(&fresh));
    await_token(&mut s, "gh/ci", Duration::from_secs(20), &standby, |t| t == fresh);
    let (rp, rs) = (row(&mut p, "gh/ci"), row(&mut s, "gh/ci"));
    assert_eq!((rp.minted_at, rp.expires_at), (rs.minted_at, rs.expires_at), "the standby shows the primary's row");
    // Writes on the standby are refused.
    let (code, _) = db_error(&s.execute("SELECT vault.drop_credential('gh/ci')", &[]).unwrap_err());
    assert_eq!(code, "25006");
}

// ---------------------------------------------------------------------------
// 8. no token anywhere but the sealed column

#[test]
fn tokens_and_the_app_key_never_reach_the_server_log_the_tables_or_the_data_files() {
    let (_, pkcs1, public) = rsa_test_key();
    // 5 s tokens refreshed 4 s ahead: a new token every second or so.
    let gh = GithubStandin::start("123", "456", &public, 5);
    let c = cluster(
        "cred-sentinel",
        &[
            "log_statement = 'all'",
            "log_min_duration_statement = 0",
            "log_min_messages = debug1",
            "log_error_verbosity = verbose",
            "secret_vault.audit_reads = on",
        ],
    );
    let mut db = c.client();
    // The key's base64 body stands for the key: one of its lines must not leak.
    let key_line = pkcs1.lines().nth(3).unwrap().to_string();
    db.execute("SELECT vault.create_secret('github/app-key', $1)", &[&pkcs1]).unwrap();
    // One by bind parameters, one by literals (simple protocol).
    create(&mut db, "gh/ci", "github_app", &github_config("123".into(), "456".into(), "github/app-key", &gh.api_url()), "4 seconds")
        .unwrap();
    ok(
        &mut db,
        &format!(
            "SELECT vault.create_credential('gh/lit', 'github_app', '{}'::jsonb, '4 seconds')",
            github_config("123".into(), "456".into(), "github/app-key", &gh.api_url())
        ),
    );
    // Several tokens, read by both protocols and by a wrapper function.
    ok(&mut db, "CREATE FUNCTION public.ci_token() RETURNS text LANGUAGE sql AS $f$ SELECT vault.credential('gh/ci') $f$");
    assert!(eventually(Duration::from_secs(20), || gh.minted() >= 5), "tokens minted: {}", gh.minted());
    for _ in 0..3 {
        credential(&mut db, "gh/ci").unwrap();
        credential(&mut db, "gh/lit").unwrap();
        ok(&mut db, "SELECT vault.credential('gh/ci'), vault.credential('gh/lit'), public.ci_token()");
        db.query("SELECT * FROM vault.credentials", &[]).unwrap();
    }
    // A failing upstream, then a failing read of an expired token.
    gh.set_mode("401", None);
    let r = await_row(&mut db, "gh/ci", Duration::from_secs(10), "a failure", |r| r.failures >= 1);
    let expired = eventually(Duration::from_secs(10), || credential(&mut db, "gh/ci").is_err());
    assert!(expired, "{r:?}");
    assert!(db.batch_execute("SELECT vault.credential('gh/ci')").is_err());
    gh.set_mode("ok", None);
    await_row(&mut db, "gh/ci", Duration::from_secs(20), "a recovery", |r| r.failures == 0);
    credential(&mut db, "gh/ci").unwrap();

    let tokens = gh.tokens();
    assert!(tokens.len() >= 6, "{tokens:?}");
    // The audit worker writes read records asynchronously: wait for them, so
    // that the check below is not made against an empty log.
    let audited = eventually(Duration::from_secs(10), || {
        db.query_one("SELECT count(*) FROM vault.audit_log WHERE action = 'credential'", &[]).unwrap().get::<_, i64>(0) > 0
    });
    assert!(audited, "reads of credentials are audited with audit_reads on");
    let jsons: Vec<String> = db
        .query(
            "SELECT string_agg(t::text, ' ') FROM vault.credential_store t
             UNION ALL SELECT string_agg(t::text, ' ') FROM vault.credentials t
             UNION ALL SELECT string_agg(t::text, ' ') FROM vault.audit_log t",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect();
    for t in &tokens {
        for (table, text) in ["credential_store", "credentials", "audit_log"].iter().zip(&jsons) {
            assert!(!text.contains(t.as_str()), "token in vault.{table}");
        }
    }

    db.batch_execute("CHECKPOINT; SELECT pg_switch_wal(); CHECKPOINT;").unwrap();
    drop(db);
    let log = c.log();
    assert!(log.contains("minted credential \"gh/ci\""), "the log has the worker's lines:\n{}", tail(&c));
    assert!(log.contains("statement: SELECT vault.credential"), "statements are logged:\n{}", tail(&c));
    for t in &tokens {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(t.as_str())).collect();
        assert!(lines.is_empty(), "a token in the server log: {lines:?}");
        let mut hits = Vec::new();
        files_containing(&c.data, t.as_bytes(), &mut hits);
        assert!(hits.is_empty(), "a token in the data files: {hits:?}");
    }
    let jwt_lines: Vec<&str> = log.lines().filter(|l| l.contains("eyJ")).collect();
    assert!(jwt_lines.is_empty(), "a JWT in the server log: {jwt_lines:?}");
    assert!(!log.contains(&key_line), "the App key in the server log");
    let mut hits = Vec::new();
    files_containing(&c.data, key_line.as_bytes(), &mut hits);
    assert!(hits.is_empty(), "the App key in the data files: {hits:?}");
}

// ---------------------------------------------------------------------------
// 9. drop_credential

#[test]
fn a_dropped_credential_is_no_longer_minted_or_served() {
    let (_, pkcs1, public) = rsa_test_key();
    // 4 s tokens refreshed 3 s ahead: a mint about every second.
    let gh = GithubStandin::start("123", "456", &public, 4);
    let c = cluster("cred-drop", &[]);
    let mut db = c.client();
    db.execute("SELECT vault.create_secret('github/app-key', $1)", &[&pkcs1]).unwrap();
    let config = github_config("123".into(), "456".into(), "github/app-key", &gh.api_url());
    create(&mut db, "gh/ci", "github_app", &config, "3 seconds").unwrap();
    assert!(eventually(Duration::from_secs(15), || gh.minted() >= 2), "the worker keeps minting");
    let before = credential(&mut db, "gh/ci").unwrap();

    db.execute("SELECT vault.drop_credential('gh/ci')", &[]).unwrap();
    assert_eq!(credential(&mut db, "gh/ci").unwrap_err().0, "42704");
    assert!(row_opt(&mut db, "gh/ci").is_none());
    // A mint already under way when it was dropped may still reach the
    // stand-in; after that, none.
    std::thread::sleep(Duration::from_secs(1));
    let minted = gh.minted();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gh.minted(), minted, "no mint after the drop");
    assert_eq!(db_error(&db.execute("SELECT vault.drop_credential('gh/ci')", &[]).unwrap_err()).0, "42704");
    let n: i64 = db.query_one("SELECT count(*) FROM vault.credential_store", &[]).unwrap().get(0);
    assert_eq!(n, 0);

    // The name can be used again; the new credential starts from scratch.
    create(&mut db, "gh/ci", "github_app", &config, "3 seconds").unwrap();
    let again = await_token(&mut db, "gh/ci", Duration::from_secs(15), &c, |_| true);
    assert_ne!(again, before);
    assert!(gh.tokens()[minted as usize..].contains(&again), "a token minted after the re-creation");
}

// ---------------------------------------------------------------------------
// 10. rows edited by hand (or restored, or replicated) fail alone

#[test]
fn a_poisoned_credential_row_fails_alone_and_an_edited_row_never_serves_a_token() {
    let (_, pkcs1, public) = rsa_test_key();
    let gh = GithubStandin::start("123", "456", &public, 600);
    let c = cluster("cred-poison", &[]);
    let mut db = c.client();
    db.execute("SELECT vault.create_secret('keys/app', $1)", &[&pkcs1]).unwrap();
    let config = github_config("123".into(), "456".into(), "keys/app", &gh.api_url());
    for name in ["gh/bad-config", "gh/huge-interval", "gh/renamed", "gh/good"] {
        create(&mut db, name, "github_app", &config, "5 minutes").unwrap();
    }
    let first = await_token(&mut db, "gh/renamed", Duration::from_secs(15), &c, |_| true);
    await_token(&mut db, "gh/good", Duration::from_secs(15), &c, |_| true);
    // What no API call can write: a config the provider refuses, an
    // interval past what extract(epoch) * 1e6 fits in, a provider unknown
    // to this version. Each row is due at once.
    ok(
        &mut db,
        "UPDATE vault.credential_store SET config = '{\"app_id\": 1}', next_refresh_at = now() WHERE name = 'gh/bad-config';
         UPDATE vault.credential_store SET refresh_before = '150000000 years', next_refresh_at = now() WHERE name = 'gh/huge-interval';
         UPDATE vault.credential_store SET next_refresh_at = now() WHERE name = 'gh/good';",
    );
    let bad = await_row(&mut db, "gh/bad-config", Duration::from_secs(15), "a recorded failure", |r| r.failures > 0);
    assert!(bad.last_error.as_deref().unwrap_or("").contains("required"), "{bad:?}");
    // The others are still minted, the huge interval clamped.
    let minted_before = gh.minted();
    ok(&mut db, "UPDATE vault.credential_store SET next_refresh_at = now() WHERE name IN ('gh/good', 'gh/huge-interval')");
    assert!(eventually(Duration::from_secs(15), || gh.minted() >= minted_before + 2), "healthy rows keep minting\n{}", tail(&c));
    let huge = row(&mut db, "gh/huge-interval");
    assert!(huge.last_error.is_none() && huge.minted_at.is_some(), "{huge:?}");

    // A token row renamed onto another name does not open under it (the
    // name is bound into the seal), and the swap is not served.
    ok(&mut db, "UPDATE vault.credential_store SET name = 'gh/stolen' WHERE name = 'gh/renamed'");
    let err = credential(&mut db, "gh/stolen").unwrap_err();
    assert_eq!(err.0, "22000", "{err:?}");
    assert!(!err.1.contains(&first));
    // An expires_at pushed into the future changes nothing: the sealed
    // expiry decides, and the column only schedules.
    ok(&mut db, "UPDATE vault.credential_store SET expires_at = 'infinity' WHERE name = 'gh/good'");
    assert!(credential(&mut db, "gh/good").is_ok());
}
