//! The engine's worker threads: a fixed number of OS threads behind a bounded queue. The
//! engine is synchronous and CPU-bound between its (deadline-bounded) network calls, so it
//! never runs on the HTTP layer's reactor; each worker owns its `Remote` (connection pools
//! are not shared across threads), rebuilt when a new config generation arrives.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::decisions::{Decided, Decisions, Key};
use super::settings::Loaded;
use super::telemetry::Telemetry;
use crate::config::Config;
use crate::engine::{self, Request};
use crate::remote::{Deadline, InFlight, Remote};

/// Builds a worker's world from the config in force (`remote::system::system` in the binary;
/// in-memory doubles in tests).
pub type RemoteFactory = Arc<dyn Fn(&Config) -> Remote + Send + Sync>;

/// One image to decide.
pub struct Job {
    pub key: Key,
    /// The reference as the caller wrote it.
    pub reference: String,
    pub loaded: Arc<Loaded>,
    pub deadline: Instant,
}

/// The queue into the workers.
pub struct Pool {
    queue: SyncSender<Job>,
}

/// How long an undecided answer (or one resting on stale material) is kept: long enough that
/// the validating review of an admission whose mutating review just waited out a stalled peer
/// answers at once instead of waiting a second deadline; short enough that a recovered peer
/// admits within a second.
pub const UNDECIDED_MEMORY: Duration = Duration::from_secs(1);

/// How long a decision is kept: at most `ttl` and the proof TTL; undecided answers and
/// answers resting on stale material only for [`UNDECIDED_MEMORY`].
fn keep_for(decided: &Decided, ttl: Duration, config: &Config) -> Duration {
    if decided.class == engine::Class::Undecided || decided.message.contains(engine::STALE_NOTE) {
        return UNDECIDED_MEMORY.min(ttl);
    }
    ttl.min(config.proof_ttl.0)
}

/// The key the same decision answers under once a mutating review pinned the tag to the
/// digest verified (`name:tag@sha256:…`): the validating review of that admission reuses it.
fn pinned_key(job: &Job, decided: &Decided) -> Option<Key> {
    if decided.class != engine::Class::Admitted || job.reference.contains('@') {
        return None;
    }
    let digest = decided.digest.as_deref()?;
    Some(Key { image: super::admission::canonical(&format!("{}@{digest}", job.reference)), generation: job.key.generation })
}

impl Pool {
    /// Starts `workers` threads behind a queue of `queue` jobs.
    pub fn start(
        workers: usize,
        queue: usize,
        ttl: Duration,
        decisions: Arc<Decisions>,
        telemetry: Arc<Telemetry>,
        world: RemoteFactory,
    ) -> std::io::Result<Pool> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers.max(1) {
            let rx = Arc::clone(&rx);
            let decisions = Arc::clone(&decisions);
            let telemetry = Arc::clone(&telemetry);
            let world = Arc::clone(&world);
            std::thread::Builder::new().name(format!("decide-{n}")).spawn(move || work(&rx, ttl, &decisions, &telemetry, &world))?;
        }
        Ok(Pool { queue: tx })
    }

    /// Queues `job`, or hands it back when the queue is full (overload).
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }
}

fn next(rx: &Mutex<Receiver<Job>>) -> Option<Job> {
    rx.lock().unwrap_or_else(PoisonError::into_inner).recv().ok()
}

fn work(rx: &Mutex<Receiver<Job>>, ttl: Duration, decisions: &Decisions, telemetry: &Telemetry, world: &RemoteFactory) {
    let mut remote: Option<(u64, Remote)> = None;
    while let Some(job) = next(rx) {
        telemetry.queued(-1);
        let generation = job.loaded.generation;
        if remote.as_ref().is_none_or(|(g, _)| *g != generation) {
            remote = Some((generation, world(&job.loaded.config)));
        }
        let Some((_, world_now)) = &remote else { continue };
        let decided = decide(&job, world_now);
        telemetry.computed(&decided);
        let keep = keep_for(&decided, ttl, &job.loaded.config);
        let pinned = pinned_key(&job, &decided);
        decisions.complete(&job.key, pinned, decided, keep, Instant::now());
    }
}

/// Decides one job with the engine.
pub fn decide(job: &Job, remote: &Remote) -> Decided {
    let loaded = &job.loaded;
    let request = Request {
        reference: &job.reference,
        digest: None,
        descriptor: None,
        policy: loaded.policy.as_ref(),
        config: &loaded.config,
        now_micros: crate::clock::now_micros(None).unwrap_or(0),
        deadline: Deadline::at(job.deadline.min(Instant::now() + loaded.config.budget.0)),
        in_flight: &InFlight::default(),
    };
    let answer = engine::decide(&request, remote);
    let image = answer.image.as_ref().map(ToString::to_string);
    let digest = answer.image.as_ref().and_then(|i| i.digest.clone());
    let pin = match (&loaded.policy, answer.decision.rule.as_deref()) {
        (Ok(policy), Some(rule)) => policy.rules.iter().chain(policy.default.as_ref()).find(|r| r.name == rule).is_none_or(|r| r.pin_digest),
        _ => false,
    };
    Decided::of(&answer.decision, image, digest, answer.hint(), pin)
}
