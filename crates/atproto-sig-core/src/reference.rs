//! Image references in one canonical spelling, so that every comparison (policy scopes,
//! ATProto-registry detection, repository checks, cache keys, hosts.toml lookup) sees one name
//! per registry and repository.
//!
//! Parsing follows the OCI distribution reference grammar (`distribution/reference`, which
//! containerd and Docker use) and is strict: anything it refuses is refused here, never
//! defaulted. Normalization then folds the spellings that reach the same place:
//! - the registry host is lowercased (DNS names are case-insensitive), an IPv6 literal is
//!   written in its compressed form, and `:443` (the port every registry client uses for
//!   https) is dropped;
//! - `index.docker.io` and `registry-1.docker.io` (Docker Hub's API host, where containerd
//!   sends `docker.io` requests) are `docker.io`;
//! - a single-component Docker Hub repository gets `library/` (`nginx`, `docker.io/nginx`).
//!
//! Policies match on `host/path` only: tags and digests are mutable or irrelevant to scope.

use std::fmt;
use std::net::Ipv6Addr;

/// Longest `host/path` the distribution grammar accepts.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the distribution grammar accepts.
pub const MAX_TAG_LEN: usize = 128;

/// A parsed, canonical image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host in canonical form: lowercase, `:port` unless 443, `docker.io` for Docker Hub.
    pub host: String,
    /// Repository path (`library/nginx`, `alice.example.com/myapp`).
    pub path: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest (`sha256:…`), if given.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceError(pub String);

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReferenceError {}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`: one repository path component.
fn is_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().copied().is_some_and(alnum) || !bytes.last().copied().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__`, or any number of `-`.
        let run = bytes.get(i..).unwrap_or_default().iter().take_while(|&&x| !alnum(x)).count();
        let sep = bytes.get(i..i + run).unwrap_or_default();
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
        i += run;
    }
    true
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`: one DNS label of a registry host.
fn is_domain_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Why text is not a registry host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub &'static str);

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for HostError {}

/// The canonical spelling of a registry host (`name[:port]` or `[ipv6][:port]`), or why not.
pub fn canonical_host(host: &str) -> Result<String, HostError> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']').ok_or(HostError("an IPv6 literal lacks its closing ']'"))?;
        // The grammar admits hex digits and ':' only: no zone (`%eth0`), no embedded IPv4.
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(HostError("the IPv6 literal holds characters other than hex digits and ':'"));
        }
        let parsed: Ipv6Addr = addr.parse().map_err(|_| HostError("the IPv6 literal is malformed"))?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').ok_or(HostError("junk after the IPv6 literal"))?),
        };
        // An IPv4-mapped address (`::ffff:7f00:1`) is the IPv4 host itself: Go's resolver, so
        // containerd, dials 127.0.0.1 for it, so it is one registry with one spelling.
        let name = match parsed.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{parsed}]"),
        };
        (name, port)
    } else {
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        if name.is_empty() || !name.split('.').all(is_domain_label) {
            return Err(HostError("the registry host is not a DNS name, IPv4 address or [IPv6] literal"));
        }
        (name.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            let number: u16 = p
                .parse()
                .ok()
                .filter(|n| *n > 0 && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(HostError("the port is not a number from 1 to 65535"))?;
            (number != 443).then_some(number)
        }
    };
    let host = match port {
        Some(p) => format!("{name}:{p}"),
        None => name,
    };
    Ok(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    })
}

/// Docker's rule: the first component is a registry host when it has a '.', a ':', is
/// `localhost`, or holds an uppercase letter (repository paths are lowercase).
fn looks_like_host(first: &str) -> bool {
    first.contains(['.', ':']) || first.starts_with('[') || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// The canonical form of a policy scope: its registry host and (for Docker Hub) its
/// `library/` prefix are normalized like references, so a scope written `atcr.io:443/*` or
/// `registry-1.docker.io/library/*` matches what references normalize to. Globs are untouched.
pub fn canonical_scope(scope: &str) -> String {
    let Some((first, rest)) = scope.split_once('/') else { return scope.to_owned() };
    if first.contains('*') || !looks_like_host(first) {
        return scope.to_owned();
    }
    let Ok(host) = canonical_host(first) else { return scope.to_owned() };
    if host == "docker.io" && !rest.contains('/') && !rest.contains('*') && !rest.is_empty() {
        return format!("docker.io/library/{rest}");
    }
    format!("{host}/{rest}")
}

impl ImageRef {
    /// Parses a reference such as `nginx`, `atcr.io/alice.test/app:v1` or
    /// `127.0.0.1:5000/app@sha256:…` and returns its canonical form.
    pub fn parse(text: &str) -> Result<ImageRef, ReferenceError> {
        let bad = |why: &str| ReferenceError(format!("{:?} is not an image reference: {why}", text.chars().take(256).collect::<String>()));
        if text.is_empty() || text.len() > MAX_NAME_LEN + MAX_TAG_LEN + 80 {
            return Err(bad("empty or too long"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                if !crate::verify::is_valid_digest(digest) {
                    return Err(bad("the digest is not sha256:<64 lowercase hex>"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        // A tag is a ':' after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest.get(last_slash..).and_then(|tail| tail.rfind(':')).map(|i| i + last_slash) {
            Some(colon) => (rest.get(..colon).unwrap_or_default(), rest.get(colon + 1..).map(str::to_owned)),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
            let ok = tag.len() <= MAX_TAG_LEN && tag.as_bytes().first().is_some_and(word) && tag.bytes().all(|b| word(&b) || b == b'.' || b == b'-');
            if !ok {
                return Err(bad("a tag is 1 to 128 letters, digits, '_', '.' or '-', and does not start with '.' or '-'"));
            }
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("the repository name is longer than 255 characters"));
        }
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("a 64-character hex string is an image ID, not a repository name"));
        }
        let (first, remainder) = name.split_once('/').unwrap_or((name, ""));
        let (host, path) = if !remainder.is_empty() && looks_like_host(first) {
            (canonical_host(first).map_err(|e| bad(e.0))?, remainder.to_owned())
        } else {
            ("docker.io".to_owned(), name.to_owned())
        };
        if !path.split('/').all(is_path_component) {
            return Err(bad("repository path components are lowercase letters and digits, joined by '.', '_', '__' or dashes"));
        }
        let path = if host == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
        Ok(ImageRef { host, path, tag, digest })
    }

    /// `host/path`: what policy scopes match.
    pub fn scope_name(&self) -> String {
        format!("{}/{}", self.host, self.path)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components_follow_the_grammar() {
        for ok in ["a", "docker---rules", "dock__er", "a.b", "a_b", "ubuntu-12.04-base", "0"] {
            assert!(is_path_component(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a___b", "a_.b", "a-.b", "_a", "A", "a b"] {
            assert!(!is_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_fold_to_one_spelling() {
        assert_eq!(canonical_host("Atcr.IO:443").unwrap(), "atcr.io");
        assert_eq!(canonical_host("registry-1.docker.io:443").unwrap(), "docker.io");
        assert_eq!(canonical_host("[0:0:0:0:0:0:0:1]:5000").unwrap(), "[::1]:5000");
        assert_eq!(canonical_host("localhost:5000").unwrap(), "localhost:5000");
        for bad in ["", "a..b", "-a.b", "a-.b", "a.b:", "a.b:0", "a.b:65536", "a.b:1x", "[fe80::1%eth0]", "[::1", "a.b.:5000", "[2001:db8::192.0.2.33]"] {
            assert!(canonical_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_fold_like_references() {
        assert_eq!(canonical_scope("atcr.io:443/*/prod-*"), "atcr.io/*/prod-*");
        assert_eq!(canonical_scope("registry-1.docker.io/library/*"), "docker.io/library/*");
        assert_eq!(canonical_scope("docker.io/nginx"), "docker.io/library/nginx");
        assert_eq!(canonical_scope("docker.io/*"), "docker.io/*");
        assert_eq!(canonical_scope("**"), "**");
        assert_eq!(canonical_scope("*/app"), "*/app");
    }
}
