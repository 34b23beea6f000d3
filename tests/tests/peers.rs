//! The KMS peers the provider tests run against (issue 9) start on loopback
//! from the venv `make deps-peers` installs, and behave as the tests rely on.

use std::io::{Read, Write};
use std::net::TcpStream;

use secret_vault_it::peers::{Bao, Moto};

#[test]
fn moto_starts_and_refuses_a_request_signed_with_unknown_credentials() {
    let moto = Moto::start();
    let mut s = TcpStream::connect(("127.0.0.1", moto.port)).unwrap();
    let body = "{}";
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: TrentService.ListKeys\r\n\
         Content-Type: application/x-amz-json-1.1\r\nX-Amz-Date: 20261124T000000Z\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261124/us-east-1/kms/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature=deadbeef\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_string();
    // Authentication is on: credentials moto's IAM does not know are refused
    // (the provider tests create an IAM user and sign with its access key).
    assert!(status.contains(" 403 "), "{status}");
    assert!(answer.contains("InvalidClientTokenId"), "{answer}");
}

#[test]
fn openbao_dev_server_starts_with_a_derived_transit_key() {
    let bao = Bao::start();
    bao.cli(&["secrets", "enable", "transit"]).unwrap();
    bao.cli(&["write", "-f", "transit/keys/app", "derived=true"]).unwrap();
    let key = bao.cli(&["read", "-format=json", "transit/keys/app"]).unwrap();
    assert!(key.contains("\"latest_version\": 1"), "{key}");
    // A derived key needs a context: the binding the provider will use.
    let e = bao.cli(&["write", "-f", "transit/datakey/wrapped/app"]).unwrap_err();
    assert!(e.contains("context"), "{e}");
    let dk = bao.cli(&["write", "-format=json", "transit/datakey/wrapped/app", "context=Z3JvdXAvMQ=="]).unwrap();
    assert!(dk.contains("vault:v1:"), "{dk}");
}
