//! The versioned ciphertext format handed to callers by `vault.encrypt`, and
//! the one secret values are stored in.
//!
//! ```text
//! offset  size  field
//! 0       1     format            0x01 data (vault.encrypt), 0x02 secret value
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
/// A secret's value (0.2.0): its own AAD domain, see `aad::secret_value`.
pub const FORMAT_SECRET: u8 = 0x02;
/// A minted credential's sealed token: see `aad::credential_value`.
pub const FORMAT_CREDENTIAL: u8 = 0x03;
pub const HEADER_LEN: usize = 6;

/// What a ciphertext is bound to besides its group and key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// Caller data: `vault.encrypt`/`vault.decrypt` with the caller's context.
    Data(&'a [u8]),
    /// Version `version` of secret `id`.
    Secret { id: &'a [u8; 16], version: u32 },
    /// Mint `generation` of minted credential `id`, named `name`.
    Credential { id: &'a [u8; 16], name: &'a str, generation: u64 },
}

/// A ciphertext split into its fields, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub format: u8,
    pub algorithm: Algorithm,
    pub key_version: u32,
    pub header: &'a [u8],
    pub nonce: &'a [u8],
    pub sealed: &'a [u8],
}

/// Splits `bytes` into fields; rejects every malformed input with a typed error.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, CryptoError> {
    let (&format, _) = bytes.split_first().ok_or(CryptoError::Empty)?;
    if format != FORMAT_V1 && format != FORMAT_SECRET && format != FORMAT_CREDENTIAL {
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
    Ok(Parsed { format, algorithm, key_version, header, nonce, sealed })
}

fn aead_key(key: &[u8]) -> Result<&[u8; 32], CryptoError> {
    key.try_into().map_err(|_| CryptoError::KeyLength { expected: 32, actual: key.len() })
}

fn header(format: u8, algorithm: Algorithm, key_version: u32) -> [u8; HEADER_LEN] {
    let v = key_version.to_be_bytes();
    [format, algorithm.id(), v[0], v[1], v[2], v[3]]
}

fn refuse_reserved(context: &[u8]) -> Result<(), CryptoError> {
    if context.starts_with(aad::LEGACY_SECRET_CONTEXT_LABEL) {
        return Err(CryptoError::ReservedContext);
    }
    Ok(())
}

/// Calls `f` with the AAD a ciphertext of `format` bound by `binding` has.
/// Secret values written by 0.1.0 (format 0x01) used the data domain with a
/// labelled context; callers can no longer produce that context.
fn with_aad<R>(
    format: u8,
    header: &[u8],
    group: &GroupId,
    binding: Binding<'_>,
    f: impl FnOnce(&[u8]) -> Result<R, CryptoError>,
) -> Result<R, CryptoError> {
    match (format, binding) {
        (FORMAT_V1, Binding::Data(context)) => {
            refuse_reserved(context)?;
            aad::with_data(header, group, context, f)
        }
        (FORMAT_V1, Binding::Secret { id, version }) => f(&aad::data(header, group, &aad::legacy_secret_context(id, version))),
        (FORMAT_SECRET, Binding::Secret { id, version }) => f(&aad::secret_value(header, group, id, version)),
        (FORMAT_CREDENTIAL, Binding::Credential { id, name, generation }) => {
            f(&aad::credential_value(header, group, id, name, generation))
        }
        (FORMAT_SECRET | FORMAT_CREDENTIAL, _) | (FORMAT_V1, Binding::Credential { .. }) => Err(CryptoError::WrongDomain),
        (other, _) => Err(CryptoError::UnknownFormat(other)),
    }
}

/// Encrypts `plaintext` under ring key `key` (version `key_version` of `group`),
/// bound to `binding`: caller data gets format 0x01, secret values 0x02.
pub fn encrypt(
    algorithm: Algorithm,
    key: &[u8],
    key_version: u32,
    group: &GroupId,
    binding: Binding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = vec![0u8; ciphertext_len(algorithm, plaintext.len()).ok_or(CryptoError::TooLarge)?];
    encrypt_into(algorithm, key, key_version, group, binding, plaintext, &mut out)?;
    Ok(out)
}

/// The longest caller context (associated data) accepted: contexts name
/// where data belongs (a row, a tenant), they are not data themselves.
pub const MAX_CONTEXT_LEN: usize = 1 << 20;

fn check_context(binding: &Binding<'_>) -> Result<(), CryptoError> {
    match binding {
        Binding::Data(c) if c.len() > MAX_CONTEXT_LEN => Err(CryptoError::ContextTooLarge { actual: c.len(), limit: MAX_CONTEXT_LEN }),
        _ => Ok(()),
    }
}

/// Length of the ciphertext `encrypt` makes from `plaintext_len` bytes, or
/// None if it would not fit in memory addresses.
pub fn ciphertext_len(algorithm: Algorithm, plaintext_len: usize) -> Option<usize> {
    plaintext_len.checked_add(HEADER_LEN + algorithm.nonce_len() + TAG_LEN)
}

/// Encrypts like [`encrypt`] into `out`, which must be exactly
/// [`ciphertext_len`] bytes: the caller allocates (in PostgreSQL memory,
/// where a failed allocation is an ordinary ERROR), nothing here does.
pub fn encrypt_into(
    algorithm: Algorithm,
    key: &[u8],
    key_version: u32,
    group: &GroupId,
    binding: Binding<'_>,
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    if key_version == 0 {
        return Err(CryptoError::ZeroVersion);
    }
    check_context(&binding)?;
    let key = aead_key(key)?;
    if ciphertext_len(algorithm, plaintext.len()) != Some(out.len()) {
        return Err(CryptoError::TooLarge);
    }
    let format = match binding {
        Binding::Data(_) => FORMAT_V1,
        Binding::Secret { .. } => FORMAT_SECRET,
        Binding::Credential { .. } => FORMAT_CREDENTIAL,
    };
    let header = header(format, algorithm, key_version);
    let nl = algorithm.nonce_len();
    let (head, rest) = out.split_at_mut(HEADER_LEN + nl);
    head[..HEADER_LEN].copy_from_slice(&header);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut head[HEADER_LEN..]);
    let nonce = &head[HEADER_LEN..];
    let (body, tag_out) = rest.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    let tag = with_aad(format, &header, group, binding, |aad| algorithm.seal_in_place(key, nonce, aad, body));
    match tag {
        Ok(t) => {
            tag_out.copy_from_slice(&t);
            Ok(())
        }
        Err(e) => {
            // Never leave plaintext behind in the caller's buffer.
            body.iter_mut().for_each(|b| *b = 0);
            Err(e)
        }
    }
}

/// Decrypts a parsed ciphertext with the ring key of the version it names.
/// The plaintext comes back in a zeroizing buffer.
pub fn decrypt(
    parsed: &Parsed<'_>,
    key: &[u8],
    group: &GroupId,
    binding: Binding<'_>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut out = Zeroizing::new(vec![0u8; plaintext_len(parsed)]);
    decrypt_into(parsed, key, group, binding, &mut out)?;
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
    binding: Binding<'_>,
    out: &mut [u8],
) -> Result<(), CryptoError> {
    check_context(&binding)?;
    let key = aead_key(key)?;
    with_aad(parsed.format, parsed.header, group, binding, |aad| {
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
        let ct = encrypt(alg, key.as_bytes(), 7, &G1, Binding::Data(ctx), pt).unwrap();
        let parsed = parse(&ct).unwrap();
        assert_eq!(parsed.key_version, 7);
        assert_eq!(parsed.algorithm, alg);
        assert_eq!(&decrypt(&parsed, key.as_bytes(), &G1, Binding::Data(ctx)).unwrap()[..], pt);
        (key, ct)
    }

    #[test]
    fn layout_is_format_algorithm_version_nonce_sealed() {
        let key = KeyBytes::random(32);
        let ct = encrypt(Algorithm::XChaCha20Poly1305, key.as_bytes(), 0x01020304, &G1, Binding::Data(b""), b"abc").unwrap();
        assert_eq!(&ct[..6], &[FORMAT_V1, 2, 1, 2, 3, 4]);
        assert_eq!(ct.len(), 6 + 24 + 3 + 16);
    }

    #[test]
    fn parse_rejects_each_malformed_shape_with_its_own_error() {
        assert_eq!(parse(&[]), Err(CryptoError::Empty));
        assert_eq!(parse(&[0x04, 1, 0, 0, 0, 1]), Err(CryptoError::UnknownFormat(4)));
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
                decrypt(&parse(&ct).unwrap(), other.as_bytes(), &G1, Binding::Data(b"")).unwrap_err(),
                CryptoError::AuthenticationFailed
            );
        }
    }

    #[test]
    fn non_32_byte_key_is_refused() {
        let key = KeyBytes::random(16);
        assert!(matches!(
            encrypt(Algorithm::DEFAULT, key.as_bytes(), 1, &G1, Binding::Data(b""), b"x"),
            Err(CryptoError::KeyLength { .. })
        ));
    }

    #[test]
    fn credential_tokens_open_only_as_their_own_mint() {
        let key = KeyBytes::random(32);
        let (id, other) = ([4u8; 16], [5u8; 16]);
        let cred = Binding::Credential { id: &id, name: "gh/ci", generation: 7 };
        let ct = encrypt(Algorithm::DEFAULT, key.as_bytes(), 1, &G1, cred, b"ghs_token").unwrap();
        assert_eq!(ct[0], FORMAT_CREDENTIAL);
        let p = parse(&ct).unwrap();
        assert_eq!(&decrypt(&p, key.as_bytes(), &G1, cred).unwrap()[..], b"ghs_token");
        for wrong in [
            Binding::Credential { id: &id, name: "gh/ci", generation: 6 },
            Binding::Credential { id: &other, name: "gh/ci", generation: 7 },
            Binding::Credential { id: &id, name: "gh/other", generation: 7 },
        ] {
            assert_eq!(decrypt(&p, key.as_bytes(), &G1, wrong), Err(CryptoError::AuthenticationFailed));
        }
        for domain in [Binding::Secret { id: &id, version: 7 }, Binding::Data(b"")] {
            assert_eq!(decrypt(&p, key.as_bytes(), &G1, domain), Err(CryptoError::WrongDomain));
        }
        // A secret's value cannot be passed off as a credential's token.
        let s = encrypt(Algorithm::DEFAULT, key.as_bytes(), 1, &G1, Binding::Secret { id: &id, version: 7 }, b"v").unwrap();
        assert_eq!(decrypt(&parse(&s).unwrap(), key.as_bytes(), &G1, cred), Err(CryptoError::WrongDomain));
    }

    #[test]
    fn secret_values_and_caller_data_cannot_open_each_other() {
        let key = KeyBytes::random(32);
        let id = [9u8; 16];
        let secret = Binding::Secret { id: &id, version: 3 };
        let ct = encrypt(Algorithm::DEFAULT, key.as_bytes(), 1, &G1, secret, b"s3cret").unwrap();
        assert_eq!(ct[0], FORMAT_SECRET);
        let p = parse(&ct).unwrap();
        assert_eq!(&decrypt(&p, key.as_bytes(), &G1, secret).unwrap()[..], b"s3cret");
        // vault.decrypt refuses a secret value whatever context it is given
        let legacy = crate::aad::legacy_secret_context(&id, 3);
        for ctx in [&b""[..], &legacy[..]] {
            assert!(matches!(
                decrypt(&p, key.as_bytes(), &G1, Binding::Data(ctx)),
                Err(CryptoError::WrongDomain) | Err(CryptoError::ReservedContext)
            ));
        }
        // another secret or version does not open it
        let other = Binding::Secret { id: &[8u8; 16], version: 3 };
        assert_eq!(decrypt(&p, key.as_bytes(), &G1, other).unwrap_err(), CryptoError::AuthenticationFailed);
        // nobody can forge a value through the data domain either
        assert_eq!(
            encrypt(Algorithm::DEFAULT, key.as_bytes(), 1, &G1, Binding::Data(&legacy), b"forged").unwrap_err(),
            CryptoError::ReservedContext
        );
    }

    #[test]
    fn values_written_by_0_1_0_still_open_as_secrets_only() {
        // 0.1.0 sealed values as data with a labelled context.
        let key = KeyBytes::random(32);
        let id = [7u8; 16];
        let legacy_ctx = crate::aad::legacy_secret_context(&id, 2);
        let header = header(FORMAT_V1, Algorithm::DEFAULT, 1);
        let nonce = Algorithm::DEFAULT.random_nonce();
        let aad = crate::aad::data(&header, &G1, &legacy_ctx);
        let sealed = Algorithm::DEFAULT.seal(key.as_aead_key().unwrap(), &nonce, &aad, b"old value").unwrap();
        let ct = [&header[..], &nonce[..], &sealed[..]].concat();
        let p = parse(&ct).unwrap();
        let opened = decrypt(&p, key.as_bytes(), &G1, Binding::Secret { id: &id, version: 2 }).unwrap();
        assert_eq!(&opened[..], b"old value");
        assert_eq!(decrypt(&p, key.as_bytes(), &G1, Binding::Data(&legacy_ctx)).unwrap_err(), CryptoError::ReservedContext);
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
                prop_assert!(decrypt(&p, key.as_bytes(), &G1, Binding::Data(b"ctx")).is_err());
            }
        }

        #[test]
        fn any_truncation_fails(pt in proptest::collection::vec(any::<u8>(), 0..128),
                                alg_i in 0usize..2, cut in any::<prop::sample::Index>()) {
            let (key, ct) = roundtrip(ALGS[alg_i], &pt, b"");
            let len = cut.index(ct.len());
            if let Ok(p) = parse(&ct[..len]) {
                prop_assert!(decrypt(&p, key.as_bytes(), &G1, Binding::Data(b"")).is_err());
            }
        }

        #[test]
        fn other_group_context_or_version_fails(pt in proptest::collection::vec(any::<u8>(), 0..64),
                                                alg_i in 0usize..2, v in 1u32..u32::MAX) {
            let (key, ct) = roundtrip(ALGS[alg_i], &pt, b"ctx");
            let p = parse(&ct).unwrap();
            prop_assert_eq!(decrypt(&p, key.as_bytes(), &G2, Binding::Data(b"ctx")).unwrap_err(), CryptoError::AuthenticationFailed);
            prop_assert_eq!(decrypt(&p, key.as_bytes(), &G1, Binding::Data(b"ctx2")).unwrap_err(), CryptoError::AuthenticationFailed);
            prop_assert_eq!(decrypt(&p, key.as_bytes(), &G1, Binding::Data(b"")).unwrap_err(), CryptoError::AuthenticationFailed);
            if v != 7 {
                let mut moved = ct.clone();
                moved[2..6].copy_from_slice(&v.to_be_bytes());
                let p = parse(&moved).unwrap();
                prop_assert_eq!(decrypt(&p, key.as_bytes(), &G1, Binding::Data(b"ctx")).unwrap_err(), CryptoError::AuthenticationFailed);
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn encrypt_into_matches_encrypt_and_opens_with_decrypt() {
        let key = [3u8; 32];
        for alg in [Algorithm::Aes256GcmSiv, Algorithm::XChaCha20Poly1305] {
            for pt in [&b""[..], b"x", &[7u8; 5000][..]] {
                let mut out = vec![0u8; ciphertext_len(alg, pt.len()).unwrap()];
                encrypt_into(alg, &key, 4, &G1, Binding::Data(b"ctx"), pt, &mut out).unwrap();
                let parsed = parse(&out).unwrap();
                assert_eq!(parsed.key_version, 4);
                assert_eq!(&decrypt(&parsed, &key, &G1, Binding::Data(b"ctx")).unwrap()[..], pt);
                assert!(decrypt(&parsed, &key, &G1, Binding::Data(b"other")).is_err());
            }
            let mut short = vec![0u8; 10];
            assert_eq!(encrypt_into(alg, &key, 1, &G1, Binding::Data(b""), b"abc", &mut short), Err(CryptoError::TooLarge));
        }
    }

    #[test]
    fn contexts_over_the_limit_are_refused_both_ways() {
        let key = [3u8; 32];
        let big = vec![0u8; MAX_CONTEXT_LEN + 1];
        let e = encrypt(Algorithm::DEFAULT, &key, 1, &G1, Binding::Data(&big), b"x").unwrap_err();
        assert!(matches!(e, CryptoError::ContextTooLarge { .. }));
        let ct = encrypt(Algorithm::DEFAULT, &key, 1, &G1, Binding::Data(b""), b"x").unwrap();
        let parsed = parse(&ct).unwrap();
        assert!(matches!(decrypt(&parsed, &key, &G1, Binding::Data(&big)), Err(CryptoError::ContextTooLarge { .. })));
    }
}
