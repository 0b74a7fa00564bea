//! The bounds a revision's settings put on requests: concurrency and max instances (a bounded
//! queue, then 429) and the request timeout (504).

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Start, World, processes_with, unique};
use crate::http::{self, Reply};

#[test]
fn a_full_revision_queues_requests_and_refuses_the_overflow_with_429() {
    let world = World::new();
    let daemon = world.start(&Start::default());
    let marker = unique("busy");
    world.deploy("busy", &marker, &["--concurrency=1", "--max-instances=1"]);
    let svc = world.service("busy");
    let frontend = daemon.frontend;

    // One slow request holds the only slot of the only instance for 3 s.
    let slow = {
        let host = svc.authority.clone();
        thread::spawn(move || http::get(frontend, &host, "/slow?s=3"))
    };
    thread::sleep(Duration::from_millis(500));

    // The queue holds max(concurrency, 10) = 10 waiting requests; the rest are refused at once.
    const BURST: usize = 16;
    let burst_started = Instant::now();
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let host = svc.authority.clone();
            thread::spawn(move || http::get(frontend, &host, "/"))
        })
        .collect();
    let replies: Vec<Reply> = burst.into_iter().map(|t| t.join().expect("a burst request")).collect();
    let slow = slow.join().expect("the slow request");

    assert_eq!(slow.ok_json()["slept"], 3.0, "{slow}");
    assert!(slow.elapsed >= Duration::from_secs(3), "{slow}");

    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    let served: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    assert_eq!(refused.len() + served.len(), BURST, "only 200 and 429 are expected: {replies:#?}");
    assert!(!refused.is_empty(), "no request was refused although the queue overflowed");
    assert!(refused.len() <= BURST - 10, "the queue held fewer than 10 requests: {} refused", refused.len());
    for r in &refused {
        assert!(r.elapsed < Duration::from_secs(2), "a 429 was not immediate: {r}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=UTF-8"), "{r}");
        assert!(r.text().contains("<title>429 Too Many Requests</title>"), "{r}");
        assert!(r.text().contains("Rate exceeded."), "{r}");
    }
    // Queued requests were served once the slow one let go, by the one instance there is.
    let slow_done = Duration::from_secs(3) - Duration::from_millis(500);
    for r in &served {
        assert!(r.elapsed + Duration::from_millis(100) >= slow_done, "a request overtook the slow one: {r}");
        assert_eq!(r.json()["service"], "busy");
    }
    assert_eq!(processes_with(&marker).len(), 1, "more than --max-instances=1 instances ran");
    assert!(burst_started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_request_that_outlives_the_timeout_gets_504_and_the_instance_keeps_serving() {
    let world = World::new();
    let daemon = world.start(&Start::default());
    world.deploy("late", &unique("late"), &["--timeout=2s"]);
    let svc = world.service("late");
    assert_eq!(world.describe("late")["template"]["timeout"], "2s");

    let reply = http::get(daemon.frontend, &svc.authority, "/slow?s=5");
    assert_eq!(reply.status, 504, "{reply}");
    assert_eq!(reply.text(), "upstream request timeout");
    assert_eq!(reply.header("content-type"), Some("text/plain"), "{reply}");
    assert!(
        reply.elapsed >= Duration::from_millis(1900) && reply.elapsed < Duration::from_secs(3),
        "the 504 came after {:?}, not at the 2 s timeout",
        reply.elapsed
    );

    // The timed-out request gave its slot back.
    let next = http::get(daemon.frontend, &svc.authority, "/");
    assert_eq!(next.ok_json()["service"], "late");
    assert!(next.elapsed < Duration::from_secs(1), "{next}");
}
