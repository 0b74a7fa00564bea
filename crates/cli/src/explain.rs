//! The troubleshooter: what a call from one service to a URL gets, and why, step by step.
//!
//! Cloud Run users' most common question is "why is my call refused?", and the honest answer
//! depends on four decisions made in four places: the caller's egress route, the receiver's
//! ingress, the token the caller's metadata server hands out, and the invoker check. This module
//! asks each of them the question with the **same objects the data path uses** — the instance's
//! egress planner ([`InstancePlanner::decide`]), the frontend's route table, the pure
//! `ingress::check`, the minter behind every metadata server, and the route's own invoker check —
//! so its verdict is the live request's verdict, not a second opinion that could drift.
//!
//! The token is minted for real (it is the one the metadata server would hand out, and it goes
//! into the same cache) but never leaves this module: answers carry its claims, not the token.

use std::sync::{Arc, Weak};

use runnel_api::{ApiError, ApiResult, CallQuestion, ControlPlane, TokenChoice};
use runnel_gateway::{InvokerCheck, Router};
use runnel_policy::Reason;
use runnel_runtime::launch::RevisionKey;
use serde::Serialize;
use serde_json::{Value, json};

use crate::node::{EgressDecision, InstancePlanner, Logs, Routes};

/// The daemon's troubleshooter, installed into the control plane once the node exists.
pub struct Explainer {
    /// Weak: the control plane owns this explainer, and a strong reference back would be a cycle.
    pub cp: Weak<ControlPlane>,
    pub routes: Arc<Routes>,
    pub log: Arc<Logs>,
    pub minter: Arc<runnel_identity::Minter>,
    pub own_listeners: Vec<std::net::IpAddr>,
}

/// One decision along the call's path.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    /// `caller`, `egress`, `route`, `ingress`, `token`, `invoker`.
    stage: &'static str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    trace: Vec<String>,
}

impl Step {
    fn fact(stage: &'static str, trace: Vec<String>) -> Self {
        Step { stage, allowed: true, reason: None, trace }
    }

    fn decision(stage: &'static str, d: &runnel_policy::Decision) -> Self {
        Step { stage, allowed: d.allowed, reason: Some(d.reason.to_string()), trace: d.trace.clone() }
    }
}

/// What the call gets in the end: the status the caller's HTTP client sees and why.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    /// The HTTP status the caller sees; `None` when the call never gets a response from runnel
    /// (the caller cannot even get a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    reason: String,
    /// The stage that decided.
    stage: &'static str,
    summary: String,
}

/// A URL split the way the egress proxy sees an absolute-form request.
struct Target {
    url: String,
    host: String,
    port: u16,
    path: String,
}

fn parse_target(cp: &ControlPlane, region: &str, to: &str, path: Option<&str>) -> ApiResult<Target> {
    let to = to.trim();
    // A bare service name is taken as that service's URL in the same region.
    let url = if to.contains("://") { to.to_string() } else { cp.service_url(region, to) };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ApiError::invalid(format!("`{to}` is not a URL")));
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        other => {
            return Err(ApiError::invalid(format!(
                "`{url}` has scheme `{other}`; a call goes to an `http://` or `https://` URL"
            )));
        }
    };
    let (authority, own_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) => return Err(ApiError::invalid(format!("`{url}` has an invalid port `{p}`"))),
        },
        _ => (authority, default_port),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(ApiError::invalid(format!("`{url}` has no host")));
    }
    let path = path.map(str::to_string).unwrap_or_else(|| own_path.split('?').next().unwrap_or("/").to_string());
    let path = if path.starts_with('/') { path } else { format!("/{path}") };
    Ok(Target { url, host, port, path })
}

/// The lines of a trace that say how to change the outcome.
fn fixes(trace: &[String]) -> Vec<String> {
    trace
        .iter()
        .filter_map(|line| line.split_once("fix: ").map(|(_, fix)| fix.trim_end_matches('.').to_string()))
        .collect()
}

/// A decoded, unverified view of a token's claims, for the answer (never the token itself).
fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|c| json!({ "aud": c["aud"], "email": c["email"], "sub": c["sub"], "iss": c["iss"] }))
        .unwrap_or(Value::Null)
}

impl Explainer {
    fn cp(&self) -> ApiResult<Arc<ControlPlane>> {
        self.cp.upgrade().ok_or_else(|| ApiError::failed_precondition("runnel is stopping"))
    }

    fn evaluate(&self, region: &str, q: &CallQuestion) -> ApiResult<Value> {
        let cp = self.cp()?;
        let target = parse_target(&cp, region, &q.to, q.path.as_deref())?;
        let mut steps = Vec::new();

        // 1. The caller: the revision that serves it now, and the account its tokens are for.
        let from_host = cp.service_host(region, &q.from);
        let Some(from_route) = self.routes.route(&from_host) else {
            return Err(match cp.invoker_facts(region, &q.from)? {
                None => ApiError::not_found(format!(
                    "service `{}` does not exist in region `{region}`; `runnel run services list --region={region}` lists them",
                    q.from
                )),
                Some(_) => ApiError::failed_precondition(format!(
                    "service `{}` has no serving revision, so it makes no calls; deploy it, then ask again",
                    q.from
                )),
            });
        };
        let key =
            RevisionKey { region: region.to_string(), service: q.from.clone(), revision: from_route.revision.clone() };
        let revision = cp.revision(region, &q.from, &from_route.revision)?;
        let revision_account = revision.map(|r| r.service_account).unwrap_or_default();
        let email = q.service_account.clone().unwrap_or_else(|| revision_account.clone());
        let mut caller_trace = vec![format!(
            "service `{}` serves revision `{}`, which runs as `{revision_account}`",
            q.from, from_route.revision
        )];
        if q.service_account.is_some() {
            caller_trace.push(format!("evaluated as if it ran as `{email}` (--as)"));
        }
        steps.push(Step::fact("caller", caller_trace));
        let call = json!({
            "from": { "service": q.from, "region": region, "revision": from_route.revision, "serviceAccount": email },
            "to": target.url,
            "path": target.path,
        });

        // 2. Egress: the caller's egress proxy decides how the call leaves.
        let planner = InstancePlanner {
            log: self.log.clone(),
            cp: cp.clone(),
            routes: self.routes.clone(),
            own_listeners: self.own_listeners.clone(),
            key,
            instance: "troubleshooter".to_string(),
        };
        let EgressDecision { route, destination, target: connect_to } =
            planner.decide(&target.host, target.port).map_err(ApiError::failed_precondition)?;
        steps.push(Step::decision("egress", route.decision()));
        if !route.allowed() {
            let verdict = Verdict {
                status: Some(403),
                reason: route.reason().to_string(),
                stage: "egress",
                summary: "the caller's egress proxy refuses the call (403); it never leaves the caller".to_string(),
            };
            return Ok(answer(call, steps, verdict));
        }
        let Some(origin) = route.origin().cloned() else {
            return Err(ApiError::internal("an allowed egress route without an origin"));
        };
        if !matches!(destination, runnel_policy::egress::Destination::ServiceUrl { .. }) {
            let verdict = Verdict {
                status: None,
                reason: route.reason().to_string(),
                stage: "egress",
                summary: match connect_to {
                    Some(a) => format!(
                        "the egress proxy connects the call to {a}; that is not a runnel service, so nothing more is checked"
                    ),
                    None => "the destination is not a runnel service and nothing listens there".to_string(),
                },
            };
            return Ok(answer(call, steps, verdict));
        }

        // 3. The frontend's route for the host, then ingress, exactly as the frontend runs them.
        let Some(receiver) = self.routes.route(&target.host) else {
            // Only if the service went away between the two lookups: the next call's egress
            // proxy would find the name unknown.
            steps.push(Step::fact("route", vec![format!("no service serves `{}` any more", target.host)]));
            let verdict = Verdict {
                status: Some(403),
                reason: Reason::EgressUnresolvable.to_string(),
                stage: "route",
                summary: "no service answers at this host".to_string(),
            };
            return Ok(answer(call, steps, verdict));
        };
        steps.push(Step::fact(
            "route",
            vec![format!(
                "`{}` is service `{}` in region `{}`, serving revision `{}`",
                target.host, receiver.service, receiver.region, receiver.revision
            )],
        ));
        let mut ingress =
            runnel_policy::ingress::check(receiver.ingress, receiver.default_uri_disabled, &receiver.project, &origin);
        if !ingress.allowed {
            // The trace says which flag to change; with both services known, say the command.
            let (caller, receiver, region) = (&q.from, &receiver.service, &receiver.region);
            match ingress.reason {
                Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly => ingress.trace.push(format!(
                    "fix: `runnel run services update {caller} --region={region} --vpc-egress=all-traffic`"
                )),
                Reason::IngressInternalOnlyFromInternet => ingress.trace.push(format!(
                    "fix: `runnel run services update {caller} --region={region} --vpc-connector=CONNECTOR --vpc-egress=all-traffic` \
                     (`runnel compute networks vpc-access connectors list --region={region}` lists the connectors)"
                )),
                Reason::IngressDefaultUrlDisabled => ingress
                    .trace
                    .push(format!("fix: `runnel run services update {receiver} --region={region} --default-url`")),
                _ => {}
            }
        }
        steps.push(Step::decision("ingress", &ingress));
        if !ingress.allowed {
            let verdict = Verdict {
                status: Some(404),
                reason: ingress.reason.to_string(),
                stage: "ingress",
                summary: "the receiver's ingress refuses the call with 404; the receiver never sees it".to_string(),
            };
            return Ok(answer(call, steps, verdict));
        }

        // 4. The token the caller's metadata server hands out.
        let audience = q.audience.clone().unwrap_or_else(|| target.url.clone());
        let (token, token_step, no_token_verdict) = self.token(&cp, &email, &audience, q.token)?;
        steps.push(token_step);
        if let Some(verdict) = no_token_verdict {
            return Ok(answer(call, steps, verdict));
        }

        // 5. The invoker check the route itself runs, on the headers the caller would send.
        let mut headers = hyper::HeaderMap::new();
        if let Some(token) = &token
            && let Ok(v) = hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(hyper::header::AUTHORIZATION, v);
        }
        let (step, verdict) = match receiver.invoker.check(&receiver, &headers) {
            InvokerCheck::Allow { reason, .. } => (
                Step { stage: "invoker", allowed: true, reason: Some(reason.to_string()), trace: admitted(reason) },
                Verdict {
                    status: Some(200),
                    reason: reason.to_string(),
                    stage: "invoker",
                    summary: format!(
                        "the call reaches revision `{}` of `{}`; what it answers is up to the receiver",
                        receiver.revision, receiver.service
                    ),
                },
            ),
            InvokerCheck::Deny { status, decision } => (
                Step::decision("invoker", &decision),
                Verdict {
                    status: Some(status),
                    reason: decision.reason.to_string(),
                    stage: "invoker",
                    summary: format!("the receiver's invoker check refuses the call with {status}"),
                },
            ),
        };
        steps.push(step);
        Ok(answer(call, steps, verdict))
    }

    /// The token step: what the metadata server would hand the caller for this audience.
    fn token(
        &self,
        cp: &ControlPlane,
        email: &str,
        audience: &str,
        choice: TokenChoice,
    ) -> ApiResult<(Option<String>, Step, Option<Verdict>)> {
        if choice == TokenChoice::None {
            let step = Step::fact("token", vec!["the caller sends no token (--token=none)".to_string()]);
            return Ok((None, step, None));
        }
        let now = runnel_identity::unix_now();
        let Some(account) = cp.account_by_email(email)? else {
            let step = Step {
                stage: "token",
                allowed: false,
                reason: Some(Reason::PrincipalDeleted.to_string()),
                trace: vec![
                    format!(
                        "service account `{email}` does not exist, so the metadata server answers 404 and the caller gets no token"
                    ),
                    format!(
                        "fix: `runnel iam service-accounts create {}`, or deploy the caller with an existing `--service-account`",
                        account_id(email)
                    ),
                ],
            };
            let verdict = Verdict {
                status: None,
                reason: Reason::PrincipalDeleted.to_string(),
                stage: "token",
                summary: "the caller cannot get a token, so its client fails before it calls".to_string(),
            };
            return Ok((None, step, Some(verdict)));
        };
        let who = runnel_identity::Account { unique_id: account.unique_id.clone(), email: account.email.clone() };
        let mut trace = Vec::new();
        if account.disabled {
            trace.push(format!(
                "service account `{email}` is disabled: the metadata server refuses it new tokens (403); a token it \
                 fetched before is still sent, and the receiver checks the account as it is now"
            ));
        }
        let token = match choice {
            TokenChoice::Access => {
                trace.push(format!(
                    "the caller sends an access token for `{email}` (from the metadata server's `token` endpoint), not an ID token"
                ));
                // Access tokens are told apart by their shape alone, so a stand-in of that shape
                // gets the same decision; minting a real one would leave a live API credential.
                format!("{}troubleshooter-stand-in", runnel_identity::ACCESS_TOKEN_PREFIX)
            }
            _ => {
                let t = self
                    .minter
                    .id_token(&who, audience, runnel_identity::Format::Standard, now)
                    .map_err(|e| ApiError::invalid(format!("the metadata server would refuse this audience: {e}")))?;
                trace.push(format!("the caller sends an ID token for `{email}` with audience `{audience}`"));
                trace.push(format!("claims: {}", claims_of(&t.token)));
                t.token.to_string()
            }
        };
        Ok((Some(token), Step::fact("token", trace), None))
    }
}

fn admitted(reason: Reason) -> Vec<String> {
    vec![match reason {
        Reason::InvokerAllUsers => {
            "`allUsers` holds `run.routes.invoke` on the receiver: no token is needed".to_string()
        }
        Reason::InvokerCheckDisabled => "the receiver's invoker check is off (`--no-invoker-iam-check`)".to_string(),
        _ => "the token is valid for the receiver and its principal holds `run.routes.invoke`".to_string(),
    }]
}

fn account_id(email: &str) -> &str {
    email.split('@').next().unwrap_or(email)
}

fn answer(call: Value, steps: Vec<Step>, verdict: Verdict) -> Value {
    let fixes: Vec<String> = steps.iter().flat_map(|s| fixes(&s.trace)).collect();
    json!({ "call": call, "steps": steps, "verdict": verdict, "fixes": fixes })
}

/// Parses what a refusal record says about its caller: ``service `S` (revision `R`, region `G`)``
/// (ingress and invoker refusals) or ``service `S` (revision `R`)`` (egress refusals).
fn caller_of(text: &str) -> Option<(String, Option<String>)> {
    let mut ticks = text.split('`').skip(1).step_by(2);
    let service = ticks.next()?.to_string();
    let _revision = ticks.next();
    let region = ticks.next().map(str::to_string);
    Some((service, region))
}

impl runnel_api::Troubleshooter for Explainer {
    fn call(&self, region: &str, question: &CallQuestion) -> ApiResult<Value> {
        self.evaluate(region, question)
    }

    fn request(&self, refusal: &Value) -> ApiResult<Value> {
        let cp = self.cp()?;
        let trace: Vec<String> = refusal["trace"]
            .as_array()
            .map(|t| t.iter().filter_map(|l| l.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut answer = json!({
            "refusal": refusal,
            "fixes": fixes(&trace),
        });
        // The same call now, when the refused request came from a runnel service: whether what
        // changed since (a binding, an egress setting) already fixed it. The token the caller
        // really sent is not known (it is never logged), so this assumes an ID token for the URL.
        let target = refusal["target"].as_str().unwrap_or_default();
        if let Some((service, region)) = refusal["caller"].as_str().and_then(caller_of) {
            let region = region.unwrap_or_else(|| cp.default_region().to_string());
            let to = match target.split_once('/') {
                Some((target_region, name)) => cp.service_url(target_region, name),
                None => format!("http://{target}/"),
            };
            let question = CallQuestion {
                from: service,
                to,
                service_account: None,
                path: None,
                token: TokenChoice::Id,
                audience: None,
            };
            if let Ok(now) = self.evaluate(&region, &question) {
                answer["now"] = now;
            }
        }
        Ok(answer)
    }
}
