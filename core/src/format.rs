//! The versioned ciphertext format handed to callers by `vault.encrypt`.
//!
//! ```text
//! offset  size  field
//! 0       1     format            0x01
//! 1       1     algorithm         1 = AES-256-GCM-SIV, 2 = XChaCha20-Poly1305
//! 2       4     key version       big-endian, >= 1
//! 6       n     nonce             12 or 24 bytes, by algorithm
//! 6+n     m+16  ciphertext || tag
//! ```
//!
//! The first six bytes (the header) are part of the associated data, so
//! changing the algorithm or version byte fails authentication rather than
//! selecting another key.

use crate::aad::{self, GroupId};
use crate::aead::{Algorithm, TAG_LEN};
use crate::CryptoError;
use zeroize::Zeroizing;

pub const FORMAT_V1: u8 = 0x01;
pub const HEADER_LEN: usize = 6;

/// A ciphertext split into its fields, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub algorithm: Algorithm,
    pub key_version: u32,
    pub header: &'a [u8],
    pub nonce: &'a [u8],
    pub sealed: &'a [u8],
}

/// Splits `bytes` into fields; rejects every malformed input with a typed error.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, CryptoError> {
    let (&format, _) = bytes.split_first().ok_or(CryptoError::Empty)?;
    if format != FORMAT_V1 {
        return Err(CryptoError::UnknownFormat(format));
    }
    if bytes.len() < 2 {
        return Err(CryptoError::Truncated { minimum: HEADER_LEN, actual: bytes.len() });
    }
    let algorithm = Algorithm::from_id(bytes[1])?;
    let minimum = HEADER_LEN + algorithm.nonce_len() + TAG_LEN;
    if bytes.len() < minimum {
        return Err(CryptoError::Truncated { minimum, actual: bytes.len() });
    }
    let key_version = u32::from_be_bytes(bytes[2..6].try_into().expect("4 bytes"));
    if key_version == 0 {
        return Err(CryptoError::ZeroVersion);
    }
    let (header, rest) = bytes.split_at(HEADER_LEN);
    let (nonce, sealed) = rest.split_at(algorithm.nonce_len());
    Ok(Parsed { algorithm, key_version, header, nonce, sealed })
}

fn aead_key(key: &[u8]) -> Result<&[u8; 32], CryptoError> {
    key.try_into().map_err(|_| CryptoError::KeyLength { expected: 32, actual: key.len() })
}

fn header(algorithm: Algorithm, key_version: u32) -> [u8; HEADER_LEN] {
    let v = key_version.to_be_bytes();
    [FORMAT_V1, algorithm.id(), v[0], v[1], v[2], v[3]]
}

/// Encrypts `plaintext` under ring key `key` (version `key_version` of `group`),
/// bound to `context`.
pub fn encrypt(
    algorithm: Algorithm,
    key: &[u8],
    key_version: u32,
    group: &GroupId,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if key_version == 0 {
        return Err(CryptoError::ZeroVersion);
    }
    let key = aead_key(key)?;
    let header = header(algorithm, key_version);
    let nonce = algorithm.random_nonce();
    let sealed = aad::with_data(&header, group, context, |aad| algorithm.seal(key, &nonce, aad, plaintext))?;
    let mut out = Vec::with_capacity(HEADER_LEN + nonce.len() + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts a parsed ciphertext with the ring key of the version it names.
/// The plaintext comes back in a zeroizing buffer.
pub fn decrypt(
    parsed: &Parsed<'_>,
    key: &[u8],
    group: &GroupId,
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut out = Zeroizing::new(vec![0u8; plaintext_len(parsed)]);
    decrypt_into(parsed, key, group, context, &mut out)?;
    Ok(out)
}

/// Length of the plaintext a parsed ciphertext opens to.
pub fn plaintext_len(parsed: &Parsed<'_>) -> usize {
    parsed.sealed.len() - TAG_LEN
}

/// Decrypts into `out` (exactly `plaintext_len` bytes), so the caller can
/// open straight into its result buffer. On error `out` holds no plaintext.
pub fn decrypt_into(
    parsed: &Parsed<'_>,
    key: &[u8],
    group: &GroupId,
    context: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let key = aead_key(key)?;
    aad::with_data(parsed.header, group, context, |aad| {
        parsed.algorithm.open_into(key, parsed.nonce, aad, parsed.sealed, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyBytes;
    use proptest::prelude::*;

    const G1: GroupId = [0x11; 16];
    const G2: GroupId = [0x22; 16];
    const ALGS: [Algorithm; 2] = [Algorithm::Aes256GcmSiv, Algorithm::XChaCha20Poly1305];

    fn roundtrip(alg: Algorithm, pt: &[u8], ctx: &[u8]) -> (KeyBytes, Vec<u8>) {
        let key = KeyBytes::random(32);
        let ct = encrypt(alg, key.as_bytes(), 7, &G1, ctx, pt).unwrap();
        let parsed = parse(&ct).unwrap();
        assert_eq!(parsed.key_version, 7);
        assert_eq!(parsed.algorithm, alg);
        assert_eq!(&decrypt(&parsed, key.as_bytes(), &G1, ctx).unwrap()[..], pt);
        (key, ct)
    }

    #[test]
    fn layout_is_format_algorithm_version_nonce_sealed() {
        let key = KeyBytes::random(32);
        let ct = encrypt(Algorithm::XChaCha20Poly1305, key.as_bytes(), 0x01020304, &G1, b"", b"abc").unwrap();
        assert_eq!(&ct[..6], &[FORMAT_V1, 2, 1, 2, 3, 4]);
        assert_eq!(ct.len(), 6 + 24 + 3 + 16);
    }

    #[test]
    fn parse_rejects_each_malformed_shape_with_its_own_error() {
        assert_eq!(parse(&[]), Err(CryptoError::Empty));
        assert_eq!(parse(&[0x02, 1, 0, 0, 0, 1]), Err(CryptoError::UnknownFormat(2)));
        assert_eq!(parse(&[FORMAT_V1]), Err(CryptoError::Truncated { minimum: 6, actual: 1 }));
        assert_eq!(parse(&[FORMAT_V1, 9, 0, 0, 0, 1]), Err(CryptoError::UnknownAlgorithm(9)));
        assert_eq!(
            parse(&[FORMAT_V1, 1, 0, 0, 0, 1, 0, 0]),
            Err(CryptoError::Truncated { minimum: 34, actual: 8 })
        );
        let mut zero = vec![FORMAT_V1, 1, 0, 0, 0, 0];
        zero.extend_from_slice(&[0u8; 28]);
        assert_eq!(parse(&zero), Err(CryptoError::ZeroVersion));
    }

    #[test]
    fn wrong_key_fails_authentication() {
        for alg in ALGS {
            let (_, ct) = roundtrip(alg, b"secret", b"");
            let other = KeyBytes::random(32);
            assert_eq!(
                decrypt(&parse(&ct).unwrap(), other.as_bytes(), &G1, b"").unwrap_err(),
                CryptoError::AuthenticationFailed
            );
        }
    }

    #[test]
    fn non_32_byte_key_is_refused() {
        let key = KeyBytes::random(16);
        assert!(matches!(
            encrypt(Algorithm::DEFAULT, key.as_bytes(), 1, &G1, b"", b"x"),
            Err(CryptoError::KeyLength { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trips(pt in proptest::collection::vec(any::<u8>(), 0..512),
                       ctx in proptest::collection::vec(any::<u8>(), 0..64),
                       alg_i in 0usize..2) {
            roundtrip(ALGS[alg_i], &pt, &ctx);
        }

        #[test]
        fn any_flipped_bit_fails(pt in proptest::collection::vec(any::<u8>(), 0..128),
                                 alg_i in 0usize..2, bit in any::<prop::sample::Index>()) {
            let (key, mut ct) = roundtrip(ALGS[alg_i], &pt, b"ctx");
            let i = bit.index(ct.len() * 8);
            ct[i / 8] ^= 1 << (i % 8);
            // A flip may make the input unparsable (format/algorithm byte) or
            // name another version; either way it must never decrypt.
            if let Ok(p) = parse(&ct) {
                prop_assert!(decrypt(&p, key.as_bytes(), &G1, b"ctx").is_err());
            }
        }

        #[test]
        fn any_truncation_fails(pt in proptest::collection::vec(any::<u8>(), 0..128),
                                alg_i in 0usize..2, cut in any::<prop::sample::Index>()) {
            let (key, ct) = roundtrip(ALGS[alg_i], &pt, b"");
            let len = cut.index(ct.len());
            if let Ok(p) = parse(&ct[..len]) {
                prop_assert!(decrypt(&p, key.as_bytes(), &G1, b"").is_err());
            }
        }

        #[test]
        fn other_group_context_or_version_fails(pt in proptest::collection::vec(any::<u8>(), 0..64),
                                                alg_i in 0usize..2, v in 1u32..u32::MAX) {
            let (key, ct) = roundtrip(ALGS[alg_i], &pt, b"ctx");
            let p = parse(&ct).unwrap();
            prop_assert_eq!(decrypt(&p, key.as_bytes(), &G2, b"ctx").unwrap_err(), CryptoError::AuthenticationFailed);
            prop_assert_eq!(decrypt(&p, key.as_bytes(), &G1, b"ctx2").unwrap_err(), CryptoError::AuthenticationFailed);
            prop_assert_eq!(decrypt(&p, key.as_bytes(), &G1, b"").unwrap_err(), CryptoError::AuthenticationFailed);
            if v != 7 {
                let mut moved = ct.clone();
                moved[2..6].copy_from_slice(&v.to_be_bytes());
                let p = parse(&moved).unwrap();
                prop_assert_eq!(decrypt(&p, key.as_bytes(), &G1, b"ctx").unwrap_err(), CryptoError::AuthenticationFailed);
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&bytes);
        }
    }
}
