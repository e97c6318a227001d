//! A real Kubernetes control plane on loopback for the admission tests: etcd (Debian's
//! package, extracted), kube-apiserver and kubectl v1.37.2 (built by tests/kubernetes/install.sh
//! from the Go module proxy), a private CA made with openssl, and `atproto-verifier serve`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::harness::{Guard, repo_root, spawn_tied};

pub const K8S: &str = "v1.37.2";
pub const GATEKEEPER: &str = "v3.23.1";
pub const RATIFY: &str = "v1.4.6";
pub const HELM: &str = "v3.22.0";

pub fn tools() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from).join("tools")
}

/// A tool built by tests/kubernetes/install.sh; missing is a failure that says what to run.
pub fn tool(relative: &str) -> PathBuf {
    let path = tools().join(relative);
    assert!(path.exists(), "{} is missing: run tests/kubernetes/install.sh (scripts/test runs it)", path.display());
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `base` stretched by how loaded the machine is now (1 + the 1-minute load average per core,
/// at most 6x): what a component needs to start on an idle machine, it needs several times over
/// while the other test binaries compile and run beside it. Waits end on readiness; this only
/// bounds how long a broken component is waited for.
pub fn patience(base: Duration) -> Duration {
    let load: f64 = std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| t.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    base.mul_f64((1.0 + load / cores).min(6.0))
}

/// Waits until something listens on `port`, for at most `patience(limit)`.
pub fn wait_for_port(port: u16, what: &str, limit: Duration) {
    let limit = patience(limit);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < limit, "{what} did not listen on 127.0.0.1:{port} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

use super::pki::{self, openssl};

/// A CA and certificates it issued, for 127.0.0.1.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        pki::ca(dir, "ca");
        openssl(dir, &["genpkey", "-algorithm", "RSA", "-out", "sa.key"]);
        openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        Pki { dir: dir.to_owned() }
    }

    /// `<name>.crt` and `<name>.key`, issued by the CA; returns (cert, key).
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        pki::issue(&self.dir, "ca", name)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(self.ca()).unwrap())
    }
}

/// etcd and kube-apiserver, and a kubeconfig for kubectl.
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub kubeconfig: PathBuf,
    pub port: u16,
    etcd: Guard,
    apiserver: Guard,
}

/// A component that stops when the test process does (the control plane lives in a `static`,
/// which is never dropped).
fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Guard {
    spawn_tied(program, args, &[], log)
}

impl ControlPlane {
    pub fn start() -> ControlPlane {
        let etcd_bin = tool("etcd-debian/usr/bin/etcd");
        let apiserver_bin = tool(&format!("kubernetes-{K8S}/kube-apiserver"));
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(&dir.path().join("pki"));
        let (cert, key) = pki.issue("apiserver");
        let (client, peer, port) = (free_port(), free_port(), free_port());
        let etcd = spawn_logged(
            &etcd_bin,
            &[
                format!("--data-dir={}", dir.path().join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
                "--name=default".into(),
            ],
            &dir.path().join("etcd.log"),
        );
        wait_for_port(client, "etcd", Duration::from_secs(30));
        std::fs::write(dir.path().join("tokens.csv"), "test-admin-token,admin,admin-uid,\"system:masters\"\n").unwrap();
        let p = |f: &str| pki.dir.join(f).display().to_string();
        let apiserver = spawn_logged(
            &apiserver_bin,
            &[
                format!("--etcd-servers=http://127.0.0.1:{client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                // A loopback advertise address is refused by the default endpoint reconciler.
                "--endpoint-reconciler-type=none".into(),
                format!("--tls-cert-file={}", cert.display()),
                format!("--tls-private-key-file={}", key.display()),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--token-auth-file={}", dir.path().join("tokens.csv").display()),
                "--authorization-mode=RBAC".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--service-account-issuer=https://127.0.0.1:{port}/"),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                format!("--cert-dir={}", dir.path().join("certs").display()),
            ],
            &dir.path().join("apiserver.log"),
        );
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: test-admin-token\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
                p("ca.crt")
            ),
        )
        .unwrap();
        let plane = ControlPlane { dir, pki, kubeconfig, port, etcd, apiserver };
        let started = Instant::now();
        loop {
            let out = plane.kubectl(&["get", "--raw", "/readyz"], None);
            if out.status.success() {
                break;
            }
            assert!(
                started.elapsed() < patience(Duration::from_secs(90)),
                "kube-apiserver was not ready in time: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                plane.log("apiserver.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The default ServiceAccount is not made without a controller manager; Pods name none.
        plane
    }

    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Runs kubectl against this control plane, with `stdin` if given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(tool(&format!("kubernetes-{K8S}/kubectl")))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let input = stdin.unwrap_or_default().to_owned();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        out
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(out.status.success(), "kubectl {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A YAML or JSON file as the JSON objects kubectl reads from it (a List's items).
    pub fn objects(&self, file: &Path) -> Vec<Json> {
        // One JSON document per object, one after the other (or a List).
        let text = self.ok(&["create", "--dry-run=client", "-o", "json", "-f", &file.display().to_string()], None);
        let mut objects = Vec::new();
        for json in serde_json::Deserializer::from_str(&text).into_iter::<Json>() {
            let json = json.unwrap();
            match json.get("items") {
                Some(Json::Array(items)) if json["kind"] == "List" => objects.extend(items.iter().cloned()),
                _ => objects.push(json),
            }
        }
        objects
    }

    /// Applies objects given as JSON.
    pub fn apply(&self, objects: &[Json]) -> String {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&list.to_string()))
    }
}

/// `atproto-verifier serve` on a free port with a certificate from `pki`.
pub struct Server {
    pub port: u16,
    pub log: PathBuf,
    pub guard: Guard,
}

impl Server {
    pub fn start(pki: &Pki, config: &Path, extra: &[&str]) -> Server {
        let (cert, key) = pki.issue(&format!("serve-{}", free_port()));
        let port = free_port();
        let log = config.with_file_name(format!("serve-{port}.log"));
        let mut args: Vec<String> = vec![
            "serve".into(),
            format!("--listen=127.0.0.1:{port}"),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--config={}", config.display()),
            "--reload-interval=200ms".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let guard = spawn_logged(Path::new(env!("CARGO_BIN_EXE_atproto-verifier")), &args, &log);
        wait_for_port(port, "atproto-verifier serve", Duration::from_secs(20));
        Server { port, log, guard }
    }

    /// `atproto-verifier serve` with a packaged Deployment's container `args`: each one kept,
    /// except what names the cluster (the listen address, the mounted config and certificates),
    /// which points at this test's files and a loopback port.
    pub fn start_packaged(pki: &Pki, config: &Path, packaged: &[String]) -> Server {
        let (cert, key) = pki.issue(&format!("serve-{}", free_port()));
        let port = free_port();
        let log = config.with_file_name(format!("serve-{port}.log"));
        let args: Vec<String> = packaged
            .iter()
            .map(|arg| match arg.split_once('=') {
                Some(("--listen", _)) => format!("--listen=127.0.0.1:{port}"),
                Some(("--metrics-listen", _)) => format!("--metrics-listen=127.0.0.1:{}", free_port()),
                Some(("--config", _)) => format!("--config={}", config.display()),
                Some(("--tls-cert", _)) => format!("--tls-cert={}", cert.display()),
                Some(("--tls-key", _)) => format!("--tls-key={}", key.display()),
                Some(("--client-ca", _)) => format!("--client-ca={}", pki.ca().display()),
                _ => arg.clone(),
            })
            .collect();
        let guard = spawn_logged(Path::new(env!("CARGO_BIN_EXE_atproto-verifier")), &args, &log);
        wait_for_port(port, "atproto-verifier serve", Duration::from_secs(20));
        Server { port, log, guard }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An HTTPS request trusting only `pki`'s CA (and presenting `client`'s certificate, if
/// given); returns (status, body).
pub fn https_as(pki: &Pki, client: Option<&str>, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(&std::fs::read(pki.ca()).unwrap()).unwrap().to_owned();
    let mut tls = TlsConfig::builder().root_certs(RootCerts::Specific(std::sync::Arc::new(vec![ca])));
    if let Some(name) = client {
        let (cert, key) = pki.issue(name);
        let cert = Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap().to_owned();
        let key = PrivateKey::from_pem(&std::fs::read(key).unwrap()).unwrap().to_owned();
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    let agent: ureq::Agent =
        ureq::Agent::config_builder().tls_config(tls.build()).http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().into();
    let request =
        ureq::http::Request::builder().method(method).uri(url).header("content-type", "application/json").body(body.unwrap_or_default().to_owned()).unwrap();
    let response = agent.run(request).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.into_body().read_to_string().unwrap_or_default())
}

pub fn https(pki: &Pki, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    https_as(pki, None, method, url, body)
}
