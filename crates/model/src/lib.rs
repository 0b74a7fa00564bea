//! runnel's resources and the rules they obey, with no I/O.
//!
//! Every type here is the shape a user sees on the wire (the JSON of the Cloud Run Admin API v2,
//! IAM v1, VPC Access v1 and Compute v1, camelCase) and every rule is a plain function that
//! returns a [`Invalid`] naming the field, what is wrong and how to fix it. The control plane
//! calls these rules before it writes anything; nothing here reads a clock, a file or a socket,
//! so the rules can be tested exhaustively and reused by the troubleshooter.
//!
//! This crate must never decide who may do what: that is `runnel-policy`'s job.

mod error;
pub mod iam;
pub mod name_map;
pub mod names;
pub mod network;
pub mod ranges;
pub mod service;
pub mod service_account;

pub use error::Invalid;
