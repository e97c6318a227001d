//! A real containerd, built by `install.sh`, run as a child of the test with its own root,
//! state, sockets and `opt` path under a temp dir (never `/etc/containerd`, `/opt/containerd`
//! or `/var/lib/containerd`), the `native` snapshotter, and this project's verifier in its
//! bindir. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The matrix: the newest 2.2.x and 2.4.x the Go module proxy serves (install.sh builds them).
pub const VERSIONS: [&str; 2] = ["v2.2.9", "v2.4.2"];
pub const CRICTL: &str = "v1.37.0";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tools() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from).join("tools")
}

/// Builds the pinned binaries once per test process (a missing Go toolchain fails loudly).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let status = Command::new(repo_root().join("tests/containerd/install.sh")).status().expect("tests/containerd/install.sh");
        assert!(status.success(), "tests/containerd/install.sh failed: it needs Go >= 1.24 and the Go module proxy");
    });
}

pub fn containerd_bin(version: &str) -> PathBuf {
    install();
    tools().join(format!("containerd-{version}/containerd"))
}

pub fn ctr_bin(version: &str) -> PathBuf {
    install();
    tools().join(format!("containerd-{version}/ctr"))
}

pub fn crictl_bin() -> PathBuf {
    install();
    tools().join(format!("crictl-{CRICTL}/crictl"))
}

/// What the config needs besides its paths.
pub struct Setup<'a> {
    pub version: &'a str,
    /// Loopback registry host (`127.0.0.1:port`): gets a hosts.toml with plain http.
    pub registry: &'a str,
    /// The verifier's config.toml, passed through containerd's environment.
    pub verifier_config: &'a Path,
    /// Extra TOML appended to the main config (plugin sections, disabled_plugins, …).
    pub extra: &'a str,
    /// Leave out our bindir section (containerd then uses its default bin_dir).
    pub no_bindir_section: bool,
    /// Enable the CRI plugins (with `config_path`, so CRI pulls use the transfer service).
    pub cri: bool,
    pub per_verifier_timeout: &'a str,
    /// Files written into containerd's temp dir before it starts (`conf.d/10-x.toml`, …).
    pub files: &'a [(&'a str, String)],
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            version: VERSIONS[1],
            registry: "",
            verifier_config: Path::new(""),
            extra: "",
            no_bindir_section: false,
            cri: false,
            per_verifier_timeout: "10s",
            files: &[],
        }
    }
}

pub struct Containerd {
    pub version: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub bin_dir: PathBuf,
    pub socket: PathBuf,
    pub hosts_dir: PathBuf,
    child: Child,
}

impl Containerd {
    /// Writes the config (version 3, which both 2.2 and 2.4 read) and starts containerd.
    pub fn start(setup: &Setup) -> Containerd {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|u| u.split_whitespace().next().unwrap_or_default().to_owned())));
        assert_eq!(uid.as_deref(), Some("0"), "containerd needs root: run the tests as root (CI does)");
        let dir = tempfile::tempdir().unwrap();
        let path = |p: &str| dir.path().join(p);
        for d in ["root", "state", "opt", "bin", "hosts", "conf.d"] {
            std::fs::create_dir_all(path(d)).unwrap();
        }
        for (name, text) in setup.files {
            std::fs::write(path(name), text).unwrap();
        }
        let bin_dir = path("bin");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_atproto-verifier"), bin_dir.join("atproto-verifier")).unwrap();
        let hosts_dir = path("hosts");
        if !setup.registry.is_empty() {
            let host_dir = hosts_dir.join(setup.registry);
            std::fs::create_dir_all(&host_dir).unwrap();
            std::fs::write(
                host_dir.join("hosts.toml"),
                format!("server = \"http://{0}\"\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", setup.registry),
            )
            .unwrap();
        }
        let socket = path("state/containerd.sock");
        let mut config = format!(
            "version = 3\nroot = {:?}\nstate = {:?}\n{imports}{disabled}\n[grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n[debug]\n  level = \"debug\"\n\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {:?}\n\n[plugins.\"io.containerd.transfer.v1.local\"]\n  config_path = {:?}\n  [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n    platform = \"linux/amd64\"\n    snapshotter = \"native\"\n",
            path("root"),
            path("state"),
            socket,
            path("state/containerd.sock.ttrpc"),
            path("opt"),
            hosts_dir,
            imports = if setup.extra.contains("imports =") { "" } else { "imports = []\n" },
            disabled = if setup.cri || setup.extra.contains("disabled_plugins") {
                String::new()
            } else {
                "disabled_plugins = [\"io.containerd.nri.v1.nri\", \"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \"io.containerd.cri.v1.runtime\"]".into()
            },
        );
        if !setup.no_bindir_section {
            config.push_str(&format!(
                "\n[plugins.\"io.containerd.image-verifier.v1.bindir\"]\n  bin_dir = {bin_dir:?}\n  max_verifiers = 10\n  per_verifier_timeout = {:?}\n",
                setup.per_verifier_timeout
            ));
        }
        if setup.cri {
            if !setup.extra.contains("disabled_plugins") {
                config.push_str("disabled_plugins = [\"io.containerd.nri.v1.nri\"]\n");
            }
            if !setup.extra.contains("io.containerd.cri.v1.images\"]") {
                config.push_str(&format!(
                    "\n[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  [plugins.\"io.containerd.cri.v1.images\".registry]\n    config_path = {hosts_dir:?}\n"
                ));
            }
        }
        config.push('\n');
        config.push_str(setup.extra);
        // TOML wants top-level keys before tables: hoist `disabled_plugins` and `imports`.
        let (top, rest): (Vec<&str>, Vec<&str>) = config.lines().partition(|l| l.starts_with("disabled_plugins") || l.starts_with("imports"));
        let config = format!("{}\n{}\n", top.join("\n"), rest.join("\n"));
        let config_path = path("config.toml");
        std::fs::write(&config_path, &config).unwrap();
        let log = std::fs::File::create(path("containerd.log")).unwrap();
        let child = Command::new(containerd_bin(setup.version))
            .arg("--config")
            .arg(&config_path)
            .env("ATPROTO_VERIFIER_CONFIG", setup.verifier_config)
            // The runc shim built beside containerd, and Debian's runc.
            .env("PATH", format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", containerd_bin(setup.version).parent().unwrap().display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut daemon = Containerd { version: setup.version.to_owned(), dir, config: config_path, bin_dir, socket, hosts_dir, child };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd {} exited ({status}) at start:\n{}", self.version, self.log());
            }
            if self.socket.exists() && self.ctr(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd {} did not answer within 30 s:\n{}", self.version, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(ctr_bin(&self.version)).arg("--address").arg(&self.socket).args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `ctr image pull` through the transfer service (the default), with our hosts dir.
    pub fn ctr_pull(&self, image: &str) -> Pulled {
        let out = self.ctr(&["image", "pull", "--hosts-dir", self.hosts_dir.to_str().unwrap(), image]);
        Pulled::from(out)
    }

    /// `crictl pull` through the CRI image service.
    pub fn crictl_pull(&self, image: &str) -> Pulled {
        let endpoint = format!("unix://{}", self.socket.display());
        let crictl_config = self.dir.path().join("crictl.yaml");
        std::fs::write(&crictl_config, format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n")).unwrap();
        let out = Command::new(crictl_bin()).arg("--config").arg(&crictl_config).args(["pull", image]).stdin(Stdio::null()).output().unwrap();
        Pulled::from(out)
    }

    /// True when containerd holds `image` (in the default namespace for ctr, k8s.io for CRI).
    pub fn has_image(&self, namespace: &str, image: &str) -> bool {
        let out = self.ctr(&["--namespace", namespace, "image", "ls", "-q"]);
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == image)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client's pull: exit status and everything it printed.
pub struct Pulled {
    pub ok: bool,
    pub text: String,
}

impl Pulled {
    fn from(out: Output) -> Pulled {
        Pulled { ok: out.status.success(), text: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)) }
    }
}

impl std::fmt::Display for Pulled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok={} {}", self.ok, self.text)
    }
}
