//! Values kept once under a small id: the smaps collector's per-process object lists name each
//! object (its key, its label) by a `u32` instead of holding a copy per process. Ids no list uses
//! any more are freed by [`Interner::sweep`] and handed out again.

use std::{collections::HashMap, hash::Hash};

/// A set of values, each under an id (`u32`) until a sweep finds it unused.
#[derive(Debug)]
pub struct Interner<T> {
    /// By id; `None`: free.
    values: Vec<Option<T>>,
    index: HashMap<T, u32>,
    /// Ids free for reuse.
    free: Vec<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            values: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    /// The id of `value`, taken from the free ids or a new one when it is not held yet.
    pub fn intern(&mut self, value: T) -> u32 {
        if let Some(&id) = self.index.get(&value) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                // More than 4 billion distinct values cannot be held in memory anyway.
                let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
                self.values.push(None);
                id
            }
        };
        if let Some(slot) = self.values.get_mut(id as usize) {
            *slot = Some(value.clone());
        }
        self.index.insert(value, id);
        id
    }

    /// The value under `id`; `None` for an id freed or never handed out.
    pub fn get(&self, id: u32) -> Option<&T> {
        self.values.get(id as usize)?.as_ref()
    }

    /// Values held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Frees every id not in `used`, and gives back the spare capacity of a shrunk set.
    pub fn sweep(&mut self, used: impl IntoIterator<Item = u32>) {
        let mut keep = vec![false; self.values.len()];
        for id in used {
            if let Some(k) = keep.get_mut(id as usize) {
                *k = true;
            }
        }
        for (id, (slot, keep)) in self.values.iter_mut().zip(keep).enumerate() {
            if !keep && let Some(v) = slot.take() {
                self.index.remove(&v);
                self.free.push(id as u32);
            }
        }
        // Trailing free ids go, so the table shrinks after a spike of distinct values.
        while self.values.last().is_some_and(Option::is_none) {
            self.values.pop();
        }
        let len = self.values.len() as u32;
        self.free.retain(|&id| id < len);
        // Lowest ids first: new values fill the holes at the front before the table grows.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        if self.values.capacity() > 2 * self.values.len() + 64 {
            self.values.shrink_to_fit();
            self.free.shrink_to_fit();
        }
        if self.index.capacity() > 2 * self.index.len() + 64 {
            self.index.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_an_id_and_unused_ids_are_reused() {
        let mut t: Interner<String> = Interner::default();
        let a = t.intern("a".into());
        let b = t.intern("b".into());
        assert_ne!(a, b);
        assert_eq!(t.intern("a".into()), a, "one id per value");
        assert_eq!(t.get(b).map(String::as_str), Some("b"));
        assert_eq!(t.len(), 2);

        t.sweep([b]);
        assert_eq!(t.get(a), None, "a is no longer used: freed");
        assert_eq!(t.get(b).map(String::as_str), Some("b"));
        assert_eq!(t.len(), 1);
        let c = t.intern("c".into());
        assert_eq!(c, a, "the freed id is handed out again");
        assert_eq!(t.get(c).map(String::as_str), Some("c"));
        assert_eq!(t.intern("b".into()), b, "b kept its id");
    }

    #[test]
    fn a_sweep_after_a_spike_shrinks_the_table() {
        let mut t: Interner<u64> = Interner::default();
        let ids: Vec<u32> = (0..10_000).map(|v| t.intern(v)).collect();
        assert_eq!(t.len(), 10_000);
        t.sweep(ids[..3].iter().copied());
        assert_eq!(t.len(), 3);
        assert!(t.values.len() == 3 && t.values.capacity() < 1000);
        assert!(t.index.capacity() < 1000);
        assert_eq!(t.get(ids[2]), Some(&2));
        // Ids out of range in `used` are ignored, and a fresh value gets the next id.
        t.sweep([0, 1, 2, 99_999]);
        assert_eq!(t.intern(7), 3);
    }
}
