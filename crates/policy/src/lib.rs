//! runnel's security decisions, as pure functions.
//!
//! Each decision takes every fact it needs as an argument (the principal, the policies that
//! apply, the origin a request took, its destination, and the time) and returns a [`Decision`]:
//! allowed or not, a machine-readable [`Reason`], and a trace a person can read. Nothing here
//! does I/O, reads a clock or keeps state, so the data path, the API and the troubleshooter all
//! reach the same verdict from the same facts, and the tables in the tests pin every reason.
//!
//! Deny is the default: a decision is `allowed` only when a rule positively grants it.

pub mod egress;
pub mod iam;
pub mod ingress;
pub mod origin;
pub mod principal;
pub mod roles;

mod decision;

pub use decision::{Decision, Reason};
