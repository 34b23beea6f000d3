//! Minted credentials: short-lived upstream tokens made on demand (an EKS
//! token, a GitHub App installation token), as opposed to stored secrets.
//!
//! A provider turns a config and signing material into a token and its
//! expiry (`Minted`). The glue stores it sealed, serves the latest one to
//! callers without minting on their path, and has the worker mint again
//! before it expires (`next_refresh`). Nothing here touches PostgreSQL.

pub mod config;
pub mod eks;
pub mod github;
mod jwt;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::MintError;

pub use config::{Config, EksConfig, GithubConfig, Provider};

/// A token and the instant it stops working.
pub struct Minted {
    pub value: Zeroizing<String>,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted").field("value", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// Largest token accepted from an upstream (GitHub's are about 40 bytes,
/// an EKS token about 1.5 KiB with a session token).
pub const MAX_TOKEN_LEN: usize = 16 << 10;

/// The bytes sealed in the table: the expiry (seconds since the epoch,
/// big-endian) then the token. The expiry is inside the seal, so an
/// `expires_at` column edited by hand, a restore or replication cannot
/// make an old token be served again: the sealed one decides.
pub fn seal_payload(m: &Minted) -> Zeroizing<Vec<u8>> {
    let secs = m.expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let mut out = Zeroizing::new(Vec::with_capacity(8 + m.value.len()));
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(m.value.as_bytes());
    out
}

/// The inverse of `seal_payload`; `None` for bytes it did not make.
pub fn open_payload(mut bytes: Zeroizing<Vec<u8>>) -> Option<Minted> {
    if bytes.len() < 8 {
        return None;
    }
    let secs = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    let expires_at = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    bytes.drain(..8);
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(s) => Some(Minted { value: Zeroizing::new(s), expires_at }),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            None
        }
    }
}

/// When to mint again after a token minted at `minted_at` that expires at
/// `expires_at`: `refresh_before` ahead of the expiry, but never sooner
/// than a tenth of the token's life after the mint, so a `refresh_before`
/// longer than the life does not make the worker mint on every round.
pub fn next_refresh(minted_at: SystemTime, expires_at: SystemTime, refresh_before: Duration) -> SystemTime {
    let life = expires_at.duration_since(minted_at).unwrap_or_default();
    let wanted = expires_at.checked_sub(refresh_before).unwrap_or(minted_at);
    wanted.max(minted_at + life / 10)
}

/// How long to wait before the `failures`-th retry of a failed mint:
/// doubling from a second, at most a minute (a token's life is minutes, so
/// the worker must keep trying while the previous one is still served).
pub fn retry_delay(failures: u32) -> Duration {
    let base = Duration::from_secs(1);
    base.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(Duration::from_secs(60))
}

/// Cuts an upstream's error text to a short single line: it goes to a
/// table and the server log.
pub(crate) fn upstream_message(text: &str) -> String {
    let mut out: String = text.chars().take(200).collect::<String>().escape_debug().to_string();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Checks a token from an upstream before it is stored: the right size,
/// printable ASCII, and not yet expired.
pub(crate) fn check_token(upstream: &'static str, token: &str, expires_at: SystemTime, now: SystemTime) -> Result<(), MintError> {
    let bad = |m: &str| Err(MintError::BadAnswer { upstream, message: m.into() });
    if token.is_empty() {
        return bad("an empty token");
    }
    if token.len() > MAX_TOKEN_LEN {
        return bad("a token longer than 16 KiB");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("a token with characters other than printable ASCII");
    }
    if expires_at <= now {
        return bad("a token that has already expired");
    }
    // The tokens minted here live minutes to hours; an expiry days ahead is
    // a broken upstream, and would be served and never refreshed.
    if expires_at > now + Duration::from_secs(24 * 3600) {
        return bad("a token said to expire more than a day from now");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_payload_round_trips_and_keeps_the_expiry_inside_the_seal() {
        let m = Minted { value: Zeroizing::new("ghs_abc".into()), expires_at: at(1_800_000_000) };
        let back = open_payload(seal_payload(&m)).unwrap();
        assert_eq!((back.value.as_str(), back.expires_at), ("ghs_abc", at(1_800_000_000)));
        assert!(open_payload(Zeroizing::new(vec![0; 7])).is_none());
        assert!(open_payload(Zeroizing::new([&[0u8; 8][..], &[0xff]].concat())).is_none());
    }

    #[test]
    fn refresh_comes_refresh_before_ahead_of_expiry() {
        // A GitHub token: one hour, refreshed five minutes before.
        assert_eq!(next_refresh(at(0), at(3600), Duration::from_secs(300)), at(3300));
        // An EKS token: fifteen minutes.
        assert_eq!(next_refresh(at(0), at(900), Duration::from_secs(300)), at(600));
    }

    #[test]
    fn refresh_never_comes_sooner_than_a_tenth_of_the_life() {
        assert_eq!(next_refresh(at(100), at(1000), Duration::from_secs(5000)), at(190));
        // An upstream answering with an expiry in the past: no busy loop.
        assert_eq!(next_refresh(at(100), at(50), Duration::from_secs(5)), at(100));
    }

    #[test]
    fn retries_back_off_to_a_minute() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(40), Duration::from_secs(60));
    }

    #[test]
    fn tokens_are_checked_before_they_are_stored() {
        let now = at(1000);
        assert!(check_token("t", "abc", at(2000), now).is_ok());
        assert!(check_token("t", "", at(2000), now).is_err());
        assert!(check_token("t", "a b", at(2000), now).is_err());
        assert!(check_token("t", "a\nb", at(2000), now).is_err());
        assert!(check_token("t", "abc", at(1000), now).is_err());
        assert!(check_token("t", "abc", at(1000 + 2 * 86400), now).is_err());
        assert!(check_token("t", &"a".repeat(MAX_TOKEN_LEN + 1), at(2000), now).is_err());
    }

    #[test]
    fn upstream_messages_are_short_single_lines() {
        let m = upstream_message(&format!("bad\nline{}", "x".repeat(500)));
        assert!(!m.contains('\n') && m.chars().count() <= 220, "{m}");
    }
}
