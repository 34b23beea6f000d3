//! A fault-injecting HTTP/1.1 proxy between the server and a KMS peer on
//! loopback (plain HTTP: moto, or OpenBao without TLS). It reads each request
//! whole (headers, then Content-Length or chunked body), counts it, and then
//! acts on the mode of that moment, so a mode switch takes effect on the next
//! request even on a kept-alive connection. In `Pass` it sends the request on
//! a fresh upstream connection, reads the response whole and relays it.
//!
//! Limits: no `Expect: 100-continue` (the request body is read before
//! anything is sent upstream), no upgrades, no TLS. If the upstream cannot be
//! reached the client connection is closed without an answer.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does with each request it has read.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Forward to the upstream, relay its answer.
    Pass,
    /// Wait this long, then forward.
    Delay(Duration),
    /// Answer with this status, body and content type; the upstream never
    /// sees the request. The connection stays open for the next one.
    Status(u16, String, String),
    /// Close the connection with a TCP RST (SO_LINGER 0), no answer.
    Reset,
    /// Never answer; keep the connection open until the mode changes or the
    /// proxy is dropped, then close it (still without an answer).
    Hang,
}

impl Mode {
    pub fn status(code: u16, body: &str, content_type: &str) -> Mode {
        Mode::Status(code, body.to_string(), content_type.to_string())
    }

    /// AWS throttling as KMS answers it (a 400, not a 429).
    pub fn aws_throttling() -> Mode {
        Mode::status(400, r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#, "application/x-amz-json-1.1")
    }

    /// A KMS-side failure (HTTP 500).
    pub fn aws_internal_error() -> Mode {
        Mode::status(
            500,
            r#"{"__type":"KMSInternalException","message":"An internal error occurred"}"#,
            "application/x-amz-json-1.1",
        )
    }

    /// Vault/OpenBao rate limiting (a rate limit quota): HTTP 429.
    pub fn bao_throttling() -> Mode {
        Mode::status(429, r#"{"errors":["rate limit quota exceeded"]}"#, "application/json")
    }

    /// A Vault/OpenBao-side failure (HTTP 500).
    pub fn bao_internal_error() -> Mode {
        Mode::status(500, r#"{"errors":["internal error"]}"#, "application/json")
    }
}

struct Shared {
    mode: Mutex<Mode>,
    /// Signalled on every mode change and on drop, for `Hang`.
    changed: Condvar,
    requests: AtomicUsize,
    closing: AtomicBool,
    /// A handle on each open client connection, so that drop can shut them
    /// down (their threads are blocked reading). Removed when a connection
    /// ends: a copy left here would keep the socket from closing (and `Reset`
    /// from sending its RST).
    clients: Mutex<HashMap<u64, TcpStream>>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 (a free port) to 127.0.0.1:`upstream_port`, in
    /// `Pass` mode.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            changed: Condvar::new(),
            requests: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            clients: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for (id, stream) in (0u64..).zip(listener.incoming()) {
                    if shared.closing.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let Ok(handle) = stream.try_clone() else { continue };
                    shared.clients.lock().unwrap().insert(id, handle);
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, upstream_port, &shared);
                        shared.clients.lock().unwrap().remove(&id);
                    });
                }
            })
        };
        Proxy { port, shared, acceptor: Some(acceptor) }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Applies from the next request read, on any connection.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        self.shared.changed.notify_all();
    }

    /// Requests read so far, in every mode.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            // Under the mode lock, so a `Hang` between its check and its wait
            // cannot miss the wake-up.
            let _mode = self.shared.mode.lock().unwrap();
            self.shared.closing.store(true, Ordering::SeqCst);
        }
        self.shared.changed.notify_all();
        for client in self.shared.clients.lock().unwrap().values() {
            let _ = client.shutdown(Shutdown::Both);
        }
        // Wake the acceptor so that it sees `closing`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Serves one client connection, request by request.
fn serve(client: TcpStream, upstream_port: u16, shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    while let Some(request) = read_message(&mut reader, None)? {
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let mode = shared.mode.lock().unwrap().clone();
        let keep_alive = match mode {
            Mode::Pass => forward(&request, upstream_port, &mut client)?,
            Mode::Delay(delay) => {
                std::thread::sleep(delay);
                forward(&request, upstream_port, &mut client)?
            }
            Mode::Status(code, body, content_type) => {
                write!(
                    client,
                    "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                    reason(code),
                    body.len()
                )?;
                !request.close
            }
            Mode::Reset => {
                // Closing a socket with unread data or a zero linger sends RST.
                socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO))?;
                return Ok(());
            }
            Mode::Hang => {
                let mut mode = shared.mode.lock().unwrap();
                while *mode == Mode::Hang && !shared.closing.load(Ordering::SeqCst) {
                    mode = shared.changed.wait(mode).unwrap();
                }
                return Ok(());
            }
        };
        if !keep_alive {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends `request` upstream on a new connection and relays the response;
/// whether the client connection may carry another request.
fn forward(request: &Message, upstream_port: u16, client: &mut TcpStream) -> io::Result<bool> {
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    upstream.write_all(&request.bytes)?;
    let response = read_message(&mut BufReader::new(upstream), Some(&request.method))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed without answering"))?;
    client.write_all(&response.bytes)?;
    // A response that said close (moto does) or ran to EOF ends the client
    // connection too: the client expects exactly that.
    Ok(!request.close && !response.close)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// One HTTP/1.1 message as read off the wire, byte for byte.
struct Message {
    bytes: Vec<u8>,
    /// The request method, or the response status code.
    method: String,
    /// The connection ends after this message.
    close: bool,
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside an HTTP message")
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one line (with its line end) onto `bytes`; whether it was blank.
fn read_line(reader: &mut impl BufRead, bytes: &mut Vec<u8>) -> io::Result<bool> {
    let start = bytes.len();
    if reader.read_until(b'\n', bytes)? == 0 {
        return Err(eof());
    }
    Ok(matches!(&bytes[start..], b"\r\n" | b"\n"))
}

/// Reads a request (`request_method` None) or the response to a request
/// with that method; None if the connection closed before its first byte.
fn read_message(reader: &mut impl BufRead, request_method: Option<&str>) -> io::Result<Option<Message>> {
    if reader.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    while !read_line(reader, &mut bytes)? {}

    let head = String::from_utf8_lossy(&bytes).into_owned();
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let mut words = first.split_whitespace();
    let (method, version) = match request_method {
        None => {
            let method = words.next().unwrap_or_default();
            (method.to_string(), words.nth(1).unwrap_or_default())
        }
        Some(_) => {
            let version = words.next().unwrap_or_default();
            (words.next().unwrap_or_default().to_string(), version)
        }
    };
    let (mut length, mut chunked, mut close) = (None, false, version == "HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.parse::<usize>().map_err(|_| invalid("bad Content-Length"))?),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close = value.contains("close"),
            _ => {}
        }
    }

    // Responses to HEAD, 1xx, 204 and 304 have no body whatever they say.
    let no_body = request_method == Some("HEAD") || {
        let status = if request_method.is_some() { method.parse().unwrap_or(0) } else { 200 };
        status < 200 || status == 204 || status == 304
    };
    if !no_body {
        if chunked {
            read_chunked(reader, &mut bytes)?;
        } else if let Some(length) = length {
            let start = bytes.len();
            bytes.resize(start + length, 0);
            reader.read_exact(&mut bytes[start..]).map_err(|_| eof())?;
        } else if request_method.is_some() {
            // A response without a length runs to the end of the connection.
            reader.read_to_end(&mut bytes)?;
            close = true;
        }
    }
    Ok(Some(Message { bytes, method, close }))
}

/// Reads a chunked body, trailers included, onto `bytes`.
fn read_chunked(reader: &mut impl BufRead, bytes: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let start = bytes.len();
        read_line(reader, bytes)?;
        let line = String::from_utf8_lossy(&bytes[start..]).into_owned();
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            while !read_line(reader, bytes)? {}
            return Ok(());
        }
        // The chunk and its CRLF.
        let start = bytes.len();
        bytes.resize(start + size + 2, 0);
        reader.read_exact(&mut bytes[start..]).map_err(|_| eof())?;
    }
}
