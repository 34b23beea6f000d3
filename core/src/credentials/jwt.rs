//! RS256 JSON Web Tokens for GitHub Apps: `jsonwebtoken` builds and
//! encodes the token, `rsa` 0.10 signs it (see Cargo.toml for why not the
//! crate's own backends).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::signature as sig2;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

use crate::MintError;

/// GitHub's App keys are 2048 bits; shorter keys are not worth signing with.
const MIN_BITS: usize = 2048;

struct Rs256(rsa::pkcs1v15::SigningKey<rsa::sha2::Sha256>);

impl sig2::Signer<Vec<u8>> for Rs256 {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, sig2::Error> {
        // Blinded with the OS generator: the private-key operation's timing
        // does not follow the key.
        let signature = self.0.try_sign_with_rng(&mut getrandom::SysRng, message).map_err(|_| sig2::Error::new())?;
        Ok(signature.to_vec())
    }
}

impl JwtSigner for Rs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

/// Signs RS256 only; nothing here verifies tokens.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: |algorithm, key| {
        if *algorithm != Algorithm::RS256 {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        let key = rsa::PrivateKey::from_pkcs1_der(key.as_bytes()).map_err(|_| ErrorKind::InvalidRsaKey("not PKCS#1".into()))?;
        Ok(Box::new(Rs256(rsa::pkcs1v15::SigningKey::new(key))))
    },
    verifier_factory: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
    key_utils: KeyUtils::new_unimplemented(),
};

/// A private key read from PEM, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`, what GitHub hands out).
pub struct AppKey(EncodingKey);

impl AppKey {
    pub fn from_pem(pem: &str) -> Result<AppKey, MintError> {
        let pem = pem.trim();
        let key = rsa::PrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::PrivateKey::from_pkcs1_pem(pem))
            // The parser's errors say where parsing stopped, never what it read.
            .map_err(|_| {
                MintError::Config("the private key secret does not hold an RSA private key in PEM (PKCS#8 or PKCS#1)".into())
            })?;
        let bits = key.size() * 8;
        if bits < MIN_BITS {
            return Err(MintError::Config(format!("the private key has {bits} bits; at least {MIN_BITS} are needed")));
        }
        let der = key.to_pkcs1_der().map_err(|_| MintError::Config("the private key cannot be encoded".into()))?;
        Ok(AppKey(EncodingKey::from_rsa_der(der.as_bytes())))
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iat: u64,
    exp: u64,
    iss: &'a str,
}

/// Backdated so a GitHub clock slightly behind ours still accepts it.
pub const BACKDATE_SECS: u64 = 60;
/// GitHub refuses an `exp` more than ten minutes ahead: nine, for our
/// clock being slightly ahead of theirs.
pub const LIFETIME_SECS: u64 = 9 * 60;

/// The App's JWT, issued `BACKDATE_SECS` before `now` and expiring
/// `LIFETIME_SECS` after it.
pub fn app_jwt(issuer: &str, key: &AppKey, now: SystemTime) -> Result<Zeroizing<String>, MintError> {
    // Installing fails only when a provider is already in place: ours.
    let _ = PROVIDER.install_default();
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = Claims { iat: now.saturating_sub(BACKDATE_SECS), exp: now + LIFETIME_SECS, iss: issuer };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key.0)
        .map(Zeroizing::new)
        .map_err(|e| MintError::Signing(format!("cannot sign the GitHub App JWT: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    use std::time::Duration;

    const PKCS8: &str = include_str!("testdata/app_key_pkcs8.pem");
    const PKCS1: &str = include_str!("testdata/app_key_pkcs1.pem");
    const PUBLIC: &str = include_str!("testdata/app_key_public.pem");

    fn part(p: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap()
    }

    #[test]
    fn a_jwt_is_rs256_signed_backdated_and_short_lived() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for pem in [PKCS8, PKCS1] {
            let jwt = app_jwt("123", &AppKey::from_pem(pem).unwrap(), now).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header: serde_json::Value = serde_json::from_slice(&part(parts[0])).unwrap();
            assert_eq!(header["alg"], "RS256");
            let claims: serde_json::Value = serde_json::from_slice(&part(parts[1])).unwrap();
            assert_eq!((claims["iss"].as_str(), claims["iat"].as_u64(), claims["exp"].as_u64()), (Some("123"), Some(1_700_000_000 - 60), Some(1_700_000_000 + 540)));
            let public = rsa::PublicKey::from_public_key_pem(PUBLIC).unwrap();
            let verifier = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(public);
            let signature = rsa::pkcs1v15::Signature::try_from(part(parts[2]).as_slice()).unwrap();
            verifier.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).unwrap();
        }
    }

    #[test]
    fn keys_that_are_not_rsa_pem_or_too_short_are_refused_without_quoting_them() {
        for bad in ["", "-----BEGIN PRIVATE KEY-----\nc2VjcmV0X2tleQ==\n-----END PRIVATE KEY-----", PUBLIC, include_str!("testdata/short_key.pem")] {
            let e = AppKey::from_pem(bad).err().unwrap().to_string();
            assert!(!e.contains("c2VjcmV0") && !e.contains("MII"), "{e}");
        }
    }
}
