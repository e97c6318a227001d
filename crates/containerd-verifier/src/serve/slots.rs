//! Connection slots: a bounded set of connections in one phase (the TLS handshake, or
//! established), where a newcomer evicts the holder idle the longest rather than being turned
//! away. Idle or slow sockets can then never hold the door shut against the API server: each
//! costs its holder a slot only until someone needs it.
//!
//! "Busy" means, for an established connection, a request in flight (never evicted); for a
//! handshake, that the client has spoken (a genuine client sends its ClientHello at once, an
//! idle socket never does): silent ones go first, and only when every handshake slot is
//! speaking does the oldest speaker go (`evict_busy`).
//!
//! Among idle holders the one idle the longest goes, not the oldest connection: a client that
//! sends a request every few milliseconds on a long-lived connection (the API server does) is
//! never the one closed between two of its requests while a socket silent for seconds exists.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Every slot is held by a connection with a request in flight: the newcomer is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct AllBusy;

struct Holder {
    activity: Arc<Activity>,
    evict: oneshot::Sender<()>,
}

/// What a holder is doing: requests in flight, and when it last started or finished one.
#[derive(Debug, Default)]
pub struct Activity {
    busy: AtomicUsize,
    /// A tick of [`TICKS`]: larger is more recent.
    last: AtomicU64,
}

/// A process-wide order of activity (a counter, not a clock: only "more recent" matters).
static TICKS: AtomicU64 = AtomicU64::new(1);

impl Activity {
    fn touch(&self) {
        self.last.store(TICKS.fetch_add(1, Ordering::Relaxed), Ordering::Release);
    }

    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }
}

struct Inner {
    next: u64,
    /// By age: the smallest id is the oldest.
    held: BTreeMap<u64, Holder>,
}

/// The slots of one phase.
pub struct Slots {
    inner: Mutex<Inner>,
    capacity: usize,
    /// When no holder is idle, evict the oldest busy one rather than refuse (handshakes).
    evict_busy: bool,
}

/// One held slot; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Requests in flight on this connection (never evicted while any is) and its last activity.
    pub activity: Arc<Activity>,
    /// Completes when a newcomer evicted this holder: close the connection.
    pub evicted: oneshot::Receiver<()>,
}

/// What [`Slots::take`] did to make room.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    Free,
    /// The holder idle the longest was told to close.
    Evicted,
}

impl Slots {
    /// Slots whose busy holders are never evicted (established connections).
    pub fn new(capacity: usize) -> Arc<Slots> {
        Arc::new(Slots { inner: Mutex::new(Inner { next: 0, held: BTreeMap::new() }), capacity: capacity.max(1), evict_busy: false })
    }

    /// Slots that always admit a newcomer: the longest idle holder goes, else the oldest one.
    pub fn always_admitting(capacity: usize) -> Arc<Slots> {
        Arc::new(Slots { inner: Mutex::new(Inner { next: 0, held: BTreeMap::new() }), capacity: capacity.max(1), evict_busy: true })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is one insert or remove: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot, evicting the holder idle the longest when all are taken.
    pub fn take(self: &Arc<Self>) -> Result<(Slot, Taken), AllBusy> {
        let mut inner = self.lock();
        let mut taken = Taken::Free;
        if inner.held.len() >= self.capacity {
            // A scan of at most `capacity` holders, only when full: cheaper than keeping an
            // order that every request would have to update under this lock.
            let longest_idle =
                inner.held.iter().filter(|(_, h)| h.activity.idle()).min_by_key(|(id, h)| (h.activity.last.load(Ordering::Acquire), **id)).map(|(id, _)| *id);
            let oldest = inner.held.keys().next().copied().filter(|_| self.evict_busy);
            let Some(id) = longest_idle.or(oldest) else { return Err(AllBusy) };
            if let Some(holder) = inner.held.remove(&id) {
                // A holder that already finished has dropped its receiver: nothing to tell.
                let _ = holder.evict.send(());
            }
            taken = Taken::Evicted;
        }
        let id = inner.next;
        inner.next += 1;
        let activity = Arc::new(Activity::default());
        activity.touch();
        let (evict, evicted) = oneshot::channel();
        inner.held.insert(id, Holder { activity: Arc::clone(&activity), evict });
        Ok((Slot { slots: Arc::clone(self), id, activity, evicted }, taken))
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().held.remove(&self.id);
    }
}

/// Marks a connection busy while a request is answered (or a handshake once its client spoke),
/// and active when it starts and when it ends.
pub struct Busy(Arc<Activity>);

impl Busy {
    pub fn new(activity: &Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Busy(Arc::clone(activity))
    }

    /// Busy for as long as the holder lives (a handshake whose client has spoken): no guard,
    /// the count goes with the slot.
    pub fn for_good(activity: &Activity) {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        activity.touch();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_holder_is_evicted_and_busy_ones_never() {
        let slots = Slots::new(2);
        let (mut a, taken) = slots.take().unwrap();
        assert_eq!(taken, Taken::Free);
        let (mut b, _) = slots.take().unwrap();
        // Full: the oldest (a) goes.
        let (c, taken) = slots.take().unwrap();
        assert_eq!(taken, Taken::Evicted);
        assert_eq!(a.evicted.try_recv(), Ok(()));
        assert!(b.evicted.try_recv().is_err());
        drop(a);
        assert_eq!(slots.held(), 2);
        // b answers a request: c, younger but idle, goes instead.
        let busy = Busy::new(&b.activity);
        let (_d, _) = slots.take().unwrap();
        assert!(b.evicted.try_recv().is_err());
        drop(c);
        // Everyone busy: refused.
        let (e, _) = slots.take().unwrap();
        let _busy_e = Busy::new(&e.activity);
        let slots_now = slots.held();
        assert_eq!(slots_now, 2);
        assert_eq!(slots.take().err(), Some(AllBusy));
        drop(busy);
        assert!(slots.take().is_ok());
    }

    #[test]
    fn always_admitting_slots_evict_silent_holders_first_then_the_oldest() {
        let slots = Slots::always_admitting(2);
        let (mut spoke, _) = slots.take().unwrap();
        let _spoke = Busy::new(&spoke.activity);
        let (mut silent, _) = slots.take().unwrap();
        let (mut newcomer, _) = slots.take().unwrap();
        assert_eq!(silent.evicted.try_recv(), Ok(()));
        assert!(spoke.evicted.try_recv().is_err());
        let _speaks = Busy::new(&newcomer.activity);
        let (_, taken) = slots.take().unwrap();
        assert_eq!(taken, Taken::Evicted);
        assert_eq!(spoke.evicted.try_recv(), Ok(()));
        assert!(newcomer.evicted.try_recv().is_err());
    }

    #[test]
    fn the_holder_idle_the_longest_goes_not_the_oldest_connection() {
        let slots = Slots::new(2);
        // An old connection that keeps answering requests...
        let (mut regular, _) = slots.take().unwrap();
        // ... and a younger one that has been silent since it connected.
        let (mut silent, _) = slots.take().unwrap();
        drop(Busy::new(&regular.activity));
        let (_newcomer, taken) = slots.take().unwrap();
        assert_eq!(taken, Taken::Evicted);
        assert_eq!(silent.evicted.try_recv(), Ok(()));
        assert!(regular.evicted.try_recv().is_err());
    }
}
