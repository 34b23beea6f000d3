//! The KMS peers the provider tests run against (issue 9) start on loopback
//! from the venv `make deps-peers` installs, and behave as the tests rely on;
//! so do the fault-injecting proxy and the server environment. No cluster.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secret_vault_it::peers::{peer_dir, transit_policy_hcl, Bao, Moto};
use secret_vault_it::proxy::{Mode, Proxy};
use secret_vault_it::{as_postgres_env, eventually};

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
    // Authentication is on: credentials moto's IAM does not know are refused.
    assert!(status.contains(" 403 "), "{status}");
    assert!(answer.contains("InvalidClientTokenId"), "{answer}");
}

#[test]
fn moto_accepts_the_bootstrapped_keys_and_refuses_a_wrong_secret() {
    let moto = Moto::start();
    assert!(moto.access_key_id.starts_with("AKIA"), "{}", moto.access_key_id);
    let out = moto.python(
        r#"
from botocore.exceptions import ClientError
print("keys", len(kms.list_keys()["Keys"]))
wrong = boto3.client("kms", aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"] + "x")
try:
    wrong.list_keys()
    print("wrong secret accepted")
except ClientError as e:
    # moto answers authentication failures with an XML ErrorResponse even
    # for KMS (a JSON protocol): boto3 then reports the status as the code.
    print("wrong secret", e.response["ResponseMetadata"]["HTTPStatusCode"], "SignatureDoesNotMatch" in str(e))
"#,
    );
    assert!(out.contains("keys 0"), "{out}");
    assert!(out.contains("wrong secret 403 True"), "{out}");

    let key = moto.create_key();
    assert!(key.starts_with("arn:aws:kms:us-east-1:"), "{key}");
    let other = moto.create_key();
    moto.create_alias("alias/app", &key);
    moto.update_alias("alias/app", &other);
    let target = moto.python(r#"print(kms.describe_key(KeyId="alias/app")["KeyMetadata"]["Arn"])"#);
    assert_eq!(target.trim(), other);

    // A disabled key refuses to work, as on AWS, and works again once enabled.
    let use_key = r#"
from botocore.exceptions import ClientError
print(kms.describe_key(KeyId=sys.argv[1])["KeyMetadata"]["KeyState"])
for name, call in [("encrypt", lambda: kms.encrypt(KeyId=sys.argv[1], Plaintext=b"x")),
                   ("data key", lambda: kms.generate_data_key(KeyId="alias/app", KeySpec="AES_256")),
                   ("decrypt", lambda: kms.decrypt(CiphertextBlob=bytes.fromhex(sys.argv[2])))]:
    try:
        call()
        print(name, "ok")
    except ClientError as e:
        print(name, e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"])
"#;
    let encrypt = r#"print(kms.encrypt(KeyId=sys.argv[1], Plaintext=b"x")["CiphertextBlob"].hex())"#;
    let blob = moto.python_args(encrypt, &[&other]);
    moto.disable_key(&other);
    let out = moto.python_args(use_key, &[&other, blob.trim()]);
    assert_eq!(
        out,
        "Disabled\nencrypt 400 DisabledException\ndata key 400 DisabledException\ndecrypt 400 DisabledException\n"
    );
    moto.enable_key(&other);
    let out = moto.python_args(use_key, &[&other, blob.trim()]);
    assert_eq!(out, "Enabled\nencrypt ok\ndata key ok\ndecrypt ok\n");
}

#[test]
fn moto_web_identity_credentials_are_accepted_for_kms_with_authentication_on() {
    let moto = Moto::start();
    let dir = peer_dir("irsa");
    let (role_arn, token_file) = moto.web_identity(&dir);
    assert!(role_arn.starts_with("arn:aws:iam::123456789012:role/irsa-"), "{role_arn}");
    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let key = moto.create_key();

    // As the SDKs do it: an unsigned AssumeRoleWithWebIdentity, then KMS
    // calls signed with the temporary keys and their session token.
    let out = moto.python_args(
        r#"
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
role_arn, token_file, key = sys.argv[1:4]
anonymous = boto3.client("sts", config=Config(signature_version=UNSIGNED))
creds = anonymous.assume_role_with_web_identity(
    RoleArn=role_arn, RoleSessionName="secret-vault", WebIdentityToken=open(token_file).read())["Credentials"]
print("temporary", creds["AccessKeyId"][:4])
def kms_as(**kw):
    return boto3.client("kms", aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"], **kw)
dk = kms_as(aws_session_token=creds["SessionToken"]).generate_data_key(KeyId=key, KeySpec="AES_256")
print("data key", len(dk["Plaintext"]))
for name, client in [("no session token", kms_as()), ("wrong session token", kms_as(aws_session_token="x"))]:
    try:
        client.list_keys()
        print(name, "accepted")
    except ClientError as e:
        # An XML ErrorResponse although KMS speaks JSON (see above).
        print(name, e.response["ResponseMetadata"]["HTTPStatusCode"], "InvalidClientTokenId" in str(e))
try:
    anonymous.assume_role_with_web_identity(RoleArn=role_arn, RoleSessionName="s2", WebIdentityToken="eyJ.not.issued")
    print("unknown token accepted")
except ClientError as e:
    print("unknown token", e.response["Error"]["Code"])
try:
    iam_as = boto3.client("iam", aws_access_key_id=creds["AccessKeyId"],
                          aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    iam_as.list_users()
    print("iam allowed")
except ClientError as e:
    print("iam", e.response["Error"]["Code"])

# And boto3's own web identity provider, from the variables IRSA sets.
for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
    del os.environ[var]
os.environ["AWS_ROLE_ARN"], os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"] = role_arn, token_file
session = boto3.Session()
print("provider", session.get_credentials().method)
print("caller", session.client("sts").get_caller_identity()["Arn"])
print("provider data key", len(session.client("kms").generate_data_key(KeyId=key, KeySpec="AES_256")["Plaintext"]))
"#,
        &[&role_arn, token_file.to_str().unwrap(), &key],
    );
    let _ = std::fs::remove_dir_all(&dir);
    for expected in [
        "temporary ASIA",
        "data key 32",
        "no session token 403 True",
        "wrong session token 403 True",
        "unknown token InvalidIdentityToken",
        "iam AccessDenied",
        "provider assume-role-with-web-identity",
        "caller arn:aws:sts::123456789012:assumed-role/irsa-",
        "provider data key 32",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
}

#[test]
fn openbao_dev_server_starts_with_transit_and_a_derived_key() {
    let bao = Bao::start();
    bao.create_key("app", true);
    assert_eq!(bao.key_version("app"), 1);
    // A derived key needs a context: the binding the provider will use.
    let e = bao.cli(&["write", "-f", "transit/datakey/wrapped/app"]).unwrap_err();
    assert!(e.contains("context"), "{e}");
    let dk = bao.cli(&["write", "-format=json", "transit/datakey/wrapped/app", "context=Z3JvdXAvMQ=="]).unwrap();
    assert!(dk.contains("vault:v1:"), "{dk}");
    bao.rotate_key("app");
    assert_eq!(bao.key_version("app"), 2);
}

#[test]
fn openbao_seals_and_unseals_in_dev_mode_keeping_its_keys() {
    let bao = Bao::start();
    bao.create_key("app", false);
    bao.rotate_key("app");
    let ct = bao.cli(&["write", "-field=ciphertext", "transit/encrypt/app", "plaintext=aGVsbG8="]).unwrap();
    bao.seal();
    let e = bao.cli(&["read", "transit/keys/app"]).unwrap_err();
    assert!(e.contains("503") && e.contains("sealed"), "{e}");
    bao.unseal();
    assert_eq!(bao.key_version("app"), 2);
    let ct = format!("ciphertext={}", ct.trim());
    let pt = bao.cli(&["write", "-field=plaintext", "transit/decrypt/app", &ct]).unwrap();
    assert_eq!(pt.trim(), "aGVsbG8=");
}

#[test]
fn openbao_least_privilege_token_reaches_one_transit_key_only() {
    let bao = Bao::start();
    bao.create_key("app", true);
    bao.create_key("other", false);
    let token = bao.transit_token("app");
    assert!(transit_policy_hcl("app").contains(r#"path "transit/datakey/wrapped/app""#));
    let at = |args: &[&str]| bao.cli_at(&bao.address(), &token, args);

    let ct = at(&["write", "-field=ciphertext", "transit/encrypt/app", "plaintext=aGk=", "context=Yw=="]).unwrap();
    at(&["write", "-field=plaintext", "transit/decrypt/app", &format!("ciphertext={}", ct.trim()), "context=Yw=="])
        .unwrap();
    at(&["write", "transit/datakey/wrapped/app", "context=Yw=="]).unwrap();
    at(&["write", "transit/datakey/plaintext/app", "context=Yw=="]).unwrap();
    assert!(at(&["read", "-field=latest_version", "transit/keys/app"]).unwrap().contains('1'));
    for denied in [
        vec!["write", "transit/encrypt/other", "plaintext=aGk="],
        vec!["write", "-f", "transit/keys/app/rotate"],
        vec!["read", "transit/keys/other"],
        vec!["write", "-f", "transit/keys/new"],
    ] {
        let e = at(&denied).unwrap_err();
        assert!(e.contains("403") && e.contains("permission denied"), "{denied:?}: {e}");
    }

    let dir = peer_dir("bao-token");
    let file = bao.write_token_file(&dir);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "root");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o755);
    assert_ne!(meta.uid(), 0, "as root, the token file is given to postgres");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn openbao_tls_listener_is_trusted_with_our_ca_only() {
    let bao = Bao::start_tls();
    assert!(bao.address().starts_with("https://127.0.0.1:"), "{}", bao.address());
    let ca = bao.ca_file();
    assert_eq!(std::fs::metadata(&ca).unwrap().permissions().mode() & 0o777, 0o644);
    let script = r#"
import ssl, sys, urllib.request
url = sys.argv[1] + "/v1/sys/health"
ctx = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else ssl.create_default_context()
try:
    print(urllib.request.urlopen(url, context=ctx).status)
except Exception as e:
    print("failed", e)
"#;
    let python = secret_vault_it::peers::bin_dir().join("python");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&python).arg("-c").arg(script).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run(&[&bao.address(), ca.to_str().unwrap()]).trim(), "200");
    let untrusted = run(&[&bao.address()]);
    assert!(untrusted.contains("CERTIFICATE_VERIFY_FAILED"), "{untrusted}");
    let by_name = run(&[&bao.address().replace("127.0.0.1", "localhost"), ca.to_str().unwrap()]);
    assert_eq!(by_name.trim(), "200", "the certificate also names localhost");

    // rustls refuses a server certificate that is a CA: the one served is not.
    let served = std::process::Command::new(&python)
        .arg("-c")
        .arg(
            r#"
import ssl, sys
from cryptography import x509
cert = x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", int(sys.argv[1]))).encode())
print("ca", cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
print("ip", san.get_values_for_type(x509.IPAddress))
"#,
        )
        .arg(bao.port.to_string())
        .output()
        .unwrap();
    let served = String::from_utf8_lossy(&served.stdout);
    assert_eq!(served, "ca False\nip [IPv4Address('127.0.0.1')]\n");
}

#[test]
fn the_server_environment_passes_runuser_and_inherited_kms_settings_do_not() {
    let env = [("AWS_WEB_IDENTITY_TOKEN_FILE".to_string(), "/tmp/token".to_string())];
    let out = as_postgres_env("/usr/bin/env", &[], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    let aws: Vec<&str> = text.lines().filter(|l| l.starts_with("AWS_")).collect();
    // Only what the test set: not this machine's AWS_CA_BUNDLE, say.
    assert_eq!(aws, ["AWS_WEB_IDENTITY_TOKEN_FILE=/tmp/token"], "{text}");
}

// ---- The fault-injecting proxy ----

/// A keep-alive HTTP upstream: "ok" (Content-Length) or, for /chunked, a
/// chunked body. Counts the requests it answers.
fn upstream() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut first = String::new();
                    if reader.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    count.fetch_add(1, Ordering::SeqCst);
                    let answer = if first.contains("/chunked") {
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nchu\r\n5;x=y\r\nnked!\r\n0\r\n\r\n"
                            .to_string()
                    } else {
                        let body = String::from_utf8_lossy(&body);
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nok{body}", 2 + body.len())
                    };
                    stream.write_all(answer.as_bytes()).unwrap();
                }
            });
        }
    });
    (port, served)
}

/// A client connection that reads responses framed by Content-Length or chunked.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { reader: BufReader::new(stream.try_clone().unwrap()), stream }
    }

    fn send(&mut self, path: &str, body: &str) {
        write!(self.stream, "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .unwrap();
    }

    /// (status, head, body)
    fn response(&mut self) -> std::io::Result<(u16, String, String)> {
        let mut head = String::new();
        loop {
            let n = self.reader.read_line(&mut head)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            if head.ends_with("\r\n\r\n") {
                break;
            }
        }
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let lower = head.to_ascii_lowercase();
        let mut body = String::new();
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.push_str(&String::from_utf8_lossy(&chunk[..size]));
            }
        } else {
            let length = lower.split("content-length:").nth(1).unwrap().lines().next().unwrap().trim().parse().unwrap();
            let mut bytes = vec![0; length];
            self.reader.read_exact(&mut bytes)?;
            body = String::from_utf8(bytes).unwrap();
        }
        Ok((status, head, body))
    }

    fn call(&mut self, path: &str, body: &str) -> (u16, String, String) {
        self.send(path, body);
        self.response().unwrap()
    }
}

#[test]
fn proxy_switches_mode_between_requests_on_one_kept_alive_connection() {
    let (port, served) = upstream();
    let proxy = Proxy::start(port);
    let mut c = Conn::open(proxy.port);
    assert_eq!(c.call("/", "-body").2, "ok-body");
    assert_eq!(c.call("/chunked", "").2, "chunked!");

    proxy.set_mode(Mode::bao_internal_error());
    let (status, _, body) = c.call("/", "");
    assert_eq!((status, body.as_str()), (500, r#"{"errors":["internal error"]}"#));

    proxy.set_mode(Mode::aws_throttling());
    let (status, head, body) = c.call("/", "");
    assert_eq!(status, 400);
    assert!(head.contains("Content-Type: application/x-amz-json-1.1\r\n"), "{head}");
    assert_eq!(body, r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#);

    proxy.set_mode(Mode::bao_throttling());
    assert_eq!(c.call("/", "").0, 429);

    proxy.set_mode(Mode::Pass);
    assert_eq!(c.call("/", "").2, "ok");
    assert_eq!(proxy.requests(), 6);
    assert_eq!(served.load(Ordering::SeqCst), 3, "answered by the proxy alone in Status mode");
}

#[test]
fn proxy_delays_requests() {
    let (port, _) = upstream();
    let proxy = Proxy::start(port);
    proxy.set_mode(Mode::Delay(Duration::from_millis(400)));
    let mut c = Conn::open(proxy.port);
    let started = Instant::now();
    assert_eq!(c.call("/", "").2, "ok");
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    proxy.set_mode(Mode::Pass);
    let started = Instant::now();
    assert_eq!(c.call("/", "").2, "ok");
    assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
}

#[test]
fn proxy_resets_the_connection() {
    let (port, served) = upstream();
    let proxy = Proxy::start(port);
    proxy.set_mode(Mode::Reset);
    let mut c = Conn::open(proxy.port);
    c.send("/", "");
    let e = c.response().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert_eq!(proxy.requests(), 1);
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

#[test]
fn proxy_hangs_until_the_mode_changes() {
    let (port, served) = upstream();
    let proxy = Proxy::start(port);
    proxy.set_mode(Mode::Hang);
    let mut c = Conn::open(proxy.port);
    c.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    c.send("/", "");
    let e = c.response().unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{e}");
    assert!(eventually(Duration::from_secs(5), || proxy.requests() == 1));

    // Leaving Hang closes the hung connection, still unanswered.
    proxy.set_mode(Mode::Pass);
    c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    assert_eq!(c.reader.read_to_end(&mut rest).unwrap(), 0);
    assert_eq!(served.load(Ordering::SeqCst), 0);
    assert_eq!(Conn::open(proxy.port).call("/", "").2, "ok");

    // Dropping the proxy closes a hung connection too.
    proxy.set_mode(Mode::Hang);
    let mut c = Conn::open(proxy.port);
    c.send("/", "");
    assert!(eventually(Duration::from_secs(5), || proxy.requests() == 3));
    drop(proxy);
    assert_eq!(c.reader.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn proxy_in_front_of_moto_passes_signed_calls_and_fakes_throttling() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let script = r#"
from botocore.config import Config
from botocore.exceptions import ClientError
via = boto3.client("kms", endpoint_url=sys.argv[1], config=Config(retries={"total_max_attempts": 1}))
try:
    print("keys", len(via.list_keys()["Keys"]))
except ClientError as e:
    print("error", e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"])
"#;
    let out = moto.python_args(script, &[&proxy.address()]);
    assert_eq!(out.trim(), "keys 0");
    proxy.set_mode(Mode::aws_throttling());
    assert_eq!(moto.python_args(script, &[&proxy.address()]).trim(), "error 400 ThrottlingException");
    proxy.set_mode(Mode::aws_internal_error());
    assert_eq!(moto.python_args(script, &[&proxy.address()]).trim(), "error 500 KMSInternalException");
    assert_eq!(proxy.requests(), 3);
}

#[test]
fn proxy_in_front_of_openbao_passes_and_fakes_errors() {
    let bao = Bao::start();
    bao.create_key("app", false);
    let proxy = Proxy::start(bao.port);
    let read = || bao.cli_at(&proxy.address(), "root", &["read", "-field=name", "transit/keys/app"]);
    assert_eq!(read().unwrap().trim(), "app");
    proxy.set_mode(Mode::bao_throttling());
    let e = read().unwrap_err();
    assert!(e.contains("429") && e.contains("rate limit quota exceeded"), "{e}");
    proxy.set_mode(Mode::bao_internal_error());
    let e = read().unwrap_err();
    assert!(e.contains("500") && e.contains("internal error"), "{e}");
    proxy.set_mode(Mode::Pass);
    assert_eq!(read().unwrap().trim(), "app");
    assert_eq!(proxy.requests(), 4);
}
