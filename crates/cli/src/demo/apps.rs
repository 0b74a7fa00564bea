//! The demo's two example apps, `receiver` and `caller`, shipped inside the `runnel` binary
//! (`runnel __demo-app receiver|caller`) so that the demo needs nothing else installed.
//!
//! They are ordinary workloads: deployed as services, run as instances in their sandboxes, and
//! they use only what any app on Cloud Run uses — `PORT`, the metadata server over HTTP and the
//! egress proxy announced in `HTTP_PROXY`. Nothing in them knows about runnel, so what the demo
//! shows is what a user's own app would get.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow};
use axum::Json;
use axum::extract::Query;
use axum::http::HeaderMap;
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct DemoAppArgs {
    /// Which example app to run.
    #[arg(value_enum)]
    pub app: App,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum App {
    /// Answers with its own name and the caller's identity, as read from the ID token.
    Receiver,
    /// On `GET /call` fetches an ID token for TARGET_URL (or `?url=`) and calls it.
    Caller,
}

/// Where a Google library asks for tokens when `GCE_METADATA_HOST` does not say otherwise.
const METADATA_HOST: &str = "metadata.google.internal";
const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

/// Serves the app on `$PORT` (8080 by default, as on Cloud Run) until the instance is stopped.
pub async fn app(args: DemoAppArgs) -> Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let router = match args.app {
        App::Receiver => axum::Router::new().fallback(receive),
        App::Caller => axum::Router::new().route("/call", axum::routing::get(call)).fallback(describe_caller),
    };
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("the demo app cannot listen on port {port}"))?;
    axum::serve(listener, router).await.context("the demo app's server failed")
}

/// The receiver: its name and who called, as the token the frontend let through says.
async fn receive(headers: HeaderMap) -> Json<Value> {
    let service = std::env::var("K_SERVICE").unwrap_or_else(|_| "receiver".into());
    Json(json!({
        "message": format!("hello from {service}"),
        "service": service,
        "revision": std::env::var("K_REVISION").unwrap_or_default(),
        "caller": caller_email(&headers),
    }))
}

/// The `email` claim of the bearer token. Not verified here, and it need not be: the frontend
/// verified the token before the request got in and passes it on with its signature removed
/// (so it cannot be replayed from this app's logs), as Cloud Run's frontend does.
fn caller_email(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer "))?;
    let payload = base64url_decode(token.split('.').nth(1)?)?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    claims["email"].as_str().map(str::to_string)
}

/// Base64url (RFC 4648 §5), as JWT segments are written, padded or not; `None` if it is not that.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

async fn describe_caller() -> Json<Value> {
    Json(json!({
        "message": "the demo's caller: GET /call makes it call TARGET_URL (or ?url=) with an ID token from the metadata server, through its egress proxy",
        "target": std::env::var("TARGET_URL").ok(),
    }))
}

/// The caller: an ID token from the metadata server for the target's URL, then the call itself
/// through the egress proxy; reports what came back, as JSON.
async fn call(Query(query): Query<HashMap<String, String>>) -> Json<Value> {
    let Some(target) = query.get("url").cloned().or_else(|| std::env::var("TARGET_URL").ok()) else {
        return Json(json!({"status": 0, "error": "no target: set TARGET_URL on the caller or pass ?url=URL"}));
    };
    let token = match id_token(&target).await {
        Ok(t) => t,
        Err(e) => return Json(json!({"status": 0, "error": format!("no ID token from the metadata server: {e:#}")})),
    };
    match invoke(&target, &token).await {
        Ok(result) => Json(result),
        Err(e) => Json(json!({"status": 0, "error": format!("the call to {target} failed: {e:#}")})),
    }
}

/// An ID token for `audience`, asked for exactly as Google's libraries ask: a GET on the
/// metadata server with `Metadata-Flavor: Google`, never through a proxy.
async fn id_token(audience: &str) -> Result<String> {
    let host = std::env::var("GCE_METADATA_HOST").ok().filter(|h| !h.is_empty()).unwrap_or(METADATA_HOST.into());
    let url = reqwest::Url::parse_with_params(&format!("http://{host}{IDENTITY_PATH}"), &[("audience", audience)])
        .with_context(|| format!("`{host}` is not a host for the metadata server"))?;
    let client = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(10)).build()?;
    let resp = client.get(url).header("Metadata-Flavor", "Google").send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        return Err(anyhow!("HTTP {status}: {}", text.trim()));
    }
    Ok(text.trim().to_string())
}

/// Calls `target` with the token, through the proxy in `HTTP_PROXY` (an absolute-form request,
/// as every HTTP client sends to a proxy): the only way out of the sandbox.
async fn invoke(target: &str, token: &str) -> Result<Value> {
    let mut builder = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(30));
    if let Some(proxy) =
        ["HTTP_PROXY", "http_proxy"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    {
        builder = builder.proxy(reqwest::Proxy::http(&proxy).with_context(|| format!("HTTP_PROXY `{proxy}`"))?);
    }
    let resp = builder.build()?.get(target).bearer_auth(token).send().await?;
    let status = resp.status().as_u16();
    let request_id = resp.headers().get("x-runnel-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    Ok(json!({"status": status, "requestId": request_id, "body": body}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_segments_decode() {
        assert_eq!(base64url_decode("eyJhIjoxfQ").as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(base64url_decode("_-8").as_deref(), Some(&[0xff, 0xef][..]));
        assert_eq!(base64url_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert!(base64url_decode("a").is_none());
        assert!(base64url_decode("a+b/").is_none());
    }

    #[test]
    fn the_caller_is_named_from_the_token_without_its_signature() {
        let mut headers = HeaderMap::new();
        // {"alg":"RS256"} . {"email":"caller@p.iam.gserviceaccount.com"} . (signature removed)
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJlbWFpbCI6ImNhbGxlckBwLmlhbS5nc2VydmljZWFjY291bnQuY29tIn0";
        headers.insert(axum::http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        assert_eq!(caller_email(&headers).as_deref(), Some("caller@p.iam.gserviceaccount.com"));
        assert_eq!(caller_email(&HeaderMap::new()), None);
    }
}
