//! Key-ring policy: what settings a group may have, and which version is
//! current at a given time. Times are PostgreSQL timestamps (microseconds
//! since 2000-01-01), durations microseconds, so the glue passes them through.

use crate::PolicyError;

pub const MAX_NAME_LEN: usize = 255;
pub const MIN_EXPORT_KEY_BYTES: i32 = 16;
pub const MAX_EXPORT_KEY_BYTES: i32 = 512;
pub const AEAD_KEY_BYTES: i32 = 32;
pub const MAX_RING_SIZE: i32 = 1024;

const USECS_PER_DAY: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Key bytes are handed to callers (`current`, `resolve`).
    Export,
    /// Key bytes never leave the server (`encrypt`, `decrypt`, secrets).
    Encrypt,
}

impl Purpose {
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s {
            "export" => Ok(Purpose::Export),
            "encrypt" => Ok(Purpose::Encrypt),
            _ => Err(PolicyError::Invalid(
                "purpose must be 'export' or 'encrypt'".to_string(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Export => "export",
            Purpose::Encrypt => "encrypt",
        }
    }
}

/// A PostgreSQL interval's three fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl Span {
    /// Length with months taken as 30 days, as PostgreSQL's interval
    /// comparison does; only used for sign and bound checks.
    pub fn approx_micros(&self) -> i128 {
        self.micros as i128
            + self.days as i128 * USECS_PER_DAY as i128
            + self.months as i128 * 30 * USECS_PER_DAY as i128
    }
}

/// The longest interval a schedule may use. Beyond it a schedule means
/// "never" and should be NULL (manual) instead; and every due time stays
/// far inside PostgreSQL's timestamp range, whatever the start.
pub const MAX_INTERVAL: Span = Span { months: 100 * 12, days: 0, micros: 0 };
pub const MAX_INTERVAL_TEXT: &str = "100 years";

/// Checks one schedule interval: no negative part (a month minus 40 days is
/// positive in some months and negative in others), at most
/// [`MAX_INTERVAL`], and, when `positive` (a rotation schedule), at least
/// one second: shorter would mint a key and call the KMS every round.
pub fn validate_interval(what: &str, s: Span, positive: bool) -> Result<(), PolicyError> {
    if s.months < 0 || s.days < 0 || s.micros < 0 {
        return Err(PolicyError::Invalid(format!("{what} must not be negative or have negative parts")));
    }
    if positive && s.approx_micros() < 1_000_000 {
        return Err(PolicyError::Invalid(format!("{what} must be at least 1 second")));
    }
    // One measure for all three fields, in 1/1200 days: a month is a
    // twelfth of an average Gregorian year (36525 days per century).
    let scaled = s.months as i128 * 36525 + s.days as i128 * 1200 + s.micros as i128 * 1200 / USECS_PER_DAY as i128;
    if scaled > 36525 * 1200 {
        return Err(PolicyError::Invalid(format!("{what} must be at most {MAX_INTERVAL_TEXT}")));
    }
    Ok(())
}

/// Validates a name for a key group or secret: non-empty, bounded, no control
/// characters. Names are shown in errors, so they must print safely.
pub fn validate_name(kind: &str, name: &str) -> Result<(), PolicyError> {
    if name.is_empty() {
        return Err(PolicyError::Invalid(format!("{kind} name must not be empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(PolicyError::Invalid(format!(
            "{kind} name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(PolicyError::Invalid(format!(
            "{kind} name must not contain control characters"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    pub purpose: Purpose,
    pub rotation_interval: Option<Span>,
    pub propagation_delay: Span,
    pub ring_size: i32,
    pub key_bytes: i32,
}

impl GroupSettings {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |m: String| Err(PolicyError::Invalid(m));
        if let Some(iv) = self.rotation_interval {
            validate_interval("rotation_interval (NULL for manual rotation only)", iv, true)?;
        }
        validate_interval("propagation_delay", self.propagation_delay, false)?;
        if !(1..=MAX_RING_SIZE).contains(&self.ring_size) {
            return bad(format!("ring_size must be between 1 and {MAX_RING_SIZE}"));
        }
        match self.purpose {
            Purpose::Encrypt if self.key_bytes != AEAD_KEY_BYTES => bad(format!(
                "key_bytes must be {AEAD_KEY_BYTES} for 'encrypt' groups (AES-256 / XChaCha20 keys)"
            )),
            Purpose::Export
                if !(MIN_EXPORT_KEY_BYTES..=MAX_EXPORT_KEY_BYTES).contains(&self.key_bytes) =>
            {
                bad(format!(
                    "key_bytes must be between {MIN_EXPORT_KEY_BYTES} and {MAX_EXPORT_KEY_BYTES}"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The facts about one stored version that decide its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionFacts {
    pub version: u32,
    pub activates_at: i64,
    pub retired: bool,
}

/// The current version at `now`: the newest version already active and not
/// retired. Pending versions (activation in the future) are skipped, so a
/// rotation takes effect by time alone.
pub fn current_version(versions: &[VersionFacts], now: i64) -> Option<u32> {
    versions
        .iter()
        .filter(|v| !v.retired && v.activates_at <= now)
        .map(|v| v.version)
        .max()
}

/// Whether versions below `below` may be retired: never the current one (it
/// would leave `current` with nothing to return), and never a pending one.
pub fn check_retire(below: i32, current: Option<u32>) -> Result<(), PolicyError> {
    if below < 1 {
        return Err(PolicyError::Invalid("below_version must be at least 1".into()));
    }
    match current {
        Some(c) if (below as i64) <= c as i64 => Ok(()),
        Some(c) => Err(PolicyError::Invalid(format!(
            "cannot retire the current version {c} or newer; below_version must be at most {c}"
        ))),
        None => Err(PolicyError::Invalid("the group has no current version to keep".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(micros: i64) -> Span {
        Span { months: 0, days: 0, micros }
    }

    fn settings(purpose: Purpose, key_bytes: i32) -> GroupSettings {
        GroupSettings {
            purpose,
            rotation_interval: None,
            propagation_delay: span(30_000_000),
            ring_size: 16,
            key_bytes,
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("key group", "stripe/api-key").is_ok());
        assert!(validate_name("key group", "").is_err());
        assert!(validate_name("key group", "a\nb").is_err());
        assert!(validate_name("key group", "a\u{7f}b").is_err());
        assert!(validate_name("key group", &"x".repeat(256)).is_err());
        assert!(validate_name("key group", &"x".repeat(255)).is_ok());
    }

    #[test]
    fn encrypt_groups_need_32_byte_keys_export_groups_a_bounded_size() {
        assert!(settings(Purpose::Encrypt, 32).validate().is_ok());
        assert!(settings(Purpose::Encrypt, 64).validate().is_err());
        assert!(settings(Purpose::Export, 64).validate().is_ok());
        assert!(settings(Purpose::Export, 8).validate().is_err());
        assert!(settings(Purpose::Export, 513).validate().is_err());
    }

    #[test]
    fn intervals_and_ring_size_are_bounded() {
        let mut s = settings(Purpose::Export, 32);
        s.rotation_interval = Some(span(0));
        assert!(s.validate().is_err());
        s.rotation_interval = Some(Span { months: 1, days: 0, micros: 0 });
        assert!(s.validate().is_ok());
        s.propagation_delay = span(-1);
        assert!(s.validate().is_err());
        s.propagation_delay = span(0);
        s.ring_size = 0;
        assert!(s.validate().is_err());
        assert!(Purpose::parse("sign").is_err());
    }

    #[test]
    fn pending_versions_become_current_by_time_alone() {
        let vs = [
            VersionFacts { version: 1, activates_at: 0, retired: false },
            VersionFacts { version: 2, activates_at: 100, retired: false },
        ];
        assert_eq!(current_version(&vs, 99), Some(1));
        assert_eq!(current_version(&vs, 100), Some(2));
    }

    #[test]
    fn retired_versions_are_never_current() {
        let vs = [
            VersionFacts { version: 1, activates_at: 0, retired: true },
            VersionFacts { version: 2, activates_at: 0, retired: false },
        ];
        assert_eq!(current_version(&vs, 10), Some(2));
    }

    #[test]
    fn retire_keeps_the_current_version() {
        assert!(check_retire(3, Some(3)).is_ok());
        assert!(check_retire(4, Some(3)).is_err());
        assert!(check_retire(0, Some(3)).is_err());
        assert!(check_retire(1, None).is_err());
    }

    #[test]
    fn intervals_refuse_negative_parts_zero_and_more_than_a_century() {
        let iv = |months, days, micros| Span { months, days, micros };
        assert!(validate_interval("x", iv(0, 0, 1_000_000), true).is_ok());
        assert!(validate_interval("x", iv(0, 0, 1), false).is_ok());
        assert!(validate_interval("x", iv(1200, 0, 0), true).is_ok());
        assert!(validate_interval("x", iv(0, 36525, 0), true).is_ok());
        assert!(validate_interval("x", iv(0, 0, 0), false).is_ok());
        for bad in [iv(0, 0, 0), iv(0, 0, 999_999), iv(1, -40, 0), iv(0, 0, -1), iv(-1, 0, 0), iv(1201, 0, 0), iv(0, 36526, 0),
                    iv(0, 0, 36526 * USECS_PER_DAY), iv(1200, 1, 0), iv(12_000_000, 0, 0), iv(0, 0, i64::MAX)] {
            let e = validate_interval("rotation_interval", bad, true).unwrap_err();
            assert!(e.to_string().starts_with("rotation_interval must"), "{bad:?}: {e}");
        }
    }
}
