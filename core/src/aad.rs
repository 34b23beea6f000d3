//! Associated data: what binds a ciphertext to where it belongs.
//!
//! Every field is length-prefixed and every purpose has its own label, so no
//! two different (purpose, group, version, context) tuples can ever produce
//! the same bytes, and a ciphertext made for one place fails everywhere else.

/// Identity of a key group as stored (its UUID's 16 bytes): stable across
/// dumps, restores and replication, unlike an OID, and never reused by a
/// group dropped and created again under the same name.
pub type GroupId = [u8; 16];

const DATA_LABEL: &[u8] = b"secret_vault/data/v1";
const SECRET_LABEL: &[u8] = b"secret_vault/secret-value/v2";
const CREDENTIAL_LABEL: &[u8] = b"secret_vault/minted-credential/v1";
const RING_KEY_LABEL: &[u8] = b"secret_vault/ring-key/v1";
const RING_KEY_V2_LABEL: &[u8] = b"secret_vault/ring-key/v2";

/// How 0.1.0 bound a secret value: as the *context* of the data domain,
/// which `vault.decrypt` also reaches. Kept only to open values written then;
/// a caller context starting with it is refused (see `format`).
pub const LEGACY_SECRET_CONTEXT_LABEL: &[u8] = b"secret_vault/secret/v1";

/// The 0.1.0 context of version `version` of secret `id` (legacy values only).
pub fn legacy_secret_context(id: &[u8; 16], version: u32) -> Vec<u8> {
    let mut c = Vec::with_capacity(LEGACY_SECRET_CONTEXT_LABEL.len() + 20);
    c.extend_from_slice(LEGACY_SECRET_CONTEXT_LABEL);
    c.extend_from_slice(id);
    c.extend_from_slice(&version.to_be_bytes());
    c
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

/// AAD for data sealed under a ring key: the ciphertext header (format,
/// algorithm, version), the group, and the caller's context.
pub fn data(header: &[u8], group: &GroupId, context: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_LABEL.len() + header.len() + context.len() + 64);
    push_field(&mut out, DATA_LABEL);
    push_field(&mut out, header);
    push_field(&mut out, group);
    push_field(&mut out, context);
    out
}

/// `data(...)` built on the stack when it fits (the common case: short
/// contexts), so the hot path does not allocate.
pub fn with_data<R>(header: &[u8], group: &GroupId, context: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    const STACK: usize = 256;
    let len = 4 * 8 + DATA_LABEL.len() + header.len() + group.len() + context.len();
    if len > STACK {
        return f(&data(header, group, context));
    }
    let mut buf = [0u8; STACK];
    let mut at = 0;
    for field in [DATA_LABEL, header, &group[..], context] {
        buf[at..at + 8].copy_from_slice(&(field.len() as u64).to_be_bytes());
        buf[at + 8..at + 8 + field.len()].copy_from_slice(field);
        at += 8 + field.len();
    }
    f(&buf[..at])
}

/// AAD for a secret's value: its own domain (label), the ciphertext header,
/// the sealing group, the secret's id and the value's version. No call of
/// `vault.encrypt`/`vault.decrypt` can produce these bytes.
pub fn secret_value(header: &[u8], group: &GroupId, secret: &[u8; 16], version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(SECRET_LABEL.len() + header.len() + 80);
    push_field(&mut out, SECRET_LABEL);
    push_field(&mut out, header);
    push_field(&mut out, group);
    push_field(&mut out, secret);
    push_field(&mut out, &version.to_be_bytes());
    out
}

/// AAD for a minted credential's sealed token: its own domain, the header,
/// the sealing group, the credential's id and name and the mint's
/// generation, so a token copied to another credential, a row renamed, or
/// an older mint put back, does not open.
pub fn credential_value(header: &[u8], group: &GroupId, credential: &[u8; 16], name: &str, generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CREDENTIAL_LABEL.len() + header.len() + name.len() + 96);
    push_field(&mut out, CREDENTIAL_LABEL);
    push_field(&mut out, header);
    push_field(&mut out, group);
    push_field(&mut out, credential);
    push_field(&mut out, name.as_bytes());
    push_field(&mut out, &generation.to_be_bytes());
    out
}

/// How a stored ring key is bound to its row (`vault.ring_keys.binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKeyBinding {
    /// 0.1.0: group and version only.
    V1,
    /// Group, version, purpose and key size: a row whose purpose or size was
    /// edited no longer unwraps, so an encrypt-only key never becomes exportable.
    V2,
}

impl RingKeyBinding {
    pub fn from_column(v: i16) -> Option<Self> {
        match v {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }
    pub fn column(self) -> i16 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }
}

/// AAD for a wrapped ring key under `binding`; `purpose` and `key_bytes`
/// count only for V2.
pub fn ring_key_bound(binding: RingKeyBinding, group: &GroupId, version: u32, purpose: &str, key_bytes: u32) -> Vec<u8> {
    match binding {
        RingKeyBinding::V1 => ring_key(group, version),
        RingKeyBinding::V2 => {
            let mut out = Vec::with_capacity(RING_KEY_V2_LABEL.len() + 80);
            push_field(&mut out, RING_KEY_V2_LABEL);
            push_field(&mut out, group);
            push_field(&mut out, &version.to_be_bytes());
            push_field(&mut out, purpose.as_bytes());
            push_field(&mut out, &key_bytes.to_be_bytes());
            out
        }
    }
}

/// AAD for a ring key wrapped by 0.1.0: the group and the version it is
/// stored as, so a wrapped key copied to another row fails to unwrap.
pub fn ring_key(group: &GroupId, version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(RING_KEY_LABEL.len() + 48);
    push_field(&mut out, RING_KEY_LABEL);
    push_field(&mut out, group);
    push_field(&mut out, &version.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_be_shifted_between_header_group_and_context() {
        let g1 = [1u8; 16];
        let a = data(b"ab", &g1, b"c");
        let b = data(b"a", &g1, b"bc");
        assert_ne!(a, b);
    }

    #[test]
    fn stack_and_heap_encodings_agree() {
        let g = [7u8; 16];
        for ctx_len in [0usize, 10, 150, 300] {
            let ctx = vec![0xEE; ctx_len];
            with_data(b"hdr", &g, &ctx, |a| assert_eq!(a, data(b"hdr", &g, &ctx).as_slice()));
        }
    }

    #[test]
    fn v2_ring_key_aad_binds_purpose_and_size_and_differs_from_v1() {
        let g = [3u8; 16];
        let v2 = |p: &str, n: u32| ring_key_bound(RingKeyBinding::V2, &g, 1, p, n);
        assert_ne!(v2("encrypt", 32), v2("export", 32));
        assert_ne!(v2("export", 32), v2("export", 64));
        assert_ne!(v2("export", 32), ring_key_bound(RingKeyBinding::V1, &g, 1, "export", 32));
        assert_eq!(ring_key_bound(RingKeyBinding::V1, &g, 1, "x", 1), ring_key(&g, 1));
    }

    #[test]
    fn secret_values_have_a_domain_no_data_context_reaches() {
        let g = [4u8; 16];
        let id = [5u8; 16];
        let s = secret_value(b"hdr", &g, &id, 1);
        assert_ne!(s, data(b"hdr", &g, &legacy_secret_context(&id, 1)));
        assert_ne!(secret_value(b"hdr", &g, &id, 1), secret_value(b"hdr", &g, &id, 2));
        assert_ne!(secret_value(b"hdr", &g, &id, 1), secret_value(b"hdr", &g, &[6u8; 16], 1));
    }

    #[test]
    fn ring_key_aad_differs_per_group_and_version() {
        let g1 = [1u8; 16];
        let g2 = [2u8; 16];
        assert_ne!(ring_key(&g1, 1), ring_key(&g1, 2));
        assert_ne!(ring_key(&g1, 1), ring_key(&g2, 1));
        assert_ne!(ring_key(&g1, 1), data(&[], &g1, &1u32.to_be_bytes()));
    }
}
