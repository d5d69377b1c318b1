//! Hash tables that give back the room of a burst. A `HashMap` keeps the capacity of its
//! busiest moment; the tables whose size follows call churn (the SIP endpoint's transactions,
//! calls and dialogs, its per-source rate buckets, the fan-out's calls) call
//! [`give_back_room`] as entries leave, so memory after a burst or a flood returns to what
//! the calls left need (`tests/churn_memory.rs`); queues of the same kind (the endpoint's
//! answered transactions, oldest first) call [`give_back_queue_room`].

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Below this a table is never shrunk: not worth a reallocation.
const SMALL: usize = 64;

/// Shrinks `table` to twice its length once it is under a quarter full. The gap between the
/// two keeps a steady churn from shrinking and regrowing it on every call; the check is O(1),
/// the shrink O(len) and rare.
pub fn give_back_room<K: Eq + Hash, V, S: BuildHasher>(table: &mut HashMap<K, V, S>) {
    if table.capacity() > SMALL && table.len() < table.capacity() / 4 {
        table.shrink_to((table.len() * 2).max(SMALL));
    }
}

/// [`give_back_room`] for a queue.
pub fn give_back_queue_room<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > SMALL && queue.len() < queue.capacity() / 4 {
        queue.shrink_to((queue.len() * 2).max(SMALL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_queue_shrinks_and_a_full_one_does_not() {
        let mut q: VecDeque<u32> = (0..10_000).collect();
        let full = q.capacity();
        give_back_queue_room(&mut q);
        assert_eq!(q.capacity(), full, "in use: kept");
        q.drain(..9_900);
        give_back_queue_room(&mut q);
        assert!(q.capacity() < full / 10, "{} of {full}", q.capacity());
        assert_eq!(q.len(), 100);
        q.clear();
        give_back_queue_room(&mut q);
        assert!(q.capacity() <= 2 * SMALL, "{}", q.capacity());
    }

    #[test]
    fn a_drained_table_shrinks_and_a_full_one_does_not() {
        let mut t: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let full = t.capacity();
        give_back_room(&mut t);
        assert_eq!(t.capacity(), full, "in use: kept");
        t.retain(|k, _| *k < 100);
        give_back_room(&mut t);
        assert!(t.capacity() < full / 10, "{} of {full}", t.capacity());
        assert_eq!(t.len(), 100);
        t.clear();
        give_back_room(&mut t);
        assert!(t.capacity() <= 2 * SMALL, "{}", t.capacity());
    }
}
