//! `watch`: follows the watched repositories' event streams and turns what they prove into
//! revocations in the node's cache, in seconds instead of a TTL. This first source is each
//! watched DID's own PDS (`com.atproto.sync.subscribeRepos`, one socket per PDS host, not per
//! DID). Relay and Jetstream sources, stored cursors across restarts, gap detection, polling
//! without a stream and the metrics are issue #20's remaining parts.
//!
//! An event is a hint, never a verdict, unless it proves itself: a `#commit` is acted on only
//! when `commit_proof::prove_commit` holds under the key this node holds for the DID; then the
//! frame's own blocks make the proof stored for each cached record the commit deleted or
//! changed (through `knowledge::accept_proof`: never older than the one held). Anything else
//! about a watched DID (a frame that fails the check, `#sync`, `#identity`, `#account`) makes a
//! signed re-check from the PDS, at most once per `RECHECK_EVERY` per DID.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atproto_sig_core::commit_proof::{prove_commit, record_proof};
use atproto_sig_core::firehose::{CommitEvent, Frame as Event, MAX_FRAME_BYTES, decode_frame};
use atproto_sig_core::policy::Policy;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::{Limits, Verdict};
use clap::Args;

use crate::config::Config;
use crate::engine::request::load_policy;
use crate::engine::{Session, SessionOptions};
use crate::material::knowledge::{OfferedProof, accept_proof};
use crate::material::read::Refresh;
use crate::material::store::{Cache, Kind, ProofEntry};
use crate::remote::ureq::TrustRoots;
use crate::remote::ws::WsSubscribe;
use crate::remote::{Deadline, Frame, InFlight, NetError, Remote, Subscribe};

/// A re-check of one DID from its PDS happens at most this often (a forged or garbage event
/// can cause no more).
const RECHECK_EVERY: Duration = Duration::from_secs(5);

fn span(text: &str) -> Result<Duration, String> {
    crate::config::Span::parse(text).map(|s| s.0).ok_or_else(|| format!("{text:?} is not a duration such as \"30s\""))
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Use this trust policy instead of the one config.toml names.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Stop after this long (one-shot runs and tests); default: until SIGTERM.
    #[arg(long, value_parser = span)]
    run_for: Option<Duration>,
}

/// What one source thread needs.
struct Watcher {
    config: Config,
    policy: Policy,
    remote: Remote,
    subscribe: Arc<dyn Subscribe>,
    rechecked: std::sync::Mutex<HashMap<String, Instant>>,
}

/// The DIDs watched: the policy's trusted DIDs and the DIDs of every cached proof.
fn watched_dids(config: &Config, policy: &Policy) -> BTreeSet<String> {
    let mut dids: BTreeSet<String> = policy.trusted.iter().map(|t| t.did.clone()).collect();
    dids.extend(Cache::new(&config.cache_dir).all::<ProofEntry>(Kind::Proof).into_iter().map(|(_, e)| e.did));
    dids
}

impl Watcher {
    fn session(&self, refresh: Refresh) -> Session<'_> {
        let now = crate::clock::now_micros(None).unwrap_or(0);
        let options = SessionOptions { refresh, online: true, ..SessionOptions::default() };
        Session::new(&self.config, &self.policy, &self.remote, now, Deadline::after(self.config.budget.0), &InFlight::default(), options)
    }

    /// The PDS of each watched DID whose document this node can read.
    fn sources(&self, dids: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
        let session = self.session(Refresh::WhenExpired);
        let mut by_pds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for did in dids {
            match session.document(did) {
                Ok((document, _)) => match document.pds {
                    Some(pds) => {
                        by_pds.entry(pds).or_default().insert(did.clone());
                    }
                    None => crate::log::warn(&format!("watch: {did} names no PDS: not watched")),
                },
                Err(v) => crate::log::warn(&format!("watch: {did}: {} — not watched until its document resolves", v.message)),
            }
        }
        by_pds
    }

    /// Follows one PDS's stream until `until`, reconnecting with capped backoff and jitter.
    fn follow(&self, pds: &str, dids: &BTreeSet<String>, until: Option<Instant>) {
        let url = format!("{}/xrpc/com.atproto.sync.subscribeRepos", pds.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1));
        let mut backoff = Duration::from_secs(1);
        let done = || until.is_some_and(|u| Instant::now() >= u);
        while !done() {
            let mut stream = match self.subscribe.subscribe(&url, self.config.connect_timeout.0.max(Duration::from_secs(5))) {
                Ok(stream) => stream,
                Err(e) => {
                    crate::log::warn(&format!("watch: {url}: {e} — retrying in {}s", backoff.as_secs()));
                    std::thread::sleep(jittered(backoff));
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            crate::log::info(&format!("watch: subscribed to {url} for {} DIDs", dids.len()));
            backoff = Duration::from_secs(1);
            // A gap while disconnected: what was missed is re-checked from the PDS.
            for did in dids {
                self.recheck(did, "connected");
            }
            loop {
                if done() {
                    return;
                }
                match stream.next(Duration::from_secs(1), MAX_FRAME_BYTES) {
                    Ok(Some(Frame::Binary(bytes))) => self.event(&bytes, dids, &url),
                    Ok(Some(Frame::Text(_))) | Err(NetError::Timeout(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        crate::log::warn(&format!("watch: {url}: {e} — reconnecting"));
                        break;
                    }
                }
            }
        }
    }

    fn event(&self, bytes: &[u8], dids: &BTreeSet<String>, url: &str) {
        let limits = Limits::default();
        match decode_frame(bytes, &limits) {
            Ok(Event::Commit(event)) if dids.contains(&event.repo) => self.commit(&event, url),
            Ok(Event::Sync(event)) if dids.contains(&event.did) => self.recheck(&event.did, "#sync"),
            Ok(Event::Identity(event)) if dids.contains(&event.did) => self.recheck(&event.did, "#identity"),
            Ok(Event::Account(event)) if dids.contains(&event.did) => self.recheck(&event.did, "#account"),
            Ok(_) => {}
            Err(e) => crate::log::debug(&format!("watch: {url}: undecodable frame: {e}")),
        }
    }

    /// A `#commit` of a watched DID: acted on when it proves itself, else a re-check.
    fn commit(&self, event: &CommitEvent, url: &str) {
        if !event.ops.iter().any(|op| op.path.starts_with("io.atcr.manifest/")) {
            return;
        }
        let session = self.session(Refresh::WhenExpired);
        let document = match session.document(&event.repo) {
            Ok((document, _)) => document,
            Err(v) => return self.failed_recheck(&event.repo, &v),
        };
        let Ok(key) = &document.signing_key else { return self.recheck(&event.repo, "no usable key") };
        let proven = match prove_commit(event, key, &Limits::repository()) {
            Ok(proven) => proven,
            Err(e) => {
                crate::log::info(&format!("watch: a #commit of {} does not prove itself ({e}): re-checking from its PDS", event.repo));
                return self.recheck(&event.repo, "unproven #commit");
            }
        };
        let cache = Cache::new(&self.config.cache_dir);
        let now = crate::clock::now_micros(None).unwrap_or(0);
        for (path, now_cid) in &proven.records {
            let Some(rkey) = path.strip_prefix("io.atcr.manifest/") else { continue };
            if cache.read::<ProofEntry>(Kind::Proof, &[&event.repo, MANIFEST_COLLECTION, rkey]).is_none() {
                continue;
            }
            let car = match record_proof(event, path, &Limits::repository()) {
                Ok(car) => car,
                Err(e) => {
                    crate::log::info(&format!("watch: {path}: {e}: re-checking"));
                    self.recheck(&event.repo, "no proof in the frame");
                    continue;
                }
            };
            let offered = OfferedProof {
                document: &document,
                collection: MANIFEST_COLLECTION,
                rkey,
                car: &car,
                digest: None,
                source: format!("firehose {url} seq {}", event.seq),
                fetched_at: now,
                now,
                clock_skew_micros: self.config.clock_skew.micros(),
            };
            match accept_proof(&cache, &offered) {
                Ok(accepted) if accepted.changed => {
                    let what = if now_cid.is_none() { "revoked (the record is deleted)" } else { "changed" };
                    crate::log::info(&format!("watch: at://{}/{path} {what} at rev {}, proven by the #commit itself", event.repo, proven.rev));
                }
                Ok(_) => {}
                Err(refusal) => crate::log::info(&format!("watch: at://{}/{path}: the frame's proof is not stored: {refusal}", event.repo)),
            }
        }
    }

    fn failed_recheck(&self, did: &str, verdict: &Verdict) {
        crate::log::warn(&format!("watch: {did}: {}", verdict.message));
    }

    /// Fetches the DID document and every cached proof of `did` again (signed material only),
    /// at most once per [`RECHECK_EVERY`].
    fn recheck(&self, did: &str, why: &str) {
        {
            let mut rechecked = self.rechecked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if rechecked.get(did).is_some_and(|t| t.elapsed() < RECHECK_EVERY) {
                return;
            }
            rechecked.insert(did.to_owned(), Instant::now());
        }
        let session = self.session(Refresh::Always);
        let document = match session.document(did) {
            Ok((document, _)) => document,
            Err(v) => return self.failed_recheck(did, &v),
        };
        let cache = Cache::new(&self.config.cache_dir);
        for (_, entry) in cache.all::<ProofEntry>(Kind::Proof).into_iter().filter(|(_, e)| e.did == did) {
            if let Err(v) = session.proof(&document, &entry.rkey) {
                crate::log::info(&format!("watch: re-check ({why}) at://{did}/{}/{}: {}", entry.collection, entry.rkey, v.message));
            }
        }
    }
}

/// `base` plus up to a quarter of it, so reconnecting nodes do not arrive together.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

pub fn run(args: WatchArgs) -> u8 {
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::exit::UNDECIDED;
        }
    };
    if let Some(policy) = &args.policy {
        config.policy.clone_from(policy);
    }
    let policy = match load_policy(&config.policy) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("error: the trust policy does not load: {e}");
            return crate::exit::UNDECIDED;
        }
    };
    let until = args.run_for.map(|d| Instant::now() + d);
    let remote = crate::remote::system::system(&config);
    let subscribe: Arc<dyn Subscribe> = Arc::new(WsSubscribe::new(TrustRoots::new(config.ca_bundle.clone())));
    let watcher = Watcher { config, policy, remote, subscribe, rechecked: std::sync::Mutex::default() };
    let dids = watched_dids(&watcher.config, &watcher.policy);
    let sources = watcher.sources(&dids);
    if sources.is_empty() {
        crate::log::warn("watch: no watched DID has a reachable PDS");
    }
    std::thread::scope(|scope| {
        for (pds, dids) in &sources {
            let watcher = &watcher;
            scope.spawn(move || watcher.follow(pds, dids, until));
        }
    });
    crate::exit::ADMITTED
}
