//! Secrets: value generators, the binding of a value's ciphertext to its
//! secret and version, and constant-time verification.

use base64::Engine;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::PolicyError;

pub const MIN_GENERATED: usize = 8;
pub const MAX_GENERATED: usize = 4096;
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// How a rotating secret's values are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// N random bytes, base64url without padding.
    Base64Url(usize),
    /// N random bytes, lowercase hex (2N characters).
    Hex(usize),
    /// N characters drawn uniformly from [A-Za-z0-9].
    Alnum(usize),
    /// A random (version 4) UUID.
    Uuid,
}

impl Generator {
    pub fn parse(spec: &str) -> Result<Self, PolicyError> {
        let bad = || {
            PolicyError::Invalid(format!(
                "generator must be base64url:N, hex:N, alnum:N (N from {MIN_GENERATED} to {MAX_GENERATED}) or uuid"
            ))
        };
        if spec == "uuid" {
            return Ok(Generator::Uuid);
        }
        let (kind, n) = spec.split_once(':').ok_or_else(bad)?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: usize = n.parse().map_err(|_| bad())?;
        if !(MIN_GENERATED..=MAX_GENERATED).contains(&n) {
            return Err(bad());
        }
        match kind {
            "base64url" => Ok(Generator::Base64Url(n)),
            "hex" => Ok(Generator::Hex(n)),
            "alnum" => Ok(Generator::Alnum(n)),
            _ => Err(bad()),
        }
    }

    /// A fresh value from the operating system's CSPRNG.
    pub fn generate(&self) -> Zeroizing<String> {
        let random = |n: usize| {
            let mut b = Zeroizing::new(vec![0u8; n]);
            OsRng.fill_bytes(&mut b);
            b
        };
        Zeroizing::new(match *self {
            Generator::Base64Url(n) => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*random(n)),
            Generator::Hex(n) => hex::encode(&*random(n)),
            Generator::Alnum(n) => {
                // gen_range is uniform (rejection sampling), so no character is favoured.
                (0..n).map(|_| ALNUM[OsRng.gen_range(0..ALNUM.len())] as char).collect()
            }
            Generator::Uuid => {
                let h = Zeroizing::new(hex::encode(crate::keys::random_uuid_v4()));
                format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
            }
        })
    }
}

/// Whether `candidate` equals any of `values`, in time that depends only on
/// the number and lengths of `values`, never on which one matched or how
/// much of it did: both sides are hashed to fixed-length digests and every
/// digest is compared, with no early exit.
pub fn verify<'a>(candidate: &[u8], values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let c = Sha256::digest(candidate);
    let mut any = Choice::from(0u8);
    for v in values {
        let d = Sha256::digest(v);
        any |= d.as_slice().ct_eq(c.as_slice());
    }
    any.into()
}

/// A stored secret version's state at `now` (PostgreSQL timestamps).
pub fn version_state(is_current: bool, valid_until: Option<i64>, now: i64) -> &'static str {
    match (is_current, valid_until) {
        (true, _) => "current",
        (false, Some(t)) if t > now => "grace",
        _ => "expired",
    }
}

/// Whether a stored version still verifies at `now`.
pub fn still_valid(is_current: bool, valid_until: Option<i64>, now: i64) -> bool {
    version_state(is_current, valid_until, now) != "expired"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_specs_parse_and_bad_ones_are_refused() {
        assert_eq!(Generator::parse("base64url:32").unwrap(), Generator::Base64Url(32));
        assert_eq!(Generator::parse("hex:16").unwrap(), Generator::Hex(16));
        assert_eq!(Generator::parse("alnum:24").unwrap(), Generator::Alnum(24));
        assert_eq!(Generator::parse("uuid").unwrap(), Generator::Uuid);
        for bad in ["", "base64url", "base64url:", "hex:7", "hex:4097", "alnum:-1", "alnum:+8", "b64:32", "uuid:4", "hex:1e3"] {
            assert!(Generator::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_values_have_the_promised_shape() {
        let b = Generator::Base64Url(32).generate();
        assert_eq!(b.len(), 43);
        assert!(b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let h = Generator::Hex(16).generate();
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let a = Generator::Alnum(40).generate();
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        let u = Generator::Uuid.generate();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn generated_values_do_not_repeat() {
        let vals: std::collections::HashSet<String> =
            (0..200).map(|_| Generator::Alnum(16).generate().to_string()).collect();
        assert_eq!(vals.len(), 200);
    }

    #[test]
    fn alnum_uses_the_whole_alphabet() {
        let s: String = (0..50).map(|_| Generator::Alnum(64).generate().to_string()).collect();
        for c in ALNUM {
            assert!(s.as_bytes().contains(c), "{}", *c as char);
        }
    }

    #[test]
    fn verify_matches_any_listed_value_only() {
        let values: [&[u8]; 2] = [b"old-password", b"new-password"];
        assert!(verify(b"old-password", values));
        assert!(verify(b"new-password", values));
        assert!(!verify(b"new-passwor", values));
        assert!(!verify(b"", values));
        assert!(!verify(b"x", std::iter::empty()));
    }

    #[test]
    fn grace_window_is_exclusive_at_its_end() {
        assert_eq!(version_state(true, None, 10), "current");
        assert_eq!(version_state(false, Some(11), 10), "grace");
        assert_eq!(version_state(false, Some(10), 10), "expired");
        assert_eq!(version_state(false, None, 10), "expired");
        assert!(still_valid(false, Some(11), 10));
        assert!(!still_valid(false, Some(10), 10));
    }
}
