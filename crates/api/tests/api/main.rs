//! Integration tests of the control-plane API: the real router over an in-memory store, driven
//! without a socket. Every refusal is checked for its HTTP code, its canonical `error.status`
//! and the part of `error.message` that tells the user what went wrong.
//!

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounts;
mod authn;
mod endpoints;
mod errors;
mod harness;
mod iam;
mod networks;
mod permissions;
mod services;
mod tokens;
