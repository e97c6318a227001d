//! The Pods of a cluster from its API server, as a kubeconfig describes it: the current (or a
//! named) context's server, CA, and credentials (a bearer token, or a client certificate and
//! key; inline `*-data` or files). Read with the policy's spanned YAML reader; every list is
//! paginated (`limit`/`continue`) and bounded.

use std::path::{Path, PathBuf};

use atproto_sig_core::yaml::{self, Kind, Node};
use base64::Engine;
use serde_json::Value as Json;

use super::pods::MAX_PODS_BYTES;
use crate::remote::{Http, Tls};

/// Largest kubeconfig read.
const MAX_KUBECONFIG_BYTES: usize = 1 << 20;
/// Pods per page, and most pages (100,000 Pods).
const PAGE: usize = 100;
const MAX_PAGES: usize = 1_000;

fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.kind {
        Kind::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
        _ => None,
    }
}

fn text<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    get(node, key).and_then(Node::as_str).filter(|s| !s.is_empty())
}

/// The entry named `name` of a kubeconfig list (`clusters`, `users`, `contexts`), its inner
/// mapping (`cluster`, `user`, `context`).
fn named<'n>(root: &'n Node, list: &str, inner: &str, name: &str) -> Result<&'n Node, String> {
    let Some(Node { kind: Kind::Seq(items), .. }) = get(root, list) else { return Err(format!("no `{list}:` list")) };
    items.iter().find(|i| text(i, "name") == Some(name)).and_then(|i| get(i, inner)).ok_or_else(|| format!("no {inner} named {name:?} in `{list}:`"))
}

/// Where and how to reach the API server.
pub struct ApiServer {
    pub server: String,
    pub tls: Tls,
    pub token: Option<String>,
    /// Inline `*-data` written out for the TLS layer (removed when this is dropped).
    _files: tempfile::TempDir,
}

/// Reads `path` (a kubeconfig) for `context` (else its `current-context`).
pub fn api_server(path: &Path, context: Option<&str>) -> Result<ApiServer, String> {
    let bytes = crate::fsio::read_capped(path, MAX_KUBECONFIG_BYTES).map_err(|e| e.to_string())?;
    let source = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let (root, _) = yaml::parse(&source).map_err(|e| format!("{}: {}", path.display(), e.first().map(ToString::to_string).unwrap_or_default()))?;
    let context_name = context.or_else(|| text(&root, "current-context")).ok_or("no context: give --context or set current-context")?;
    let context = named(&root, "contexts", "context", context_name)?;
    let cluster = named(&root, "clusters", "cluster", text(context, "cluster").ok_or("the context names no cluster")?)?;
    let user = match text(context, "user") {
        Some(name) => Some(named(&root, "users", "user", name)?),
        None => None,
    };
    let server = text(cluster, "server").ok_or("the cluster has no server")?.trim_end_matches('/').to_owned();
    // Credentials in the URL (`https://user:secret@host`) are never sent that way nor shown.
    if server.split_once("://").is_some_and(|(_, rest)| rest.split('/').next().is_some_and(|authority| authority.contains('@'))) {
        return Err("the cluster's server URL carries credentials (user@host): give them as a token or client certificate instead".into());
    }
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
    let files = tempfile::tempdir().map_err(|e| e.to_string())?;
    // A file path (relative to the kubeconfig, as kubectl reads it), or inline base64 data.
    let material = |node: &Node, file_key: &str, data_key: &str| -> Result<Option<PathBuf>, String> {
        if let Some(data) = text(node, data_key) {
            let bytes = base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| format!("{data_key}: not base64: {e}"))?;
            let out = files.path().join(data_key);
            std::fs::write(&out, bytes).map_err(|e| e.to_string())?;
            return Ok(Some(out));
        }
        Ok(text(node, file_key).map(|f| dir.join(f)))
    };
    let mut tls = Tls { skip_verify: get(cluster, "insecure-skip-tls-verify").is_some_and(|n| n.kind == Kind::Bool(true)), ..Tls::default() };
    tls.ca_files.extend(material(cluster, "certificate-authority", "certificate-authority-data")?);
    let mut token = None;
    if let Some(user) = user {
        token = text(user, "token").map(str::to_owned);
        if token.is_none()
            && let Some(file) = text(user, "tokenFile")
        {
            let bytes = crate::fsio::read_capped(&dir.join(file), 64 << 10).map_err(|e| e.to_string())?;
            token = Some(String::from_utf8_lossy(&bytes).trim().to_owned());
        }
        if let Some(cert) = material(user, "client-certificate", "client-certificate-data")? {
            tls.client_pairs.push((cert, material(user, "client-key", "client-key-data")?));
        }
        if get(user, "exec").is_some() || get(user, "auth-provider").is_some() {
            return Err("the kubeconfig's user authenticates with an exec plugin or auth provider, which this command does not run: pipe `kubectl get pods -A -o json` into `coverage cluster --pods -` instead".into());
        }
    }
    Ok(ApiServer { server, tls, token, _files: files })
}

/// Every Pod the credentials may list, as one `List` (for [`super::pods::images`]).
pub fn list_pods(http: &Http, api: &ApiServer) -> Result<Vec<u8>, String> {
    let client = http.with_tls(&api.tls);
    let headers: Vec<(&str, String)> = api.token.iter().map(|t| ("authorization", format!("Bearer {t}"))).collect();
    let mut items: Vec<Json> = Vec::new();
    let mut total = 0usize;
    let mut next: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut url = format!("{}/api/v1/pods?limit={PAGE}", api.server);
        if let Some(token) = &next {
            url.push_str("&continue=");
            url.push_str(&crate::lookup::atproto::percent_encode(token));
        }
        let response = client.get(&url, &headers, MAX_PODS_BYTES - total.min(MAX_PODS_BYTES)).map_err(|e| format!("{}: {e}", api.server))?;
        match response.status {
            200 => {}
            401 | 403 => return Err(format!("{}: HTTP {}: these credentials may not list Pods in every namespace", api.server, response.status)),
            status => return Err(format!("{}: listing Pods answered HTTP {status}", api.server)),
        }
        total += response.body.len();
        let page: Json = serde_json::from_slice(&response.body).map_err(|e| format!("{}: not a Pod list: {e}", api.server))?;
        items.extend(page.get("items").and_then(Json::as_array).cloned().unwrap_or_default());
        next = page.pointer("/metadata/continue").and_then(Json::as_str).filter(|c| !c.is_empty()).map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    Ok(serde_json::json!({"kind": "List", "items": items}).to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_carrying_credentials_is_refused_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
             clusters: [{name: c, cluster: {server: \"https://admin:hunter2@127.0.0.1:6443\"}}]\nusers: [{name: u, user: {token: t0ken}}]\n",
        )
        .unwrap();
        let error = api_server(&path, None).err().unwrap();
        assert!(error.contains("carries credentials") && !error.contains("hunter2"), "{error}");
    }
}
