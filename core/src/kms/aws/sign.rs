//! SigV4 request signing with AWS's own implementation (`aws-sigv4`).

use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;

use super::credentials::Credentials;
use crate::kms::http::Request;
use crate::KmsError;

/// Adds `x-amz-date`, `x-amz-security-token` (with a session token) and
/// `authorization` to `req`, signing its method, URL, headers and body
/// for `service` in `region` at `time`. Called for every attempt, so a
/// retry carries a fresh date.
pub fn sign_request(
    req: &mut Request,
    creds: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<(), KmsError> {
    let failed = |e: &dyn std::error::Error| KmsError::Config(format!("cannot sign the request to {service}: {e}"));
    let identity = creds.for_signer().into();
    let params = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let signable = SignableRequest::new(
        req.method,
        req.url.as_str(),
        req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(&req.body),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| failed(&e))?.into_parts();
    let (headers, _query) = instructions.into_parts();
    for h in headers {
        req.headers.push((h.name().to_string(), h.value().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use zeroize::Zeroizing;

    /// AWS's published SigV4 example (IAM ListUsers, 2015-08-30T12:36:00Z,
    /// AKIDEXAMPLE): the signature the documentation gives.
    #[test]
    fn matches_aws_s_published_example() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            None,
            None,
            "test",
        );
        let mut req = Request {
            method: "GET",
            url: "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08".into(),
            headers: vec![("content-type".into(), "application/x-www-form-urlencoded; charset=utf-8".into())],
            body: Zeroizing::new(vec![]),
        };
        sign_request(&mut req, &creds, "us-east-1", "iam", UNIX_EPOCH + Duration::from_secs(1440938160)).unwrap();
        let auth = req.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.as_str()).unwrap();
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert!(req.headers.iter().any(|(k, v)| k == "x-amz-date" && v == "20150830T123600Z"));
    }

    #[test]
    fn a_session_token_is_sent_and_signed() {
        let creds = Credentials::new(
            "ASIA1",
            Zeroizing::new("secret".into()),
            Some(Zeroizing::new("tok".into())),
            None,
            "test",
        );
        let mut req = Request {
            method: "POST",
            url: "http://127.0.0.1:9/".into(),
            headers: vec![],
            body: Zeroizing::new(b"{}".to_vec()),
        };
        sign_request(&mut req, &creds, "eu-west-1", "kms", SystemTime::now()).unwrap();
        assert!(req.headers.iter().any(|(k, v)| k == "x-amz-security-token" && v == "tok"));
        let auth = &req.headers.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert!(auth.contains("x-amz-security-token") && auth.contains("/eu-west-1/kms/aws4_request"), "{auth}");
        assert!(!auth.contains("secret"));
    }
}
