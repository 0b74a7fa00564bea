//! runnel-identity's integration tests: one binary, a module per part.

// Test helpers outside `#[test]` functions unwrap too; clippy.toml covers only the latter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cache;
mod common;
mod keys;
mod metadata;
mod mint;
mod tokens;
