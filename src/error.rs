//! The one place where errors become SQLSTATEs and messages. Every message
//! here may reach a client or the server log, so none carries key bytes,
//! plaintext or secret values: only names, versions and causes.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use secret_vault_core::policy::Purpose;
use secret_vault_core::{CryptoError, KmsError, PolicyError};

const UNECHOED: &str = "Names that match nothing are not repeated in errors, in case a value was passed as a name.";

#[derive(Debug)]
pub enum VaultError {
    NullArgument(&'static str),
    GroupNotFound,
    GroupExists(String),
    KmsKeyNotFound,
    KmsKeyExists(String),
    KmsKeyInUse { name: String, groups: i64 },
    KmsKeyIsDefault(String),
    /// A config handed to vault.add_kms_key that cannot work.
    InvalidKmsConfig { name: String, reason: String },
    WrongPurpose { group: String, purpose: Purpose, operation: &'static str },
    VersionNotFound { group: String, version: i64 },
    VersionRetired { group: String, version: i64 },
    NoCurrentVersion(String),
    VersionOverflow(String),
    RotationContention(String),
    Policy(PolicyError),
    Crypto(CryptoError),
    Kms(KmsError),
    /// A failure of a call to a registered KMS key, named in the message.
    KmsCall { kms_key: String, error: KmsError },
    ReadOnly(&'static str),
    SecretNotFound,
    CredentialNotFound,
    CredentialExists(String),
    /// No unexpired token to serve: never minted yet, or the last one
    /// expired while refreshing failed.
    CredentialUnavailable { name: String, reason: String },
    /// A mint that failed (the worker records it on the credential).
    Mint(secret_vault_core::MintError),
    SecretExists(String),
    ManualSecret(String),
    GroupInUse(String),
    DestroyRefused { group: String, reason: String, hint: String },
    /// An input too large to process within PostgreSQL's allocation limit.
    TooLarge { what: String, len: usize, limit: usize },
    PermissionDenied(&'static str),
    /// No access rule gives the current role this privilege on the name
    /// (never echoed), or the role may not act from the client's address.
    AccessDenied { role: String, privilege: &'static str, address: bool },
    /// The (role, client address) pair failed too often and is locked.
    LockedOut { role: String, seconds: i64 },
    /// The audit queue stayed full: the action is refused, not left unrecorded.
    AuditQueueFull,
    NotInstalled,
    SchemaVersion { installed: String, library: &'static str },
    /// A PostgreSQL error caught where a process must survive it (the worker).
    Postgres { code: PgSqlErrorCode, message: String },
    Internal(String),
}

pub type VaultResult<T> = Result<T, VaultError>;

impl From<PolicyError> for VaultError {
    fn from(e: PolicyError) -> Self {
        VaultError::Policy(e)
    }
}
impl From<CryptoError> for VaultError {
    fn from(e: CryptoError) -> Self {
        VaultError::Crypto(e)
    }
}
impl From<KmsError> for VaultError {
    fn from(e: KmsError) -> Self {
        VaultError::Kms(e)
    }
}
impl From<pgrx::spi::SpiError> for VaultError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        VaultError::Internal(format!("catalog access failed: {e}"))
    }
}

impl VaultError {
    fn into_report(self) -> ErrorReport {
        let (code, message, hint) = self.parts();
        let report = ErrorReport::new(code, message, "secret_vault");
        match hint {
            Some(h) => report.set_hint(h),
            None => report,
        }
    }

    fn parts(self) -> (PgSqlErrorCode, String, Option<String>) {
        use PgSqlErrorCode::*;
        match self {
            VaultError::NullArgument(arg) => {
                (ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{arg} must not be NULL"), None)
            }
            // Names that match nothing are not repeated: a value passed
            // where a name was meant (swapped arguments) would otherwise
            // reach the client, the server log and monitoring.
            VaultError::GroupNotFound => (
                ERRCODE_UNDEFINED_OBJECT,
                "key group does not exist".into(),
                Some(format!("{UNECHOED} List key groups with: SELECT name FROM vault.groups;")),
            ),
            VaultError::GroupExists(g) => {
                (ERRCODE_DUPLICATE_OBJECT, format!("key group \"{g}\" already exists"), None)
            }
            VaultError::KmsKeyNotFound => (
                ERRCODE_UNDEFINED_OBJECT,
                "KMS key is not registered".into(),
                Some(format!("{UNECHOED} Registered KMS keys are listed in vault.kms_keys.")),
            ),
            VaultError::KmsKeyExists(n) => (ERRCODE_DUPLICATE_OBJECT, format!("KMS key \"{n}\" already exists"), None),
            VaultError::KmsKeyInUse { name, groups } => (
                ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                format!("KMS key \"{name}\" still wraps the keys of {groups} key group(s)"),
                Some("Drop those groups or move them to another KMS key first (SELECT name FROM vault.groups WHERE kms_key = ...).".into()),
            ),
            VaultError::KmsKeyIsDefault(n) => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("KMS key \"{n}\" is the default"),
                Some("Make another KMS key the default first: SELECT vault.set_default_kms_key(...);".into()),
            ),
            VaultError::InvalidKmsConfig { name, reason } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid config for KMS key \"{name}\": {reason}"),
                Some("See docs/kms.md for each provider's config keys.".into()),
            ),
            VaultError::WrongPurpose { group, purpose, operation } => {
                let hint = match purpose {
                    Purpose::Export => "This group hands out key bytes: use vault.current and vault.resolve.",
                    Purpose::Encrypt => "This group never hands out key bytes: use vault.encrypt and vault.decrypt.",
                };
                (
                    ERRCODE_WRONG_OBJECT_TYPE,
                    format!("{operation} is not allowed on key group \"{group}\" (purpose '{}')", purpose.as_str()),
                    Some(hint.into()),
                )
            }
            VaultError::VersionNotFound { group, version } => (
                ERRCODE_UNDEFINED_OBJECT,
                format!("version {version} of key group \"{group}\" does not exist"),
                None,
            ),
            VaultError::VersionRetired { group, version } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("version {version} of key group \"{group}\" is retired"),
                Some("Retired versions can no longer resolve, decrypt or verify.".into()),
            ),
            VaultError::NoCurrentVersion(g) => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("key group \"{g}\" has no active version"),
                None,
            ),
            VaultError::VersionOverflow(g) => (
                ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!("key group \"{g}\" has reached the maximum version number"),
                None,
            ),
            VaultError::RotationContention(g) => (
                ERRCODE_LOCK_NOT_AVAILABLE,
                format!("could not rotate key group \"{g}\": concurrent rotations kept winning"),
                Some("Retry the rotation.".into()),
            ),
            VaultError::Policy(PolicyError::Invalid(m)) => (ERRCODE_INVALID_PARAMETER_VALUE, m, None),
            VaultError::Crypto(e) => {
                let code = match e {
                    CryptoError::AuthenticationFailed => ERRCODE_DATA_EXCEPTION,
                    CryptoError::TooLarge | CryptoError::ContextTooLarge { .. } => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                    CryptoError::KeyLength { .. } => ERRCODE_INTERNAL_ERROR,
                    CryptoError::WrongDomain => ERRCODE_WRONG_OBJECT_TYPE,
                    CryptoError::ReservedContext => ERRCODE_INVALID_PARAMETER_VALUE,
                    _ => ERRCODE_INVALID_BINARY_REPRESENTATION,
                };
                let msg = match e {
                    CryptoError::AuthenticationFailed
                    | CryptoError::TooLarge
                    | CryptoError::ContextTooLarge { .. }
                    | CryptoError::WrongDomain
                    | CryptoError::ReservedContext => e.to_string(),
                    _ => format!("invalid ciphertext: {e}"),
                };
                (code, msg, None)
            }
            VaultError::Kms(e) => {
                let (code, hint) = kms_code(&e);
                (code, e.to_string(), hint.map(String::from))
            }
            VaultError::KmsCall { kms_key, error } => {
                let (code, hint) = kms_code(&error);
                (code, format!("KMS key \"{kms_key}\": {error}"), hint.map(String::from))
            }
            VaultError::SecretNotFound => (
                ERRCODE_UNDEFINED_OBJECT,
                "secret does not exist".into(),
                Some(format!("{UNECHOED} List secrets with: SELECT name FROM vault.secrets;")),
            ),
            VaultError::CredentialNotFound => (
                ERRCODE_UNDEFINED_OBJECT,
                "credential does not exist".into(),
                Some(format!("{UNECHOED} List credentials with: SELECT name FROM vault.credentials;")),
            ),
            VaultError::CredentialExists(n) => (ERRCODE_DUPLICATE_OBJECT, format!("credential \"{n}\" already exists"), None),
            VaultError::CredentialUnavailable { name, reason } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("credential \"{name}\" has no unexpired token: {reason}"),
                Some("The vault worker mints it; see last_error in vault.credentials.".into()),
            ),
            VaultError::Mint(e) => {
                let code = match &e {
                    secret_vault_core::MintError::Config(_) => ERRCODE_INVALID_PARAMETER_VALUE,
                    secret_vault_core::MintError::Interrupted => ERRCODE_QUERY_CANCELED,
                    _ => ERRCODE_CONNECTION_FAILURE,
                };
                (code, e.to_string(), None)
            }
            VaultError::SecretExists(n) => (ERRCODE_DUPLICATE_OBJECT, format!("secret \"{n}\" already exists"), None),
            VaultError::ManualSecret(n) => (
                ERRCODE_WRONG_OBJECT_TYPE,
                format!("secret \"{n}\" is set by hand and has no generator"),
                Some("Set its value with vault.update_secret, or create it with vault.create_rotating_secret.".into()),
            ),
            VaultError::GroupInUse(g) => (
                ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                format!("key group \"{g}\" still seals secrets or minted credentials"),
                Some("Delete those secrets (see vault.secrets.key_group) or drop those credentials first.".into()),
            ),
            VaultError::DestroyRefused { group, reason, hint } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("cannot destroy keys of key group \"{group}\": {reason}"),
                Some(hint),
            ),
            VaultError::TooLarge { what, len, limit } => (
                ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!("{what} is {len} bytes; the limit is {limit}"),
                None,
            ),
            VaultError::ReadOnly(op) => (
                ERRCODE_READ_ONLY_SQL_TRANSACTION,
                format!("cannot {op} while the server is in recovery (a standby)"),
                Some("Run it on the primary; standbys follow it through replication.".into()),
            ),
            VaultError::PermissionDenied(what) => {
                (ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied for {what}"), None)
            }
            VaultError::AccessDenied { role, privilege, address: false } => (
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied: no access rule lets role \"{role}\" {privilege} this object"),
                Some(format!("{UNECHOED} Rules are listed in vault.access_rules; a superuser grants them with vault.grant_access.")),
            ),
            VaultError::AccessDenied { role, address: true, .. } => (
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied: role \"{role}\" may not use the vault from this client address"),
                Some("The role's allowed addresses are set with vault.set_allowed_addresses (see docs/access.md).".into()),
            ),
            VaultError::LockedOut { role, seconds } => (
                ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                format!("role \"{role}\" is locked out of the vault from this client address for {seconds} more second(s) after repeated failures"),
                Some("Locked pairs are listed in vault.lockouts; an administrator can lift one with vault.unlock.".into()),
            ),
            VaultError::AuditQueueFull => (
                ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                "the audit queue is full: the action was refused rather than left unrecorded".into(),
                Some("The database's vault worker drains the queue into vault.audit_log: check vault.workers, or raise secret_vault.audit_queue_size.".into()),
            ),
            VaultError::NotInstalled => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "extension secret_vault is not installed in this database".into(),
                Some("CREATE EXTENSION secret_vault;".into()),
            ),
            VaultError::SchemaVersion { installed, library } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("secret_vault {installed} is installed in this database, but the server runs library {library}"),
                Some("Run: ALTER EXTENSION secret_vault UPDATE;".into()),
            ),
            VaultError::Postgres { code, message } => (code, message, None),
            VaultError::Internal(m) => (ERRCODE_INTERNAL_ERROR, m, None),
        }
    }

    /// The message a client would see, for logs and `vault.stats()`.
    pub fn message(self) -> String {
        self.into_report().message().to_string()
    }

    /// Raises this error, after handing its SQLSTATE to `record` (the
    /// audit log notes how a call failed before the error unwinds it).
    pub fn raise_recorded(self, record: impl FnOnce(&str)) -> ! {
        let interrupted =
            matches!(self, VaultError::Kms(KmsError::Interrupted) | VaultError::KmsCall { error: KmsError::Interrupted, .. });
        let (code, message, hint) = self.parts();
        record(&sqlstate(code));
        if interrupted {
            pgrx::check_for_interrupts!();
        }
        let report = ErrorReport::new(code, message, "secret_vault");
        match hint {
            Some(h) => report.set_hint(h),
            None => report,
        }
        .report(PgLogLevel::ERROR);
        unreachable!("ERROR reports do not return")
    }

    /// Raises this error as a PostgreSQL ERROR; never returns.
    pub fn raise(self) -> ! {
        if matches!(self, VaultError::Kms(KmsError::Interrupted) | VaultError::KmsCall { error: KmsError::Interrupted, .. }) {
            // The call gave up because of a cancel or a timeout: let
            // PostgreSQL raise its own error for it ("canceling statement
            // due to statement timeout"), as for any other wait.
            pgrx::check_for_interrupts!();
        }
        self.into_report().report(PgLogLevel::ERROR);
        unreachable!("ERROR reports do not return")
    }
}

/// The five-character SQLSTATE of a code (PostgreSQL packs them six bits a
/// character).
pub fn sqlstate(code: PgSqlErrorCode) -> String {
    let v = code as i32;
    (0..5).map(|i| (((v >> (6 * i)) & 0x3f) as u8 + b'0') as char).collect()
}

/// SQLSTATE and hint of a KMS failure: what the caller (or operator) can do.
fn kms_code(e: &KmsError) -> (PgSqlErrorCode, Option<&'static str>) {
    use PgSqlErrorCode::*;
    match e {
        KmsError::WrongMasterKey { .. } => (
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Some("The row names the master key that wrapped it: configure that key (secret_vault.local_master_key_file or a registered KMS key's config), see docs/kms.md."),
        ),
        KmsError::WrappedKeyCorrupt { .. } => (ERRCODE_DATA_CORRUPTED, None),
        KmsError::Config(_) => (ERRCODE_CONFIG_FILE_ERROR, None),
        KmsError::Unavailable(_) => (
            ERRCODE_SYSTEM_ERROR,
            Some("The KMS could not be reached in time; reads of keys already cached keep working. Retry later."),
        ),
        KmsError::Throttled(_) => (
            ERRCODE_INSUFFICIENT_RESOURCES,
            Some("The KMS is rate-limiting this server; retry later, or raise the KMS quota."),
        ),
        KmsError::AccessDenied(_) => (
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            Some("The server's KMS credentials may not use this key: check the IAM or Vault policy (see docs/kms.md)."),
        ),
        KmsError::KeyUnusable(_) => (ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, None),
        KmsError::Refused(_) => (ERRCODE_SYSTEM_ERROR, None),
        KmsError::Interrupted => (ERRCODE_QUERY_CANCELED, None),
    }
}


/// Unwraps a result or raises its error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for VaultResult<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| e.raise())
    }
}

/// Required argument of a non-strict function.
pub fn required<T>(value: Option<T>, name: &'static str) -> VaultResult<T> {
    value.ok_or(VaultError::NullArgument(name))
}

/// Refuses writes on a standby with a clear error instead of failing deep
/// inside SPI when a transaction id is requested.
pub fn require_writable(op: &'static str) -> VaultResult<()> {
    if unsafe { pgrx::pg_sys::RecoveryInProgress() } {
        Err(VaultError::ReadOnly(op))
    } else {
        Ok(())
    }
}
