//! The worker's side: what a mint reads (in a transaction), the mint
//! itself (signing, HTTP: outside any transaction), and the sealing of
//! its result.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use secret_vault_core::cache::KeyBuf;
use secret_vault_core::credentials::{eks, github, seal_payload, Config, Minted};
use secret_vault_core::format::{self, Binding};
use secret_vault_core::kms::aws::credentials::{CredentialChain, Credentials};
use secret_vault_core::kms::aws::env::Env;
use secret_vault_core::kms::http::Http;
use secret_vault_core::MintError;
use zeroize::Zeroizing;

use crate::catalog::{self, GroupRow, KeyRow};
use crate::error::{VaultError, VaultResult};
use crate::identity::Identity;
use crate::{guc, keyring, kms, secret_store};

/// A vault secret's current value, still sealed, with what opens it.
pub struct SealedSecret {
    id: [u8; 16],
    version: i32,
    ciphertext: Vec<u8>,
    group: GroupRow,
    key: KeyRow,
}

/// Reads the secrets `config` signs with (inside a transaction, as owner).
/// A secret deleted since the credential was made fails the mint, clearly.
pub fn read_material(client: &SpiClient<'_>, config: &Config) -> VaultResult<Vec<SealedSecret>> {
    let mut out = Vec::new();
    for name in config.secrets() {
        let s = secret_store::load(client, name)?.ok_or_else(|| {
            VaultError::Mint(MintError::Config(format!("secret \"{}\" named by the config does not exist", name.escape_debug())))
        })?;
        let parsed = format::parse(&s.current_ciphertext)?;
        let group = catalog::load_group_by_id(client, &s.group_id)?.ok_or(VaultError::GroupNotFound)?;
        let key = catalog::key_row_at(client, &s.group_id, parsed.key_version as i32)?.ok_or_else(|| {
            VaultError::VersionNotFound { group: group.name.clone(), version: parsed.key_version as i64 }
        })?;
        out.push(SealedSecret { id: s.id, version: s.current_version, ciphertext: s.current_ciphertext, group, key });
    }
    Ok(out)
}

/// Opens a secret read by `read_material`, between transactions: with the
/// ring key from the shared cache when it is there (no KMS call, and a
/// KMS outage does not stop minting), else unwrapped by the KMS.
fn open(ident: &Identity, s: &SealedSecret) -> VaultResult<Zeroizing<String>> {
    let parsed = format::parse(&s.ciphertext)?;
    let mut cached = KeyBuf::new();
    let unwrapped;
    let key: &[u8] = if keyring::cached_version(&ident.cache_key(s.group.id), s.key.version, &mut cached).is_some() {
        cached.as_slice()
    } else {
        unwrapped = kms::unwrap(&s.group, &s.key)?;
        unwrapped.as_bytes()
    };
    let mut plain = format::decrypt(&parsed, key, &s.group.id, Binding::Secret { id: &s.id, version: s.version as u32 })?;
    match String::from_utf8(std::mem::take(&mut *plain)) {
        Ok(v) => Ok(Zeroizing::new(v)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(VaultError::Mint(MintError::Config("a secret named by the config is not UTF-8".into())))
        }
    }
}

fn http() -> VaultResult<Http> {
    Http::new(None, kms::call().connect_timeout).map_err(VaultError::Kms)
}

/// Mints a token (outside any transaction): signing material from the
/// secrets, then the provider's work, bounded by the KMS call settings
/// and ended by a shutdown request.
pub fn mint(ident: &Identity, config: &Config, material: &[SealedSecret]) -> VaultResult<Minted> {
    let now = SystemTime::now();
    match config {
        Config::Eks(c) => {
            let creds = if material.is_empty() {
                CredentialChain::new(Env::process(), &c.region)
                    .get(&http()?, &kms::call())
                    .map_err(|e| VaultError::Mint(MintError::Signing(format!("the server's AWS credentials: {e}"))))?
            } else {
                let akid = open(ident, &material[0])?;
                let secret = open(ident, &material[1])?;
                let token = material.get(2).map(|m| open(ident, m)).transpose()?;
                Credentials::new(akid.trim(), Zeroizing::new(secret.trim().to_string()), token.map(|t| Zeroizing::new(t.trim().to_string())), None, "vault secrets")
            };
            eks::token(c, &creds, now).map_err(VaultError::Mint)
        }
        Config::Github(c) => {
            let pem = open(ident, &material[0])?;
            let key = github::PrivateKey::from_pem(&pem).map_err(VaultError::Mint)?;
            github::mint(&http()?, &kms::call(), c, &key, now).map_err(VaultError::Mint)
        }
    }
}

/// Seals mint `generation` of credential `id` under a ring key.
pub fn seal(key: &KeyBuf, r: keyring::Resolved, id: &[u8; 16], name: &str, generation: u64, minted: &Minted) -> VaultResult<Vec<u8>> {
    let payload = seal_payload(minted);
    let binding = Binding::Credential { id, name, generation };
    Ok(format::encrypt(guc::cipher(), key.as_slice(), r.version as u32, &r.group_id, binding, &payload)?)
}

/// PostgreSQL's timestamps count from 2000-01-01.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

pub fn tstz(t: SystemTime) -> TimestampWithTimeZone {
    let unix = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let micros = unix.as_micros() as i64 - (PG_EPOCH_UNIX_SECS as i64) * 1_000_000;
    TimestampWithTimeZone::try_from(micros).unwrap_or_else(|_| catalog::clock())
}

pub fn from_micros(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}
