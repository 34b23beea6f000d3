//! GitHub App installation tokens: the App's RS256 JWT is exchanged at
//! `POST {api_url}/app/installations/{id}/access_tokens` for a token that
//! acts as the installation for about an hour.

use std::time::SystemTime;

use zeroize::Zeroizing;

use super::jwt::{self, AppKey};
use super::{upstream_message, GithubConfig, Minted};
use crate::kms::http::{Http, Request, Verdict};
use crate::kms::{aws::sts::parse_time, Call};
use crate::{KmsError, MintError};

const UPSTREAM: &str = "GitHub";
/// The REST API version this client was written against.
const API_VERSION: &str = "2022-11-28";

pub use jwt::{AppKey as PrivateKey, BACKDATE_SECS, LIFETIME_SECS};

/// The App's JWT (exposed for tests and for checking a key by hand).
pub fn app_jwt(config: &GithubConfig, key: &AppKey, now: SystemTime) -> Result<Zeroizing<String>, MintError> {
    jwt::app_jwt(&config.issuer, key, now)
}

pub fn token_url(config: &GithubConfig) -> String {
    format!("{}/app/installations/{}/access_tokens", config.api_url, config.installation_id)
}

#[derive(serde::Deserialize)]
struct Answer {
    token: Option<String>,
    expires_at: Option<String>,
}

#[derive(serde::Deserialize)]
struct Failure {
    message: Option<String>,
}

/// Mints an installation token: one JWT, then the exchange, retried on
/// throttling, 5xx and timeouts within `call`'s limits.
pub fn mint(http: &Http, call: &Call, config: &GithubConfig, key: &AppKey, now: SystemTime) -> Result<Minted, MintError> {
    let jwt = app_jwt(config, key, now)?;
    let url = token_url(config);
    let outcome = http.retrying(call, || {
        let mut authorization = Zeroizing::new(String::with_capacity(jwt.len() + 7));
        authorization.push_str("Bearer ");
        authorization.push_str(&jwt);
        let req = Request {
            method: "POST",
            url: url.clone(),
            headers: vec![
                ("accept".into(), "application/vnd.github+json".into()),
                ("x-github-api-version".into(), API_VERSION.into()),
                ("authorization".into(), std::mem::take(&mut *authorization)),
            ],
            body: Zeroizing::new(Vec::new()),
        };
        let resp = match http.send(req, call.request_timeout, call.interrupted) {
            Ok(r) => r,
            Err(t) => return Verdict::from_transport(t, "GitHub"),
        };
        match resp.status {
            200 | 201 => Verdict::Done(answer(&resp.body, SystemTime::now())),
            429 | 500..=599 => Verdict::Retry(KmsError::Unavailable(format!("HTTP {}: {}", resp.status, message(&resp.body)))),
            status => Verdict::Done(Err(MintError::Refused { upstream: UPSTREAM, status, message: message(&resp.body) })),
        }
    });
    match outcome {
        Ok(r) => r,
        Err(KmsError::Interrupted) => Err(MintError::Interrupted),
        Err(KmsError::Unavailable(m)) => Err(MintError::Unavailable { upstream: UPSTREAM, message: m }),
        Err(e) => Err(MintError::Unavailable { upstream: UPSTREAM, message: e.to_string() }),
    }
}

/// GitHub's `message`, or the status alone: the body is not quoted, it
/// might echo what was sent.
fn message(body: &[u8]) -> String {
    match serde_json::from_slice::<Failure>(body) {
        Ok(Failure { message: Some(m) }) => upstream_message(&m),
        _ => "no message".into(),
    }
}

fn answer(body: &[u8], now: SystemTime) -> Result<Minted, MintError> {
    let bad = |m: &str| MintError::BadAnswer { upstream: UPSTREAM, message: m.into() };
    let a: Answer = serde_json::from_slice(body).map_err(|_| bad("not the JSON of an installation token"))?;
    let value = Zeroizing::new(a.token.ok_or_else(|| bad("no token"))?);
    let expires_at = a.expires_at.as_deref().and_then(parse_time).ok_or_else(|| bad("no expires_at time"))?;
    super::check_token(UPSTREAM, &value, expires_at, now)?;
    Ok(Minted { value, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn an_answer_gives_the_token_and_its_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let m = answer(br#"{"token":"ghs_x1","expires_at":"2024-01-01T01:00:00Z","permissions":{}}"#, now).unwrap();
        assert_eq!((m.value.as_str(), m.expires_at), ("ghs_x1", now + Duration::from_secs(3600)));
    }

    #[test]
    fn unusable_answers_are_refused_without_quoting_them() {
        let now = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        for body in [
            &br#"{"expires_at":"2024-01-01T01:00:00Z"}"#[..],
            br#"{"token":"ghs_secret1"}"#,
            br#"{"token":"ghs_secret1","expires_at":"2023-01-01T00:00:00Z"}"#,
            br#"{"token":"ghs secret1","expires_at":"2024-01-01T01:00:00Z"}"#,
            b"<html>ghs_secret1</html>",
        ] {
            let e = answer(body, now).unwrap_err().to_string();
            assert!(!e.contains("secret1"), "{e}");
        }
    }

    #[test]
    fn error_messages_are_taken_from_github_s_json_only() {
        assert_eq!(message(br#"{"message":"Bad credentials","documentation_url":"x"}"#), "Bad credentials");
        assert_eq!(message(b"Bearer eyJhbGci..."), "no message");
    }
}
