//! A bounded cache of verified tokens, so the frontend pays one RSA verification per token rather
//! than one per request.
//!
//! Keyed by the whole token string: a token whose signature (or anything else) was changed is a
//! different string, is never found here, and goes through the full check. The index hashes
//! only the token's last [`HASHED_TAIL`] characters, the end of its signature: 192 bits of an
//! RSA signature, which differ between any two tokens runnel signed, for a tenth of the hashing
//! of the whole token (this runs on every request that carries a token). The whole string is
//! still compared before an entry is used, so a token that shares a cached token's signature
//! but not its header or claims misses, and is refused by the full check like any forgery.
//!
//! An entry remembers the claims and the fingerprint of the key that verified them; a hit still
//! checks that this key is published in the caller's key set, and runs the claim checks
//! (issuer, time, audience) with the caller's arguments, which are cheap. Entries leave when they expire or, when a shard is
//! full, by CLOCK (second chance): an approximation of LRU that needs no list surgery on a hit.
//!
//! Sharded by the token's hash so that requests on different cores rarely share a lock.
//!
//! The hash is a keyed multiply-and-fold of those 32 bytes ([`TailHash`]), not SipHash: it is
//! only an index, so a collision can cost a miss (a full check) but never a wrong hit, and an
//! entry only ever gets in with a signature runnel made, which nobody chooses. SipHash over the
//! tail, and again over the resulting `u64` inside the index, cost about 370 instructions per
//! request (`bench/instructions --authz`); this costs a tenth of that.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderValue;

use crate::keys::KeySet;
use runnel_policy::Reason;

use crate::verify::{Claims, Refusal, check_claims, verify_signature};

const SHARDS: usize = 16;

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// RSA verifications performed (misses that got as far as the signature).
    pub rsa_verifications: u64,
    pub evictions: u64,
    pub entries: usize,
}

/// What the frontend replaces a checked token's signature with, as Cloud Run's does.
pub const SIGNATURE_REMOVED: &str = "SIGNATURE_REMOVED_BY_GOOGLE";

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub claims: Arc<Claims>,
    /// The `Bearer …` header value the token is forwarded as once checked: its signature
    /// replaced by [`SIGNATURE_REMOVED`], so the receiving instance cannot replay it from its
    /// logs. Made and validated once per cached token; a clone shares the bytes. `None` only
    /// for a token that cannot be a header value, which the frontend must then refuse.
    pub forwarded: Option<HeaderValue>,
}

/// `Bearer HEADER.CLAIMS.SIGNATURE_REMOVED_BY_GOOGLE` for `token`.
fn forwarded(token: &str) -> Option<HeaderValue> {
    let signed = token.rsplit_once('.').map_or(token, |(signed, _)| signed);
    HeaderValue::from_maybe_shared(format!("Bearer {signed}.{SIGNATURE_REMOVED}")).ok()
}

/// How many characters from the end of a token the index hashes.
pub const HASHED_TAIL: usize = 32;

/// The part of a token the index hashes: its end, which for any token that can verify is the
/// end of its signature (an RS256 signature is 342 characters). Taken without looking for the
/// last dot, which would scan the whole signature.
fn hashed_part(bytes: &[u8]) -> &[u8] {
    &bytes[bytes.len().saturating_sub(HASHED_TAIL)..]
}

struct Slot {
    hash: u64,
    token: Box<str>,
    claims: Arc<Claims>,
    forwarded: Option<HeaderValue>,
    fingerprint: Vec<u8>,
    kid: String,
    referenced: bool,
}

/// A keyed hash of a token's tail (see the module's documentation): four 64-bit words, each
/// mixed with its own random key by a folded 128-bit multiplication, as foldhash and aHash do.
struct TailHash {
    keys: [u64; 5],
}

impl TailHash {
    fn new() -> Self {
        let seed = RandomState::new();
        Self { keys: std::array::from_fn(|i| seed.hash_one(i)) }
    }

    /// The hash of `token`'s [`hashed_part`].
    fn hash(&self, token: &[u8]) -> u64 {
        fn fold(a: u64, b: u64) -> u64 {
            let product = u128::from(a) * u128::from(b);
            (product as u64) ^ ((product >> 64) as u64)
        }
        let tail = hashed_part(token);
        let mut padded = [0u8; HASHED_TAIL];
        padded[HASHED_TAIL - tail.len()..].copy_from_slice(tail);
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&padded[8 * i..8 * i + 8]);
            u64::from_le_bytes(w)
        };
        let k = &self.keys;
        let mixed = fold(word(0) ^ k[0], word(1) ^ k[1]) ^ fold(word(2) ^ k[2], word(3) ^ k[3]);
        fold(mixed ^ tail.len() as u64, k[4])
    }
}

/// The index's keys are [`TailHash`] values already: hashing them again would only cost.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; any other input still gets a deterministic value.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Which shard a hash belongs to: bits the index does not use (it places entries by the low
/// bits and tags them with the top seven).
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

#[derive(Default)]
struct Shard {
    /// Token hash → index in `slots`.
    index: HashMap<u64, usize, BuildHasherDefault<Prehashed>>,
    slots: Vec<Slot>,
    hand: usize,
    /// Hits in this shard, counted under its lock (an atomic counter beside it cost one more
    /// atomic instruction per request).
    hits: u64,
}

impl Shard {
    fn find(&mut self, hash: u64, token: &[u8]) -> Option<usize> {
        let i = *self.index.get(&hash)?;
        (self.slots.get(i)?.token.as_bytes() == token).then_some(i)
    }

    fn remove(&mut self, i: usize) {
        let slot = self.slots.swap_remove(i);
        self.index.remove(&slot.hash);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.hash, i);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    /// Inserts, evicting if full. Returns whether something was evicted.
    fn insert(&mut self, slot: Slot, capacity: usize, now: u64, skew: u64) -> bool {
        if let Some(&i) = self.index.get(&slot.hash) {
            // Same hash, another token (vanishingly rare with a keyed hash): the newer one wins.
            self.slots[i] = slot;
            return false;
        }
        if self.slots.len() < capacity {
            self.index.insert(slot.hash, self.slots.len());
            self.slots.push(slot);
            return false;
        }
        // CLOCK: the first entry that is expired or was not used since the hand last passed.
        let len = self.slots.len();
        for _ in 0..2 * len {
            let i = self.hand;
            self.hand = (self.hand + 1) % len;
            let victim = &mut self.slots[i];
            if victim.referenced && victim.claims.exp.saturating_add(skew) >= now {
                victim.referenced = false;
                continue;
            }
            self.index.remove(&victim.hash);
            self.index.insert(slot.hash, i);
            self.slots[i] = slot;
            return true;
        }
        false
    }
}

/// Verified tokens, bounded. Share one per frontend (it is `Sync`).
pub struct VerifyCache {
    shards: Box<[Mutex<Shard>]>,
    capacity_per_shard: usize,
    hasher: TailHash,
    misses: AtomicU64,
    rsa_verifications: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyCache").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Default for VerifyCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl VerifyCache {
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// A cache of about `capacity` tokens (rounded up to a multiple of the shard count).
    pub fn new(capacity: usize) -> Self {
        let capacity_per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            capacity_per_shard,
            hasher: TailHash::new(),
            misses: AtomicU64::new(0),
            rsa_verifications: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The same verdict as [`crate::verify_id_token`], from the cache when this exact token was
    /// verified before with a key still in `keys`; with the value the token is forwarded as.
    pub fn verify(
        &self,
        token: &str,
        keys: &KeySet,
        issuer: &str,
        audiences: &[String],
        now: u64,
        skew: u64,
    ) -> Result<Verified, Refusal> {
        self.verify_bytes(token.as_bytes(), keys, issuer, audiences, now, skew)
    }

    /// [`VerifyCache::verify`] for a token as the request carried it. A hit is found by
    /// comparing bytes with a token that was text when it verified, so only a miss checks
    /// that the token is UTF-8: on a kilobyte token that scan cost as much as the lookup.
    pub fn verify_bytes(
        &self,
        token: &[u8],
        keys: &KeySet,
        issuer: &str,
        audiences: &[String],
        now: u64,
        skew: u64,
    ) -> Result<Verified, Refusal> {
        let hash = self.hasher.hash(token);
        let shard = &self.shards[shard_of(hash)];

        let cached = {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            match shard.find(hash, token) {
                Some(i) => {
                    let slot = &mut shard.slots[i];
                    let still_published = keys.get(&slot.kid).is_some_and(|k| k.fingerprint() == slot.fingerprint);
                    if still_published {
                        slot.referenced = true;
                        let verified = Verified { claims: slot.claims.clone(), forwarded: slot.forwarded.clone() };
                        shard.hits += 1;
                        Some(verified)
                    } else {
                        shard.remove(i);
                        None
                    }
                }
                None => None,
            }
        };
        if let Some(verified) = cached {
            check_claims(&verified.claims, issuer, audiences, now, skew)?;
            return Ok(verified);
        }

        self.misses.fetch_add(1, Ordering::Relaxed);
        let token = std::str::from_utf8(token).map_err(|e| {
            let bad = token[e.valid_up_to()];
            Refusal::new(
                Reason::TokenMalformed,
                format!(
                    "the token holds the byte {bad:#04x}, which base64url JWTs never do; send the token as the metadata server gave it"
                ),
            )
        })?;
        let signed = verify_signature(token, keys, Some(&self.rsa_verifications))?;
        let claims = Arc::new(signed.claims);
        let forwarded = forwarded(token);
        if claims.exp.saturating_add(skew) >= now {
            let slot = Slot {
                hash,
                token: token.into(),
                claims: claims.clone(),
                forwarded: forwarded.clone(),
                fingerprint: signed.fingerprint,
                kid: signed.kid,
                referenced: false,
            };
            let evicted =
                shard.lock().unwrap_or_else(PoisonError::into_inner).insert(slot, self.capacity_per_shard, now, skew);
            if evicted {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        check_claims(&claims, issuer, audiences, now, skew)?;
        Ok(Verified { claims, forwarded })
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).hits).sum(),
            misses: self.misses.load(Ordering::Relaxed),
            rsa_verifications: self.rsa_verifications.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most tokens held at once.
    pub fn capacity(&self) -> usize {
        self.capacity_per_shard * SHARDS
    }

    /// Forgets every token (for example when a key was withdrawn by hand).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            *shard.lock().unwrap_or_else(PoisonError::into_inner) = Shard::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(hash: u64, exp: u64) -> Slot {
        let claims = Claims {
            iss: "i".into(),
            aud: vec!["a".into()],
            azp: None,
            sub: "1".into(),
            email: None,
            email_verified: false,
            iat: 0,
            exp,
            google: None,
        };
        Slot {
            hash,
            token: format!("t{hash}").into(),
            claims: Arc::new(claims),
            forwarded: None,
            fingerprint: vec![],
            kid: "k".into(),
            referenced: false,
        }
    }

    #[test]
    fn clock_spares_recently_used_entries() {
        let mut shard = Shard::default();
        for h in 0..3 {
            assert!(!shard.insert(slot(h, 100), 3, 0, 0));
        }
        let i = shard.find(0, b"t0").unwrap();
        shard.slots[i].referenced = true;
        assert!(shard.insert(slot(3, 100), 3, 0, 0));
        assert!(shard.find(0, b"t0").is_some(), "the referenced entry got a second chance");
        assert!(shard.find(1, b"t1").is_none(), "the first unreferenced entry went");
        assert_eq!(shard.slots.len(), 3);
        assert_eq!(shard.index.len(), 3);
    }

    #[test]
    fn expired_entries_go_first_even_if_referenced() {
        let mut shard = Shard::default();
        shard.insert(slot(0, 100), 2, 0, 0);
        shard.insert(slot(1, 10), 2, 0, 0);
        for s in &mut shard.slots {
            s.referenced = true;
        }
        assert!(shard.insert(slot(2, 100), 2, 50, 0));
        assert!(shard.find(1, b"t1").is_none());
        assert!(shard.find(0, b"t0").is_some());
    }

    #[test]
    fn the_tail_hash_is_keyed_and_sees_every_byte_of_the_tail() {
        let (a, b) = (TailHash::new(), TailHash::new());
        let tail = *b"0123456789abcdefghijklmnopqrstuv";
        assert_eq!(a.hash(&tail), a.hash(&tail));
        assert_ne!(a.hash(&tail), b.hash(&tail), "two caches, two keys");
        let mut seen = std::collections::HashSet::from([a.hash(&tail)]);
        for i in 0..HASHED_TAIL {
            let mut changed = tail;
            changed[i] ^= 1;
            assert!(seen.insert(a.hash(&changed)), "flipping byte {i} did not change the hash");
        }
        // Only the tail counts; a shorter token is padded, and its length is part of the hash.
        let long = [b"x".repeat(300).as_slice(), &tail].concat();
        assert_eq!(a.hash(&long), a.hash(&tail));
        assert_ne!(a.hash(b"abc"), a.hash(b"\0abc"));
        // The shards and the index's buckets use different bits of it.
        let shards: std::collections::HashSet<usize> =
            (0..200u8).map(|i| shard_of(a.hash(&[i; HASHED_TAIL]))).collect();
        assert_eq!(shards.len(), SHARDS);
    }

    #[test]
    fn removal_keeps_the_index_right() {
        let mut shard = Shard::default();
        for h in 0..4 {
            shard.insert(slot(h, 100), 8, 0, 0);
        }
        shard.remove(0);
        for h in 1..4 {
            assert!(shard.find(h, format!("t{h}").as_bytes()).is_some());
        }
        assert!(shard.find(0, b"t0").is_none());
    }
}
