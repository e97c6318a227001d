//! `resolve HANDLE|DID`: what to put in a trust policy. Resolves a handle to its DID (checked
//! both ways against the DID document), and shows the document's key, PDS and claimed handle.

use std::path::PathBuf;

use atproto_sig_core::syntax::is_valid_did;
use clap::Args;
use serde_json::json;

use crate::cli::output::{Format, load_config, print_json, print_undecided};
use crate::config::Config;
use crate::engine::{Session, SessionOptions, is_undecided};
use crate::exit;
use crate::remote::{Deadline, Http, InFlight, Remote, Resolve};

#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// A handle (alice.bsky.social) or a DID.
    identity: String,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(args: ResolveArgs) -> u8 {
    let config = match load_config(args.config.as_deref(), args.format) {
        Ok(c) => c,
        Err(code) => return code,
    };
    resolve(&args, &config, &crate::remote::system::system(&config))
}

/// Resolves over `remote` and prints; returns the exit code.
fn resolve(args: &ResolveArgs, config: &Config, remote: &Remote) -> u8 {
    let empty = atproto_sig_core::policy::Policy::empty();
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let context = Session::new(config, &empty, remote, now, Deadline::after(config.budget.0), &InFlight::default(), SessionOptions::default());
    let (did, from_handle) = match resolved_did(args, config, context.http(), &*remote.resolve) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let document = match context.document(&did) {
        Ok((d, _)) => d,
        Err(v) => {
            print_undecided(args.format, &v.message, "");
            return if is_undecided(v.reason) { exit::UNDECIDED } else { exit::REJECTED };
        }
    };
    // A handle counts only if the DID document claims it back.
    let handle_verified = from_handle.as_ref().is_none_or(|h| document.handle.as_deref() == Some(h.as_str()));
    print_identity(args.format, &did, from_handle.as_deref(), &document, handle_verified, now);
    if handle_verified { exit::ADMITTED } else { exit::REJECTED }
}

/// The DID named (as is) or the handle's DID; on failure, what was printed and the exit code.
fn resolved_did(args: &ResolveArgs, config: &Config, http: Option<&Http>, dns: &dyn Resolve) -> Result<(String, Option<String>), u8> {
    if is_valid_did(&args.identity) {
        return Ok((args.identity.clone(), None));
    }
    let Some(http) = http else {
        print_undecided(args.format, "offline: a handle cannot be resolved", "resolve it on a connected machine, or give the DID");
        return Err(exit::UNDECIDED);
    };
    match crate::lookup::atproto::resolve_handle(http, config.handle_resolver.as_deref(), dns, &args.identity) {
        Ok(did) => Ok((did, Some(args.identity.to_ascii_lowercase()))),
        // A network failure (DNS included) could not decide: exit 2, as for pulls.
        Err(e @ crate::lookup::atproto::LookupError::Network(_)) => {
            print_undecided(
                args.format,
                &format!("cannot resolve {}: {e} (a network failure)", args.identity),
                "check this machine's DNS and connectivity, then retry",
            );
            Err(exit::UNDECIDED)
        }
        Err(e) => {
            print_undecided(
                args.format,
                &format!("cannot resolve {}: {e}", args.identity),
                "check the spelling, DNS (_atproto TXT) or https://<handle>/.well-known/atproto-did",
            );
            Err(exit::REJECTED)
        }
    }
}

/// The identity, its handle (verified both ways or not), PDS and key, and the trustedDIDs snippet.
fn print_identity(format: Format, did: &str, from_handle: Option<&str>, document: &atproto_sig_core::did::DidDocument, handle_verified: bool, now: i64) {
    let key = document.signing_key.as_ref().ok();
    match format {
        Format::Json => print_json(&json!({
            "did": did,
            "handle": document.handle,
            "handleVerified": handle_verified,
            "pds": document.pds,
            "signingKey": key.map(|k| k.to_did_key()),
            "curve": key.map(|k| k.curve().jwt_alg()),
        })),
        Format::Text => {
            println!("{did}");
            match (from_handle, handle_verified) {
                (Some(h), false) => {
                    println!("  handle:      {h} points here, but the DID document claims {} — NOT verified", document.handle.as_deref().unwrap_or("no handle"))
                }
                _ => println!(
                    "  handle:      {} (claimed by the DID document{})",
                    document.handle.as_deref().unwrap_or("none"),
                    if from_handle.is_some() { ", verified both ways" } else { "" }
                ),
            }
            println!("  PDS:         {}", document.pds.as_deref().unwrap_or("none"));
            match &document.signing_key {
                Ok(k) => println!("  signing key: {} ({})", k.to_did_key(), k.curve().jwt_alg()),
                Err(e) => println!("  signing key: unusable: {e}"),
            }
            println!(
                "  for a trust policy:\n    trustedDIDs:\n      {did}:\n        name: {:?}\n        validFrom: \"{}\"\n        expiresAt: null",
                document.handle.as_deref().unwrap_or("…"),
                atproto_sig_core::syntax::format_datetime_micros(now - now % 1_000_000)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use atproto_sig_core::crypto::Curve;
    use atproto_sig_core::testkit::Identity;

    use super::*;
    use crate::remote::memory::{MemoryFetch, MemoryResolve};

    /// `resolve` runs over the world it is given: an in-memory PLC directory and DNS.
    #[test]
    fn resolves_over_the_world_it_is_given() {
        let identity = Identity::new(Curve::K256, "resolve-cli");
        let dir = tempfile::tempdir().unwrap();
        let config = Config { cache_dir: dir.path().join("cache"), plc_directory: "https://plc.test".into(), ..Config::default() };
        let (web, dns) = (Arc::new(MemoryFetch::new()), Arc::new(MemoryResolve::new()));
        web.serve(&format!("https://plc.test/{}", identity.did), 200, identity.did_document_multikey());
        dns.serve(&format!("_atproto.{}", identity.handle), vec![format!("did={}", identity.did)]);
        let remote = Remote::new(web.clone(), dns);
        let args = |identity: &str| ResolveArgs { identity: identity.to_owned(), config: None, format: Format::Json };
        assert_eq!(resolve(&args(&identity.did), &config, &remote), exit::ADMITTED);
        assert_eq!(resolve(&args(&identity.handle), &config, &remote), exit::ADMITTED, "the handle resolves through DNS and is claimed back");
        let plc: Vec<String> = web.requested().into_iter().filter(|u| u.starts_with("https://plc.test/")).collect();
        assert_eq!(plc, vec![format!("https://plc.test/{}", identity.did)], "the document was fetched once, then cached");
        assert_eq!(resolve(&args("nobody.test"), &config, &remote), exit::REJECTED);
    }
}
