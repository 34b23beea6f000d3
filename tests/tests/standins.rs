//! The stand-ins for the services minted credentials come from behave as the
//! minted-credential tests rely on: the GitHub API stand-in mints a token for
//! a valid app JWT only and fails or hangs on demand; the EKS reference token
//! is the one botocore makes. No cluster.

use std::io::ErrorKind;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secret_vault_it::standins::{
    base64url_decode, eks_reference_token, http_call, rsa_test_key, sign_jwt, GithubStandin, HttpResponse,
};

const APP_ID: &str = "123456";
const INSTALLATION: &str = "4242";
const RS256: &str = r#"{"alg":"RS256","typ":"JWT"}"#;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims(iss: &str, iat: i64, exp: i64) -> String {
    format!(r#"{{"iat":{iat},"exp":{exp},"iss":{iss}}}"#)
}

/// The claims a GitHub App client sends: iat back-dated a minute, 10 minute
/// lifetime, iss the app id as a JSON string.
fn good_claims() -> String {
    let t = now();
    claims(&format!("\"{APP_ID}\""), t - 60, t + 540)
}

fn mint(gh: &GithubStandin, installation: &str, jwt: &str) -> HttpResponse {
    let bearer = format!("Bearer {jwt}");
    http_call(
        "POST",
        &gh.access_tokens_url(installation),
        &[
            ("Authorization", &bearer),
            ("Accept", "application/vnd.github+json"),
            ("X-GitHub-Api-Version", "2022-11-28"),
            ("User-Agent", "secret_vault-tests"),
        ],
        None,
        Duration::from_secs(10),
    )
    .unwrap()
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_z(text: &str) -> i64 {
    assert_eq!(text.len(), 20, "{text}");
    assert!(text.ends_with('Z') && &text[10..11] == "T", "{text}");
    let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap_or_else(|_| panic!("{text}"));
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

#[test]
fn github_mints_a_token_for_a_valid_app_jwt() {
    let (pkcs8, pkcs1, public) = rsa_test_key();
    let gh = GithubStandin::start(APP_ID, INSTALLATION, &public, 3600);

    let answer = mint(&gh, INSTALLATION, &sign_jwt(&pkcs8, RS256, &good_claims()));
    assert_eq!(answer.status, 201, "{}\n{:?}", answer.body, gh.rejected());
    let doc = answer.json();
    let token = doc["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("ghs_") && token.len() == 40, "{token}");
    assert!(token[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
    let ahead = rfc3339_z(doc["expires_at"].as_str().unwrap()) - now();
    assert!((3590..=3601).contains(&ahead), "expires_at {} is {ahead} s ahead", doc["expires_at"]);
    assert_eq!(doc["permissions"]["contents"], "read");
    assert_eq!(doc["repository_selection"], "all");

    // The same key in PKCS#1, and iss as a JSON number, are accepted too.
    let t = now();
    let numeric = claims(APP_ID, t - 60, t + 540);
    let answer = mint(&gh, INSTALLATION, &sign_jwt(&pkcs1, RS256, &numeric));
    assert_eq!(answer.status, 201, "{}\n{:?}", answer.body, gh.rejected());
    let second = answer.json()["token"].as_str().unwrap().to_string();
    assert_ne!(token, second);

    let stats = gh.stats_json();
    assert_eq!(stats["calls"], 2);
    assert_eq!(stats["minted"], 2);
    assert_eq!(gh.tokens(), vec![token, second]);
    assert!(gh.rejected().is_empty());
    assert_eq!(stats["last_claims"]["iss"].as_u64(), Some(APP_ID.parse().unwrap()));
    assert_eq!(stats["last_headers"]["x-github-api-version"], "2022-11-28");
    assert_eq!(stats["last_headers"]["user-agent"], "secret_vault-tests");
    assert_eq!(stats["last_headers"]["authorization"], "Bearer [redacted]");
    assert_eq!(stats["accept_mismatches"], 0);

    // A shorter TTL set through the control route applies to new tokens.
    gh.set_mode("ok", Some(120));
    let answer = mint(&gh, INSTALLATION, &sign_jwt(&pkcs8, RS256, &good_claims()));
    assert_eq!(answer.status, 201, "{}", answer.body);
    let ahead = rfc3339_z(answer.json()["expires_at"].as_str().unwrap()) - now();
    assert!((110..=121).contains(&ahead), "{ahead}");
    assert_eq!(gh.minted(), 3);
    assert_eq!(gh.calls(), 3);
    assert!(gh.log().is_empty(), "{}", gh.log());
}

#[test]
fn github_serves_enterprise_paths_under_a_prefix() {
    let (pkcs8, _, public) = rsa_test_key();
    let gh = GithubStandin::start_with_prefix("Iv1.0123456789abcdef", INSTALLATION, &public, 3600, "/api/v3");
    assert_eq!(gh.api_url(), format!("http://127.0.0.1:{}/api/v3", gh.port));
    let t = now();
    let jwt = sign_jwt(&pkcs8, RS256, &claims(r#""Iv1.0123456789abcdef""#, t - 30, t + 500));
    let answer = mint(&gh, INSTALLATION, &jwt);
    assert_eq!(answer.status, 201, "{}\n{:?}", answer.body, gh.rejected());
    // Not without the prefix.
    let bare = format!("http://127.0.0.1:{}/app/installations/{INSTALLATION}/access_tokens", gh.port);
    let answer = http_call(
        "POST",
        &bare,
        &[("User-Agent", "t"), ("Authorization", &format!("Bearer {jwt}"))],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(gh.minted(), 1);
}

#[test]
fn github_refuses_what_github_refuses() {
    let (pkcs8, _, public) = rsa_test_key();
    let (other_key, _, _) = rsa_test_key();
    let gh = GithubStandin::start(APP_ID, INSTALLATION, &public, 3600);
    let t = now();
    let iss = format!("\"{APP_ID}\"");

    let refused = [
        ("another key", sign_jwt(&other_key, RS256, &good_claims()), "signature does not verify"),
        ("alg none", sign_jwt(&pkcs8, r#"{"alg":"none","typ":"JWT"}"#, &good_claims()), "alg is 'none'"),
        ("alg HS256", sign_jwt(&pkcs8, r#"{"alg":"HS256","typ":"JWT"}"#, &good_claims()), "alg is 'HS256'"),
        ("expired", sign_jwt(&pkcs8, RS256, &claims(&iss, t - 100, t - 1)), "expired"),
        ("lifetime over 660 s", sign_jwt(&pkcs8, RS256, &claims(&iss, t - 60, t + 601)), "lifetime"),
        ("exp too far ahead", sign_jwt(&pkcs8, RS256, &claims(&iss, t, t + 650)), "too far in the future"),
        ("iat in the future", sign_jwt(&pkcs8, RS256, &claims(&iss, t + 30, t + 300)), "in the future"),
        ("iat too old", sign_jwt(&pkcs8, RS256, &claims(&iss, t - 200, t + 300)), "too old"),
        ("wrong iss", sign_jwt(&pkcs8, RS256, &claims("\"654321\"", t - 60, t + 540)), "not the app id"),
        ("no iss", sign_jwt(&pkcs8, RS256, &format!(r#"{{"iat":{},"exp":{}}}"#, t - 60, t + 540)), "iss is missing"),
        ("two parts", "eyJhbGciOiJSUzI1NiJ9.e30".to_string(), "2 parts"),
    ];
    for (what, jwt, reason) in &refused {
        let answer = mint(&gh, INSTALLATION, jwt);
        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
        assert_eq!(answer.json()["message"], "A JSON web token could not be decoded", "{what}");
        let last = gh.rejected().pop().unwrap();
        assert!(last.starts_with("jwt: ") && last.contains(reason), "{what}: {last}");
    }

    // A padded signature is not a JWT part.
    let padded = format!("{}==", sign_jwt(&pkcs8, RS256, &good_claims()));
    assert_eq!(mint(&gh, INSTALLATION, &padded).status, 401);

    // A valid JWT for another installation: 404.
    let answer = mint(&gh, "999", &sign_jwt(&pkcs8, RS256, &good_claims()));
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(answer.json()["message"], "Not Found");
    assert!(gh.rejected().pop().unwrap().starts_with("installation: 999"));

    // No User-Agent: 403, as on GitHub.
    let answer = http_call(
        "POST",
        &gh.access_tokens_url(INSTALLATION),
        &[("Authorization", &format!("Bearer {}", sign_jwt(&pkcs8, RS256, &good_claims())))],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(gh.rejected().pop().unwrap(), "user-agent: missing");
    // And no Accept header was counted, not refused.
    assert_eq!(gh.stats_json()["accept_mismatches"], 1);

    assert_eq!(gh.minted(), 0);
    assert!(gh.tokens().is_empty());
    assert_eq!(gh.calls() as usize, refused.len() + 3);
    assert!(gh.log().is_empty(), "{}", gh.log());
}

#[test]
fn github_fails_and_hangs_on_demand() {
    let (pkcs8, _, public) = rsa_test_key();
    let gh = GithubStandin::start(APP_ID, INSTALLATION, &public, 3600);
    let jwt = sign_jwt(&pkcs8, RS256, &good_claims());

    for (mode, status) in [("500", 500), ("401", 401), ("404", 404)] {
        gh.set_mode(mode, None);
        let answer = mint(&gh, INSTALLATION, &jwt);
        assert_eq!(answer.status, status, "mode {mode}: {}", answer.body);
        assert!(answer.json()["message"].is_string(), "{}", answer.body);
    }

    gh.set_mode("hang", None);
    let started = std::time::Instant::now();
    let err = http_call(
        "POST",
        &gh.access_tokens_url(INSTALLATION),
        &[("Authorization", &format!("Bearer {jwt}")), ("User-Agent", "t")],
        None,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A hanging request does not stop the others.
    gh.set_mode("ok", None);
    let answer = mint(&gh, INSTALLATION, &jwt);
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(gh.calls(), 5);
    assert_eq!(gh.minted(), 1);
    assert!(gh.rejected().is_empty(), "forced answers are not refusals: {:?}", gh.rejected());

    // Unknown modes are refused by the control route.
    let answer = http_call(
        "POST",
        &format!("http://127.0.0.1:{}/_control", gh.port),
        &[],
        Some(r#"{"mode": "sometimes"}"#),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
}

const AK: &str = "AKIDEXAMPLE";
const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const QUERY: &str = "?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256\
    &X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-west-2%2Fsts%2Faws4_request&X-Amz-Date=20240101T000000Z\
    &X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id";

fn decode_eks(token: &str) -> String {
    let body = token.strip_prefix("k8s-aws-v1.").unwrap_or_else(|| panic!("{token}"));
    assert!(!body.contains('='), "padding left in {token}");
    String::from_utf8(base64url_decode(body).unwrap()).unwrap()
}

fn signature(url: &str) -> &str {
    let (_, sig) = url.rsplit_once("&X-Amz-Signature=").unwrap_or_else(|| panic!("{url}"));
    assert!(sig.len() == 64 && sig.bytes().all(|b| b.is_ascii_hexdigit()), "{url}");
    sig
}

#[test]
fn eks_reference_tokens_are_the_presigned_regional_sts_url() {
    let plain = eks_reference_token(AK, SK, None, "us-west-2", "my-cluster", "20240101T000000Z", None);
    let url = decode_eks(&plain);
    let start = format!("https://sts.us-west-2.amazonaws.com/{QUERY}&X-Amz-Signature=");
    assert!(url.starts_with(&start), "{url}");
    let sig = signature(&url);
    // Deterministic for fixed inputs.
    assert_eq!(plain, eks_reference_token(AK, SK, None, "us-west-2", "my-cluster", "20240101T000000Z", None));

    // A session token goes in the signed query, after the other auth params.
    let session = "FQoGZXIvYXdzEXAMPLE/+token==";
    let with_token =
        decode_eks(&eks_reference_token(AK, SK, Some(session), "us-west-2", "my-cluster", "20240101T000000Z", None));
    let start = format!(
        "https://sts.us-west-2.amazonaws.com/{QUERY}&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE%2F%2Btoken%3D%3D\
         &X-Amz-Signature="
    );
    assert!(with_token.starts_with(&start), "{with_token}");
    assert_ne!(signature(&with_token), sig);

    let local = decode_eks(&eks_reference_token(
        AK,
        SK,
        None,
        "us-west-2",
        "my-cluster",
        "20240101T000000Z",
        Some("http://127.0.0.1:5000"),
    ));
    assert!(local.starts_with(&format!("http://127.0.0.1:5000/{QUERY}&X-Amz-Signature=")), "{local}");
    assert_ne!(signature(&local), sig, "the Host header (with port) is signed");

    // The cluster name is signed (header), not in the URL.
    let other = decode_eks(&eks_reference_token(AK, SK, None, "us-west-2", "other", "20240101T000000Z", None));
    assert!(!other.contains("other"), "{other}");
    assert_ne!(signature(&other), sig);
}
