//! A bounded table with exact least-recently-seen eviction: a hash index into a slot vector
//! threaded by an intrusive doubly linked list (8 bytes per entry), most recent first.
//! Slots are reused in place, so a slot number stays valid until its entry is evicted;
//! `generation` tells a stale slot reference from a live one.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

const NIL: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Slot<K, V> {
    pub key: K,
    pub value: V,
    pub generation: u32,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
pub(crate) struct Table<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Slot<K, V>>,
    head: u32,
    tail: u32,
    cap: usize,
    evictions: u64,
}

impl<K: Hash + Eq + Clone, V> Table<K, V> {
    pub fn new(cap: usize) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.max(1),
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn find<Q>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.get(key).copied()
    }

    /// Finds `key` and marks it most recent, or inserts `make()` (evicting the least recent
    /// entry when full, and returning it).
    pub fn upsert<Q>(&mut self, key: &Q, make: impl FnOnce() -> (K, V)) -> (u32, Option<(K, V)>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(&i) = self.index.get(key) {
            self.touch(i);
            return (i, None);
        }
        let (key, value) = make();
        if self.slots.len() < self.cap {
            let i = self.slots.len() as u32;
            self.slots.push(Slot {
                key: key.clone(),
                value,
                generation: 0,
                prev: NIL,
                next: NIL,
            });
            self.index.insert(key, i);
            self.link_front(i);
            return (i, None);
        }
        // Full: reuse the least recent slot.
        let i = self.tail;
        self.unlink(i);
        let slot = &mut self.slots[i as usize];
        let old_key = std::mem::replace(&mut slot.key, key.clone());
        let old_value = std::mem::replace(&mut slot.value, value);
        slot.generation = slot.generation.wrapping_add(1);
        self.index.remove::<K>(&old_key);
        self.index.insert(key, i);
        self.link_front(i);
        self.evictions += 1;
        (i, Some((old_key, old_value)))
    }

    pub fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    pub fn slot(&self, i: u32) -> &Slot<K, V> {
        &self.slots[i as usize]
    }

    pub fn slot_mut(&mut self, i: u32) -> &mut Slot<K, V> {
        &mut self.slots[i as usize]
    }

    pub fn get(&self, i: u32, generation: u32) -> Option<&Slot<K, V>> {
        self.slots
            .get(i as usize)
            .filter(|s| s.generation == generation)
    }

    pub fn get_mut(&mut self, i: u32, generation: u32) -> Option<&mut Slot<K, V>> {
        self.slots
            .get_mut(i as usize)
            .filter(|s| s.generation == generation)
    }

    pub fn slots_mut(&mut self) -> impl Iterator<Item = &mut Slot<K, V>> {
        self.slots.iter_mut()
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot<K, V>> {
        self.slots.iter()
    }

    /// Keys from most to least recently seen (for tests).
    #[cfg(test)]
    pub fn keys_by_recency(&self) -> Vec<K> {
        let mut out = Vec::new();
        let mut i = self.head;
        while i != NIL {
            out.push(self.slots[i as usize].key.clone());
            i = self.slots[i as usize].next;
        }
        out
    }

    /// Inline bytes of the index and the slots, by capacity (heap owned by keys and values
    /// is the caller's to add).
    pub fn table_bytes(&self) -> usize {
        // hashbrown: one control byte per bucket, buckets ≥ capacity / 0.875.
        let buckets = (self.index.capacity() * 8).div_ceil(7).next_power_of_two();
        buckets * (std::mem::size_of::<(K, u32)>() + 1)
            + self.slots.capacity() * std::mem::size_of::<Slot<K, V>>()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn link_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old != NIL {
            self.slots[old as usize].prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Under any churn the table never exceeds its cap, the index and the slots agree,
        /// and the evicted entry is always the least recently used one (checked against a
        /// naive model).
        #[test]
        fn bounded_and_exact_lru(cap in 1usize..16, ops in proptest::collection::vec(0u32..40, 0..400)) {
            let mut t: Table<u32, u32> = Table::new(cap);
            let mut model: Vec<u32> = Vec::new(); // most recent first
            for k in ops {
                let (_, evicted) = t.upsert(&k, || (k, k * 2));
                if let Some(pos) = model.iter().position(|&m| m == k) {
                    model.remove(pos);
                    prop_assert!(evicted.is_none());
                } else if model.len() == cap {
                    let lru = model.pop();
                    prop_assert_eq!(evicted.map(|(k, _)| k), lru);
                } else {
                    prop_assert!(evicted.is_none());
                }
                model.insert(0, k);
                prop_assert!(t.len() <= cap);
                prop_assert_eq!(t.keys_by_recency(), model.clone());
                for &m in &model {
                    let i = t.find(&m);
                    prop_assert!(i.is_some());
                    if let Some(i) = i {
                        prop_assert_eq!(t.slot(i).value, m * 2);
                    }
                }
            }
        }
    }
}
