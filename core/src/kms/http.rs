//! HTTP(S) to a KMS from inside a PostgreSQL backend.
//!
//! A backend is single-threaded and its signal handlers assume the main
//! thread, so nothing here starts a thread: requests run on a tokio
//! current-thread runtime driven by the calling thread, names are resolved
//! inline (the default resolver would use a thread pool), and between
//! polls the caller's `interrupted` is consulted so that query cancel and
//! `statement_timeout` end a hung call within a few tens of milliseconds.
//! Every attempt is bounded by a timeout; retries (throttling, 5xx,
//! timeouts only) use exponential backoff with full jitter inside a total
//! budget. Response bodies are capped and kept in zeroizing buffers: they
//! carry key plaintext.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use zeroize::Zeroizing;

use super::Call;
use crate::KmsError;

/// No KMS answer we read is anywhere near this; a larger one is refused
/// rather than buffered.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How often a waiting call looks at the caller's interrupt flag.
const INTERRUPT_POLL: Duration = Duration::from_millis(20);

pub struct Request {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// May hold key material (a transit encrypt request): wiped after use.
    pub body: Zeroizing<Vec<u8>>,
}

pub struct Response {
    pub status: u16,
    pub body: Zeroizing<Vec<u8>>,
}

/// Why an attempt got no HTTP answer.
#[derive(Debug)]
pub enum Transport {
    /// Connecting or answering took longer than its timeout.
    Timeout(String),
    /// No connection could be made (refused, unreachable, TLS failure).
    Connect(String),
    /// The connection broke (reset, closed mid-answer) or the answer was unusable.
    Broken(String),
    /// The caller was cancelled while waiting.
    Interrupted,
}

/// What an attempt's outcome calls for.
pub enum Verdict<T> {
    Done(T),
    /// Throttled, a 5xx or a timeout: worth another attempt after a backoff.
    Retry(KmsError),
    Fail(KmsError),
}

impl<T> Verdict<T> {
    /// The usual reading of a transport failure: timeouts are retried,
    /// refused or broken connections are not (an unreachable KMS should fail
    /// fast, not hold the caller for the whole budget).
    pub fn from_transport(t: Transport, what: &str) -> Verdict<T> {
        match t {
            Transport::Timeout(m) => Verdict::Retry(KmsError::Unavailable(format!("{what}: {m}"))),
            Transport::Connect(m) | Transport::Broken(m) => Verdict::Fail(KmsError::Unavailable(format!("{what}: {m}"))),
            Transport::Interrupted => Verdict::Fail(KmsError::Interrupted),
        }
    }
}

/// Resolves in the calling thread (blocking, like libpq does) instead of
/// on a resolver thread pool.
struct InlineResolver;

impl Resolve for InlineResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let found: Result<Vec<SocketAddr>, _> = (name.as_str(), 0u16).to_socket_addrs().map(|a| a.collect());
        Box::pin(std::future::ready(match found {
            Ok(addrs) => Ok(Box::new(addrs.into_iter()) as Addrs),
            Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
        }))
    }
}

/// A client for one KMS endpoint configuration, kept for the life of a backend.
pub struct Http {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Http {
    /// `ca_file`: PEM certificates trusted in addition to the system's.
    pub fn new(ca_file: Option<&Path>, connect_timeout: Duration) -> Result<Http, KmsError> {
        let mut b = reqwest::Client::builder()
            .dns_resolver(Arc::new(InlineResolver))
            .connect_timeout(connect_timeout)
            // Deterministic routing: a proxy from the server's environment
            // would see every wrapped key and token.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("secret_vault/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| KmsError::Config(format!("cannot read CA file \"{}\": {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| KmsError::Config(format!("CA file \"{}\" holds no usable PEM certificate: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(KmsError::Config(format!("CA file \"{}\" holds no PEM certificate", path.display())));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| KmsError::Config(format!("HTTP client: {}", describe(&e))))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| KmsError::Config(format!("HTTP runtime: {e}")))?;
        Ok(Http { client, runtime })
    }

    /// Runs `fut` to completion on this thread unless `interrupted` turns
    /// true first (then the future is dropped, which closes its connection).
    fn run<F: Future>(&self, fut: F, interrupted: &dyn Fn() -> bool) -> Option<F::Output> {
        self.runtime.block_on(async {
            tokio::pin!(fut);
            let mut tick = tokio::time::interval(INTERRUPT_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    out = &mut fut => return Some(out),
                    _ = tick.tick() => if interrupted() { return None },
                }
            }
        })
    }

    /// One attempt: the answer whatever its status, or why there was none.
    pub fn send(&self, mut req: Request, timeout: Duration, interrupted: &dyn Fn() -> bool) -> Result<Response, Transport> {
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|e| Transport::Broken(e.to_string()))?;
        let mut rb = self.client.request(method, &req.url);
        let mut invalid = None;
        for (k, v) in &req.headers {
            // Sensitive values (tokens, signatures) are kept out of any
            // Debug output of the request.
            match reqwest::header::HeaderValue::from_str(v) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    rb = rb.header(k.as_str(), value);
                }
                Err(_) => invalid = Some(k.clone()),
            }
        }
        // Our copies of the values (a bearer token, a Vault token, a
        // signature) are wiped now; reqwest's own are beyond our reach.
        for (_, v) in req.headers.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        if let Some(k) = invalid {
            return Err(Transport::Broken(format!("header {k} is not valid")));
        }
        // The body may hold key material: it goes to reqwest as a buffer
        // that is wiped when the last reference to it drops (hyper may still
        // copy small bodies into its write buffer, which is not wiped).
        let rb = rb.body(bytes::Bytes::from_owner(req.body));
        let fut = async move {
            let mut resp = rb.send().await.map_err(classify)?;
            let status = resp.status().as_u16();
            let mut body = Zeroizing::new(Vec::with_capacity(
                resp.content_length().map_or(1024, |n| (n as usize).min(MAX_RESPONSE_BYTES)),
            ));
            while let Some(chunk) = resp.chunk().await.map_err(classify)? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(Transport::Broken(format!("answer larger than {MAX_RESPONSE_BYTES} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response { status, body })
        };
        let bounded = async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(Transport::Timeout(format!("no answer within {} ms", timeout.as_millis()))),
            }
        };
        self.run(bounded, interrupted).unwrap_or(Err(Transport::Interrupted))
    }

    /// Sleeps `d` unless interrupted first.
    fn sleep(&self, d: Duration, interrupted: &dyn Fn() -> bool) -> Result<(), KmsError> {
        // Timers belong to the runtime: make the future inside it.
        self.run(async { tokio::time::sleep(d).await }, interrupted).ok_or(KmsError::Interrupted)
    }

    /// Runs `attempt` until it is done, fails for good, runs out of attempts
    /// or would go past the call's budget; between attempts it backs off
    /// exponentially with full jitter, so many backends retrying at once
    /// spread out instead of hammering a throttled KMS together.
    pub fn retrying<T>(&self, call: &Call, mut attempt: impl FnMut() -> Verdict<T>) -> Result<T, KmsError> {
        let start = Instant::now();
        let mut tries = 0u32;
        loop {
            if (call.interrupted)() {
                return Err(KmsError::Interrupted);
            }
            tries += 1;
            let err = match attempt() {
                Verdict::Done(t) => return Ok(t),
                Verdict::Fail(e) => return Err(e),
                Verdict::Retry(e) => e,
            };
            if tries >= call.max_attempts.max(1) {
                return Err(err);
            }
            let pause = full_jitter(tries);
            if start.elapsed() + pause >= call.total_budget {
                return Err(err);
            }
            self.sleep(pause, call.interrupted)?;
        }
    }
}

/// A random pause in [0, min(cap, base * 2^(tries-1))].
fn full_jitter(tries: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << (tries - 1).min(16)).min(BACKOFF_CAP);
    Duration::from_micros(rand::thread_rng().gen_range(0..=ceiling.as_micros() as u64))
}

fn classify(e: reqwest::Error) -> Transport {
    let text = describe(&e);
    if e.is_timeout() {
        Transport::Timeout(text)
    } else if e.is_connect() {
        Transport::Connect(text)
    } else {
        Transport::Broken(text)
    }
}

/// An error with its causes ("error sending request ...: connection
/// refused"): reqwest's own text leaves out the part an operator needs.
/// URLs carry no credentials here (tokens and signatures are headers).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Refuses URLs that would send tokens or key material in clear text:
/// `https` everywhere, `http` only to a loopback address (tests, a local
/// agent or proxy on the same host).
pub fn check_url(url: &str, what: &str) -> Result<reqwest::Url, KmsError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| KmsError::Config(format!("{what} \"{url}\" is not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(KmsError::Config(format!("{what} must not carry credentials")));
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err(KmsError::Config(format!(
            "{what} \"{url}\" is plain http to a host that is not loopback; use https"
        ))),
        other => Err(KmsError::Config(format!("{what} \"{url}\" has scheme \"{other}\"; use https"))),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn call(max_attempts: u32) -> Call<'static> {
        Call {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(300),
            max_attempts,
            total_budget: Duration::from_secs(5),
            interrupted: &|| false,
        }
    }

    /// A server answering each connection with `reply` (None: never answers).
    fn serve(reply: Option<&'static str>, connections: usize) -> (u16, std::thread::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut seen = 0;
            for s in l.incoming().take(connections) {
                let mut s = s.unwrap();
                seen += 1;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                match reply {
                    Some(r) => {
                        let _ = s.write_all(r.as_bytes());
                    }
                    None => std::thread::sleep(Duration::from_millis(800)),
                }
            }
            seen
        });
        (port, h)
    }

    fn get(port: u16) -> Request {
        Request { method: "GET", url: format!("http://127.0.0.1:{port}/"), headers: vec![], body: Zeroizing::new(vec![]) }
    }

    #[test]
    fn an_answer_comes_back_with_status_and_body() {
        let (port, h) = serve(Some("HTTP/1.1 418 I'm a teapot\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"), 1);
        let http = Http::new(None, Duration::from_secs(1)).unwrap();
        let r = http.send(get(port), Duration::from_secs(2), &|| false).unwrap();
        assert_eq!((r.status, &r.body[..]), (418, &b"hello"[..]));
        h.join().unwrap();
    }

    #[test]
    fn a_silent_server_times_out_and_timeouts_are_retried_within_the_attempt_limit() {
        let (port, h) = serve(None, 2);
        let http = Http::new(None, Duration::from_secs(1)).unwrap();
        let mut attempts = 0;
        let c = call(2);
        let r: Result<(), _> = http.retrying(&c, || {
            attempts += 1;
            match http.send(get(port), c.request_timeout, &|| false) {
                Ok(_) => Verdict::Done(()),
                Err(t) => Verdict::from_transport(t, "test"),
            }
        });
        assert!(matches!(r, Err(KmsError::Unavailable(m)) if m.contains("no answer")));
        assert_eq!(attempts, 2);
        assert_eq!(h.join().unwrap(), 2);
    }

    #[test]
    fn a_refused_connection_fails_at_once_without_retry() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let http = Http::new(None, Duration::from_secs(1)).unwrap();
        let mut attempts = 0;
        let start = Instant::now();
        let c = call(5);
        let r: Result<(), _> = http.retrying(&c, || {
            attempts += 1;
            match http.send(get(port), c.request_timeout, &|| false) {
                Ok(_) => Verdict::Done(()),
                Err(t) => Verdict::from_transport(t, "test"),
            }
        });
        assert!(matches!(r, Err(KmsError::Unavailable(_))));
        assert_eq!(attempts, 1);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn an_interrupt_ends_a_hung_call_quickly() {
        let (port, _h) = serve(None, 1);
        let http = Http::new(None, Duration::from_secs(1)).unwrap();
        let start = Instant::now();
        let flag = std::cell::Cell::new(false);
        let interrupted = || {
            if start.elapsed() > Duration::from_millis(100) {
                flag.set(true);
            }
            flag.get()
        };
        let r = http.send(get(port), Duration::from_secs(30), &interrupted);
        assert!(matches!(r, Err(Transport::Interrupted)));
        assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
    }

    #[test]
    fn backoff_is_bounded_by_the_cap() {
        for tries in 1..40 {
            assert!(full_jitter(tries) <= BACKOFF_CAP);
        }
    }

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        assert!(check_url("https://kms.eu-west-1.amazonaws.com", "endpoint").is_ok());
        assert!(check_url("http://127.0.0.1:8200", "address").is_ok());
        assert!(check_url("http://[::1]:8200", "address").is_ok());
        assert!(check_url("http://localhost:8200", "address").is_ok());
        assert!(matches!(check_url("http://10.0.0.1:8200", "address"), Err(KmsError::Config(_))));
        assert!(matches!(check_url("ftp://127.0.0.1", "address"), Err(KmsError::Config(_))));
        assert!(matches!(check_url("https://user:pw@host", "address"), Err(KmsError::Config(m)) if !m.contains("pw")));
    }

    #[test]
    fn no_runtime_thread_is_started_by_a_call() {
        let (port, h) = serve(Some("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), 1);
        let http = Http::new(None, Duration::from_secs(1)).unwrap();
        http.send(Request { url: format!("http://localhost:{port}/"), ..get(port) }, Duration::from_secs(2), &|| false)
            .unwrap();
        h.join().unwrap();
        // Other tests run on threads of their own: look for tokio's workers
        // and resolver pool by name.
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("tokio")), "threads: {names:?}");
    }
}
