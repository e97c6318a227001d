//! `config.toml`: every runtime setting, each optional with a documented default
//! (packaging/config.toml lists them all; a test keeps that file and these defaults equal).
//! The path is `--config`, else `$ATPROTO_VERIFIER_CONFIG`, else /etc/atproto-verifier/config.toml.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the config is read from when neither `--config` nor the environment says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/atproto-verifier/config.toml";
/// Environment variable that overrides the config path (containerd passes its environment on).
pub const CONFIG_ENV: &str = "ATPROTO_VERIFIER_CONFIG";

/// A duration as operators write them for containerd (Go's `time.ParseDuration`: `1m30s`,
/// `10s500ms`, `1.5h`, units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), plus days (`7d`).
/// Negative durations and durations over 10 years are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Span {
    /// In microseconds (the unit of signed revs and of the decision clock).
    pub fn micros(self) -> i64 {
        i64::try_from(self.0.as_micros()).unwrap_or(i64::MAX)
    }
}

/// Longest accepted duration (ten years): anything longer is a typo.
const MAX_SPAN_NANOS: u128 = 10 * 365 * 86_400 * 1_000_000_000;

impl Span {
    /// Parses one or more `<number><unit>` terms; the number may have a fraction (`1.5h`).
    pub fn parse(text: &str) -> Option<Span> {
        if text.is_empty() || text.len() > 64 {
            return None;
        }
        let mut rest = text;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            let (number, tail) = rest.split_at(digits);
            let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
            let (unit, next) = tail.split_at(unit_len);
            let scale: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "d" => 86_400_000_000_000,
                _ => return None,
            };
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            if whole.is_empty() && fraction.is_empty() {
                return None;
            }
            let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
            let mut nanos = whole.checked_mul(scale)?;
            // The fraction, digit by digit (Go keeps what fits in nanoseconds).
            let mut place = scale;
            for digit in fraction.bytes() {
                if !digit.is_ascii_digit() {
                    return None;
                }
                place /= 10;
                nanos = nanos.checked_add(u128::from(digit - b'0') * place)?;
            }
            total = total.checked_add(nanos)?;
            if total > MAX_SPAN_NANOS {
                return None;
            }
            rest = next;
        }
        Some(Span(Duration::from_nanos(u64::try_from(total).ok()?)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if !nanos.is_multiple_of(1_000_000) {
            return if nanos.is_multiple_of(1000) { write!(f, "{}us", nanos / 1000) } else { write!(f, "{nanos}ns") };
        }
        let ms = self.0.as_millis();
        match ms {
            _ if ms.is_multiple_of(86_400_000) && ms > 0 => write!(f, "{}d", ms / 86_400_000),
            _ if ms.is_multiple_of(3_600_000) && ms > 0 => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) && ms > 0 => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        let text = String::deserialize(deserializer)?;
        Span::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not a duration such as \"500ms\", \"8s\", \"1m30s\", \"24h\" or \"7d\" (at most 10 years)"))
        })
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// Runtime configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Trust policy file (YAML or JSON).
    pub policy: PathBuf,
    /// Cache of DID documents, audit logs, locators and proofs.
    pub cache_dir: PathBuf,
    /// Make no network call at all: material comes from the cache, bundles and the registry.
    pub offline: bool,
    /// Read-only directory of bundles, imported (after verification) by `cache refresh` (the
    /// refresh timer), never on the pull path.
    pub bundle_dir: Option<PathBuf>,
    /// A fleet's bundles in an OCI registry (`oci://REGISTRY/REPOSITORY`, published by
    /// `bundle push`): `cache refresh` imports those of the policy's DIDs that changed.
    pub bundle_source: Option<String>,
    /// Publisher keys (`did:key:z…`) whose signed publications make a bundle's fetch times
    /// count as this node's own (without one, they are claims capped by each signed commit).
    pub bundle_signers: Vec<String>,
    /// Time budget for one decision, network included; decided and explained when it runs out.
    pub budget: Span,
    /// TCP connect timeout per request.
    pub connect_timeout: Span,
    /// Whole-request timeout (headers and body) per request.
    pub request_timeout: Span,
    /// did:plc directory.
    pub plc_directory: String,
    /// Verify did:plc audit logs instead of trusting the directory's rendered document.
    pub strict_plc: bool,
    /// containerd's registry host configuration (`<dir>/<host>/hosts.toml`).
    pub containerd_hosts_dir: PathBuf,
    /// Docker `config.json` with registry credentials (never printed).
    pub docker_config: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for PLC, PDS and registries, besides the system's
    /// CA store (for a private CA, or a TLS-intercepting proxy's).
    pub ca_bundle: Option<PathBuf>,
    /// Prometheus textfile written by `cache refresh` (node-exporter's textfile collector).
    pub metrics_file: Option<PathBuf>,
    /// Append one JSON line per decision here.
    pub audit_log: Option<PathBuf>,
    /// Registries whose first path segment is an identity (`host/<handle>/<repo>`).
    pub atproto_registries: Vec<String>,
    /// Optional handle resolver service (XRPC `com.atproto.identity.resolveHandle`).
    pub handle_resolver: Option<String>,
    /// How long a DID document is fresh.
    pub did_ttl: Span,
    /// How long a proof is fresh.
    pub proof_ttl: Span,
    /// How long past freshness cached material may still be used when the network fails.
    pub max_stale: Span,
    /// Oldest offline proof accepted (a revoked image stays admitted at most this long offline).
    pub max_proof_age: Span,
    /// How far in the future a commit rev may be dated (clock skew).
    pub clock_skew: Span,
    /// Where `watch` hears of repository changes: `pds` (each watched DID's PDS, one socket
    /// per PDS), `relay` or `jetstream` (one socket for the node, at `watch_url`), or `poll`
    /// (no stream: `getLatestCommit` every `watch_poll_interval`).
    pub watch_source: WatchSource,
    /// The relay (`wss://relay.example`) or Jetstream (`wss://jetstream.example`) to follow.
    pub watch_url: Option<String>,
    /// How often `watch` polls each watched DID's latest commit, with `watch_source = "poll"`
    /// or while its stream is down.
    pub watch_poll_interval: Span,
    /// Prometheus textfile written by `watch` (connected sources, lag, revocations, gaps).
    pub watch_metrics_file: Option<PathBuf>,
    /// What this node does when it learns that an image in containerd's store is revoked:
    /// `report` (log, metric, `doctor`, `coverage node`) or `remove-image` (also remove it from
    /// containerd's image store in every namespace, so the next start must pull and is
    /// decided). A running container is never killed.
    pub on_revoke: OnRevoke,
    /// containerd's gRPC socket (its `[grpc] address`), for `on_revoke` and `coverage node`.
    pub containerd_socket: PathBuf,
}

/// What a node does about a revoked image already in containerd's store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnRevoke {
    /// Log it once per container, count it, show it in `doctor` and `coverage node`.
    #[default]
    Report,
    /// Report, and remove the image (and every index holding it) from containerd's store.
    RemoveImage,
}

/// Where `watch` hears of repository changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchSource {
    /// `subscribeRepos` of each watched DID's own PDS.
    #[default]
    Pds,
    /// A relay's `subscribeRepos` (the whole network on one socket, filtered here).
    Relay,
    /// A Jetstream instance (JSON, filtered by the server; unsigned, so every event is a hint).
    Jetstream,
    /// No stream: `getLatestCommit` of every watched DID at `watch_poll_interval`.
    Poll,
    /// The fleet's registry (`bundle_source`): its index read every `watch_poll_interval`, and
    /// what a publisher (`watch --publish`) republished imported. No request to any PDS.
    Registry,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            policy: PathBuf::from("/etc/atproto-verifier/trust-policy.yaml"),
            cache_dir: PathBuf::from("/var/lib/atproto-verifier"),
            offline: false,
            bundle_dir: None,
            bundle_source: None,
            bundle_signers: Vec::new(),
            budget: Span(Duration::from_secs(8)),
            connect_timeout: Span(Duration::from_secs(2)),
            request_timeout: Span(Duration::from_secs(3)),
            plc_directory: "https://plc.directory".into(),
            strict_plc: false,
            containerd_hosts_dir: PathBuf::from("/etc/containerd/certs.d"),
            docker_config: None,
            ca_bundle: None,
            metrics_file: None,
            audit_log: None,
            atproto_registries: vec!["atcr.io".into()],
            handle_resolver: None,
            did_ttl: Span(Duration::from_secs(300)),
            proof_ttl: Span(Duration::from_secs(300)),
            max_stale: Span(Duration::from_secs(86_400)),
            max_proof_age: Span(Duration::from_secs(7 * 86_400)),
            clock_skew: Span(Duration::from_secs(300)),
            watch_source: WatchSource::Pds,
            watch_url: None,
            watch_poll_interval: Span(Duration::from_secs(60)),
            watch_metrics_file: None,
            on_revoke: OnRevoke::Report,
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
        }
    }
}

/// What is wrong with config text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    #[error("{0}")]
    Unreadable(String),
    #[error("not UTF-8")]
    NotUtf8,
    /// TOML syntax, an unknown key, a value of the wrong type (toml's message, with position).
    #[error("{0}")]
    Syntax(String),
    #[error("atproto_registries: {host:?}: {error}")]
    Registry { host: String, error: atproto_sig_core::reference::HostError },
    /// A cross-field check.
    #[error("{0}")]
    Invalid(String),
}

/// A TOML error as "line L, column C: what is wrong", never the line itself: a file named by
/// mistake (a token, a kubeconfig) must not end up in a log or a report. String values
/// quoted in the message (serde's `invalid value: string "…"`) are left out too.
fn syntax_problem(error: &toml::de::Error, text: &str) -> String {
    let mut message = String::new();
    let mut quoted = false;
    for c in error.message().chars() {
        if c == '"' {
            quoted = !quoted;
            if quoted {
                message.push_str("\"…\"");
            }
        } else if !quoted {
            message.push(c);
        }
    }
    // The unknown key's name is the file's content too: its line and column point at it, and
    // a known key it is a typo of is named instead.
    let message = if let Some(rest) = message.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or("");
        let known: Vec<&str> = rest.split("expected one of").nth(1).unwrap_or("").split('`').skip(1).step_by(2).collect();
        match known.iter().filter(|k| edit_distance(unknown, k) <= 2).min_by_key(|k| edit_distance(unknown, k)) {
            Some(key) => format!("an unknown key: did you mean `{key}`?"),
            None => "an unknown key (every key is documented in packaging/config.toml)".to_owned(),
        }
    } else {
        crate::limits::short(&crate::limits::printable(message.trim()), 200)
    };
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start.min(text.len())).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Levenshtein distance, for "did you mean" (short key names only).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().take(64).collect(), b.chars().take(64).collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let above = row.get(j + 1).copied().unwrap_or(0);
            let left = row.get(j).copied().unwrap_or(0);
            let value = (diagonal + usize::from(ca != cb)).min(above + 1).min(left + 1);
            diagonal = above;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = value;
            }
        }
    }
    row.last().copied().unwrap_or(0)
}

/// Why the configuration cannot be used: which file, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub problem: ConfigProblem,
}

/// The config path in effect and whether it was chosen explicitly.
pub fn config_path(flag: Option<&Path>) -> (PathBuf, bool) {
    if let Some(path) = flag {
        return (path.to_owned(), true);
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(path) if !path.is_empty() => (PathBuf::from(path), true),
        _ => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    }
}

/// True when the process runs with effective uid 0: containerd's verifiers (and the systemd
/// timer) keep the fixed system paths.
fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The default cache directory: the system one for root (containerd), else the user's cache
/// directory (`$XDG_CACHE_HOME`, else `~/.cache`, as the `directories` crate finds it).
pub fn default_cache_dir(root: bool, user_cache_dir: Option<&Path>) -> PathBuf {
    match user_cache_dir.filter(|d| !root && d.is_absolute()) {
        Some(dir) => dir.join("atproto-verifier"),
        None => Config::default().cache_dir,
    }
}

impl Config {
    /// Parses config text.
    pub fn parse(text: &str) -> Result<Config, ConfigProblem> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigProblem::Syntax(syntax_problem(&e, text)))?;
        // Compared with canonical image hosts: `atcr.io:443` and `ATCR.io` are `atcr.io`.
        for host in &mut config.atproto_registries {
            *host = atproto_sig_core::reference::canonical_host(host).map_err(|error| ConfigProblem::Registry { host: host.clone(), error })?;
        }
        Ok(config)
    }

    /// Loads the config: an explicitly named file must exist; the default path may be absent
    /// (every default then applies).
    pub fn load(flag: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = config_path(flag);
        let error = |problem: ConfigProblem| ConfigError { path: path.clone(), problem };
        let text = match crate::fsio::read_capped(&path, crate::limits::NodeLimits::DEFAULT.config_file) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| error(ConfigProblem::NotUtf8))?,
            Err(_) if !explicit && !path.exists() => String::new(),
            Err(e) => return Err(error(ConfigProblem::Unreadable(e.problem))),
        };
        let mut config = Config::parse(&text).map_err(error)?;
        // An operator running the CLI as themselves gets their own cache, unless one is configured.
        let cache_dir_set = toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.contains_key("cache_dir"));
        if !cache_dir_set {
            let dirs = directories::BaseDirs::new();
            config.cache_dir = default_cache_dir(running_as_root(), dirs.as_ref().map(directories::BaseDirs::cache_dir));
        }
        config.check().map_err(error)?;
        Ok(config)
    }

    /// Cross-field checks serde cannot express.
    pub fn check(&self) -> Result<(), ConfigProblem> {
        let invalid = |message: String| Err(ConfigProblem::Invalid(message));
        if self.budget.0 < Duration::from_millis(100) {
            return invalid("budget must be at least 100ms".into());
        }
        if self.request_timeout.0 > self.budget.0 {
            return invalid(format!("request_timeout ({}) is longer than the budget ({})", self.request_timeout, self.budget));
        }
        if !(self.plc_directory.starts_with("https://") || self.plc_directory.starts_with("http://")) {
            return invalid(format!("plc_directory {:?} must be an http(s) URL", self.plc_directory));
        }
        match (&self.watch_source, &self.watch_url) {
            (WatchSource::Relay | WatchSource::Jetstream, None) => {
                return invalid(format!("watch_source = {:?} needs watch_url (the wss:// address to follow)", self.watch_source));
            }
            (_, Some(url)) if !(url.starts_with("wss://") || url.starts_with("ws://")) => {
                return invalid(format!("watch_url {url:?} must be a ws(s):// URL"));
            }
            _ => {}
        }
        if self.watch_source == WatchSource::Registry && self.bundle_source.is_none() {
            return invalid("watch_source = \"registry\" needs bundle_source (the oci:// repository a publisher pushes to)".into());
        }
        if self.watch_poll_interval.0 < Duration::from_secs(1) {
            return invalid("watch_poll_interval must be at least 1s".into());
        }
        if let Some(source) = &self.bundle_source {
            crate::fleet::Location::parse(source).map_err(|e| ConfigProblem::Invalid(format!("bundle_source: {e}")))?;
        }
        for (n, signer) in self.bundle_signers.iter().enumerate() {
            atproto_sig_core::crypto::PublicKey::from_did_key(signer)
                .map_err(|e| ConfigProblem::Invalid(format!("bundle_signers[{n}]: {e} (a publisher key is did:key:z…, as `bundle keygen` prints it)")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line_and_column_never_the_content() {
        for (text, at) in [
            ("ghp_SECRETTOKEN123\n", "line 1, column 19"),
            ("policy = \"/x\"\ncache_dir = ghp_SECRET\n", "line 2, column 13"),
            ("budget = \"ghp_SECRET\"\n", "line 1, column 10"),
            ("ghp_SECRET = 1\n", "line 1, column 1"),
        ] {
            let problem = Config::parse(text).unwrap_err().to_string();
            assert!(problem.starts_with(at), "{problem}");
            assert!(!problem.contains("SECRET"), "{problem}");
        }
    }

    #[test]
    fn cache_dir_for_root_and_users() {
        assert_eq!(default_cache_dir(true, Some(Path::new("/home/u/.cache"))), PathBuf::from("/var/lib/atproto-verifier"));
        assert_eq!(default_cache_dir(false, Some(Path::new("/home/u/.cache"))), PathBuf::from("/home/u/.cache/atproto-verifier"));
        assert_eq!(default_cache_dir(false, Some(Path::new("relative"))), PathBuf::from("/var/lib/atproto-verifier"));
        assert_eq!(default_cache_dir(false, None), PathBuf::from("/var/lib/atproto-verifier"));
    }

    #[test]
    fn durations() {
        assert_eq!(Span::parse("8s"), Some(Span(Duration::from_secs(8))));
        assert_eq!(Span::parse("500ms"), Some(Span(Duration::from_millis(500))));
        assert_eq!(Span::parse("24h").map(|s| s.to_string()).as_deref(), Some("1d"));
        // As operators write them for containerd (Go's time.ParseDuration).
        assert_eq!(Span::parse("1m30s"), Some(Span(Duration::from_secs(90))));
        assert_eq!(Span::parse("10s500ms"), Some(Span(Duration::from_millis(10_500))));
        assert_eq!(Span::parse("1.5h"), Some(Span(Duration::from_secs(5400))));
        assert_eq!(Span::parse(".5s"), Some(Span(Duration::from_millis(500))));
        assert_eq!(Span::parse("2h45m"), Some(Span(Duration::from_secs(9900))));
        assert_eq!(Span::parse("300us"), Some(Span(Duration::from_micros(300))));
        assert_eq!(Span::parse("1µs"), Some(Span(Duration::from_micros(1))));
        assert_eq!(Span::parse("300us").map(|s| s.to_string()).as_deref(), Some("300us"));
        assert_eq!(Span::parse("1m30s").map(|s| s.to_string()).as_deref(), Some("90s"));
        for bad in ["", "8", "s", "8 s", "-1s", "1..5s", ".s", "1x", "1s2", "99999999999999999999d", "3651d", "1h-1m"] {
            assert_eq!(Span::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn shipped_config_documents_every_default() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/config.toml")).unwrap();
        // Every setting appears commented out with its default value.
        let uncommented: String = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| rest.split_once(" = ").is_some_and(|(k, _)| !k.is_empty() && k.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let documented = Config::parse(&uncommented).unwrap();
        let mut expected = Config::default();
        // Optional settings are documented with an example value, not a default.
        expected.docker_config = documented.docker_config.clone();
        expected.audit_log = documented.audit_log.clone();
        expected.handle_resolver = documented.handle_resolver.clone();
        expected.bundle_dir = documented.bundle_dir.clone();
        expected.bundle_source = documented.bundle_source.clone();
        expected.bundle_signers = documented.bundle_signers.clone();
        expected.ca_bundle = documented.ca_bundle.clone();
        expected.metrics_file = documented.metrics_file.clone();
        expected.watch_url = documented.watch_url.clone();
        expected.watch_metrics_file = documented.watch_metrics_file.clone();
        assert_eq!(documented, expected);
        let keys: Vec<String> =
            toml::to_string(&Config::default()).map(|t| t.lines().filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_owned())).collect()).unwrap_or_default();
        for key in keys.iter().chain(
            [
                "docker_config",
                "audit_log",
                "handle_resolver",
                "bundle_dir",
                "bundle_source",
                "bundle_signers",
                "ca_bundle",
                "metrics_file",
                "watch_url",
                "watch_metrics_file",
            ]
            .map(String::from)
            .iter(),
        ) {
            assert!(uncommented.contains(&format!("{key} = ")), "packaging/config.toml does not document `{key}`");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_with_positions() {
        let err = Config::parse("budget = \"8s\"\nbudegt = \"9s\"\n").unwrap_err().to_string();
        assert!(err.contains("did you mean `budget`") && err.contains("line 2"), "{err}");
        let err = Config::parse("budget = \"eight\"\n").unwrap_err().to_string();
        assert!(err.contains("not a duration"), "{err}");
        let config = Config::parse("budget = \"2s\"\nrequest_timeout = \"5s\"\n").unwrap();
        assert!(config.check().unwrap_err().to_string().contains("longer than the budget"));
    }
}
