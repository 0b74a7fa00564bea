//! Reads for the data path, kept until the next commit.
//!
//! Every outbound call an instance makes asks the control plane how that revision reaches its
//! VPC network and which internal endpoints exist. Those answers change only when something is
//! written, and every committed write bumps the change counter before the API acknowledges it
//! ([`ControlPlane::write`]). So an answer read at counter value `v` stays true while the counter
//! is `v`, and is dropped the moment it moves: a change a client was told about takes effect on
//! the very next call, and calls in between skip the store and its JSON decoding.
//!
//! An answer is kept only if the counter did not move while it was read; otherwise it might
//! predate a commit that the new counter value promises is visible.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::error::ApiResult;
use crate::plane::ControlPlane;

/// Answers by key, valid for one value of the change counter.
pub(crate) struct UntilNextCommit<K, V> {
    inner: Mutex<(u64, HashMap<K, V>)>,
}

impl<K, V> Default for UntilNextCommit<K, V> {
    fn default() -> Self {
        Self { inner: Mutex::new((0, HashMap::new())) }
    }
}

/// Bounds the entries kept between two commits, so a caller cannot grow it without limit by
/// naming ever new keys; past it the cache starts over, which costs only store reads.
const MAX_ENTRIES: usize = 4096;

impl<K: Eq + Hash, V: Clone> UntilNextCommit<K, V> {
    /// The answer for `key`: kept if it was read at the current counter value, else `read()`.
    pub(crate) fn get(&self, cp: &ControlPlane, key: K, read: impl FnOnce() -> ApiResult<V>) -> ApiResult<V> {
        let version = cp.version();
        if let Ok(guard) = self.inner.lock()
            && guard.0 == version
            && let Some(v) = guard.1.get(&key)
        {
            return Ok(v.clone());
        }
        let value = read()?;
        if let Ok(mut guard) = self.inner.lock()
            && cp.version() == version
        {
            if guard.0 != version || guard.1.len() >= MAX_ENTRIES {
                *guard = (version, HashMap::new());
            }
            guard.1.insert(key, value.clone());
        }
        Ok(value)
    }
}
