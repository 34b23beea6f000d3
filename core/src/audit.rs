//! The audit log's hash chain. Each record carries a MAC over its own
//! fields and the previous record's MAC, under a key only the vault holds
//! (derived from a KMS-wrapped ring key), so editing, deleting or
//! reordering a record breaks the chain from there on, and nobody without
//! the key can forge a consistent replacement.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

pub const MAC_LEN: usize = 32;

/// The chain key: derived from a ring key, never the ring key itself, so
/// the key is used for one purpose only.
pub fn chain_key(ring_key: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(ring_key).expect("HMAC takes keys of any length");
    m.update(b"secret_vault audit chain v1");
    Zeroizing::new(m.finalize().into_bytes().into())
}

/// One record as it is stored (`vault.audit_log`), without its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: i64,
    /// µs since 2000-01-01 UTC (PostgreSQL's epoch).
    pub at: i64,
    pub database: String,
    pub role: String,
    pub session_role: String,
    /// The client's address as 16 bytes (IPv4 mapped), None for local.
    pub client_addr: Option<[u8; 16]>,
    pub application_name: String,
    pub action: String,
    pub object: Option<String>,
    pub outcome: String,
    pub sqlstate: Option<String>,
}

fn field(m: &mut HmacSha256, v: Option<&[u8]>) {
    // Length-prefixed, with absent distinct from empty: no two different
    // records encode alike.
    match v {
        None => m.update(&[0]),
        Some(b) => {
            m.update(&[1]);
            m.update(&(b.len() as u64).to_be_bytes());
            m.update(b);
        }
    }
}

/// The MAC of `r` following a record whose MAC is `prev`.
pub fn mac(key: &[u8; 32], prev: &[u8], r: &Record) -> [u8; MAC_LEN] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(b"secret_vault audit record v1");
    field(&mut m, Some(prev));
    m.update(&r.id.to_be_bytes());
    m.update(&r.at.to_be_bytes());
    field(&mut m, Some(r.database.as_bytes()));
    field(&mut m, Some(r.role.as_bytes()));
    field(&mut m, Some(r.session_role.as_bytes()));
    field(&mut m, r.client_addr.as_ref().map(|a| a.as_slice()));
    field(&mut m, Some(r.application_name.as_bytes()));
    field(&mut m, Some(r.action.as_bytes()));
    field(&mut m, r.object.as_deref().map(str::as_bytes));
    field(&mut m, Some(r.outcome.as_bytes()));
    field(&mut m, r.sqlstate.as_deref().map(str::as_bytes));
    m.finalize().into_bytes().into()
}

/// The MAC over the chain's two ends (the id and MAC before the first record
/// kept, the last record's id and MAC), so that moving either end (deleting
/// records and editing the head to match) needs the key too.
pub fn head_mac(key: &[u8; 32], first_id: i64, anchor: &[u8], last_id: i64, last_mac: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(b"secret_vault audit head v1");
    m.update(&first_id.to_be_bytes());
    field(&mut m, Some(anchor));
    m.update(&last_id.to_be_bytes());
    field(&mut m, Some(last_mac));
    m.finalize().into_bytes().into()
}

/// Whether a stored head MAC is the one for these ends (constant time).
pub fn head_ok(key: &[u8; 32], first_id: i64, anchor: &[u8], last_id: i64, last_mac: &[u8], stored: &[u8]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(head_mac(key, first_id, anchor, last_id, last_mac).as_slice(), stored))
}

/// Checks stored records in id order against the chain.
pub struct Verifier<'k> {
    key: &'k [u8; 32],
    prev: Vec<u8>,
    next_id: i64,
}

impl<'k> Verifier<'k> {
    /// `anchor` is the MAC before the first record kept (all zeros for a
    /// log never pruned) and `first_id` that record's id.
    pub fn new(key: &'k [u8; 32], anchor: &[u8], first_id: i64) -> Self {
        Verifier { key, prev: anchor.to_vec(), next_id: first_id }
    }

    /// Whether `r` (stored with `stored_mac`) continues the chain: the id
    /// that must come next, and the MAC over it and its predecessor. The
    /// first record that fails is the one edited, the one after a deleted
    /// record, or the first out of order.
    pub fn check(&mut self, r: &Record, stored_mac: &[u8]) -> bool {
        if r.id != self.next_id {
            return false;
        }
        let expected = mac(self.key, &self.prev, r);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_slice(), stored_mac)) {
            return false;
        }
        self.prev = expected.to_vec();
        self.next_id = r.id + 1;
        true
    }

    /// The id the next record must have.
    pub fn next_id(&self) -> i64 {
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64, action: &str) -> Record {
        Record {
            id,
            at: 1_000 + id,
            database: "postgres".into(),
            role: "app".into(),
            session_role: "app".into(),
            client_addr: Some([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]),
            application_name: "psql".into(),
            action: action.into(),
            object: Some("stripe/key".into()),
            outcome: "ok".into(),
            sqlstate: None,
        }
    }

    fn chain(n: i64) -> (Zeroizing<[u8; 32]>, Vec<(Record, [u8; 32])>) {
        let key = chain_key(&[7; 32]);
        let mut prev = [0u8; 32];
        let mut out = Vec::new();
        for id in 1..=n {
            let r = rec(id, "read_secret");
            let m = mac(&key, &prev, &r);
            prev = m;
            out.push((r, m));
        }
        (key, out)
    }

    fn first_bad(key: &[u8; 32], rows: &[(Record, [u8; 32])]) -> Option<i64> {
        let mut v = Verifier::new(key, &[0; 32], 1);
        rows.iter().find(|(r, m)| !v.check(r, m)).map(|(r, _)| r.id)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (key, rows) = chain(5);
        assert_eq!(first_bad(&key, &rows), None);
    }

    #[test]
    fn an_edited_record_is_found() {
        let (key, mut rows) = chain(5);
        rows[2].0.outcome = "denied".into();
        assert_eq!(first_bad(&key, &rows), Some(3));
    }

    #[test]
    fn the_record_after_a_deleted_one_is_found() {
        let (key, mut rows) = chain(5);
        rows.remove(1);
        assert_eq!(first_bad(&key, &rows), Some(3));
    }

    #[test]
    fn reordered_records_are_found() {
        let (key, mut rows) = chain(5);
        // Swap the contents of 2 and 4 but keep the ids in order, as an
        // UPDATE would.
        let (a, b) = (rows[1].clone(), rows[3].clone());
        rows[1] = (Record { id: 2, ..b.0 }, b.1);
        rows[3] = (Record { id: 4, ..a.0 }, a.1);
        assert_eq!(first_bad(&key, &rows), Some(2));
    }

    #[test]
    fn another_key_fails_at_once() {
        let (_, rows) = chain(2);
        let other = chain_key(&[8; 32]);
        assert_eq!(first_bad(&other, &rows), Some(1));
    }

    #[test]
    fn moving_an_end_of_the_chain_breaks_the_head_mac() {
        let key = chain_key(&[3; 32]);
        let h = head_mac(&key, 1, &[0; 32], 10, &[9; 32]);
        assert!(head_ok(&key, 1, &[0; 32], 10, &[9; 32], &h));
        assert!(!head_ok(&key, 1, &[0; 32], 9, &[8; 32], &h), "tail cut");
        assert!(!head_ok(&key, 4, &[7; 32], 10, &[9; 32], &h), "start moved");
    }

    #[test]
    fn absent_and_empty_fields_differ() {
        let key = chain_key(&[1; 32]);
        let mut a = rec(1, "x");
        a.object = None;
        let mut b = rec(1, "x");
        b.object = Some(String::new());
        assert_ne!(mac(&key, &[0; 32], &a), mac(&key, &[0; 32], &b));
    }
}
