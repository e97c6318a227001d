//! Image references, normalized the way Docker and containerd do: registry host (lowercased,
//! with port), repository path, tag and digest; `docker.io/library/` defaults for short names.
//! Policies match on `host/path` only: tags and digests are mutable or irrelevant to scope.

use std::fmt;

/// A parsed, normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host, lowercase, with `:port` if any (`docker.io` for Docker Hub).
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

fn is_path_component(c: &str) -> bool {
    // Docker: [a-z0-9]+ separated by '.', '_', '__' or '-'+. Checked loosely but strictly enough
    // that no '/', ':', '@', space or uppercase slips into a scope match.
    !c.is_empty()
        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn is_host(h: &str) -> bool {
    let (name, port) = match h.strip_prefix('[') {
        // IPv6 literal: [addr]:port
        Some(rest) => match rest.split_once(']') {
            Some((addr, tail)) => {
                if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                    return false;
                }
                ("ipv6", tail.strip_prefix(':'))
            }
            None => return false,
        },
        None => match h.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (h, None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && !name.is_empty()
        && name.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl ImageRef {
    /// Parses and normalizes a reference such as `nginx`, `atcr.io/alice.test/app:v1`,
    /// `127.0.0.1:5000/app@sha256:…`.
    pub fn parse(text: &str) -> Result<ImageRef, ReferenceError> {
        let bad = |why: &str| ReferenceError(format!("{:?} is not an image reference: {why}", text.chars().take(256).collect::<String>()));
        if text.is_empty() || text.len() > 4096 {
            return Err(bad("empty or too long"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                if !crate::verify::is_valid_digest(digest) {
                    return Err(bad("the digest is not sha256:<64 hex>"));
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
        if let Some(tag) = &tag
            && (tag.is_empty() || tag.len() > 128 || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return Err(bad("the tag may only hold letters, digits, '.', '_' and '-'"));
        }
        let (first, remainder) = name.split_once('/').unwrap_or((name, ""));
        let first_is_host = !remainder.is_empty()
            && (first.contains('.') || first.contains(':') || first.starts_with('[') || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase()));
        let (host, path) = if first_is_host {
            (first.to_ascii_lowercase(), remainder.to_owned())
        } else if remainder.is_empty() {
            ("docker.io".to_owned(), format!("library/{name}"))
        } else {
            ("docker.io".to_owned(), name.to_owned())
        };
        let host = if host == "index.docker.io" { "docker.io".to_owned() } else { host };
        if !is_host(&host) {
            return Err(bad("the registry host is malformed"));
        }
        if !path.split('/').all(is_path_component) {
            return Err(bad("repository path components must be lowercase letters, digits, '.', '_' or '-'"));
        }
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
    fn normalizes_like_docker() {
        let cases = [
            ("nginx", "docker.io/library/nginx", None),
            ("nginx:1.27", "docker.io/library/nginx", Some("1.27")),
            ("bitnami/redis", "docker.io/bitnami/redis", None),
            ("index.docker.io/library/nginx", "docker.io/library/nginx", None),
            ("localhost:5000/app:v1", "localhost:5000/app", Some("v1")),
            ("127.0.0.1:5000/myapp:v1", "127.0.0.1:5000/myapp", Some("v1")),
            ("Atcr.IO/alice.test/prod-api", "atcr.io/alice.test/prod-api", None),
            ("[::1]:5000/app", "[::1]:5000/app", None),
            ("atcr.io/did:plc:abc/app", "", None),
        ];
        for (input, scope, tag) in cases {
            match ImageRef::parse(input) {
                Ok(r) => {
                    assert_eq!(r.scope_name(), scope, "{input}");
                    assert_eq!(r.tag.as_deref(), tag, "{input}");
                }
                Err(e) => assert!(scope.is_empty(), "{input}: {e}"),
            }
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("atcr.io/alice.test/app:v1@{digest}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        for bad in ["", "UPPER/Case", "a//b", "app:", "app@sha256:12", "host:port:x/app", "a b"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
