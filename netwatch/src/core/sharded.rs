//! A map from socket id to what the engine keeps of it, split into many small tables.
//!
//! One table holding a million TIME_WAIT sockets grows by doubling, and each growth holds
//! the old table and the new one at once: at a million sockets that was 60 MB of netwatch's
//! 216 MB peak. Split 64 ways, each growth copies one sixty-fourth of the sockets, so the
//! peak is the tables themselves. A lookup costs one more hash of the id (a multiply).

use std::hash::BuildHasher;

use super::fasthash::{IdHasher, IdMap};

/// How many tables: enough that one table's growth is ~1.5 % of the whole.
const SHARDS: usize = 64;

/// Which bits of the id's hash pick the table: neither the low bits a table indexes its
/// buckets with nor the top seven it keeps as tags, so each table's buckets stay as well
/// spread as one big table's.
const SHARD_SHIFT: u32 = 40;

pub struct ShardedMap<V> {
    shards: Vec<IdMap<u64, V>>,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| IdMap::default()).collect(),
        }
    }
}

impl<V> ShardedMap<V> {
    fn shard(&self, id: u64) -> usize {
        let h = std::hash::BuildHasherDefault::<IdHasher>::default().hash_one(id);
        (h >> SHARD_SHIFT) as usize % SHARDS
    }

    pub fn get(&self, id: &u64) -> Option<&V> {
        self.shards[self.shard(*id)].get(id)
    }

    pub fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        let s = self.shard(*id);
        self.shards[s].get_mut(id)
    }

    pub fn insert(&mut self, id: u64, v: V) -> Option<V> {
        let s = self.shard(id);
        self.shards[s].insert(id, v)
    }

    pub fn remove(&mut self, id: &u64) -> Option<V> {
        let s = self.shard(*id);
        self.shards[s].remove(id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.shards.iter().flat_map(|s| s.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_one_map() {
        let mut m = ShardedMap::default();
        for id in 0..10_000u64 {
            assert_eq!(m.insert(id * 7, id), None);
        }
        assert_eq!(m.insert(7, 99), Some(1));
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&7), Some(&99));
        assert_eq!(m.get(&8), None);
        assert_eq!(m.remove(&14), Some(2));
        assert_eq!(m.remove(&14), None);
        assert_eq!(m.len(), 9_999);
        let sum: u64 = m.values().sum();
        assert_eq!(sum, (0..10_000u64).sum::<u64>() - 1 + 99 - 2);
    }

    #[test]
    fn sequential_cookies_fill_every_table_evenly() {
        let mut m = ShardedMap::default();
        for cookie in 5_000_000u64..5_064_000 {
            m.insert(cookie, ());
        }
        for s in &m.shards {
            assert!((800..1200).contains(&s.len()), "{} in one table", s.len());
        }
    }
}
