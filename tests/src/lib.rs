//! Harness for integration tests: throwaway PostgreSQL clusters on free
//! loopback ports, run as the `postgres` user, with secret_vault installed in
//! the PostgreSQL that `PG_CONFIG` names (the system's 15 by default;
//! `make test-pg18` points it at 18).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls};

pub mod peers;
pub mod proxy;
pub mod relay;
pub mod standins;

const DEFAULT_PG_CONFIG: &str = "/usr/lib/postgresql/15/bin/pg_config";

fn pg_config(arg: &str) -> String {
    let path = std::env::var("PG_CONFIG").unwrap_or_else(|_| DEFAULT_PG_CONFIG.to_string());
    let out = Command::new(&path).arg(arg).output().unwrap_or_else(|e| panic!("running {path}: {e}"));
    assert!(out.status.success(), "{path} {arg} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The server binaries of the PostgreSQL under test.
pub fn pg_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| pg_config("--bindir"))
}

/// The major version under test (15, 18).
pub fn pg_major() -> u32 {
    static MAJOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MAJOR.get_or_init(|| {
        let v = pg_config("--version"); // "PostgreSQL 18.6"
        v.split_whitespace().nth(1).and_then(|n| n.split('.').next()).and_then(|n| n.parse().ok()).expect("pg_config --version")
    })
}

/// Whether an extension other than ours is installed for the PostgreSQL
/// under test (pg_cron comes from Debian for 15 only).
pub fn extension_available(name: &str) -> bool {
    Path::new(&pg_config("--sharedir")).join("extension").join(format!("{name}.control")).exists()
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs a PostgreSQL binary as the `postgres` user (initdb refuses root).
pub fn as_postgres(program: &str, args: &[&str]) -> Output {
    as_postgres_env(program, args, &[])
}

/// Removes from `cmd`'s environment the KMS client settings this process
/// inherited (AWS_*, VAULT_*, BAO_*: an AWS_CA_BUNDLE, a developer's real
/// credentials), so that servers, peers and scripts get only what the test
/// sets.
pub fn clear_kms_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("AWS_") || k.starts_with("VAULT_") || k.starts_with("BAO_") {
            cmd.env_remove(&key);
        }
    }
}

/// `as_postgres` with these environment variables added (and inherited KMS
/// settings removed, see `clear_kms_env`). `runuser -u` (no `-l`) passes the
/// caller's environment on, bar HOME, SHELL, USER and LOGNAME, and pg_ctl
/// hands its own to the postmaster, so they reach the server and every
/// backend and worker it forks.
pub fn as_postgres_env(program: &str, args: &[&str], env: &[(String, String)]) -> Output {
    let path = if program.contains('/') { program.to_string() } else { format!("{}/{program}", pg_bin()) };
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    };
    clear_kms_env(&mut cmd);
    let out = cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).output();
    out.unwrap_or_else(|e| panic!("running {path}: {e}"))
}

fn must(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Hands a file the test wrote to the server's user, readable by it alone
/// (as the server requires of a key file).
pub fn hand_to_postgres(path: &Path) {
    let p = path.to_str().unwrap();
    assert!(Command::new("chown").args(["postgres:postgres", p]).status().unwrap().success(), "chown {p}");
    assert!(Command::new("chmod").args(["600", p]).status().unwrap().success(), "chmod {p}");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh directory under /tmp that the postgres user owns.
fn cluster_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "secret_vault-it-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        must(Command::new("chown").args(["postgres:postgres", dir.to_str().unwrap()]).output().unwrap(), "chown");
    }
    dir
}

pub struct Cluster {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    /// Environment variables for the server process (KMS credentials, say),
    /// applied by the next `start()`/`restart()`.
    env: Vec<(String, String)>,
    running: bool,
}

impl Cluster {
    /// A new, stopped cluster with secret_vault preloaded unless `preload` is false.
    pub fn init(name: &str, preload: bool, extra_conf: &[&str]) -> Cluster {
        Cluster::init_env(name, preload, extra_conf, &[])
    }

    /// `init` with environment variables for the server process.
    pub fn init_env(name: &str, preload: bool, extra_conf: &[&str], env: &[(&str, &str)]) -> Cluster {
        let dir = cluster_dir(name);
        let data = dir.join("data");
        must(
            as_postgres("initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"]),
            "initdb",
        );
        let port = free_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n",
            dir.display()
        );
        if preload {
            conf.push_str("shared_preload_libraries = 'secret_vault'\n");
        }
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Cluster { dir, data, port, env, running: false }
    }

    /// A started cluster with the extension created in database `postgres`.
    pub fn start_with_extension(name: &str) -> Cluster {
        let mut c = Cluster::init(name, true, &[]);
        c.start();
        c.client().batch_execute("CREATE EXTENSION secret_vault").unwrap();
        c
    }

    /// A cluster with the extension created and these settings.
    pub fn start_with(name: &str, conf: &[&str]) -> Cluster {
        let mut c = Cluster::init(name, true, conf);
        c.start();
        c.client().batch_execute("CREATE EXTENSION secret_vault").unwrap();
        c
    }

    /// A streaming standby of this cluster, made with `pg_basebackup -R`.
    pub fn standby(&self, name: &str, conf: &[&str]) -> Cluster {
        let dir = cluster_dir(name);
        let data = dir.join("data");
        let port = self.port.to_string();
        must(
            as_postgres(
                "pg_basebackup",
                &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", data.to_str().unwrap(), "-R", "-X", "stream"],
            ),
            "pg_basebackup",
        );
        let standby_port = free_port();
        let mut text = format!("port = {standby_port}\nunix_socket_directories = '{}'\n", dir.display());
        for line in conf {
            text.push_str(line);
            text.push('\n');
        }
        append(&data.join("postgresql.conf"), &text);
        // The standby reads the same KMS as its primary: same environment.
        let mut c = Cluster { dir, data, port: standby_port, env: self.env.clone(), running: false };
        c.start();
        c
    }

    /// PID of the postmaster.
    pub fn postmaster_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    /// Sets an environment variable for the server, from the next start on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.remove_env(key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Unsets one set by `init_env`/`set_env`, from the next start on.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    pub fn conf(&self, line: &str) {
        append(&self.data.join("postgresql.conf"), &format!("{line}\n"));
    }

    pub fn start(&mut self) {
        let out = self.try_start();
        must(out, "pg_ctl start");
    }

    pub fn try_start(&mut self) -> Output {
        let log = self.dir.join("postgres.log");
        let out = as_postgres_env(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
            &self.env,
        );
        self.running = out.status.success();
        out
    }

    pub fn stop(&mut self) {
        if self.running {
            as_postgres("pg_ctl", &["-D", self.data.to_str().unwrap(), "-w", "-m", "fast", "stop"]);
            self.running = false;
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Copies this cluster's local master key file beside it, for another
    /// cluster to share; returns the setting that points a cluster at it.
    pub fn shared_master_key(&self) -> String {
        let key_file = self.dir.join("shared_master.key");
        std::fs::copy(self.data.join("secret_vault_master.key"), &key_file).unwrap();
        hand_to_postgres(&key_file);
        format!("secret_vault.local_master_key_file = '{}'", key_file.display())
    }

    /// Stops the server as a crash would (immediate mode: no shutdown
    /// checkpoint, connections cut).
    pub fn crash(&mut self) {
        if self.running {
            as_postgres("pg_ctl", &["-D", self.data.to_str().unwrap(), "-w", "-m", "immediate", "stop"]);
            self.running = false;
        }
    }

    pub fn conninfo(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=10", self.port)
    }

    pub fn client(&self) -> Client {
        self.client_db("postgres")
    }

    pub fn client_db(&self, db: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.conninfo(db), NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect to {}: {e}", self.conninfo(db)),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Runs a client program (pg_dump, pg_restore, psql) against this cluster.
    pub fn run_tool(&self, program: &str, args: &[&str]) -> Output {
        let port = self.port.to_string();
        let mut full = vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
        full.extend_from_slice(args);
        must(as_postgres(program, &full), program)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            as_postgres("pg_ctl", &["-D", self.data.to_str().unwrap(), "-w", "-m", "immediate", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The SQLSTATE and message of a database error.
pub fn db_error(e: &postgres::Error) -> (String, String) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a database error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// `vault.stats()` as (column, value) pairs, numbers only.
pub fn stat(db: &mut Client, column: &str) -> i64 {
    db.query_one(&format!("SELECT {column}::bigint FROM vault.stats()"), &[]).unwrap().get(0)
}

/// Polls `f` until it returns true or `timeout` passes; returns the outcome.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Adds to `hits` every file under `dir` (a data directory: tables, WAL)
/// whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8], hits: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files_containing(&p, needle, hits);
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.display().to_string());
            }
        }
    }
}
