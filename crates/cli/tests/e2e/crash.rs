//! The kill -9 test: SIGKILL the daemon at random points in a stream of concurrent writes, many
//! times, and prove after every restart that each acknowledged write is there and that the
//! store is consistent.
//!
//! It talks HTTP to the API directly (as the CLI does, without a process per request), so each
//! round packs in as many writes as the store can commit. A write counts as acknowledged only
//! when its full 2xx answer arrived; a write in flight at the kill may or may not have landed,
//! and either is fine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Daemon, PROJECT, Sandbox};

const ROUNDS: usize = 15;
/// How long writes stream before the kill, in milliseconds.
const WRITE_WINDOW_MS: std::ops::Range<u64> = 20..300;
const MEMBER_WRITERS: usize = 2;

fn services_path() -> String {
    format!("/v2/projects/{PROJECT}/locations/local1/services")
}

fn accounts_path() -> String {
    format!("/v1/projects/{PROJECT}/serviceAccounts")
}

/// An answer, or the daemon went away mid-request.
enum Reply {
    Answer(StatusCode, Value),
    Gone,
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(daemon: &Daemon) -> Api {
        let http =
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().expect("an HTTP client");
        Api { http, base: daemon.api.clone(), token: daemon.owner_credential() }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let Ok(resp) = req.send().await else { return Reply::Gone };
        let status = resp.status();
        match resp.bytes().await {
            Ok(bytes) => Reply::Answer(status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
            Err(_) => Reply::Gone,
        }
    }

    /// A call to a daemon that must be up (verification).
    async fn must(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        match self.call(method.clone(), path, body).await {
            Reply::Answer(status, v) => (status, v),
            Reply::Gone => panic!("{method} {path}: the daemon did not answer"),
        }
    }

    async fn must_ok(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.must(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path} answered {status}: {v}");
        v
    }
}

/// The policy version an etag encodes: base64 of a big-endian u64.
fn etag_version(etag: &str) -> u64 {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: u128 = 0;
    let mut n = 0;
    for c in etag.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap_or_else(|| panic!("etag {etag:?} is not base64"));
        bits = (bits << 6) | v as u128;
        n += 6;
    }
    assert_eq!(n, 66, "etag {etag:?} does not encode eight bytes");
    u64::try_from(bits >> 2).unwrap_or_else(|_| panic!("etag {etag:?} is too long"))
}

fn invokers(policy: &Value) -> BTreeSet<String> {
    policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["role"] == "roles/run.invoker")
        .flat_map(|b| b["members"].as_array().into_iter().flatten())
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect()
}

fn short(name: &Value) -> String {
    name.as_str().and_then(|n| n.rsplit('/').next()).unwrap_or_default().to_string()
}

fn generation(service: &Value) -> u64 {
    match &service["generation"] {
        Value::String(s) => s.parse().unwrap_or_default(),
        v => v.as_u64().unwrap_or_default(),
    }
}

/// One acknowledged write.
#[derive(Debug)]
enum Ack {
    Account {
        email: String,
        unique_id: String,
    },
    ServiceCreated {
        name: String,
        revision: String,
    },
    ServiceDeleted {
        name: String,
    },
    /// Not an acknowledgement: a delete was in flight at the kill, so the service may be gone.
    ServiceMaybeDeleted {
        name: String,
    },
    Member {
        member: String,
        version: u64,
    },
    Revision {
        revision: String,
        generation: u64,
        args: String,
    },
}

/// What one writer saw in one round.
#[derive(Debug, Default)]
struct Report {
    acks: Vec<Ack>,
    /// Answers no write should get, such as a 500 or a conflict on a fresh name.
    unexpected: Vec<String>,
}

impl Report {
    /// Files an answer: `Some(body)` for 2xx; for other answers a note, and the writer stops.
    fn answer(&mut self, what: &str, reply: Reply) -> Option<Value> {
        match reply {
            Reply::Answer(s, v) if s.is_success() => Some(v),
            Reply::Answer(s, v) => {
                self.unexpected.push(format!("{what}: {s} {v}"));
                None
            }
            Reply::Gone => None,
        }
    }
}

/// Creates service accounts `acct-ROUND-N` until the daemon dies.
async fn account_writer(api: Api, round: usize) -> Report {
    let mut report = Report::default();
    for n in 0.. {
        let id = format!("acct-{round}-{n}");
        let reply = api.call(Method::POST, &accounts_path(), Some(&json!({ "accountId": id }))).await;
        let Some(a) = report.answer(&format!("create account {id}"), reply) else { break };
        let (email, unique_id) = (a["email"].as_str(), a["uniqueId"].as_str());
        match (email, unique_id) {
            (Some(e), Some(u)) => report.acks.push(Ack::Account { email: e.into(), unique_id: u.into() }),
            _ => report.unexpected.push(format!("account {id} created without email or unique id: {a}")),
        }
    }
    report
}

/// Creates services `s-ROUND-N`, deleting every third right after, until the daemon dies.
async fn service_writer(api: Api, round: usize) -> Report {
    let mut report = Report::default();
    let body = json!({ "template": { "containers": [{ "command": ["true"] }] } });
    for n in 0.. {
        let name = format!("s-{round}-{n}");
        let reply = api.call(Method::POST, &format!("{}?serviceId={name}", services_path()), Some(&body)).await;
        let Some(op) = report.answer(&format!("create service {name}"), reply) else { break };
        report
            .acks
            .push(Ack::ServiceCreated { name: name.clone(), revision: short(&op["response"]["latestReadyRevision"]) });
        if n % 3 == 2 {
            let reply = api.call(Method::DELETE, &format!("{}/{name}", services_path()), None).await;
            if report.answer(&format!("delete service {name}"), reply).is_none() {
                report.acks.push(Ack::ServiceMaybeDeleted { name });
                break;
            }
            report.acks.push(Ack::ServiceDeleted { name });
        }
    }
    report
}

/// Grants `roles/run.invoker` on `target` to a new user per write, by read-modify-write with
/// the etag, retrying when another writer got in between.
async fn member_writer(api: Api, round: usize, writer: usize) -> Report {
    let mut report = Report::default();
    let target = format!("{}/target", services_path());
    'members: for n in 0.. {
        let member = format!("user:m{writer}-{round}-{n}@example.com");
        loop {
            let reply = api.call(Method::POST, &format!("{target}:getIamPolicy"), Some(&json!({}))).await;
            let Some(mut policy) = report.answer("get the policy", reply) else { break 'members };
            let bindings = policy.as_object_mut().map(|o| o.entry("bindings").or_insert_with(|| json!([])));
            let Some(Value::Array(bindings)) = bindings else {
                report.unexpected.push("a policy without a bindings list".into());
                break 'members;
            };
            match bindings.iter_mut().find(|b| b["role"] == "roles/run.invoker") {
                Some(b) => {
                    if let Some(members) = b["members"].as_array_mut() {
                        members.push(json!(member));
                    }
                }
                None => bindings.push(json!({ "role": "roles/run.invoker", "members": [member] })),
            }
            match api.call(Method::POST, &format!("{target}:setIamPolicy"), Some(&json!({ "policy": policy }))).await {
                Reply::Answer(s, v) if s.is_success() => {
                    let version = etag_version(v["etag"].as_str().unwrap_or_default());
                    report.acks.push(Ack::Member { member: member.clone(), version });
                    break;
                }
                Reply::Answer(StatusCode::CONFLICT, v) if v["error"]["status"] == "ABORTED" => continue,
                other => {
                    let _ = report.answer(&format!("set the policy with {member}"), other);
                    break 'members;
                }
            }
        }
    }
    report
}

/// Deploys a new revision of `rolling` per write (a change of args), until the daemon dies.
async fn revision_writer(api: Api, round: usize) -> Report {
    let mut report = Report::default();
    let path = format!("{}/rolling", services_path());
    for n in 0.. {
        let args = format!("{round}-{n}");
        let Some(mut svc) = report.answer("get rolling", api.call(Method::GET, &path, None).await) else { break };
        svc["template"]["containers"][0]["args"] = json!([args]);
        let Some(op) =
            report.answer(&format!("deploy rolling {args}"), api.call(Method::PATCH, &path, Some(&svc)).await)
        else {
            break;
        };
        let s = &op["response"];
        report.acks.push(Ack::Revision { revision: short(&s["latestReadyRevision"]), generation: generation(s), args });
    }
    report
}

/// Every acknowledged write so far.
#[derive(Default)]
struct Ledger {
    project_number: String,
    /// email → unique id
    accounts: BTreeMap<String, String>,
    /// live service → its revision
    services: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
    members: BTreeSet<String>,
    policy_version: u64,
    /// revisions of `rolling` → their args
    revisions: BTreeMap<String, String>,
    /// `rolling`'s newest acknowledged generation and its args (none at creation)
    rolling: (u64, Option<String>),
    acks: usize,
}

impl Ledger {
    fn record(&mut self, report: Report) {
        self.acks += report.acks.iter().filter(|a| !matches!(a, Ack::ServiceMaybeDeleted { .. })).count();
        for ack in report.acks {
            match ack {
                Ack::Account { email, unique_id } => {
                    self.accounts.insert(email, unique_id);
                }
                Ack::ServiceCreated { name, revision } => {
                    self.services.insert(name, revision);
                }
                Ack::ServiceDeleted { name } => {
                    self.services.remove(&name);
                    self.deleted.insert(name);
                }
                Ack::ServiceMaybeDeleted { name } => {
                    self.services.remove(&name);
                }
                Ack::Member { member, version } => {
                    self.members.insert(member);
                    self.policy_version = self.policy_version.max(version);
                }
                Ack::Revision { revision, generation, args } => {
                    self.revisions.insert(revision, args.clone());
                    if generation > self.rolling.0 {
                        self.rolling = (generation, Some(args));
                    }
                }
            }
        }
    }
}

/// GETs every path, eight at a time, and returns the answers in the paths' order.
async fn get_all(api: &Api, paths: Vec<String>) -> Vec<(StatusCode, Value)> {
    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for (n, path) in paths.into_iter().enumerate() {
        let (api, limit) = (api.clone(), limit.clone());
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("the semaphore is never closed");
            let (status, v) = api.must(Method::GET, &path, None).await;
            (n, status, v)
        });
    }
    let mut answers = set.join_all().await;
    answers.sort_by_key(|(n, _, _)| *n);
    answers.into_iter().map(|(_, status, v)| (status, v)).collect()
}

/// Checks, on a freshly (re)started daemon, that every acknowledged write is there and that
/// what the store holds hangs together.
async fn verify(api: &Api, ledger: &Ledger, when: &str) {
    let project = api.must_ok(Method::GET, &format!("/v1/projects/{PROJECT}"), None).await;
    assert_eq!(project["projectNumber"], ledger.project_number.as_str(), "{when}: the project number changed");

    // Accounts: all there, with the unique id they were created with; ids distinct, 21 digits.
    let listed = api.must_ok(Method::GET, &accounts_path(), None).await;
    let accounts = listed["accounts"].as_array().unwrap_or_else(|| panic!("{when}: no accounts list in {listed}"));
    let mut by_email = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for a in accounts {
        let (email, uid) = (a["email"].as_str().unwrap_or_default(), a["uniqueId"].as_str().unwrap_or_default());
        assert!(uid.len() == 21 && uid.bytes().all(|b| b.is_ascii_digit()), "{when}: unique id {uid:?} of {email}");
        assert!(ids.insert(uid.to_string()), "{when}: unique id {uid} is held by two accounts");
        assert!(by_email.insert(email.to_string(), uid.to_string()).is_none(), "{when}: {email} is listed twice");
    }
    for (email, uid) in &ledger.accounts {
        assert_eq!(by_email.get(email), Some(uid), "{when}: acknowledged account {email} is missing or changed id");
    }
    let paths = ledger.accounts.keys().map(|email| format!("{}/{email}", accounts_path())).collect();
    for ((status, a), uid) in get_all(api, paths).await.iter().zip(ledger.accounts.values()) {
        assert_eq!((*status, a["uniqueId"].as_str()), (StatusCode::OK, Some(uid.as_str())), "{when}: {a}");
    }

    // Services: acknowledged ones there with their revision, acknowledged deletions gone.
    let listed = api.must_ok(Method::GET, &services_path(), None).await;
    let services = listed["services"].as_array().unwrap_or_else(|| panic!("{when}: no services list in {listed}"));
    let live: BTreeMap<String, String> =
        services.iter().map(|s| (short(&s["name"]), short(&s["latestReadyRevision"]))).collect();
    assert_eq!(live.len(), services.len(), "{when}: a service is listed twice");
    let mut paths = Vec::new();
    for (name, revision) in &ledger.services {
        assert_eq!(live.get(name), Some(revision), "{when}: acknowledged service {name} is missing or changed");
        paths.push(format!("{}/{name}", services_path()));
        paths.push(format!("{}/{name}/revisions/{revision}", services_path()));
    }
    for (status, v) in get_all(api, paths).await {
        assert_eq!(status, StatusCode::OK, "{when}: an acknowledged service or its revision: {v}");
    }
    for name in &ledger.deleted {
        assert!(!live.contains_key(name), "{when}: service {name} was deleted (acknowledged) but is listed");
    }
    let paths = ledger.deleted.iter().map(|name| format!("{}/{name}", services_path())).collect();
    for (status, v) in get_all(api, paths).await {
        assert_eq!(status, StatusCode::NOT_FOUND, "{when}: a deleted service answered {v}");
    }

    // Revisions: none without its service, none missing for a service.
    let listed = api.must_ok(Method::GET, &format!("{}/-/revisions", services_path()), None).await;
    let revisions = listed["revisions"].as_array().unwrap_or_else(|| panic!("{when}: no revisions list in {listed}"));
    let mut revision_names = BTreeSet::new();
    for r in revisions {
        let service = short(&r["service"]);
        assert!(live.contains_key(&service), "{when}: revision {} outlived its service {service}", r["name"]);
        assert!(revision_names.insert(short(&r["name"])), "{when}: revision {} listed twice", r["name"]);
    }
    for (name, revision) in &live {
        assert!(revision_names.contains(revision), "{when}: service {name} serves missing revision {revision}");
    }

    // The IAM policy: every acknowledged member, and a version no older than any acknowledged.
    let policy = api.must_ok(Method::POST, &format!("{}/target:getIamPolicy", services_path()), Some(&json!({}))).await;
    let members = invokers(&policy);
    let lost: Vec<&String> = ledger.members.difference(&members).collect();
    assert!(lost.is_empty(), "{when}: acknowledged members lost from the policy: {lost:?}");
    let version = etag_version(policy["etag"].as_str().unwrap_or_default());
    assert!(
        version >= ledger.policy_version,
        "{when}: policy version went back from {} to {version}",
        ledger.policy_version
    );

    // `rolling`: at least the acknowledged generation, and every acknowledged revision intact.
    let rolling = api.must_ok(Method::GET, &format!("{}/rolling", services_path()), None).await;
    let (acked_generation, acked_args) = &ledger.rolling;
    assert!(
        generation(&rolling) >= *acked_generation,
        "{when}: rolling went back to generation {}",
        generation(&rolling)
    );
    if generation(&rolling) == *acked_generation {
        let args = &rolling["template"]["containers"][0]["args"];
        match acked_args {
            Some(a) => assert_eq!(args, &json!([a]), "{when}: rolling"),
            None => assert!(args.is_null() || args == &json!([]), "{when}: rolling has args {args}"),
        }
    }
    let paths = ledger.revisions.keys().map(|r| format!("{}/rolling/revisions/{r}", services_path())).collect();
    for ((status, r), (revision, args)) in get_all(api, paths).await.iter().zip(&ledger.revisions) {
        assert_eq!(*status, StatusCode::OK, "{when}: acknowledged revision {revision} of rolling: {r}");
        assert_eq!(r["containers"][0]["args"], json!([args]), "{when}: revision {revision} of rolling changed");
    }
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_write() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("a runtime");
    let sb = Sandbox::new();
    let mut ledger = Ledger::default();
    let mut rng = rand::rng();
    let started = Instant::now();

    for round in 0..=ROUNDS {
        let round_started = Instant::now();
        let mut daemon = sb.start();
        let start_time = round_started.elapsed();
        let api = runtime.block_on(async { Api::new(&daemon) });
        if round == 0 {
            ledger.project_number = daemon.project_number();
            let body = json!({ "template": { "containers": [{ "command": ["true"] }] } });
            runtime.block_on(async {
                for name in ["target", "rolling"] {
                    api.must_ok(Method::POST, &format!("{}?serviceId={name}", services_path()), Some(&body)).await;
                }
            });
            ledger.rolling = (1, None);
        }
        let when = format!("after {round} kills");
        let verify_started = Instant::now();
        runtime.block_on(verify(&api, &ledger, &when));
        let verify_time = verify_started.elapsed();
        if round == ROUNDS {
            let (status, _) = daemon.stop();
            assert_eq!(status.code(), Some(0), "the daemon did not stop cleanly after {ROUNDS} crashes");
            break;
        }

        let mut writers = vec![
            runtime.spawn(account_writer(api.clone(), round)),
            runtime.spawn(service_writer(api.clone(), round)),
            runtime.spawn(revision_writer(api.clone(), round)),
        ];
        for w in 0..MEMBER_WRITERS {
            writers.push(runtime.spawn(member_writer(api.clone(), round, w)));
        }
        let delay = Duration::from_millis(rng.random_range(WRITE_WINDOW_MS));
        std::thread::sleep(delay);
        daemon.kill9();

        let before = ledger.acks;
        for w in writers {
            let report = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(20), w).await })
                .expect("a writer did not stop after the kill")
                .expect("a writer panicked");
            assert!(report.unexpected.is_empty(), "round {round}: unexpected answers: {:?}", report.unexpected);
            ledger.record(report);
        }
        eprintln!(
            "round {round}: restart {start_time:?}, verify {verify_time:?}, {} writes acknowledged in {delay:?} before the kill",
            ledger.acks - before
        );
    }

    eprintln!(
        "{ROUNDS} kills, {} acknowledged writes ({} accounts, {} services, {} deleted, {} members, {} revisions) in {:?}",
        ledger.acks,
        ledger.accounts.len(),
        ledger.services.len(),
        ledger.deleted.len(),
        ledger.members.len(),
        ledger.revisions.len(),
        started.elapsed()
    );
    assert!(ledger.acks >= 50, "only {} writes were acknowledged: the test proved little", ledger.acks);
    assert!(!ledger.deleted.is_empty() && !ledger.members.is_empty() && !ledger.revisions.is_empty());
}
