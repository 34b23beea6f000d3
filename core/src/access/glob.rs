//! Name patterns of access rules. Names are paths of `/`-separated
//! segments; in a pattern `*` matches any run of characters within one
//! segment and a segment that is exactly `**` matches one or more whole
//! segments. Every other character matches itself (there is no escape, no
//! `?` and no class: a name that needs one is matched by a wider pattern or
//! spelled out).

use crate::policy::MAX_NAME_LEN;
use crate::PolicyError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: one or more whole segments.
    Any,
    /// A segment with `*` wildcards: its literal parts, split at each `*`.
    Glob(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

/// More `**` than this makes matching cost grow with every one; no real
/// naming scheme needs them.
const MAX_ANY: usize = 4;

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PolicyError> {
        if text.is_empty() {
            return Err(PolicyError::Invalid("pattern must not be empty".into()));
        }
        if text.len() > MAX_NAME_LEN {
            return Err(PolicyError::Invalid(format!("pattern is {} bytes long; the limit is {MAX_NAME_LEN}", text.len())));
        }
        if text.chars().any(char::is_control) {
            return Err(PolicyError::Invalid("pattern must not contain control characters".into()));
        }
        let mut segments = Vec::new();
        for seg in text.split('/') {
            if seg == "**" {
                // `a/**/**/b` is `a/**/b` with a second, useless, cost.
                if segments.last() != Some(&Segment::Any) {
                    segments.push(Segment::Any);
                }
            } else if seg.contains("**") {
                return Err(PolicyError::Invalid(
                    "'**' must be a whole path segment (as in 'stripe/**'); use '*' within a segment".into(),
                ));
            } else {
                segments.push(Segment::Glob(seg.split('*').map(str::to_string).collect()));
            }
        }
        if segments.iter().filter(|s| **s == Segment::Any).count() > MAX_ANY {
            return Err(PolicyError::Invalid(format!("a pattern may hold at most {MAX_ANY} '**' segments")));
        }
        Ok(Pattern { text: text.to_string(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, name: &str) -> bool {
        let names: Vec<&str> = name.split('/').collect();
        // reach[j]: the pattern's segments so far can consume exactly the
        // first j name segments.
        let mut reach = vec![false; names.len() + 1];
        reach[0] = true;
        for seg in &self.segments {
            let mut next = vec![false; names.len() + 1];
            match seg {
                Segment::Any => {
                    let mut open = false;
                    for j in 0..names.len() {
                        open |= reach[j];
                        next[j + 1] = open;
                    }
                }
                Segment::Glob(parts) => {
                    for j in 0..names.len() {
                        if reach[j] && glob_segment(parts, names[j]) {
                            next[j + 1] = true;
                        }
                    }
                }
            }
            if !next.iter().any(|r| *r) {
                return false;
            }
            reach = next;
        }
        reach[names.len()]
    }
}

/// Whether one name segment matches the literal parts of a segment pattern
/// (the parts were separated by `*`): the first is a prefix, the last a
/// suffix, the rest appear in order between. Greedy leftmost matching is
/// exact for `*`-only patterns.
fn glob_segment(parts: &[String], s: &str) -> bool {
    if parts.len() == 1 {
        return parts[0] == s;
    }
    let (first, last) = (&parts[0], &parts[parts.len() - 1]);
    if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) || !s.ends_with(last.as_str()) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid.as_str()) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::parse(p).unwrap().matches(n)
    }

    #[test]
    fn star_stays_within_one_segment() {
        assert!(m("stripe/*", "stripe/key"));
        assert!(m("stripe/*", "stripe/"));
        assert!(!m("stripe/*", "stripe/live/key"));
        assert!(!m("stripe/*", "stripe"));
        assert!(!m("stripe/*", "github/key"));
        assert!(!m("stripe/*", "stripe-old/key"));
        assert!(m("*/key", "github/key"));
        assert!(m("stripe/*-key", "stripe/api-key"));
        assert!(!m("stripe/*-key", "stripe/api-key2"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "a-c-b"));
        assert!(m("*", "anything"));
        assert!(!m("*", "two/segments"));
    }

    #[test]
    fn double_star_spans_one_or_more_segments() {
        assert!(m("**", "a"));
        assert!(m("**", "a/b/c"));
        assert!(m("stripe/**", "stripe/key"));
        assert!(m("stripe/**", "stripe/live/key"));
        assert!(!m("stripe/**", "stripe"));
        assert!(!m("stripe/**", "stripes/key"));
        assert!(m("a/**/z", "a/b/z"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(!m("a/**/z", "a/z"));
        assert!(m("**/key", "x/y/key"));
        assert!(!m("**/key", "key"));
        assert!(m("a/**/b/**", "a/x/b/y/z"));
    }

    #[test]
    fn literal_names_match_only_themselves() {
        assert!(m("stripe/key", "stripe/key"));
        assert!(!m("stripe/key", "stripe/key2"));
        assert!(!m("stripe/key", "Stripe/key"));
        assert!(m("a?b", "a?b"));
        assert!(!m("a?b", "axb"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a**").is_err());
        assert!(Pattern::parse("a/b**/c").is_err());
        assert!(Pattern::parse("a\nb").is_err());
        assert!(Pattern::parse(&"x".repeat(256)).is_err());
        assert!(Pattern::parse("**/a/**/b/**/c/**/d/**").is_err());
        assert!(Pattern::parse("**/**/**/**/**/**").is_ok(), "repeated ** collapse into one");
    }

    #[test]
    fn many_segments_match_in_bounded_time() {
        let name = vec!["x"; 200].join("/");
        let p = Pattern::parse("**/x/**/x/**/y").unwrap();
        let t = std::time::Instant::now();
        assert!(!p.matches(&name));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
