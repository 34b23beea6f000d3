//! Typed errors of the core. None of them ever carries key or plaintext bytes:
//! the glue maps each to a SQLSTATE and a message once, and those messages
//! reach clients and logs.

use thiserror::Error;

/// Ciphertext parsing, sealing and opening.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext is empty")]
    Empty,
    #[error("unsupported ciphertext format {0:#04x}")]
    UnknownFormat(u8),
    #[error("unsupported cipher algorithm {0:#04x}")]
    UnknownAlgorithm(u8),
    #[error("ciphertext is truncated ({actual} bytes, at least {minimum} needed)")]
    Truncated { minimum: usize, actual: usize },
    #[error("ciphertext names key version 0, which never exists")]
    ZeroVersion,
    #[error("ciphertext failed authentication: wrong key group, version or context, or the data was altered")]
    AuthenticationFailed,
    #[error("key has {actual} bytes, expected {expected}")]
    KeyLength { expected: usize, actual: usize },
    #[error("plaintext too large to encrypt")]
    TooLarge,
    #[error("context is {actual} bytes; the limit is {limit}")]
    ContextTooLarge { actual: usize, limit: usize },
    /// A secret's stored value handed to `vault.decrypt`, or the reverse.
    #[error("ciphertext belongs to another domain: secret values open only through the secret functions")]
    WrongDomain,
    /// A caller context that would reach the 0.1.0 secret domain.
    #[error("context is reserved: it begins with the label of secret values")]
    ReservedContext,
}

/// Failures of a KMS provider. Messages name key ids and causes, never key bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KmsError {
    /// The row was wrapped by a different master key than the one configured.
    #[error("wrong master key: the ring key was wrapped by {wrapped_by}, but the configured KMS key is {configured}")]
    WrongMasterKey { wrapped_by: String, configured: String },
    /// The master key id matches but the wrapped bytes do not authenticate.
    #[error("wrapped ring key failed to authenticate under KMS key {key_id}: the row was altered or moved")]
    WrappedKeyCorrupt { key_id: String },
    /// Configuration is missing or unusable (file absent, bad permissions, bad format).
    #[error("KMS configuration error: {0}")]
    Config(String),
    /// The KMS could not be reached or answered with a retryable failure.
    #[error("KMS unavailable: {0}")]
    Unavailable(String),
    /// The KMS refused the request for another reason (a bad request).
    #[error("KMS refused the request: {0}")]
    Refused(String),
    /// The credentials are not allowed to use the key (IAM or Bao policy),
    /// or are invalid or expired.
    #[error("KMS access denied: {0}")]
    AccessDenied(String),
    /// The key is disabled, pending deletion, missing, or its version was
    /// trimmed (`min_decryption_version`).
    #[error("KMS key unusable: {0}")]
    KeyUnusable(String),
    /// The KMS kept throttling through every retry.
    #[error("KMS throttled the request: {0}")]
    Throttled(String),
    /// The caller was cancelled (query cancel, statement_timeout, shutdown)
    /// while waiting for the KMS; the call was abandoned.
    #[error("KMS call interrupted")]
    Interrupted,
}

/// Invalid key-group or rotation settings.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{0}")]
    Invalid(String),
}

/// Why minting a credential failed. Messages name the upstream and the
/// cause, never a token, a signature or key material: they reach
/// `vault.credentials.last_error` and the server log.
#[derive(Debug, Error)]
pub enum MintError {
    /// A config or a referenced secret that cannot work (wrong key format,
    /// a missing field); retrying will not help until it is changed.
    #[error("{0}")]
    Config(String),
    /// The upstream answered and refused (401, 403, 404, 422...).
    #[error("{upstream} refused the request (HTTP {status}): {message}")]
    Refused { upstream: &'static str, status: u16, message: String },
    /// No usable answer: a 5xx, throttling, a timeout, a refused connection.
    #[error("{upstream} unavailable: {message}")]
    Unavailable { upstream: &'static str, message: String },
    /// An answer we cannot use (no token, no expiry, already expired).
    #[error("{upstream} answered with something unusable: {message}")]
    BadAnswer { upstream: &'static str, message: String },
    /// The signing credentials could not be found or used.
    #[error("signing credentials: {0}")]
    Signing(String),
    #[error("minting interrupted")]
    Interrupted,
}
