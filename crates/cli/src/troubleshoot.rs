//! `runnel troubleshoot`: why a call is refused, and what would change it.
//!
//! `call` asks the daemon to evaluate a call that has not been made (or that the user wants
//! explained step by step); `request` explains one that was refused, by the id in the refused
//! response's `X-Runnel-Request-Id` header. Both print the daemon's answer: the daemon evaluates
//! with the objects its data path uses (see `explain.rs`), so the CLI only renders.

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum TroubleshootCmd {
    /// Evaluate a call from a service to a URL: egress, ingress, token and invoker check, with the verdict.
    #[command(after_help = "Examples:\n  \
        runnel troubleshoot call --from=caller --to=http://receiver-NUMBER.local1.run.localhost:7781\n  \
        runnel troubleshoot call --from=caller --to=receiver --as=caller@PROJECT.iam.gserviceaccount.com\n  \
        runnel troubleshoot call --from=caller --to=receiver --audience=http://receiver-NUMBER.local1.run.localhost:7781/api\n  \
        runnel troubleshoot call --from=caller --to=receiver --format=json")]
    Call(CallArgs),
    /// Explain a refused request by its id (the `X-Runnel-Request-Id` of the response, or `runnel logs --denied`).
    #[command(after_help = "Examples:\n  \
        runnel troubleshoot request 5f0c2a9e61b84d7f\n  \
        runnel troubleshoot request 5f0c2a9e61b84d7f --format=json")]
    Request {
        /// The request id.
        request_id: String,
    },
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The calling service (in --region).
    #[arg(long)]
    pub from: String,
    /// The receiver's URL, or the name of a service in the same region.
    #[arg(long)]
    pub to: String,
    /// Evaluate as if the caller ran as this service account (email).
    #[arg(long = "as", value_name = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The path of the call [default: the URL's path, else /].
    #[arg(long)]
    pub path: Option<String>,
    /// The audience the caller asks its metadata server for [default: the --to URL, as the guide's code does].
    #[arg(long)]
    pub audience: Option<String>,
    /// Which credential the caller sends.
    #[arg(long, value_enum, default_value = "id")]
    pub token: TokenFlag,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenFlag {
    /// An ID token from the metadata server (`identity?audience=…`).
    Id,
    /// An access token from the metadata server (`token`): a common mistake.
    Access,
    /// No token.
    None,
}

pub async fn troubleshoot(client: &Client, format: Format, cmd: TroubleshootCmd) -> Result<()> {
    match cmd {
        TroubleshootCmd::Call(a) => {
            let token = match a.token {
                TokenFlag::Id => "id",
                TokenFlag::Access => "access",
                TokenFlag::None => "none",
            };
            let mut body = json!({ "from": a.from, "to": a.to, "token": token });
            if let Some(sa) = a.service_account {
                body["serviceAccount"] = json!(crate::run::account_email(client, &sa));
            }
            if let Some(p) = a.path {
                body["path"] = json!(p);
            }
            if let Some(aud) = a.audience {
                body["audience"] = json!(aud);
            }
            let path = format!("/runnel/v1/projects/{}/locations/{}/troubleshoot/call", client.project, client.region);
            let answer = client.post(&path, &body).await?;
            if format != Format::Table {
                return output::print_value(format, &answer);
            }
            print_call(&answer);
            Ok(())
        }
        TroubleshootCmd::Request { request_id } => {
            let path = format!("/runnel/v1/projects/{}/troubleshoot/requests/{}", client.project, request_id.trim());
            let answer = client.get(&path).await?;
            if format != Format::Table {
                return output::print_value(format, &answer);
            }
            print_request(&answer);
            Ok(())
        }
    }
}

fn lines(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// The call's trace as people read it: one block per step, then the verdict and the fixes.
fn print_call(answer: &Value) {
    let call = &answer["call"];
    println!(
        "Call from service `{}` (revision `{}`, as {}) to {} (path {})",
        output::s(&call["from"]["service"]),
        output::s(&call["from"]["revision"]),
        output::s(&call["from"]["serviceAccount"]),
        output::s(&call["to"]),
        output::s(&call["path"]),
    );
    for (i, step) in answer["steps"].as_array().into_iter().flatten().enumerate() {
        let outcome = match (step["allowed"].as_bool(), step["reason"].as_str()) {
            (Some(true), Some(r)) => format!("pass  {r}"),
            (Some(false), Some(r)) => format!("FAIL  {r}"),
            (Some(false), None) => "FAIL".to_string(),
            _ => String::new(),
        };
        println!("{}. {:<8} {outcome}", i + 1, output::s(&step["stage"]));
        for line in lines(&step["trace"]) {
            println!("     {line}");
        }
    }
    print_verdict(&answer["verdict"]);
    print_fixes(&answer["fixes"]);
}

fn print_verdict(v: &Value) {
    let status = v["status"].as_u64().map_or_else(|| "no response".to_string(), |s| s.to_string());
    println!(
        "Verdict: {status} {} ({} stage): {}",
        output::s(&v["reason"]),
        output::s(&v["stage"]),
        output::s(&v["summary"])
    );
}

fn print_fixes(fixes: &Value) {
    let fixes: Vec<&str> = lines(fixes).collect();
    if fixes.is_empty() {
        return;
    }
    println!("To change it:");
    for f in fixes {
        println!("  - {f}");
    }
}

fn print_request(answer: &Value) {
    let r = &answer["refusal"];
    println!(
        "Request {} was refused at {} by the {} check: {}",
        output::s(&r["requestId"]),
        output::s(&r["timestamp"]),
        output::s(&r["stage"]),
        output::s(&r["reason"]),
    );
    println!("  target: {}", output::s(&r["target"]));
    println!("  origin: {}", output::s(&r["origin"]));
    if let Some(c) = r["caller"].as_str() {
        println!("  caller: {c}");
    }
    println!("Why:");
    for line in lines(&r["trace"]) {
        println!("  {line}");
    }
    print_fixes(&answer["fixes"]);
    let now = &answer["now"];
    if now.is_object() {
        println!("The same call now (with an ID token for the service's URL):");
        print_verdict(&now["verdict"]);
    }
    println!("See docs/troubleshooting.md for every reason.");
}
