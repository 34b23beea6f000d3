//! Real KMS peers on loopback, started by the tests: moto (AWS KMS and STS,
//! with SigV4 verification on) and an OpenBao dev server (transit). Both come
//! from PyPI into the venv `make deps-peers` makes (`target/peers`, or
//! `SECRET_VAULT_PEERS`). Each peer is a child process killed on drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port};

/// The venv's bin directory.
pub fn bin_dir() -> PathBuf {
    let root = std::env::var_os("SECRET_VAULT_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers"));
    root.join("bin")
}

fn wait_for_port(port: u16, what: &str) {
    assert!(
        eventually(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "{what} did not start listening on 127.0.0.1:{port}"
    );
}

/// A moto server for KMS and STS. Requests must be signed with SigV4
/// (`INITIAL_NO_AUTH_ACTION_COUNT=0`): a wrong signature is refused.
pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(bin_dir().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("moto_server (run `make deps-peers`): {e}"));
        wait_for_port(port, "moto");
        Moto { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OpenBao dev server (in memory, root token `root`).
pub struct Bao {
    pub port: u16,
    child: Child,
}

impl Bao {
    pub fn start() -> Bao {
        let port = free_port();
        let child = Command::new(bin_dir().join("bao"))
            .args(["server", "-dev", &format!("-dev-listen-address=127.0.0.1:{port}"), "-dev-root-token-id=root"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("bao (run `make deps-peers`): {e}"));
        wait_for_port(port, "OpenBao");
        Bao { port, child }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs the `bao` CLI against this server as root; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bin_dir().join("bao"))
            .args(args)
            .env("BAO_ADDR", self.address())
            .env("BAO_TOKEN", "root")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
