//! runnel's frontend: the only way into a service's instances.
//!
//! It accepts HTTP/1.1 on one listener, finds the service by `Host`, runs the ingress check on
//! the request's origin (decided by the path it took: the listener, an instance's egress proxy,
//! an operator's proxy) and then the route's invoker check, takes a slot on one of the serving
//! revision's instances (or answers 429/503 as Cloud Run does when none is free), and forwards
//! the request over the instance's port channel, streaming bodies both ways. Each instance's
//! egress proxy (`egress`) lives here too: calls to service URLs are handed to the frontend
//! in-process with the origin the egress route decided.
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
mod deadline;
mod egress;
mod frontend;
mod h1;
mod headers;
mod host;
mod io;
mod operator;
mod pages;
mod record;
mod runtime;
mod upstream;

pub use contract::{
    Backend, EgressPlanner, Held, HttpRequest, Invoker, InvokerCheck, Lease, LeaseFuture, Plan, Published, Refusal,
    RequestLog, RequestRecord, Route, Router, Unavailable,
};
pub use frontend::{Frontend, FrontendConfig};
pub use operator::{OperatorProxy, OriginSource, TokenSource};
pub use runtime::{build_runtime, default_workers};
