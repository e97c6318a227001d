//! The re-checks waiting to run: one entry per watched DID (so the queue is bounded by the
//! watched set, whatever a stream sends), merged when more events arrive for it, and run no
//! more often than [`MIN_INTERVAL`] per DID: a storm of events for one DID, forged or not,
//! costs one signed refetch per interval, deferred, never dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Two re-checks of one DID are at least this far apart.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How much is fetched again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Depth {
    /// The DID document and a fresh proof (getRecord) of each named or cached record.
    Records,
    /// The DID document and the signed state of the whole collection (getRepo): after a gap,
    /// it proves every deletion missed, whatever the records this node knew of.
    Full,
}

/// One re-check to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub did: String,
    pub depth: Depth,
    /// The records to re-check; `None`: every record of the DID this node holds a proof of.
    pub rkeys: Option<BTreeSet<String>>,
    /// Why (a metric label and a log word).
    pub why: &'static str,
    /// An `#identity` event announced a change of the DID document.
    pub announced: bool,
    /// The stream positions that asked for it (source -> earliest seq): a source's cursor is
    /// saved no further than before its oldest unfinished re-check.
    pub seqs: BTreeMap<String, i64>,
}

impl Job {
    pub fn new(did: &str, depth: Depth, why: &'static str) -> Job {
        Job { did: did.to_owned(), depth, rkeys: None, why, announced: false, seqs: BTreeMap::new() }
    }

    pub fn records(mut self, rkeys: impl IntoIterator<Item = String>) -> Job {
        self.rkeys = Some(rkeys.into_iter().collect());
        self
    }

    pub fn at(mut self, source: &str, seq: Option<i64>) -> Job {
        if let Some(seq) = seq {
            self.seqs.insert(source.to_owned(), seq);
        }
        self
    }

    pub fn announced(mut self) -> Job {
        self.announced = true;
        self
    }

    fn merge(&mut self, other: Job) {
        if other.depth > self.depth {
            self.depth = other.depth;
            self.why = other.why;
        }
        self.rkeys = match (self.rkeys.take(), other.rkeys) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Some(a)
            }
            _ => None,
        };
        self.announced |= other.announced;
        for (source, seq) in other.seqs {
            let held = self.seqs.entry(source).or_insert(seq);
            *held = (*held).min(seq);
        }
    }
}

#[derive(Default)]
struct State {
    pending: BTreeMap<String, (Job, Instant)>,
    running: HashMap<String, BTreeMap<String, i64>>,
    last_run: HashMap<String, Instant>,
    closed: bool,
}

/// The queue, shared by the source threads (push) and the re-check workers (take).
#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a re-check, merged with one already waiting for the DID.
    pub fn push(&self, job: Job) {
        let mut state = self.lock();
        let now = Instant::now();
        let due = state.last_run.get(&job.did).map_or(now, |t| (*t + MIN_INTERVAL).max(now));
        match state.pending.get_mut(&job.did) {
            Some((held, _)) => held.merge(job),
            None => {
                state.pending.insert(job.did.clone(), (job, due));
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The next due re-check, waiting at most `wait`; `None` on timeout or once closed.
    pub fn take(&self, wait: Duration) -> Option<Job> {
        let until = Instant::now() + wait;
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            let now = Instant::now();
            let running: BTreeSet<String> = state.running.keys().cloned().collect();
            // Due when asked, and no sooner than MIN_INTERVAL after the DID's last run.
            let next = state
                .pending
                .iter()
                .filter(|(did, _)| !running.contains(*did))
                .map(|(did, (_, due))| (did.clone(), state.last_run.get(did).map_or(*due, |t| (*t + MIN_INTERVAL).max(*due))))
                .min_by_key(|(_, due)| *due);
            match next {
                Some((did, due)) if due <= now => {
                    let Some((job, _)) = state.pending.remove(&did) else { continue };
                    state.running.insert(did, job.seqs.clone());
                    return Some(job);
                }
                other => {
                    let wake = other.map_or(until, |(_, due)| due.min(until));
                    if now >= until {
                        return None;
                    }
                    state = self.ready.wait_timeout(state, wake.saturating_duration_since(now)).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
        }
    }

    /// Marks the re-check of `did` finished.
    pub fn done(&self, did: &str) {
        let mut state = self.lock();
        state.running.remove(did);
        let now = Instant::now();
        state.last_run.insert(did.to_owned(), now);
        // Only the recent runs matter for spacing: the map stays as small as the busy set.
        if state.last_run.len() > 4096 {
            state.last_run.retain(|_, t| now.duration_since(*t) < MIN_INTERVAL);
        }
        drop(state);
        self.ready.notify_all();
    }

    /// The earliest stream position of `source` with a re-check not finished yet.
    pub fn oldest_unfinished(&self, source: &str) -> Option<i64> {
        let state = self.lock();
        state.pending.values().filter_map(|(job, _)| job.seqs.get(source)).chain(state.running.values().filter_map(|s| s.get(source))).copied().min()
    }

    /// Re-checks waiting or running.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.pending.len() + state.running.len()
    }

    /// Wakes every worker; `take` returns `None` from now on.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_did_merged_and_spaced() {
        let queue = Queue::default();
        queue.push(Job::new("did:plc:a", Depth::Records, "jetstream").records(["r1".to_owned()]).at("s", Some(10)));
        queue.push(Job::new("did:plc:a", Depth::Records, "jetstream").records(["r2".to_owned()]).at("s", Some(12)));
        queue.push(Job::new("did:plc:a", Depth::Full, "gap").at("s", Some(11)));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.oldest_unfinished("s"), Some(10));
        let job = queue.take(Duration::from_millis(10)).unwrap();
        assert_eq!((job.depth, job.why, job.rkeys.clone()), (Depth::Full, "gap", None), "deeper wins, all records");
        // While it runs, its position holds the cursor back; a new event for it waits.
        assert_eq!(queue.oldest_unfinished("s"), Some(10));
        queue.push(Job::new("did:plc:a", Depth::Records, "again").at("s", Some(20)));
        assert_eq!(queue.take(Duration::from_millis(20)), None, "not while the DID's re-check runs");
        queue.done("did:plc:a");
        assert_eq!(queue.oldest_unfinished("s"), Some(20));
        // Spaced by MIN_INTERVAL after the last run: deferred, not dropped.
        assert_eq!(queue.take(Duration::from_millis(200)), None);
        let started = Instant::now();
        let job = queue.take(MIN_INTERVAL * 2).unwrap();
        assert!(started.elapsed() >= MIN_INTERVAL - Duration::from_millis(250));
        assert_eq!(job.why, "again");
        queue.done("did:plc:a");
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.oldest_unfinished("s"), None);
        queue.close();
        assert_eq!(queue.take(Duration::from_secs(5)), None);
    }

    #[test]
    fn other_dids_are_not_held_up_by_a_running_one() {
        let queue = Queue::default();
        queue.push(Job::new("did:plc:a", Depth::Records, "x"));
        queue.push(Job::new("did:plc:b", Depth::Records, "x"));
        let a = queue.take(Duration::from_millis(10)).unwrap();
        let b = queue.take(Duration::from_millis(10)).unwrap();
        assert_ne!(a.did, b.did);
    }
}
