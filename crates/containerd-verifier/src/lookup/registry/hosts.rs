//! containerd's registry host configuration, read as containerd reads it
//! (`core/remotes/docker/config/hosts.go`, 2.2–2.4): `<hosts dir>/<host>/hosts.toml`, looked up
//! as `host_port_`, then `host:port`, then `_default`; `[host."…"]` mirrors tried in file
//! order, then the `server` (or the registry itself); `ca`, `client`, `header`, `skip_verify`,
//! `override_path` and `capabilities` per host, the top-level ones for the server. Without a
//! hosts.toml (or when it does not parse), Docker's layout: `*.crt` CA files, `*.cert` client
//! certificates with their `*.key`.

use std::path::{Path, PathBuf};

use crate::remote::{Tls, is_loopback_host};

/// What an endpoint may be asked for.
pub const ALL_CAPABILITIES: &[&str] = &["pull", "resolve", "push", "referrers"];

/// One place to send registry requests, in the order containerd tries them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Endpoint {
    /// `scheme://host[:port]`.
    pub origin: String,
    /// API root: `/v2`, a mirror's `/prefix/v2`, or the literal path with `override_path`.
    pub path: String,
    pub capabilities: Vec<String>,
    pub tls: Tls,
    /// Extra headers sent with every request (hosts.toml `header`).
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// The URL of `tail` (`<repo>/manifests/<ref>`) at this endpoint.
    pub fn url(&self, tail: &str) -> String {
        format!("{}{}/{tail}", self.origin, self.path)
    }
}

/// The directories containerd looks in for `host`, in order.
pub fn host_dirs(root: &Path, host: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(i) = host.rfind(':').filter(|&i| i > 0 && !host.ends_with(']')) {
        out.push(root.join(format!("{}_{}_", &host[..i], &host[i + 1..])));
    }
    out.push(root.join(host));
    out.push(root.join("_default"));
    out
}

/// The registry itself when nothing says otherwise: Docker Hub's API host for `docker.io`,
/// plain http for loopback registries (as containerd's clients do), https for the rest.
pub fn default_origin(host: &str) -> String {
    match host {
        "docker.io" => "https://registry-1.docker.io".into(),
        h if is_loopback_host(h) => format!("http://{h}"),
        h => format!("https://{h}"),
    }
}

/// Every endpoint for `host`, mirrors first, the server last; problems for stderr.
pub fn endpoints(hosts_root: &Path, host: &str) -> (Vec<Endpoint>, Vec<String>) {
    let mut notes = Vec::new();
    let dir = host_dirs(hosts_root, host).into_iter().find(|d| d.is_dir());
    let mut list = match &dir {
        Some(dir) => match crate::fsio::read_capped(&dir.join("hosts.toml"), crate::limits::NodeLimits::DEFAULT.config_file) {
            Ok(bytes) => match String::from_utf8(bytes).map_err(|e| e.to_string()).and_then(|text| parse_hosts_file(dir, &text)) {
                Ok(list) => list,
                Err(e) => {
                    notes.push(format!("{}: {e} (using its certificate files, as containerd does)", dir.join("hosts.toml").display()));
                    vec![cert_files(dir)]
                }
            },
            Err(_) => vec![cert_files(dir)],
        },
        None => vec![Endpoint { capabilities: all(), path: "/v2".into(), ..Endpoint::default() }],
    };
    // The last entry is the server: the registry itself unless `server` named another.
    if let Some(server) = list.last_mut()
        && server.origin.is_empty()
    {
        server.origin = default_origin(host);
    }
    for e in &mut list {
        if e.tls.ca_files.iter().any(|f| !f.is_file()) {
            notes.push(format!("{}: a `ca` file is missing: {:?}", e.origin, e.tls.ca_files));
        }
    }
    (list, notes)
}

fn all() -> Vec<String> {
    ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()
}

fn absolute(dir: &Path, p: &str) -> PathBuf {
    if Path::new(p).is_absolute() { PathBuf::from(p) } else { dir.join(p) }
}

fn strings(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Array(items) => items.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

/// Parses a hosts.toml: its `[host."…"]` tables in file order, then the server.
pub fn parse_hosts_file(dir: &Path, text: &str) -> Result<Vec<Endpoint>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let mut out = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts.as_table().ok_or("`host` must be a table of hosts")?;
        for (url, config) in hosts {
            let config = config.as_table().ok_or_else(|| format!("host {url:?} must be a table"))?;
            out.push(parse_host(dir, url, config)?);
        }
    }
    let server = table.get("server").and_then(toml::Value::as_str).unwrap_or_default();
    out.push(parse_host(dir, server, &table)?);
    Ok(out)
}

fn parse_host(dir: &Path, server: &str, config: &toml::Table) -> Result<Endpoint, String> {
    let override_path = config.get("override_path").and_then(toml::Value::as_bool).unwrap_or(false);
    let mut endpoint = Endpoint::default();
    if server.is_empty() {
        endpoint.path = if override_path { String::new() } else { "/v2".into() };
    } else {
        // Userinfo is neither sent nor printed (containerd takes only the host): dropped here.
        let server = &crate::limits::without_userinfo(server);
        let url = if server.starts_with("http") { server.to_owned() } else { format!("https://{server}") };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{server:?} is not a URL"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("{server:?}: only http and https"));
        }
        let (authority, path) = rest.split_once('/').map_or((rest, String::new()), |(a, p)| (a, format!("/{p}")));
        if authority.is_empty() {
            return Err(format!("{server:?} has no host"));
        }
        endpoint.origin = format!("{scheme}://{authority}");
        let path = clean_path(&path);
        endpoint.path = match (path.is_empty(), override_path) {
            (true, true) => String::new(),
            (true, false) => "/v2".into(),
            (false, true) => path,
            (false, false) if path.ends_with("/v2") => path,
            (false, false) => format!("{path}/v2"),
        };
    }
    endpoint.capabilities = match config.get("capabilities") {
        None => all(),
        Some(value) => {
            let list = strings(value).ok_or("`capabilities` must be a list of strings")?;
            for c in &list {
                if !ALL_CAPABILITIES.contains(&c.to_ascii_lowercase().as_str()) {
                    return Err(format!("unknown capability {c:?}"));
                }
            }
            list.into_iter().map(|c| c.to_ascii_lowercase()).collect()
        }
    };
    if let Some(ca) = config.get("ca") {
        endpoint.tls.ca_files = strings(ca).ok_or("`ca` must be a file or a list of files")?.iter().map(|p| absolute(dir, p)).collect();
    }
    if let Some(client) = config.get("client") {
        endpoint.tls.client_pairs = client_pairs(dir, client)?;
    }
    endpoint.tls.skip_verify = config.get("skip_verify").and_then(toml::Value::as_bool).unwrap_or(false);
    if let Some(header) = config.get("header") {
        let header = header.as_table().ok_or("`header` must be a table")?;
        for (name, value) in header {
            for v in strings(value).ok_or_else(|| format!("header {name:?} must be a string or a list of strings"))? {
                endpoint.headers.push((name.clone(), v));
            }
        }
    }
    Ok(endpoint)
}

/// `client = "both.pem"`, `["a.pem", "b.pem"]` or `[["a.cert", "a.key"], …]`.
fn client_pairs(dir: &Path, value: &toml::Value) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    let bad = || "`client` must be a file, a list of files, or a list of [certificate, key] pairs".to_owned();
    match value {
        toml::Value::String(s) => Ok(vec![(absolute(dir, s), None)]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok((absolute(dir, s), None)),
                toml::Value::Array(pair) => match pair.as_slice() {
                    [toml::Value::String(c), toml::Value::String(k)] => Ok((absolute(dir, c), (!k.is_empty()).then(|| absolute(dir, k)))),
                    [toml::Value::String(c)] => Ok((absolute(dir, c), None)),
                    _ => Err(bad()),
                },
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// `path.Clean` for URL paths (no trailing slash, no `.`/`..` segments, "" for the root).
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() { String::new() } else { format!("/{}", parts.join("/")) }
}

/// Docker's certs.d layout, used when there is no hosts.toml: `*.crt` are CAs, `*.cert` client
/// certificates with the `*.key` of the same name (if present). Applies to the server.
fn cert_files(dir: &Path) -> Endpoint {
    let mut endpoint = Endpoint { capabilities: all(), path: "/v2".into(), ..Endpoint::default() };
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect()).unwrap_or_default();
    files.sort();
    for file in files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".crt") {
            endpoint.tls.ca_files.push(file.clone());
        }
        if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            endpoint.tls.client_pairs.push((file.clone(), key.is_file().then_some(key)));
        }
    }
    endpoint
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of containerd's own `TestParseHostFile` (hosts_test.go, 2.4.2), as data.
    #[test]
    fn parses_hosts_toml_as_containerd() {
        let text = r#"
server = "https://test-default.registry"
ca = "/etc/path/default"
[header]
  x-custom-1 = "custom header"

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push", "referrers"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://no-referrers.registry"]
  capabilities = ["pull", "resolve", "push"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://noncompliantmirror.registry/v2/namespaceprefix"]
  capabilities = ["pull"]
  override_path = true

[host."https://noprefixnoncompliant.registry"]
  override_path = true

[host."https://onlyheader.registry".header]
  x-custom-1 = "justaheader"

[host."https://dial-timeout.registry"]
  dial_timeout = "3s"
"#;
        let hosts = parse_hosts_file(Path::new("/"), text).unwrap();
        let got: Vec<(String, String, Vec<String>)> = hosts.iter().map(|h| (h.origin.clone(), h.path.clone(), h.capabilities.clone())).collect();
        let caps = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let all = caps(ALL_CAPABILITIES);
        let expected = vec![
            ("https://mirror.registry", "/v2", caps(&["pull"])),
            ("https://mirror-bak.registry", "/us/v2", caps(&["pull"])),
            ("http://mirror.registry", "/v2", caps(&["pull"])),
            ("https://test-1.registry", "/v2", all.clone()),
            ("https://test-2.registry", "/v2", all.clone()),
            ("https://test-3.registry", "/v2", all.clone()),
            ("https://no-referrers.registry", "/v2", caps(&["pull", "resolve", "push"])),
            ("https://noncompliantmirror.registry", "/v2/namespaceprefix", caps(&["pull"])),
            ("https://noprefixnoncompliant.registry", "", all.clone()),
            ("https://onlyheader.registry", "/v2", all.clone()),
            ("https://dial-timeout.registry", "/v2", all.clone()),
            ("https://test-default.registry", "/v2", all.clone()),
        ];
        assert_eq!(got, expected.into_iter().map(|(o, p, c)| (o.to_owned(), p.to_owned(), c)).collect::<Vec<_>>(), "mirrors in file order, server last");
        assert_eq!(hosts[0].tls.ca_files, vec![PathBuf::from("/etc/certs/mirror.pem")]);
        assert!(!hosts[0].tls.skip_verify && hosts[1].tls.skip_verify);
        assert_eq!(hosts[0].headers, vec![("x-custom-2".to_owned(), "value1".to_owned()), ("x-custom-2".to_owned(), "value2".to_owned())]);
        assert_eq!(hosts[3].tls.ca_files, vec![PathBuf::from("/etc/certs/test-1-ca.pem"), PathBuf::from("/etc/certs/special.pem")]);
        assert_eq!(
            hosts[3].tls.client_pairs,
            vec![(PathBuf::from("/etc/certs/client.cert"), Some(PathBuf::from("/etc/certs/client.key"))), (PathBuf::from("/etc/certs/client.pem"), None)]
        );
        assert_eq!(hosts[4].tls.client_pairs, vec![(PathBuf::from("/etc/certs/client.pem"), None)]);
        assert_eq!(hosts[5].tls.client_pairs.len(), 2);
        assert_eq!(hosts[9].headers, vec![("x-custom-1".to_owned(), "justaheader".to_owned())]);
        let server = hosts.last().unwrap();
        assert_eq!(server.tls.ca_files, vec![PathBuf::from("/etc/path/default")]);
        assert_eq!(server.headers, vec![("x-custom-1".to_owned(), "custom header".to_owned())]);
    }

    /// containerd's `TestLoadCertFiles`: without a hosts.toml, `*.crt` are CAs and `*.cert` /
    /// `*.key` pairs client certificates, for the server.
    #[test]
    fn a_password_in_a_server_url_is_neither_kept_nor_printed() {
        let dir = Path::new("/etc/containerd/certs.d/mirror.example");
        let list = parse_hosts_file(dir, "server = \"https://user:s3cret@mirror.example\"\n[host.\"https://bob:hunter2@m2.example/v2\"]\n").unwrap();
        assert!(list.iter().all(|e| !e.origin.contains("s3cret") && !e.origin.contains("hunter2") && !e.origin.contains('@')), "{list:?}");
        let broken = parse_hosts_file(dir, "server = \"https://user:s3cret@\"\n").unwrap_err();
        assert!(!broken.contains("s3cret"), "{broken}");
    }

    #[test]
    fn certs_d_files_without_hosts_toml() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("registry.example.com");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["ca.crt", "client.cert", "client.key", "other.cert", "notes.txt"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let (list, _) = endpoints(root.path(), "registry.example.com");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].origin, "https://registry.example.com");
        assert_eq!(list[0].tls.ca_files, vec![dir.join("ca.crt")]);
        assert_eq!(list[0].tls.client_pairs, vec![(dir.join("client.cert"), Some(dir.join("client.key"))), (dir.join("other.cert"), None)]);
    }

    #[test]
    fn directories_and_defaults_as_containerd() {
        let root = Path::new("/etc/containerd/certs.d");
        assert_eq!(host_dirs(root, "127.0.0.1:5000"), vec![root.join("127.0.0.1_5000_"), root.join("127.0.0.1:5000"), root.join("_default")]);
        assert_eq!(host_dirs(root, "docker.io"), vec![root.join("docker.io"), root.join("_default")]);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            endpoints(empty.path(), "docker.io").0[0].url("library/nginx/manifests/latest"),
            "https://registry-1.docker.io/v2/library/nginx/manifests/latest"
        );
        assert_eq!(endpoints(empty.path(), "127.0.0.1:5000").0[0].origin, "http://127.0.0.1:5000");
        assert_eq!(endpoints(empty.path(), "127.example.com:5000").0[0].origin, "https://127.example.com:5000");
        // A hosts.toml that does not parse falls back to the certificate files, and says so.
        let dir = empty.path().join("broken.example");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts.toml"), "server = ").unwrap();
        let (list, notes) = endpoints(empty.path(), "broken.example");
        assert_eq!((list.len(), list[0].origin.as_str()), (1, "https://broken.example"));
        assert!(notes[0].contains("hosts.toml"), "{notes:?}");
        for bad in ["[host.\"https://\"]\n", "[host.\"https://x\"]\ncapabilities = [\"fly\"]\n", "[host.\"https://x\"]\nclient = 3\n"] {
            assert!(parse_hosts_file(Path::new("/"), bad).is_err(), "{bad}");
        }
    }
}
