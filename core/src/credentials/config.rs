//! The configs of `vault.create_credential`, checked before anything is
//! stored. A config holds no secret: signing material is named (a vault
//! secret) and read by the worker when it mints. Values are not echoed in
//! errors, in case a credential was pasted where a name was meant.

use serde_json::{Map, Value};

use crate::kms::aws::{check_region, endpoint_url};
use crate::MintError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    AwsEks,
    GithubApp,
}

impl Provider {
    pub fn parse(name: &str) -> Option<Provider> {
        match name {
            "aws_eks" => Some(Provider::AwsEks),
            "github_app" => Some(Provider::GithubApp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::AwsEks => "aws_eks",
            Provider::GithubApp => "github_app",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EksConfig {
    pub cluster: String,
    pub region: String,
    /// The STS endpoint the token names (EKS calls it to check the token);
    /// default: the regional endpoint, as `aws eks get-token` uses.
    pub sts_endpoint: Option<String>,
    /// Vault secrets holding the signing credentials; `None`: the server's
    /// AWS environment (as the KMS provider finds it).
    pub secrets: Option<EksSecrets>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EksSecrets {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubConfig {
    /// The JWT's issuer: the App's id, or its client id.
    pub issuer: String,
    pub installation_id: String,
    /// The vault secret holding the App's private key (PEM, PKCS#8 or PKCS#1).
    pub private_key_secret: String,
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub
    /// Enterprise Server; no trailing slash.
    pub api_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Config {
    Eks(EksConfig),
    Github(GithubConfig),
}

pub const DEFAULT_GITHUB_API: &str = "https://api.github.com";

fn invalid(m: impl Into<String>) -> MintError {
    MintError::Config(m.into())
}

impl Config {
    pub fn parse(provider: Provider, config: &Value) -> Result<Config, MintError> {
        let obj = config.as_object().ok_or_else(|| invalid("config must be a JSON object"))?;
        match provider {
            Provider::AwsEks => eks(obj).map(Config::Eks),
            Provider::GithubApp => github(obj).map(Config::Github),
        }
    }

    /// The vault secrets this config reads when minting: whoever registers
    /// it must be allowed to read them.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Config::Eks(EksConfig { secrets: Some(s), .. }) => {
                let mut v = vec![s.access_key_id.as_str(), s.secret_access_key.as_str()];
                v.extend(s.session_token.as_deref());
                v
            }
            Config::Eks(_) => vec![],
            Config::Github(g) => vec![g.private_key_secret.as_str()],
        }
    }

    /// Whether the config names an endpoint of its own (not the provider's
    /// public one).
    pub fn custom_endpoint(&self) -> bool {
        match self {
            Config::Eks(e) => e.sts_endpoint.is_some(),
            Config::Github(g) => g.api_url != DEFAULT_GITHUB_API,
        }
    }

    /// Whether minting signs with the server's own AWS identity.
    pub fn uses_server_identity(&self) -> bool {
        matches!(self, Config::Eks(EksConfig { secrets: None, .. }))
    }
}

/// Takes the keys a provider knows out of `obj`; any other key is refused
/// (not named: the allowed ones are listed instead).
fn fields<'a, const N: usize>(
    provider: &str,
    obj: &'a Map<String, Value>,
    known: [&str; N],
) -> Result<[Option<&'a Value>; N], MintError> {
    if obj.keys().any(|k| !known.contains(&k.as_str())) {
        return Err(invalid(format!("unknown config key for provider {provider}; the keys are: {}", known.join(", "))));
    }
    Ok(known.map(|k| obj.get(k).filter(|v| !v.is_null())))
}

/// The URL itself is not repeated: a token pasted into the wrong field
/// would otherwise reach the client and the server log.
fn bad_url(key: &str) -> MintError {
    invalid(format!("{key} must be an https URL (plain http only to a loopback address), without credentials, query or fragment"))
}

fn text(v: Option<&Value>, key: &str) -> Result<Option<String>, MintError> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control) => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(invalid(format!("{key} must be 1 to 1024 characters without control characters"))),
        Some(_) => Err(invalid(format!("{key} must be a string"))),
    }
}

/// A numeric id given as a JSON number or a string of digits.
fn number_id(v: Option<&Value>, key: &str) -> Result<Option<String>, MintError> {
    let s = match v {
        None => return Ok(None),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid(format!("{key} must be a number or a string of digits"))),
    };
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("{key} must be a positive integer")));
    }
    Ok(Some(s))
}

fn required<T>(v: Option<T>, key: &str, provider: &str) -> Result<T, MintError> {
    v.ok_or_else(|| invalid(format!("{key} is required for provider {provider}")))
}

fn eks(obj: &Map<String, Value>) -> Result<EksConfig, MintError> {
    let [cluster, region, sts_endpoint, akid, secret, token] = fields(
        "aws_eks",
        obj,
        ["cluster", "region", "sts_endpoint", "access_key_id_secret", "secret_access_key_secret", "session_token_secret"],
    )?;
    let cluster = required(text(cluster, "cluster")?, "cluster", "aws_eks")?;
    // EKS cluster names: letters, digits, dashes and underscores, at most
    // 100, starting with a letter or digit. The name is a signed header.
    let ok = cluster.len() <= 100
        && cluster.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && cluster.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(invalid("cluster is not an EKS cluster name (letters, digits, - and _, at most 100)"));
    }
    let region = required(text(region, "region")?, "region", "aws_eks")?;
    check_region(&region).map_err(|_| invalid("region is not an AWS region name (like eu-west-1)"))?;
    let sts_endpoint = match text(sts_endpoint, "sts_endpoint")? {
        Some(url) => Some(endpoint_url(&url, "sts_endpoint").map_err(|_| bad_url("sts_endpoint"))?),
        None => None,
    };
    let secrets = match (text(akid, "access_key_id_secret")?, text(secret, "secret_access_key_secret")?, text(token, "session_token_secret")?) {
        (Some(a), Some(s), t) => Some(EksSecrets { access_key_id: a, secret_access_key: s, session_token: t }),
        (None, None, None) => None,
        _ => {
            return Err(invalid(
                "access_key_id_secret and secret_access_key_secret are given together (session_token_secret only with them)",
            ))
        }
    };
    Ok(EksConfig { cluster, region, sts_endpoint, secrets })
}

fn github(obj: &Map<String, Value>) -> Result<GithubConfig, MintError> {
    let [app_id, client_id, installation_id, key, api_url] =
        fields("github_app", obj, ["app_id", "client_id", "installation_id", "private_key_secret", "api_url"])?;
    let issuer = match (number_id(app_id, "app_id")?, text(client_id, "client_id")?) {
        (Some(id), None) => id,
        (None, Some(c)) => {
            // Client ids look like Iv1.0123abcd or Iv23li...: no punctuation
            // that could change the JWT's meaning.
            if c.len() > 64 || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
                return Err(invalid("client_id is not a GitHub App client id"));
            }
            c
        }
        (Some(_), Some(_)) => return Err(invalid("give app_id or client_id, not both")),
        (None, None) => return Err(invalid("app_id (or client_id) is required for provider github_app")),
    };
    let installation_id = required(number_id(installation_id, "installation_id")?, "installation_id", "github_app")?;
    let private_key_secret = required(text(key, "private_key_secret")?, "private_key_secret", "github_app")?;
    let api_url = text(api_url, "api_url")?.unwrap_or_else(|| DEFAULT_GITHUB_API.to_string());
    let parsed = crate::kms::http::check_url(&api_url, "api_url").map_err(|_| bad_url("api_url"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad_url("api_url"));
    }
    let api_url = parsed.as_str().trim_end_matches('/').to_string();
    Ok(GithubConfig { issuer, installation_id, private_key_secret, api_url })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eks_of(v: Value) -> Result<EksConfig, MintError> {
        match Config::parse(Provider::AwsEks, &v)? {
            Config::Eks(e) => Ok(e),
            _ => unreachable!(),
        }
    }

    fn gh_of(v: Value) -> Result<GithubConfig, MintError> {
        match Config::parse(Provider::GithubApp, &v)? {
            Config::Github(g) => Ok(g),
            _ => unreachable!(),
        }
    }

    #[test]
    fn an_eks_config_with_the_server_identity() {
        let c = eks_of(json!({"cluster": "prod", "region": "eu-west-1"})).unwrap();
        assert_eq!((c.cluster.as_str(), c.region.as_str(), c.sts_endpoint.is_none(), c.secrets.is_none()), ("prod", "eu-west-1", true, true));
        assert!(Config::Eks(c).uses_server_identity());
    }

    #[test]
    fn an_eks_config_naming_vault_secrets() {
        let c = Config::parse(
            Provider::AwsEks,
            &json!({"cluster": "prod", "region": "eu-west-1", "sts_endpoint": "http://127.0.0.1:5000",
                    "access_key_id_secret": "aws/akid", "secret_access_key_secret": "aws/secret"}),
        )
        .unwrap();
        assert_eq!(c.secrets(), vec!["aws/akid", "aws/secret"]);
        assert!(!c.uses_server_identity());
    }

    #[test]
    fn eks_configs_that_cannot_work_are_refused_without_echoing_values() {
        for bad in [
            json!({"region": "eu-west-1"}),
            json!({"cluster": "prod"}),
            json!({"cluster": "prod x", "region": "eu-west-1"}),
            json!({"cluster": "prod", "region": "EU_WEST"}),
            json!({"cluster": "prod", "region": "eu-west-1", "sts_endpoint": "http://10.0.0.1"}),
            json!({"cluster": "prod", "region": "eu-west-1", "access_key_id_secret": "a"}),
            json!({"cluster": "prod", "region": "eu-west-1", "session_token_secret": "t"}),
            json!({"cluster": "prod", "region": "eu-west-1", "AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI"}),
            json!({"cluster": "prod", "region": "AKIAIOSFODNN7EXAMPLE"}),
            json!({"cluster": "prod", "region": "eu-west-1", "sts_endpoint": "http://AKIAIOSFODNN7EXAMPLE.example.com"}),
            json!(["prod"]),
        ] {
            let e = eks_of(bad.clone()).unwrap_err().to_string();
            assert!(!e.contains("AKIAIOSFODNN7EXAMPLE") && !e.contains("wJalr"), "{e}");
        }
    }

    #[test]
    fn a_github_config_by_app_id_or_client_id() {
        let g = gh_of(json!({"app_id": 123, "installation_id": "456", "private_key_secret": "github/key"})).unwrap();
        assert_eq!((g.issuer.as_str(), g.installation_id.as_str(), g.api_url.as_str()), ("123", "456", DEFAULT_GITHUB_API));
        let g = gh_of(json!({"client_id": "Iv23liABC", "installation_id": 9, "private_key_secret": "k",
                             "api_url": "https://ghe.example.com/api/v3/"}))
        .unwrap();
        assert_eq!((g.issuer.as_str(), g.api_url.as_str()), ("Iv23liABC", "https://ghe.example.com/api/v3"));
    }

    #[test]
    fn github_configs_that_cannot_work_are_refused() {
        for bad in [
            json!({"installation_id": 1, "private_key_secret": "k"}),
            json!({"app_id": 1, "client_id": "Iv1.x", "installation_id": 1, "private_key_secret": "k"}),
            json!({"app_id": "12a", "installation_id": 1, "private_key_secret": "k"}),
            json!({"app_id": -1, "installation_id": 1, "private_key_secret": "k"}),
            json!({"app_id": 1, "installation_id": "../x", "private_key_secret": "k"}),
            json!({"app_id": 1, "installation_id": 1}),
            json!({"app_id": 1, "installation_id": 1, "private_key_secret": "k", "api_url": "http://example.com"}),
            json!({"app_id": 1, "installation_id": 1, "private_key_secret": "k", "api_url": "https://x/?a=b"}),
            json!({"app_id": 1, "installation_id": 1, "private_key_secret": "k", "private_key": "-----BEGIN"}),
            json!({"app_id": 1, "installation_id": 1, "private_key_secret": "k", "api_url": "http://BEGIN.example.com"}),
        ] {
            let e = gh_of(bad.clone()).unwrap_err().to_string();
            assert!(!e.contains("BEGIN"), "{e}");
        }
    }
}
