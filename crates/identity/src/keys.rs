//! runnel's ID-token signing keys: generated on first start, kept on disk, rotated on a schedule,
//! and published (JWKS, PEM map) for verifiers.
//!
//! Life of a key, with the default [`KeyPolicy`]:
//! - it is generated `prepublish` (1 h) before it starts signing, so a verifier that cached the
//!   key set (Node's `google-auth-library` caches it as `Cache-Control` allows) already knows it
//!   when the first token signed with it arrives — Google pre-publishes its keys the same way;
//! - it signs for `rotation_period` (24 h), then the next key takes over;
//! - it stays published for `retention` (1 h 10 min) after that, which is longer than any token
//!   it signed lives (1 h) plus a verifier's clock skew (5 min); then its file is deleted.
//!
//! The very first key signs at once: nobody can have cached an empty key set.
//!
//! Files: one JSON file per key, `<kid>.json`, holding the kid, the times and the PKCS #8 private
//! key in PEM; mode 0600 in a 0700 directory; written to a temporary file, synced and renamed, so
//! a crash leaves either the whole key or none.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{self, KeySize};
use aws_lc_rs::signature::{KeyPair as _, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::der;

/// The algorithm of every token runnel signs.
pub const ALGORITHM: &str = "RS256";

/// `Cache-Control: max-age` for the published key sets. Must stay below
/// [`KeyPolicy::prepublish`], so a cached key set always holds the key that signs next.
pub const CERTS_MAX_AGE: u64 = 300;

/// When keys are made, start signing and are retired. All durations in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// How long a key signs before the next one takes over; 0 never rotates.
    pub rotation_period: u64,
    /// How long before it signs a new key is published.
    pub prepublish: u64,
    /// How long a key stays published after the next one took over: at least the lifetime of
    /// the tokens it signed plus the clock skew verifiers allow. Never less than the token
    /// lifetime, whatever is set here.
    pub retention: u64,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            rotation_period: 24 * 3600,
            prepublish: 3600,
            retention: crate::ID_TOKEN_LIFETIME + crate::MAX_CLOCK_SKEW + 300,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` is not a runnel signing key ({why}): move it out of the keys directory", path.display())]
    BadKeyFile { path: PathBuf, why: String },
    #[error("the RSA key operation failed ({0})")]
    Crypto(&'static str),
    #[error("not a usable key set: {0}")]
    BadKeySet(String),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KeyError {
    let path = path.to_path_buf();
    move |source| KeyError::Io { action, path, source }
}

/// One public key as verifiers see it.
#[derive(Debug)]
pub struct PublicKey {
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
    spki: Vec<u8>,
    fingerprint: Vec<u8>,
    parsed: ParsedPublicKey,
    certificate: Option<String>,
}

impl PublicKey {
    fn from_components(kid: String, n: &[u8], e: &[u8], certificate: Option<String>) -> Result<Self, KeyError> {
        let strip = |b: &[u8]| b[b.iter().position(|x| *x != 0).unwrap_or(b.len())..].to_vec();
        let (n, e) = (strip(n), strip(e));
        if !(256..=1024).contains(&n.len()) {
            return Err(KeyError::BadKeySet(format!("key `{kid}` has {} bits, not 2048 to 8192", n.len() * 8)));
        }
        let parsed = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der::rsa_public_key(&n, &e))
            .map_err(|e| KeyError::BadKeySet(format!("key `{kid}` is not an RSA key of 2048 to 8192 bits ({e})")))?;
        let spki = parsed.as_der().map_err(|_| KeyError::Crypto("encode a public key"))?.as_ref().to_vec();
        let fingerprint = digest::digest(&digest::SHA256, &spki).as_ref().to_vec();
        Ok(Self { kid, n, e, spki, fingerprint, parsed, certificate })
    }

    /// The key id that tokens name in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The self-signed X.509 certificate (PEM) for runnel's own keys, else the public key PEM.
    pub fn pem(&self) -> String {
        match &self.certificate {
            Some(cert) => cert.clone(),
            None => der::pem("PUBLIC KEY", &self.spki),
        }
    }

    /// SHA-256 of the DER SubjectPublicKeyInfo: tells two keys apart whatever their kid says.
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }

    /// One RSA PKCS #1 v1.5 SHA-256 verification: the expensive step of checking a token.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.parsed.verify_sig(message, signature).is_ok()
    }

    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA",
            "alg": ALGORITHM,
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
        })
    }
}

/// The public keys a verifier accepts, with their published forms rendered once.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Arc<PublicKey>>,
    jwks: Arc<str>,
    pem_map: Arc<str>,
}

impl KeySet {
    fn new(keys: Vec<Arc<PublicKey>>) -> Self {
        let jwks = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string();
        let pem_map: serde_json::Map<String, serde_json::Value> =
            keys.iter().map(|k| (k.kid.clone(), serde_json::Value::String(k.pem()))).collect();
        let pem_map = serde_json::Value::Object(pem_map).to_string();
        Self { keys, jwks: jwks.into(), pem_map: pem_map.into() }
    }

    /// Reads a JWKS (`/oauth2/v3/certs` shape). RS256 signing keys only; others are skipped.
    pub fn from_jwks(json: &str) -> Result<Self, KeyError> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kty: String,
            alg: Option<String>,
            kid: Option<String>,
            #[serde(rename = "use")]
            use_: Option<String>,
            n: Option<String>,
            e: Option<String>,
        }
        let jwks: Jwks = serde_json::from_str(json).map_err(|e| KeyError::BadKeySet(format!("not a JWKS: {e}")))?;
        let mut keys = Vec::new();
        for jwk in jwks.keys {
            let other_alg = jwk.alg.as_deref().is_some_and(|a| a != ALGORITHM);
            if jwk.kty != "RSA" || other_alg || jwk.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let (Some(kid), Some(n), Some(e)) = (jwk.kid, jwk.n, jwk.e) else {
                return Err(KeyError::BadKeySet("an RSA key lacks `kid`, `n` or `e`".into()));
            };
            let decode = |v: &str| {
                URL_SAFE_NO_PAD
                    .decode(v)
                    .map_err(|_| KeyError::BadKeySet(format!("key `{kid}`: `n` or `e` is not base64url")))
            };
            let (n, e) = (decode(&n)?, decode(&e)?);
            keys.push(Arc::new(PublicKey::from_components(kid, &n, &e, None)?));
        }
        Ok(Self::new(keys))
    }

    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.kid == kid).map(|k| k.as_ref())
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid","n","e"}]}`, as `/oauth2/v3/certs`.
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// `{kid: "-----BEGIN CERTIFICATE-----…"}`, as `/oauth2/v1/certs`.
    pub fn pem_map_json(&self) -> &str {
        &self.pem_map
    }
}

/// A private key that signs tokens. Never printed.
pub struct SigningKey {
    kid: String,
    created: u64,
    active_from: u64,
    pair: rsa::KeyPair,
    public: Arc<PublicKey>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .field("active_from", &self.active_from)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// When the key was generated (Unix seconds).
    pub fn created(&self) -> u64 {
        self.created
    }

    /// When the key starts signing (Unix seconds).
    pub fn active_from(&self) -> u64 {
        self.active_from
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// An RS256 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut signature)
            .map_err(|_| KeyError::Crypto("sign"))?;
        Ok(signature)
    }

    /// Wraps an RSA private key (PKCS #8 DER): derives the kid, the public key and its certificate.
    fn from_pkcs8(pkcs8: &[u8], created: u64, active_from: u64) -> Result<Self, KeyError> {
        let pair = rsa::KeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError::Crypto("parse the private key"))?;
        if pair.public_modulus_len() < 256 {
            return Err(KeyError::Crypto("use an RSA key shorter than 2048 bits"));
        }
        let public = pair.public_key();
        let (n, e) =
            (public.modulus().big_endian_without_leading_zero(), public.exponent().big_endian_without_leading_zero());
        let probe = PublicKey::from_components(String::new(), n, e, None)?;
        let kid = kid_of(probe.fingerprint());
        let certificate = certificate(pkcs8, &kid, created)?;
        let public = Arc::new(PublicKey::from_components(kid.clone(), n, e, Some(certificate))?);
        Ok(Self { kid, created, active_from, pair, public })
    }

    fn generate(created: u64, active_from: u64) -> Result<(Self, Vec<u8>), KeyError> {
        let pair =
            rsa::KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Crypto("generate an RSA-2048 key"))?;
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| KeyError::Crypto("encode the private key"))?;
        let pkcs8 = pkcs8.as_ref().to_vec();
        Ok((Self::from_pkcs8(&pkcs8, created, active_from)?, pkcs8))
    }
}

/// 40 hex digits of the key's SHA-256 fingerprint: looks like Google's kids, and a kid can never
/// name two different keys.
fn kid_of(fingerprint: &[u8]) -> String {
    fingerprint.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// A self-signed certificate for the key, as Google publishes at `/oauth2/v1/certs`. Verifiers
/// only take the public key out of it, but some accept nothing else there. Everything in it is
/// derived from the key and its creation time, so it is the same after every restart.
fn certificate(pkcs8: &[u8], kid: &str, created: u64) -> Result<String, KeyError> {
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), &rcgen::PKCS_RSA_SHA256)
        .map_err(|_| KeyError::Crypto("load the key for its certificate"))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("runnel ID token signing key {kid}"));
    let not_before = time::OffsetDateTime::from_unix_timestamp(i64::try_from(created).unwrap_or(i64::MAX))
        .map_err(|_| KeyError::Crypto("date the certificate"))?;
    params.not_before = not_before;
    params.not_after = not_before + time::Duration::days(3650);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(|_| KeyError::Crypto("sign the certificate"))?;
    Ok(der::pem("CERTIFICATE", cert.der()))
}

/// What is on disk for one key.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyFile {
    kid: String,
    algorithm: String,
    created: u64,
    active_from: u64,
    private_key: String,
}

struct Ring {
    /// Ascending by `active_from`.
    keys: Vec<Arc<SigningKey>>,
    set: Arc<KeySet>,
}

impl Ring {
    fn new(mut keys: Vec<Arc<SigningKey>>) -> Self {
        keys.sort_by(|a, b| a.active_from.cmp(&b.active_from).then(a.created.cmp(&b.created)));
        let set = Arc::new(KeySet::new(keys.iter().map(|k| k.public.clone()).collect()));
        Self { keys, set }
    }

    /// The key that signs at `now`: the newest one already active (or, should the clock have
    /// gone back, the oldest).
    fn signing(&self, now: u64) -> Option<&Arc<SigningKey>> {
        self.keys.iter().rev().find(|k| k.active_from <= now).or(self.keys.first())
    }
}

/// runnel's signing keys, shared by the minters and the verifiers of one daemon.
pub struct Keys {
    dir: PathBuf,
    policy: KeyPolicy,
    ring: RwLock<Arc<Ring>>,
    /// Serialises rotations (key generation takes a while and must not happen twice).
    rotating: Mutex<()>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<String> = self.ring().keys.iter().map(|k| k.kid.clone()).collect();
        f.debug_struct("Keys").field("dir", &self.dir).field("policy", &self.policy).field("kids", &kids).finish()
    }
}

impl Keys {
    /// Loads the keys in `dir` (creating it, mode 0700), makes the first key if there is none,
    /// then rotates and prunes as `policy` says is due at `now`. Generating a key takes some
    /// CPU time (tens of milliseconds): call from a blocking context.
    pub fn open(dir: impl Into<PathBuf>, policy: KeyPolicy, now: u64) -> Result<Self, KeyError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_error("create the keys directory", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_error("restrict", &dir))?;
        let mut keys = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error("read", &dir))? {
            let path = entry.map_err(io_error("read", &dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".tmp") {
                // Left by a crash between write and rename: never a complete key.
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
            } else if name.ends_with(".json") {
                keys.push(Arc::new(load(&path)?));
            }
        }
        let keys = Self { dir, policy, ring: RwLock::new(Arc::new(Ring::new(keys))), rotating: Mutex::new(()) };
        keys.rotate_if_due(now)?;
        Ok(keys)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn policy(&self) -> KeyPolicy {
        self.policy
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The published keys, as verifiers must use them now. A cheap snapshot.
    pub fn key_set(&self) -> Arc<KeySet> {
        self.ring().set.clone()
    }

    /// Runs `f` with the published keys, borrowed under the ring's read lock: for the
    /// frontend's every request, where [`Keys::key_set`]'s snapshot cost four more atomic
    /// instructions (two reference counts, up and down). A rotation waits for `f` to return.
    pub fn with_key_set<R>(&self, f: impl FnOnce(&KeySet) -> R) -> R {
        f(&self.ring.read().unwrap_or_else(PoisonError::into_inner).set)
    }

    /// The key that signs at `now`; `None` only if the directory held no key and none could be made.
    pub fn signing_key(&self, now: u64) -> Option<Arc<SigningKey>> {
        self.ring().signing(now).cloned()
    }

    /// Every key on disk, oldest first.
    pub fn signing_keys(&self) -> Vec<Arc<SigningKey>> {
        self.ring().keys.clone()
    }

    /// Makes the next key when it is due (`prepublish` before the current key has signed for
    /// `rotation_period`), and deletes keys retired for longer than `retention`. Returns whether
    /// the key set changed. Call it on a timer (every minute is plenty) from a blocking context.
    pub fn rotate_if_due(&self, now: u64) -> Result<bool, KeyError> {
        let _rotating = self.rotating.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = self.ring();
        let mut keys = ring.keys.clone();
        let mut changed = false;

        if let Some(active_from) = self.next_key_due(&ring, now) {
            let (key, pkcs8) = SigningKey::generate(now, active_from)?;
            self.write(&key, &pkcs8)?;
            tracing::info!(kid = %key.kid, active_from, "generated a new ID token signing key");
            keys.push(Arc::new(key));
            changed = true;
        }

        let retired: Vec<usize> = (0..keys.len().saturating_sub(1))
            .filter(|&i| {
                let successor = keys[i + 1].active_from;
                let retention = self.policy.retention.max(crate::ID_TOKEN_LIFETIME);
                successor <= now && successor.saturating_add(retention) <= now
            })
            .collect();
        for &i in retired.iter().rev() {
            let key = keys.remove(i);
            let path = self.path_of(&key.kid);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", &path)(e)),
            }
            tracing::info!(kid = %key.kid, "retired an ID token signing key: every token it signed has expired");
            changed = true;
        }

        if changed {
            *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Ring::new(keys));
        }
        Ok(changed)
    }

    /// When the key to be made now should start signing, if one is due.
    fn next_key_due(&self, ring: &Ring, now: u64) -> Option<u64> {
        let Some(current) = ring.signing(now) else {
            return Some(now);
        };
        if self.policy.rotation_period == 0 || ring.keys.iter().any(|k| k.active_from > current.active_from) {
            return None; // no rotation, or the next key is already published
        }
        let due = current.active_from.saturating_add(self.policy.rotation_period);
        let prepublish = self.policy.prepublish.min(self.policy.rotation_period);
        (now.saturating_add(prepublish) >= due).then(|| due.max(now.saturating_add(prepublish)))
    }

    fn path_of(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.json"))
    }

    /// tmp (0600) + fsync + rename + fsync of the directory.
    fn write(&self, key: &SigningKey, pkcs8: &[u8]) -> Result<(), KeyError> {
        let file = KeyFile {
            kid: key.kid.clone(),
            algorithm: ALGORITHM.into(),
            created: key.created,
            active_from: key.active_from,
            private_key: der::pem("PRIVATE KEY", pkcs8),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|_| KeyError::Crypto("encode the key file"))?;
        let path = self.path_of(&key.kid);
        let tmp = self.dir.join(format!(".{}.json.tmp", key.kid));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io_error("write", &tmp))?;
        f.sync_all().map_err(io_error("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_error("rename into place", &path))?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_error("sync", &self.dir))?;
        Ok(())
    }
}

fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let bad = |why: String| KeyError::BadKeyFile { path: path.to_path_buf(), why };
    let meta = fs::metadata(path).map_err(io_error("read", path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "a signing key file was readable by others: restricting it to mode 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error("restrict", path))?;
    }
    let text = fs::read_to_string(path).map_err(io_error("read", path))?;
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| bad(format!("not a key file: {e}")))?;
    if file.algorithm != ALGORITHM {
        return Err(bad(format!("algorithm `{}`, not {ALGORITHM}", file.algorithm)));
    }
    let pkcs8 = der::from_pem("PRIVATE KEY", &file.private_key).ok_or_else(|| bad("no PKCS #8 private key".into()))?;
    let key = SigningKey::from_pkcs8(&pkcs8, file.created, file.active_from).map_err(|e| bad(e.to_string()))?;
    if key.kid != file.kid {
        return Err(bad(format!("it says kid `{}` but its key has kid `{}`", file.kid, key.kid)));
    }
    Ok(key)
}
