//! The CLI's view of the API: one authenticated HTTP client that turns Google-shaped errors into
//! one-line messages.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::home;

/// An API failure as the server described it.
#[derive(Debug)]
pub struct ApiFailure {
    pub http: StatusCode,
    pub status: String,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiFailure {}

pub struct Client {
    http: reqwest::Client,
    pub base: String,
    credential: String,
    pub project: String,
    pub region: String,
    home: PathBuf,
}

/// Where to find the daemon and who to be, from flags, environment and `$RUNNEL_HOME`.
pub struct Target {
    pub home: PathBuf,
    pub api_url: Option<String>,
    pub credential_file: Option<PathBuf>,
    pub project: Option<String>,
    pub region: Option<String>,
}

impl Client {
    pub fn connect(t: Target) -> Result<Client> {
        let daemon = home::read_daemon(&t.home);
        let base = match (&t.api_url, &daemon) {
            (Some(u), _) => u.trim_end_matches('/').to_string(),
            (None, Some(d)) => d.api.clone(),
            (None, None) => {
                return Err(anyhow!(
                    "no runnel daemon is running for RUNNEL_HOME {}: start one with `runnel up` (same RUNNEL_HOME), or pass `--api-url`",
                    t.home.display()
                ));
            }
        };
        let credential = match (&t.credential_file, std::env::var("RUNNEL_CREDENTIAL").ok().filter(|s| !s.is_empty())) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map_err(|e| anyhow!("cannot read the credential file {}: {e}", f.display()))?
                .trim()
                .to_string(),
            (None, Some(c)) => c.trim().to_string(),
            (None, None) => {
                let f = t.home.join(home::OWNER_CREDENTIAL);
                std::fs::read_to_string(&f)
                    .map_err(|e| {
                        anyhow!("cannot read the owner's credential {}: {e}; set RUNNEL_CREDENTIAL or pass `--credential-file`", f.display())
                    })?
                    .trim()
                    .to_string()
            }
        };
        let project = t.project.or_else(|| daemon.as_ref().map(|d| d.project.clone())).unwrap_or_else(|| "-".into());
        let region = t.region.or_else(|| daemon.as_ref().map(|d| d.region.clone())).unwrap_or_else(|| "local1".into());
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| anyhow!("cannot build an HTTP client: {e}"))?;
        Ok(Client { http, base, credential, project, region, home: t.home })
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.credential);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the runnel daemon at {}: is `runnel up` running for RUNNEL_HOME {}?",
                    self.base,
                    self.home.display()
                )
            } else {
                anyhow!("the request to {} failed: {e}", self.base)
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let err = &value["error"];
        Err(ApiFailure {
            http: status,
            status: err["status"].as_str().unwrap_or("UNKNOWN").to_string(),
            message: err["message"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP {status}: {text}")),
        }
        .into())
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call(Method::DELETE, path, None).await
    }

    /// The frontend's address (`127.0.0.1:7781`), when the daemon in `$RUNNEL_HOME` runs one.
    pub fn frontend(&self) -> Option<String> {
        home::read_daemon(&self.home)?.frontend.map(|f| f.trim_start_matches("http://").to_string())
    }

    /// A POST whose response stays open for as long as what it asked for lasts (an operator
    /// proxy): no overall timeout; an API error is returned like [`Client::call`]'s.
    pub async fn open_stream(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.credential)
            .json(body)
            .timeout(std::time::Duration::from_secs(10 * 365 * 24 * 3600))
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the runnel daemon at {}: {e}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let err = &value["error"];
        Err(ApiFailure {
            http: status,
            status: err["status"].as_str().unwrap_or("UNKNOWN").to_string(),
            message: err["message"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP {status}: {text}")),
        }
        .into())
    }

    /// `Some(value)`, or `None` on NOT_FOUND.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Value>> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.downcast_ref::<ApiFailure>().is_some_and(|f| f.http == StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn run_parent(&self, region: &str) -> String {
        format!("/v2/projects/{}/locations/{region}", self.project)
    }
}

/// Whether an error is the API's ABORTED (a stale etag), which read-modify-write retries.
pub fn is_aborted(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>().is_some_and(|f| f.status == "ABORTED")
}
