//! Registry credentials found the way docker and containerd tools find them: the docker config
//! (`docker_config` in config.toml, else `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`); per registry `credHelpers`, else the `credsStore`, else `auths`
//! (`auth`, `username`/`password`, or `identitytoken`). Helpers are run as
//! `docker-credential-<name> get` with the server on stdin, under a timeout. Nothing here is
//! ever printed: errors name the helper and the registry, never a secret.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value as Json;

use crate::config::Config;
use crate::limits::NodeLimits;
use crate::remote::Deadline;

/// Largest helper answer read.
const HELPER_MAX_OUTPUT: usize = NodeLimits::DEFAULT.helper_output;

/// What a registry gets.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `base64(user:password)`, for Basic auth and Bearer token requests.
    Basic(String),
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the token service.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a secret, not even in debug output.
        f.write_str(match self {
            Credential::Basic(_) => "Basic(<redacted>)",
            Credential::IdentityToken(_) => "IdentityToken(<redacted>)",
        })
    }
}

/// Why credentials could not be had (never containing a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("docker config {path}: {problem}")]
    Config { path: String, problem: String },
    #[error("credential helper name {0:?} is not a plain name")]
    HelperName(String),
    #[error("credential helper {program} cannot run ({problem}): install it or remove it from the docker config")]
    HelperMissing { program: String, problem: String },
    #[error("credential helper {program} did not answer within {timeout:?} for {server}")]
    HelperTimeout { program: String, timeout: Duration, server: String },
    /// The helper ran and failed, or answered something unusable.
    #[error("credential helper {program}: {problem}")]
    Helper { program: String, problem: String },
}

/// The docker config file in effect, and whether config.toml named it (then it must exist).
pub fn config_path(config: &Config) -> Option<(PathBuf, bool)> {
    if let Some(p) = &config.docker_config {
        return Some((p.clone(), true));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some((PathBuf::from(dir).join("config.json"), false));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| (PathBuf::from(h).join(".docker/config.json"), false))
}

/// The keys docker may have stored `host` under.
fn keys(host: &str) -> Vec<String> {
    let mut out = vec![host.to_owned(), format!("https://{host}"), format!("http://{host}"), format!("https://{host}/v1/"), format!("https://{host}/v2/")];
    if host == "docker.io" {
        out.insert(0, "https://index.docker.io/v1/".into());
        out.push("index.docker.io".into());
        out.push("registry-1.docker.io".into());
    }
    out
}

/// The server name a credential helper is asked about.
fn helper_server(host: &str) -> String {
    if host == "docker.io" { "https://index.docker.io/v1/".into() } else { host.to_owned() }
}

/// Credentials for `host` (canonical) in the docker config `bytes` (read from `path`), if
/// any; a helper it names runs only until `deadline` (and never longer than
/// `NodeLimits::helper_timeout`).
pub fn lookup(bytes: &[u8], path: &std::path::Path, host: &str, deadline: Deadline) -> Result<Option<Credential>, CredentialError> {
    let source = source_for(bytes, host).map_err(|problem| CredentialError::Config { path: path.display().to_string(), problem: problem.into() })?;
    let timeout = deadline.clamp(NodeLimits::DEFAULT.helper_timeout);
    match source {
        Source::Helper(name) => run_helper(&name, &helper_server(host), timeout),
        // A store holds every registry; fall through to `auths` only when it has nothing.
        Source::Store(name, auths) => Ok(run_helper(&name, &helper_server(host), timeout)?.or(auths)),
        Source::Auths(found) => Ok(found),
    }
}

/// Where a docker config says the credential for a host is.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// `credHelpers` names a helper for this host.
    Helper(String),
    /// The `credsStore` helper, then what `auths` holds for the host.
    Store(String, Option<Credential>),
    /// `auths` alone (possibly nothing).
    Auths(Option<Credential>),
}

/// Reads a docker config (`config.json` bytes) for `host`; runs nothing.
pub fn source_for(bytes: &[u8], host: &str) -> Result<Source, &'static str> {
    let json: Json = serde_json::from_slice(bytes).map_err(|_| "not JSON")?;
    let keys = keys(host);
    if let Some(helpers) = json.get("credHelpers").and_then(Json::as_object)
        && let Some(name) = keys.iter().find_map(|k| helpers.get(k)).and_then(Json::as_str)
    {
        return Ok(Source::Helper(name.to_owned()));
    }
    let auths = json.get("auths").and_then(Json::as_object).and_then(|auths| keys.iter().find_map(|k| auths.get(k))).and_then(auth_entry);
    match json.get("credsStore").and_then(Json::as_str).filter(|n| !n.is_empty()) {
        Some(name) => Ok(Source::Store(name.to_owned(), auths)),
        None => Ok(Source::Auths(auths)),
    }
}

/// The credential of one `auths` entry: `identitytoken`, `auth`, or `username` + `password`.
fn auth_entry(entry: &Json) -> Option<Credential> {
    if let Some(token) = entry.get("identitytoken").and_then(Json::as_str).filter(|t| !t.is_empty()) {
        return Some(Credential::IdentityToken(token.to_owned()));
    }
    if let Some(auth) = entry.get("auth").and_then(Json::as_str).filter(|a| !a.is_empty()) {
        return Some(Credential::Basic(auth.to_owned()));
    }
    match (entry.get("username").and_then(Json::as_str), entry.get("password").and_then(Json::as_str)) {
        (Some(user), Some(pass)) => Some(Credential::Basic(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))),
        _ => None,
    }
}

/// Runs `docker-credential-<name> get` for `server`, bounded in time and output.
fn run_helper(name: &str, server: &str, timeout: Duration) -> Result<Option<Credential>, CredentialError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(CredentialError::HelperName(crate::limits::short(name, 100)));
    }
    run_program(&format!("docker-credential-{name}"), server, timeout)
}

/// Runs a credential helper `program` (`get`, the server on stdin) for at most `timeout`.
fn run_program(program: &str, server: &str, timeout: Duration) -> Result<Option<Credential>, CredentialError> {
    let program = program.to_owned();
    if timeout.is_zero() {
        return Err(CredentialError::HelperTimeout { program, timeout, server: server.to_owned() });
    }
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| CredentialError::HelperMissing { program: program.clone(), problem: e.to_string() })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let helper = |problem: &str| CredentialError::Helper { program: program.clone(), problem: problem.to_owned() };
    let mut stdout = child.stdout.take().ok_or_else(|| helper("no stdout"))?;
    // Read on a thread and wait for it with a deadline: a helper that never answers, or leaves a
    // child holding its stdout open, cannot stall the pull past the timeout.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(HELPER_MAX_OUTPUT as u64 + 1).read_to_end(&mut out);
        let _ = sender.send(out);
    });
    let started = Instant::now();
    let timed_out = || CredentialError::HelperTimeout { program: program.clone(), timeout, server: server.to_owned() };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(helper(&e.to_string())),
        }
    };
    let out = receiver.recv_timeout(timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(5))).map_err(|_| timed_out())?;
    if !status.success() {
        // "credentials not found" is how helpers say they hold nothing for this server.
        return Ok(None);
    }
    if out.len() > HELPER_MAX_OUTPUT {
        return Err(helper(&format!("answered more than {HELPER_MAX_OUTPUT} bytes")));
    }
    let json: Json = serde_json::from_slice(&out).map_err(|_| helper(&format!("did not answer JSON for {server}")))?;
    let user = json.get("Username").and_then(Json::as_str).unwrap_or_default();
    let secret = json.get("Secret").and_then(Json::as_str).unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if user == "<token>" {
        Credential::IdentityToken(secret.to_owned())
    } else {
        Credential::Basic(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}")))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_secret() {
        assert_eq!(format!("{:?}", Credential::Basic("c2VjcmV0".into())), "Basic(<redacted>)");
        assert!(!format!("{:?}", Some(Credential::IdentityToken("secret".into()))).contains("secret\""));
    }

    #[test]
    fn docker_hub_keys() {
        assert_eq!(keys("docker.io")[0], "https://index.docker.io/v1/");
        assert!(keys("registry.example.com").contains(&"https://registry.example.com".to_owned()));
        assert!(run_helper("../evil", "x", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_helper_runs_only_until_the_decision_deadline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-slow");
        std::fs::write(&helper, "#!/bin/sh\nsleep 5\necho '{\"Username\":\"u\",\"Secret\":\"s\"}'\n").unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = helper.display().to_string();
        let started = Instant::now();
        let deadline = Deadline::after(Duration::from_millis(300));
        let answer = run_program(&program, "registry.example.com", deadline.clamp(NodeLimits::DEFAULT.helper_timeout));
        assert!(matches!(answer, Err(CredentialError::HelperTimeout { .. })), "{answer:?}");
        assert!(started.elapsed() < Duration::from_millis(800), "{:?}", started.elapsed());
        // No time left: not even started.
        let spent = Deadline::after(Duration::ZERO);
        assert!(matches!(run_program(&program, "x", spent.clamp(Duration::from_secs(5))), Err(CredentialError::HelperTimeout { .. })));
    }
}
