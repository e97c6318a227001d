//! Connection slots: a bounded set of connections in one phase (the TLS handshake, or
//! established), where a newcomer evicts the oldest idle holder rather than being turned
//! away. Idle or slow sockets can then never hold the door shut against the API server: each
//! costs its holder a slot only until someone needs it.
//!
//! "Busy" means, for an established connection, a request in flight (never evicted); for a
//! handshake, that the client has spoken (a genuine client sends its ClientHello at once, an
//! idle socket never does): silent ones go first, and only when every handshake slot is
//! speaking does the oldest speaker go (`evict_busy`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Every slot is held by a connection with a request in flight: the newcomer is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct AllBusy;

struct Holder {
    busy: Arc<AtomicUsize>,
    evict: oneshot::Sender<()>,
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
    /// Requests in flight on this connection (never evicted while above zero).
    pub busy: Arc<AtomicUsize>,
    /// Completes when a newcomer evicted this holder: close the connection.
    pub evicted: oneshot::Receiver<()>,
}

/// What [`Slots::take`] did to make room.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    Free,
    /// The oldest idle holder was told to close.
    Evicted,
}

impl Slots {
    /// Slots whose busy holders are never evicted (established connections).
    pub fn new(capacity: usize) -> Arc<Slots> {
        Arc::new(Slots { inner: Mutex::new(Inner { next: 0, held: BTreeMap::new() }), capacity: capacity.max(1), evict_busy: false })
    }

    /// Slots that always admit a newcomer: the oldest idle holder goes, else the oldest one.
    pub fn always_admitting(capacity: usize) -> Arc<Slots> {
        Arc::new(Slots { inner: Mutex::new(Inner { next: 0, held: BTreeMap::new() }), capacity: capacity.max(1), evict_busy: true })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is one insert or remove: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot, evicting the oldest idle holder when all are taken.
    pub fn take(self: &Arc<Self>) -> Result<(Slot, Taken), AllBusy> {
        let mut inner = self.lock();
        let mut taken = Taken::Free;
        if inner.held.len() >= self.capacity {
            let oldest_idle = inner.held.iter().find(|(_, h)| h.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id);
            let oldest = inner.held.keys().next().copied().filter(|_| self.evict_busy);
            let Some(id) = oldest_idle.or(oldest) else { return Err(AllBusy) };
            if let Some(holder) = inner.held.remove(&id) {
                // A holder that already finished has dropped its receiver: nothing to tell.
                let _ = holder.evict.send(());
            }
            taken = Taken::Evicted;
        }
        let id = inner.next;
        inner.next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let (evict, evicted) = oneshot::channel();
        inner.held.insert(id, Holder { busy: Arc::clone(&busy), evict });
        Ok((Slot { slots: Arc::clone(self), id, busy, evicted }, taken))
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

/// Marks a connection busy while a request is answered.
pub struct Busy(Arc<AtomicUsize>);

impl Busy {
    pub fn new(counter: &Arc<AtomicUsize>) -> Busy {
        counter.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(counter))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        let busy = Busy::new(&b.busy);
        let (_d, _) = slots.take().unwrap();
        assert!(b.evicted.try_recv().is_err());
        drop(c);
        // Everyone busy: refused.
        let (e, _) = slots.take().unwrap();
        let _busy_e = Busy::new(&e.busy);
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
        let _spoke = Busy::new(&spoke.busy);
        let (mut silent, _) = slots.take().unwrap();
        let (mut newcomer, _) = slots.take().unwrap();
        assert_eq!(silent.evicted.try_recv(), Ok(()));
        assert!(spoke.evicted.try_recv().is_err());
        let _speaks = Busy::new(&newcomer.busy);
        let (_, taken) = slots.take().unwrap();
        assert_eq!(taken, Taken::Evicted);
        assert_eq!(spoke.evicted.try_recv(), Ok(()));
        assert!(newcomer.evicted.try_recv().is_err());
    }
}
