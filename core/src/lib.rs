//! The pgrx-free core of secret_vault.
//!
//! Everything here is plain Rust so it can be tested with `cargo test` and no
//! PostgreSQL: key buffers, the AEAD ciphertext format, the binding of
//! ciphertexts to where they belong, the KMS seam with its providers, and the
//! key-ring policy (which version is current, when rotation is due), and
//! the redaction of values from text bound for the server log.

pub mod aad;
pub mod access;
pub mod aead;
pub mod audit;
pub mod cache;
pub mod credentials;
pub mod error;
pub mod format;
pub mod keys;
pub mod kms;
pub mod policy;
pub mod redact;
pub mod secret;
pub mod secure;

pub use error::{CryptoError, KmsError, MintError, PolicyError};
pub use keys::KeyBytes;
