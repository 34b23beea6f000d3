//! Web identity (EKS IRSA, and any OIDC federation): a token file
//! exchanged at STS for temporary credentials with
//! AssumeRoleWithWebIdentity. The call is unsigned by design (the token is
//! the proof), in STS's query protocol: a form POST answered in XML.

use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::credentials::Credentials;
use super::env::Env;
use super::errors::{self, Class};
use super::xml;
use crate::kms::http::{self, Http, Request, Verdict};
use crate::kms::Call;
use crate::KmsError;

/// The STS endpoint, as the SDKs pick it: `AWS_ENDPOINT_URL_STS`, then
/// `AWS_ENDPOINT_URL`, then the regional endpoint.
pub fn endpoint(env: &Env, region: &str) -> Result<String, KmsError> {
    for var in ["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"] {
        if let Some(url) = env.get(var) {
            return Ok(http::check_url(url.trim(), var)?.to_string());
        }
    }
    Ok(format!("https://sts.{region}.{}/", super::dns_suffix(region)))
}

/// What AssumeRoleWithWebIdentity needs.
pub struct WebIdentity<'a> {
    pub endpoint: &'a str,
    pub role_arn: &'a str,
    pub session_name: &'a str,
    pub token: &'a str,
}

/// Exchanges a web identity token for temporary credentials.
pub fn assume_role_with_web_identity(http: &Http, call: &Call, w: &WebIdentity) -> Result<Credentials, KmsError> {
    // The token is a bearer credential: form-encode it into a buffer that
    // is large enough never to reallocate (encoding at most triples a
    // byte) and is wiped after use.
    let capacity = 256 + 3 * (w.role_arn.len() + w.session_name.len() + w.token.len());
    let mut form = Zeroizing::new(String::with_capacity(capacity));
    url::form_urlencoded::Serializer::new(&mut *form)
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", w.role_arn)
        .append_pair("RoleSessionName", w.session_name)
        .append_pair("WebIdentityToken", w.token)
        .finish();
    let what = format!("STS AssumeRoleWithWebIdentity for role {} at {}", w.role_arn, w.endpoint);
    http.retrying(call, || {
        let req = Request {
            method: "POST",
            url: w.endpoint.to_string(),
            headers: vec![("content-type".into(), "application/x-www-form-urlencoded; charset=utf-8".into())],
            body: Zeroizing::new(form.as_bytes().to_vec()),
        };
        match http.send(req, call.request_timeout, call.interrupted) {
            Err(t) => Verdict::from_transport(t, &what),
            Ok(resp) if resp.status == 200 => match parse_credentials(&resp.body, w.role_arn) {
                Ok(c) => Verdict::Done(c),
                Err(e) => Verdict::Fail(KmsError::Refused(format!("{what}: {e}"))),
            },
            Ok(resp) => sts_error(&what, resp.status, &resp.body),
        }
    })
}

fn sts_error<T>(what: &str, status: u16, body: &[u8]) -> Verdict<T> {
    let parsed = errors::parse(body);
    let class = errors::classify(status, parsed.as_ref().map(|e| e.code.as_str()));
    let said = match &parsed {
        Some(e) => format!("{} (HTTP {status}): {}", e.code, e.message),
        None => format!("HTTP {status} with {} bytes that are not an AWS error document", body.len()),
    };
    let error = match class {
        Class::Denied | Class::BadCredentials => KmsError::AccessDenied(format!(
            "{what}: {said}; check the role's trust policy (the OIDC provider, the token's audience and subject) \
             and that the token file is current"
        )),
        Class::Throttled => KmsError::Throttled(format!("{what}: {said}")),
        Class::Unavailable => KmsError::Unavailable(format!("{what}: {said}")),
        _ => KmsError::Refused(format!("{what}: {said}")),
    };
    if class.retry() {
        Verdict::Retry(error)
    } else {
        Verdict::Fail(error)
    }
}

/// The credentials in an AssumeRoleWithWebIdentity answer.
pub fn parse_credentials(body: &[u8], role_arn: &str) -> Result<Credentials, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())?;
    let [id, secret, token, expiration] =
        xml::fields(text, ["AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"])
            .map_err(|e| format!("the answer is not XML: {e}"))?;
    let missing = |f: &str| format!("the answer has no {f}");
    let id = id.filter(|v| !v.is_empty()).ok_or_else(|| missing("AccessKeyId"))?;
    let secret = secret.filter(|v| !v.is_empty()).ok_or_else(|| missing("SecretAccessKey"))?;
    let token = token.filter(|v| !v.is_empty()).ok_or_else(|| missing("SessionToken"))?;
    let expiration = expiration.ok_or_else(|| missing("Expiration"))?;
    let expiry = parse_time(&expiration)
        .ok_or_else(|| format!("Expiration \"{}\" is not an RFC 3339 time", expiration.as_str()))?;
    Ok(Credentials::new(id.as_str(), secret, Some(token), Some(expiry), &format!("web identity (role {role_arn})")))
}

/// An RFC 3339 time (`2019-11-09T13:34:41Z`, fractions allowed).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).ok().map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:db:postgres</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/vault/pg</Arn><AssumedRoleId>AROA:pg</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>FQoGZXIvYXdzE+/tok=</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-11-24T05:08:49.307437Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
    <Provider>www.amazon.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn an_answer_yields_temporary_credentials() {
        let c = parse_credentials(ANSWER.as_bytes(), "arn:aws:iam::123456789012:role/vault").unwrap();
        assert_eq!(c.access_key_id(), "ASIAEXAMPLE");
        assert_eq!(c.secret_access_key(), "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY");
        assert_eq!(c.session_token(), Some("FQoGZXIvYXdzE+/tok="));
        assert_eq!(c.expiry(), Some(UNIX_EPOCH + Duration::from_micros(1_795_496_929_307_437)));
        assert!(c.source().contains("role/vault"));
    }

    #[test]
    fn an_incomplete_answer_is_refused_without_quoting_secrets() {
        let no_token = ANSWER.replace("<SessionToken>FQoGZXIvYXdzE+/tok=</SessionToken>", "");
        assert_eq!(parse_credentials(no_token.as_bytes(), "r").err().unwrap(), "the answer has no SessionToken");
        let bad_time = ANSWER.replace("2026-11-24T05:08:49.307437Z", "tomorrow");
        let e = parse_credentials(bad_time.as_bytes(), "r").err().unwrap();
        assert!(e.contains("tomorrow") && !e.contains("EXAMPLEKEY"), "{e}");
        assert!(parse_credentials(b"<a>", "r").is_err());
    }

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Some(UNIX_EPOCH + Duration::from_secs(60)));
        assert_eq!(parse_time("1970-01-01T01:01:00+01:00"), Some(UNIX_EPOCH + Duration::from_secs(60)));
        assert_eq!(parse_time("2026-11-24 05:08:49"), None);
    }

    #[test]
    fn sts_errors_map_to_kms_errors() {
        let body = |code: &str| {
            format!("<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>m</Message></Error></ErrorResponse>")
        };
        let fail = |v: Verdict<()>| match v {
            Verdict::Fail(e) => e,
            _ => panic!("expected a failure"),
        };
        let retry = |v: Verdict<()>| match v {
            Verdict::Retry(e) => e,
            _ => panic!("expected a retry"),
        };
        assert!(
            matches!(fail(sts_error("w", 400, body("InvalidIdentityToken").as_bytes())), KmsError::AccessDenied(m) if m.contains("trust policy"))
        );
        assert!(matches!(fail(sts_error("w", 403, body("AccessDenied").as_bytes())), KmsError::AccessDenied(_)));
        assert!(matches!(
            retry(sts_error("w", 400, body("IDPCommunicationError").as_bytes())),
            KmsError::Unavailable(_)
        ));
        assert!(matches!(retry(sts_error("w", 400, body("Throttling").as_bytes())), KmsError::Throttled(_)));
        assert!(matches!(retry(sts_error("w", 500, b"")), KmsError::Unavailable(_)));
        assert!(matches!(fail(sts_error("w", 400, body("MalformedPolicyDocument").as_bytes())), KmsError::Refused(_)));
    }

    #[test]
    fn the_endpoint_follows_the_sdk_s_variables() {
        let env = |pairs: &[(&str, &str)]| Env::from_pairs(pairs.iter().copied());
        assert_eq!(endpoint(&env(&[]), "eu-west-1").unwrap(), "https://sts.eu-west-1.amazonaws.com/");
        assert_eq!(endpoint(&env(&[]), "cn-north-1").unwrap(), "https://sts.cn-north-1.amazonaws.com.cn/");
        assert_eq!(endpoint(&env(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:1")]), "x").unwrap(), "http://127.0.0.1:1/");
        let both = env(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:1"), ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:2")]);
        assert_eq!(endpoint(&both, "x").unwrap(), "http://127.0.0.1:2/");
        assert!(matches!(
            endpoint(&env(&[("AWS_ENDPOINT_URL_STS", "http://10.1.1.1")]), "x"),
            Err(KmsError::Config(_))
        ));
    }
}
