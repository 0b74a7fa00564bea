//! The calling service refuses to start without a receiver, saying how to give it one. Having an
//! integration test also makes `cargo test --workspace` build the binary itself (next to
//! `runnel`), with the workspace's features, for the networking tests that run it in a sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn without_a_receiving_service_url_it_says_how_to_deploy_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_runnel-example-caller")).env_clear().env("PORT", "0").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RECEIVING_SERVICE_URL is not set") && err.contains("--set-env-vars"), "{err}");
}
