//! runnel's control plane: the REST API that the CLI, the console and client libraries use.
//!
//! Paths and JSON follow the Google APIs runnel imitates (Cloud Run Admin v2, IAM v1 with
//! Resource Manager's project policy, VPC Access v1, Compute v1), so users can read Google's
//! reference to understand runnel. Every method authenticates its caller, checks one named
//! permission through `runnel-policy`, and changes the store in one transaction; errors come
//! back in Google's `{"error":{"code","message","status"}}` shape and say what to do next.
//!
//! The control plane must never run or reach an instance: it only records the desired state.

mod accounts;
mod auth;
mod error;
mod networks;
mod operator;
mod ops;
mod plane;
mod policy;
mod projects;
mod routes;
mod services;
mod serving;
mod snapshot;
mod tokens;
mod troubleshoot;

pub use auth::new_secret;
pub use error::{ApiError, ApiResult};
pub use operator::{OpenedProxy, OperatorProxies, OperatorProxyGrant, ProxyRequest};
pub use plane::{ControlPlane, LogReader, Project, Settings, TokenIssuer};
pub use projects::{Bootstrap, bootstrap};
pub use routes::app;
pub use serving::{Desired, InvokerFacts, Outcome};
pub use tokens::{ACCESS_TOKEN_PREFIX, AccessTokenHolder, AccessTokenRequest};
pub use troubleshoot::{CallQuestion, TokenChoice, Troubleshooter};
