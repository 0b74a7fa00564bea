//! End-to-end tests of runnel's node role: the real daemon (`runnel up`) running services'
//! instances in sandboxes behind its frontend, driven by the CLI as a user drives it and called
//! over HTTP as a client calls it. Every test has its own daemon and home, so they run in
//! parallel; deadlines are kept small so the binary stays fast.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod deploys;
mod harness;
mod http;
mod isolation;
mod lifecycle;
mod limits;
mod logs;
mod serving;
mod streaming;
