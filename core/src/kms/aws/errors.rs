//! What an AWS error answer means for the caller.
//!
//! AWS KMS answers errors as JSON (`{"__type": "...#NotFoundException",
//! "message": "..."}`); STS, and moto's signature and IAM checks even for
//! KMS, as an XML `<Error><Code>..</Code><Message>..</Message>`. Both are
//! read. AWS's message texts name keys, ARNs and principals, never
//! credentials or key bytes, so they go into our messages; a body that is
//! not an AWS error document is never echoed (a proxy could reflect the
//! request, which may carry a key to encrypt).

use super::xml;
use crate::KmsError;

/// The longest AWS message text we quote.
const MAX_MESSAGE: usize = 400;

#[derive(Debug, PartialEq, Eq)]
pub struct AwsError {
    /// The bare code: `NotFoundException`, with any `namespace#` prefix and
    /// `:detail` suffix removed.
    pub code: String,
    pub message: String,
}

/// The error an answer's body describes, if it is an AWS error document.
pub fn parse(body: &[u8]) -> Option<AwsError> {
    let text = std::str::from_utf8(body).ok()?.trim_start();
    let (code, message) = if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let field = |names: &[&str]| names.iter().find_map(|n| v.get(*n)?.as_str().map(str::to_string));
        (field(&["__type", "code", "Code"])?, field(&["message", "Message"]).unwrap_or_default())
    } else if text.starts_with('<') {
        let [code, message] = xml::fields(text, ["Code", "Message"]).ok()?;
        (code?.to_string(), message.map(|m| m.to_string()).unwrap_or_default())
    } else {
        return None;
    };
    let code = code.rsplit('#').next().unwrap_or_default();
    let code = code.split(':').next().unwrap_or_default().trim();
    if code.is_empty() {
        return None;
    }
    Some(AwsError { code: code.to_string(), message: tidy(&message) })
}

/// Where AWS starts quoting the request back: a signature mismatch answer
/// carries the canonical request and string to sign, which include the
/// session token header and the credential scope.
const QUOTED_REQUEST: [&str; 3] = ["The Canonical String", "The String-to-Sign", "x-amz-security-token"];

/// One line, printable, bounded, and cut before any quoted request.
fn tidy(message: &str) -> String {
    let cut = QUOTED_REQUEST.iter().filter_map(|m| message.find(m)).min().unwrap_or(message.len());
    let message = &message[..cut];
    let mut out: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.chars().count() > MAX_MESSAGE {
        out = out.chars().take(MAX_MESSAGE).collect::<String>() + "...";
    }
    out.trim().to_string()
}

/// The kinds of failure the callers tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Not allowed (IAM or key policy).
    Denied,
    /// The credentials themselves were not accepted (unknown, expired,
    /// badly signed): worth re-reading them before the next call.
    BadCredentials,
    KeyUnusable,
    /// The ciphertext does not open under this key and context.
    Corrupt,
    Throttled,
    Unavailable,
    Refused,
}

impl Class {
    pub fn retry(self) -> bool {
        matches!(self, Class::Throttled | Class::Unavailable)
    }
}

/// Classifies an error answer by its code, else by its HTTP status.
pub fn classify(status: u16, code: Option<&str>) -> Class {
    match code.unwrap_or("") {
        "AccessDeniedException" | "AccessDenied" => Class::Denied,
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "InvalidClientTokenId"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException"
        // STS, for a web identity token it does not accept.
        | "InvalidIdentityToken"
        | "IDPRejectedClaim" => Class::BadCredentials,
        "DisabledException" | "KMSInvalidStateException" | "NotFoundException" | "KeyUnavailableException"
        | "InvalidKeyUsageException" => Class::KeyUnusable,
        "InvalidCiphertextException" | "IncorrectKeyException" => Class::Corrupt,
        "ThrottlingException" | "Throttling" | "LimitExceededException" | "TooManyRequestsException"
        | "RequestLimitExceeded" => Class::Throttled,
        "KMSInternalException" | "DependencyTimeoutException" | "InternalFailure" | "InternalError"
        | "ServiceUnavailable" | "ServiceUnavailableException" | "IDPCommunicationError" => Class::Unavailable,
        _ => match status {
            429 => Class::Throttled,
            500..=599 => Class::Unavailable,
            401 | 403 => Class::Denied,
            _ => Class::Refused,
        },
    }
}

/// A KMS call and what its errors should name.
pub struct Ctx<'a> {
    /// `Decrypt`, `GenerateDataKey`, ...
    pub op: &'a str,
    /// The key as the caller named it (an alias, or a row's key ARN).
    pub key: &'a str,
    /// Where the credentials came from, never what they are.
    pub credentials: &'a str,
}

/// What an error answer to a KMS call means.
#[derive(Debug)]
pub struct Mapped {
    pub class: Class,
    pub error: KmsError,
}

pub fn kms_error(ctx: &Ctx, status: u16, body: &[u8]) -> Mapped {
    let parsed = parse(body);
    let class = classify(status, parsed.as_ref().map(|e| e.code.as_str()));
    let said = match &parsed {
        Some(e) if e.message.is_empty() => format!("{} (HTTP {status})", e.code),
        Some(e) => format!("{} (HTTP {status}): {}", e.code, e.message),
        None => format!("HTTP {status} with {} bytes that are not an AWS error document", body.len()),
    };
    let Ctx { op, key, credentials } = ctx;
    // IAM has no kms:ReEncrypt action: it is two, one per key.
    let allow = match *op {
        "ReEncrypt" => format!("kms:ReEncryptFrom on {key} and kms:ReEncryptTo on the configured key (kms:ReEncrypt*)"),
        op => format!("kms:{op} on {key}"),
    };
    let error = match class {
        Class::Denied => KmsError::AccessDenied(format!(
            "AWS KMS {op} on {key}: {said}; check that the IAM policy of the caller and the key policy allow \
             {allow} (credentials from {credentials})"
        )),
        Class::BadCredentials => KmsError::AccessDenied(format!(
            "AWS KMS {op} on {key}: {said}; the credentials from {credentials} were not accepted: check the \
             access key, secret key and session token, and the server's clock"
        )),
        Class::KeyUnusable => {
            let hint = match parsed.as_ref().map(|e| e.code.as_str()) {
                Some("NotFoundException") => "; check key_id and region",
                Some("DisabledException") => "; enable the key",
                Some("KMSInvalidStateException") => "; the key is disabled, pending deletion or being imported",
                _ => "",
            };
            KmsError::KeyUnusable(format!("AWS KMS {op} on {key}: {said}{hint}"))
        }
        Class::Corrupt => KmsError::WrappedKeyCorrupt { key_id: key.to_string() },
        Class::Throttled => KmsError::Throttled(format!("AWS KMS {op} on {key}: {said}")),
        Class::Unavailable => KmsError::Unavailable(format!("AWS KMS {op} on {key}: {said}")),
        Class::Refused => KmsError::Refused(format!("AWS KMS {op} on {key}: {said}")),
    };
    Mapped { class, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn map(status: u16, body: &str) -> Mapped {
        kms_error(&Ctx { op: "Decrypt", key: ARN, credentials: "the environment" }, status, body.as_bytes())
    }

    #[test]
    fn sample_answers_map_to_their_kind() {
        let moto_xml = |code: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ErrorResponse><Errors><Error><Code>{code}</Code>\
                 <Message>said by moto</Message><Type>Sender</Type></Error></Errors></ErrorResponse>"
            )
        };
        let json = |t: &str| format!(r#"{{"__type":"{t}","message":"said by AWS"}}"#);
        #[rustfmt::skip]
        let table: Vec<(u16, String, Class, bool)> = vec![
            (400, json("AccessDeniedException"), Class::Denied, false),
            (400, json("com.amazonaws.kms#UnrecognizedClientException"), Class::BadCredentials, false),
            (400, json("InvalidSignatureException"), Class::BadCredentials, false),
            (400, json("ExpiredTokenException"), Class::BadCredentials, false),
            (403, moto_xml("InvalidClientTokenId"), Class::BadCredentials, false),
            (403, moto_xml("SignatureDoesNotMatch"), Class::BadCredentials, false),
            (403, moto_xml("AccessDenied"), Class::Denied, false),
            (400, json("DisabledException"), Class::KeyUnusable, false),
            (400, json("KMSInvalidStateException"), Class::KeyUnusable, false),
            (400, json("NotFoundException:http://internal.amazon.com/coral/"), Class::KeyUnusable, false),
            (500, json("KeyUnavailableException"), Class::KeyUnusable, false),
            (400, json("InvalidCiphertextException"), Class::Corrupt, false),
            (400, json("IncorrectKeyException"), Class::Corrupt, false),
            (400, json("ThrottlingException"), Class::Throttled, true),
            (400, json("LimitExceededException"), Class::Throttled, true),
            (429, "".into(), Class::Throttled, true),
            (500, json("KMSInternalException"), Class::Unavailable, true),
            (500, json("DependencyTimeoutException"), Class::Unavailable, true),
            (503, "<html>busy</html>".into(), Class::Unavailable, true),
            (502, "".into(), Class::Unavailable, true),
            (400, json("ValidationException"), Class::Refused, false),
            (400, r#"{"__type":"InvalidArnException","Message":"capitalised"}"#.into(), Class::Refused, false),
            (404, "not json".into(), Class::Refused, false),
        ];
        for (status, body, class, retry) in table {
            let m = map(status, &body);
            assert_eq!((m.class, m.class.retry()), (class, retry), "{status} {body}");
            let text = m.error.to_string();
            match class {
                Class::Corrupt => assert_eq!(m.error, KmsError::WrappedKeyCorrupt { key_id: ARN.into() }),
                _ => assert!(text.contains(ARN) && text.contains("Decrypt"), "{text}"),
            }
        }
    }

    #[test]
    fn messages_quote_aws_and_hint_at_the_fix() {
        let m = map(
            400,
            r#"{"__type":"AccessDeniedException","message":"User: arn:aws:iam::1:user/pg is not authorized"}"#,
        );
        let KmsError::AccessDenied(text) = m.error else { panic!("{:?}", m.error) };
        assert!(text.contains("AccessDeniedException") && text.contains("user/pg is not authorized"), "{text}");
        assert!(text.contains(&format!("kms:Decrypt on {ARN}")) && text.contains("the environment"), "{text}");

        let m = map(
            400,
            r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
        );
        assert!(m.error.to_string().contains("were not accepted"), "{}", m.error);

        let m = map(
            400,
            r#"{"__type":"NotFoundException","message":"Alias arn:aws:kms:eu-west-1:1:alias/x is not found."}"#,
        );
        assert!(matches!(&m.error, KmsError::KeyUnusable(t) if t.contains("check key_id and region")), "{:?}", m.error);

        let ctx = Ctx { op: "ReEncrypt", key: ARN, credentials: "the environment" };
        let m = kms_error(&ctx, 400, br#"{"__type":"AccessDeniedException","message":"not authorized"}"#);
        let text = m.error.to_string();
        assert!(text.contains(&format!("kms:ReEncryptFrom on {ARN} and kms:ReEncryptTo on the configured key")), "{text}");
    }

    #[test]
    fn a_signature_mismatch_does_not_quote_the_signed_request() {
        let body = br#"{"__type":"InvalidSignatureException","message":"The request signature we calculated does not match the signature you provided.\n\nThe Canonical String for this request should have been\n'POST\n/\n\nhost:kms.us-east-1.amazonaws.com\nx-amz-security-token:IQoJb3JpZ2luX2VjEXAMPLETOKEN\n'"}"#;
        let e = parse(body).expect("an AWS error");
        let text = format!("{e:?}");
        assert!(!text.contains("IQoJb3JpZ2luX2VjEXAMPLETOKEN"), "{text}");
        assert!(text.contains("does not match"), "{text}");
    }

    #[test]
    fn bodies_that_are_not_aws_errors_are_not_echoed() {
        let m = map(502, r#"{"Plaintext":"c2VjcmV0"}"#);
        assert!(!m.error.to_string().contains("c2VjcmV0"), "{}", m.error);
        let m = map(400, &format!(r#"{{"__type":"ValidationException","message":"{}\n{}"}}"#, "x".repeat(1000), "y"));
        let text = m.error.to_string();
        assert!(text.len() < 700 && !text.contains('\n'), "{text}");
    }

    #[test]
    fn parse_reads_json_and_xml_codes() {
        assert_eq!(
            parse(br#"{"__type":"a.b#Code","message":"m"}"#),
            Some(AwsError { code: "Code".into(), message: "m".into() })
        );
        assert_eq!(
            parse(b"<ErrorResponse><Error><Code>C</Code><Message>m</Message></Error></ErrorResponse>"),
            Some(AwsError { code: "C".into(), message: "m".into() })
        );
        assert_eq!(parse(b""), None);
        assert_eq!(parse(br#"{"message":"no code"}"#), None);
    }
}
