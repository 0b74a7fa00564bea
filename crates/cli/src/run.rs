//! `runnel run …`: deploy and manage services and revisions.

use anyhow::{Result, anyhow, bail};
use runnel_model::service::{
    Container, ContainerPort, EnvVar, Ingress, NetworkInterface, Service, VpcAccess, VpcEgress,
};
use serde_json::{Value, json};

use crate::cli::{Deploy, DeployFlags, LogsCmd, RevisionsCmd, RunCmd, ServicesCmd};
use crate::client::Client;
use crate::iam::{add_binding, print_policy, remove_binding, set_policy_from_file};
use crate::output::{Column, Format, last, print_list, print_value, s};

/// Splits a gcloud list flag: comma-separated, or `^DELIM^a DELIM b` for another delimiter.
pub fn split_list(value: &str) -> Vec<String> {
    if let Some(rest) = value.strip_prefix('^')
        && let Some((delim, items)) = rest.split_once('^')
        && !delim.is_empty()
    {
        return items.split(delim).map(str::to_string).collect();
    }
    if value.is_empty() {
        return Vec::new();
    }
    value.split(',').map(str::to_string).collect()
}

fn parse_env(value: &str) -> Result<Vec<EnvVar>> {
    split_list(value)
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(EnvVar { name: k.to_string(), value: v.to_string() }),
            _ => Err(anyhow!("`{kv}` is not KEY=VALUE; write environment variables as KEY=VALUE,KEY2=VALUE2")),
        })
        .collect()
}

/// `300`, `300s`, `5m`, `1h` → `300s`.
pub fn parse_timeout(value: &str) -> Result<String> {
    let bad = || anyhow!("timeout `{value}` is not a duration; use seconds (300), or a number with s, m or h (5m)");
    let (num, mult) = match value.chars().last() {
        Some('s') => (&value[..value.len() - 1], 1),
        Some('m') => (&value[..value.len() - 1], 60),
        Some('h') => (&value[..value.len() - 1], 3600),
        Some(c) if c.is_ascii_digit() => (value, 1),
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok(format!("{}s", n * mult))
}

pub(crate) fn account_email(client: &Client, value: &str) -> String {
    if value.contains('@') { value.to_string() } else { format!("{value}@{}.iam.gserviceaccount.com", client.project) }
}

/// Applies deploy flags to a service, as gcloud does: what a flag does not mention stays.
pub fn apply_flags(client: &Client, svc: &mut Service, name: &str, f: &DeployFlags) -> Result<()> {
    if svc.template.containers.is_empty() {
        svc.template.containers.push(Container::default());
    }
    let c = &mut svc.template.containers[0];
    if let Some(cmd) = &f.command {
        c.command = split_list(cmd);
    }
    if let Some(args) = &f.args {
        c.args = split_list(args);
    }
    if let Some(wd) = &f.working_dir {
        c.working_dir = wd.clone();
    }
    if let Some(image) = &f.image {
        c.image = image.clone();
    }
    if f.clear_env_vars {
        c.env.clear();
    }
    if let Some(set) = &f.set_env_vars {
        c.env = parse_env(set)?;
    }
    if let Some(update) = &f.update_env_vars {
        for e in parse_env(update)? {
            match c.env.iter_mut().find(|x| x.name == e.name) {
                Some(x) => x.value = e.value,
                None => c.env.push(e),
            }
        }
    }
    if let Some(remove) = &f.remove_env_vars {
        let gone = split_list(remove);
        c.env.retain(|e| !gone.contains(&e.name));
    }
    if let Some(port) = f.port {
        c.ports = vec![ContainerPort { name: "http1".into(), container_port: port }];
    }
    if let Some(ingress) = &f.ingress {
        svc.ingress = Ingress::from_flag(ingress).map_err(|e| anyhow!("{}", e.message))?;
    }
    if let Some(sa) = &f.service_account {
        svc.template.service_account = account_email(client, sa);
    }
    let mut vpc = svc.template.vpc_access.clone().unwrap_or_default();
    if f.clear_vpc_connector {
        vpc.connector.clear();
    }
    if f.clear_network {
        vpc.network_interfaces.clear();
    }
    if let Some(conn) = &f.vpc_connector {
        vpc.connector = conn.clone();
    }
    if f.network.is_some() || f.subnet.is_some() {
        let ni = NetworkInterface {
            network: f.network.clone().unwrap_or_default(),
            subnetwork: f.subnet.clone().unwrap_or_default(),
            tags: Vec::new(),
        };
        vpc.network_interfaces = vec![ni];
    }
    if let Some(egress) = &f.vpc_egress {
        vpc.egress = VpcEgress::from_flag(egress).map_err(|e| anyhow!("{}", e.message))?;
    }
    svc.template.vpc_access = if vpc == VpcAccess::default() { None } else { Some(vpc) };
    if f.no_invoker_iam_check {
        svc.invoker_iam_disabled = true;
    }
    if f.invoker_iam_check {
        svc.invoker_iam_disabled = false;
    }
    if let Some(n) = f.min_instances {
        svc.template.scaling.min_instance_count = Some(n);
    }
    if let Some(n) = f.max_instances {
        svc.template.scaling.max_instance_count = Some(n);
    }
    if let Some(n) = f.concurrency {
        svc.template.max_instance_request_concurrency = n;
    }
    if let Some(t) = &f.timeout {
        svc.template.timeout = parse_timeout(t)?;
    }
    if f.no_default_url {
        svc.default_uri_disabled = true;
    }
    if f.default_url {
        svc.default_uri_disabled = false;
    }
    if f.clear_custom_audiences {
        svc.custom_audiences.clear();
    }
    if let Some(add) = &f.add_custom_audiences {
        for a in split_list(add) {
            if !svc.custom_audiences.contains(&a) {
                svc.custom_audiences.push(a);
            }
        }
    }
    if let Some(rm) = &f.remove_custom_audiences {
        let gone = split_list(rm);
        svc.custom_audiences.retain(|a| !gone.contains(a));
    }
    if let Some(labels) = &f.labels {
        for kv in split_list(labels) {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("label `{kv}` is not KEY=VALUE"))?;
            svc.labels.insert(k.to_string(), v.to_string());
        }
    }
    svc.template.revision = match &f.revision_suffix {
        Some(suffix) => format!("{name}-{suffix}"),
        None => String::new(),
    };
    Ok(())
}

/// Deploy (create or update) and report like gcloud.
async fn deploy(client: &Client, d: &Deploy, must_exist: bool) -> Result<()> {
    let region = client.region.clone();
    let path = format!("{}/services/{}", client.run_parent(&region), d.service);
    let existing = client.get_opt(&path).await?;
    let mut svc: Service = match &existing {
        Some(v) => serde_json::from_value(v.clone())?,
        None if must_exist => bail!(
            "service `{}` does not exist in region `{region}`; create it with `runnel run deploy {}`",
            d.service,
            d.service
        ),
        None => {
            if d.flags.command.is_none() {
                bail!(
                    "service `{}` does not exist yet, so `--command` is required: runnel runs a program, for example `--command=python3 --args=app.py`",
                    d.service
                );
            }
            Service::default()
        }
    };
    apply_flags(client, &mut svc, &d.service, &d.flags)?;
    if existing.is_none() && d.flags.working_dir.is_none() {
        // runnel runs the host's files: a new service starts where it was deployed from, so
        // `--args=app.py` finds app.py.
        if let (Some(c), Ok(cwd)) = (svc.template.containers.first_mut(), std::env::current_dir()) {
            c.working_dir = cwd.display().to_string();
        }
    }
    eprintln!("Deploying to Cloud Run service [{}] in project [{}] region [{region}]", d.service, client.project);
    let body = serde_json::to_value(&svc)?;
    let op = match existing {
        Some(_) => client.patch(&path, &body).await?,
        None => client.post(&format!("{}/services?serviceId={}", client.run_parent(&region), d.service), &body).await?,
    };
    if d.flags.allow_unauthenticated {
        add_binding(
            client,
            &format!("{path}:getIamPolicy"),
            &format!("{path}:setIamPolicy"),
            "allUsers",
            "roles/run.invoker",
        )
        .await?;
    }
    if d.flags.no_allow_unauthenticated {
        let _ = remove_binding(
            client,
            &format!("{path}:getIamPolicy"),
            &format!("{path}:setIamPolicy"),
            "allUsers",
            "roles/run.invoker",
            true,
        )
        .await?;
    }
    let result = &wait_until_serving(client, &path, &op["response"]).await?;
    println!(
        "Service [{}] revision [{}] has been deployed and is serving 100 percent of traffic.",
        d.service,
        last(&result["latestReadyRevision"])
    );
    println!("Service URL: {}", s(&result["uri"]));
    Ok(())
}

/// Waits until the newest revision serves, or reports why it cannot: the deploy's result is
/// what the service does, not what was recorded.
async fn wait_until_serving(client: &Client, path: &str, first: &Value) -> Result<Value> {
    let created = s(&first["latestCreatedRevision"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15 * 60);
    let mut current = first.clone();
    let mut said = false;
    loop {
        if s(&current["latestReadyRevision"]) == created {
            return Ok(current);
        }
        if current["terminalCondition"]["state"] == "CONDITION_FAILED" {
            bail!("{}", s(&current["terminalCondition"]["message"]));
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "revision [{}] did not become ready within 15 minutes; see `runnel run services logs read`",
                last(&json!(created))
            );
        }
        if !said {
            eprintln!("Waiting for revision [{}] to pass its startup probe...", last(&json!(created)));
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        current = client.get(path).await?;
    }
}

fn print_logs(format: Format, entries: &[Value], requests: bool) -> Result<()> {
    if format != Format::Table {
        return print_list(format, entries, &[]);
    }
    for e in entries {
        if requests {
            let r = &e["httpRequest"];
            println!(
                "{} {} {} {} {} {}",
                s(&e["timestamp"]),
                s(&r["status"]),
                s(&r["requestMethod"]),
                s(&r["requestUrl"]),
                s(&r["latency"]),
                s(&e["revision"])
            );
        } else {
            println!(
                "{} {} {} {}: {}",
                s(&e["timestamp"]),
                s(&e["revision"]),
                s(&e["instance"]),
                s(&e["stream"]),
                s(&e["textPayload"])
            );
        }
    }
    Ok(())
}

/// How often `logs tail` asks for new lines, and how many of the newest it fetches each time.
const TAIL_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
const TAIL_BATCH: usize = 1000;

async fn logs(client: &Client, format: Format, region: &str, cmd: LogsCmd) -> Result<()> {
    let (service, requests, limit, follow) = match cmd {
        LogsCmd::Read { service, limit, requests } => (service, requests, limit, false),
        LogsCmd::Tail { service, requests } => (service, requests, 20, true),
    };
    let kind = if requests { "requests" } else { "instances" };
    let path = |limit: usize| {
        format!(
            "/runnel/v1/projects/{}/locations/{region}/services/{service}/logs?kind={kind}&limit={limit}",
            client.project
        )
    };
    let entries = client.get(&path(limit)).await?["entries"].as_array().cloned().unwrap_or_default();
    print_logs(format, &entries, requests)?;
    if !follow {
        return Ok(());
    }
    let mut seen = entries.last().cloned();
    loop {
        tokio::time::sleep(TAIL_EVERY).await;
        let entries = client.get(&path(TAIL_BATCH)).await?["entries"].as_array().cloned().unwrap_or_default();
        let (start, skipped) = new_since(&entries, seen.as_ref());
        if skipped {
            // The last line shown is no longer among the newest: more arrived since than one
            // poll fetches (or the log was removed). Say so rather than let the output look
            // complete.
            eprintln!(
                "WARNING: more than {TAIL_BATCH} lines arrived within {} ms; some of them were not shown. \
                 `runnel run services logs read {service}{} --limit N` reads up to 10000.",
                TAIL_EVERY.as_millis(),
                if requests { " --requests" } else { "" }
            );
        }
        if start < entries.len() {
            print_logs(format, &entries[start..], requests)?;
            seen = entries.last().cloned();
        }
    }
}

/// Where the lines not shown yet start in `entries` (the newest lines of a log, oldest first),
/// given the last line shown; and whether lines were missed because that one is no longer among
/// them.
fn new_since(entries: &[Value], seen: Option<&Value>) -> (usize, bool) {
    match seen {
        None => (0, false),
        Some(last) => match entries.iter().rposition(|e| e == last) {
            Some(i) => (i + 1, false),
            None => (0, !entries.is_empty()),
        },
    }
}

fn service_columns() -> Vec<Column> {
    vec![
        Column { header: "SERVICE", cell: |v| last(&v["name"]) },
        Column { header: "REGION", cell: |v| s(&v["name"]).split('/').nth(3).unwrap_or_default().to_string() },
        Column { header: "URL", cell: |v| s(&v["uri"]) },
        Column {
            header: "INGRESS",
            cell: |v| match s(&v["ingress"]).as_str() {
                "INGRESS_TRAFFIC_INTERNAL_ONLY" => "internal".into(),
                "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER" => "internal-and-cloud-load-balancing".into(),
                _ => "all".into(),
            },
        },
        Column { header: "LAST DEPLOYED BY", cell: |v| s(&v["lastModifier"]) },
        Column { header: "LAST DEPLOYED AT", cell: |v| s(&v["updateTime"]) },
    ]
}

pub async fn run(client: &Client, format: Format, cmd: RunCmd) -> Result<()> {
    let region = client.region.clone();
    let svc_path = |name: &str| format!("{}/services/{name}", client.run_parent(&region));
    match cmd {
        RunCmd::Deploy(d) => deploy(client, &d, false).await,
        RunCmd::Services(ServicesCmd::Update(d)) => deploy(client, &d, true).await,
        RunCmd::Services(ServicesCmd::Logs(cmd)) => logs(client, format, &region, cmd).await,
        RunCmd::Services(ServicesCmd::Proxy(args)) => crate::proxy::proxy(client, &region, args).await,
        RunCmd::Services(ServicesCmd::List) => {
            let v = client.get(&format!("{}/services", client.run_parent(&region))).await?;
            let items = v["services"].as_array().cloned().unwrap_or_default();
            print_list(format, &items, &service_columns())
        }
        RunCmd::Services(ServicesCmd::Describe { service }) => {
            print_value(format, &client.get(&svc_path(&service)).await?)
        }
        RunCmd::Services(ServicesCmd::Delete { service }) => {
            client.delete(&svc_path(&service)).await?;
            eprintln!("Deleted service [{service}].");
            Ok(())
        }
        RunCmd::Services(ServicesCmd::GetIamPolicy { service }) => {
            print_value(format, &client.post(&format!("{}:getIamPolicy", svc_path(&service)), &json!({})).await?)
        }
        RunCmd::Services(ServicesCmd::SetIamPolicy { service, file }) => {
            let p = set_policy_from_file(client, &format!("{}:setIamPolicy", svc_path(&service)), &file).await?;
            eprintln!("Updated IAM policy for service [{service}].");
            print_value(format, &p)
        }
        RunCmd::Services(ServicesCmd::AddIamPolicyBinding(b)) => {
            if b.binding.condition.is_some() {
                bail!(
                    "IAM conditions are not supported by runnel yet; it refuses rather than grant more than you meant. Drop `--condition`"
                );
            }
            let path = svc_path(&b.service);
            let p = add_binding(
                client,
                &format!("{path}:getIamPolicy"),
                &format!("{path}:setIamPolicy"),
                &b.binding.member,
                &b.binding.role,
            )
            .await?;
            eprintln!("Updated IAM policy for service [{}].", b.service);
            print_policy(format, &p)
        }
        RunCmd::Services(ServicesCmd::RemoveIamPolicyBinding(b)) => {
            let path = svc_path(&b.service);
            let p = remove_binding(
                client,
                &format!("{path}:getIamPolicy"),
                &format!("{path}:setIamPolicy"),
                &b.binding.member,
                &b.binding.role,
                false,
            )
            .await?;
            eprintln!("Updated IAM policy for service [{}].", b.service);
            print_policy(format, &p)
        }
        RunCmd::Revisions(RevisionsCmd::List { service }) => {
            let svc = service.unwrap_or_else(|| "-".into());
            let v = client.get(&format!("{}/services/{svc}/revisions", client.run_parent(&region))).await?;
            let items = v["revisions"].as_array().cloned().unwrap_or_default();
            let columns = vec![
                Column { header: "REVISION", cell: |v| last(&v["name"]) },
                Column { header: "SERVICE", cell: |v| last(&v["service"]) },
                Column { header: "SERVICE ACCOUNT", cell: |v| s(&v["serviceAccount"]) },
                Column { header: "DEPLOYED", cell: |v| s(&v["createTime"]) },
            ];
            print_list(format, &items, &columns)
        }
        RunCmd::Revisions(RevisionsCmd::Describe { revision }) => {
            let v = client.get(&format!("{}/services/-/revisions", client.run_parent(&region))).await?;
            let found =
                v["revisions"].as_array().and_then(|a| a.iter().find(|r| last(&r["name"]) == revision).cloned());
            match found {
                Some(r) => print_value(format, &r),
                None => bail!(
                    "revision `{revision}` does not exist in region `{region}`; list them with `runnel run revisions list`"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_shows_what_follows_the_last_line_shown_and_tells_when_lines_were_missed() {
        let lines: Vec<Value> = (0..5).map(|n| json!({ "n": n })).collect();
        assert_eq!(new_since(&lines, None), (0, false));
        assert_eq!(new_since(&lines, Some(&json!({ "n": 2 }))), (3, false));
        assert_eq!(new_since(&lines, Some(&json!({ "n": 4 }))), (5, false), "nothing new");
        // The last line shown scrolled out of the newest lines fetched: some were never shown.
        assert_eq!(new_since(&lines, Some(&json!({ "n": -1 }))), (0, true));
        assert_eq!(new_since(&[], Some(&json!({ "n": 4 }))), (0, false), "an emptied log misses nothing");
    }

    #[test]
    fn list_flags_follow_gcloud() {
        assert_eq!(split_list("a,b"), vec!["a", "b"]);
        assert_eq!(split_list("^:^a,b:c"), vec!["a,b", "c"]);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("300").ok().as_deref(), Some("300s"));
        assert_eq!(parse_timeout("5m").ok().as_deref(), Some("300s"));
        assert_eq!(parse_timeout("1h").ok().as_deref(), Some("3600s"));
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn env_vars() {
        let env = parse_env("A=1,B=x=y").unwrap_or_default();
        assert_eq!(env[1].value, "x=y");
        assert!(parse_env("NOVALUE").is_err());
    }
}
