//! Making tokens: RS256 ID tokens shaped as Google's metadata server issues them, and opaque
//! access tokens.
//!
//! ID tokens are cached per (account unique id, audience, format) and handed out again until
//! fewer than [`RENEW_BEFORE`] seconds are left, as Google's metadata server does; clients cache
//! them too, and re-signing on every request would cost an RSA signature each time.
//!
//! Access tokens are `ya29.` followed by 43 base64url characters (32 random bytes): opaque,
//! cosmetically like Google's, and recognisable by the verifier, which refuses them where an ID
//! token is needed. runnel keeps them in memory only (a restart invalidates them; clients fetch
//! new ones when refused), mapped to the account and scopes, for the control plane to look up.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::keys::{ALGORITHM, KeyError, Keys};

/// Lifetime of an ID token, in seconds (`exp = iat + 3600`, as Google's).
pub const ID_TOKEN_LIFETIME: u64 = 3600;

/// Lifetime of an access token, in seconds.
pub const ACCESS_TOKEN_LIFETIME: u64 = 3600;

/// A cached token is handed out again only while it has more than this many seconds left.
pub const RENEW_BEFORE: u64 = 300;

/// How every runnel access token starts.
pub const ACCESS_TOKEN_PREFIX: &str = "ya29.";

/// Longest audience runnel signs a token for (a URL; keeps tokens far below the verifier's limit).
pub const MAX_AUDIENCE_LEN: usize = 2048;

/// The scope instances get when they ask for none, as on Cloud Run.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Who a token is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    /// The numeric unique id: `sub` and `azp` of ID tokens.
    pub unique_id: String,
    pub email: String,
}

/// What Google puts in `google.compute_engine` with `format=full`. For runnel: the instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ComputeEngine {
    pub instance_creation_timestamp: u64,
    pub instance_id: String,
    pub instance_name: String,
    pub project_id: String,
    pub project_number: u64,
    pub zone: String,
}

/// `format=` of the identity endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format<'a> {
    Standard,
    /// Adds `google.compute_engine`; with `licenses`, an (empty) `license_id` list in it.
    Full {
        compute_engine: &'a ComputeEngine,
        licenses: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the audience is empty")]
    EmptyAudience,
    #[error("the audience is {0} bytes long, more than the {MAX_AUDIENCE_LEN} runnel signs")]
    AudienceTooLong(usize),
    #[error("runnel has no signing key")]
    NoKey,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the system random generator failed")]
    Random,
}

/// A signed ID token.
#[derive(Clone, PartialEq, Eq)]
pub struct IdToken {
    pub token: Arc<str>,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl fmt::Debug for IdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdToken").field("issued_at", &self.issued_at).field("expires_at", &self.expires_at).finish()
    }
}

/// An access token as the metadata server hands it out.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: Arc<str>,
    /// Seconds left, counted from the `now` of the request.
    pub expires_in: u64,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("expires_in", &self.expires_in).finish()
    }
}

/// What an access token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenInfo {
    pub unique_id: String,
    pub email: String,
    pub scopes: Vec<String>,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FormatKey {
    Standard,
    Full(ComputeEngine, bool),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IdKey {
    unique_id: String,
    audience: String,
    format: FormatKey,
}

/// Maps that drop expired entries when they have doubled since the last sweep: amortised O(1),
/// bounded by twice the live entries.
struct Expiring<K, V> {
    map: HashMap<K, V>,
    sweep_at: usize,
}

impl<K: Eq + std::hash::Hash, V> Expiring<K, V> {
    const MIN_SWEEP: usize = 1024;

    fn new() -> Self {
        Self { map: HashMap::new(), sweep_at: Self::MIN_SWEEP }
    }

    fn insert(&mut self, key: K, value: V, live: impl Fn(&V) -> bool) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, v| live(v));
            self.sweep_at = (self.map.len() * 2).max(Self::MIN_SWEEP);
        }
        self.map.insert(key, value);
    }
}

struct AccessTokens {
    /// token → what it stands for.
    by_token: Expiring<Arc<str>, AccessTokenInfo>,
    /// (unique id, sorted scopes) → the token handed out last.
    current: Expiring<(String, Vec<String>), (Arc<str>, u64)>,
}

/// Mints tokens with a daemon's keys, for one issuer.
pub struct Minter {
    keys: Arc<Keys>,
    issuer: String,
    id_tokens: Mutex<Expiring<IdKey, IdToken>>,
    access: Mutex<AccessTokens>,
    random: SystemRandom,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

#[derive(Serialize)]
struct Payload<'a> {
    aud: &'a str,
    azp: &'a str,
    email: &'a str,
    email_verified: bool,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    google: Option<serde_json::Value>,
    iat: u64,
    iss: &'a str,
    sub: &'a str,
}

impl Minter {
    /// `issuer` is the `iss` of every token, e.g. `http://127.0.0.1:8090` (the daemon's API, where
    /// the discovery document and the keys are published).
    pub fn new(keys: Arc<Keys>, issuer: impl Into<String>) -> Self {
        Self {
            keys,
            issuer: issuer.into(),
            id_tokens: Mutex::new(Expiring::new()),
            access: Mutex::new(AccessTokens { by_token: Expiring::new(), current: Expiring::new() }),
            random: SystemRandom::new(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// An ID token for `account` and `audience`: the cached one while it has more than
    /// [`RENEW_BEFORE`] seconds left, else a new one (`iat = now`, `exp = now + 3600`).
    pub fn id_token(
        &self,
        account: &Account,
        audience: &str,
        format: Format<'_>,
        now: u64,
    ) -> Result<IdToken, MintError> {
        if audience.is_empty() {
            return Err(MintError::EmptyAudience);
        }
        if audience.len() > MAX_AUDIENCE_LEN {
            return Err(MintError::AudienceTooLong(audience.len()));
        }
        let key = IdKey {
            unique_id: account.unique_id.clone(),
            audience: audience.to_string(),
            format: match format {
                Format::Standard => FormatKey::Standard,
                Format::Full { compute_engine, licenses } => FormatKey::Full(compute_engine.clone(), licenses),
            },
        };
        let fresh = |t: &IdToken| t.expires_at > now.saturating_add(RENEW_BEFORE) && t.issued_at <= now;
        if let Some(token) = self.id_tokens.lock().unwrap_or_else(PoisonError::into_inner).map.get(&key)
            && fresh(token)
        {
            return Ok(token.clone());
        }
        let token = self.sign_id_token(account, audience, format, now)?;
        self.id_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, token.clone(), |t| t.expires_at > now);
        Ok(token)
    }

    fn sign_id_token(
        &self,
        account: &Account,
        audience: &str,
        format: Format<'_>,
        now: u64,
    ) -> Result<IdToken, MintError> {
        let key = self.keys.signing_key(now).ok_or(MintError::NoKey)?;
        let google = match format {
            Format::Standard => None,
            Format::Full { compute_engine, licenses } => {
                let mut ce = serde_json::to_value(compute_engine).unwrap_or_default();
                if licenses && let Some(obj) = ce.as_object_mut() {
                    obj.insert("license_id".into(), serde_json::Value::Array(vec![]));
                }
                Some(serde_json::json!({ "compute_engine": ce }))
            }
        };
        let exp = now + ID_TOKEN_LIFETIME;
        let header = Header { alg: ALGORITHM, kid: key.kid(), typ: "JWT" };
        let payload = Payload {
            aud: audience,
            azp: &account.unique_id,
            email: &account.email,
            email_verified: true,
            exp,
            google,
            iat: now,
            iss: &self.issuer,
            sub: &account.unique_id,
        };
        let mut jwt = json_b64(&header);
        jwt.push('.');
        jwt.push_str(&json_b64(&payload));
        let signature = key.sign(jwt.as_bytes())?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(IdToken { token: jwt.into(), issued_at: now, expires_at: exp })
    }

    /// An access token for `account` with `scopes` (empty: [`DEFAULT_SCOPE`]); the one handed
    /// out before while it has more than [`RENEW_BEFORE`] seconds left.
    pub fn access_token(&self, account: &Account, scopes: &[String], now: u64) -> Result<AccessToken, MintError> {
        let mut scopes: Vec<String> = if scopes.is_empty() { vec![DEFAULT_SCOPE.to_string()] } else { scopes.to_vec() };
        scopes.sort();
        scopes.dedup();
        let key = (account.unique_id.clone(), scopes.clone());
        let mut access = self.access.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((token, expires_at)) = access.current.map.get(&key)
            && *expires_at > now.saturating_add(RENEW_BEFORE)
        {
            return Ok(AccessToken { token: token.clone(), expires_in: expires_at - now });
        }
        let mut random = [0u8; 32];
        self.random.fill(&mut random).map_err(|_| MintError::Random)?;
        let token: Arc<str> = format!("{ACCESS_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(random)).into();
        let expires_at = now + ACCESS_TOKEN_LIFETIME;
        let info =
            AccessTokenInfo { unique_id: account.unique_id.clone(), email: account.email.clone(), scopes, expires_at };
        access.by_token.insert(token.clone(), info, |i| i.expires_at > now);
        access.current.insert(key, (token.clone(), expires_at), |(_, e)| *e > now);
        Ok(AccessToken { token, expires_in: ACCESS_TOKEN_LIFETIME })
    }

    /// Who an access token stands for, if runnel issued it and it has not expired at `now`.
    pub fn access_token_principal(&self, token: &str, now: u64) -> Option<AccessTokenInfo> {
        let access = self.access.lock().unwrap_or_else(PoisonError::into_inner);
        access.by_token.map.get(token).filter(|i| i.expires_at > now).cloned()
    }

    /// Forgets every token of an account, so none is handed out again (for example when it was
    /// disabled or deleted). Access tokens already issued stop resolving too.
    pub fn forget_account(&self, unique_id: &str) {
        self.id_tokens.lock().unwrap_or_else(PoisonError::into_inner).map.retain(|k, _| k.unique_id != unique_id);
        let mut access = self.access.lock().unwrap_or_else(PoisonError::into_inner);
        access.by_token.map.retain(|_, i| i.unique_id != unique_id);
        access.current.map.retain(|(u, _), _| u != unique_id);
    }
}

fn json_b64(value: &impl Serialize) -> String {
    // Serialising these plain structs cannot fail; an empty object would only fail verification.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}
