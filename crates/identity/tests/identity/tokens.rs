//! The verifier against good tokens and a corpus of bad ones; each refusal asserts its reason.

use aws_lc_rs::hmac;
use runnel_identity::verify::{MAX_HEADER_LEN, MAX_TOKEN_LEN};
use runnel_identity::{Format, Refusal, verify_id_token};
use runnel_policy::Reason;
use serde_json::json;

use crate::common::*;

fn refusal(f: &Fixture, token: &str) -> Refusal {
    verify_id_token(token, &f.keys.key_set(), ISSUER, &audiences(), NOW, SKEW).unwrap_err()
}

fn reason(f: &Fixture, token: &str) -> Reason {
    refusal(f, token).reason
}

fn minted(f: &Fixture) -> String {
    f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap().token.to_string()
}

#[test]
fn a_minted_token_verifies_with_audience_as_a_string() {
    let f = fixture();
    let token = minted(&f);
    assert!(payload_of(&token)["aud"].is_string());
    let claims = verify_id_token(&token, &f.keys.key_set(), ISSUER, &audiences(), NOW, SKEW).unwrap();
    assert_eq!(claims.aud, vec![AUDIENCE]);
    assert_eq!(claims.sub, account().unique_id);
    assert_eq!(claims.azp.as_deref(), Some(account().unique_id.as_str()));
    assert_eq!(claims.email.as_deref(), Some(account().email.as_str()));
    assert!(claims.email_verified);
    assert_eq!(claims.exp, claims.iat + 3600);
}

#[test]
fn a_token_with_an_audience_list_verifies_when_one_matches() {
    let f = fixture();
    let mut payload = claims(NOW);
    payload["aud"] = json!(["https://other.example", AUDIENCE]);
    let token = signed_by_runnel(&f, &runnel_header(&f), &payload);
    let claims = verify_id_token(&token, &f.keys.key_set(), ISSUER, &audiences(), NOW, SKEW).unwrap();
    assert_eq!(claims.aud, vec!["https://other.example", AUDIENCE]);
}

#[test]
fn trailing_slash_variants_are_the_callers_list_to_decide() {
    let f = fixture();
    let with_slash = format!("{AUDIENCE}/");
    let token = f.minter.id_token(&account(), &with_slash, Format::Standard, NOW).unwrap().token;
    let keys = f.keys.key_set();
    // The verifier compares exactly: only the forms the caller lists are accepted.
    let r = verify_id_token(&token, &keys, ISSUER, &[AUDIENCE.to_string()], NOW, SKEW).unwrap_err();
    assert_eq!(r.reason, Reason::TokenAudienceMismatch);
    let both = vec![AUDIENCE.to_string(), with_slash.clone()];
    assert!(verify_id_token(&token, &keys, ISSUER, &both, NOW, SKEW).is_ok());
    let plain = f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap().token;
    assert!(verify_id_token(&plain, &keys, ISSUER, &both, NOW, SKEW).is_ok());
}

#[test]
fn alg_none_is_a_bad_signature() {
    let f = fixture();
    let header = json!({ "alg": "none", "kid": f.keys.signing_key(NOW).unwrap().kid(), "typ": "JWT" });
    let token = format!("{}.{}.", b64_json(&header), b64_json(&claims(NOW)));
    assert_eq!(reason(&f, &token), Reason::TokenBadSignature);
    let no_kid = format!("{}.{}.", b64_json(&json!({ "alg": "none" })), b64_json(&claims(NOW)));
    assert_eq!(reason(&f, &no_kid), Reason::TokenBadSignature);
}

#[test]
fn hs256_with_the_public_key_as_secret_is_a_bad_signature() {
    let f = fixture();
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    let keys = f.keys.key_set();
    let public_pem = keys.get(&kid).unwrap().pem();
    let header = json!({ "alg": "HS256", "kid": kid, "typ": "JWT" });
    let signing_input = format!("{}.{}", b64_json(&header), b64_json(&claims(NOW)));
    for secret in [public_pem.as_bytes(), keys.jwks_json().as_bytes()] {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), signing_input.as_bytes());
        let token = format!("{signing_input}.{}", b64(tag.as_ref()));
        let r = refusal(&f, &token);
        assert_eq!(r.reason, Reason::TokenBadSignature);
        assert!(r.detail.contains("HS256"), "{}", r.detail);
    }
}

#[test]
fn other_algorithms_are_bad_signatures_and_a_missing_alg_is_malformed() {
    let f = fixture();
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    for alg in ["RS512", "PS256", "ES256", "rs256", "RS256 "] {
        let token = signed_by_runnel(&f, &json!({ "alg": alg, "kid": kid }), &claims(NOW));
        assert_eq!(reason(&f, &token), Reason::TokenBadSignature, "{alg}");
    }
    let token = signed_by_runnel(&f, &json!({ "kid": kid }), &claims(NOW));
    assert_eq!(reason(&f, &token), Reason::TokenMalformed);
}

#[test]
fn an_unknown_or_missing_kid_is_an_unknown_key() {
    let f = fixture();
    let token = signed_by_runnel(&f, &json!({ "alg": "RS256", "kid": "0123456789abcdef", "typ": "JWT" }), &claims(NOW));
    let r = refusal(&f, &token);
    assert_eq!(r.reason, Reason::TokenUnknownKey);
    assert!(r.detail.contains("0123456789abcdef"));
    let token = signed_by_runnel(&f, &json!({ "alg": "RS256", "typ": "JWT" }), &claims(NOW));
    assert_eq!(reason(&f, &token), Reason::TokenUnknownKey);
}

#[test]
fn a_foreign_key_under_runnels_kid_is_a_bad_signature() {
    let f = fixture();
    let token = signed_by_stranger(&runnel_header(&f), &claims(NOW));
    assert_eq!(reason(&f, &token), Reason::TokenBadSignature);
}

#[test]
fn a_tampered_payload_is_a_bad_signature_even_if_its_claims_are_also_wrong() {
    let f = fixture();
    let token = minted(&f);
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = payload_of(&token);
    payload["email"] = json!("admin@my-project.iam.gserviceaccount.com");
    let tampered = format!("{}.{}.{}", parts[0], b64_json(&payload), parts[2]);
    assert_eq!(reason(&f, &tampered), Reason::TokenBadSignature);
    // Signature before claims: a forged payload with a wrong issuer and a stale time is still
    // reported as what it is, a bad signature.
    payload["iss"] = json!("https://accounts.google.com");
    payload["exp"] = json!(1);
    let tampered = format!("{}.{}.{}", parts[0], b64_json(&payload), parts[2]);
    assert_eq!(reason(&f, &tampered), Reason::TokenBadSignature);
}

#[test]
fn a_stripped_signature_is_a_bad_signature() {
    let f = fixture();
    let token = minted(&f);
    let (signing_input, _) = token.rsplit_once('.').unwrap();
    assert_eq!(reason(&f, &format!("{signing_input}.")), Reason::TokenBadSignature);
    // As the Cloud Run frontend forwards a checked token.
    assert_eq!(reason(&f, &format!("{signing_input}.SIGNATURE_REMOVED_BY_GOOGLE")), Reason::TokenBadSignature);
    // Without the third part it is not a JWT at all.
    assert_eq!(reason(&f, signing_input), Reason::TokenMalformed);
}

#[test]
fn a_token_differing_in_one_signature_bit_is_a_bad_signature() {
    let f = fixture();
    let token = minted(&f);
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let mut sig = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature).unwrap();
    sig[100] ^= 1;
    assert_eq!(reason(&f, &format!("{signing_input}.{}", b64(&sig))), Reason::TokenBadSignature);
    assert_eq!(reason(&f, &format!("{signing_input}.{}", b64(&sig[..255]))), Reason::TokenBadSignature);
}

#[test]
fn expiry_allows_the_skew_and_no_more() {
    let f = fixture();
    let token = minted(&f);
    let exp = payload_of(&token)["exp"].as_u64().unwrap();
    let keys = f.keys.key_set();
    assert!(verify_id_token(&token, &keys, ISSUER, &audiences(), exp + SKEW, SKEW).is_ok());
    let r = verify_id_token(&token, &keys, ISSUER, &audiences(), exp + SKEW + 1, SKEW).unwrap_err();
    assert_eq!(r.reason, Reason::TokenExpired);
    let r = verify_id_token(&token, &keys, ISSUER, &audiences(), exp + 1, 0).unwrap_err();
    assert_eq!(r.reason, Reason::TokenExpired);
}

#[test]
fn a_token_from_the_future_is_not_yet_valid() {
    let f = fixture();
    let token = signed_by_runnel(&f, &runnel_header(&f), &claims(NOW + SKEW + 1));
    assert_eq!(reason(&f, &token), Reason::TokenNotYetValid);
    let token = signed_by_runnel(&f, &runnel_header(&f), &claims(NOW + SKEW));
    assert!(verify_id_token(&token, &f.keys.key_set(), ISSUER, &audiences(), NOW, SKEW).is_ok());
}

#[test]
fn another_issuer_is_the_wrong_issuer() {
    let f = fixture();
    let mut payload = claims(NOW);
    payload["iss"] = json!("https://accounts.google.com");
    let token = signed_by_runnel(&f, &runnel_header(&f), &payload);
    assert_eq!(reason(&f, &token), Reason::TokenWrongIssuer);
    // The same keys behind another address (say the API port changed): also the wrong issuer.
    let elsewhere = runnel_identity::Minter::new(f.keys.clone(), "http://127.0.0.1:9999");
    let token = elsewhere.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap().token;
    assert_eq!(reason(&f, &token), Reason::TokenWrongIssuer);
}

#[test]
fn an_audience_list_without_the_service_is_a_mismatch() {
    let f = fixture();
    let mut payload = claims(NOW);
    payload["aud"] = json!(["https://a.example", "https://b.example"]);
    let token = signed_by_runnel(&f, &runnel_header(&f), &payload);
    let r = refusal(&f, &token);
    assert_eq!(r.reason, Reason::TokenAudienceMismatch);
    assert!(r.detail.contains("https://a.example") && r.detail.contains(AUDIENCE), "{}", r.detail);
    payload["aud"] = json!([]);
    let token = signed_by_runnel(&f, &runnel_header(&f), &payload);
    assert_eq!(reason(&f, &token), Reason::TokenAudienceMismatch);
}

#[test]
fn two_tokens_are_refused() {
    let f = fixture();
    let token = minted(&f);
    assert_eq!(reason(&f, &format!("{token} {token}")), Reason::TokenMultiple);
    assert_eq!(reason(&f, &format!("{token},{token}")), Reason::TokenMultiple);
    assert_eq!(reason(&f, &format!("{token}, Bearer {token}")), Reason::TokenMultiple);
    // Run together with no separator they are simply not one JWT.
    let r = refusal(&f, &format!("{token}{token}"));
    assert_eq!(r.reason, Reason::TokenMalformed);
    assert!(r.detail.contains("5"), "{}", r.detail);
    // A single token with stray whitespace is malformed, not multiple.
    assert_eq!(reason(&f, &format!("{token} ")), Reason::TokenMalformed);
}

#[test]
fn oversized_tokens_and_headers_are_malformed() {
    let f = fixture();
    let mut header = runnel_header(&f);
    header["x"] = json!("a".repeat(MAX_HEADER_LEN));
    let token = signed_by_runnel(&f, &header, &claims(NOW));
    let r = refusal(&f, &token);
    assert_eq!(r.reason, Reason::TokenMalformed);
    assert!(r.detail.contains("header"), "{}", r.detail);
    let mut payload = claims(NOW);
    payload["pad"] = json!("a".repeat(MAX_TOKEN_LEN));
    let token = signed_by_runnel(&f, &runnel_header(&f), &payload);
    assert!(token.len() > MAX_TOKEN_LEN);
    assert_eq!(reason(&f, &token), Reason::TokenMalformed);
}

#[test]
fn not_base64url_or_not_json_is_malformed() {
    let f = fixture();
    let token = minted(&f);
    let parts: Vec<&str> = token.split('.').collect();
    let cases = [
        String::new(),
        "not-a-jwt".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
        format!("{}+/.{}.{}", parts[0], parts[1], parts[2]),
        // Base64url alphabet but an impossible length.
        format!("A.{}.{}", parts[1], parts[2]),
        format!("{}.{}.A", parts[0], parts[1]),
        // Header that is not a JSON object.
        format!("{}.{}.{}", b64(b"[1,2]"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"{\"alg\":"), parts[1], parts[2]),
        "\u{e9}t\u{e9}.x.y".to_string(),
    ];
    for case in &cases {
        assert_eq!(reason(&f, case), Reason::TokenMalformed, "{case:?}");
    }
}

#[test]
fn a_validly_signed_payload_that_is_not_id_token_claims_is_malformed() {
    let f = fixture();
    for payload in [
        json!("just a string"),
        json!({ "iss": ISSUER }),
        json!({ "iss": ISSUER, "aud": 5, "sub": "1", "iat": 1, "exp": 2 }),
    ] {
        let token = signed_by_runnel(&f, &runnel_header(&f), &payload);
        assert_eq!(reason(&f, &token), Reason::TokenMalformed, "{payload}");
    }
    let mut payload = claims(NOW);
    payload["exp"] = json!(-1);
    let token = signed_by_runnel(&f, &runnel_header(&f), &payload);
    assert_eq!(reason(&f, &token), Reason::TokenMalformed);
}

#[test]
fn crit_headers_are_refused() {
    let f = fixture();
    let mut header = runnel_header(&f);
    header["crit"] = json!(["exp"]);
    let token = signed_by_runnel(&f, &header, &claims(NOW));
    assert_eq!(reason(&f, &token), Reason::TokenMalformed);
}

#[test]
fn an_access_token_is_not_an_id_token() {
    let f = fixture();
    let access = f.minter.access_token(&account(), &[], NOW).unwrap().token;
    assert_eq!(reason(&f, &access), Reason::TokenAccessTokenNotIdToken);
    assert_eq!(reason(&f, "ya29.a0AfH6SMBx-google-style"), Reason::TokenAccessTokenNotIdToken);
}

#[test]
fn refusal_details_never_hold_the_signature() {
    let f = fixture();
    let token = minted(&f);
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let mut payload = payload_of(&token);
    payload["aud"] = json!("x");
    let tampered = format!("{}.{}.{signature}", signing_input.split('.').next().unwrap(), b64_json(&payload));
    let other_aud = f.minter.id_token(&account(), "https://elsewhere", Format::Standard, NOW).unwrap().token;
    for t in [tampered.as_str(), &other_aud, &format!("{token} {token}"), &format!("{token}{token}")] {
        let r = refusal(&f, t);
        let sig = t.rsplit('.').next().unwrap();
        assert!(!r.detail.contains(sig) && !r.detail.contains(signature), "{r}");
        assert!(!r.to_string().contains(signing_input));
    }
}

#[test]
fn every_token_reason_is_reachable() {
    // The corpus above covers each `token.*` reason the verifier can give; this pins the list so
    // a new reason in runnel-policy gets a case here.
    let token_reasons: Vec<Reason> = Reason::ALL.iter().copied().filter(|r| r.code().starts_with("token.")).collect();
    assert_eq!(
        token_reasons,
        vec![
            Reason::TokenValid,
            Reason::TokenMissing,
            Reason::TokenMultiple,
            Reason::TokenMalformed,
            Reason::TokenBadSignature,
            Reason::TokenUnknownKey,
            Reason::TokenExpired,
            Reason::TokenNotYetValid,
            Reason::TokenWrongIssuer,
            Reason::TokenAudienceMismatch,
            Reason::TokenAccessTokenNotIdToken,
        ]
    );
}
