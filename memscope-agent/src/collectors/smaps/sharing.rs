//! Sharing changes by arithmetic: when an object gains or loses a mapper, the other mappers' shares
//! of it are updated from what is known instead of re-reading their `smaps`.
//!
//! A process's PSS of an object is its private pages plus, for each page it shares, the page's
//! size divided by the page's map count. So from one mapper's figures of an object:
//!
//! - `private = Private_Clean + Private_Dirty`, the pages only it maps;
//! - `shared = Shared_Clean + Shared_Dirty`, the pages it shares;
//! - `sp = Pss − private`, its PSS of the shared pages, and `c = shared / sp`, their mean map count.
//!
//! **The model.** A mapper that leaves lowers the map count of the others' shared pages by one, a
//! mapper that joins raises it by one: an other's `sp` becomes `shared / (c ∓ 1)`. When the count
//! falls to one, the shared pages become private (`Shared_*` move to `Private_*`); when a mapper
//! joins an object that had a single mapper, the pages the joiner shares move from that mapper's
//! `Private_*` to `Shared_*` at count two. Then, when every other mapper's figures were updated
//! (none was read after the change), the updates are scaled so the object's total PSS moves by
//! exactly what the mover's figures say: `+sp` of the leaver (its private pages drop out of the
//! object), `−sp` of the joiner (its shared pages were already counted in the others' PSS).
//!
//! **Exact** when the object is uniformly shared (every mapper maps the same resident pages, as a
//! memfd, `/dev/shm` file or SysV segment that each worker maps whole) and the figures used are
//! current. **Approximate** otherwise (mappers that map different parts of a file): the total still
//! moves by the exact amount, but its split among the mappers is an estimate. RSS, swap and swap PSS
//! are left as last read (a mapper set change does not move RSS; swap PSS is left alone). The
//! collector marks every figure it changed `derived`, and a process's next `smaps` read (for any
//! reason, at the latest at `max_staleness`) replaces them with exact ones.

use super::object::ObjectMemory;

/// Whether the mover gained or lost the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It maps the object now and did not when the others were read (a fork, a new mapping).
    Join,
    /// It no longer maps the object (an exit, an unmapping).
    Leave,
}

/// One other mapper of the changed object.
#[derive(Debug, Clone, Copy)]
pub struct Other {
    /// Its figures of the object.
    pub memory: ObjectMemory,
    /// Whether its figures predate the change (then they are updated); figures read after the
    /// change already show it.
    pub eligible: bool,
}

fn private(m: &ObjectMemory) -> u64 {
    m.private_clean_bytes.saturating_add(m.private_dirty_bytes)
}

fn shared(m: &ObjectMemory) -> u64 {
    m.shared_clean_bytes.saturating_add(m.shared_dirty_bytes)
}

/// PSS of the shared pages.
fn shared_pss(m: &ObjectMemory) -> u64 {
    m.pss_bytes.saturating_sub(private(m))
}

/// `a * b / c` without overflow (0 when `c` is 0).
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    if c == 0 {
        return 0;
    }
    u64::try_from(u128::from(a) * u128::from(b) / u128::from(c)).unwrap_or(u64::MAX)
}

/// One other's figures after the change, by the map-count model (before the total is conserved).
fn model(change: Change, mover: &ObjectMemory, other: &ObjectMemory, sole: bool) -> ObjectMemory {
    let mut m = *other;
    let (sh, sp) = (shared(other), shared_pss(other));
    match change {
        Change::Leave => {
            if sh == 0 || sp == 0 {
                return m;
            }
            // c − 1 below 1.5 (the kernel rounds to kB): the pages are now its own.
            if sh.saturating_mul(2) < sp.saturating_mul(3) || sole {
                m.private_clean_bytes = m.private_clean_bytes.saturating_add(m.shared_clean_bytes);
                m.private_dirty_bytes = m.private_dirty_bytes.saturating_add(m.shared_dirty_bytes);
                m.shared_clean_bytes = 0;
                m.shared_dirty_bytes = 0;
                m.pss_bytes = private(&m);
            } else {
                // sp' = shared / (c − 1) = shared · sp / (shared − sp).
                m.pss_bytes = private(other).saturating_add(mul_div(sh, sp, sh - sp));
            }
        }
        Change::Join => {
            if sole && sh == 0 {
                // The only other mapper had every page to itself: the joiner's shared pages are
                // its pages, now mapped twice.
                let dirty = mover.shared_dirty_bytes.min(m.private_dirty_bytes);
                let clean = mover.shared_clean_bytes.min(m.private_clean_bytes);
                m.private_dirty_bytes -= dirty;
                m.private_clean_bytes -= clean;
                m.shared_dirty_bytes = m.shared_dirty_bytes.saturating_add(dirty);
                m.shared_clean_bytes = m.shared_clean_bytes.saturating_add(clean);
                m.pss_bytes = private(&m).saturating_add((dirty + clean) / 2);
            } else if sh > 0 && sp > 0 {
                // sp' = shared / (c + 1) = shared · sp / (shared + sp).
                m.pss_bytes = private(other).saturating_add(mul_div(sh, sp, sh.saturating_add(sp)));
            }
        }
    }
    m
}

/// The other mappers' figures after `mover` joined or left the object: `Some` for each eligible
/// other whose figures changed, in the order of `others` (see the module doc for the model).
pub fn shift(change: Change, mover: &ObjectMemory, others: &[Other]) -> Vec<Option<ObjectMemory>> {
    let sole = others.len() == 1;
    let mut out: Vec<Option<ObjectMemory>> = others
        .iter()
        .map(|o| o.eligible.then(|| model(change, mover, &o.memory, sole)))
        .collect();
    if others.iter().all(|o| o.eligible) {
        conserve(change, mover, others, &mut out);
    }
    for (o, new) in others.iter().zip(out.iter_mut()) {
        if new.is_some_and(|n| n == o.memory) {
            *new = None;
        }
    }
    out
}

/// Scales the modelled PSS changes so the others' total moves by exactly the mover's shared PSS:
/// up by a leaver's, down by a joiner's. Rounding is carried from one mapper to the next, so the
/// sum is exact to the byte.
fn conserve(
    change: Change,
    mover: &ObjectMemory,
    others: &[Other],
    out: &mut [Option<ObjectMemory>],
) {
    let target = shared_pss(mover);
    let delta = |o: &Other, n: &Option<ObjectMemory>| -> u64 {
        let new = n.map_or(o.memory.pss_bytes, |n| n.pss_bytes);
        match change {
            Change::Leave => new.saturating_sub(o.memory.pss_bytes),
            Change::Join => o.memory.pss_bytes.saturating_sub(new),
        }
    };
    let deltas: Vec<u64> = others
        .iter()
        .zip(out.iter())
        .map(|(o, n)| delta(o, n))
        .collect();
    let mut total: u64 = deltas.iter().fold(0, |a, d| a.saturating_add(*d));
    // What each other can give up on a join: PSS never falls below the private pages (after the
    // model moved pages from private to shared).
    let room: Vec<u64> = others
        .iter()
        .zip(out.iter())
        .map(|(o, n)| {
            o.memory
                .pss_bytes
                .saturating_sub(private(&n.unwrap_or(o.memory)))
        })
        .collect();
    let (weights, target) = if total > 0 {
        (deltas, target)
    } else {
        // The model moved nothing (no other shares pages yet): spread by the pages that can gain
        // (a leaver's) or lose (a joiner's) share.
        let w: Vec<u64> = match change {
            Change::Leave => others.iter().map(|o| shared(&o.memory)).collect(),
            Change::Join => room.clone(),
        };
        total = w.iter().fold(0, |a, d| a.saturating_add(*d));
        (w, target)
    };
    if total == 0 {
        return;
    }
    let target = match change {
        Change::Join => target.min(room.iter().fold(0, |a, r| a.saturating_add(*r))),
        Change::Leave => target,
    };
    let (mut cum_w, mut given) = (0u64, 0u64);
    for ((o, n), w) in others.iter().zip(out.iter_mut()).zip(weights) {
        cum_w = cum_w.saturating_add(w);
        let upto = mul_div(cum_w, target, total);
        let d = upto - given;
        given = upto;
        let mut m = n.unwrap_or(o.memory);
        m.pss_bytes = match change {
            Change::Leave => o.memory.pss_bytes.saturating_add(d),
            Change::Join => o.memory.pss_bytes.saturating_sub(d).max(private(&m)),
        };
        *n = Some(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// One mapper's figures of a uniformly shared object of `size` bytes with `m` mappers.
    fn uniform(size: u64, m: u64) -> ObjectMemory {
        if m == 1 {
            return ObjectMemory {
                pss_bytes: size,
                rss_bytes: size,
                private_dirty_bytes: size,
                ..ObjectMemory::default()
            };
        }
        ObjectMemory {
            pss_bytes: size / m,
            rss_bytes: size,
            shared_dirty_bytes: size,
            ..ObjectMemory::default()
        }
    }

    fn others(mem: ObjectMemory, n: usize) -> Vec<Other> {
        vec![
            Other {
                memory: mem,
                eligible: true,
            };
            n
        ]
    }

    fn pss_sum(v: &[Option<ObjectMemory>], others: &[Other]) -> u64 {
        v.iter()
            .zip(others)
            .map(|(n, o)| n.unwrap_or(o.memory).pss_bytes)
            .sum()
    }

    #[test]
    fn one_exit_among_many_gives_each_other_its_exact_new_share() {
        // 1000 mappers of 1000 MiB: 1 MiB each; one exits, each of 999 has 1000/999 MiB.
        let size = 1000 * MIB;
        let os = others(uniform(size, 1000), 999);
        let new = shift(Change::Leave, &uniform(size, 1000), &os);
        for n in &new {
            let n = n.expect("every other is updated");
            assert!(
                n.pss_bytes.abs_diff(size / 999) <= 1,
                "{} vs {}",
                n.pss_bytes,
                size / 999
            );
            assert_eq!(n.rss_bytes, size, "RSS does not move");
        }
        assert_eq!(pss_sum(&new, &os), size, "the total is the object's size");
    }

    #[test]
    fn one_fork_among_many_gives_each_other_its_exact_new_share() {
        let size = 12 * MIB;
        let os = others(uniform(size, 3), 3);
        let new = shift(Change::Join, &uniform(size, 4), &os);
        for n in &new {
            assert_eq!(n.expect("updated").pss_bytes, size / 4);
        }
        assert_eq!(
            pss_sum(&new, &os) + size / 4,
            size,
            "the others' total plus the joiner's share is the object's size"
        );
    }

    #[test]
    fn the_last_but_one_leaving_makes_the_pages_private() {
        let size = 8 * MIB;
        let os = others(uniform(size, 2), 1);
        let n = shift(Change::Leave, &uniform(size, 2), &os)[0].expect("updated");
        assert_eq!(n, uniform(size, 1), "PSS = RSS, every page private");
    }

    #[test]
    fn joining_a_sole_mapper_shares_its_pages() {
        let size = 8 * MIB;
        let os = others(uniform(size, 1), 1);
        let n = shift(Change::Join, &uniform(size, 2), &os)[0].expect("updated");
        assert_eq!(n, uniform(size, 2), "half the PSS, every page shared");
    }

    #[test]
    fn joins_and_leaves_in_one_run_chain_exactly() {
        // 10 mappers read together; 3 exit, then 2 new ones (read now: they see 9 mappers) join.
        // Each of the 7 old mappers left ends at 1/9 of the object.
        let size = 9 * 10 * 7 * 8 * MIB;
        let mut mine = uniform(size, 10);
        for _ in 0..3 {
            let os = others(mine, 7);
            mine = shift(Change::Leave, &uniform(size, 10), &os)[0].expect("updated");
        }
        assert_eq!(mine.pss_bytes, size / 7);
        for _ in 0..2 {
            // The other joiner was read after the change: it is not eligible, and stands.
            let mut os = others(mine, 7);
            os.push(Other {
                memory: uniform(size, 9),
                eligible: false,
            });
            let new = shift(Change::Join, &uniform(size, 9), &os);
            assert_eq!(new[7], None, "fresh figures stand");
            mine = new[0].expect("updated");
        }
        assert_eq!(mine.pss_bytes, size / 9);
    }

    #[test]
    fn figures_read_after_the_change_are_left_alone() {
        let size = 6 * MIB;
        let mut os = others(uniform(size, 3), 2);
        os[1].memory = uniform(size, 2);
        os[1].eligible = false;
        let new = shift(Change::Leave, &uniform(size, 3), &os);
        assert_eq!(new[0].expect("updated").pss_bytes, size / 2);
        assert_eq!(new[1], None);
    }

    #[test]
    fn a_leaver_that_shared_nothing_changes_nothing() {
        // It mapped pages no one else maps (its private part only).
        let leaver = ObjectMemory {
            pss_bytes: MIB,
            rss_bytes: MIB,
            private_dirty_bytes: MIB,
            ..ObjectMemory::default()
        };
        let os = others(uniform(4 * MIB, 2), 2);
        assert!(
            shift(Change::Leave, &leaver, &os)
                .iter()
                .all(Option::is_none)
        );
    }

    #[test]
    fn uneven_sharing_conserves_the_total_to_the_byte() {
        // A file mapped in different parts: the others' figures differ, the leaver's shared PSS is
        // 1_000_003 bytes. The split is an estimate; the total is exact.
        let mk = |pss: u64, private: u64, shared: u64| ObjectMemory {
            pss_bytes: pss,
            rss_bytes: private + shared,
            private_clean_bytes: private,
            shared_clean_bytes: shared,
            ..ObjectMemory::default()
        };
        let leaver = mk(1_000_003 + 4096, 4096, 3_000_000);
        let os: Vec<Other> = [
            mk(700_000, 0, 2_000_000),
            mk(333_333, 100_000, 500_000),
            mk(5_000, 0, 9_000),
        ]
        .into_iter()
        .map(|memory| Other {
            memory,
            eligible: true,
        })
        .collect();
        let before: u64 = os.iter().map(|o| o.memory.pss_bytes).sum();
        let new = shift(Change::Leave, &leaver, &os);
        assert_eq!(pss_sum(&new, &os), before + 1_000_003);
        // A joiner that shares 500_001 bytes' worth of the others' pages.
        let joiner = mk(500_001, 0, 1_500_000);
        let new = shift(Change::Join, &joiner, &os);
        assert_eq!(pss_sum(&new, &os), before - 500_001);
        for (n, o) in new.iter().zip(&os) {
            let n = n.expect("updated");
            assert!(
                n.pss_bytes >= private(&o.memory),
                "never below the private pages"
            );
        }
    }
}
