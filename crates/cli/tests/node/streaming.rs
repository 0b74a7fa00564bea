//! Bodies stream through the frontend both ways: uploads and downloads far larger than any
//! buffer arrive whole and intact, and server-sent events arrive as they are sent.

use std::time::{Duration, Instant};

use crate::harness::{Start, World, peak_rss_kib, unique};
use crate::http::{self, Conn, crc32};

const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;

/// Fills `buf` with pseudo-random bytes (xorshift64), continuing from `state`.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_exact_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
}

#[test]
fn large_bodies_and_events_stream_through_the_frontend_both_ways() {
    let world = World::new();
    let daemon = world.start(&Start::default());
    world.deploy("stream", &unique("stream"), &["--max-instances=1"]);
    let svc = world.service("stream");
    // Warm the connection path, then take the daemon's peak memory as the baseline.
    http::get(daemon.frontend, &svc.authority, "/").ok_json();
    let baseline = peak_rss_kib(daemon.pid).expect("the daemon's VmHWM");

    // Upload: 64 MiB with a Content-Length, written 1 MiB at a time.
    let mut conn = Conn::open(daemon.frontend, &svc.authority).expect("connect");
    conn.send_head("POST", "/upload", &[("Content-Type", "application/octet-stream")], Some(SIZE as u64))
        .expect("send the head");
    let (mut state, mut crc, mut buf) = (0x9E37_79B9_7F4A_7C15u64, 0u32, vec![0u8; MIB]);
    for _ in 0..SIZE / MIB {
        fill(&mut state, &mut buf);
        crc = crc32(crc, &buf);
        conn.write_body(&buf).expect("write the body");
    }
    let head = conn.read_head().expect("the upload's answer");
    let mut answer = Vec::new();
    let mut body = conn.body("POST", &head);
    while let Some(piece) = body.next_piece().expect("the upload's answer body") {
        answer.extend(piece);
    }
    assert_eq!(head.status, 200, "{}", String::from_utf8_lossy(&answer));
    let got: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!((got["bytes"].as_u64(), got["crc32"].as_u64()), (Some(SIZE as u64), Some(u64::from(crc))), "{got}");

    // The same upload chunked, without a length, on the same kept-alive connection.
    conn.send_head("POST", "/upload", &[("Transfer-Encoding", "chunked")], None).expect("send the head");
    let (mut state, mut crc) = (42u64, 0u32);
    for _ in 0..SIZE / MIB {
        fill(&mut state, &mut buf);
        crc = crc32(crc, &buf);
        conn.write_body(format!("{:x}\r\n", buf.len()).as_bytes()).expect("chunk size");
        conn.write_body(&buf).expect("chunk");
        conn.write_body(b"\r\n").expect("chunk end");
    }
    conn.write_body(b"0\r\n\r\n").expect("last chunk");
    let reply = {
        let head = conn.read_head().expect("the chunked upload's answer");
        let mut data = Vec::new();
        let mut body = conn.body("POST", &head);
        while let Some(piece) = body.next_piece().expect("body") {
            data.extend(piece);
        }
        assert_eq!(head.status, 200, "{}", String::from_utf8_lossy(&data));
        serde_json::from_slice::<serde_json::Value>(&data).expect("JSON")
    };
    assert_eq!((reply["bytes"].as_u64(), reply["crc32"].as_u64()), (Some(SIZE as u64), Some(u64::from(crc))));

    // Download: 64 MiB, read piece by piece, compared with what the app says it sent.
    let path = format!("/download?n={SIZE}&seed=7");
    let mut conn = Conn::open(daemon.frontend, &svc.authority).expect("connect");
    conn.send_head("GET", &path, &[], None).expect("send the head");
    let head = conn.read_head().expect("the download's head");
    assert_eq!(head.status, 200);
    let (mut n, mut crc) = (0usize, 0u32);
    let mut body = conn.body("GET", &head);
    while let Some(piece) = body.next_piece().expect("the download") {
        n += piece.len();
        crc = crc32(crc, &piece);
    }
    let digest = http::get(daemon.frontend, &svc.authority, &format!("/digest?n={SIZE}&seed=7")).ok_json();
    assert_eq!(n, SIZE);
    assert_eq!(digest["crc32"].as_u64(), Some(u64::from(crc)), "the download differs from what was sent");

    // None of it was held in the daemon's memory at once.
    let peak = peak_rss_kib(daemon.pid).expect("the daemon's VmHWM");
    assert!(
        peak.saturating_sub(baseline) < 32 * 1024,
        "the daemon's peak memory grew from {baseline} KiB to {peak} KiB while streaming 64 MiB bodies"
    );

    // Server-sent events: the app sends the last event only once the client, having read the
    // first, asks for it on another request; a frontend that buffered would never deliver it.
    let key = unique("sse");
    let mut conn = Conn::open(daemon.frontend, &svc.authority).expect("connect");
    conn.set_read_timeout(Duration::from_secs(5)).expect("read timeout");
    let started = Instant::now();
    conn.send_head("GET", &format!("/sse?key={key}"), &[("Accept", "text/event-stream")], None).expect("send");
    let head = conn.read_head().expect("the event stream's head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let mut events = Vec::new();
    let mut body = conn.body("GET", &head);
    while !events.ends_with(b"data: first\n\n") {
        let piece = body
            .next_piece()
            .unwrap_or_else(|e| panic!("the first event did not arrive while the stream was open: {e}"))
            .expect("the stream ended before its first event");
        events.extend(piece);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let released = http::get(daemon.frontend, &svc.authority, &format!("/release?key={key}"));
    assert_eq!(released.ok_json()["released"], true);
    while let Some(piece) = body.next_piece().expect("the rest of the stream") {
        events.extend(piece);
    }
    assert_eq!(String::from_utf8_lossy(&events), "data: first\n\ndata: released\n\n");
}
