//! Key buffers that never leak their bytes through `Debug` and are wiped on drop.

use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Raw key material. Fixed-size once built, so no reallocation leaves an
/// unzeroed copy behind; `Debug` prints only the length.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyBytes(Box<[u8]>);

impl KeyBytes {
    /// `len` bytes from the operating system's CSPRNG.
    pub fn random(len: usize) -> Self {
        let mut buf = vec![0u8; len].into_boxed_slice();
        OsRng.fill_bytes(&mut buf);
        KeyBytes(buf)
    }

    /// Copies `bytes`; the caller remains responsible for wiping its own copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        KeyBytes(bytes.to_vec().into_boxed_slice())
    }

    /// Takes ownership of a buffer, without copying it when it has no
    /// spare capacity. With spare capacity `into_boxed_slice` would shrink
    /// it by reallocating, which may move the bytes and free the old block
    /// unwiped; such a buffer is copied instead and wiped, capacity and all.
    pub fn from_vec(mut bytes: Vec<u8>) -> Self {
        if bytes.capacity() == bytes.len() {
            return KeyBytes(bytes.into_boxed_slice());
        }
        let k = Self::from_slice(&bytes);
        bytes.zeroize();
        k
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key as the 32-byte array the AEADs want, or a typed error.
    pub fn as_aead_key(&self) -> Result<&[u8; 32], crate::CryptoError> {
        self.0.as_ref().try_into().map_err(|_| crate::CryptoError::KeyLength {
            expected: 32,
            actual: self.0.len(),
        })
    }
}

/// A random RFC 4122 version-4 UUID's 16 bytes, from the OS CSPRNG.
pub fn random_uuid_v4() -> [u8; 16] {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl PartialEq for KeyBytes {
    /// Constant time, so comparing keys never becomes a timing oracle.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == other.0.len() && bool::from(self.0.ct_eq(&other.0))
    }
}
impl Eq for KeyBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_key_bytes() {
        let k = KeyBytes::from_slice(&[0xAB; 32]);
        let s = format!("{k:?}");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
        assert!(s.contains("32 bytes"));
    }

    #[test]
    fn random_keys_differ_and_have_requested_length() {
        let a = KeyBytes::random(32);
        let b = KeyBytes::random(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn from_vec_keeps_the_bytes_whatever_the_spare_capacity() {
        let exact = vec![7u8; 32];
        assert_eq!(KeyBytes::from_vec(exact).as_bytes(), &[7u8; 32]);
        let mut spare = Vec::with_capacity(48);
        spare.extend_from_slice(&[8u8; 32]);
        assert_eq!(KeyBytes::from_vec(spare).as_bytes(), &[8u8; 32]);
    }

    #[test]
    fn aead_key_requires_exactly_32_bytes() {
        assert!(KeyBytes::random(32).as_aead_key().is_ok());
        assert!(matches!(
            KeyBytes::random(31).as_aead_key(),
            Err(crate::CryptoError::KeyLength { expected: 32, actual: 31 })
        ));
    }
}
