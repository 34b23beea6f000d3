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
    ///
    /// Every value is written into a buffer of its final size and every
    /// temporary is wiped: a growing String or Vec reallocates and frees
    /// the old block, holding part of the value, unwiped.
    pub fn generate(&self) -> Zeroizing<String> {
        let random = |n: usize| {
            let mut b = Zeroizing::new(vec![0u8; n]);
            OsRng.fill_bytes(&mut b);
            b
        };
        match *self {
            // `encode` allocates the exact encoded length once.
            Generator::Base64Url(n) => Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*random(n))),
            Generator::Hex(n) => {
                let mut out = Zeroizing::new(String::with_capacity(2 * n));
                random(n).iter().for_each(|&b| push_hex(&mut out, b));
                out
            }
            Generator::Alnum(n) => {
                let mut out = Zeroizing::new(String::with_capacity(n));
                // gen_range is uniform (rejection sampling), so no character is favoured.
                (0..n).for_each(|_| out.push(ALNUM[OsRng.gen_range(0..ALNUM.len())] as char));
                out
            }
            Generator::Uuid => {
                let id = Zeroizing::new(crate::keys::random_uuid_v4());
                let mut out = Zeroizing::new(String::with_capacity(36));
                for (i, &b) in id.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out.push('-');
                    }
                    push_hex(&mut out, b);
                }
                out
            }
        }
    }
}

/// Appends `b` as two lowercase hex digits (ASCII, so within a capacity
/// reserved as two bytes per input byte).
fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0x0f)] as char);
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
    fn generated_values_fill_exactly_their_preallocated_capacity() {
        // A value that outgrew its first allocation would have left a
        // freed, unwiped copy of its prefix behind.
        for g in [Generator::Base64Url(32), Generator::Hex(16), Generator::Alnum(40), Generator::Uuid] {
            let v = g.generate();
            assert_eq!(v.capacity(), v.len(), "{g:?}");
        }
    }

    #[test]
    fn uuid_values_are_hyphenated_lowercase_hex() {
        let u = Generator::Uuid.generate();
        let groups: Vec<&str> = u.split('-').collect();
        assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(groups.iter().all(|g| g.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())));
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
