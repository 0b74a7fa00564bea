//! The guide's calling service, in Rust, with Google's own auth crate.
//!
//! Each `GET` to this service fetches an ID token for `RECEIVING_SERVICE_URL` with
//! `google_cloud_auth::credentials::idtoken::Builder` — Application Default Credentials, which on
//! Cloud Run (and inside a runnel instance) means the metadata server — and calls the receiver
//! with it as `Authorization: Bearer …`. Nothing here knows about runnel: the crate reads
//! `GCE_METADATA_HOST` (set by the platform) and reqwest sends the call through the egress proxy
//! announced in `HTTP_PROXY`, exactly as it would on Google Cloud without a proxy.
//!
//! The answer is what the call got, as JSON: `{"status", "body", "request_id"}` (the receiving
//! frontend's `X-Runnel-Request-Id`, so a refusal can be looked up with `runnel logs --denied`).
//! If no token could be had, the answer is 502 with the library's error.
//!
//! The HTTP server is deliberately tiny (one request per connection): the example is the client.

use google_cloud_auth::credentials::idtoken::{self, IDTokenCredentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head this service reads; it ignores everything but the method.
const MAX_HEAD: usize = 16 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = serve().await {
        eprintln!("the calling service stopped: {e}");
        std::process::exit(1);
    }
}

async fn serve() -> Result<(), String> {
    let receiver = std::env::var("RECEIVING_SERVICE_URL").map_err(
        |_| "RECEIVING_SERVICE_URL is not set: deploy with --set-env-vars=RECEIVING_SERVICE_URL=<the receiver's URL>",
    )?;
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    // One credential for the receiver's URL as audience: it caches the token until shortly
    // before it expires, as the other languages' clients do.
    let credentials = idtoken::Builder::new(receiver.as_str())
        .build()
        .map_err(|e| format!("cannot set up ID token credentials: {e}"))?;
    let client = reqwest::Client::new();
    let listener = TcpListener::bind(("0.0.0.0", port.parse::<u16>().map_err(|e| format!("PORT={port}: {e}"))?))
        .await
        .map_err(|e| format!("cannot listen on port {port}: {e}"))?;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (credentials, client, receiver) = (credentials.clone(), client.clone(), receiver.clone());
        tokio::spawn(async move {
            let _ = answer(stream, &credentials, &client, &receiver).await;
        });
    }
}

/// Serves one request on `stream`: any `GET` calls the receiver.
async fn answer(
    mut stream: TcpStream,
    credentials: &IDTokenCredentials,
    client: &reqwest::Client,
    receiver: &str,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let (status, body) = if head.starts_with("GET ") {
        match make_internal_request(credentials, client, receiver).await {
            Ok(seen) => (200, seen),
            Err(e) => {
                eprintln!("Error making internal request: {e}");
                (502, format!("the internal request failed: {e}\n"))
            }
        }
    } else {
        (405, "only GET is served here\n".to_string())
    };
    let kind = if status == 200 { "application/json" } else { "text/plain; charset=utf-8" };
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Error" },
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The guide's `make_internal_request`: an ID token for the receiver's URL, then the call.
/// A refusal by the receiver is an answer too (its status is in the JSON); only a failure to get
/// a token or to reach anything is an error.
async fn make_internal_request(
    credentials: &IDTokenCredentials,
    client: &reqwest::Client,
    receiver: &str,
) -> Result<String, String> {
    let token = credentials.id_token().await.map_err(|e| format!("no ID token for {receiver}: {e}"))?;
    let response =
        client.get(receiver).bearer_auth(token).send().await.map_err(|e| format!("cannot call {receiver}: {e}"))?;
    let status = response.status().as_u16();
    let request_id = response.headers().get("x-runnel-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = response.text().await.map_err(|e| format!("the answer of {receiver} was cut: {e}"))?;
    Ok(format!(
        "{{\"status\":{status},\"body\":{},\"request_id\":{}}}",
        json_string(&body),
        request_id.as_deref().map_or_else(|| "null".to_string(), json_string)
    ))
}

/// Reads up to the end of the request head; the service needs no body.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A JSON string literal, so the example needs no JSON library.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
