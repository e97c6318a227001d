//! A small OCI distribution client over the decision's [`Http`], reaching registries the way
//! containerd does:
//! [`crate::hosts`] (hosts.toml or certs.d files: mirrors in file order, `ca`, `client`,
//! `header`, `skip_verify`, `override_path`), anonymous or Bearer token auth from `WWW-Authenticate`, Basic credentials
//! from a configured docker `config.json` (never printed). Used for tag -> digest, referrers
//! (API, then the `sha256-<hex>` tag fallback) and pushing attached proofs. The node's files
//! (hosts.toml, the docker config) are read once per decision ([`Files`]), not per request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use atproto_sig_core::reference::ImageRef;

use crate::config::Config;
use crate::limits::NodeLimits;
use crate::log::Notes;
use crate::lookup::registry::credentials::{Credential, CredentialError};
use crate::lookup::registry::hosts::Endpoint;
use crate::remote::{Deadline, Fetched, Http, NetError, is_loopback_url};

mod auth;
pub mod credentials;
pub mod hosts;

pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a layer holding a proof CAR.
pub const CAR_MEDIA_TYPE: &str = "application/vnd.ipld.car";
/// Artifact type of ATProto signature artifacts (ATCR's design, and ours from `attach`).
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.atproto.signature.v1+json";

/// Why a registry exchange failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The network failed: never evidence about signatures.
    #[error("{0}")]
    Network(#[from] NetError),
    #[error("{0}")]
    Credentials(#[from] CredentialError),
    /// Authentication was needed and failed (missing or refused credentials, bad challenge).
    #[error("{0}")]
    Auth(String),
    /// The registry answered something unusable (status, body, a digest that does not match).
    #[error("{0}")]
    Answer(String),
    /// Every endpoint failed: each one's failure, in containerd's order.
    #[error("{}", .0.iter().map(|(origin, e)| format!("{origin}: {e}")).collect::<Vec<_>>().join("; "))]
    Endpoints(Vec<(String, RegistryError)>),
    #[error("no endpoint for {host} can {capability}")]
    NoEndpoint { host: String, capability: String },
    #[error("offline: a tag cannot be resolved without the registry; pass IMAGE@sha256:…")]
    Offline,
}

fn answer(message: impl Into<String>) -> RegistryError {
    RegistryError::Answer(message.into())
}

impl RegistryError {
    /// The network failure this error amounts to, if it is one: a failed exchange, or every
    /// endpoint failing so (a deadline among them wins: it is what ran out). Never evidence
    /// about the image.
    pub fn network(&self) -> Option<&NetError> {
        match self {
            RegistryError::Network(e) => Some(e),
            RegistryError::Endpoints(all) if !all.is_empty() => {
                let failures: Option<Vec<&NetError>> = all.iter().map(|(_, e)| e.network()).collect();
                let failures = failures?;
                failures.iter().find(|e| **e == &NetError::Deadline).or(failures.first()).copied()
            }
            _ => None,
        }
    }
}

/// The node's registry files as one decision sees them: hosts.toml per registry host and the
/// docker config, each read once (on first use) and kept for the decision; credential helpers
/// are asked once per host, within the decision's deadline.
pub struct Files {
    hosts_dir: PathBuf,
    /// The docker config in effect, and whether it was named explicitly (then it must exist).
    docker_config: Option<(PathBuf, bool)>,
    deadline: Deadline,
    notes: Notes,
    endpoints: Mutex<HashMap<String, Vec<Endpoint>>>,
    docker: OnceLock<Result<Option<Vec<u8>>, CredentialError>>,
    credentials: Mutex<HashMap<String, Result<Option<Credential>, CredentialError>>>,
}

impl Files {
    /// The files `config` names, for a decision due by `deadline`, problems said in `notes`.
    pub fn new(config: &Config, deadline: Deadline, notes: Notes) -> Files {
        Files {
            hosts_dir: config.containerd_hosts_dir.clone(),
            docker_config: credentials::config_path(config),
            deadline,
            notes,
            endpoints: Mutex::default(),
            docker: OnceLock::new(),
            credentials: Mutex::default(),
        }
    }

    /// The endpoints for `host` that can do `capability`, in containerd's order.
    pub fn endpoints(&self, host: &str, capability: &str) -> Vec<Endpoint> {
        let mut known = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = known.entry(host.to_owned()).or_insert_with(|| {
            let (list, notes) = hosts::endpoints(&self.hosts_dir, host);
            for note in notes {
                self.notes.warn(note);
            }
            list
        });
        list.iter().filter(|e| e.can(capability)).cloned().collect()
    }

    /// Credentials for `host` (canonical), if any are configured; a helper is run at most once
    /// per host and never past the deadline.
    pub fn credential(&self, host: &str) -> Result<Option<Credential>, CredentialError> {
        if let Some(known) = self.credentials.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(host) {
            return known.clone();
        }
        let found = self.docker_config_bytes().and_then(|bytes| match bytes {
            Some(bytes) => credentials::lookup(bytes, self.docker_path(), host, self.deadline),
            None => Ok(None),
        });
        self.credentials.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(host.to_owned(), found.clone());
        found
    }

    fn docker_path(&self) -> &std::path::Path {
        self.docker_config.as_ref().map_or(std::path::Path::new(""), |(p, _)| p.as_path())
    }

    fn docker_config_bytes(&self) -> Result<Option<&[u8]>, CredentialError> {
        let read = self.docker.get_or_init(|| {
            let Some((path, explicit)) = &self.docker_config else { return Ok(None) };
            match crate::fsio::read_capped(path, NodeLimits::DEFAULT.config_file) {
                Ok(b) => Ok(Some(b)),
                // No docker config: anonymous, as docker would be.
                Err(_) if !explicit => Ok(None),
                Err(e) => Err(CredentialError::Config { path: path.display().to_string(), problem: e.problem }),
            }
        });
        match read {
            Ok(bytes) => Ok(bytes.as_deref()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A session with one registry host: endpoints, credentials, and a token once obtained.
pub struct Session<'a> {
    files: &'a Files,
    http: &'a Http,
    host: String,
    repository: String,
    /// Authorization per host asked (canonical host of the endpoint).
    authorization: std::cell::RefCell<std::collections::HashMap<String, String>>,
    /// The endpoint that answered last (relative upload locations resolve against it).
    last_endpoint: std::cell::RefCell<Option<Endpoint>>,
}

impl<'a> Session<'a> {
    pub fn new(files: &'a Files, http: &'a Http, image: &ImageRef) -> Session<'a> {
        Session { files, http, host: image.host.clone(), repository: image.path.clone(), authorization: Default::default(), last_endpoint: Default::default() }
    }

    fn url(&self, endpoint: &Endpoint, tail: &str) -> String {
        endpoint.url(tail)
    }

    /// Sends a request to the first endpoint that answers, handling auth challenges.
    pub fn request(
        &self,
        capability: &str,
        method: &str,
        tail: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        limit: usize,
    ) -> Result<Fetched, RegistryError> {
        // Every endpoint's failure is reported: a broken mirror must not hide behind its upstream.
        let mut failures: Vec<(String, RegistryError)> = Vec::new();
        for endpoint in self.files.endpoints(&self.host, capability) {
            let client = self.http.with_tls(&endpoint.tls);
            let url = self.url(&endpoint, tail);
            let mut all: Vec<(&str, String)> = headers.to_vec();
            all.extend(endpoint.headers.iter().map(|(k, v)| (k.as_str(), v.clone())));
            match self.send_with_auth(&client, method, &url, &all, body, limit) {
                Ok(response) => {
                    *self.last_endpoint.borrow_mut() = Some(endpoint);
                    return Ok(response);
                }
                Err(e) => failures.push((endpoint.origin.clone(), e)),
            }
        }
        if failures.is_empty() {
            return Err(RegistryError::NoEndpoint { host: self.host.clone(), capability: capability.to_owned() });
        }
        Err(RegistryError::Endpoints(failures))
    }

    /// Uploads a blob (monolithic upload); returns its digest.
    pub fn push_blob(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = sha256_digest(bytes);
        let start = self.request("push", "POST", &format!("{}/blobs/uploads/", self.repository), &[], Some(&[]), NodeLimits::DEFAULT.registry_small)?;
        if start.status != 202 {
            return Err(answer(format!("blob upload refused: HTTP {}", start.status)));
        }
        let location = start.header("location").ok_or_else(|| answer("blob upload without a location"))?.to_owned();
        let endpoint = self.last_endpoint.borrow().clone().ok_or_else(|| answer("no endpoint answered"))?;
        let url = if location.starts_with("http://") || location.starts_with("https://") { location } else { format!("{}{location}", endpoint.origin) };
        let separator = if url.contains('?') { '&' } else { '?' };
        let client = self.http.with_tls(&endpoint.tls);
        let done = self.send_with_auth(
            &client,
            "PUT",
            &format!("{url}{separator}digest={digest}"),
            &[("content-type", "application/octet-stream".into())],
            Some(bytes),
            NodeLimits::DEFAULT.registry_small,
        )?;
        if done.status != 201 {
            return Err(answer(format!("blob upload failed: HTTP {}", done.status)));
        }
        Ok(digest)
    }

    /// Puts a manifest under `reference` (a tag or its digest); returns its digest.
    pub fn push_manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) -> Result<String, RegistryError> {
        let response = self.request(
            "push",
            "PUT",
            &format!("{}/manifests/{reference}", self.repository),
            &[("content-type", media_type.into())],
            Some(bytes),
            NodeLimits::DEFAULT.registry_small,
        )?;
        if response.status != 201 {
            return Err(answer(format!(
                "manifest push failed: HTTP {}: {}",
                response.status,
                crate::limits::short(&String::from_utf8_lossy(&response.body), 200)
            )));
        }
        Ok(sha256_digest(bytes))
    }

    /// True when the registry serves the referrers API (it then indexes `subject` itself).
    pub fn has_referrers_api(&self, digest: &str) -> bool {
        self.request(
            "pull",
            "GET",
            &format!("{}/referrers/{digest}", self.repository),
            &[("accept", "application/vnd.oci.image.index.v1+json".into())],
            None,
            NodeLimits::DEFAULT.manifest,
        )
        .is_ok_and(|r| r.is_success())
    }

    /// The index under the `sha256-<hex>` fallback tag, if any.
    pub fn fallback_index(&self, digest: &str) -> Result<Option<Json>, RegistryError> {
        let tag = digest.replace(':', "-");
        let response = self.request(
            "pull",
            "GET",
            &format!("{}/manifests/{tag}", self.repository),
            &[("accept", "application/vnd.oci.image.index.v1+json".into())],
            None,
            NodeLimits::DEFAULT.manifest,
        )?;
        match response.status {
            200 => serde_json::from_slice(&response.body).map(Some).map_err(|e| answer(format!("fallback index is not JSON: {e}"))),
            404 => Ok(None),
            status => Err(answer(format!("fallback tag {tag}: HTTP {status}"))),
        }
    }

    /// The manifest under `tag` (of media type `accept`) and its digest, or `None` when the tag
    /// does not exist (404). Down or rate-limited registries are network errors. Reading a tag
    /// is resolving it, as containerd means it: only endpoints with the `resolve` capability are
    /// asked (a pull-through mirror given `pull` alone serves blobs, never a stale tag).
    pub fn tagged(&self, tag: &str, accept: &str) -> Result<Option<(String, Vec<u8>)>, RegistryError> {
        let response =
            self.request("resolve", "GET", &format!("{}/manifests/{tag}", self.repository), &[("accept", accept.into())], None, NodeLimits::DEFAULT.manifest)?;
        match response.status {
            200 => Ok(Some((sha256_digest(&response.body), response.body))),
            404 => Ok(None),
            status @ (429 | 500..=599) => Err(RegistryError::Network(NetError::Io(format!("registry answered HTTP {status}")))),
            status => Err(answer(format!("{}:{tag}: HTTP {status}", self.repository))),
        }
    }

    /// The digest a tag points to (Docker-Content-Digest, else the hash of the manifest).
    pub fn resolve(&self, tag: &str) -> Result<String, RegistryError> {
        let tail = format!("{}/manifests/{tag}", self.repository);
        let response = self.request("resolve", "GET", &tail, &[("accept", MANIFEST_ACCEPT.into())], None, NodeLimits::DEFAULT.manifest)?;
        match response.status {
            200 => {
                let computed = sha256_digest(&response.body);
                if let Some(header) = response.header("docker-content-digest")
                    && header != computed
                {
                    return Err(answer(format!("registry says {} but the manifest hashes to {computed}", crate::limits::short(header, 80))));
                }
                Ok(computed)
            }
            404 => Err(answer(format!("{}:{tag} not found", self.repository))),
            // The registry is down or rate-limits us: its trouble, not the image's.
            status @ (429 | 500..=599) => Err(RegistryError::Network(NetError::Io(format!("registry answered HTTP {status}")))),
            status => Err(answer(format!("registry answered HTTP {status}"))),
        }
    }

    /// A manifest by digest, checked against the digest.
    pub fn manifest(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let response = self.request(
            "pull",
            "GET",
            &format!("{}/manifests/{digest}", self.repository),
            &[("accept", MANIFEST_ACCEPT.into())],
            None,
            NodeLimits::DEFAULT.manifest,
        )?;
        match response.status {
            200 => {
                let computed = sha256_digest(&response.body);
                if computed != digest {
                    return Err(answer(format!("manifest {digest} hashes to {computed}")));
                }
                Ok(Some(response.body))
            }
            404 => Ok(None),
            status => Err(answer(format!("registry answered HTTP {status}"))),
        }
    }

    /// A blob by digest (capped), checked against the digest.
    pub fn blob(&self, digest: &str, limit: usize) -> Result<Vec<u8>, RegistryError> {
        let tail = format!("{}/blobs/{digest}", self.repository);
        let mut response = self.request("pull", "GET", &tail, &[], None, limit)?;
        // Registries may redirect blob downloads to storage on another host (allowed: the digest is checked).
        for _ in 0..3 {
            if !matches!(response.status, 301 | 302 | 303 | 307 | 308) {
                break;
            }
            let location = response.header("location").ok_or_else(|| answer("redirect without a location"))?.to_owned();
            if !(location.starts_with("https://") || is_loopback_url(&location)) {
                return Err(answer(format!("refusing blob redirect to {location:?}")));
            }
            response = self.http.get(&location, &[], limit)?;
        }
        if response.status != 200 {
            return Err(answer(format!("blob {digest}: HTTP {}", response.status)));
        }
        let computed = sha256_digest(&response.body);
        if computed != digest {
            return Err(answer(format!("blob {digest} hashes to {computed}")));
        }
        Ok(response.body)
    }

    /// Referrers of `digest` with `artifact_type`: the referrers API when the registry has it
    /// (2xx), else the `sha256-<hex>` tag holding an index (on 404); any other answer fails.
    pub fn referrers(&self, digest: &str, artifact_type: &str) -> Result<Vec<Json>, RegistryError> {
        let tail = format!("{}/referrers/{digest}?artifactType={}", self.repository, crate::lookup::atproto::percent_encode(artifact_type));
        let response =
            self.request("pull", "GET", &tail, &[("accept", "application/vnd.oci.image.index.v1+json".into())], None, NodeLimits::DEFAULT.manifest)?;
        let index: Json = match response.status {
            200..=299 => serde_json::from_slice(&response.body).map_err(|e| answer(format!("referrers index is not JSON: {e}")))?,
            404 => match self.fallback_index(digest)? {
                Some(index) => index,
                None => return Ok(Vec::new()),
            },
            status => return Err(answer(format!("referrers API answered HTTP {status}"))),
        };
        Ok(index
            .get("manifests")
            .and_then(Json::as_array)
            .map(|m| {
                m.iter()
                    .filter(|d| d.get("artifactType").and_then(Json::as_str) == Some(artifact_type))
                    .take(NodeLimits::DEFAULT.referrers_listed)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The OCI digest of `bytes` (`sha256:<hex>`).
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", atproto_sig_core::encoding::hex_encode(&Sha256::digest(bytes)))
}

/// Resolves the tag of `image` to a digest (for `verify` on a tag).
pub fn resolve_tag(config: &Config, files: &Files, image: &ImageRef, http: &Http) -> Result<String, RegistryError> {
    if config.offline {
        return Err(RegistryError::Offline);
    }
    let session = Session::new(files, http, image);
    session.resolve(image.tag.as_deref().unwrap_or("latest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_toml_mirrors_first_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("registry.example.com")).unwrap();
        std::fs::write(
            dir.path().join("registry.example.com/hosts.toml"),
            "server = \"https://registry.example.com\"\n[host.\"http://127.0.0.1:5002\"]\ncapabilities = [\"pull\", \"resolve\"]\n[host.\"http://127.0.0.1:5001\"]\ncapabilities = [\"pull\", \"resolve\"]\nskip_verify = true\n[host.\"https://push-only.example\"]\ncapabilities = [\"push\"]\n",
        )
        .unwrap();
        let config = Config { containerd_hosts_dir: dir.path().to_owned(), ..Config::default() };
        let files = Files::new(&config, Deadline::after(std::time::Duration::from_secs(1)), Notes::collect());
        let endpoints = |host: &str, capability: &str| files.endpoints(host, capability);
        let list = endpoints("registry.example.com", "pull");
        assert_eq!(
            list.iter().map(|e| e.origin.as_str()).collect::<Vec<_>>(),
            ["http://127.0.0.1:5002", "http://127.0.0.1:5001", "https://registry.example.com"]
        );
        assert!(list[1].tls.skip_verify);
        assert_eq!(endpoints("other.example", "pull")[0].origin, "https://other.example");
        assert_eq!(endpoints("127.0.0.1:5000", "pull")[0].origin, "http://127.0.0.1:5000");
    }

    /// hosts.toml and the docker config are read once per decision (a `Files`), not on every
    /// request: what changes on disk mid-decision is seen by the next decision.
    #[test]
    fn node_files_are_read_once_per_decision() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("mirror.example");
        std::fs::create_dir_all(&hosts).unwrap();
        std::fs::write(hosts.join("hosts.toml"), "server = \"https://one.example\"\n").unwrap();
        let docker = dir.path().join("docker.json");
        std::fs::write(&docker, r#"{"auths": {"mirror.example": {"auth": "dTpw"}}}"#).unwrap();
        let config = Config { containerd_hosts_dir: dir.path().to_owned(), docker_config: Some(docker.clone()), ..Config::default() };
        let files = Files::new(&config, Deadline::after(std::time::Duration::from_secs(1)), Notes::collect());
        assert_eq!(files.endpoints("mirror.example", "pull")[0].origin, "https://one.example");
        assert!(files.credential("mirror.example").unwrap().is_some());
        std::fs::write(hosts.join("hosts.toml"), "server = \"https://two.example\"\n").unwrap();
        std::fs::write(&docker, "{}").unwrap();
        assert_eq!(files.endpoints("mirror.example", "pull")[0].origin, "https://one.example", "read once");
        assert!(files.credential("mirror.example").unwrap().is_some(), "read once");
        let next = Files::new(&config, Deadline::after(std::time::Duration::from_secs(1)), Notes::collect());
        assert_eq!(next.endpoints("mirror.example", "pull")[0].origin, "https://two.example", "the next decision reads again");
        assert!(next.credential("mirror.example").unwrap().is_none());
    }
}
