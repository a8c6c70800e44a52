//! The one stream from the tracker to the ladders: marks, fork, exec, exit and overflow, as
//! [`ProcEvent`]s.
//!
//! The scheduler publishes the tracker's dirty marks (and [`ProcEvent::Overflow`] when the kernel
//! side lost marks or events) once per tick; the lifecycle thread publishes fork, exec and exit as
//! they arrive. Every ladder collector subscribes once, when it is built, and takes its queue when
//! it runs: each event reaches every subscriber exactly once, whatever the collectors' intervals.

use std::sync::{Arc, Mutex};

/// Which kinds of change a mark stands for. Today every eBPF mark is [`Scope::ALL`]; a tracker that
/// tells a layout change (mmap, munmap, …) from a residency-only one lets a tier skip the marks it
/// does not care about (see [`crate::ladder::TierPolicy::scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope(u8);

impl Scope {
    /// The set of mappings changed (what the `smaps` tier reads).
    pub const LAYOUT: Scope = Scope(1);
    /// Resident or swapped memory moved (what the `smaps_rollup` tier reads).
    pub const RESIDENCY: Scope = Scope(2);
    pub const ALL: Scope = Scope(3);

    pub fn union(self, other: Scope) -> Scope {
        Scope(self.0 | other.0)
    }

    pub fn intersects(self, other: Scope) -> bool {
        self.0 & other.0 != 0
    }
}

/// What the tracker tells the ladders about one process (or about all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// The process's memory changed (a dirty mark).
    Mark { pid: u32, scope: Scope },
    /// The process replaced its image: everything about its memory is new.
    Exec { pid: u32 },
    /// A new process: whatever a ladder knew under this pid belonged to another process.
    Fork { pid: u32 },
    /// The process is gone: the ladders forget it.
    Exit { pid: u32 },
    /// Marks or events were lost (dirty map full, ring buffer full): every process is suspect.
    Overflow,
}

/// Events a subscriber may hold before its queue collapses into one [`ProcEvent::Overflow`] (a
/// collector with a long interval on a busy host): bounded memory, and nothing silently lost.
pub const QUEUE_CAPACITY: usize = 1 << 16;

type Queue = Arc<Mutex<Vec<ProcEvent>>>;

/// The publishing side. Cheap to clone; every clone publishes to the same subscribers.
#[derive(Debug, Clone, Default)]
pub struct ProcEvents {
    queues: Arc<Mutex<Vec<Queue>>>,
}

/// One subscriber's queue (one per ladder collector).
#[derive(Debug)]
pub struct Subscription {
    queue: Queue,
}

impl ProcEvents {
    /// A new subscriber: it receives every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        let queue = Queue::default();
        lock(&self.queues).push(Arc::clone(&queue));
        Subscription { queue }
    }

    /// Delivers `events`, in order, to every subscriber.
    pub fn publish(&self, events: impl IntoIterator<Item = ProcEvent>) {
        let events: Vec<ProcEvent> = events.into_iter().collect();
        if events.is_empty() {
            return;
        }
        for q in lock(&self.queues).iter() {
            let mut q = lock(q);
            if q.len() + events.len() > QUEUE_CAPACITY {
                q.clear();
                q.push(ProcEvent::Overflow);
            } else {
                q.extend_from_slice(&events);
            }
        }
    }
}

impl ProcEvents {
    /// Publishes a lifecycle event from the tracker's ring buffer (fork, exec, exit; others are
    /// not the ladders' business).
    pub fn publish_lifecycle(&self, ev: &memscope_common::LifecycleEvent) {
        use memscope_common::event_kind;
        let pid = ev.tgid;
        let ev = match ev.kind {
            event_kind::EXIT => ProcEvent::Exit { pid },
            event_kind::EXEC => ProcEvent::Exec { pid },
            event_kind::FORK => ProcEvent::Fork { pid },
            _ => return,
        };
        self.publish([ev]);
    }

    /// Publishes one drain of the tracker's dirty marks.
    pub fn publish_marks(&self, marks: &[crate::tracker::DirtyMark]) {
        self.publish(marks.iter().map(|m| ProcEvent::Mark {
            pid: m.tgid,
            scope: Scope::ALL,
        }));
    }
}

impl Subscription {
    /// A subscription nobody publishes to (tests, one-shot runs).
    pub fn detached() -> Subscription {
        ProcEvents::default().subscribe()
    }

    /// Takes the events published since the last call, in order.
    pub fn take(&self) -> Vec<ProcEvent> {
        std::mem::take(&mut *lock(&self.queue))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(pid: u32) -> ProcEvent {
        ProcEvent::Mark {
            pid,
            scope: Scope::ALL,
        }
    }

    #[test]
    fn every_subscriber_gets_every_event_once_at_its_own_pace() {
        let hub = ProcEvents::default();
        let rollup = hub.subscribe();
        let smaps = hub.subscribe();
        let third = hub.subscribe();
        hub.publish([mark(1), ProcEvent::Exit { pid: 2 }]);
        assert_eq!(rollup.take(), [mark(1), ProcEvent::Exit { pid: 2 }]);
        assert!(rollup.take().is_empty(), "taken once");
        hub.clone().publish([ProcEvent::Fork { pid: 3 }]);
        assert_eq!(rollup.take(), [ProcEvent::Fork { pid: 3 }]);
        // A subscriber that runs less often gets everything since its last run, in order.
        assert_eq!(
            smaps.take(),
            [
                mark(1),
                ProcEvent::Exit { pid: 2 },
                ProcEvent::Fork { pid: 3 }
            ]
        );
        assert_eq!(third.take().len(), 3);
    }

    #[test]
    fn a_full_queue_collapses_into_overflow() {
        let hub = ProcEvents::default();
        let s = hub.subscribe();
        hub.publish((0..QUEUE_CAPACITY as u32).map(mark));
        assert_eq!(s.take().len(), QUEUE_CAPACITY);
        hub.publish((0..QUEUE_CAPACITY as u32).map(mark));
        hub.publish([mark(7)]);
        assert_eq!(s.take(), [ProcEvent::Overflow]);
    }

    #[test]
    fn scopes() {
        assert!(Scope::ALL.intersects(Scope::LAYOUT));
        assert!(!Scope::LAYOUT.intersects(Scope::RESIDENCY));
        assert_eq!(Scope::LAYOUT.union(Scope::RESIDENCY), Scope::ALL);
    }
}
