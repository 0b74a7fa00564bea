//! End-to-end tests of the `runnel` binary: the real daemon (`runnel up`) on loopback ports in
//! a private home per test, driven by the CLI as separate processes, as a user drives them.
//! One integration-test binary; every test has its own daemon, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod concurrency;
mod crash;
mod guide;
mod harness;
mod refusals;
mod restart;
