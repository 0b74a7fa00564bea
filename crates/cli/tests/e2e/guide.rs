//! The guide's setup, step by step through the CLI, with what each step prints.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::harness::{Out, PROJECT, Sandbox, account_email, table};

/// Checks the two lines `run deploy` prints and returns the revision's short name.
#[track_caller]
fn assert_deployed(out: &Out, service: &str, number: &str) -> String {
    assert_eq!(
        out.stderr,
        format!("Deploying to Cloud Run service [{service}] in project [{PROJECT}] region [local1]\n"),
        "{out}"
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{out}");
    let revision = lines[0]
        .strip_prefix(&format!("Service [{service}] revision ["))
        .and_then(|rest| rest.strip_suffix("] has been deployed and is serving 100 percent of traffic."))
        .unwrap_or_else(|| panic!("unexpected first line:\n{out}"));
    let suffix = revision
        .strip_prefix(&format!("{service}-00001-"))
        .unwrap_or_else(|| panic!("revision {revision:?} is not the service's first"));
    assert!(
        suffix.len() == 3 && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "revision {revision:?} does not end in three random characters"
    );
    assert_eq!(lines[1], format!("Service URL: http://{service}-{number}.local1.run.localhost:7781"), "{out}");
    revision.to_string()
}

#[track_caller]
fn assert_created_quietly(out: Out, stderr: &str) {
    let out = out.ok();
    assert_eq!(out.stdout, "", "{out}");
    assert_eq!(out.stderr, format!("{stderr}\n"), "{out}");
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}")))
        .collect()
}

#[test]
fn the_guide_setup_works_step_by_step_through_the_cli() {
    let sb = Sandbox::new();
    let daemon = sb.start();
    let number = daemon.project_number();
    let caller_email = account_email("caller");

    let empty = sb.cli(&["compute", "networks", "list"]).ok();
    assert_eq!((empty.stdout.as_str(), empty.stderr.as_str()), ("", "Listed 0 items.\n"), "{empty}");

    let out = sb
        .cli(&[
            "run",
            "deploy",
            "receiver",
            "--command=python3",
            "--args=app.py",
            "--ingress=internal",
            "--no-allow-unauthenticated",
        ])
        .ok();
    let receiver_rev = assert_deployed(&out, "receiver", &number);

    assert_created_quietly(
        sb.cli(&["compute", "networks", "create", "vpc"]),
        &format!("Created [/compute/v1/projects/{PROJECT}/global/networks/vpc]."),
    );
    assert_created_quietly(
        sb.cli(&["compute", "networks", "subnets", "create", "sub", "--network=vpc", "--range=10.0.0.0/24"]),
        &format!("Created [/compute/v1/projects/{PROJECT}/regions/local1/subnetworks/sub]."),
    );
    assert_created_quietly(
        sb.cli(&[
            "compute",
            "networks",
            "vpc-access",
            "connectors",
            "create",
            "conn",
            "--network=vpc",
            "--range=10.8.0.0/28",
        ]),
        "Created connector [conn].",
    );

    let out = sb.cli(&["iam", "service-accounts", "create", "caller"]).ok();
    assert_eq!(out.stdout, format!("{caller_email}\n"), "{out}");
    assert_eq!(out.stderr, "Created service account [caller].\n", "{out}");

    let member = format!("serviceAccount:{caller_email}");
    let out = sb
        .cli(&[
            "run",
            "services",
            "add-iam-policy-binding",
            "receiver",
            &format!("--member={member}"),
            "--role=roles/run.invoker",
        ])
        .ok();
    assert_eq!(out.stderr, "Updated IAM policy for service [receiver].\n", "{out}");
    let printed = out.yaml();
    assert_eq!(printed["bindings"], json!([{ "role": "roles/run.invoker", "members": [member] }]));

    let out = sb
        .cli(&[
            "run",
            "deploy",
            "caller",
            "--command=python3",
            "--args=caller.py",
            "--vpc-connector=conn",
            "--vpc-egress=all-traffic",
            "--service-account=caller",
        ])
        .ok();
    let caller_rev = assert_deployed(&out, "caller", &number);

    // The caller runs as its own account, behind the connector, with all egress through it.
    let caller = sb.cli(&["run", "services", "describe", "caller", "--format=json"]).json();
    assert_eq!(caller["name"], format!("projects/{PROJECT}/locations/local1/services/caller"));
    assert_eq!(
        caller["template"]["vpcAccess"],
        json!({ "connector": format!("projects/{PROJECT}/locations/local1/connectors/conn"), "egress": "ALL_TRAFFIC" })
    );
    assert_eq!(caller["template"]["serviceAccount"], caller_email.as_str());
    assert_eq!(caller["template"]["containers"][0]["command"], json!(["python3"]));
    assert_eq!(caller["template"]["containers"][0]["args"], json!(["caller.py"]));
    assert_eq!(caller["ingress"], "INGRESS_TRAFFIC_ALL");
    assert_eq!(caller["uri"], format!("http://caller-{number}.local1.run.localhost:7781"));
    assert_eq!(
        caller["latestReadyRevision"],
        format!("projects/{PROJECT}/locations/local1/services/caller/revisions/{caller_rev}")
    );

    // The receiver is internal-only and runs as the default compute account.
    let receiver = sb.cli(&["run", "services", "describe", "receiver", "--format=json"]).json();
    assert_eq!(receiver["ingress"], "INGRESS_TRAFFIC_INTERNAL_ONLY");
    assert_eq!(receiver["template"]["serviceAccount"], format!("{number}-compute@developer.gserviceaccount.com"));
    assert_eq!(receiver["template"]["vpcAccess"], Value::Null);

    // Only the caller may invoke the receiver: no allUsers binding.
    let policy = sb.cli(&["run", "services", "get-iam-policy", "receiver", "--format=json"]).json();
    assert_eq!(policy["bindings"], json!([{ "role": "roles/run.invoker", "members": [member] }]));
    assert_eq!(policy["version"], 1);
    assert!(policy["etag"].as_str().is_some_and(|e| !e.is_empty()), "no etag in {policy}");

    // Lists, as tables a person reads.
    let out = sb.cli(&["run", "services", "list"]).ok();
    assert_eq!(out.stderr, "", "{out}");
    let rows = table(&out, &["SERVICE", "REGION", "URL", "INGRESS", "LAST DEPLOYED BY", "LAST DEPLOYED AT"]);
    let shown: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| [&r["SERVICE"], &r["REGION"], &r["URL"], &r["INGRESS"], &r["LAST DEPLOYED BY"]].map(String::as_str))
        .collect();
    let caller_url = format!("http://caller-{number}.local1.run.localhost:7781");
    let receiver_url = format!("http://receiver-{number}.local1.run.localhost:7781");
    assert_eq!(
        shown,
        vec![
            ["caller", "local1", caller_url.as_str(), "all", "owner@runnel.localhost"],
            ["receiver", "local1", receiver_url.as_str(), "internal", "owner@runnel.localhost"],
        ]
    );
    assert_eq!(rows[0]["LAST DEPLOYED AT"], caller["updateTime"].as_str().unwrap_or_default());

    let out = sb.cli(&["run", "revisions", "list"]).ok();
    let rows = table(&out, &["REVISION", "SERVICE", "SERVICE ACCOUNT", "DEPLOYED"]);
    let mut shown: Vec<[String; 3]> =
        rows.iter().map(|r| [r["REVISION"].clone(), r["SERVICE"].clone(), r["SERVICE ACCOUNT"].clone()]).collect();
    shown.sort();
    assert_eq!(
        shown,
        vec![
            [caller_rev, "caller".into(), caller_email.clone()],
            [receiver_rev, "receiver".into(), format!("{number}-compute@developer.gserviceaccount.com")],
        ]
    );

    let out = sb.cli(&["iam", "service-accounts", "list"]).ok();
    let mut rows = table(&out, &["DISPLAY NAME", "EMAIL", "UNIQUE ID", "DISABLED"]);
    rows.sort_by(|a, b| a["EMAIL"].cmp(&b["EMAIL"]));
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(
        [&rows[0]["DISPLAY NAME"], &rows[0]["EMAIL"], &rows[0]["DISABLED"]].map(String::as_str),
        [
            "Default compute service account",
            format!("{number}-compute@developer.gserviceaccount.com").as_str(),
            "False"
        ]
    );
    assert_eq!(
        [&rows[1]["DISPLAY NAME"], &rows[1]["EMAIL"], &rows[1]["DISABLED"]].map(String::as_str),
        ["", caller_email.as_str(), "False"]
    );
    for r in &rows {
        let id = &r["UNIQUE ID"];
        assert!(id.len() == 21 && id.bytes().all(|b| b.is_ascii_digit()), "unique id {id:?} is not 21 digits");
    }
    assert_ne!(rows[0]["UNIQUE ID"], rows[1]["UNIQUE ID"]);

    let out = sb.cli(&["compute", "networks", "list"]).ok();
    let rows = table(&out, &["NAME", "SUBNET_MODE", "SUBNETS"]);
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(
        [&rows[0]["NAME"], &rows[0]["SUBNET_MODE"], &rows[0]["SUBNETS"]].map(String::as_str),
        ["vpc", "CUSTOM", "1"]
    );

    let out = sb.cli(&["compute", "networks", "subnets", "list"]).ok();
    let rows = table(&out, &["NAME", "REGION", "NETWORK", "RANGE", "PRIVATE_GOOGLE_ACCESS"]);
    assert_eq!(rows.len(), 1, "{out}");
    let r = &rows[0];
    assert_eq!(
        [&r["NAME"], &r["REGION"], &r["NETWORK"], &r["RANGE"], &r["PRIVATE_GOOGLE_ACCESS"]].map(String::as_str),
        ["sub", "local1", "vpc", "10.0.0.0/24", "False"]
    );

    let out = sb.cli(&["compute", "networks", "vpc-access", "connectors", "list"]).ok();
    let rows = table(
        &out,
        &["CONNECTOR_ID", "REGION", "NETWORK", "IP_CIDR_RANGE", "SUBNET", "MIN_INSTANCES", "MAX_INSTANCES", "STATE"],
    );
    assert_eq!(rows.len(), 1, "{out}");
    let r = &rows[0];
    assert_eq!(
        [
            &r["CONNECTOR_ID"],
            &r["REGION"],
            &r["NETWORK"],
            &r["IP_CIDR_RANGE"],
            &r["SUBNET"],
            &r["MIN_INSTANCES"],
            &r["MAX_INSTANCES"],
            &r["STATE"]
        ]
        .map(String::as_str),
        ["conn", "local1", "vpc", "10.8.0.0/28", "", "2", "10", "READY"]
    );

    // YAML carries the same data as JSON, for one resource and for lists.
    let yaml = sb.cli(&["run", "services", "describe", "caller", "--format=yaml"]).yaml();
    assert_eq!(yaml, caller);
    let yaml = sb.cli(&["run", "services", "get-iam-policy", "receiver", "--format=yaml"]).yaml();
    assert_eq!(yaml, policy);
    let json_list = sb.cli(&["run", "services", "list", "--format=json"]).json();
    let out = sb.cli(&["run", "services", "list", "--format=yaml"]).ok();
    assert!(out.stdout.starts_with("---\n"), "{out}");
    assert_eq!(Value::Array(yaml_documents(&out.stdout)), json_list);
    assert_eq!(json_list.as_array().map(Vec::len), Some(2));
    assert_eq!(json_list[0], caller);
}
