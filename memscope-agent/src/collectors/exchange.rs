//! One `smaps` read for both ladder tiers in a tick.
//!
//! `smaps` and `smaps_rollup` each walk the whole page table of the process, so when both tiers
//! re-read a process in the same tick (every process in a full pass: `--once`, start-up; a process
//! both tiers find `new`, `stale` or marked), reading both pays the walk twice. The `smaps`
//! collector derives the rollup from its `smaps` text where that is exact
//! ([`super::smaps::fold_process_rollup`]) and leaves it here; the `processes` collector uses it
//! instead of reading `smaps_rollup`.
//!
//! The exchange travels with the tick's `statm` pass, which the scheduler hands to both collectors,
//! so it lives exactly one tick. The scheduler marks it when a `smaps` collector runs in the tick.
//! The collectors run side by side: the `smaps` collector announces the processes it will read
//! (its plan), leaves each one's rollup (or `None`: not derivable, not read) as it goes, and says
//! when it is finished. The `processes` collector waits for the plan (when one is expected), reads
//! what is not planned, then takes the planned ones, waiting for each until it is left or the
//! `smaps` run is finished; whatever it does not get, it reads itself. So which figures come from
//! where does not depend on the threads' timing. A tier that runs alone (the other collector
//! disabled, not due, or still busy with an earlier tick) reads as before.

use std::{
    collections::{HashMap, HashSet},
    sync::{Condvar, Mutex, MutexGuard},
};

use crate::procfs::counters::MemCounters;

/// A rollup derived from a `smaps` read: the process's start time (so a pid reused since is not
/// given another's figures) and its counters.
pub type DerivedRollup = (u64, MemCounters);

#[derive(Debug, Default)]
struct State {
    /// The scheduler runs a `smaps` collector this tick: its plan is coming.
    expected: bool,
    /// The plan is made.
    planned: bool,
    /// Processes the `smaps` collector will read this tick.
    plan: HashSet<u32>,
    /// What it left: `None` where no exact rollup came of the read.
    left: HashMap<u32, Option<DerivedRollup>>,
    /// The `smaps` run is over: nothing more will be left.
    finished: bool,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SmapsExchange {
    state: Mutex<State>,
    changed: Condvar,
}

impl SmapsExchange {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A collector that panicked mid-run leaves a usable state: at worst a missing entry.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scheduler: a `smaps` collector runs this tick, so the others wait for its plan
    /// ([`Self::wait_for_plan`]) and take the same rollups whatever the threads' timing.
    pub fn expect_plan(&self) {
        self.lock().expected = true;
    }

    /// The `processes` collector: when a plan is expected, waits until it is made (or the `smaps`
    /// run is over without one).
    pub fn wait_for_plan(&self) {
        let mut s = self.lock();
        while s.expected && !s.planned && !s.finished {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The `smaps` collector: the processes it is about to read.
    pub fn plan(&self, pids: impl IntoIterator<Item = u32>) {
        let mut s = self.lock();
        s.planned = true;
        s.plan.extend(pids);
        drop(s);
        self.changed.notify_all();
    }

    /// The `smaps` collector: what its read of `pid` gave.
    pub fn leave(&self, pid: u32, rollup: Option<DerivedRollup>) {
        self.lock().left.insert(pid, rollup);
        self.changed.notify_all();
    }

    /// The `smaps` collector: its run is over (also when it ends early).
    pub fn finish(&self) {
        self.lock().finished = true;
        self.changed.notify_all();
    }

    /// The `processes` collector: whether `pid`'s rollup may still come from here.
    pub fn planned(&self, pid: u32) -> bool {
        let s = self.lock();
        s.plan.contains(&pid) && (!s.finished || s.left.contains_key(&pid))
    }

    /// The `processes` collector: every process the `smaps` collector planned to read this tick.
    pub fn plan_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.lock().plan.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// The `processes` collector: `pid`'s derived rollup, waiting while it may still come.
    pub fn take(&self, pid: u32) -> Option<DerivedRollup> {
        let mut s = self.lock();
        loop {
            if let Some(r) = s.left.remove(&pid) {
                return r;
            }
            if s.finished || !s.plan.contains(&pid) {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Marks the exchange finished when dropped: a `smaps` run that returns early (an error, a
    /// panic) never leaves the `processes` collector waiting.
    pub fn finish_on_drop(&self) -> FinishOnDrop<'_> {
        FinishOnDrop(self)
    }
}

/// See [`SmapsExchange::finish_on_drop`].
pub struct FinishOnDrop<'a>(&'a SmapsExchange);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The exchange belongs to one tick's pass, not to its value: two passes with the same `statm`
/// figures are equal whatever was exchanged.
impl PartialEq for SmapsExchange {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SmapsExchange {}

/// A copy of a pass starts with an empty exchange.
impl Clone for SmapsExchange {
    fn clone(&self) -> Self {
        SmapsExchange::default()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    fn rollup(pss: u64) -> DerivedRollup {
        (
            7,
            MemCounters {
                pss,
                ..MemCounters::default()
            },
        )
    }

    #[test]
    fn the_processes_tier_waits_for_what_is_planned_and_reads_the_rest_itself() {
        let ex = Arc::new(SmapsExchange::default());
        assert!(!ex.planned(1), "no plan: read it yourself");
        assert_eq!(ex.take(1), None, "never waits without a plan");
        ex.plan([1, 2, 3]);
        assert!(ex.planned(2) && !ex.planned(4));
        let smaps = {
            let ex = Arc::clone(&ex);
            std::thread::spawn(move || {
                let _finish = ex.finish_on_drop();
                std::thread::sleep(Duration::from_millis(20));
                ex.leave(1, Some(rollup(100)));
                ex.leave(2, None);
                // 3 is never read (the budget ran out).
            })
        };
        assert_eq!(ex.take(1), Some(rollup(100)), "waited for it");
        assert_eq!(ex.take(2), None, "not derivable");
        assert_eq!(ex.take(3), None, "the run finished without it");
        assert!(!ex.planned(3));
        smaps.join().expect("smaps thread");
    }

    #[test]
    fn an_expected_plan_is_waited_for() {
        let ex = Arc::new(SmapsExchange::default());
        ex.wait_for_plan();
        assert!(!ex.planned(1), "none expected: no wait, no plan");
        ex.expect_plan();
        let smaps = {
            let ex = Arc::clone(&ex);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                ex.plan([1]);
            })
        };
        ex.wait_for_plan();
        assert!(ex.planned(1), "the plan came before the wait ended");
        smaps.join().expect("smaps thread");
    }

    #[test]
    fn a_smaps_run_that_panics_still_finishes() {
        let ex = Arc::new(SmapsExchange::default());
        ex.expect_plan();
        let t = {
            let ex = Arc::clone(&ex);
            std::thread::spawn(move || {
                let _finish = ex.finish_on_drop();
                panic!("a collector bug");
            })
        };
        assert!(t.join().is_err());
        ex.wait_for_plan();
        assert_eq!(ex.take(5), None);
    }
}
