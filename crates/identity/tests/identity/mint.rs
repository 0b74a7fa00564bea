//! ID tokens as Google's metadata server issues them, their cache, and access tokens.

use runnel_identity::mint::{DEFAULT_SCOPE, RENEW_BEFORE};
use runnel_identity::{ACCESS_TOKEN_PREFIX, ComputeEngine, Format, MintError, verify_id_token};
use serde_json::json;

use crate::common::*;

fn compute_engine() -> ComputeEngine {
    ComputeEngine {
        instance_creation_timestamp: NOW - 100,
        instance_id: "0069c7a98e5f4bd2".into(),
        instance_name: "hello-00001-abc".into(),
        project_id: "my-project".into(),
        project_number: 123456789012,
        zone: "us-central1-1".into(),
    }
}

#[test]
fn the_header_and_claims_are_googles() {
    let f = fixture();
    let token = f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap();
    assert_eq!(token.issued_at, NOW);
    assert_eq!(token.expires_at, NOW + 3600);
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    assert_eq!(header_of(&token.token), json!({ "alg": "RS256", "kid": kid, "typ": "JWT" }));
    let a = account();
    assert_eq!(
        payload_of(&token.token),
        json!({
            "aud": AUDIENCE, "azp": a.unique_id, "email": a.email, "email_verified": true,
            "exp": NOW + 3600, "iat": NOW, "iss": ISSUER, "sub": a.unique_id,
        })
    );
    // Google's claim order, alphabetical.
    let raw = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(raw.starts_with("{\"aud\":"), "{raw}");
}

#[test]
fn format_full_adds_compute_engine_and_licenses() {
    let f = fixture();
    let ce = compute_engine();
    let full =
        f.minter.id_token(&account(), AUDIENCE, Format::Full { compute_engine: &ce, licenses: false }, NOW).unwrap();
    let google = &payload_of(&full.token)["google"];
    assert_eq!(
        google,
        &json!({ "compute_engine": {
            "instance_creation_timestamp": NOW - 100, "instance_id": "0069c7a98e5f4bd2",
            "instance_name": "hello-00001-abc", "project_id": "my-project",
            "project_number": 123456789012u64, "zone": "us-central1-1",
        }})
    );
    let with_licenses =
        f.minter.id_token(&account(), AUDIENCE, Format::Full { compute_engine: &ce, licenses: true }, NOW).unwrap();
    assert_eq!(payload_of(&with_licenses.token)["google"]["compute_engine"]["license_id"], json!([]));
    let standard = f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap();
    assert!(payload_of(&standard.token).get("google").is_none());
    let claims = verify_id_token(&full.token, &f.keys.key_set(), ISSUER, &audiences(), NOW, SKEW).unwrap();
    assert_eq!(claims.google.unwrap()["compute_engine"]["project_id"], "my-project");
}

#[test]
fn id_tokens_are_cached_per_account_audience_and_format_and_renewed_before_expiry() {
    let f = fixture();
    let m = &f.minter;
    let first = m.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap();
    assert_eq!(m.id_token(&account(), AUDIENCE, Format::Standard, NOW + 10).unwrap(), first);
    let last_reuse = first.expires_at - RENEW_BEFORE - 1;
    assert_eq!(m.id_token(&account(), AUDIENCE, Format::Standard, last_reuse).unwrap(), first);
    let renewed = m.id_token(&account(), AUDIENCE, Format::Standard, last_reuse + 1).unwrap();
    assert_ne!(renewed, first);
    assert_eq!(renewed.issued_at, last_reuse + 1);

    let other_audience = m.id_token(&account(), "https://other.example", Format::Standard, NOW).unwrap();
    assert_ne!(other_audience.token, first.token);
    let ce = compute_engine();
    let full = m.id_token(&account(), AUDIENCE, Format::Full { compute_engine: &ce, licenses: false }, NOW).unwrap();
    assert_ne!(full.token, first.token);
    let mut someone = account();
    someone.unique_id = "998877".into();
    let theirs = m.id_token(&someone, AUDIENCE, Format::Standard, NOW).unwrap();
    assert_eq!(payload_of(&theirs.token)["sub"], "998877");
    // Another instance of the same account gets its own full-format token.
    let mut ce2 = compute_engine();
    ce2.instance_id = "other".into();
    let full2 = m.id_token(&account(), AUDIENCE, Format::Full { compute_engine: &ce2, licenses: false }, NOW).unwrap();
    assert_eq!(payload_of(&full2.token)["google"]["compute_engine"]["instance_id"], "other");
}

#[test]
fn forgetting_an_account_drops_its_cached_tokens() {
    let f = fixture();
    let first = f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap();
    let access = f.minter.access_token(&account(), &[], NOW).unwrap();
    f.minter.forget_account(&account().unique_id);
    assert_ne!(f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW + 1).unwrap(), first);
    assert!(f.minter.access_token_principal(&access.token, NOW + 1).is_none());
}

#[test]
fn empty_or_huge_audiences_are_refused() {
    let f = fixture();
    assert!(matches!(f.minter.id_token(&account(), "", Format::Standard, NOW), Err(MintError::EmptyAudience)));
    let huge = "a".repeat(5000);
    assert!(matches!(
        f.minter.id_token(&account(), &huge, Format::Standard, NOW),
        Err(MintError::AudienceTooLong(5000))
    ));
}

#[test]
fn access_tokens_are_opaque_count_down_and_resolve_to_their_principal() {
    let f = fixture();
    let m = &f.minter;
    let token = m.access_token(&account(), &[], NOW).unwrap();
    assert!(token.token.starts_with(ACCESS_TOKEN_PREFIX));
    let random = &token.token[ACCESS_TOKEN_PREFIX.len()..];
    assert_eq!(random.len(), 43);
    assert!(random.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    assert_eq!(token.expires_in, 3600);

    let again = m.access_token(&account(), &[], NOW + 10).unwrap();
    assert_eq!(again.token, token.token);
    assert_eq!(again.expires_in, 3590);

    let info = m.access_token_principal(&token.token, NOW + 10).unwrap();
    assert_eq!(info.unique_id, account().unique_id);
    assert_eq!(info.email, account().email);
    assert_eq!(info.scopes, vec![DEFAULT_SCOPE]);
    assert_eq!(info.expires_at, NOW + 3600);
    assert!(m.access_token_principal(&token.token, NOW + 3600).is_none(), "expired");
    assert!(m.access_token_principal("ya29.made-up", NOW).is_none());

    let scoped = m.access_token(&account(), &["b".into(), "a".into(), "a".into()], NOW).unwrap();
    assert_ne!(scoped.token, token.token);
    assert_eq!(m.access_token_principal(&scoped.token, NOW).unwrap().scopes, vec!["a", "b"]);

    // Renewed when less than RENEW_BEFORE is left; the old one keeps working until it expires.
    let renewed = m.access_token(&account(), &[], NOW + 3600 - RENEW_BEFORE).unwrap();
    assert_ne!(renewed.token, token.token);
    assert_eq!(renewed.expires_in, 3600);
    assert!(m.access_token_principal(&token.token, NOW + 3599).is_some());
}
