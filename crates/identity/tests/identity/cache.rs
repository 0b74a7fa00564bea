//! The verified-token cache: one RSA verification per token, never a hit for a changed token.

use runnel_identity::{Format, KeySet, VerifyCache};
use runnel_policy::Reason;

use crate::common::*;

fn mint(f: &Fixture, audience: &str) -> String {
    f.minter.id_token(&account(), audience, Format::Standard, NOW).unwrap().token.to_string()
}

#[test]
fn a_repeated_token_is_verified_with_rsa_once() {
    let f = fixture();
    let cache = VerifyCache::default();
    let keys = f.keys.key_set();
    let token = mint(&f, AUDIENCE);
    let first = cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap();
    for i in 0..100 {
        let again = cache.verify(&token, &keys, ISSUER, &audiences(), NOW + i, SKEW).unwrap();
        assert_eq!(again, first);
    }
    let stats = cache.stats();
    assert_eq!(stats.rsa_verifications, 1);
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.hits, 100);
    assert_eq!(stats.entries, 1);
}

#[test]
fn a_token_differing_only_in_its_signature_is_refused_not_served_from_the_cache() {
    let f = fixture();
    let cache = VerifyCache::default();
    let keys = f.keys.key_set();
    let token = mint(&f, AUDIENCE);
    cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap();

    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let mut sig = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature).unwrap();
    sig[0] ^= 0x80;
    let forged = format!("{signing_input}.{}", b64(&sig));
    for _ in 0..3 {
        let r = cache.verify(&forged, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap_err();
        assert_eq!(r.reason, Reason::TokenBadSignature);
    }
    for forged in [format!("{signing_input}."), format!("{signing_input}.SIGNATURE_REMOVED_BY_GOOGLE")] {
        assert_eq!(
            cache.verify(&forged, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap_err().reason,
            Reason::TokenBadSignature
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.rsa_verifications, 1 + 3 + 2, "each forged attempt paid its RSA verification");
    assert_eq!(stats.entries, 1, "refused tokens are not cached");
    assert!(cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).is_ok());
}

#[test]
fn a_token_as_bytes_hits_only_when_identical_and_bytes_that_are_not_text_are_malformed() {
    let f = fixture();
    let cache = VerifyCache::default();
    let keys = f.keys.key_set();
    let token = mint(&f, AUDIENCE);
    let first = cache.verify_bytes(token.as_bytes(), &keys, ISSUER, &audiences(), NOW, SKEW).unwrap();
    assert_eq!(cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap(), first);
    assert_eq!(cache.stats().hits, 1, "bytes and text find the same entry");
    // The cached token with a byte that is not UTF-8 in place of its last one (the part the
    // index hashes differs) and in place of its first (the part it hashes is the same).
    let mut last = token.clone().into_bytes();
    *last.last_mut().unwrap() = 0xff;
    let mut first_byte = token.clone().into_bytes();
    first_byte[0] = 0xc3;
    for bytes in [last, first_byte] {
        let refused = cache.verify_bytes(&bytes, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap_err();
        assert_eq!(refused.reason, Reason::TokenMalformed);
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.rsa_verifications), (1, 3, 1), "neither was served from the cache");
}

#[test]
fn a_token_with_a_cached_tokens_signature_but_other_claims_misses_and_is_refused() {
    // The index hashes only the end of the signature; the whole token decides a hit.
    let f = fixture();
    let cache = VerifyCache::default();
    let keys = f.keys.key_set();
    let token = mint(&f, AUDIENCE);
    cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let claims = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[1]).unwrap();
    let mut claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    claims["sub"] = "999999999999999999999".into();
    parts[1] = b64(&serde_json::to_vec(&claims).unwrap());
    let tampered = parts.join(".");
    for _ in 0..2 {
        let r = cache.verify(&tampered, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap_err();
        assert_eq!(r.reason, Reason::TokenBadSignature);
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.rsa_verifications), (0, 3, 3));
    assert_eq!(stats.entries, 1, "the refused token did not take the cached token's place");
    assert!(cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).is_ok());
    assert_eq!(cache.stats().hits, 1, "the cached token is still there");
}

#[test]
fn a_checked_token_is_forwarded_without_its_signature_on_a_miss_and_a_hit() {
    let f = fixture();
    let cache = VerifyCache::default();
    let keys = f.keys.key_set();
    let token = mint(&f, AUDIENCE);
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let expected = format!("Bearer {signing_input}.SIGNATURE_REMOVED_BY_GOOGLE");
    let miss = cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap();
    let hit = cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap();
    for verified in [&miss, &hit] {
        let forwarded = verified.forwarded.as_ref().unwrap().to_str().unwrap();
        assert_eq!(forwarded, expected);
        assert!(!forwarded.contains(signature));
    }
    assert_eq!(hit.claims, miss.claims);
    assert_eq!(cache.stats().hits, 1);
}

#[test]
fn a_cached_token_still_gets_its_claims_checked() {
    let f = fixture();
    let cache = VerifyCache::default();
    let keys = f.keys.key_set();
    let token = mint(&f, AUDIENCE);
    cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap();
    let r = cache.verify(&token, &keys, ISSUER, &["https://other.example".to_string()], NOW, SKEW).unwrap_err();
    assert_eq!(r.reason, Reason::TokenAudienceMismatch);
    let r = cache.verify(&token, &keys, "http://elsewhere", &audiences(), NOW, SKEW).unwrap_err();
    assert_eq!(r.reason, Reason::TokenWrongIssuer);
    let r = cache.verify(&token, &keys, ISSUER, &audiences(), NOW + 3600 + SKEW + 1, SKEW).unwrap_err();
    assert_eq!(r.reason, Reason::TokenExpired);
    assert_eq!(cache.stats().rsa_verifications, 1);
}

#[test]
fn a_cached_token_is_refused_once_its_key_is_no_longer_published() {
    let f = fixture();
    let cache = VerifyCache::default();
    let token = mint(&f, AUDIENCE);
    cache.verify(&token, &f.keys.key_set(), ISSUER, &audiences(), NOW, SKEW).unwrap();
    let r = cache.verify(&token, &KeySet::default(), ISSUER, &audiences(), NOW, SKEW).unwrap_err();
    assert_eq!(r.reason, Reason::TokenUnknownKey);
    // Same kid, other key material (a JWKS that lies): not served from the cache either.
    let stranger = fixture();
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    let stranger_kid = stranger.keys.signing_key(NOW).unwrap().kid().to_string();
    let lying = stranger.keys.key_set().jwks_json().replace(&stranger_kid, &kid);
    let lying = KeySet::from_jwks(&lying).unwrap();
    let r = cache.verify(&token, &lying, ISSUER, &audiences(), NOW, SKEW).unwrap_err();
    assert_eq!(r.reason, Reason::TokenBadSignature);
}

#[test]
fn the_cache_is_bounded() {
    let f = fixture();
    let cache = VerifyCache::new(32);
    let keys = f.keys.key_set();
    for i in 0..200 {
        let audience = format!("https://svc-{i}.example");
        let token = mint(&f, &audience);
        cache.verify(&token, &keys, ISSUER, &[audience], NOW, SKEW).unwrap();
    }
    let stats = cache.stats();
    assert!(stats.entries <= cache.capacity(), "{stats:?}");
    assert!(stats.evictions > 0);
    assert_eq!(stats.rsa_verifications, 200);
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn concurrent_verifications_agree() {
    let f = fixture();
    let cache = std::sync::Arc::new(VerifyCache::default());
    let keys = f.keys.key_set();
    let token = mint(&f, AUDIENCE);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    cache.verify(&token, &keys, ISSUER, &audiences(), NOW, SKEW).unwrap();
                }
            });
        }
    });
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, 200);
    assert!(stats.rsa_verifications <= 4);
    assert_eq!(stats.entries, 1);
}
