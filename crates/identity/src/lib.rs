//! runnel's identity: the keys that sign ID tokens, minting and verifying those tokens, their
//! publication (JWKS, PEM map, OIDC discovery), and the per-instance metadata server that hands
//! them to instances.
//!
//! Why it is built this way:
//! - **Own JWT code on `aws-lc-rs`, not `jsonwebtoken`.** RSA is aws-lc (DESIGN.md: the
//!   `rust_crypto` backend verifies ~7× slower). The JWT layer around it is small (signing ~30
//!   lines, checking ~150), and owning it gives each refusal its exact [`runnel_policy::Reason`]
//!   (a library error like "InvalidAlgorithm" or "InvalidToken" would have to be mapped back, and
//!   loses cases such as a stripped signature or an access token), lets the cache skip only the
//!   RSA step, and lets the same crate generate keys (which `jsonwebtoken` cannot). `rcgen` (on aws-lc) only builds
//!   the self-signed certificates that `/oauth2/v1/certs` publishes, as Google does.
//! - **Verification is pure** ([`verify_id_token`]): the key set, the issuer, the accepted
//!   audiences and `now` are arguments. Nothing in the payload is read before the signature has
//!   verified. The [`VerifyCache`] in front of it is keyed by the whole token string, so a token
//!   with any byte changed is a different key and is checked in full.
//! - **The metadata server knows its instance from how it was built**, not from the request:
//!   the daemon builds one [`MetadataServer`] per instance channel. The request can only narrow
//!   what is answered (Host, `X-Forwarded-For` and `Metadata-Flavor` checks), never choose whose
//!   token it gets.
//! - Time is always a parameter (`now`, Unix seconds) except at the HTTP edge, which has a
//!   replaceable [`metadata::Clock`].
//!
//! What it must never do: log or return a token or signature in an error; sign for an account the
//! daemon says is disabled or deleted; keep a key it no longer publishes in its verify path;
//! write a private key anywhere but a 0600 file in the keys directory.

pub mod cache;
mod der;
pub mod keys;
pub mod metadata;
pub mod mint;
pub mod publish;
pub mod verify;

pub use cache::{CacheStats, SIGNATURE_REMOVED, Verified, VerifyCache};
pub use keys::{KeyError, KeyPolicy, KeySet, Keys, PublicKey, SigningKey};
pub use metadata::{AccountSource, Instance, MetadataServer, unix_now};
pub use mint::{
    ACCESS_TOKEN_LIFETIME, ACCESS_TOKEN_PREFIX, AccessToken, AccessTokenInfo, Account, ComputeEngine, Format,
    ID_TOKEN_LIFETIME, IdToken, MintError, Minter,
};
pub use verify::{Claims, Refusal, verify_id_token};

/// The clock skew verifiers allow by default, in seconds (as Node's `google-auth-library`).
pub const MAX_CLOCK_SKEW: u64 = 300;
