//! The guide's steps, as the demo walks them: for each, the `runnel` commands a user would type
//! (run as the CLI, against the demo's daemon), then one call from the caller to the receiver,
//! printed with its status, the reason the daemon logged for its request id, and why.
//!
//! What is printed comes from what happened, never from what was expected: a step whose call
//! gets another answer than the guide leads to is marked UNEXPECTED with the daemon's own trace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::place::DemoDir;
use crate::client::{Client, Target};
use crate::home::{self, DaemonInfo};
use crate::output::s;

/// How the walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every step got the answer the guide leads to.
    Walked,
    /// At least one step got another answer.
    Unexpected,
    /// The user stopped the demo.
    Interrupted,
}

const STEPS: usize = 5;
const CONNECTOR_RANGE: &str = "10.8.0.0/28";
/// Lines of a command's output worth showing: gcloud's one-line results, not whole policies.
const RESULT_LINES: &[&str] = &["Service [", "Service URL:", "Created", "Updated", "Deleted"];

/// What one call got.
struct Outcome {
    status: u16,
    request_id: Option<String>,
    body: Value,
    error: Option<String>,
}

/// A refusal, as the daemon logged it.
struct Refusal {
    reason: String,
    trace: Vec<String>,
}

struct Walk<'a> {
    dir: &'a DemoDir,
    /// This executable, to run each step's commands as the CLI.
    runnel: PathBuf,
    client: Client,
    frontend: SocketAddr,
    unexpected: bool,
}

pub async fn walk(dir: &DemoDir, log: Option<&Path>) -> Result<Ending> {
    let info = daemon_info(&dir.home).await?;
    let frontend: SocketAddr = info
        .frontend
        .as_deref()
        .and_then(|f| f.trim_start_matches("http://").parse().ok())
        .ok_or_else(|| anyhow!("the demo's daemon runs no frontend"))?;
    let client = Client::connect(Target {
        home: dir.home.clone(),
        api_url: Some(info.api.clone()),
        credential_file: Some(dir.home.join(home::OWNER_CREDENTIAL)),
        project: Some(info.project.clone()),
        region: Some(info.region.clone()),
    })?;
    let runnel = std::env::current_exe().context("cannot find the runnel executable to run the steps with")?;
    introduce(dir, &info, &runnel, log);
    let mut w = Walk { dir, runnel, client, frontend, unexpected: false };
    w.steps().await?;
    w.explore().await?;
    Ok(if w.unexpected { Ending::Unexpected } else { Ending::Walked })
}

/// Waits for the daemon to say where it listens (it writes `daemon.json` once it serves).
async fn daemon_info(home: &Path) -> Result<DaemonInfo> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(info) = home::read_daemon(home) {
            return Ok(info);
        }
        if Instant::now() > deadline {
            bail!("the demo's daemon did not start serving within 60 seconds");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn introduce(dir: &DemoDir, info: &DaemonInfo, runnel: &Path, log: Option<&Path>) {
    println!("runnel demo: the guide \"internal-only traffic between services\", step by step.");
    println!();
    println!("A fresh runnel is running for this demo (project {}, region {}):", info.project, info.region);
    println!("  api:       {}", info.api);
    println!("  frontend:  {}", info.frontend.as_deref().unwrap_or("-"));
    println!("  state:     {}", dir.home.display());
    if let Some(log) = log {
        println!("  its log:   {}", log.display());
    }
    println!("Two example apps ship inside runnel and run as real instances, each in its sandbox:");
    println!("  receiver   answers with its name and who called it (from the ID token);");
    println!("  caller     on GET /call, gets an ID token for the receiver's URL from its metadata server");
    println!("             and calls the receiver through its egress proxy (HTTP_PROXY).");
    println!("They run {} (a copy every instance may read).", dir.app_exe.display());
    println!("Each step shows the commands you would type (`runnel` is {}),", runnel.display());
    println!("with RUNNEL_HOME={}, then what a call from caller to receiver gets.", dir.home.display());
}

impl Walk<'_> {
    async fn steps(&mut self) -> Result<()> {
        let exe = self.dir.app_exe.display().to_string();

        heading(1, "both services deployed, the receiver public");
        self.run(&[
            "run",
            "deploy",
            "receiver",
            &format!("--command={exe}"),
            "--args=__demo-app,receiver",
            "--allow-unauthenticated",
        ])
        .await?;
        let receiver = self.url("receiver").await?;
        self.run(&[
            "run",
            "deploy",
            "caller",
            &format!("--command={exe}"),
            "--args=__demo-app,caller",
            &format!("--set-env-vars=TARGET_URL={receiver}"),
            "--allow-unauthenticated",
        ])
        .await?;
        let caller = self.url("caller").await?;
        let first = self.call(&caller).await?;
        let default_account = first.body["body"]["caller"].as_str().map(str::to_string);
        self.report(
            &first,
            200,
            None,
            "the receiver accepts traffic from anywhere (--ingress=all) and allUsers holds roles/run.invoker on it (--allow-unauthenticated), so every call gets in, the caller's included.",
        )
        .await?;

        heading(2, "the receiver accepts internal traffic only");
        self.run(&["run", "services", "update", "receiver", "--ingress=internal"]).await?;
        self.run(&[
            "run",
            "services",
            "remove-iam-policy-binding",
            "receiver",
            "--member=allUsers",
            "--role=roles/run.invoker",
        ])
        .await?;
        let outcome = self.call(&caller).await?;
        self.report(
            &outcome,
            404,
            Some("ingress.internal_only.from_internet"),
            "the caller has no VPC access, so its call to the receiver's URL left directly and arrived from the internet; an internal-only service refuses that at ingress with a bare 404, and the receiver never sees the request.",
        )
        .await?;

        heading(3, "a VPC network, a connector, and the caller on it with --vpc-egress=private-ranges-only");
        self.run(&["compute", "networks", "create", "vpc"]).await?;
        let region = format!("--region={}", self.client.region);
        let range = format!("--range={CONNECTOR_RANGE}");
        self.run(&[
            "compute",
            "networks",
            "vpc-access",
            "connectors",
            "create",
            "conn",
            &region,
            "--network=vpc",
            &range,
        ])
        .await?;
        self.run(&["run", "services", "update", "caller", "--vpc-connector=conn", "--vpc-egress=private-ranges-only"])
            .await?;
        let outcome = self.call(&caller).await?;
        self.report(
            &outcome,
            404,
            Some("egress.private_ranges_only.service_url_left_directly"),
            "with private-ranges-only only requests to private addresses (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10) go through the connector; a service URL is a public name, so the call still left directly and was refused at ingress. This is the trap most people fall into.",
        )
        .await?;

        heading(4, "--vpc-egress=all-traffic");
        self.run(&["run", "services", "update", "caller", "--vpc-egress=all-traffic"]).await?;
        let outcome = self.call(&caller).await?;
        let account = default_account.unwrap_or_else(|| "the default compute service account".into());
        self.report(
            &outcome,
            403,
            Some("iam.no_binding"),
            &format!(
                "all its traffic now goes through the VPC, so the call is internal and passes ingress; but the caller runs as the default compute service account ({account}), which holds no roles/run.invoker on the receiver, so its ID token is refused with 403."
            ),
        )
        .await?;

        heading(5, "a service account for the caller, granted Cloud Run Invoker on the receiver");
        let email = format!("caller@{}.iam.gserviceaccount.com", self.client.project);
        self.run(&["iam", "service-accounts", "create", "caller"]).await?;
        self.run(&[
            "run",
            "services",
            "add-iam-policy-binding",
            "receiver",
            &format!("--member=serviceAccount:{email}"),
            "--role=roles/run.invoker",
        ])
        .await?;
        self.run(&["run", "services", "update", "caller", &format!("--service-account={email}")]).await?;
        let outcome = self.call(&caller).await?;
        self.report(
            &outcome,
            200,
            None,
            &format!(
                "the caller runs as {email}; its metadata server minted an ID token for that account with the receiver's URL as audience, the frontend verified it and found Cloud Run Invoker on the receiver, and let the internal call through."
            ),
        )
        .await?;

        println!();
        println!("And from this machine (not a service, not in the VPC):");
        println!("  $ curl {receiver}/");
        let from_host = self.get_from_host(&receiver).await?;
        self.report(
            &from_host,
            404,
            Some("ingress.internal_only.from_internet"),
            "a request that reaches the frontend's listener comes from the internet, whatever its headers say; the receiver accepts internal traffic only.",
        )
        .await?;
        Ok(())
    }

    /// How to look around while the demo keeps running.
    async fn explore(&self) -> Result<()> {
        let caller = self.url("caller").await?;
        println!();
        println!("Explore from another terminal:");
        println!("  export RUNNEL_HOME={}", self.dir.home.display());
        println!("  runnel run services list");
        println!("  runnel logs --denied                                # each refusal above, with its reason");
        println!("  runnel troubleshoot request REQUEST_ID              # one of them explained, with its fix");
        println!(
            "  runnel troubleshoot call --from=caller --to=receiver --as=SERVICE_ACCOUNT   # a call, step by step"
        );
        println!("  runnel run services logs read receiver --requests   # what reached the receiver");
        println!("  curl {caller}/call        # the caller calls the receiver");
        Ok(())
    }

    /// Prints a command as a user would type it, then runs it as the CLI does.
    async fn run(&self, args: &[&str]) -> Result<()> {
        let shown: Vec<String> = args.iter().map(|a| shell_word(a)).collect();
        println!("  $ runnel {}", shown.join(" "));
        let out = tokio::process::Command::new(&self.runnel)
            .args(args)
            .env("RUNNEL_HOME", &self.dir.home)
            // The user's own settings must not send a step to another daemon or project.
            .env_remove("RUNNEL_CREDENTIAL")
            .env_remove("RUNNEL_API_URL")
            .env_remove("RUNNEL_PROJECT")
            .env_remove("RUNNEL_REGION")
            // A new service runs from where it was deployed: a directory every instance may read.
            .current_dir(&self.dir.root)
            .stdin(std::process::Stdio::null())
            // Ctrl-C in the middle of a step ends the step too.
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.runnel.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("the step `runnel {}` failed: {}", shown.join(" "), stderr.trim());
        }
        for line in stderr.lines().chain(stdout.lines()) {
            if RESULT_LINES.iter().any(|p| line.starts_with(p)) {
                println!("      {line}");
            }
        }
        Ok(())
    }

    async fn url(&self, service: &str) -> Result<String> {
        let path = format!("{}/services/{service}", self.client.run_parent(&self.client.region));
        let svc = self.client.get(&path).await?;
        let uri = s(&svc["uri"]);
        if uri.is_empty() {
            bail!("service `{service}` has no URL yet");
        }
        Ok(uri)
    }

    /// An HTTP client that reaches `url`'s host at the frontend (service hosts need no DNS).
    fn http_for(&self, url: &str) -> Result<reqwest::Client> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
        let host = parsed.host_str().ok_or_else(|| anyhow!("`{url}` has no host"))?;
        reqwest::Client::builder()
            .no_proxy()
            .resolve(host, self.frontend)
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build an HTTP client")
    }

    /// Has the caller call the receiver (`GET /call` on the caller, which is public).
    async fn call(&self, caller: &str) -> Result<Outcome> {
        let url = format!("{caller}/call");
        println!("  caller → receiver:");
        let resp =
            self.http_for(&url)?.get(&url).send().await.with_context(|| format!("cannot reach the caller at {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() || v.is_null() {
            bail!("the caller itself answered {status}: {}", text.trim());
        }
        Ok(Outcome {
            status: u16::try_from(v["status"].as_u64().unwrap_or(0)).unwrap_or(0),
            request_id: v["requestId"].as_str().map(str::to_string),
            body: v.clone(),
            error: v["error"].as_str().map(str::to_string),
        })
    }

    /// A plain request from this machine to the frontend.
    async fn get_from_host(&self, url: &str) -> Result<Outcome> {
        let resp = self.http_for(url)?.get(url).send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status().as_u16();
        let request_id = resp.headers().get("x-runnel-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Outcome { status, request_id, body: serde_json::json!({ "body": body }), error: None })
    }

    /// The refusal the daemon logged for a request id (it is written as the response goes out).
    async fn refusal(&self, request_id: &str) -> Result<Option<Refusal>> {
        let path = format!("/runnel/v1/projects/{}/refusals?limit=200", self.client.project);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.client.get(&path).await?;
            let found = v["entries"].as_array().and_then(|e| e.iter().rev().find(|e| e["requestId"] == request_id));
            if let Some(e) = found {
                let trace = e["trace"].as_array().map(|t| t.iter().map(s).collect()).unwrap_or_default();
                return Ok(Some(Refusal { reason: s(&e["reason"]), trace }));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints what a call got, the logged reason and why; marks it if it is not what the guide
    /// leads to.
    async fn report(&mut self, o: &Outcome, status: u16, reason: Option<&str>, why: &str) -> Result<()> {
        if let Some(e) = &o.error {
            println!("    no answer: {e}");
            println!("    UNEXPECTED: the guide leads to {status} here");
            self.unexpected = true;
            return Ok(());
        }
        let refusal = match (&o.request_id, o.status) {
            (Some(id), 400..) => self.refusal(id).await?,
            _ => None,
        };
        let id = o.request_id.as_deref().unwrap_or("-");
        match &refusal {
            Some(r) => println!("    {} {}, reason {} (request {id})", o.status, status_text(o.status), r.reason),
            None if o.status < 400 => {
                let said = &o.body["body"];
                let who = said["caller"].as_str().unwrap_or("nobody it could name");
                println!("    {} {}: \"{}\", called by {who}", o.status, status_text(o.status), s(&said["message"]));
            }
            None => println!("    {} {} (request {id}; no refusal logged for it)", o.status, status_text(o.status)),
        }
        let got_reason = refusal.as_ref().map(|r| r.reason.as_str());
        if o.status == status && got_reason == reason {
            println!("    why: {why}");
        } else {
            self.unexpected = true;
            let wanted = match reason {
                Some(r) => format!("{status} {r}"),
                None => status.to_string(),
            };
            println!("    UNEXPECTED: the guide leads to {wanted} here");
            if let Some(r) = &refusal {
                for line in &r.trace {
                    println!("      {line}");
                }
            }
        }
        Ok(())
    }
}

fn heading(n: usize, title: &str) {
    println!();
    println!("Step {n} of {STEPS}: {title}");
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "",
    }
}

/// A word as a POSIX shell reads it back unchanged: as is when it is plain, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_printed_so_a_shell_reads_them_back() {
        assert_eq!(
            shell_word("--member=serviceAccount:caller@p.iam.gserviceaccount.com"),
            "--member=serviceAccount:caller@p.iam.gserviceaccount.com"
        );
        assert_eq!(shell_word("--display-name=Calling service"), "'--display-name=Calling service'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
