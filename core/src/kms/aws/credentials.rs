//! AWS credentials from the server process's standard AWS environment,
//! found in the SDKs' order:
//!
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. the shared files (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`,
//!    by default under `~/.aws/`), profile `AWS_PROFILE` or `default`;
//! 3. web identity (EKS IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`
//!    or the profile's `web_identity_token_file` + `role_arn`, exchanged at STS.
//!
//! Whatever was found is cached: static credentials for a minute (so a
//! rotated `~/.aws/credentials` is picked up without a restart, at the cost
//! of one small file read a minute), temporary ones until five minutes
//! before they expire (the token file is re-read at each refresh, since
//! Kubernetes rotates it). Used by the KMS provider now and meant for any
//! later signer (an EKS token minter signs with the same credentials).

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::env::Env;
use super::profile::{self, FileKind, Profile};
use super::sts::{self, WebIdentity};
use crate::kms::http::Http;
use crate::kms::Call;
use crate::KmsError;

/// How long credentials without an expiry are used before being looked up again.
pub const STATIC_TTL: Duration = Duration::from_secs(60);
/// Temporary credentials are refreshed when less than this remains.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// After a failed refresh, still-valid temporary credentials are used for
/// this long before the next try.
const RETRY_FAILED_REFRESH: Duration = Duration::from_secs(30);

/// A set of AWS credentials. `Debug` shows the access key id (an
/// identifier, as in CloudTrail) and where they came from, never the
/// secret key or the session token, which are wiped on drop.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    expiry: Option<SystemTime>,
    source: String,
}

impl Credentials {
    /// `source` says where they came from, for messages ("the environment").
    pub fn new(
        access_key_id: &str,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
        expiry: Option<SystemTime>,
        source: &str,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key,
            session_token,
            expiry,
            source: source.to_string(),
        }
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_ref().map(|t| t.as_str())
    }

    /// When temporary credentials stop working; None for long-term ones.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expiry
    }

    /// As the type AWS's signer takes (it keeps the secret in a zeroizing
    /// buffer).
    pub fn for_signer(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.access_key_id(),
            self.secret_access_key(),
            self.session_token().map(str::to_string),
            self.expiry(),
            "secret_vault",
        )
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("expiry", &self.expiry)
            .field("source", &self.source)
            .finish()
    }
}

struct Cached {
    creds: Credentials,
    refresh_at: SystemTime,
}

/// The chain of credential sources, with its cache. Used from one thread
/// (a backend), hence the `RefCell`.
pub struct CredentialChain {
    env: Env,
    /// For the STS endpoint.
    region: String,
    clock: Box<dyn Fn() -> SystemTime>,
    cached: RefCell<Option<Cached>>,
}

impl CredentialChain {
    pub fn new(env: Env, region: &str) -> CredentialChain {
        CredentialChain {
            env,
            region: region.to_string(),
            clock: Box::new(SystemTime::now),
            cached: RefCell::new(None),
        }
    }

    /// Replaces the wall clock (tests of the refresh timing).
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + 'static) -> CredentialChain {
        self.clock = Box::new(clock);
        self
    }

    pub fn env(&self) -> &Env {
        &self.env
    }

    /// Current credentials: cached ones while fresh, else looked up again.
    pub fn get(&self, http: &Http, call: &Call) -> Result<Credentials, KmsError> {
        let now = (self.clock)();
        if let Some(c) = &*self.cached.borrow() {
            if now < c.refresh_at {
                return Ok(c.creds.clone());
            }
        }
        match self.resolve(http, call) {
            Ok(creds) => {
                let refresh_at = match creds.expiry() {
                    // Less than five minutes from the start means refreshing on every call.
                    Some(expiry) => expiry.checked_sub(REFRESH_BEFORE_EXPIRY).unwrap_or(now),
                    None => now + STATIC_TTL,
                };
                *self.cached.borrow_mut() = Some(Cached { creds: creds.clone(), refresh_at });
                Ok(creds)
            }
            Err(e) => {
                // An STS hiccup should not stop calls that the current
                // temporary credentials still allow.
                if let Some(c) = self.cached.borrow_mut().as_mut() {
                    if e != KmsError::Interrupted && c.creds.expiry().is_some_and(|x| now < x) {
                        c.refresh_at = now + RETRY_FAILED_REFRESH;
                        return Ok(c.creds.clone());
                    }
                }
                Err(e)
            }
        }
    }

    /// Forgets the cached credentials (the KMS did not accept them): the
    /// next call looks them up again.
    pub fn invalidate(&self) {
        self.cached.borrow_mut().take();
    }

    /// Looks through the sources in order.
    fn resolve(&self, http: &Http, call: &Call) -> Result<Credentials, KmsError> {
        let env = &self.env;
        // What was looked at, for the message if nothing is found: names and
        // paths only, never values.
        let mut looked = Vec::new();

        match (env.get("AWS_ACCESS_KEY_ID"), env.secret("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                return Ok(Credentials::new(
                    &id,
                    secret,
                    env.secret("AWS_SESSION_TOKEN"),
                    None,
                    "the environment (AWS_ACCESS_KEY_ID)",
                ))
            }
            (None, None) => looked.push("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are unset".to_string()),
            (Some(_), None) => looked.push("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".to_string()),
            (None, Some(_)) => looked.push("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".to_string()),
        }

        let name = env.get("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let profile = self.read_profile(&name, &mut looked)?;
        match (profile.get("aws_access_key_id"), profile.get("aws_secret_access_key")) {
            (Some(id), Some(secret)) => {
                let token = profile.get("aws_session_token").map(|t| Zeroizing::new(t.to_string()));
                let source = format!("profile \"{name}\" of the shared AWS files");
                return Ok(Credentials::new(id, Zeroizing::new(secret.to_string()), token, None, &source));
            }
            (None, None) => {}
            _ => looked.push(format!("profile \"{name}\" has only one of aws_access_key_id and aws_secret_access_key")),
        }

        let (token_file, role_arn, origin) = match env.get("AWS_WEB_IDENTITY_TOKEN_FILE") {
            Some(file) => (Some(file), env.get("AWS_ROLE_ARN"), "AWS_WEB_IDENTITY_TOKEN_FILE"),
            None => (
                profile.get("web_identity_token_file").map(str::to_string),
                profile.get("role_arn").map(str::to_string),
                "the profile's web_identity_token_file",
            ),
        };
        match (token_file, role_arn) {
            (Some(file), Some(role_arn)) => {
                let session_name = env
                    .get("AWS_ROLE_SESSION_NAME")
                    .or_else(|| profile.get("role_session_name").map(str::to_string))
                    .unwrap_or_else(|| format!("secret_vault-{}", std::process::id()));
                let token = read_token(Path::new(&file), origin)?;
                let endpoint = sts::endpoint(env, &self.region)?;
                let w = WebIdentity {
                    endpoint: &endpoint,
                    role_arn: &role_arn,
                    session_name: &session_name,
                    token: token.trim(),
                };
                return sts::assume_role_with_web_identity(http, call, &w);
            }
            (Some(_), None) => looked.push(format!("{origin} is set but no role ARN (AWS_ROLE_ARN or role_arn) is")),
            (None, Some(_)) => looked.push(format!(
                "profile \"{name}\" has role_arn without web_identity_token_file (source_profile, credential_source \
                 and credential_process are not supported)"
            )),
            (None, None) => looked.push("AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN are unset".to_string()),
        }
        Err(KmsError::Config(format!(
            "no AWS credentials found for the server process; looked at: {}",
            looked.join("; ")
        )))
    }

    /// Profile `name` from the config file, overridden by the credentials
    /// file. Absent files are noted in `looked`; unreadable ones are errors.
    fn read_profile(&self, name: &str, looked: &mut Vec<String>) -> Result<Profile, KmsError> {
        let mut merged = Profile::default();
        let mut seen = Vec::new();
        for (kind, var, default) in [
            (FileKind::Config, "AWS_CONFIG_FILE", ".aws/config"),
            (FileKind::Credentials, "AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
        ] {
            let Some(path) = self.env.path(var, default) else {
                seen.push(format!("{var} and HOME are unset"));
                continue;
            };
            let bytes = match std::fs::read(&path) {
                Ok(b) => Zeroizing::new(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    seen.push(format!("{} is absent", path.display()));
                    continue;
                }
                Err(e) => return Err(KmsError::Config(format!("cannot read AWS file \"{}\": {e}", path.display()))),
            };
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| KmsError::Config(format!("AWS file \"{}\" is not UTF-8", path.display())))?;
            match profile::find(text, kind, name) {
                Some(p) => merged.merge(p),
                None => seen.push(format!("{} has no profile \"{name}\"", path.display())),
            }
        }
        if merged.is_empty() {
            looked.push(format!("profile \"{name}\": {}", seen.join(", ")));
        }
        Ok(merged)
    }
}

fn read_token(path: &Path, origin: &str) -> Result<Zeroizing<String>, KmsError> {
    let shown = path.display();
    let bytes =
        Zeroizing::new(std::fs::read(path).map_err(|e| {
            KmsError::Config(format!("cannot read web identity token file \"{shown}\" ({origin}): {e}"))
        })?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| KmsError::Config(format!("web identity token file \"{shown}\" is not UTF-8")))?;
    if text.trim().is_empty() {
        return Err(KmsError::Config(format!("web identity token file \"{shown}\" is empty")));
    }
    Ok(Zeroizing::new(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::rc::Rc;
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    fn http() -> Http {
        Http::new(None, Duration::from_secs(1)).unwrap()
    }

    fn get(chain: &CredentialChain) -> Result<Credentials, KmsError> {
        chain.get(&http(), &Call::patient())
    }

    #[test]
    fn debug_hides_the_secret_key_and_the_session_token() {
        let c = Credentials::new(
            "AKIDVISIBLE",
            Zeroizing::new("s3cr3tkey".into()),
            Some(Zeroizing::new("t0ken".into())),
            None,
            "test",
        );
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIDVISIBLE") && shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("s3cr3tkey") && !shown.contains("t0ken"), "{shown}");
    }

    #[test]
    fn the_environment_comes_first_then_the_shared_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id=AKIDFILE\naws_secret_access_key=filesecret\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[profile other]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=o\naws_session_token=ot\n",
        )
        .unwrap();
        let home = dir.path().to_str().unwrap().to_string();

        let env = Env::from_pairs([
            ("HOME", home.as_str()),
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ]);
        let c = get(&CredentialChain::new(env, "eu-west-1")).unwrap();
        assert_eq!((c.access_key_id(), c.secret_access_key(), c.session_token()), ("AKIDENV", "envsecret", None));

        let env = Env::from_pairs([("HOME", home.as_str())]);
        let c = get(&CredentialChain::new(env, "eu-west-1")).unwrap();
        assert_eq!((c.access_key_id(), c.secret_access_key()), ("AKIDFILE", "filesecret"));
        assert!(c.source().contains("profile \"default\""));

        let env = Env::from_pairs([("HOME", home.as_str()), ("AWS_PROFILE", "other")]);
        let c = get(&CredentialChain::new(env, "eu-west-1")).unwrap();
        assert_eq!((c.access_key_id(), c.session_token()), ("AKIDOTHER", Some("ot")));
    }

    #[test]
    fn nothing_found_lists_what_was_looked_at_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let env =
            Env::from_pairs([("HOME", home.as_str()), ("AWS_ACCESS_KEY_ID", "AKIDLONELY"), ("AWS_PROFILE", "prod")]);
        let Err(KmsError::Config(m)) = get(&CredentialChain::new(env, "eu-west-1")) else { panic!() };
        assert!(m.contains("AWS_SECRET_ACCESS_KEY is not"), "{m}");
        assert!(m.contains("profile \"prod\"") && m.contains(".aws/credentials is absent"), "{m}");
        assert!(m.contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{m}");
        assert!(!m.contains("AKIDLONELY"), "{m}");
    }

    #[test]
    fn static_credentials_are_looked_up_again_after_a_minute() {
        let vars = Rc::new(RefCell::new(HashMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIDONE".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "one".to_string()),
        ])));
        let now = Rc::new(Cell::new(UNIX_EPOCH + Duration::from_secs(1_000_000)));
        let (v, n) = (vars.clone(), now.clone());
        let chain = CredentialChain::new(Env::from_fn(move |k| v.borrow().get(k).cloned()), "eu-west-1")
            .with_clock(move || n.get());
        assert_eq!(get(&chain).unwrap().access_key_id(), "AKIDONE");
        vars.borrow_mut().insert("AWS_ACCESS_KEY_ID".into(), "AKIDTWO".into());
        now.set(now.get() + Duration::from_secs(59));
        assert_eq!(get(&chain).unwrap().access_key_id(), "AKIDONE", "cached for a minute");
        now.set(now.get() + Duration::from_secs(2));
        assert_eq!(get(&chain).unwrap().access_key_id(), "AKIDTWO");
        vars.borrow_mut().insert("AWS_ACCESS_KEY_ID".into(), "AKIDTHREE".into());
        chain.invalidate();
        assert_eq!(get(&chain).unwrap().access_key_id(), "AKIDTHREE", "invalidate forgets at once");
    }

    /// A fake STS: answers each connection with the next of `replies`
    /// (status, expiry) and records the request bodies.
    fn fake_sts(replies: Vec<(u16, &'static str)>) -> (u16, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for (n, (status, expiry)) in replies.into_iter().enumerate() {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let got = s.read(&mut buf).unwrap();
                    req.extend_from_slice(&buf[..got]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            seen.lock().unwrap().push(text[end + 4..].to_string());
                            break;
                        }
                    }
                    assert!(got > 0, "request cut short");
                }
                let body = if status == 200 {
                    format!(
                        "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                         <AccessKeyId>ASIA{n}</AccessKeyId><SecretAccessKey>s{n}</SecretAccessKey>\
                         <SessionToken>t{n}</SessionToken><Expiration>{expiry}</Expiration>\
                         </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
                    )
                } else {
                    "<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>no</Message></Error></ErrorResponse>".to_string()
                };
                let reply =
                    format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        (port, bodies)
    }

    #[test]
    fn web_identity_credentials_are_refreshed_five_minutes_before_expiry_with_the_current_token() {
        let t0 = sts::parse_time("2030-01-01T00:00:00Z").unwrap();
        let (port, bodies) =
            fake_sts(vec![(200, "2030-01-01T01:00:00Z"), (200, "2030-01-01T02:00:00Z"), (400, ""), (400, "")]);
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "token-one\n").unwrap();
        let env = Env::from_pairs([
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap().to_string()),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/vault".to_string()),
            ("AWS_ROLE_SESSION_NAME", "pg-test".to_string()),
            ("AWS_ENDPOINT_URL_STS", format!("http://127.0.0.1:{port}")),
        ]);
        let now = Rc::new(Cell::new(t0));
        let n = now.clone();
        let chain = CredentialChain::new(env, "eu-west-1").with_clock(move || n.get());
        let at = |secs: u64| now.set(t0 + Duration::from_secs(secs));

        let c = get(&chain).unwrap();
        assert_eq!((c.access_key_id(), c.session_token()), ("ASIA0", Some("t0")));
        assert_eq!(c.expiry(), sts::parse_time("2030-01-01T01:00:00Z"));
        let first = bodies.lock().unwrap()[0].clone();
        assert!(first.contains("Action=AssumeRoleWithWebIdentity") && first.contains("Version=2011-06-15"), "{first}");
        assert!(first.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fvault"), "{first}");
        assert!(first.contains("RoleSessionName=pg-test&") && first.ends_with("WebIdentityToken=token-one"), "{first}");

        std::fs::write(&token, "token-two").unwrap();
        at(54 * 60 + 59);
        assert_eq!(get(&chain).unwrap().access_key_id(), "ASIA0", "more than five minutes left");
        at(55 * 60 + 1);
        assert_eq!(get(&chain).unwrap().access_key_id(), "ASIA1");
        assert!(bodies.lock().unwrap()[1].ends_with("WebIdentityToken=token-two"), "the token file is read again");

        // STS refuses, but the current credentials are good until 02:00.
        at(7200 - 200);
        assert_eq!(get(&chain).unwrap().access_key_id(), "ASIA1");
        at(7200 - 190);
        assert_eq!(get(&chain).unwrap().access_key_id(), "ASIA1");
        assert_eq!(bodies.lock().unwrap().len(), 3, "no new try within 30 s of a failed one");
        at(7200 + 1);
        assert!(matches!(get(&chain), Err(KmsError::AccessDenied(m)) if m.contains("InvalidIdentityToken")));
        assert_eq!(bodies.lock().unwrap().len(), 4);
    }
}
