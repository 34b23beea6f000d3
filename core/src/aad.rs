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
const RING_KEY_LABEL: &[u8] = b"secret_vault/ring-key/v1";

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

/// AAD for a ring key wrapped by the KMS: the group and the version it is
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
    fn ring_key_aad_differs_per_group_and_version() {
        let g1 = [1u8; 16];
        let g2 = [2u8; 16];
        assert_ne!(ring_key(&g1, 1), ring_key(&g1, 2));
        assert_ne!(ring_key(&g1, 1), ring_key(&g2, 1));
        assert_ne!(ring_key(&g1, 1), data(&[], &g1, &1u32.to_be_bytes()));
    }
}
