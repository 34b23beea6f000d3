//! Stand-ins for the services minted credentials come from, written for the
//! tests (`tests/standins/*.py`, run with the peers venv's python):
//! - `GithubStandin`: the GitHub REST API's installation access token route,
//!   checking the app JWT (RS256 signature, issuer, iat/exp window) as GitHub
//!   does, with a control route to make it fail or hang;
//! - `eks_reference_token`: the EKS bearer token botocore makes, as
//!   `aws eks get-token` does, for fixed inputs and a fixed signing instant;
//! - `rsa_test_key`, `sign_jwt`: an app key in the encodings GitHub hands out
//!   or a PEM tool produces, and JWTs signed with it.
//!
//! Also a small HTTP/1.1 client (`http_call`), std only, one request per
//! connection.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::clear_kms_env;
use crate::peers::{bin_dir, peer_dir};

/// The directory of the stand-in scripts.
pub fn standins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("standins")
}

fn python() -> Command {
    let mut cmd = Command::new(bin_dir().join("python"));
    clear_kms_env(&mut cmd);
    cmd.env("AWS_CONFIG_FILE", "/dev/null").env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    cmd
}

/// Runs python (the venv's) with `args`; stdout, or panics with stderr.
fn run_python(args: &[&str], what: &str) -> String {
    let out = python().args(args).output().unwrap_or_else(|e| panic!("{what}: python (run `make deps-peers`): {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: output is not UTF-8: {e}"))
}

/// An answer of `http_call`. Header names are lowercased.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request to `url` (`http://host:port/path?query`, no TLS) on a
/// new connection, with `Connection: close`, and its answer. `headers` are
/// sent as given, after Host (a `Content-Length` is added for a body).
/// `timeout` bounds the connect and each read and write: a server that does
/// not answer makes this fail with ErrorKind::WouldBlock or TimedOut.
pub fn http_call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, format!("not an http:// URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, format!("no address for {authority}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;

    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;

    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, format!("bad status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            raw.resize(n, 0);
            reader.read_exact(&mut raw)?;
        }
        None => {
            reader.read_to_end(&mut raw)?;
        }
    }
    Ok(HttpResponse { status, headers, body: String::from_utf8_lossy(&raw).into_owned() })
}

/// The GitHub REST API stand-in (`tests/standins/github_api.py`) on a free
/// loopback port: `POST {prefix}/app/installations/{id}/access_tokens`
/// checks the Bearer JWT against the app's public key, its `iss` against the
/// app id, its iat/exp window, a User-Agent, the installation id; then
/// answers 201 with a new `ghs_...` token valid for the token TTL. Killed on
/// drop.
pub struct GithubStandin {
    pub port: u16,
    prefix: String,
    dir: PathBuf,
    child: Child,
    // Kept open: the script writes nothing after `ready`, and closing it
    // could only turn a stray print into a crash.
    _stdout: BufReader<ChildStdout>,
}

impl GithubStandin {
    /// `app_id`: the `iss` to expect (a numeric app id or a client id);
    /// `installation_id`: the only installation that exists.
    pub fn start(app_id: &str, installation_id: &str, public_key_pem: &str, token_ttl_secs: u64) -> GithubStandin {
        GithubStandin::start_with_prefix(app_id, installation_id, public_key_pem, token_ttl_secs, "")
    }

    /// `start` with the API under a path prefix, as GitHub Enterprise Server
    /// serves it under `/api/v3`. `api_url()` includes the prefix.
    pub fn start_with_prefix(
        app_id: &str,
        installation_id: &str,
        public_key_pem: &str,
        token_ttl_secs: u64,
        prefix: &str,
    ) -> GithubStandin {
        let dir = peer_dir("github");
        let key = dir.join("app-public.pem");
        std::fs::write(&key, public_key_pem).unwrap();
        let log = std::fs::File::create(dir.join("github.log")).unwrap();
        let mut child = python()
            .arg(standins_dir().join("github_api.py"))
            .args(["--port", "0", "--public-key", key.to_str().unwrap()])
            .args(["--app-id", app_id, "--installation-id", installation_id])
            .args(["--token-ttl", &token_ttl_secs.to_string(), "--prefix", prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("github stand-in: python (run `make deps-peers`): {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // Read `ready <port>` on a thread, so that a stuck start fails the
        // test rather than hanging it.
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let n = stdout.read_line(&mut line);
            let _ = tx.send((n.map(|_| line), stdout));
        });
        let got = rx.recv_timeout(Duration::from_secs(30));
        let (line, stdout) = match got {
            Ok((Ok(line), stdout)) => (line, stdout),
            Ok((Err(e), _)) => failed_start(&mut child, &dir, format!("reading its stdout: {e}")),
            Err(_) => failed_start(&mut child, &dir, "no `ready` line within 30 s".to_string()),
        };
        let _ = reader.join();
        let port = match line.trim().strip_prefix("ready ").and_then(|p| p.parse::<u16>().ok()) {
            Some(port) => port,
            None => failed_start(&mut child, &dir, format!("first line {line:?}")),
        };
        GithubStandin { port, prefix: prefix.trim_end_matches('/').to_string(), dir, child, _stdout: stdout }
    }

    /// `http://127.0.0.1:PORT` followed by the prefix, if any: what an API
    /// base URL setting names.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.prefix)
    }

    /// The URL of the token route for `installation_id`.
    pub fn access_tokens_url(&self, installation_id: &str) -> String {
        format!("{}/app/installations/{installation_id}/access_tokens", self.api_url())
    }

    fn control_url(&self, route: &str) -> String {
        format!("http://127.0.0.1:{}{route}", self.port)
    }

    /// How the token route behaves from now on: "ok" (check and mint),
    /// "401"/"404"/"500" (that status, nothing checked), "hang" (never
    /// answer; the connection stays open until the client leaves, or 120 s).
    /// `ttl`: the lifetime of tokens minted from now on.
    pub fn set_mode(&self, mode: &str, ttl: Option<u64>) {
        let body = match ttl {
            Some(ttl) => format!(r#"{{"mode": "{mode}", "ttl": {ttl}}}"#),
            None => format!(r#"{{"mode": "{mode}"}}"#),
        };
        let answer = http_call(
            "POST",
            &self.control_url("/_control"),
            &[("Content-Type", "application/json")],
            Some(&body),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("github stand-in /_control: {e}"));
        assert_eq!(answer.status, 200, "github stand-in /_control {body}: {}", answer.body);
    }

    /// `GET /_stats`, raw: {"calls", "minted", "rejected": [reasons],
    /// "tokens": [every token minted], "last_claims", "last_headers"
    /// (lowercased names; Authorization shows its scheme only), "last_body",
    /// "accept_mismatches", "api_versions", "user_agents", "mode", "ttl"}.
    pub fn stats(&self) -> String {
        let answer = http_call("GET", &self.control_url("/_stats"), &[], None, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("github stand-in /_stats: {e}"));
        assert_eq!(answer.status, 200, "github stand-in /_stats: {}", answer.body);
        answer.body
    }

    /// `stats()` parsed.
    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stats()).expect("stats are JSON")
    }

    /// Requests to the token route (whatever their outcome).
    pub fn calls(&self) -> u64 {
        self.stats_json()["calls"].as_u64().unwrap()
    }

    /// Tokens minted.
    pub fn minted(&self) -> u64 {
        self.stats_json()["minted"].as_u64().unwrap()
    }

    /// Every token minted, oldest first.
    pub fn tokens(&self) -> Vec<String> {
        strings(&self.stats_json()["tokens"])
    }

    /// Why requests were refused, oldest first: "jwt: ..." (401),
    /// "user-agent: missing" (403), "installation: ..." (404). Refusals
    /// forced by `set_mode` are not listed.
    pub fn rejected(&self) -> Vec<String> {
        strings(&self.stats_json()["rejected"])
    }

    /// The stand-in's stderr (tracebacks; it logs no requests).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("github.log")).unwrap_or_default()
    }
}

fn failed_start(child: &mut Child, dir: &Path, why: String) -> ! {
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("github.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    panic!("github stand-in did not start: {why}\n{log}")
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

impl Drop for GithubStandin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The EKS bearer token `aws eks get-token` would print for these inputs,
/// made by botocore (`tests/standins/eks_token.py`) with its signing clock
/// fixed at `amz_date` (`YYYYMMDDTHHMMSSZ`): `k8s-aws-v1.` + unpadded
/// base64url of a presigned STS GetCallerIdentity URL (GET, X-Amz-Expires=60,
/// signed headers `host;x-k8s-aws-id`). Without `endpoint` the URL is the
/// regional `https://sts.<region>.amazonaws.com/`.
pub fn eks_reference_token(
    access_key: &str,
    secret_key: &str,
    session_token: Option<&str>,
    region: &str,
    cluster: &str,
    amz_date: &str,
    endpoint: Option<&str>,
) -> String {
    let script = standins_dir().join("eks_token.py");
    let mut args = vec![
        script.to_str().unwrap(),
        "--access-key",
        access_key,
        "--secret-key",
        secret_key,
        "--region",
        region,
        "--cluster",
        cluster,
        "--time",
        amz_date,
    ];
    if let Some(token) = session_token {
        args.extend(["--session-token", token]);
    }
    if let Some(url) = endpoint {
        args.extend(["--endpoint-url", url]);
    }
    run_python(&args, "eks_token.py").trim().to_string()
}

const RSA_KEY: &str = r#"
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
none = s.NoEncryption()
for pem in (key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, none),
            key.private_bytes(s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, none),
            key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)):
    print(pem.decode(), end="\0")
"#;

/// A new 2048-bit RSA key: (private key as PKCS#8 PEM, `BEGIN PRIVATE KEY`;
/// the same key as PKCS#1 PEM, `BEGIN RSA PRIVATE KEY`, the encoding GitHub
/// hands out; its public key, SubjectPublicKeyInfo PEM, `BEGIN PUBLIC KEY`).
pub fn rsa_test_key() -> (String, String, String) {
    let out = run_python(&["-c", RSA_KEY], "RSA key generation");
    let mut pems = out.split('\0').map(str::to_string);
    let (pkcs8, pkcs1, public) = (pems.next().unwrap(), pems.next().unwrap(), pems.next().unwrap());
    assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"), "{pkcs8}");
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pkcs1}");
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    (pkcs8, pkcs1, public)
}

const SIGN_JWT: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
def part(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
with open(sys.argv[1], "rb") as f:
    key = serialization.load_pem_private_key(f.read(), password=None)
header, claims = sys.argv[2], sys.argv[3]
signed = part(header.encode()) + "." + part(claims.encode())
if json.loads(header).get("alg") == "none":
    print(signed + ".")
else:
    print(signed + "." + part(key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())))
"#;

/// A JWT with this header and these claims (JSON texts, encoded as given),
/// signed RS256 (PKCS#1 v1.5, SHA-256) with `private_key_pem` (PKCS#8 or
/// PKCS#1) whatever the header says, except that a header with
/// `"alg": "none"` gets an empty signature.
pub fn sign_jwt(private_key_pem: &str, header_json: &str, claims_json: &str) -> String {
    let dir = peer_dir("jwt");
    let key = dir.join("key.pem");
    std::fs::write(&key, private_key_pem).unwrap();
    let out = std::panic::catch_unwind(|| {
        run_python(&["-c", SIGN_JWT, key.to_str().unwrap(), header_json, claims_json], "signing a JWT")
    });
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Ok(jwt) => jwt.trim().to_string(),
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// Decodes unpadded (or padded) base64url, as in JWTs and EKS tokens.
pub fn base64url_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return Err(format!("not base64url: {:?}", c as char)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
