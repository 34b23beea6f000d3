//! The AEAD algorithms ciphertexts may use. Both are misuse-resistant enough
//! for random nonces: AES-256-GCM-SIV tolerates nonce reuse gracefully and
//! XChaCha20-Poly1305 has a 192-bit nonce.

use aes_gcm_siv::Aes256GcmSiv;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use rand::rngs::OsRng;
use rand::RngCore;

use crate::secure::SecureBox;
use crate::CryptoError;
use std::cell::RefCell;
use subtle::ConstantTimeEq;

pub const TAG_LEN: usize = 16;

/// The last AES-GCM-SIV key this thread used and its expanded schedule, on
/// pages of their own (not dumped, locked where allowed, wiped when freed):
/// a run of messages under one ring key expands it once, not per message.
struct SivSchedule {
    key: [u8; 32],
    cipher: Aes256GcmSiv,
}

thread_local! {
    static SIV: RefCell<Option<SecureBox<SivSchedule>>> = const { RefCell::new(None) };
}

fn with_siv<R>(key: &[u8; 32], f: impl FnOnce(&Aes256GcmSiv) -> R) -> R {
    SIV.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Re-entered (cannot happen today): serve without the cache.
            return f(&Aes256GcmSiv::new(key.into()));
        };
        match slot.as_mut() {
            Some(s) if bool::from(s.key.ct_eq(key)) => {}
            // Replaced in place: the old schedule's drop wipes it (aes
            // `zeroize`) and the mapping is reused.
            Some(s) => {
                s.key = *key;
                s.cipher = Aes256GcmSiv::new(key.into());
            }
            None => match SecureBox::new(SivSchedule { key: *key, cipher: Aes256GcmSiv::new(key.into()) }) {
                Ok(b) => *slot = Some(b),
                // No protected page to be had: work uncached rather than fail.
                Err(_) => return f(&Aes256GcmSiv::new(key.into())),
            },
        }
        match slot.as_ref() {
            Some(s) => f(&s.cipher),
            None => f(&Aes256GcmSiv::new(key.into())),
        }
    })
}

/// Drops this thread's cached AES-GCM-SIV schedule (wiping and unmapping
/// its pages), e.g. when the key cache it was filled from is invalidated.
pub fn forget_cached_schedule() {
    SIV.with(|cell| {
        if let Ok(mut slot) = cell.try_borrow_mut() {
            *slot = None;
        }
    });
}

#[cfg(test)]
fn cached_schedule_addr() -> Option<usize> {
    SIV.with(|cell| cell.borrow().as_ref().map(|b| b.addr()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Algorithm {
    Aes256GcmSiv = 1,
    XChaCha20Poly1305 = 2,
}

impl Algorithm {
    pub const DEFAULT: Algorithm = Algorithm::Aes256GcmSiv;

    pub fn from_id(id: u8) -> Result<Self, CryptoError> {
        match id {
            1 => Ok(Algorithm::Aes256GcmSiv),
            2 => Ok(Algorithm::XChaCha20Poly1305),
            other => Err(CryptoError::UnknownAlgorithm(other)),
        }
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn nonce_len(self) -> usize {
        match self {
            Algorithm::Aes256GcmSiv => 12,
            Algorithm::XChaCha20Poly1305 => 24,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Aes256GcmSiv => "aes-256-gcm-siv",
            Algorithm::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "aes-256-gcm-siv" => Some(Algorithm::Aes256GcmSiv),
            "xchacha20-poly1305" => Some(Algorithm::XChaCha20Poly1305),
            _ => None,
        }
    }

    /// A fresh random nonce of the right length.
    pub fn random_nonce(self) -> Vec<u8> {
        let mut n = vec![0u8; self.nonce_len()];
        OsRng.fill_bytes(&mut n);
        n
    }

    /// Seals `plaintext`; returns ciphertext with the tag appended.
    pub fn seal(
        self,
        key: &[u8; 32],
        nonce: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        debug_assert_eq!(nonce.len(), self.nonce_len());
        let payload = Payload { msg: plaintext, aad };
        let out = match self {
            Algorithm::Aes256GcmSiv => with_siv(key, |c| c.encrypt(nonce.into(), payload)),
            Algorithm::XChaCha20Poly1305 => {
                XChaCha20Poly1305::new(key.into()).encrypt(nonce.into(), payload)
            }
        };
        out.map_err(|_| CryptoError::TooLarge)
    }

    /// Opens `sealed` (ciphertext and tag). Any mismatch is `AuthenticationFailed`.
    pub fn open(
        self,
        key: &[u8; 32],
        nonce: &[u8],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if nonce.len() != self.nonce_len() || sealed.len() < TAG_LEN {
            return Err(CryptoError::AuthenticationFailed);
        }
        let payload = Payload { msg: sealed, aad };
        let out = match self {
            Algorithm::Aes256GcmSiv => with_siv(key, |c| c.decrypt(nonce.into(), payload)),
            Algorithm::XChaCha20Poly1305 => {
                XChaCha20Poly1305::new(key.into()).decrypt(nonce.into(), payload)
            }
        };
        out.map_err(|_| CryptoError::AuthenticationFailed)
    }
}

impl Algorithm {
    /// Seals `buf` in place and returns the tag: the caller's buffer (one
    /// in PostgreSQL memory) receives the ciphertext without any copy on
    /// the Rust heap, whose allocation failure would abort the process.
    pub fn seal_in_place(self, key: &[u8; 32], nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        use chacha20poly1305::aead::AeadInPlace;
        if nonce.len() != self.nonce_len() {
            return Err(CryptoError::TooLarge);
        }
        let tag = match self {
            Algorithm::Aes256GcmSiv => with_siv(key, |c| c.encrypt_in_place_detached(nonce.into(), aad, buf)),
            Algorithm::XChaCha20Poly1305 => {
                XChaCha20Poly1305::new(key.into()).encrypt_in_place_detached(nonce.into(), aad, buf)
            }
        };
        tag.map(|t| t.into()).map_err(|_| CryptoError::TooLarge)
    }

    /// Opens `sealed` into `out` (which must be exactly `sealed.len() - 16`
    /// bytes) without an intermediate buffer. On failure `out` holds no
    /// plaintext: both AEADs check the tag before leaving plaintext behind
    /// (XChaCha20-Poly1305) or re-encrypt it (AES-GCM-SIV).
    pub fn open_into(
        self,
        key: &[u8; 32],
        nonce: &[u8],
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        use chacha20poly1305::aead::AeadInPlace;
        if nonce.len() != self.nonce_len() || sealed.len() < TAG_LEN || out.len() != sealed.len() - TAG_LEN {
            return Err(CryptoError::AuthenticationFailed);
        }
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        out.copy_from_slice(ct);
        let r = match self {
            Algorithm::Aes256GcmSiv => {
                with_siv(key, |c| c.decrypt_in_place_detached(nonce.into(), aad, out, tag.into()))
            }
            Algorithm::XChaCha20Poly1305 => {
                XChaCha20Poly1305::new(key.into()).decrypt_in_place_detached(nonce.into(), aad, out, tag.into())
            }
        };
        r.map_err(|_| {
            out.iter_mut().for_each(|b| *b = 0);
            CryptoError::AuthenticationFailed
        })
    }
}

#[cfg(test)]
mod tests {
    //! Known-answer tests: RFC 8452 Appendix C.2 (AEAD_AES_256_GCM_SIV) and
    //! draft-irtf-cfrg-xchacha-03 Appendix A.3.1 (AEAD_XChaCha20_Poly1305).
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    fn key32(s: &str) -> [u8; 32] {
        h(s).try_into().unwrap()
    }

    struct Vector {
        key: &'static str,
        nonce: &'static str,
        aad: &'static str,
        pt: &'static str,
        ct: &'static str,
    }

    // RFC 8452, C.2 (AEAD_AES_256_GCM_SIV), a selection covering empty,
    // block-sized, multi-block and AAD-bearing inputs.
    const RFC8452: &[Vector] = &[
        Vector {
            key: "0100000000000000000000000000000000000000000000000000000000000000",
            nonce: "030000000000000000000000",
            aad: "",
            pt: "",
            ct: "07f5f4169bbf55a8400cd47ea6fd400f",
        },
        Vector {
            key: "0100000000000000000000000000000000000000000000000000000000000000",
            nonce: "030000000000000000000000",
            aad: "",
            pt: "0100000000000000",
            ct: "c2ef328e5c71c83b843122130f7364b761e0b97427e3df28",
        },
        Vector {
            key: "0100000000000000000000000000000000000000000000000000000000000000",
            nonce: "030000000000000000000000",
            aad: "",
            pt: "01000000000000000000000000000000",
            ct: "85a01b63025ba19b7fd3ddfc033b3e76c9eac6fa700942702e90862383c6c366",
        },
        Vector {
            key: "0100000000000000000000000000000000000000000000000000000000000000",
            nonce: "030000000000000000000000",
            aad: "01",
            pt: "0200000000000000",
            ct: "1de22967237a813291213f267e3b452f02d01ae33e4ec854",
        },
        Vector {
            key: "e66021d5eb8e4f4066d4adb9c33560e4f46e44bb3da0015c94f7088736864200",
            nonce: "e0eaf5284d884a0e77d31646",
            aad: "",
            pt: "",
            ct: "169fbb2fbf389a995f6390af22228a62",
        },
        Vector {
            key: "bae8e37fc83441b16034566b7a806c46bb91c3c5aedb64a6c590bc84d1a5e269",
            nonce: "e4b47801afc0577e34699b9e",
            aad: "4fbdc66f14",
            pt: "671fdd",
            ct: "0eaccb93da9bb81333aee0c785b240d319719d",
        },
        Vector {
            key: "6545fc880c94a95198874296d5cc1fd161320b6920ce07787f86743b275d1ab3",
            nonce: "2f6d1f0434d8848c1177441f",
            aad: "6787f3ea22c127aaf195",
            pt: "195495860f04",
            ct: "a254dad4f3f96b62b84dc40c84636a5ec12020ec8c2c",
        },
    ];

    #[test]
    fn aes_256_gcm_siv_matches_rfc8452_vectors() {
        for (i, v) in RFC8452.iter().enumerate() {
            let alg = Algorithm::Aes256GcmSiv;
            let sealed = alg.seal(&key32(v.key), &h(v.nonce), &h(v.aad), &h(v.pt)).unwrap();
            assert_eq!(hex::encode(&sealed), v.ct, "vector {i} seal");
            let opened = alg.open(&key32(v.key), &h(v.nonce), &h(v.aad), &h(v.ct)).unwrap();
            assert_eq!(opened, h(v.pt), "vector {i} open");
        }
    }

    #[test]
    fn xchacha20_poly1305_matches_draft_vector() {
        let key = key32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let nonce = h("404142434445464748494a4b4c4d4e4f5051525354555657");
        let aad = h("50515253c0c1c2c3c4c5c6c7");
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ct = h("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
                    731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
                    2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
                    21f9664c97637da9768812f615c68b13b52e
                    c0875924c1c7987947deafd8780acf49");
        let alg = Algorithm::XChaCha20Poly1305;
        assert_eq!(alg.seal(&key, &nonce, &aad, pt).unwrap(), ct);
        assert_eq!(alg.open(&key, &nonce, &aad, &ct).unwrap(), pt.to_vec());
    }

    #[test]
    fn open_rejects_wrong_aad_and_short_input() {
        for alg in [Algorithm::Aes256GcmSiv, Algorithm::XChaCha20Poly1305] {
            let key = [7u8; 32];
            let nonce = alg.random_nonce();
            let sealed = alg.seal(&key, &nonce, b"a", b"hello").unwrap();
            assert_eq!(alg.open(&key, &nonce, b"b", &sealed), Err(CryptoError::AuthenticationFailed));
            assert_eq!(alg.open(&key, &nonce, b"a", &sealed[..10]), Err(CryptoError::AuthenticationFailed));
            assert_eq!(alg.open(&key, &nonce[..4], b"a", &sealed), Err(CryptoError::AuthenticationFailed));
        }
    }

    #[test]
    fn open_into_matches_open_and_leaves_no_plaintext_on_failure() {
        for alg in [Algorithm::Aes256GcmSiv, Algorithm::XChaCha20Poly1305] {
            let key = [9u8; 32];
            let nonce = alg.random_nonce();
            let sealed = alg.seal(&key, &nonce, b"aad", b"plaintext bytes").unwrap();
            let mut out = vec![0u8; sealed.len() - TAG_LEN];
            alg.open_into(&key, &nonce, b"aad", &sealed, &mut out).unwrap();
            assert_eq!(out, b"plaintext bytes");
            let mut out = vec![0u8; sealed.len() - TAG_LEN];
            assert!(alg.open_into(&key, &nonce, b"other", &sealed, &mut out).is_err());
            assert!(!out.windows(5).any(|w| w == b"plain"), "{out:?}");
        }
    }

    #[test]
    fn reused_key_schedule_is_replaced_when_the_key_changes() {
        let alg = Algorithm::Aes256GcmSiv;
        let nonce = alg.random_nonce();
        let a = alg.seal(&[1u8; 32], &nonce, b"", b"x").unwrap();
        let b = alg.seal(&[2u8; 32], &nonce, b"", b"x").unwrap();
        assert_ne!(a, b);
        assert!(alg.open(&[1u8; 32], &nonce, b"", &b).is_err());
        assert_eq!(alg.open(&[2u8; 32], &nonce, b"", &b).unwrap(), b"x");
    }

    #[test]
    fn cached_schedule_is_on_protected_pages_and_forgetting_it_unmaps_them() {
        let alg = Algorithm::Aes256GcmSiv;
        let nonce = alg.random_nonce();
        let sealed = alg.seal(&[4u8; 32], &nonce, b"", b"x").unwrap();
        let addr = cached_schedule_addr().expect("schedule cached after a seal");
        let page = crate::secure::tests::page_size_for_tests();
        assert_eq!(addr % page, 0);
        let flags = crate::secure::tests::vm_flags(addr).expect("mapping in smaps");
        assert!(flags.iter().any(|f| f == "dd"), "{flags:?}");
        forget_cached_schedule();
        assert_eq!(cached_schedule_addr(), None);
        // The next use rebuilds it.
        assert_eq!(alg.open(&[4u8; 32], &nonce, b"", &sealed).unwrap(), b"x");
        assert!(cached_schedule_addr().is_some());
    }

    #[test]
    fn algorithm_ids_and_names_round_trip() {
        for alg in [Algorithm::Aes256GcmSiv, Algorithm::XChaCha20Poly1305] {
            assert_eq!(Algorithm::from_id(alg.id()).unwrap(), alg);
            assert_eq!(Algorithm::from_name(alg.name()).unwrap(), alg);
        }
        assert_eq!(Algorithm::from_id(0), Err(CryptoError::UnknownAlgorithm(0)));
        assert_eq!(Algorithm::from_id(3), Err(CryptoError::UnknownAlgorithm(3)));
    }
}
