//! Every byte and count cap of the binary, as one public type beside the core's
//! `atproto_sig_core::Limits` (which bounds the parsers of signed data). Remote answers,
//! operator files, cache entries, bundles and stdin are all read under one of these; a cap
//! reached is an error, never a truncation. And [`short`]: the one way a hostile string is cut
//! before it goes into a message.

use std::time::Duration;

/// The binary's caps (bytes unless said otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    /// A DID document (did:plc directory or did:web).
    pub did_document: usize,
    /// A did:plc audit log.
    pub audit_log: usize,
    /// One listRecords page.
    pub list_page: usize,
    /// listRecords pages scanned at most (100 records each).
    pub list_pages: usize,
    /// A record proof CAR (getRecord, or attached to an image).
    pub proof: usize,
    /// A whole-repository export (getRepo, for a bundle's collection state).
    pub repository: usize,
    /// A resolveHandle answer.
    pub handle_answer: usize,
    /// `/.well-known/atproto-did`.
    pub well_known_did: usize,
    /// An OCI manifest or index.
    pub manifest: usize,
    /// Small registry answers: upload and push responses, token service, artifact config blobs.
    pub registry_small: usize,
    /// Signature artifacts examined per image (each costs up to three registry requests).
    pub artifacts_examined: usize,
    /// Referrers kept from one referrers index.
    pub referrers_listed: usize,
    /// The descriptor containerd writes on stdin.
    pub descriptor: usize,
    /// Drained from stdin past the descriptor, so containerd's writer never sees a broken pipe.
    pub stdin_drain: usize,
    /// Candidate signers examined per decision.
    pub candidates: usize,
    /// One cache entry read back.
    pub cache_entry: usize,
    /// A bundle file.
    pub bundle: usize,
    /// config.toml, hosts.toml, containerd's config files, the docker config.
    pub config_file: usize,
    /// A PEM file (CA bundle, client certificate or key).
    pub pem_file: usize,
    /// A DNS answer over TCP.
    pub dns_tcp_answer: usize,
    /// A credential helper's answer.
    pub helper_output: usize,
    /// The longest a credential helper may take (less when the decision has less left).
    pub helper_timeout: Duration,
    /// The audit log read back for metrics (its newest part).
    pub audit_log_read: usize,
    /// containerd config files followed through `imports`.
    pub containerd_imports: usize,
    /// The reason line printed to containerd.
    pub reason_line: usize,
    /// How long one refresh may spend importing `bundle_dir` (the timer's own limit,
    /// `TimeoutStartSec`, is 10 minutes: the refetch needs the rest).
    pub bundle_dir_budget: Duration,
}

impl NodeLimits {
    /// The limits every command and the containerd entry use.
    pub const DEFAULT: NodeLimits = NodeLimits {
        did_document: 256 << 10,
        audit_log: 4 << 20,
        list_page: 2 << 20,
        list_pages: 20,
        proof: 4 << 20,
        repository: 64 << 20,
        handle_answer: 16 << 10,
        well_known_did: 2048,
        manifest: 4 << 20,
        registry_small: 64 << 10,
        artifacts_examined: 4,
        referrers_listed: 16,
        descriptor: 256 << 10,
        stdin_drain: 16 << 20,
        candidates: 8,
        cache_entry: 8 << 20,
        // A bundle of a million-record collection state is about 510 MiB (base64 in JSON).
        bundle: 1 << 30,
        config_file: 1 << 20,
        pem_file: 4 << 20,
        dns_tcp_answer: 64 << 10,
        helper_output: 64 << 10,
        helper_timeout: Duration::from_secs(5),
        audit_log_read: 64 << 20,
        containerd_imports: 64,
        reason_line: 400,
        bundle_dir_budget: Duration::from_secs(300),
    };
}

impl Default for NodeLimits {
    fn default() -> NodeLimits {
        NodeLimits::DEFAULT
    }
}

/// `text` cut to at most `max` characters (a hostile string in a message: a URL, a remote
/// error, an operator's typo), control characters shown as spaces, `…` marking a cut.
pub fn short(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// `url` without its userinfo (`https://user:secret@host/…` → `https://host/…`): a URL is
/// never printed with a password in it.
pub fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{tail}"),
        None => format!("{host}{tail}"),
    }
}

/// Remote text made safe to print on a terminal or in a CI log: control characters (newlines,
/// carriage returns, escapes) shown as `\u{…}`, so a hostile server cannot forge a line.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_are_cut_and_made_one_line() {
        assert_eq!(short("abc", 5), "abc");
        assert_eq!(short("abcdef", 3), "abc…");
        assert_eq!(short("a\nb\u{1b}c", 10), "a b c");
        assert_eq!(short(&"é".repeat(10), 2), "éé…");
    }

    #[test]
    fn no_password_and_no_forged_line_is_ever_printed() {
        assert_eq!(without_userinfo("https://user:s3cret@mirror.example/v2?x=1"), "https://mirror.example/v2?x=1");
        assert_eq!(without_userinfo("mirror.example:5000"), "mirror.example:5000");
        assert_eq!(without_userinfo("http://a@b@host/"), "http://host/");
        assert_eq!(printable("ok\nverified: forged\r\u{1b}[2K"), "ok\\u{a}verified: forged\\u{d}\\u{1b}[2K");
    }
}
