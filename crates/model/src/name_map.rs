//! Maps keyed by the names of resources (regions, services, hosts, instance ids, account ids),
//! with a hasher several times cheaper than the standard library's.
//!
//! The request path looks up a route, an instance, a service's invoker facts and an account in
//! such maps on every request, and SipHash (the default, whose point is resisting keys chosen
//! to collide) cost more per lookup than the lookups' other work. Its protection is not needed
//! here: every key *stored* in these maps is a name runnel made or an operator deployed, or the
//! subject of a token runnel signed, never a string a client chose. A client's string is only
//! ever looked up (a `Host` header), and a lookup cannot lengthen any chain: colliding with
//! stored names costs a few comparisons, the same for every request.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by resource names, hashed with [`NameHasher`].
pub type NameMap<K, V> = HashMap<K, V, BuildHasherDefault<NameHasher>>;
/// A set of resource names, hashed with [`NameHasher`].
pub type NameSet<K> = HashSet<K, BuildHasherDefault<NameHasher>>;

/// FxHash's multiply-rotate over eight bytes at a time, then the length.
#[derive(Default)]
pub struct NameHasher(u64);

impl NameHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
        // The zero padding of the last word would make `abc` and `abc\0` one input.
        self.add(bytes.len() as u64);
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn names_that_differ_anywhere_hash_apart_and_lookups_find_what_was_stored() {
        let names: Vec<String> = (0..2000).map(|i| format!("service-{i:04}")).collect();
        let mut map = NameMap::default();
        for (i, name) in names.iter().enumerate() {
            map.insert(name.clone(), i);
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(map.get(name.as_str()), Some(&i));
        }
        assert_eq!(map.get("service-2000"), None);
        // Names that share their first eight bytes, or differ only in length (the padding of
        // the last word), must still hash apart.
        let hash = |s: &str| BuildHasherDefault::<NameHasher>::default().hash_one(s);
        assert_ne!(hash("service-a"), hash("service-b"));
        assert_ne!(hash("abc"), hash("abc\0"));
        let distinct: NameSet<u64> = names.iter().map(|n| hash(n)).collect();
        assert_eq!(distinct.len(), names.len());
    }
}
