//! What a coverage target holds: the repositories and tags a registry lists under a namespace,
//! the io.atcr.manifest records of an identity, or the images of running Pods.

use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::reference::{ImageRef, canonical_host};
use atproto_sig_core::syntax::{is_valid_did, is_valid_handle};
use serde_json::Value as Json;

use super::{Item, MAX_IMAGES, pods};
use crate::engine::Session;
use crate::limits::NodeLimits;
use crate::lookup::atproto;
use crate::lookup::registry;

/// Most catalog or tag-list pages read per listing.
const MAX_PAGES: usize = 100;

/// What to report on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `host/prefix/`: every repository under the prefix, every tag.
    Namespace { host: String, prefix: String },
    /// A DID or a handle: every io.atcr.manifest record, as images on `registry`.
    Identity(String),
    /// A Pod list (`kubectl get pods -A -o json`).
    Cluster(Vec<u8>),
}

impl Target {
    /// `host/prefix/` (a trailing slash), a DID, or a handle.
    pub fn parse(text: &str) -> Result<Target, String> {
        if is_valid_did(text) || (is_valid_handle(text) && !text.contains('/')) {
            return Ok(Target::Identity(text.to_ascii_lowercase()));
        }
        if let Some(namespace) = text.strip_suffix('/') {
            let (host, prefix) = namespace.split_once('/').unwrap_or((namespace, ""));
            let host = canonical_host(host).map_err(|e| format!("{text:?}: {e}"))?;
            let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
            return Ok(Target::Namespace { host, prefix });
        }
        Err(format!(
            "{text:?} is not a target: give a registry namespace ending in `/` (atcr.io/alice.example.com/), a DID or handle, or `cluster` with --pods FILE (kubectl get pods -A -o json)"
        ))
    }
}

/// The items of `target`, at most [`MAX_IMAGES`] (the second value says whether it was cut).
pub fn list(target: &Target, session: &Session<'_>, registry_host: &str) -> Result<(Vec<Item>, bool), String> {
    let mut items = match target {
        Target::Cluster(json) => pods::images(json)?,
        Target::Namespace { host, prefix } => namespace(session, host, prefix)?,
        Target::Identity(identity) => records(session, identity, registry_host)?,
    };
    let cut = items.len() > MAX_IMAGES;
    items.truncate(MAX_IMAGES);
    Ok((items, cut))
}

fn namespace(session: &Session<'_>, host: &str, prefix: &str) -> Result<Vec<Item>, String> {
    let Some(http) = session.registry.as_ref() else { return Err("the registry cannot be reached from here".into()) };
    let image = |path: &str| ImageRef { host: host.to_owned(), path: path.to_owned(), tag: None, digest: None };
    let catalog = registry::Session::new(&session.files, http, &image(prefix.trim_end_matches('/')));
    let mut repositories = Vec::new();
    pages(&catalog, "_catalog?n=100", "repositories", |name| {
        if name.starts_with(prefix) {
            repositories.push(name.to_owned());
        }
        repositories.len() <= MAX_IMAGES
    })
    .map_err(|e| format!("{host}: the catalog: {e}"))?;
    let mut items = Vec::new();
    for repository in repositories {
        let tags = registry::Session::new(&session.files, http, &image(&repository));
        let mut names = Vec::new();
        pages(&tags, &format!("{repository}/tags/list?n=100"), "tags", |tag| {
            names.push(tag.to_owned());
            items.len() + names.len() <= MAX_IMAGES
        })
        .map_err(|e| format!("{host}/{repository}: the tag list: {e}"))?;
        for tag in names {
            items.push(Item { image: format!("{host}/{repository}:{tag}"), found: vec![format!("tag {tag}")], signed_by: None });
        }
        if items.len() > MAX_IMAGES {
            break;
        }
    }
    Ok(items)
}

/// Reads a paginated registry listing (`Link: <…>; rel="next"`), giving each name of `field`
/// to `each` until it returns false or the pages run out.
fn pages(session: &registry::Session<'_>, first: &str, field: &str, mut each: impl FnMut(&str) -> bool) -> Result<(), String> {
    let mut tail = first.to_owned();
    for _ in 0..MAX_PAGES {
        let response =
            session.request("pull", "GET", &tail, &[("accept", "application/json".into())], None, NodeLimits::DEFAULT.list_page).map_err(|e| e.to_string())?;
        match response.status {
            200 => {}
            401 | 403 => return Err(format!("HTTP {}: not allowed to list (credentials in the docker config or hosts.toml)", response.status)),
            404 => return Ok(()),
            status => return Err(format!("HTTP {status}")),
        }
        let json: Json = serde_json::from_slice(&response.body).map_err(|e| format!("not JSON: {e}"))?;
        for name in json.get(field).and_then(Json::as_array).into_iter().flatten().filter_map(Json::as_str) {
            if !each(name) {
                return Ok(());
            }
        }
        // The next page's path after the API root (`/v2/`), as the registry gives it.
        let next = response
            .header("link")
            .and_then(|link| link.split(';').next())
            .map(|url| url.trim().trim_start_matches('<').trim_end_matches('>'))
            .and_then(|url| url.split_once("/v2/").map(|(_, tail)| tail.to_owned()));
        match next {
            Some(next) if next != tail => tail = next,
            _ => return Ok(()),
        }
    }
    Ok(())
}

fn records(session: &Session<'_>, identity: &str, registry_host: &str) -> Result<Vec<Item>, String> {
    let Some(http) = session.http.as_ref() else { return Err("listing an identity's records needs the network (this node is offline)".into()) };
    let did = if is_valid_did(identity) {
        identity.to_owned()
    } else {
        atproto::resolve_handle(http, session.config.handle_resolver.as_deref(), &*session.dns, identity).map_err(|e| format!("{identity}: {e}"))?
    };
    let (document, _) = session.document(&did).map_err(|v| v.message)?;
    let pds = document.pds.as_deref().ok_or_else(|| format!("{did} names no PDS"))?;
    let records = atproto::list_manifest_images(http, pds, &did, MANIFEST_COLLECTION).map_err(|e| format!("{did}: the record list: {e}"))?;
    // Paths name the identity by handle, as atcr.io shows it (a DID is not a valid path
    // component); the engine checks the handle both ways. A record whose fields make no image
    // reference is still a row (the engine says invalid-request).
    let in_path = if is_valid_did(identity) { document.handle.clone().unwrap_or_else(|| identity.to_owned()) } else { identity.to_owned() };
    let identity = in_path.as_str();
    Ok(records
        .into_iter()
        .map(|(rkey, repository, digest)| Item {
            image: format!("{registry_host}/{identity}/{repository}@{digest}"),
            found: vec![format!("at://{did}/{MANIFEST_COLLECTION}/{rkey}")],
            signed_by: Some(did.clone()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_namespace_identity_or_refused() {
        assert_eq!(Target::parse("ATCR.io:443/alice.test/"), Ok(Target::Namespace { host: "atcr.io".into(), prefix: "alice.test/".into() }));
        assert_eq!(Target::parse("127.0.0.1:5000/"), Ok(Target::Namespace { host: "127.0.0.1:5000".into(), prefix: String::new() }));
        assert_eq!(Target::parse("did:plc:o2fexybrfj2d5goptvxkcupy"), Ok(Target::Identity("did:plc:o2fexybrfj2d5goptvxkcupy".into())));
        assert_eq!(Target::parse("Alice.Test"), Ok(Target::Identity("alice.test".into())));
        assert!(Target::parse("atcr.io/alice.test/app").unwrap_err().contains("ending in `/`"));
    }
}
