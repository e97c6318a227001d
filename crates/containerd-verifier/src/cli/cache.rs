//! `cache list | refresh | prune`. `refresh` is what the systemd timer runs: it re-fetches the
//! DID documents and proofs that are past half their TTL, so pulls find them fresh.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::output::{Format, load_config, print_json, print_undecided};
use crate::config::Config;
use crate::engine::{Session, SessionOptions};
use crate::exit;
use crate::material::read::Refresh;
use crate::material::store::{Cache, DidEntry, Freshness, Kind, ProofEntry, freshness};
use crate::remote::{Deadline, InFlight, Remote};

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// What the cache holds and how fresh it is.
    List(CommonArgs),
    /// Re-fetch DID documents and proofs past half their TTL (run by the systemd timer).
    Refresh(CommonArgs),
    /// Delete entries too old to be used (past TTL + max_stale, or max_proof_age offline).
    Prune(CommonArgs),
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(command: CacheCommand) -> u8 {
    let args = match &command {
        CacheCommand::List(a) | CacheCommand::Refresh(a) | CacheCommand::Prune(a) => a,
    };
    let config = match load_config(args.config.as_deref(), args.format) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let cache = Cache::new(&config.cache_dir);
    let now = crate::clock::now_micros(None).unwrap_or(0);
    match command {
        CacheCommand::List(a) => list(&config, &cache, now, a.format),
        CacheCommand::Refresh(a) => refresh(&config, &cache, now, a.format),
        CacheCommand::Prune(a) => prune(&config, &cache, now, a.format),
    }
}

fn state(f: Freshness) -> &'static str {
    match f {
        Freshness::Fresh => "fresh",
        Freshness::Stale => "stale (used only if the network fails)",
        Freshness::Expired => "expired",
    }
}

fn list(config: &Config, cache: &Cache, now: i64, format: Format) -> u8 {
    let time = atproto_sig_core::syntax::format_datetime_micros;
    let dids = cache.all::<DidEntry>(Kind::Did);
    let proofs = cache.all::<ProofEntry>(Kind::Proof);
    let did_state = |e: &DidEntry| state(freshness(e.fetched_at, now, config.did_ttl.micros(), config.max_stale.micros()));
    let proof_state = |e: &ProofEntry| state(freshness(e.fetched_at, now, config.proof_ttl.micros(), config.max_stale.micros()));
    match format {
        Format::Json => print_json(&serde_json::json!({
            "dids": dids.iter().map(|(_, e)| serde_json::json!({"did": e.did, "fetchedAt": time(e.fetched_at), "source": e.source, "auditLog": e.audit_log.is_some(), "state": did_state(e)})).collect::<Vec<_>>(),
            "proofs": proofs.iter().map(|(_, e)| serde_json::json!({"uri": format!("at://{}/{}/{}", e.did, e.collection, e.rkey), "fetchedAt": time(e.fetched_at), "source": e.source, "state": proof_state(e)})).collect::<Vec<_>>(),
        })),
        Format::Text => {
            println!("{}: {} DID documents, {} proofs", cache_dir(config), dids.len(), proofs.len());
            for (_, e) in &dids {
                println!("  DID    {} fetched {} from {} — {}", e.did, time(e.fetched_at), e.source, did_state(e));
            }
            for (_, e) in &proofs {
                println!("  proof  at://{}/{}/{} fetched {} — {}", e.did, e.collection, e.rkey, time(e.fetched_at), proof_state(e));
            }
        }
    }
    exit::ADMITTED
}

fn cache_dir(config: &Config) -> String {
    config.cache_dir.display().to_string()
}

fn refresh(config: &Config, cache: &Cache, now: i64, format: Format) -> u8 {
    let code = refresh_knowledge(config, cache, now, format);
    // What the refresh revoked reaches the images already in containerd's store.
    crate::node::after_learning(config, now);
    code
}

fn refresh_knowledge(config: &Config, cache: &Cache, now: i64, format: Format) -> u8 {
    // bundle_dir is imported here (the refresh timer), never on the pull path: a hostile or
    // huge bundle can cost this job time, not a pull.
    let mut bundle_notes = crate::bundle::sync_bundle_dir(config, cache);
    // The fleet's registry: read even offline (the registry is the one remote an offline node
    // may reach), before the refetch, so what it brings is not fetched again.
    if config.bundle_source.is_some() {
        let remote = crate::remote::system::system(config);
        let synced = crate::fleet::pull::sync(config, cache, &remote, now, crate::remote::Deadline::after(std::time::Duration::from_secs(300)));
        for line in &synced.imported {
            crate::log::info(&format!("imported from the registry: {line}"));
        }
        for note in &synced.notes {
            crate::log::info(note);
        }
        crate::log::info(&format!(
            "bundle_source: {} imported, {} unchanged, {} registry requests",
            synced.imported.len(),
            synced.unchanged,
            synced.registry_requests
        ));
        bundle_notes.extend(synced.problems);
    }
    if config.offline {
        if config.bundle_dir.is_none() && config.bundle_source.is_none() {
            print_undecided(
                format,
                "offline = true: nothing can be refreshed over the network",
                "import a bundle instead: atproto-verifier bundle import FILE",
            );
            return exit::UNDECIDED;
        }
        return refresh_offline(config, cache, now, format, &bundle_notes);
    }
    refetch_over(config, cache, now, format, bundle_notes, &crate::remote::system::system(config))
}

/// The online refresh over `remote`: refetches what is due, writes the metrics, prints.
fn refetch_over(config: &Config, cache: &Cache, now: i64, format: Format, bundle_notes: Vec<String>, remote: &Remote) -> u8 {
    let empty = atproto_sig_core::policy::Policy::empty();
    // Entries past half their TTL are refetched, so a pull rarely meets an expired one.
    let options = SessionOptions { refresh: Refresh::PastHalfLife, ..SessionOptions::default() };
    let deadline = Deadline::after(std::time::Duration::from_secs(600));
    let session = Session::new(config, &empty, remote, now, deadline, &InFlight::default(), options);
    let (refreshed, mut failed) = refetch_stale(&session, cache, now);
    for note in session.take_notes() {
        crate::log::info(&note);
    }
    let requests = session.requests().identity;
    failed.splice(0..0, bundle_notes);
    if let Err(e) = crate::metrics::write(config, cache, now, refreshed.len(), failed.len()) {
        failed.push(e.to_string());
    }
    match format {
        Format::Json => print_json(&serde_json::json!({"refreshed": refreshed, "failed": failed, "requests": requests})),
        Format::Text => {
            println!("refreshed {} entries ({requests} requests), {} failed", refreshed.len(), failed.len());
            for f in &failed {
                println!("  failed: {f}");
            }
        }
    }
    if failed.is_empty() { exit::ADMITTED } else { exit::UNDECIDED }
}

/// Offline, a refresh only imports `bundle_dir` (done by the caller): report it.
fn refresh_offline(config: &Config, cache: &Cache, now: i64, format: Format, bundle_notes: &[String]) -> u8 {
    match format {
        Format::Json => print_json(&serde_json::json!({"refreshed": [], "failed": bundle_notes, "requests": 0})),
        Format::Text => {
            println!("offline: imported new bundles of bundle_dir, {} problems", bundle_notes.len());
            for n in bundle_notes {
                println!("  failed: {n}");
            }
        }
    }
    let metrics = crate::metrics::write(config, cache, now, 0, bundle_notes.len());
    if let Err(e) = &metrics {
        println!("  failed: {e}");
    }
    if bundle_notes.is_empty() && metrics.is_ok() { exit::ADMITTED } else { exit::UNDECIDED }
}

/// Refetches every DID document and proof due under the session's refresh mode: (refreshed,
/// failed).
fn refetch_stale(context: &Session<'_>, cache: &Cache, now: i64) -> (Vec<String>, Vec<String>) {
    let due = |fetched_at: i64, ttl: crate::config::Span| Refresh::PastHalfLife.due(fetched_at, now, ttl.micros());
    let (mut refreshed, mut failed) = (Vec::new(), Vec::new());
    for (_, entry) in cache.all::<DidEntry>(Kind::Did) {
        if !due(entry.fetched_at, context.config.did_ttl) {
            continue;
        }
        match context.document(&entry.did) {
            Ok(_) => refreshed.push(entry.did.clone()),
            Err(v) => failed.push(format!("{}: {}", entry.did, v.message)),
        }
    }
    for (_, entry) in cache.all::<ProofEntry>(Kind::Proof) {
        if !due(entry.fetched_at, context.config.proof_ttl) {
            continue;
        }
        let uri = format!("at://{}/{}/{}", entry.did, entry.collection, entry.rkey);
        let document = match context.document(&entry.did) {
            Ok((document, _)) => document,
            Err(v) => {
                failed.push(format!("{uri}: {}", v.message));
                continue;
            }
        };
        match context.proof(&document, &entry.rkey) {
            Ok(_) => refreshed.push(uri),
            Err(v) => failed.push(format!("{uri}: {}", v.message)),
        }
    }
    (refreshed, failed)
}

fn prune(config: &Config, cache: &Cache, now: i64, format: Format) -> u8 {
    let mut removed = Vec::new();
    for (path, entry) in cache.all::<DidEntry>(Kind::Did) {
        // Offline nodes keep documents (they cannot refetch them); online ones drop expired ones.
        if !config.offline
            && freshness(entry.fetched_at, now, config.did_ttl.micros(), config.max_stale.micros()) == Freshness::Expired
            && cache.remove_path(&path)
        {
            removed.push(entry.did);
        }
    }
    for (path, entry) in cache.all::<ProofEntry>(Kind::Proof) {
        let too_old = if config.offline {
            now.saturating_sub(entry.fetched_at) > config.max_proof_age.micros()
        } else {
            freshness(entry.fetched_at, now, config.proof_ttl.micros(), config.max_stale.micros()) == Freshness::Expired
        };
        if too_old && cache.remove_path(&path) {
            removed.push(format!("at://{}/{}/{}", entry.did, entry.collection, entry.rkey));
        }
    }
    match format {
        Format::Json => print_json(&serde_json::json!({"removed": removed})),
        Format::Text => println!("removed {} entries from {}", removed.len(), cache_dir(config)),
    }
    exit::ADMITTED
}
