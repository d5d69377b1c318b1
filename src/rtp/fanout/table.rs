//! The fan-out's calls in numbered slots **(pure)**.
//!
//! Owns where each call's state lives: a vector of slots, reused when calls end, and the
//! call-id index the API goes through. The packet path reaches a call by its slot (the
//! calendar carries it), with no hashing; calls that arrive together sit side by side, so
//! serving a tick walks memory mostly in order.

use std::collections::HashMap;

use crate::table::give_back_room;

/// Below this the slots are never shrunk.
const SMALL: usize = 64;

#[derive(Debug)]
pub(super) struct CallTable<T> {
    slots: Vec<Option<T>>,
    index: HashMap<u64, u32>,
    /// Empty slots, the latest freed last.
    free: Vec<u32>,
}

impl<T> Default for CallTable<T> {
    fn default() -> Self {
        CallTable {
            slots: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
        }
    }
}

impl<T> CallTable<T> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.keys().copied()
    }

    pub fn slot_of(&self, id: u64) -> Option<u32> {
        self.index.get(&id).copied()
    }

    pub fn get(&self, id: u64) -> Option<&T> {
        self.at(*self.index.get(&id)?)
    }

    pub fn at(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub fn at_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Puts `value` in a free slot under `id` (the caller has removed any call of that id)
    /// and returns the slot.
    pub fn insert(&mut self, id: u64, value: T) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                // More than 4 billion calls at once does not happen on one machine.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.index.insert(id, slot);
        slot
    }

    /// Takes the call out; after a burst, the room it needed goes back (trailing empty slots,
    /// and the index as `table::give_back_room` says).
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let slot = self.index.remove(&id)?;
        let value = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        give_back_room(&mut self.index);
        let trailing_free = self.slots.last().is_some_and(Option::is_none);
        if trailing_free
            && self.slots.capacity() > SMALL
            && self.index.len() < self.slots.capacity() / 4
        {
            while self.slots.last().is_some_and(Option::is_none) {
                self.slots.pop();
            }
            let len = self.slots.len() as u32;
            self.free.retain(|&s| s < len);
            self.slots.shrink_to((self.slots.len() * 2).max(SMALL));
            self.free.shrink_to((self.free.len() * 2).max(SMALL));
        }
        value
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_ids_find_their_call() {
        let mut t = CallTable::default();
        let a = t.insert(10, "a");
        let b = t.insert(20, "b");
        assert_ne!(a, b);
        assert_eq!(t.get(20), Some(&"b"));
        assert_eq!(t.remove(10), Some("a"));
        assert_eq!(t.at(a), None);
        assert_eq!(t.get(10), None);
        assert_eq!(t.insert(30, "c"), a, "the freed slot is taken again");
        assert_eq!(t.len(), 2);
        let mut ids: Vec<u64> = t.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, [20, 30]);
        *t.at_mut(a).unwrap() = "d";
        assert_eq!(t.values().copied().collect::<Vec<_>>(), ["d", "b"]);
    }
}
