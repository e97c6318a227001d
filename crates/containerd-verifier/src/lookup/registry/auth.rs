//! Registry authentication as containerd's authorizer does it: a 401 challenge answered with
//! Basic credentials or a Bearer token from the realm the challenge names; credentials and
//! tokens per host asked (a mirror never gets the upstream's), never printed.

use serde_json::Value as Json;

use super::{RegistryError, Session};
use crate::lookup::registry::credentials::Credential;
use crate::remote::{Fetched, Http, is_loopback_url};

/// The canonical registry host of an endpoint URL (`https://registry-1.docker.io/v2/…` is
/// `docker.io`), the key credentials are looked up by.
fn endpoint_host(url: &str) -> String {
    let authority = url.split("://").nth(1).unwrap_or(url).split(['/', '?']).next().unwrap_or_default();
    atproto_sig_core::reference::canonical_host(authority).unwrap_or_else(|_| authority.to_ascii_lowercase())
}

/// Parses `Bearer realm="…",service="…",scope="…"`.
fn parse_challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (quoted.get(..end)?.to_owned(), quoted.get(end + 1..)?.trim_start_matches([',', ' ']))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after.get(..end)?.trim().to_owned(), after.get(end..)?.trim_start_matches([',', ' ']))
        };
        params.push((key.trim().to_ascii_lowercase(), value));
        rest = tail.trim();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl Session<'_> {
    pub(super) fn send_with_auth(
        &self,
        http: &Http,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        limit: usize,
    ) -> Result<Fetched, RegistryError> {
        // Credentials and tokens belong to the host that is asked: a mirror never receives the
        // upstream's, and the upstream never a mirror's (as containerd's authorizer does it).
        let host = endpoint_host(url);
        let with_auth = |auth: &Option<String>| {
            let mut all: Vec<(&str, String)> = headers.to_vec();
            if let Some(a) = auth {
                all.push(("authorization", a.clone()));
            }
            http.send(method, url, &all, body, limit)
        };
        let current = self.authorization.borrow().get(&host).cloned();
        let response = with_auth(&current)?;
        if response.status != 401 {
            return Ok(response);
        }
        let challenge = response.header("www-authenticate").and_then(parse_challenge);
        let credential = self.files.credential(&host)?;
        let authorization = match challenge {
            Some((scheme, params)) if scheme == "bearer" => format!("Bearer {}", self.bearer_token(http, &params, credential.as_ref())?),
            Some((scheme, _)) if scheme == "basic" => match credential {
                Some(Credential::Basic(b)) => format!("Basic {b}"),
                Some(Credential::IdentityToken(_)) => {
                    return Err(RegistryError::Auth(format!(
                        "{host} asks for Basic auth, but its credential is an identity token (for Bearer token services)"
                    )));
                }
                None => {
                    return Err(RegistryError::Auth(format!(
                        "{host} requires credentials: add them for {host} to the docker config (docker_config, $DOCKER_CONFIG or ~/.docker/config.json)"
                    )));
                }
            },
            _ => return Err(RegistryError::Auth(format!("{host} answered 401 without a usable challenge"))),
        };
        self.authorization.borrow_mut().insert(host.clone(), authorization.clone());
        let retried = with_auth(&Some(authorization))?;
        if retried.status == 401 {
            return Err(RegistryError::Auth(format!("{host} refused our credentials")));
        }
        Ok(retried)
    }

    /// A token from the Bearer challenge's token service: GET with Basic credentials (or none),
    /// or, for an identity token, the OAuth2 refresh-token POST docker uses.
    fn bearer_token(&self, http: &Http, params: &[(String, String)], credential: Option<&Credential>) -> Result<String, RegistryError> {
        let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| RegistryError::Auth("registry sent a Bearer challenge without a realm".into()))?;
        if !(realm.starts_with("https://") || is_loopback_url(&realm)) {
            return Err(RegistryError::Auth(format!("refusing token realm {realm:?} (not https)")));
        }
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let service = get("service").unwrap_or_default();
        let response = match credential {
            Some(Credential::IdentityToken(token)) => {
                let form = crate::lookup::atproto::query(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token),
                    ("service", &service),
                    ("scope", &scope),
                    ("client_id", "atproto-verifier"),
                ]);
                http.send(
                    "POST",
                    &realm,
                    &[("content-type", "application/x-www-form-urlencoded".into())],
                    Some(form.as_bytes()),
                    crate::limits::NodeLimits::DEFAULT.registry_small,
                )
            }
            other => {
                let mut query = crate::lookup::atproto::query(&[("scope", &scope)]);
                if !service.is_empty() {
                    query.push('&');
                    query.push_str(&crate::lookup::atproto::query(&[("service", &service)]));
                }
                let separator = if realm.contains('?') { '&' } else { '?' };
                let headers: Vec<(&str, String)> = match other {
                    Some(Credential::Basic(b)) => vec![("authorization", format!("Basic {b}"))],
                    _ => Vec::new(),
                };
                http.get(&format!("{realm}{separator}{query}"), &headers, crate::limits::NodeLimits::DEFAULT.registry_small)
            }
        }?;
        if !response.is_success() {
            return Err(RegistryError::Auth(format!("token service answered HTTP {} (credentials missing or refused)", response.status)));
        }
        let json: Json = serde_json::from_slice(&response.body).map_err(|_| RegistryError::Auth("token service answered something other than JSON".into()))?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| RegistryError::Auth("token service answered no token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let (scheme, params) =
            parse_challenge(r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#).unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(params[0], ("realm".into(), "https://auth.example.com/token".into()));
        assert_eq!(params[2], ("scope".into(), "repository:a/b:pull".into()));
        assert!(parse_challenge("Bearer").is_none());
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }
}
