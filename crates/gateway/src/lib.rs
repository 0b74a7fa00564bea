//! runnel's frontend: the only way into a service's instances.
//!
//! It accepts HTTP/1.1 on one listener, finds the service by `Host`, takes a slot on one of the
//! serving revision's instances (or answers 429/503 as Cloud Run does when none is free), and
//! forwards the request over the instance's port channel, streaming bodies both ways. Later the
//! origin, ingress and invoker checks sit between routing and forwarding.
//!
//! This crate knows nothing of sandboxes or the store: the daemon gives it a [`Router`], and
//! each route carries a [`Backend`] that hands out instance slots. It must never let a client
//! pick anything but the host it asks for: not the instance, not the upstream address, not the
//! identity headers the instance sees.
//!
//! Layout: pure decisions (`host`, `headers`, `pages`) are separate from the I/O around them
//! (`frontend`, `upstream`, `body`, `io`), and request accounting lives in `record`.

mod body;
mod contract;
mod egress;
mod frontend;
mod headers;
mod host;
mod io;
mod pages;
mod record;
mod runtime;
mod upstream;

pub use contract::{
    Backend, EgressPlanner, HttpRequest, Invoker, InvokerCheck, Lease, LeaseFuture, Plan, Refusal, RequestLog,
    RequestRecord, Route, Router, Unavailable,
};
pub use frontend::{Frontend, FrontendConfig};
pub use runtime::{build_runtime, default_workers};
