//! `watch`: follows the watched repositories' event streams and turns what they prove into
//! revocations in the node's cache, in seconds instead of a TTL.
//!
//! - Where it listens ([`sources`]): each watched DID's own PDS (`subscribeRepos`, one socket
//!   per PDS), a relay (one socket, filtered here), a Jetstream instance (one socket, filtered
//!   by the server, unsigned), or nothing (polling `getLatestCommit`). The watched DIDs are the
//!   trust policy's and those of every cached proof, recomputed every [`PLAN_EVERY`]: a policy
//!   change takes effect without a restart.
//! - An event is a hint, never a verdict, unless it proves itself ([`commit`]): a firehose
//!   `#commit` that holds under the key this node holds for the DID stores the frame's own
//!   proof for each cached record it deleted or changed (`knowledge::accept_proof`: never older
//!   than the one held). Anything else queues a signed re-check ([`queue`], [`recheck`]): one
//!   entry per DID, at most one run per DID per second, run by two workers so the socket is
//!   never blocked on HTTP.
//! - Nothing missed silently: each source's position is stored ([`cursor`]) and resumed; a gap
//!   the source cannot replay (`OutdatedCursor`, `FutureCursor`, a sequence jump, a cursor
//!   older than Jetstream keeps) re-checks the whole signed collection of its DIDs.
//! - Everything lands in the cache every reader uses, so the next pull (containerd, `serve`)
//!   is decided by the ordinary path; `serve --watch` also drops its in-memory decisions of a
//!   changed DID at once ([`Watcher::on_change`]).

mod commit;
mod cursor;
mod health;
mod jetstream;
pub mod publish;
#[cfg(feature = "testkit")]
pub use jetstream::event_position as jetstream_event_position;
mod queue;
mod recheck;
mod sources;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use atproto_sig_core::policy::Policy;
use clap::Args;

use crate::config::Config;
use crate::engine::request::load_policy;
use crate::engine::{Session, SessionOptions};
use crate::material::read::Refresh;
use crate::material::store::{Cache, Kind, ProofEntry};
use crate::remote::ureq::TrustRoots;
use crate::remote::ws::WsSubscribe;
use crate::remote::{Deadline, InFlight, Remote, Subscribe};

pub use health::Health;

/// How often the watched set (policy and cache) is recomputed.
pub const PLAN_EVERY: Duration = Duration::from_secs(10);
/// How often `watch_metrics_file` is written.
const METRICS_EVERY: Duration = Duration::from_secs(5);
/// How often `watch` surveys containerd's store when it learned of no revocation itself.
pub const NODE_EVERY: Duration = Duration::from_secs(60);
/// Re-check workers (each runs one DID's re-check at a time).
const WORKERS: usize = 2;

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
    /// Be the fleet's publisher: publish each watched DID's bundle to this OCI repository
    /// (oci://REGISTRY/REPOSITORY) at start and after each of its changes.
    #[arg(long)]
    publish: Option<String>,
    /// The publisher key (from `bundle keygen`) that signs each publication.
    #[arg(long, requires = "publish")]
    key: Option<PathBuf>,
}

/// What is watched: the DIDs, and the records of each this node holds a proof of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    pub dids: BTreeSet<String>,
    pub records: BTreeMap<String, BTreeSet<String>>,
}

impl Watched {
    /// The policy's trusted DIDs and every cached proof's.
    fn read(cache: &Cache, policy: &Policy) -> Watched {
        let mut watched = Watched { dids: policy.trusted.iter().map(|t| t.did.clone()).collect(), records: BTreeMap::new() };
        for (_, entry) in cache.all::<ProofEntry>(Kind::Proof) {
            watched.dids.insert(entry.did.clone());
            watched.records.entry(entry.did).or_default().insert(entry.rkey);
        }
        watched
    }
}

/// The watcher: shared by its source threads, its re-check workers and its supervisor.
pub struct Watcher {
    config: Config,
    policy: RwLock<(Arc<Policy>, Option<SystemTime>)>,
    remote: Remote,
    subscribe: Arc<dyn Subscribe>,
    queue: queue::Queue,
    health: Arc<Health>,
    watched: RwLock<Arc<Watched>>,
    /// Bumped whenever the sources change: source threads of an older generation stop.
    generation: AtomicU64,
    stop: AtomicBool,
    on_change: Option<OnChange>,
    /// `watch --publish`: republishes each watched DID's bundle on its changes.
    publishing: Option<publish::Publishing>,
}

/// What is told of a DID whose cached proofs changed.
type OnChange = Box<dyn Fn(&str) + Send + Sync>;

impl Watcher {
    /// A watcher over `remote` and `subscribe` (the real network, or a test's).
    pub fn new(config: Config, policy: Policy, remote: Remote, subscribe: Arc<dyn Subscribe>) -> Watcher {
        let modified = std::fs::metadata(&config.policy).and_then(|m| m.modified()).ok();
        Watcher {
            config,
            policy: RwLock::new((Arc::new(policy), modified)),
            remote,
            subscribe,
            queue: queue::Queue::default(),
            health: Arc::default(),
            watched: RwLock::default(),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            on_change: None,
            publishing: None,
        }
    }

    /// Publishes every watched DID's bundle at start and after each of its changes.
    pub fn publishing(mut self, publishing: publish::Publishing) -> Watcher {
        self.publishing = Some(publishing);
        self
    }

    /// Asks for `did`'s bundle to be published again (no-op unless `--publish`).
    fn republish(&self, did: &str) {
        if let Some(p) = &self.publishing {
            p.mark(did);
        }
    }

    /// Called with a DID whenever a cached proof of it changed (revoked or replaced): `serve`
    /// drops its in-memory decisions signed by it.
    pub fn on_change(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Watcher {
        self.on_change = Some(Box::new(f));
        self
    }

    /// The counters (for `serve`'s `/metrics`).
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Asks every thread to stop (they finish what they are doing first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.queue.close();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(PoisonError::into_inner).0.clone()
    }

    fn cache(&self) -> Cache {
        Cache::new(&self.config.cache_dir)
    }

    fn watched(&self) -> Arc<Watched> {
        self.watched.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn changed(&self, did: &str) {
        if let Some(f) = &self.on_change {
            f(did);
        }
    }

    /// A session for one re-check: the engine's own reading rules (cache, knowledge, limits),
    /// online whatever the config says about pulls.
    fn session<'a>(&'a self, policy: &'a Policy, refresh: Refresh) -> Session<'a> {
        let now = crate::clock::now_micros(None).unwrap_or(0);
        // Audit logs too: a did:plc document is then held with what proves it, which a
        // collection state's import requires.
        let options = SessionOptions { refresh, online: true, audit_logs: true, ..SessionOptions::default() };
        Session::new(&self.config, policy, &self.remote, now, Deadline::after(self.config.budget.0), &InFlight::default(), options)
    }

    /// Reloads the policy when its file changed (a broken one keeps the previous, and says so).
    fn reload_policy(&self) {
        let modified = std::fs::metadata(&self.config.policy).and_then(|m| m.modified()).ok();
        if modified == self.policy.read().unwrap_or_else(PoisonError::into_inner).1 {
            return;
        }
        match load_policy(&self.config.policy) {
            Ok(policy) => {
                crate::log::info(&format!("watch: reloaded the trust policy {}", self.config.policy.display()));
                *self.policy.write().unwrap_or_else(PoisonError::into_inner) = (Arc::new(policy), modified);
            }
            Err(e) => {
                crate::log::warn(&format!("watch: the changed trust policy does not load ({e}): still watching with the previous one"));
                self.policy.write().unwrap_or_else(PoisonError::into_inner).1 = modified;
            }
        }
    }

    /// Runs until `until` (or [`Watcher::stop`]): the supervisor on this thread, sources and
    /// workers on their own.
    pub fn run(&self, until: Option<Instant>) {
        std::thread::scope(|scope| {
            for n in 0..WORKERS {
                let _ = std::thread::Builder::new().name(format!("watch-recheck-{n}")).spawn_scoped(scope, || self.work());
            }
            let _ = std::thread::Builder::new().name("watch-node".into()).spawn_scoped(scope, || self.follow_node(until));
            let mut publisher_started = false;
            let mut plan: Vec<sources::Source> = Vec::new();
            let mut planned: Option<Instant> = None;
            let mut metrics_written = Instant::now();
            while !self.stopping() && until.is_none_or(|u| Instant::now() < u) {
                if planned.is_none_or(|t| t.elapsed() >= PLAN_EVERY) {
                    planned = Some(Instant::now());
                    self.reload_policy();
                    let watched = Watched::read(&self.cache(), &self.policy());
                    self.health.watched(watched.dids.len());
                    *self.watched.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(watched.clone());
                    // The publisher starts once the watched set is known (it publishes all of it first).
                    if let Some(publishing) = self.publishing.as_ref().filter(|_| !publisher_started) {
                        publisher_started = true;
                        let _ = std::thread::Builder::new().name("watch-publish".into()).spawn_scoped(scope, move || publish::run(self, publishing));
                    }
                    let next = sources::plan(self, &watched);
                    if next != plan {
                        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                        if !plan.is_empty() {
                            crate::log::info(&format!("watch: the watched set changed ({} DIDs): re-subscribing", watched.dids.len()));
                        }
                        if next.is_empty() {
                            crate::log::warn("watch: nothing to follow (no watched DID has a reachable PDS)");
                        }
                        for source in &next {
                            let source = source.clone();
                            let _ = std::thread::Builder::new()
                                .name(format!("watch-{}", source.kind()))
                                .spawn_scoped(scope, move || sources::follow(self, &source, generation, until));
                        }
                        plan = next;
                    }
                }
                self.health.pending(self.queue.len());
                if metrics_written.elapsed() >= METRICS_EVERY {
                    metrics_written = Instant::now();
                    self.write_metrics();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            self.stop();
            self.write_metrics();
        });
    }

    fn write_metrics(&self) {
        let Some(path) = &self.config.watch_metrics_file else { return };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut temp| {
            std::io::Write::write_all(&mut temp, self.health.render().as_bytes())?;
            temp.persist(path).map(|_| ()).map_err(|e| e.error)
        });
        if let Err(e) = written {
            crate::log::warn(&format!("watch: cannot write {}: {e}", path.display()));
        }
    }

    /// What is on the node: a survey of containerd's store (and, with `on_revoke =
    /// "remove-image"`, removal of revoked images) at once after every revocation this watcher
    /// learns of, and every [`NODE_EVERY`] for those other processes learned (a pull, the
    /// refresh timer). Skipped while containerd's socket is absent (a publisher's machine).
    fn follow_node(&self, until: Option<Instant>) {
        let mut seen = self.health.revocations();
        let mut last: Option<Instant> = None;
        let mut said_absent = false;
        while !self.stopping() && until.is_none_or(|u| Instant::now() < u) {
            let revocations = self.health.revocations();
            if revocations > seen || last.is_none_or(|t| t.elapsed() >= NODE_EVERY) {
                seen = revocations;
                last = Some(Instant::now());
                if !self.config.containerd_socket.exists() {
                    if !said_absent {
                        said_absent = true;
                        crate::log::info(&format!(
                            "watch: no containerd socket at {}: images already on this node are not surveyed (containerd_socket)",
                            self.config.containerd_socket.display()
                        ));
                    }
                } else {
                    said_absent = false;
                    let now = crate::clock::now_micros(None).unwrap_or(0);
                    match crate::node::reconcile(&self.config, &self.policy(), &self.remote, now) {
                        Ok((survey, acted)) => {
                            for problem in survey.problems.iter().chain(&acted.problems) {
                                crate::log::warn(&format!("watch: node: {problem}"));
                            }
                            self.health.node_survey(acted.removed.len(), Some(acted.running.len()));
                        }
                        Err(e) => {
                            crate::log::warn(&format!("watch: node: {e}"));
                            self.health.node_survey(0, None);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A re-check worker: takes due re-checks until stopped.
    fn work(&self) {
        while !self.stopping() {
            if let Some(job) = self.queue.take(Duration::from_millis(500)) {
                let did = job.did.clone();
                recheck::run(self, &job);
                self.queue.done(&did);
            }
        }
    }
}

/// `base` plus up to a quarter of it, so reconnecting nodes do not arrive together.
fn jittered(base: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// `base` less up to a fifth of it: spread like [`jittered`], but never longer than `base`
/// (a poll interval that bounds how stale a node may be).
fn jittered_within(base: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    base.saturating_sub(base.mul_f64(f64::from(nanos % 1000) / 5000.0))
}

/// Sleeps `base` jittered, in slices, until `alive` says stop.
fn jitter_sleep(base: Duration, alive: impl Fn() -> bool) {
    sleep_until(Instant::now() + jittered(base), alive);
}

/// Sleeps at most `base` (jittered below it), in slices, until `alive` says stop.
fn jitter_sleep_within(base: Duration, alive: impl Fn() -> bool) {
    sleep_until(Instant::now() + jittered_within(base), alive);
}

fn sleep_until(until: Instant, alive: impl Fn() -> bool) {
    while alive() && Instant::now() < until {
        std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
    }
}

/// The watcher of this node's config, on the real network.
pub fn system(config: Config, policy: Policy) -> Watcher {
    let remote = crate::remote::system::system(&config);
    let subscribe: Arc<dyn Subscribe> = Arc::new(WsSubscribe::new(TrustRoots::new(config.ca_bundle.clone())));
    Watcher::new(config, policy, remote, subscribe)
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
    let publishing = match &args.publish {
        None => None,
        Some(target) => {
            let location = crate::fleet::Location::parse(target);
            let key = args.key.as_deref().map(crate::fleet::read_key).transpose();
            match (location, key) {
                (Ok(location), Ok(key)) => Some(publish::Publishing::new(location, key)),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: --publish: {e}");
                    return crate::exit::UNDECIDED;
                }
            }
        }
    };
    let mut watcher = system(config, policy);
    if let Some(publishing) = publishing {
        watcher = watcher.publishing(publishing);
    }
    let watcher = Arc::new(watcher);
    let signals = {
        let watcher = watcher.clone();
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]).map(|mut signals| {
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    crate::log::info("watch: stopping (signal)");
                    watcher.stop();
                }
            })
        })
    };
    if let Err(e) = signals {
        crate::log::warn(&format!("watch: cannot handle signals: {e}"));
    }
    watcher.run(until);
    crate::exit::ADMITTED
}
