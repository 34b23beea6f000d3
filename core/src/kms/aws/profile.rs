//! The shared AWS files, `~/.aws/credentials` and `~/.aws/config`: just
//! enough of their INI dialect to find one profile's properties.
//!
//! In the config file a profile is `[profile NAME]` (or `[default]`); in
//! the credentials file it is `[NAME]`. The credentials file wins where
//! both set a property, as in the SDKs. Indented lines continue a nested
//! property (`s3 =` and its sub-keys): none of ours, so they are skipped.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

/// Which of the two files a text came from (they name sections differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Config,
    Credentials,
}

/// One profile's properties. Values may be secrets: each is wiped on drop.
#[derive(Default)]
pub struct Profile {
    props: BTreeMap<String, Zeroizing<String>>,
}

impl Profile {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(|v| v.as_str()).filter(|v| !v.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.props.is_empty()
    }

    /// Later values win: call with the config file first, then the credentials file.
    pub fn merge(&mut self, other: Profile) {
        self.props.extend(other.props);
    }
}

impl std::fmt::Debug for Profile {
    /// Property names only: values can be secret keys or tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.props.keys()).finish()
    }
}

/// The properties of profile `name` in `text`; None when the file has no
/// such profile.
pub fn find(text: &str, kind: FileKind, name: &str) -> Option<Profile> {
    let mut found: Option<Profile> = None;
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            // Continuation of a nested property.
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                inside = false;
                continue;
            };
            inside = section_profile(rest[..end].trim(), kind) == Some(name);
            if inside && found.is_none() {
                found = Some(Profile::default());
            }
            continue;
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = strip_comment(value).trim();
        let profile = found.get_or_insert_with(Profile::default);
        profile.props.insert(key.trim().to_ascii_lowercase(), Zeroizing::new(value.to_string()));
    }
    found
}

/// The profile a section header names, if it names one.
fn section_profile(header: &str, kind: FileKind) -> Option<&str> {
    match kind {
        FileKind::Credentials => Some(header),
        FileKind::Config if header == "default" => Some(header),
        // `[profile x]`; other sections (sso-session, services) are not profiles.
        FileKind::Config => header.strip_prefix("profile").filter(|r| r.starts_with([' ', '\t'])).map(str::trim),
    }
}

/// A value's trailing comment starts at ` #` or ` ;` (whitespace first, so
/// that `#` or `;` inside a value survives).
fn strip_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for i in 1..bytes.len() {
        if (bytes[i] == b'#' || bytes[i] == b';') && bytes[i - 1].is_ascii_whitespace() {
            return &value[..i];
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# comment
[default]
region = eu-west-1

[profile irsa]
role_arn = arn:aws:iam::123456789012:role/vault
web_identity_token_file=/var/run/secrets/token ; a comment
s3 =
  max_concurrent_requests = 10
[sso-session corp]
role_arn = not-a-profile
[profile  irsa ]
role_session_name = pg
";

    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = se#cret/+;x=  # trailing comment

[other]
aws_access_key_id=AKIDOTHER
aws_secret_access_key=other
aws_session_token=token
";

    #[test]
    fn profiles_are_found_by_their_file_s_section_naming() {
        let d = find(CREDENTIALS, FileKind::Credentials, "default").unwrap();
        assert_eq!(d.get("aws_access_key_id"), Some("AKIDEFAULT"));
        assert_eq!(d.get("aws_secret_access_key"), Some("se#cret/+;x="));
        let o = find(CREDENTIALS, FileKind::Credentials, "other").unwrap();
        assert_eq!(o.get("aws_session_token"), Some("token"));
        assert!(find(CREDENTIALS, FileKind::Credentials, "missing").is_none());

        let irsa = find(CONFIG, FileKind::Config, "irsa").unwrap();
        assert_eq!(irsa.get("role_arn"), Some("arn:aws:iam::123456789012:role/vault"));
        assert_eq!(irsa.get("web_identity_token_file"), Some("/var/run/secrets/token"));
        assert_eq!(irsa.get("role_session_name"), Some("pg"), "repeated sections merge");
        assert_eq!(irsa.get("max_concurrent_requests"), None, "nested properties are skipped");
        assert_eq!(find(CONFIG, FileKind::Config, "default").unwrap().get("region"), Some("eu-west-1"));
        // In the config file `[irsa]` is not a profile, nor is an sso-session.
        assert!(find("[irsa]\nrole_arn=x\n", FileKind::Config, "irsa").is_none());
        assert!(find(CONFIG, FileKind::Config, "corp").is_none());
    }

    #[test]
    fn the_credentials_file_wins_over_the_config_file_and_debug_shows_no_values() {
        let mut p = find("[profile x]\naws_access_key_id = A\nregion = r\n", FileKind::Config, "x").unwrap();
        p.merge(
            find("[x]\naws_access_key_id = B\naws_secret_access_key = hush\n", FileKind::Credentials, "x").unwrap(),
        );
        assert_eq!(p.get("aws_access_key_id"), Some("B"));
        assert_eq!(p.get("region"), Some("r"));
        let shown = format!("{p:?}");
        assert!(shown.contains("aws_secret_access_key") && !shown.contains("hush"), "{shown}");
    }
}
