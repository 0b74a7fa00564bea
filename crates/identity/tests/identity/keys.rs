//! Keys on disk, rotation and retirement, restarts, and the published forms.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use runnel_identity::keys::CERTS_MAX_AGE;
use runnel_identity::{Format, KeyError, KeyPolicy, KeySet, Keys, Minter, publish, verify_id_token};
use runnel_policy::Reason;
use serde_json::Value;
use tower::ServiceExt;

use crate::common::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn key_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn the_first_start_makes_one_private_key_file() {
    let f = fixture();
    let dir = f.keys.dir();
    assert_eq!(mode(dir), 0o700);
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    assert_eq!(kid.len(), 40);
    assert!(kid.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(key_files(dir), vec![format!("{kid}.json")]);
    let file = dir.join(format!("{kid}.json"));
    assert_eq!(mode(&file), 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let stored: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stored["kid"], kid);
    assert_eq!(stored["algorithm"], "RS256");
    assert_eq!(stored["created"], NOW);
    assert_eq!(stored["activeFrom"], NOW, "the very first key signs at once");
    assert!(stored["privateKey"].as_str().unwrap().starts_with("-----BEGIN PRIVATE KEY-----\n"));
}

#[test]
fn a_restart_loads_the_same_keys_and_verifies_tokens_minted_before() {
    let f = fixture();
    let token = f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap().token;
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    let pem_before = f.keys.key_set().pem_map_json().to_string();
    drop(f.minter);
    drop(f.keys);

    let reopened = Keys::open(f.dir.path().join("keys"), KeyPolicy::default(), NOW + 600).unwrap();
    assert_eq!(reopened.signing_key(NOW + 600).unwrap().kid(), kid);
    let keys = reopened.key_set();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys.pem_map_json(), pem_before, "the certificate is the same after a restart");
    let claims = verify_id_token(&token, &keys, ISSUER, &audiences(), NOW + 600, SKEW).unwrap();
    assert_eq!(claims.sub, account().unique_id);
}

#[test]
fn leftover_temporary_files_are_removed_and_loose_modes_tightened() {
    let f = fixture();
    let dir = f.keys.dir().to_path_buf();
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    std::fs::write(dir.join(".half-written.json.tmp"), "{").unwrap();
    let file = dir.join(format!("{kid}.json"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    Keys::open(&dir, KeyPolicy::default(), NOW).unwrap();
    assert_eq!(key_files(&dir), vec![format!("{kid}.json")]);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn a_corrupt_key_file_stops_the_start_with_its_name() {
    let f = fixture();
    let dir = f.keys.dir().to_path_buf();
    std::fs::write(dir.join("bogus.json"), r#"{"kid":"x"}"#).unwrap();
    match Keys::open(&dir, KeyPolicy::default(), NOW) {
        Err(e @ KeyError::BadKeyFile { .. }) => assert!(e.to_string().contains("bogus.json"), "{e}"),
        other => panic!("expected a bad key file, got {other:?}"),
    }
    // A key file whose kid does not match its key (edited by hand) is refused too.
    std::fs::remove_file(dir.join("bogus.json")).unwrap();
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    let path = dir.join(format!("{kid}.json"));
    let mut stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    stored["kid"] = Value::from("0000");
    std::fs::write(&path, stored.to_string()).unwrap();
    assert!(matches!(Keys::open(&dir, KeyPolicy::default(), NOW), Err(KeyError::BadKeyFile { .. })));
}

#[test]
fn rotation_prepublishes_switches_and_retires_after_every_token_expired() {
    let f = fixture();
    let policy = KeyPolicy::default();
    let (period, prepublish, retention) = (policy.rotation_period, policy.prepublish, policy.retention);
    assert!(retention >= 3600 + SKEW, "a retired key outlives its last token and the skew");
    let old_kid = f.keys.signing_key(NOW).unwrap().kid().to_string();

    // Not due yet.
    assert!(!f.keys.rotate_if_due(NOW + period - prepublish - 1).unwrap());
    // Due: the next key is published, but the old one still signs.
    let t1 = NOW + period - prepublish;
    assert!(f.keys.rotate_if_due(t1).unwrap());
    assert!(!f.keys.rotate_if_due(t1 + 60).unwrap(), "one rotation at a time");
    assert_eq!(f.keys.key_set().len(), 2);
    assert_eq!(f.keys.signing_key(t1).unwrap().kid(), old_kid);
    let new_kid = f.keys.key_set().kids().find(|k| *k != old_kid).unwrap().to_string();
    assert_eq!(key_files(f.keys.dir()).len(), 2);
    for file in key_files(f.keys.dir()) {
        assert_eq!(mode(&f.keys.dir().join(file)), 0o600);
    }

    // The last token the old key signs, one second before the switch.
    let last_old = f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW + period - 1).unwrap().token;
    assert_eq!(header_of(&last_old)["kid"], old_kid);
    let switch = NOW + period;
    assert_eq!(f.keys.signing_key(switch).unwrap().kid(), new_kid);
    let first_new = f.minter.id_token(&account(), "https://fresh.example", Format::Standard, switch).unwrap().token;
    assert_eq!(header_of(&first_new)["kid"], new_kid);

    // After the switch the old key stays published until its last token has expired...
    let last_exp = payload_of(&last_old)["exp"].as_u64().unwrap();
    for now in [switch, switch + 1800, last_exp, last_exp + SKEW] {
        f.keys.rotate_if_due(now).unwrap();
        let keys = f.keys.key_set();
        assert!(keys.get(&old_kid).is_some(), "old key published at {now}");
        verify_id_token(&last_old, &keys, ISSUER, &audiences(), now, SKEW).unwrap();
    }
    // ...then it is retired and its file deleted.
    assert!(f.keys.rotate_if_due(switch + retention).unwrap());
    let keys = f.keys.key_set();
    assert!(keys.get(&old_kid).is_none());
    assert_eq!(key_files(f.keys.dir()), vec![format!("{new_kid}.json")]);
    assert_eq!(
        verify_id_token(&last_old, &keys, ISSUER, &audiences(), switch + retention, SKEW).unwrap_err().reason,
        Reason::TokenUnknownKey
    );
    verify_id_token(&first_new, &keys, ISSUER, &["https://fresh.example".to_string()], switch + 3600, SKEW).unwrap();

    // A restart after all this sees the same single key.
    let reopened = Keys::open(f.keys.dir(), policy, switch + retention).unwrap();
    assert_eq!(reopened.key_set().kids().collect::<Vec<_>>(), vec![new_kid.as_str()]);
}

#[test]
fn a_token_signed_before_a_rotation_verifies_after_it_until_it_expires() {
    // A short period, so the rotation happens while the token is young.
    let dir = tempfile::tempdir().unwrap();
    let policy = KeyPolicy { rotation_period: 1200, prepublish: 600, retention: 3600 + SKEW + 60 };
    let keys = Arc::new(Keys::open(dir.path(), policy, NOW).unwrap());
    let minter = Minter::new(keys.clone(), ISSUER);
    let token = minter.id_token(&account(), AUDIENCE, Format::Standard, NOW + 10).unwrap().token;
    let exp = NOW + 10 + 3600;
    let mut rotations = 0;
    let mut now = NOW + 10;
    while now <= exp + SKEW {
        rotations += usize::from(keys.rotate_if_due(now).unwrap());
        verify_id_token(&token, &keys.key_set(), ISSUER, &audiences(), now, SKEW)
            .unwrap_or_else(|r| panic!("refused at {now}: {r}"));
        now += 60;
    }
    assert!(rotations >= 3, "{rotations} rotations");
    assert_ne!(keys.signing_key(now).unwrap().kid(), header_of(&token)["kid"]);
    let r = verify_id_token(&token, &keys.key_set(), ISSUER, &audiences(), exp + SKEW + 1, SKEW).unwrap_err();
    assert!(matches!(r.reason, Reason::TokenExpired | Reason::TokenUnknownKey), "{r}");
}

#[test]
fn a_late_start_publishes_the_next_key_before_it_signs() {
    let f = fixture();
    let old_kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    let later = NOW + 10 * 24 * 3600;
    let keys = Keys::open(f.keys.dir(), KeyPolicy::default(), later).unwrap();
    assert_eq!(keys.key_set().len(), 2);
    // Verifiers that cached the key set before need the prepublish time to learn the new key.
    assert_eq!(keys.signing_key(later).unwrap().kid(), old_kid);
    let next = keys.signing_key(later + KeyPolicy::default().prepublish).unwrap();
    assert_ne!(next.kid(), old_kid);
    assert!(CERTS_MAX_AGE < KeyPolicy::default().prepublish);
}

#[test]
fn the_jwks_has_googles_shape_and_round_trips() {
    let f = fixture();
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    let jwks: Value = serde_json::from_str(f.keys.key_set().jwks_json()).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let jwk = keys[0].as_object().unwrap();
    let mut fields: Vec<&str> = jwk.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, vec!["alg", "e", "kid", "kty", "n", "use"]);
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["kid"], kid.as_str());
    assert_eq!(jwk["e"], "AQAB");
    assert_eq!(jwk["n"].as_str().unwrap().len(), 342, "2048-bit modulus, base64url");

    // A verifier that only has the JWKS (another node) accepts runnel's tokens with it.
    let from_jwks = KeySet::from_jwks(f.keys.key_set().jwks_json()).unwrap();
    let token = f.minter.id_token(&account(), AUDIENCE, Format::Standard, NOW).unwrap().token;
    verify_id_token(&token, &from_jwks, ISSUER, &audiences(), NOW, SKEW).unwrap();
    assert_eq!(from_jwks.get(&kid).unwrap().fingerprint(), f.keys.key_set().get(&kid).unwrap().fingerprint());
    assert!(from_jwks.pem_map_json().contains("-----BEGIN PUBLIC KEY-----"));
}

#[test]
fn the_pem_map_holds_a_certificate_for_each_key() {
    let f = fixture();
    let kid = f.keys.signing_key(NOW).unwrap().kid().to_string();
    let map: Value = serde_json::from_str(f.keys.key_set().pem_map_json()).unwrap();
    let map = map.as_object().unwrap();
    assert_eq!(map.len(), 1);
    let pem = map[&kid].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n") && pem.ends_with("-----END CERTIFICATE-----\n"));
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    // The certificate carries exactly the key the JWKS publishes.
    let jwk = &serde_json::from_str::<Value>(f.keys.key_set().jwks_json()).unwrap()["keys"][0];
    let n =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, jwk["n"].as_str().unwrap()).unwrap();
    assert!(der.windows(n.len()).any(|w| w == n.as_slice()));
    assert!(der.windows(kid.len()).any(|w| w == kid.as_bytes()), "the subject names the kid");
}

#[test]
fn the_discovery_document_points_at_the_jwks() {
    let doc = publish::discovery_document("http://127.0.0.1:8090");
    assert_eq!(doc["issuer"], "http://127.0.0.1:8090");
    assert_eq!(doc["jwks_uri"], "http://127.0.0.1:8090/oauth2/v3/certs");
    assert_eq!(doc["id_token_signing_alg_values_supported"], serde_json::json!(["RS256"]));
    assert_eq!(doc["response_types_supported"], serde_json::json!(["id_token"]));
    assert_eq!(doc["subject_types_supported"], serde_json::json!(["public"]));
}

#[tokio::test]
async fn the_publish_router_serves_all_three_documents() {
    let f = fixture();
    let app = publish::router(f.keys.clone(), ISSUER);
    for (path, expect) in [
        ("/oauth2/v3/certs", f.keys.key_set().jwks_json().to_string()),
        ("/oauth2/v1/certs", f.keys.key_set().pem_map_json().to_string()),
        ("/.well-known/openid-configuration", publish::discovery_document(ISSUER).to_string()),
    ] {
        let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["cache-control"], format!("public, max-age={CERTS_MAX_AGE}"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(String::from_utf8(body.to_vec()).unwrap(), expect);
    }
}

#[test]
fn a_zero_period_never_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let policy = KeyPolicy { rotation_period: 0, ..KeyPolicy::default() };
    let keys = Keys::open(dir.path(), policy, NOW).unwrap();
    assert!(!keys.rotate_if_due(NOW + 365 * 24 * 3600).unwrap());
    assert_eq!(keys.key_set().len(), 1);
}

#[test]
fn a_jwks_keeps_only_rs256_signing_keys() {
    let f = fixture();
    let jwks: Value = serde_json::from_str(f.keys.key_set().jwks_json()).unwrap();
    let rsa = jwks["keys"][0].clone();
    let mut rs512 = rsa.clone();
    rs512["alg"] = "RS512".into();
    rs512["kid"] = "k512".into();
    let mut enc = rsa.clone();
    enc["use"] = "enc".into();
    enc["kid"] = "kenc".into();
    let ec = serde_json::json!({ "kty": "EC", "kid": "kec", "crv": "P-256", "x": "AA", "y": "AA" });
    let mixed = serde_json::json!({ "keys": [rsa, rs512, enc, ec] }).to_string();
    let set = KeySet::from_jwks(&mixed).unwrap();
    assert_eq!(set.kids().collect::<Vec<_>>(), vec![f.keys.signing_key(NOW).unwrap().kid()]);
    assert!(KeySet::from_jwks("{}").is_err());
    assert!(KeySet::from_jwks(r#"{"keys":[{"kty":"RSA","kid":"x","n":"AQAB","e":"AQAB"}]}"#).is_err(), "a 17-bit key");
}
