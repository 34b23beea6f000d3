//! Minted credentials (DESIGN.md, "Minted credentials"; docs/credentials.md).
//!
//! `vault.credential` serves the latest minted token from the table, sealed
//! under a ring key, and never mints: it answers at once or fails closed.
//! The worker mints (mint.rs) before each token expires. Names fall under
//! the access rules like secrets: `read` to get a token, `write` to create
//! or drop. A config's signing material is named, not stored: vault
//! secrets the creator must be allowed to read, or, for `aws_eks` only and
//! only for superusers, the server's own AWS identity.

pub mod mint;
pub mod store;

use std::time::SystemTime;

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use secret_vault_core::access::Privilege;
use secret_vault_core::cache::KeyBuf;
use secret_vault_core::credentials::{open_payload, Config, Provider};
use secret_vault_core::format::{self, Binding};
use secret_vault_core::policy::{self, Purpose};
use secret_vault_core::PolicyError;

use crate::error::{require_writable, required, OrRaise, VaultError, VaultResult};
use crate::keyring::{self, Want};
use crate::kms::registry::require_superuser;
use crate::secrets::SecretText;
use crate::{access, catalog, identity, secret_store, secrets};

/// The provider and config, checked; errors name no value.
fn parse(provider: Option<&str>, config: Option<&JsonB>) -> VaultResult<(Provider, Config)> {
    let provider = required(provider, "provider")?;
    let provider = Provider::parse(provider)
        .ok_or_else(|| VaultError::Policy(PolicyError::Invalid("unknown credential provider; use aws_eks or github_app".into())))?;
    let config = required(config, "config")?;
    let parsed = Config::parse(provider, &config.0).map_err(VaultError::Mint)?;
    Ok((provider, parsed))
}

/// Registers a credential; the worker mints its first token within a round.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn create_credential(
    name: Option<&str>,
    provider: Option<&str>,
    config: Option<JsonB>,
    refresh_before: default!(Option<Interval>, "'5 minutes'"),
) -> Uuid {
    let name = required(name, "name").or_raise();
    let (kind, parsed) = parse(provider, config.as_ref()).or_raise();
    // Checked on the caller, before the switch to the vault owner: signing
    // with the server's AWS identity is for superusers (as KMS keys are);
    // naming a secret needs the right to read it, since whoever controls
    // the config (an endpoint, a cluster) controls what it signs.
    if parsed.uses_server_identity() {
        require_superuser("aws_eks with the server's AWS credentials (name vault secrets with access_key_id_secret and secret_access_key_secret instead)")
            .or_raise();
    }
    // A configured endpoint is a network address the server will contact
    // (api_url) or name in its tokens (sts_endpoint): as for KMS keys, only
    // superusers choose those, or the server becomes a probe of its network.
    if parsed.custom_endpoint() {
        require_superuser("a credential with its own api_url or sts_endpoint (only superusers choose where the server connects)").or_raise();
    }
    for s in parsed.secrets() {
        access::check("create_credential", Privilege::Read, s).or_raise();
    }
    access::write("create_credential", Privilege::Write, name, || {
        require_writable("create a credential")?;
        policy::validate_name("credential", name)?;
        let refresh = required(refresh_before, "refresh_before")?;
        policy::validate_interval("refresh_before", catalog::span(&refresh), true)?;
        catalog::check_schedule("refresh_before", &refresh, true)?;
        Spi::connect_mut(|client| {
            for s in parsed.secrets() {
                if secret_store::load(client, s)?.is_none() {
                    return Err(VaultError::SecretNotFound);
                }
            }
            let mut key = KeyBuf::new();
            let sealing = secrets::seal_key(client, None, &mut key)?;
            let id = secret_vault_core::keys::random_uuid_v4();
            let new = store::NewCredential {
                id,
                name,
                provider: kind.as_str(),
                config: &config.as_ref().expect("checked above").0,
                refresh_before: refresh,
                group_id: sealing.group_id,
            };
            if !store::insert(client, &new, catalog::clock())? {
                return Err(VaultError::CredentialExists(name.to_string()));
            }
            Ok(Uuid::from_bytes(id))
        })
    })
}

/// Forgets a credential and its latest token.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn drop_credential(name: &str) {
    access::write("drop_credential", Privilege::Write, name, || {
        require_writable("drop a credential")?;
        if !Spi::connect_mut(|c| store::delete(c, name))? {
            return Err(VaultError::CredentialNotFound);
        }
        Ok(())
    })
}

/// The latest token, if it has not expired. Never mints and never waits
/// for an upstream: the worker keeps the table fresh.
#[pg_extern(volatile, strict, parallel_safe)]
fn credential(name: &str) -> SecretText {
    access::read("credential", Privilege::Read, name, || open(name))
}

fn open(name: &str) -> VaultResult<SecretText> {
    let row = store::not_found(identity::as_owner(|_| Spi::connect(|c| store::sealed(c, name)))?)?;
    let unavailable = |reason: String| VaultError::CredentialUnavailable { name: name.to_string(), reason };
    let Some(ct) = row.ciphertext else {
        return Err(unavailable("no token has been minted yet".into()));
    };
    let parsed = format::parse(&ct)?;
    let mut key = KeyBuf::new();
    let r = keyring::resolve(&row.group, Purpose::Encrypt, "vault.credential", Want::Version(parsed.key_version as i64), &mut key)?;
    let generation = u64::try_from(row.generation).map_err(|_| VaultError::Internal("credential generation is negative".into()))?;
    let plain = format::decrypt(&parsed, key.as_slice(), &r.group_id, Binding::Credential { id: &row.id, name, generation })?;
    let minted = open_payload(plain).ok_or_else(|| VaultError::Internal("sealed credential is malformed".into()))?;
    match minted.expires_at.duration_since(SystemTime::now()) {
        Ok(left) if !left.is_zero() => Ok(SecretText(minted.value)),
        _ => {
            let ago = SystemTime::now().duration_since(minted.expires_at).unwrap_or_default().as_secs();
            Err(unavailable(format!("the last token expired {ago} s ago and no newer one has been minted")))
        }
    }
}
