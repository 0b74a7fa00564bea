//! A service's logs: what its instances print, and one record per request the frontend
//! handled, read with `runnel run services logs read`.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{REGION, Start, World, eventually, unique};
use crate::http;

const UA: &str = "runnel-node-tests/1";

fn entries(world: &World, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["run", "services", "logs", "read", "chatty", "--format=json"];
    all.extend_from_slice(args);
    world.cli(&all).json().as_array().cloned().unwrap_or_default()
}

fn is_seconds(latency: &str) -> bool {
    latency.strip_suffix('s').is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok_and(|v| (0.0..5.0).contains(&v)))
}

#[test]
fn instance_output_and_request_records_are_in_the_services_logs() {
    let world = World::new();
    let daemon = world.start(&Start::default());
    let marker = unique("chatty");
    world.deploy("chatty", &marker, &[]);
    let svc = world.service("chatty");
    let rev = svc.revision.as_str();
    let boot = http::get(daemon.frontend, &svc.authority, "/").ok_json()["boot"].as_str().expect("boot").to_string();

    let line = unique("a-line-on-stdout");
    let get = |path: &str| {
        http::try_request(daemon.frontend, &svc.authority, "GET", path, &[("User-Agent", UA)], &[]).expect(path)
    };
    let printed = get(&format!("/print?line={line}"));
    assert_eq!(printed.status, 200, "{printed}");
    let missing = get("/missing?x=1");
    assert_eq!(missing.status, 404, "{missing}");
    let upload = http::try_request(daemon.frontend, &svc.authority, "POST", "/upload", &[("User-Agent", UA)], b"12345")
        .expect("POST /upload");
    assert_eq!(upload.ok_json()["bytes"], 5);

    // Instance output: the start line and the printed line on stdout, the app's access log on
    // stderr, each with its revision and instance.
    let output = eventually("the printed line is in the log", Duration::from_secs(5), || {
        let e = entries(&world, &[]);
        e.iter().any(|x| x["textPayload"] == line.as_str()).then_some(e)
    });
    let started = output
        .iter()
        .find(|e| e["textPayload"].as_str().is_some_and(|t| t.starts_with(&format!("{marker} started boot="))))
        .unwrap_or_else(|| panic!("no start line in {output:#?}"));
    let instance = started["instance"].as_str().expect("an instance id").to_string();
    assert!(instance.len() == 10 && instance.bytes().all(|b| b.is_ascii_hexdigit()), "{instance:?}");
    for e in &output {
        assert_eq!((e["revision"].as_str(), e["instance"].as_str()), (Some(rev), Some(instance.as_str())), "{e}");
        assert!(e["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
    assert_eq!(started["stream"], "stdout");
    assert_eq!(started["textPayload"], format!("{marker} started boot={boot} revision={rev}"));
    let print = output.iter().find(|e| e["textPayload"] == line.as_str()).expect("the printed line");
    assert_eq!(print["stream"], "stdout");
    assert!(
        output.iter().any(|e| e["stream"] == "stderr"
            && e["textPayload"].as_str().is_some_and(|t| t.contains("\"GET /missing?x=1 HTTP/1.1\" 404"))),
        "the app's access log line is not on stderr: {output:#?}"
    );
    let table = world.cli(&["run", "services", "logs", "read", "chatty"]).ok();
    let suffix = format!(" {rev} {instance} stdout: {line}");
    assert!(table.stdout.lines().any(|l| l.ends_with(&suffix)), "no line ending {suffix:?}:\n{table}");

    // Request records: status, method, URL, latency and who asked, keyed by the request id
    // the client got.
    let records = eventually("the upload is in the request log", Duration::from_secs(5), || {
        let e = entries(&world, &["--requests"]);
        e.iter().any(|x| x["httpRequest"]["requestMethod"] == "POST").then_some(e)
    });
    let expect = [
        (&printed, "GET", format!("/print?line={line}"), 200),
        (&missing, "GET", "/missing?x=1".to_string(), 404),
        (&upload, "POST", "/upload".to_string(), 200),
    ];
    for (reply, method, path, status) in &expect {
        let id = reply.header("x-runnel-request-id").expect("a request id");
        let record = records
            .iter()
            .find(|r| r["requestId"] == id)
            .unwrap_or_else(|| panic!("no record for request {id} ({method} {path}): {records:#?}"));
        let r = &record["httpRequest"];
        assert_eq!(r["requestMethod"], *method, "{record}");
        assert_eq!(r["requestUrl"], format!("{}{path}", svc.uri), "{record}");
        assert_eq!(r["status"], *status, "{record}");
        assert_eq!(r["remoteIp"], "127.0.0.1", "{record}");
        assert_eq!(r["userAgent"], UA, "{record}");
        assert_eq!(r["protocol"], "HTTP/1.1", "{record}");
        assert!(r["latency"].as_str().is_some_and(is_seconds), "{record}");
        assert_eq!(
            (record["service"].as_str(), record["region"].as_str(), record["revision"].as_str()),
            (Some("chatty"), Some(REGION), Some(rev)),
            "{record}"
        );
        assert_eq!(record["instance"], instance.as_str(), "{record}");
    }

    // The table: TIMESTAMP STATUS METHOD URL LATENCY REVISION, newest last; --limit keeps the
    // newest.
    let table = world.cli(&["run", "services", "logs", "read", "chatty", "--requests"]).ok();
    let row = table.stdout.lines().find(|l| l.contains("/missing?x=1")).unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split(' ').collect();
    assert_eq!(cols.len(), 6, "{row:?}");
    assert_eq!((cols[1], cols[2], cols[3], cols[5]), ("404", "GET", format!("{}/missing?x=1", svc.uri).as_str(), rev));
    assert!(is_seconds(cols[4]), "{row:?}");
    let newest = entries(&world, &["--requests", "--limit=1"]);
    assert_eq!(newest.len(), 1, "{newest:?}");
    assert_eq!(newest[0], *records.last().expect("records"));
}
