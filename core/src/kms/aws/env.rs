//! The environment the AWS provider reads (credentials, endpoints, the
//! home directory), behind a lookup function: environment variables are
//! process-global, so tests, which run in parallel, hand in their own
//! instead of calling `set_var`.

use std::collections::HashMap;
use std::path::PathBuf;

use zeroize::Zeroizing;

/// Looks one variable up.
type Lookup = Box<dyn Fn(&str) -> Option<String>>;

pub struct Env {
    lookup: Lookup,
}

impl Env {
    /// The server process's environment.
    pub fn process() -> Env {
        Env { lookup: Box::new(|name| std::env::var(name).ok()) }
    }

    /// Variables from `lookup` (tests that change them over time).
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + 'static) -> Env {
        Env { lookup: Box::new(lookup) }
    }

    /// A fixed set of variables and nothing else (tests, tools).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Env {
        let map: HashMap<String, String> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Env { lookup: Box::new(move |name| map.get(name).cloned()) }
    }

    /// A variable's value; set but empty counts as unset, as in the AWS SDKs.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// A variable that holds a secret (a secret access key, a session token).
    pub fn secret(&self, name: &str) -> Option<Zeroizing<String>> {
        self.get(name).map(Zeroizing::new)
    }

    /// A path from a variable, or `default` under the home directory;
    /// a leading `~/` is expanded as the SDKs do.
    pub fn path(&self, name: &str, default: &str) -> Option<PathBuf> {
        let home = self.get("HOME").map(PathBuf::from);
        match self.get(name) {
            Some(p) => match p.strip_prefix("~/") {
                Some(rest) => home.map(|h| h.join(rest)),
                None => Some(PathBuf::from(p)),
            },
            None => home.map(|h| h.join(default)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_are_unset_and_paths_default_under_home() {
        let env = Env::from_pairs([("HOME", "/home/pg"), ("AWS_PROFILE", " "), ("AWS_CONFIG_FILE", "~/conf")]);
        assert_eq!(env.get("AWS_PROFILE"), None);
        assert_eq!(
            env.path("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            Some("/home/pg/.aws/credentials".into())
        );
        assert_eq!(env.path("AWS_CONFIG_FILE", ".aws/config"), Some("/home/pg/conf".into()));
        assert_eq!(Env::from_pairs::<&str, &str>([]).path("AWS_CONFIG_FILE", ".aws/config"), None);
    }
}
