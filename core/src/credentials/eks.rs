//! AWS EKS tokens, as `aws eks get-token` makes them: a presigned STS
//! `GetCallerIdentity` GET URL whose signature also covers the header
//! `x-k8s-aws-id: <cluster>`, base64url without padding, prefixed
//! `k8s-aws-v1.`. EKS answers the URL to learn the caller's IAM identity;
//! the cluster header keeps a token for one cluster from opening another.
//! Signing is local (AWS's own `aws-sigv4`); no call is made.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

use super::{EksConfig, Minted};
use crate::kms::aws::credentials::Credentials;
use crate::kms::aws::dns_suffix;
use crate::MintError;

pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// How long EKS accepts a token after it was signed (its own rule; the
/// URL's X-Amz-Expires is not what EKS checks).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// What the CLI presigns with.
const URL_EXPIRES: Duration = Duration::from_secs(60);
const CLUSTER_HEADER: &str = "x-k8s-aws-id";
const ACTION: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// RFC 3986 unreserved characters stay, everything else is encoded: how
/// the SDKs encode query values ('/' in a credential scope becomes %2F).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The STS endpoint a token names: the configured one, else the regional
/// endpoint (as the CLI picks it).
pub fn sts_endpoint(config: &EksConfig) -> String {
    match &config.sts_endpoint {
        Some(e) => e.clone(),
        None => format!("https://sts.{}.{}/", config.region, dns_suffix(&config.region)),
    }
}

/// The token for `config.cluster`, signed with `creds` at `now` (whole
/// seconds, as SigV4 dates are). It expires 15 minutes after signing, or
/// when temporary signing credentials do, whichever is first.
pub fn token(config: &EksConfig, creds: &Credentials, now: SystemTime) -> Result<Minted, MintError> {
    let signed_at = UNIX_EPOCH + Duration::from_secs(now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let failed = |e: &dyn std::error::Error| MintError::Signing(format!("cannot presign the EKS token: {e}"));
    let mut base = url::Url::parse(&sts_endpoint(config)).map_err(|e| failed(&e))?;
    if base.path().is_empty() {
        base.set_path("/");
    }
    base.set_query(Some(ACTION));
    let url = base.to_string();

    let identity = creds.for_signer().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(URL_EXPIRES);
    let params = SigningParams::builder()
        .identity(&identity)
        .region(&config.region)
        .name("sts")
        .time(signed_at)
        .settings(settings)
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let headers = [(CLUSTER_HEADER, config.cluster.as_str())];
    let signable = SignableRequest::new("GET", url.as_str(), headers.into_iter(), SignableBody::Bytes(&[]))
        .map_err(|e| failed(&e))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| failed(&e))?.into_parts();
    let (_, query) = instructions.into_parts();

    // The parameters in the order the CLI's URL has them (the signature
    // does not depend on it; clients comparing tokens do): the operation,
    // then the signing parameters, the session token, the signature last.
    // Sized up front: growing would free unwiped copies of the signature
    // and session token.
    let mut presigned = Zeroizing::new(String::with_capacity(url.len() + 3 * query.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>()));
    presigned.push_str(&url);
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
    ] {
        if let Some((_, value)) = query.iter().find(|(k, _)| *k == name) {
            presigned.push('&');
            presigned.push_str(name);
            presigned.push('=');
            presigned.extend(utf8_percent_encode(value, QUERY_VALUE));
        }
    }
    if query.len() != query.iter().filter(|(k, _)| k.starts_with("X-Amz-")).count() || !presigned.contains("X-Amz-Signature=") {
        return Err(MintError::Signing("the signer returned unexpected query parameters".into()));
    }
    let mut value = Zeroizing::new(String::with_capacity(TOKEN_PREFIX.len() + presigned.len() * 4 / 3 + 4));
    value.push_str(TOKEN_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(presigned.as_bytes(), &mut value);
    let mut expires_at = signed_at + TOKEN_LIFETIME;
    if let Some(x) = creds.expiry() {
        expires_at = expires_at.min(x);
    }
    super::check_token("EKS token", &value, expires_at, now)?;
    Ok(Minted { value, expires_at })
}

/// The URL inside a token (tests, and operators checking one by hand).
pub fn decode(token: &str) -> Option<String> {
    let b64 = token.strip_prefix(TOKEN_PREFIX)?;
    String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>) -> EksConfig {
        EksConfig {
            cluster: "my-cluster".into(),
            region: "us-west-2".into(),
            sts_endpoint: endpoint.map(String::from),
            secrets: None,
        }
    }

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            token.map(|t| Zeroizing::new(t.to_string())),
            None,
            "test",
        )
    }

    /// 2024-01-01T00:00:00Z
    fn new_year() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_704_067_200)
    }

    #[test]
    fn a_token_is_the_presigned_get_caller_identity_url() {
        let m = token(&config(None), &creds(None), new_year()).unwrap();
        assert!(m.value.starts_with(TOKEN_PREFIX));
        let url = decode(&m.value).unwrap();
        assert!(
            url.starts_with(
                "https://sts.us-west-2.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15\
                 &X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-west-2%2Fsts%2Faws4_request\
                 &X-Amz-Date=20240101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id\
                 &X-Amz-Signature="
            ),
            "{url}"
        );
        assert_eq!(m.expires_at, new_year() + TOKEN_LIFETIME);
        assert!(!m.value.contains('='));
    }

    /// Tokens botocore made for these inputs, as `aws eks get-token` makes
    /// them (tests/standins/eks_token.py; the integration tests compare
    /// live ones too): ours must be the same, byte for byte.
    #[test]
    fn tokens_match_botocore_byte_for_byte() {
        let vectors = [
            (None, None, "9820522955b8790d1291fa15ce3ec3c7efba9e7cd15d38dc020d10f18b3c84fb"),
            (Some("FQoGZXIvYXdzEXAMPLE/+token=="), None, "973f5997194c4e76a866b0a242132e70c4d7cb27d5a6ca02d9297e38fd514256"),
            (None, Some("http://127.0.0.1:5000"), "9534e5754bd52d9eb1972b006e36dbdd0e45b965c9225016538a57d0e8a98329"),
        ];
        for (session, endpoint, signature) in vectors {
            let url = decode(&token(&config(endpoint), &creds(session), new_year()).unwrap().value).unwrap();
            let host = endpoint.map_or("https://sts.us-west-2.amazonaws.com".to_string(), String::from);
            let token_part = session.map_or(String::new(), |_| "&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE%2F%2Btoken%3D%3D".into());
            assert_eq!(
                url,
                format!(
                    "{host}/?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256\
                     &X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-west-2%2Fsts%2Faws4_request\
                     &X-Amz-Date=20240101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id\
                     {token_part}&X-Amz-Signature={signature}"
                )
            );
        }
    }

    #[test]
    fn the_session_token_is_signed_into_the_url() {
        let url = decode(&token(&config(None), &creds(Some("FQoG/+x==")), new_year()).unwrap().value).unwrap();
        assert!(url.contains("&X-Amz-Security-Token=FQoG%2F%2Bx%3D%3D&X-Amz-Signature="), "{url}");
    }

    #[test]
    fn an_endpoint_override_is_the_url_s_host() {
        let url = decode(&token(&config(Some("http://127.0.0.1:5000/")), &creds(None), new_year()).unwrap().value).unwrap();
        assert!(url.starts_with("http://127.0.0.1:5000/?Action=GetCallerIdentity&"), "{url}");
    }

    #[test]
    fn temporary_credentials_cut_the_token_s_life() {
        let soon = new_year() + Duration::from_secs(120);
        let c = Credentials::new("ASIA", Zeroizing::new("s".into()), Some(Zeroizing::new("t".into())), Some(soon), "test");
        assert_eq!(token(&config(None), &c, new_year()).unwrap().expires_at, soon);
    }

    #[test]
    fn another_cluster_gets_another_signature() {
        let a = token(&config(None), &creds(None), new_year()).unwrap();
        let mut other = config(None);
        other.cluster = "other".into();
        assert_ne!(a.value, token(&other, &creds(None), new_year()).unwrap().value);
    }
}
