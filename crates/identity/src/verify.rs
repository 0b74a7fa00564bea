//! Checking an ID token, as a pure function of the token, the key set, the caller's expectations
//! and the time.
//!
//! Order, and why:
//! 1. shape (size, one token, not an access token, three base64url parts, header JSON) — cheap,
//!    and nothing in the token is believed yet;
//! 2. header: `alg` must be RS256, `kid` must name a published key;
//! 3. the RSA signature over `header.payload` — only now is anything in the payload trusted;
//! 4. the claims: issuer, expiry, issue time, audience.
//!
//! Refusals carry a [`Reason`] and a sentence for the log. The sentence never holds the token or
//! its signature; values from an unverified header are quoted escaped and truncated.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use runnel_policy::Reason;
use serde::{Deserialize, Deserializer, Serialize};

use crate::keys::{ALGORITHM, KeySet};
use crate::mint::ACCESS_TOKEN_PREFIX;

/// Longest token accepted, in bytes. runnel's own are about 1 KiB (`format=full` included).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest encoded header accepted, in bytes. runnel's is under 120.
pub const MAX_HEADER_LEN: usize = 1024;

/// Why a token was refused. `detail` is for operators: what was wrong, without any secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

impl Refusal {
    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// The claims of a verified ID token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// One or more audiences (the token may carry a string or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
    /// The service account's unique id.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    pub iat: u64,
    pub exp: u64,
    /// `format=full` details (`compute_engine`), as issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google: Option<serde_json::Value>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(a) => a,
    })
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A token whose signature verified: its claims and the fingerprint of the key that signed it.
#[derive(Debug)]
pub(crate) struct Signed {
    pub(crate) claims: Claims,
    pub(crate) kid: String,
    pub(crate) fingerprint: Vec<u8>,
}

/// Checks an ID token completely: shape, signature with `keys`, then issuer, `exp` and `iat`
/// against `now` allowing `skew` seconds either way, and that `aud` names one of `audiences`.
///
/// Decisions worth knowing: a header `alg` other than RS256 (`none`, `HS256` with the public key
/// as secret, …) is [`Reason::TokenBadSignature`] — the token may be well formed, but it carries no
/// signature runnel could have made. A signature part that is present but empty
/// (`header.payload.`, "signature stripped") is [`Reason::TokenBadSignature`] too; a token with
/// fewer or more than three parts is [`Reason::TokenMalformed`]. Several tokens separated by
/// whitespace or commas are [`Reason::TokenMultiple`]. Tokens starting with `ya29.` are access
/// tokens: [`Reason::TokenAccessTokenNotIdToken`]. A missing `kid` is [`Reason::TokenUnknownKey`].
pub fn verify_id_token(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    audiences: &[String],
    now: u64,
    skew: u64,
) -> Result<Claims, Refusal> {
    let signed = verify_signature(token, keys, None)?;
    check_claims(&signed.claims, issuer, audiences, now, skew)?;
    Ok(signed.claims)
}

/// Steps 1–3: everything but the claims. Counts in `rsa_verifications` each RSA verification done.
pub(crate) fn verify_signature(
    token: &str,
    keys: &KeySet,
    rsa_verifications: Option<&AtomicU64>,
) -> Result<Signed, Refusal> {
    use Reason::*;
    if token.len() > MAX_TOKEN_LEN {
        return Err(Refusal::new(
            TokenMalformed,
            format!("the token is {} bytes long, more than the {MAX_TOKEN_LEN} runnel accepts", token.len()),
        ));
    }
    if token.starts_with(ACCESS_TOKEN_PREFIX) {
        return Err(Refusal::new(
            TokenAccessTokenNotIdToken,
            "an access token was sent where an ID token is needed: get an ID token for the service's URL \
             from the metadata server (`…/service-accounts/default/identity?audience=URL`)",
        ));
    }
    if let Some(bad) = token.bytes().find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))) {
        let pieces = token.split(|c: char| c.is_ascii_whitespace() || c == ',').filter(|p| !p.is_empty()).count();
        if pieces > 1 {
            return Err(Refusal::new(TokenMultiple, format!("{pieces} tokens were sent in one credential; send one")));
        }
        return Err(Refusal::new(
            TokenMalformed,
            format!("the token holds the character {:?}, which base64url JWTs never do", char::from(bad)),
        ));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, signature_b64] = parts[..] else {
        let hint = if parts.len() == 5 { " (two tokens run together?)" } else { "" };
        return Err(Refusal::new(
            TokenMalformed,
            format!("the token has {} dot-separated parts, a JWT has 3{hint}", parts.len()),
        ));
    };
    if header_b64.len() > MAX_HEADER_LEN {
        return Err(Refusal::new(
            TokenMalformed,
            format!(
                "the token's header is {} bytes long, more than the {MAX_HEADER_LEN} runnel accepts",
                header_b64.len()
            ),
        ));
    }
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| Refusal::new(TokenMalformed, format!("the token's {what} is not base64url")))
    };
    let header = decode(header_b64, "header")?;
    let payload = decode(payload_b64, "payload")?;
    let signature = decode(signature_b64, "signature")?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|_| Refusal::new(TokenMalformed, "the token's header is not a JSON object with a string `alg`"))?;

    if header.alg != ALGORITHM {
        return Err(Refusal::new(
            TokenBadSignature,
            format!("the token's algorithm is {}, not {ALGORITHM}: runnel signs only with RS256", quoted(&header.alg)),
        ));
    }
    if header.crit.is_some() {
        return Err(Refusal::new(TokenMalformed, "the token's header has `crit` extensions, which runnel never sets"));
    }
    let Some(kid) = header.kid else {
        return Err(Refusal::new(TokenUnknownKey, "the token's header names no key (`kid`)"));
    };
    let Some(key) = keys.get(&kid) else {
        return Err(Refusal::new(
            TokenUnknownKey,
            format!(
                "the token names key {}, which runnel does not publish (retired long ago, from another \
                 runnel, or forged)",
                quoted(&kid)
            ),
        ));
    };
    if let Some(counter) = rsa_verifications {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let signed_part = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    if !key.verify(signed_part, &signature) {
        let why = if signature.is_empty() {
            "the token's signature was removed"
        } else {
            "the token's signature does not verify"
        };
        return Err(Refusal::new(TokenBadSignature, format!("{why} with runnel's key {kid}")));
    }
    let fingerprint = key.fingerprint().to_vec();
    let claims: Claims = serde_json::from_slice(&payload).map_err(|e| {
        Refusal::new(TokenMalformed, format!("the token's claims are not those of an ID token ({})", serde_message(&e)))
    })?;
    Ok(Signed { claims, kid, fingerprint })
}

/// Step 4, on claims whose signature verified.
pub(crate) fn check_claims(
    claims: &Claims,
    issuer: &str,
    audiences: &[String],
    now: u64,
    skew: u64,
) -> Result<(), Refusal> {
    use Reason::*;
    if claims.iss != issuer {
        return Err(Refusal::new(
            TokenWrongIssuer,
            format!("the token was issued by {}, not by this runnel ({})", quoted(&claims.iss), quoted(issuer)),
        ));
    }
    if claims.exp.saturating_add(skew) < now {
        return Err(Refusal::new(
            TokenExpired,
            format!(
                "the token expired {} s ago (exp {}, now {now}, {skew} s of skew allowed): fetch a new one",
                now - claims.exp,
                claims.exp
            ),
        ));
    }
    if claims.iat > now.saturating_add(skew) {
        return Err(Refusal::new(
            TokenNotYetValid,
            format!(
                "the token was issued {} s in the future (iat {}, now {now}, {skew} s of skew allowed): check the clocks",
                claims.iat - now,
                claims.iat
            ),
        ));
    }
    if !claims.aud.iter().any(|a| audiences.contains(a)) {
        let sent: Vec<String> = claims.aud.iter().map(|a| quoted(a)).collect();
        let accepted: Vec<String> = audiences.iter().map(|a| quoted(a)).collect();
        return Err(Refusal::new(
            TokenAudienceMismatch,
            format!(
                "the token is for audience {}, and this service accepts {}: request the token with \
                 `audience=` set to the service's URL",
                if sent.is_empty() { "(none)".into() } else { sent.join(", ") },
                if accepted.is_empty() { "none".into() } else { accepted.join(", ") },
            ),
        ));
    }
    Ok(())
}

/// A value from the token for a log line: escaped, and cut short.
fn quoted(value: &str) -> String {
    const MAX: usize = 120;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("`{}…`", value[..cut].escape_debug()),
        None => format!("`{}`", value.escape_debug()),
    }
}

/// serde's message without the line/column noise.
fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_and_truncates() {
        assert_eq!(quoted("a\nb"), "`a\\nb`");
        let long = "x".repeat(500);
        assert_eq!(quoted(&long).chars().count(), 120 + 3);
    }

    #[test]
    fn audience_is_one_or_many() {
        let one: Claims = serde_json::from_str(r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":2}"#).unwrap();
        assert_eq!(one.aud, vec!["a"]);
        let many: Claims = serde_json::from_str(r#"{"iss":"i","aud":["a","b"],"sub":"1","iat":1,"exp":2}"#).unwrap();
        assert_eq!(many.aud, vec!["a", "b"]);
    }
}
