//! A TCP relay that makes a client appear to connect from another loopback
//! address. On Linux a client connecting to 127.0.0.2 still gets 127.0.0.1
//! as its source address, so a server would never see a second client
//! address on one machine; the relay listens on 127.0.0.1 and opens each
//! upstream connection from a socket *bound* to the chosen source address
//! (port 0), then copies bytes both ways until either side closes.
//!
//! Dropping the relay stops accepting and shuts every open connection down.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

struct Shared {
    closing: AtomicBool,
    next: AtomicU64,
    /// Both ends of every open connection, so that drop can shut them down
    /// (their copying threads are blocked reading); removed when one ends.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

pub struct Relay {
    /// Where clients connect: 127.0.0.1:port.
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays 127.0.0.1:<free port> to `upstream`, each upstream connection
    /// made from `source` (an address of this machine, e.g. 127.0.0.2).
    pub fn start(source: IpAddr, upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay listen");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared { closing: AtomicBool::new(false), next: AtomicU64::new(0), open: Mutex::new(HashMap::new()) });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.closing.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = connect_from(source, upstream) else {
                    // The client sees the connection closed, as with no server.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let id = s.next.fetch_add(1, Ordering::SeqCst);
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    s.open.lock().unwrap().insert(id, (c2, s2));
                }
                pipe(s.clone(), id, client, server);
            }
        });
        Relay { port, shared, acceptor: Some(acceptor) }
    }

    /// The relay's address as a libpq/postgres conninfo fragment.
    pub fn host_port(&self) -> String {
        format!("host=127.0.0.1 port={}", self.port)
    }
}

fn connect_from(source: IpAddr, upstream: SocketAddr) -> io::Result<TcpStream> {
    let domain = if upstream.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    socket.connect_timeout(&SockAddr::from(upstream), Duration::from_secs(10))?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Copies both ways on two threads; when one direction ends (EOF or
/// error), the other side's write half is shut so that it ends too.
fn pipe(shared: Arc<Shared>, id: u64, client: TcpStream, server: TcpStream) {
    let _ = client.set_nodelay(true);
    let spawn_copy = |mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
            shared.open.lock().unwrap().remove(&id);
        })
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    };
    spawn_copy(client, s2, shared.clone());
    spawn_copy(server, c2, shared);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Wake the acceptor (blocked in accept) so that it sees `closing`.
        let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for (_, (c, s)) in self.shared.open.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
