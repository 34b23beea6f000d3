//! Every setting of secret_vault, in one place.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Path of the local master key; empty means the embedded default under the
/// data directory.
pub static LOCAL_MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// AEAD used for new ciphertexts; old ones carry their own algorithm byte.
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cipher {
    #[name = c"aes-256-gcm-siv"]
    Aes256GcmSiv,
    #[name = c"xchacha20-poly1305"]
    XChaCha20Poly1305,
}

pub static CIPHER: GucSetting<Cipher> = GucSetting::<Cipher>::new(Cipher::Aes256GcmSiv);

/// Groups the shared-memory cache holds (server start only).
pub static CACHE_GROUPS: GucSetting<i32> = GucSetting::<i32>::new(128);
/// Newest versions held per cached group (server start only).
pub static CACHE_VERSIONS: GucSetting<i32> = GucSetting::<i32>::new(16);
/// Ignored since 0.2.0 (a worker runs in every database with the extension);
/// still defined so that configurations naming it keep loading.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Whether the worker rotates due groups (off on a logical-replication subscriber).
pub static ROTATION: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Worker wake-up period, milliseconds.
pub static WORKER_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// How often the worker compares the cache with the tables, milliseconds.
pub static SYNC_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Superseded values kept per secret after their grace window ends.
pub static SECRET_VERSIONS_KEPT: GucSetting<i32> = GucSetting::<i32>::new(10);

/// Whether messages about vault calls are redacted on their way to the
/// server log (see src/log_hook.rs and docs/logging.md).
pub static REDACT_SERVER_LOG: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Bounds on every call to a remote KMS (aws, transit).
pub static KMS_CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2000);
pub static KMS_REQUEST_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);
pub static KMS_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(3);
pub static KMS_RETRY_BUDGET_MS: GucSetting<i32> = GucSetting::<i32>::new(10000);

/// Re-wrap: ring key rows moved per second by each database's worker (0
/// pauses), and how often it asks each KMS key for its current material.
pub static REWRAP_RATE: GucSetting<i32> = GucSetting::<i32>::new(20);
pub static REWRAP_CHECK_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(300_000);

/// Access control (docs/access.md).
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum LocalConnections {
    /// A Unix-socket connection counts as one from 127.0.0.1 and ::1.
    #[name = c"loopback"]
    Loopback,
    /// A Unix-socket connection passes every allowlist.
    #[name = c"allow"]
    Allow,
    /// A Unix-socket connection matches no allowlist.
    #[name = c"deny"]
    Deny,
}
pub static LOCAL_CONNECTIONS: GucSetting<LocalConnections> = GucSetting::<LocalConnections>::new(LocalConnections::Loopback);
/// Failures (failed verifications, denied calls) per (role, client address)
/// within the window that lock the pair; 0 disables lockout.
pub static LOCKOUT_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static LOCKOUT_WINDOW_S: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static LOCKOUT_DURATION_S: GucSetting<i32> = GucSetting::<i32>::new(900);

/// Audit log: whether reads are recorded too, the queue's size (server
/// start), what happens when it stays full, and how long records are kept.
pub static AUDIT_READS: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static AUDIT_QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(4096);
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuditWhenFull {
    /// Refuse the audited action (after waiting for the worker a moment).
    #[name = c"refuse"]
    Refuse,
    /// Write the record to the server log instead and go on.
    #[name = c"log"]
    Log,
}
pub static AUDIT_WHEN_FULL: GucSetting<AuditWhenFull> = GucSetting::<AuditWhenFull>::new(AuditWhenFull::Refuse);
/// Records older than this are deleted by the worker; 0 keeps them all.
pub static AUDIT_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(0);

/// File name of the embedded default master key, relative to the data directory.
pub const DEFAULT_LOCAL_KEY_FILE: &str = "secret_vault_master.key";

pub fn init() {
    GucRegistry::define_int_guc(
        c"secret_vault.cache_groups",
        c"Key groups held in the shared-memory cache.",
        c"More groups than this is slower (misses reload from the tables and the KMS), never wrong.",
        &CACHE_GROUPS,
        0,
        65536,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secret_vault.cache_versions",
        c"Newest versions of each cached group held in shared memory.",
        c"A group keeps min(ring_size, this) versions hot; older versions are read from storage.",
        &CACHE_VERSIONS,
        1,
        1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"secret_vault.database",
        c"Ignored: secret_vault runs a worker in every database where it is installed.",
        c"Kept so that configurations from 0.1.0 that set it still load.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"secret_vault.rotation",
        c"Whether the background worker rotates groups that are due.",
        c"Turn off on logical-replication subscribers so that one node rotates.",
        &ROTATION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secret_vault.worker_interval",
        c"How often the background worker wakes up.",
        c"",
        &WORKER_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"secret_vault.sync_interval",
        c"How often the worker reconciles the cache with the tables (standbys, subscribers, restores).",
        c"",
        &SYNC_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"secret_vault.secret_versions_kept",
        c"Superseded values of each secret kept after their grace window ends.",
        c"Older ones are deleted at the next update or rotation of the secret, and by the worker. \
          Values still inside their grace window are always kept.",
        &SECRET_VERSIONS_KEPT,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"secret_vault.local_master_key_file",
        c"Path of the 32-byte master key file of the local KMS provider.",
        c"Empty: a key file created under the data directory on first start (development only). \
          The file must have mode 0600 and hold 64 hex digits, base64, or 32 raw bytes.",
        &LOCAL_MASTER_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    // SUSET: turning it off exposes every session's values in the log, so
    // only a superuser may (for a session, a role or the server).
    GucRegistry::define_bool_guc(
        c"secret_vault.redact_server_log",
        c"Keeps values passed to vault functions out of the server log.",
        c"For every message about a vault call: no STATEMENT line, bind parameters and prepared \
          statement texts dropped from statement logging, and each string literal and bind \
          parameter of the statement replaced by [redacted] in the logged statement, message, \
          detail, hint, context and internal query. The client sees the redacted message too. \
          See docs/logging.md.",
        &REDACT_SERVER_LOG,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SUSET: a session could otherwise stretch its KMS waits (and with them
    // the time it holds row locks) far beyond what the operator planned.
    GucRegistry::define_int_guc(
        c"secret_vault.kms_connect_timeout",
        c"Longest wait for a connection to a remote KMS (aws, transit).",
        c"Reaching it counts as the KMS being unavailable.",
        &KMS_CONNECT_TIMEOUT_MS,
        10,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"secret_vault.kms_request_timeout",
        c"Longest wait for one answer of a remote KMS (aws, transit).",
        c"A call that times out is retried within secret_vault.kms_max_attempts and secret_vault.kms_retry_budget.",
        &KMS_REQUEST_TIMEOUT_MS,
        10,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"secret_vault.kms_max_attempts",
        c"Attempts of one KMS operation, the first included.",
        c"Only throttling, 5xx answers and timeouts are retried, with exponential backoff and full jitter.",
        &KMS_MAX_ATTEMPTS,
        1,
        20,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secret_vault.kms_retry_budget",
        c"No retry of a KMS operation starts later than this after its first attempt.",
        c"Bounds the total time a caller can wait on a throttled or failing KMS (besides one request timeout).",
        &KMS_RETRY_BUDGET_MS,
        0,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"secret_vault.rewrap_rate",
        c"Ring key rows each worker re-wraps per second after a KMS rotation or a move (0 pauses).",
        c"Each row is one KMS call (AWS ReEncrypt, transit rewrap; a move unwraps and wraps). See docs/kms.md.",
        &REWRAP_RATE,
        0,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secret_vault.rewrap_check_interval",
        c"How often the worker asks each KMS key in use for its current material.",
        c"vault.rewrap() asks at once.",
        &REWRAP_CHECK_INTERVAL_MS,
        100,
        86_400_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"secret_vault.local_connections",
        c"How Unix-socket connections count against allowed client addresses: loopback, allow or deny.",
        c"loopback: as a connection from 127.0.0.1 and ::1. Background workers with no client count the same way.",
        &LOCAL_CONNECTIONS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secret_vault.lockout_threshold",
        c"Failures per role and client address within secret_vault.lockout_window that lock the pair; 0 disables lockout.",
        c"Failures are failed vault.verify_secret calls and denied accesses.",
        &LOCKOUT_THRESHOLD,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secret_vault.lockout_window",
        c"Window in which failures are counted toward a lockout.",
        c"",
        &LOCKOUT_WINDOW_S,
        1,
        86_400 * 30,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"secret_vault.lockout_duration",
        c"How long a locked role and client address stay locked.",
        c"",
        &LOCKOUT_DURATION_S,
        1,
        86_400 * 365,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"secret_vault.audit_reads",
        c"Records every read (current, resolve, encrypt, decrypt, read_secret, verify_secret) in the audit log.",
        c"Writes, administrative actions, denials and lockouts are always recorded.",
        &AUDIT_READS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secret_vault.audit_queue_size",
        c"Audit records the shared-memory queue holds until a worker writes them to vault.audit_log.",
        c"",
        &AUDIT_QUEUE_SIZE,
        16,
        1 << 20,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"secret_vault.audit_when_full",
        c"When the audit queue stays full: refuse the action, or log the record to the server log instead.",
        c"",
        &AUDIT_WHEN_FULL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secret_vault.audit_retention",
        c"Audit records older than this are deleted by the worker; 0 keeps every record.",
        c"",
        &AUDIT_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_enum_guc(
        c"secret_vault.cipher",
        c"AEAD for new ciphertexts: aes-256-gcm-siv or xchacha20-poly1305.",
        c"Decryption reads the algorithm from each ciphertext, so changing this never breaks old data.",
        &CIPHER,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The configured master key path, resolved against the data directory.
pub fn local_master_key_path() -> std::path::PathBuf {
    let configured = LOCAL_MASTER_KEY_FILE
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|s| !s.trim().is_empty());
    let path = std::path::PathBuf::from(configured.unwrap_or_else(|| DEFAULT_LOCAL_KEY_FILE.to_string()));
    if path.is_absolute() {
        path
    } else {
        data_directory().join(path)
    }
}

pub fn data_directory() -> std::path::PathBuf {
    // SAFETY: DataDir is set by the postmaster before libraries load and never changes.
    let dir = unsafe { std::ffi::CStr::from_ptr(pgrx::pg_sys::DataDir) };
    std::path::PathBuf::from(dir.to_string_lossy().into_owned())
}

pub fn cipher() -> secret_vault_core::aead::Algorithm {
    use secret_vault_core::aead::Algorithm;
    match CIPHER.get() {
        Cipher::Aes256GcmSiv => Algorithm::Aes256GcmSiv,
        Cipher::XChaCha20Poly1305 => Algorithm::XChaCha20Poly1305,
    }
}
