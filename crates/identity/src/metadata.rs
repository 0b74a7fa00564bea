//! The metadata server of one instance: the GCE wire behaviour that Google's auth libraries rely
//! on (shared/METADATA.md), answering only for the instance whose channel it is bound to.
//!
//! One handler takes every request, so the checks happen in one place and in one order:
//! 1. `Host` must be a name the metadata server is known by (against DNS rebinding) → else 403;
//! 2. no `X-Forwarded-For` (nor `Forwarded`): requests relayed by a proxy are refused (SSRF) → 403;
//! 3. `/` answers 200 (the Python detection ping) without further checks;
//! 4. everything else needs `Metadata-Flavor: Google` → else 403 with Google's exact body;
//! 5. the path is looked up in the instance's metadata tree.
//!
//! Every response, errors included, carries `Metadata-Flavor: Google` (a layer adds it).
//!
//! Choices: directories answer 200 with or without the trailing slash (no redirect); a disabled
//! service account gets 403 and a deleted (or deleted and re-created) one 404 from `identity`
//! and `token`, with a body that names the reason code and the fix — both fail fast in the
//! clients, which retry only 5xx, 408 and 429; `wait_for_change` is not supported (answers at
//! once); `?alt=json` on a directory lists its entries as a JSON array.

use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use runnel_model::service_account::ServiceAccount;
use runnel_policy::Reason;
use runnel_policy::principal;
use serde_json::{Map, Value, json};

use crate::mint::{Account, ComputeEngine, DEFAULT_SCOPE, Format, Minter};

/// The header every request (but `/`) must carry, and every response does.
pub const FLAVOR_HEADER: HeaderName = HeaderName::from_static("metadata-flavor");

/// The body of the 403 for a request without `Metadata-Flavor: Google`, as Google's.
pub const MISSING_FLAVOR_BODY: &str = r#"Missing required header "Metadata-Flavor": "Google""#;

/// The names the metadata server answers to (with no port or port 80).
pub const KNOWN_HOSTS: [&str; 3] = ["169.254.169.254", "metadata.google.internal", "metadata"];

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// The service accounts as they are now. The daemon implements it over its store; whether an
/// account may get tokens is decided here, by [`runnel_policy::principal`].
pub trait AccountSource: Send + Sync + 'static {
    /// The account with this email as it is now, disabled or not; `None` when it does not
    /// exist or the store cannot say (which refuses the token).
    fn lookup(&self, email: &str) -> Option<ServiceAccount>;
}

impl<F> AccountSource for F
where
    F: Fn(&str) -> Option<ServiceAccount> + Send + Sync + 'static,
{
    fn lookup(&self, email: &str) -> Option<ServiceAccount> {
        self(email)
    }
}

/// Everything the metadata server says about its instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub project_id: String,
    pub project_number: u64,
    /// e.g. `us-central1`; the zone is `REGION-1`, as Cloud Run reports it.
    pub region: String,
    /// `instance/id`.
    pub instance_id: String,
    /// `instance_name` in `format=full` tokens.
    pub instance_name: String,
    /// When the instance started (Unix seconds).
    pub created: u64,
    /// The revision's service account: tokens are for it.
    pub service_account: Account,
    /// `…/scopes`, and the scopes of access tokens requested without `scopes=`.
    pub scopes: Vec<String>,
    /// More `Host` values to accept besides [`KNOWN_HOSTS`], e.g. `127.0.0.1:8169` when clients
    /// are pointed at the server with `GCE_METADATA_HOST`.
    pub extra_hosts: Vec<String>,
}

impl Instance {
    pub fn zone(&self) -> String {
        format!("{}-1", self.region)
    }

    fn compute_engine(&self) -> ComputeEngine {
        ComputeEngine {
            instance_creation_timestamp: self.created,
            instance_id: self.instance_id.clone(),
            instance_name: self.instance_name.clone(),
            project_id: self.project_id.clone(),
            project_number: self.project_number,
            zone: self.zone(),
        }
    }
}

/// The time in Unix seconds; replaceable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Seconds since the Unix epoch by the system clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A metadata server for one instance.
pub struct MetadataServer {
    instance: Instance,
    compute_engine: ComputeEngine,
    extra_hosts: Vec<(String, u16)>,
    minter: Arc<Minter>,
    accounts: Arc<dyn AccountSource>,
    clock: Clock,
}

impl std::fmt::Debug for MetadataServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataServer").field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl MetadataServer {
    pub fn new(instance: Instance, minter: Arc<Minter>, accounts: Arc<dyn AccountSource>) -> Self {
        let extra_hosts = instance
            .extra_hosts
            .iter()
            .filter_map(|h| Authority::from_str(h).ok())
            .map(|a| (normal_host(a.host()), a.port_u16().unwrap_or(80)))
            .collect();
        let compute_engine = instance.compute_engine();
        Self { instance, compute_engine, extra_hosts, minter, accounts, clock: Arc::new(unix_now) }
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The router to serve on the instance's channel.
    pub fn router(self) -> Router {
        Router::new().fallback(handle).with_state(Arc::new(self)).layer(axum::middleware::map_response(
            |mut response: Response| async move {
                response.headers_mut().insert(FLAVOR_HEADER, HeaderValue::from_static("Google"));
                response
            },
        ))
    }

    fn host_allowed(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let mut hosts = headers.get_all(HOST).iter();
        let header = match (hosts.next(), hosts.next()) {
            (Some(h), None) => match h.to_str().ok().and_then(|h| Authority::from_str(h).ok()) {
                Some(a) => Some(a),
                None => return false,
            },
            (None, _) => None,
            (Some(_), Some(_)) => return false,
        };
        let named: Vec<&Authority> = header.iter().chain(uri.authority()).collect();
        !named.is_empty() && named.iter().all(|a| self.known(a))
    }

    fn known(&self, authority: &Authority) -> bool {
        if authority.as_str().contains('@') {
            return false;
        }
        let host = normal_host(authority.host());
        let port = authority.port_u16().unwrap_or(80);
        (port == 80 && KNOWN_HOSTS.contains(&host.as_str()))
            || self.extra_hosts.iter().any(|(h, p)| *h == host && *p == port)
    }

    fn answer(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Response, Refused> {
        if !self.host_allowed(headers, uri) {
            let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("(none)");
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                format!(
                    "The metadata server answers only as 169.254.169.254 or metadata.google.internal; this request was for host {:?}.",
                    host.chars().take(100).collect::<String>()
                ),
            ));
        }
        if headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded") {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "Request had an X-Forwarded-For header and was rejected: the metadata server does not answer requests relayed by a proxy.",
            ));
        }
        if method != Method::GET && method != Method::HEAD {
            return Err(Refused::new(StatusCode::METHOD_NOT_ALLOWED, "The metadata server answers only GET requests."));
        }
        let path = uri.path();
        if path == "/" {
            return Ok(text("computeMetadata/\n"));
        }
        let Some(rest) = path.strip_prefix("/computeMetadata").filter(|r| r.is_empty() || r.starts_with('/')) else {
            return Err(not_found(path));
        };
        if !headers.get_all(FLAVOR_HEADER).iter().any(|v| v == "Google") {
            return Err(Refused::new(StatusCode::FORBIDDEN, MISSING_FLAVOR_BODY));
        }
        let query = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|_| Refused::new(StatusCode::BAD_REQUEST, "The query string is not valid."))?
            .0;
        let params = Params(query);
        let directory = rest.ends_with('/');
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Option<_>>()
            .ok_or_else(|| not_found(path))?;

        let root = Node::Dir(vec![("v1".into(), self.tree())], false);
        let mut node = &root;
        for segment in &segments {
            node = node.child(segment).ok_or_else(|| self.unknown(path, &segments))?;
        }
        match node {
            Node::Identity => {
                if directory {
                    return Err(not_found(path));
                }
                self.identity(&params)
            }
            Node::Token => {
                if directory {
                    return Err(not_found(path));
                }
                self.token(&params)
            }
            _ => render(node, &params),
        }
    }

    /// A 404 that says which service accounts exist, when the path named another.
    fn unknown(&self, path: &str, segments: &[String]) -> Refused {
        let own = &self.instance.service_account.email;
        if let ["v1", "instance", "service-accounts", name, ..] =
            segments.iter().map(String::as_str).collect::<Vec<_>>()[..]
            && name != "default"
            && name != own
        {
            return Refused::new(
                StatusCode::NOT_FOUND,
                format!("The service account {name:?} is not this instance's: use \"default\" or {own:?}."),
            );
        }
        not_found(path)
    }

    fn tree(&self) -> Node {
        let i = &self.instance;
        let account = || {
            Node::Dir(
                vec![
                    ("aliases".into(), Node::Lines(vec!["default".into()])),
                    ("email".into(), Node::Text(i.service_account.email.clone())),
                    ("identity".into(), Node::Identity),
                    ("scopes".into(), Node::Lines(self.scopes())),
                    ("token".into(), Node::Token),
                ],
                false,
            )
        };
        Node::Dir(
            vec![
                (
                    "instance".into(),
                    Node::Dir(
                        vec![
                            ("id".into(), Node::Text(i.instance_id.clone())),
                            (
                                "region".into(),
                                Node::Text(format!("projects/{}/regions/{}", i.project_number, i.region)),
                            ),
                            (
                                "service-accounts".into(),
                                Node::Dir(
                                    vec![("default".into(), account()), (i.service_account.email.clone(), account())],
                                    true,
                                ),
                            ),
                            ("zone".into(), Node::Text(format!("projects/{}/zones/{}", i.project_number, i.zone()))),
                        ],
                        false,
                    ),
                ),
                (
                    "project".into(),
                    Node::Dir(
                        vec![
                            ("numeric-project-id".into(), Node::Number(i.project_number)),
                            ("project-id".into(), Node::Text(i.project_id.clone())),
                        ],
                        false,
                    ),
                ),
                (
                    "universe".into(),
                    Node::Dir(vec![("universe-domain".into(), Node::Text("googleapis.com".into()))], false),
                ),
            ],
            false,
        )
    }

    fn scopes(&self) -> Vec<String> {
        if self.instance.scopes.is_empty() { vec![DEFAULT_SCOPE.into()] } else { self.instance.scopes.clone() }
    }

    /// The instance's account, if it may get tokens now.
    fn usable_account(&self) -> Result<&Account, Refused> {
        let account = &self.instance.service_account;
        let found = self.accounts.lookup(&account.email);
        let issued = principal::IssuedTo { unique_id: &account.unique_id, email: Some(&account.email) };
        let Some(refusal) = principal::refuses_service_account(issued, found.as_ref().map(principal::Account::from))
        else {
            return Ok(account);
        };
        let reason = refusal.reason;
        tracing::info!(email = %account.email, reason = %reason, "metadata server refused a token");
        let email = &account.email;
        Err(match reason {
            Reason::PrincipalDisabled => Refused::new(
                StatusCode::FORBIDDEN,
                format!(
                    "The service account {email} is disabled ({reason}): runnel issues it no tokens until it is enabled again (`runnel iam service-accounts enable {email}`)."
                ),
            ),
            _ => Refused::new(
                StatusCode::NOT_FOUND,
                format!(
                    "The service account {email} no longer exists, or was deleted and re-created with a new unique id ({reason}): deploy the revision again with an existing service account."
                ),
            ),
        })
    }

    fn identity(&self, params: &Params) -> Result<Response, Refused> {
        let audience = params.get("audience").unwrap_or_default();
        if audience.is_empty() {
            return Err(Refused::new(StatusCode::BAD_REQUEST, "non-empty audience parameter required"));
        }
        let licenses = match params.get("licenses") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(Refused::new(StatusCode::BAD_REQUEST, "licenses must be TRUE or FALSE")),
        };
        let format = match params.get("format") {
            None => Format::Standard,
            Some(v) if v.eq_ignore_ascii_case("standard") => Format::Standard,
            Some(v) if v.eq_ignore_ascii_case("full") => {
                Format::Full { compute_engine: &self.compute_engine, licenses }
            }
            Some(_) => return Err(Refused::new(StatusCode::BAD_REQUEST, "format must be standard or full")),
        };
        let account = self.usable_account()?;
        let token = self.minter.id_token(account, audience, format, (self.clock)()).map_err(|e| match e {
            crate::MintError::AudienceTooLong(_) => Refused::new(StatusCode::BAD_REQUEST, e.to_string()),
            e => internal(&e),
        })?;
        Ok(text(token.token.to_string()))
    }

    fn token(&self, params: &Params) -> Result<Response, Refused> {
        let scopes: Vec<String> = match params.get("scopes") {
            Some(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            None => vec![],
        };
        let scopes = if scopes.is_empty() { self.scopes() } else { scopes };
        let account = self.usable_account()?;
        let token = self.minter.access_token(account, &scopes, (self.clock)()).map_err(|e| internal(&e))?;
        let body = json!({ "access_token": &*token.token, "expires_in": token.expires_in, "token_type": "Bearer" });
        Ok(json_response(&body))
    }
}

async fn handle(State(server): State<Arc<MetadataServer>>, request: Request) -> Response {
    match server.answer(request.method(), request.uri(), request.headers()) {
        Ok(response) => response,
        Err(refused) => {
            tracing::debug!(status = %refused.status, path = request.uri().path(), "metadata server refused a request");
            refused.into_response()
        }
    }
}

/// A refused request: status and a plain-text body for the client.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    body: String,
}

impl Refused {
    fn new(status: StatusCode, body: impl Into<String>) -> Self {
        Self { status, body: body.into() }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.status, [(CONTENT_TYPE, TEXT)], self.body).into_response()
    }
}

fn not_found(path: &str) -> Refused {
    Refused::new(
        StatusCode::NOT_FOUND,
        format!("The metadata server has nothing at {:?}.", path.chars().take(200).collect::<String>()),
    )
}

fn internal(e: &dyn std::error::Error) -> Refused {
    tracing::error!(error = %e, "metadata server could not mint a token");
    Refused::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The metadata server could not issue the token; runnel's log says why.",
    )
}

fn text(body: impl Into<String>) -> Response {
    ([(CONTENT_TYPE, TEXT)], Body::from(body.into())).into_response()
}

fn json_response(value: &Value) -> Response {
    ([(CONTENT_TYPE, JSON)], value.to_string()).into_response()
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

enum Node {
    /// Entries in listing order; `true` when the names are data (service account emails), which
    /// JSON keeps as they are instead of camelCasing.
    Dir(Vec<(String, Node)>, bool),
    Text(String),
    Number(u64),
    Lines(Vec<String>),
    Identity,
    Token,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        match self {
            Node::Dir(entries, _) => entries.iter().find(|(n, _)| n == name).map(|(_, node)| node),
            _ => None,
        }
    }

    /// The JSON of a `recursive=true` answer; `None` for the token endpoints, which it leaves out.
    fn to_json(&self) -> Option<Value> {
        Some(match self {
            Node::Dir(entries, names) => Value::Object(
                entries
                    .iter()
                    .filter_map(|(n, node)| Some((if *names { n.clone() } else { camel(n) }, node.to_json()?)))
                    .collect::<Map<_, _>>(),
            ),
            Node::Text(s) => Value::String(s.clone()),
            Node::Number(n) => Value::from(*n),
            Node::Lines(lines) => Value::from(lines.clone()),
            Node::Identity | Node::Token => return None,
        })
    }

    fn to_text(&self) -> String {
        match self {
            Node::Dir(entries, _) => entries.iter().map(|(n, node)| format!("{n}{}\n", node.slash())).collect(),
            Node::Text(s) => s.clone(),
            Node::Number(n) => n.to_string(),
            Node::Lines(lines) => lines.iter().map(|l| format!("{l}\n")).collect(),
            Node::Identity | Node::Token => String::new(),
        }
    }

    fn slash(&self) -> &'static str {
        if matches!(self, Node::Dir(..)) { "/" } else { "" }
    }

    /// `recursive=true&alt=text`: one `path value` line per value.
    fn flatten(&self, prefix: &str, out: &mut String) {
        match self {
            Node::Dir(entries, _) => {
                for (name, node) in entries {
                    let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
                    node.flatten(&path, out);
                }
            }
            Node::Text(_) | Node::Number(_) => out.push_str(&format!("{prefix} {}\n", self.to_text())),
            Node::Lines(lines) => lines.iter().for_each(|l| out.push_str(&format!("{prefix} {l}\n"))),
            Node::Identity | Node::Token => {}
        }
    }
}

fn render(node: &Node, params: &Params) -> Result<Response, Refused> {
    let recursive = params.get("recursive").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let alt = match params.get("alt") {
        None => None,
        Some(a) if a.eq_ignore_ascii_case("json") => Some(true),
        Some(a) if a.eq_ignore_ascii_case("text") => Some(false),
        Some(_) => return Err(Refused::new(StatusCode::BAD_REQUEST, "alt must be json or text")),
    };
    let as_json = alt.unwrap_or(recursive);
    Ok(match (node, recursive, as_json) {
        (Node::Dir(..), true, true) => json_response(&node.to_json().unwrap_or_default()),
        (Node::Dir(..), true, false) => {
            let mut out = String::new();
            node.flatten("", &mut out);
            text(out)
        }
        (Node::Dir(entries, _), false, true) => json_response(&Value::from(
            entries.iter().map(|(n, node)| format!("{n}{}", node.slash())).collect::<Vec<_>>(),
        )),
        (_, _, true) => json_response(&node.to_json().unwrap_or_default()),
        (_, _, false) => text(node.to_text()),
    })
}

/// `numeric-project-id` → `numericProjectId`, as GCE names keys in JSON.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `%40` → `@` in a path segment; `None` if the escapes are not valid UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = segment.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_keys() {
        assert_eq!(camel("numeric-project-id"), "numericProjectId");
        assert_eq!(camel("service-accounts"), "serviceAccounts");
        assert_eq!(camel("email"), "email");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b.com").as_deref(), Some("a@b.com"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%ff"), None);
    }
}
