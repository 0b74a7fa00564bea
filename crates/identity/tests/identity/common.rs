//! Shared fixtures: a key directory, a minter, and hand-made (forged) tokens.

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use runnel_identity::{Account, KeyPolicy, Keys, Minter};
use serde_json::{Value, json};

pub const NOW: u64 = 1_700_000_000;
pub const ISSUER: &str = "http://127.0.0.1:8090";
pub const AUDIENCE: &str = "https://hello-123456789012.us-central1.run.app";
pub const SKEW: u64 = 300;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub keys: Arc<Keys>,
    pub minter: Minter,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keys::open(dir.path().join("keys"), KeyPolicy::default(), NOW).unwrap());
    let minter = Minter::new(keys.clone(), ISSUER);
    Fixture { dir, keys, minter }
}

pub fn account() -> Account {
    Account { unique_id: "112233445566778899001".into(), email: "caller@my-project.iam.gserviceaccount.com".into() }
}

pub fn audiences() -> Vec<String> {
    vec![AUDIENCE.to_string()]
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64_json(value: &Value) -> String {
    b64(value.to_string().as_bytes())
}

/// Claims as runnel issues them, at `iat`.
pub fn claims(iat: u64) -> Value {
    let a = account();
    json!({
        "aud": AUDIENCE, "azp": a.unique_id, "email": a.email, "email_verified": true,
        "exp": iat + 3600, "iat": iat, "iss": ISSUER, "sub": a.unique_id,
    })
}

pub fn runnel_header(f: &Fixture) -> Value {
    json!({ "alg": "RS256", "kid": f.keys.signing_key(NOW).unwrap().kid(), "typ": "JWT" })
}

/// A token over `header` and `payload`, signed with runnel's current key.
pub fn signed_by_runnel(f: &Fixture, header: &Value, payload: &Value) -> String {
    let signing_input = format!("{}.{}", b64_json(header), b64_json(payload));
    let signature = f.keys.signing_key(NOW).unwrap().sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64(&signature))
}

/// A token over `header` and `payload`, signed with a freshly made RSA key runnel never saw.
pub fn signed_by_stranger(header: &Value, payload: &Value) -> String {
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let signing_input = format!("{}.{}", b64_json(header), b64_json(payload));
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature).unwrap();
    format!("{signing_input}.{}", b64(&signature))
}

/// The payload of a JWT, decoded without any check.
pub fn payload_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

pub fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}
