//! The one stream from the tracker to the ladders: marks, fork, exec, exit and overflow, as
//! [`ProcEvent`]s.
//!
//! The scheduler publishes the tracker's dirty marks (and [`ProcEvent::Overflow`] when the kernel
//! side lost marks or events) once per tick; the lifecycle thread publishes fork, exec and exit as
//! they arrive. Every ladder collector subscribes once, when it is built, and takes its queue when
//! it runs: each event reaches every subscriber exactly once, whatever the collectors' intervals.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

/// Which kinds of change a mark stands for. The eBPF tracker classifies in the kernel (see
/// [`Scope::of_reasons`]): a change that may alter the object set is [`Scope::ALL`], an anonymous
/// size change only [`Scope::RESIDENCY`], so the `smaps` tier skips it (see
/// [`crate::ladder::TierPolicy::scope`]).
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

    /// The scope of a dirty mark with these [`memscope_common::reason`] bits: a mapping change,
    /// exec or fork (the object set may differ) is everything; anonymous growth or shrinkage
    /// alone is residency.
    pub fn of_reasons(reasons: u32) -> Scope {
        if reasons & memscope_common::reason::LAYOUT != 0 {
            Scope::ALL
        } else {
            Scope::RESIDENCY
        }
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
    /// Whether the marks published here cover every layout change (the eBPF tracker is attached):
    /// the `smaps` tier then stops treating a change of `statm`'s virtual size as one.
    layout_tracked: Arc<AtomicBool>,
}

/// One subscriber's queue (one per ladder collector).
#[derive(Debug)]
pub struct Subscription {
    queue: Queue,
    layout_tracked: Arc<AtomicBool>,
}

impl ProcEvents {
    /// A new subscriber: it receives every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        let queue = Queue::default();
        lock(&self.queues).push(Arc::clone(&queue));
        Subscription {
            queue,
            layout_tracked: Arc::clone(&self.layout_tracked),
        }
    }

    /// Says whether the tracker publishing here sees every layout change (eBPF attached).
    pub fn set_layout_tracked(&self, tracked: bool) {
        self.layout_tracked.store(tracked, Ordering::Relaxed);
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
            scope: Scope::of_reasons(m.reasons),
        }));
    }
}

impl Subscription {
    /// A subscription nobody publishes to (tests, one-shot runs).
    pub fn detached() -> Subscription {
        ProcEvents::default().subscribe()
    }

    /// Whether the publisher's marks cover every layout change (see
    /// [`ProcEvents::set_layout_tracked`]).
    pub fn layout_tracked(&self) -> bool {
        self.layout_tracked.load(Ordering::Relaxed)
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
    fn marks_are_scoped_by_their_reasons() {
        use memscope_common::reason;
        let hub = ProcEvents::default();
        let s = hub.subscribe();
        assert!(!s.layout_tracked());
        hub.set_layout_tracked(true);
        assert!(
            s.layout_tracked(),
            "subscribers see the publisher's setting"
        );
        let mark = |tgid, reasons| crate::tracker::DirtyMark {
            tgid,
            reasons,
            count: 1,
        };
        hub.publish_marks(&[
            mark(1, reason::ANON),
            mark(2, reason::MAPPING),
            mark(3, reason::ANON | reason::EXEC),
            mark(4, reason::FORK),
        ]);
        let scopes: Vec<Scope> = s
            .take()
            .into_iter()
            .filter_map(|e| match e {
                ProcEvent::Mark { scope, .. } => Some(scope),
                _ => None,
            })
            .collect();
        assert_eq!(
            scopes,
            [Scope::RESIDENCY, Scope::ALL, Scope::ALL, Scope::ALL]
        );
    }

    #[test]
    fn scopes() {
        assert!(Scope::ALL.intersects(Scope::LAYOUT));
        assert!(!Scope::LAYOUT.intersects(Scope::RESIDENCY));
        assert_eq!(Scope::LAYOUT.union(Scope::RESIDENCY), Scope::ALL);
    }
}
