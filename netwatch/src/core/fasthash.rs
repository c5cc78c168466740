//! A hasher for the per-event maps keyed by socket cookies and ports. The default SipHash
//! resists collision attacks on keys an attacker chooses; cookies are the kernel's own
//! counter, so a multiply-and-fold is enough and costs a fraction per lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl IdHasher {
    fn mix(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(K);
        // Fold the well-mixed high half into the low bits the table indexes with.
        self.0 = h ^ (h >> 29);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }
    fn write_u32(&mut self, x: u32) {
        self.mix(x.into());
    }
    fn write_u16(&mut self, x: u16) {
        self.mix(x.into());
    }
    fn write_usize(&mut self, x: usize) {
        self.mix(x as u64);
    }
}

/// A HashMap with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_cookies_spread_over_buckets() {
        let b = BuildHasherDefault::<IdHasher>::default();
        let mut buckets = [0u32; 64];
        for cookie in 1_000_000u64..1_064_000 {
            buckets[(b.hash_one(cookie) & 63) as usize] += 1;
        }
        // 1000 a bucket on average; a poor mix would pile them into a few.
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
        let mut map: IdMap<u64, u64> = IdMap::default();
        map.insert(7, 1);
        assert_eq!(map.get(&7), Some(&1));
    }
}
