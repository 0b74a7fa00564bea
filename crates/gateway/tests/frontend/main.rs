//! The frontend end to end: a real listener on loopback, fake instances behind `port.sock`
//! channels, and HTTP clients asserting both what the client got and what the instance saw.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use runnel_gateway::{FrontendConfig, Route};
use runnel_model::service::Ingress;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);

fn is_request_id(value: &str) -> bool {
    value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn routes_by_host_ignoring_case_trailing_dot_and_port() {
    let s = setup(hello(), TIMEOUT).await;
    for host in
        ["svc.example.com", "SVC.Example.Com", "svc.example.com.", "Svc.Example.com.:8080", "svc.example.com:80"]
    {
        let (parts, body) = s.harness.get(host, "/hi?x=1").await;
        assert_eq!(parts.status, StatusCode::OK, "{host}");
        assert_eq!(body, "hello");
        let seen = s.instance.last_seen();
        // The workload sees the host the client asked for, and only the path and query.
        assert_eq!(seen.headers["host"], host);
        assert_eq!(seen.uri, "/hi?x=1");
    }
    s.backend.wait_idle().await;
}

#[tokio::test]
async fn absolute_form_targets_route_by_their_authority_only() {
    let s = setup(hello(), TIMEOUT).await;
    let response = s
        .harness
        .raw("GET http://SVC.example.com/abs?q HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n")
        .await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let seen = s.instance.last_seen();
    assert_eq!(seen.headers["host"], "SVC.example.com");
    assert_eq!(seen.uri, "/abs?q");

    // A known Host does not rescue a target naming an unknown service.
    let response = s
        .harness
        .raw("GET http://other.example.com/ HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n")
        .await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}

#[tokio::test]
async fn unknown_host_gets_a_plain_404_that_names_nothing() {
    let s = setup(hello(), TIMEOUT).await;
    let (parts, body) = s.harness.get("secret-service.example.com", "/admin").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(parts.headers["content-type"], "text/html; charset=UTF-8");
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.contains("404 Page not found"), "{body}");
    for internal in ["secret-service", "admin", "svc", "runnel", "instance"] {
        assert!(!body.contains(internal), "404 page names {internal:?}: {body}");
    }
    // Routing misses reach no backend and are not in any service's request log.
    assert_eq!(s.backend.acquired.load(Ordering::SeqCst), 0);
    assert!(s.harness.log.records().is_empty());
}

#[tokio::test]
async fn missing_repeated_or_malformed_host_gets_400() {
    let s = setup(hello(), TIMEOUT).await;
    let (parts, _) = s.harness.send(Request::get("/").body(empty()).unwrap()).await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    for request in [
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: svc.example.com\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: svc.example.com:http\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@svc.example.com\r\nConnection: close\r\n\r\n",
    ] {
        let response = s.harness.raw(request).await;
        assert!(
            response.starts_with("HTTP/1.1 400") || response.starts_with("HTTP/1.0 400"),
            "{request:?}: {response}"
        );
    }
    assert_eq!(s.backend.acquired.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let s = setup(hello(), TIMEOUT).await;
    let response = s.harness.raw("CONNECT svc.example.com:443 HTTP/1.1\r\nHost: svc.example.com:443\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed"), "{response}");
    assert!(response.contains("not a proxy"), "{response}");
    assert_eq!(s.backend.acquired.load(Ordering::SeqCst), 0);
    assert_eq!(s.instance.accepted(), 0);
}

#[tokio::test]
async fn forwarding_headers_are_written_by_the_frontend() {
    let s = setup(hello(), TIMEOUT).await;
    let request = Request::get("/")
        .header("host", HOST)
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=203.0.113.9;proto=https")
        .header("x-real-ip", "203.0.113.9")
        .header("proxy", "http://evil.example.com:3128")
        .header("x-request-id", "chosen-by-client")
        .header("authorization", "Bearer passes-through")
        .body(empty())
        .unwrap();
    let (parts, _) = s.harness.send(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let seen = s.instance.last_seen().headers;
    assert_eq!(seen.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["127.0.0.1"]);
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http");
    assert!(!seen.contains_key("x-real-ip"));
    assert!(!seen.contains_key("proxy"), "httpoxy header reached the instance");
    assert_eq!(seen["authorization"], "Bearer passes-through");
    // The instance and the client see the same request id, and it is not the client's.
    let id = parts.headers["x-runnel-request-id"].to_str().unwrap();
    assert!(is_request_id(id), "{id}");
    assert_eq!(seen["x-request-id"], id);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let handler: Handler = Arc::new(|_| {
        Box::pin(async {
            Response::builder()
                .header("connection", "x-hop")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("x-end-to-end", "1")
                .body(full("hello"))
                .unwrap()
        })
    });
    let s = setup(handler, TIMEOUT).await;
    let request = Request::get("/")
        .header("host", HOST)
        .header("connection", "close, x-foo")
        .header("x-foo", "bar")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("proxy-authorization", "Basic eA==")
        .header("x-keep", "1")
        .body(empty())
        .unwrap();
    let (parts, _) = s.harness.send(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let seen = s.instance.last_seen().headers;
    for gone in ["connection", "x-foo", "keep-alive", "te", "upgrade", "proxy-authorization"] {
        assert!(!seen.contains_key(gone), "instance saw {gone}: {seen:?}");
    }
    assert_eq!(seen["x-keep"], "1");
    for gone in ["x-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!parts.headers.contains_key(gone), "client saw {gone}: {:?}", parts.headers);
    }
    assert_eq!(parts.headers["x-end-to-end"], "1");

    // The client's `Connection: close` ended its own connection, not the pooled one.
    let (parts, _) = s.harness.get(HOST, "/again").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(s.instance.accepted(), 1);
}

#[tokio::test]
async fn connections_to_an_instance_are_kept_alive_and_reused() {
    let s = setup(hello(), TIMEOUT).await;
    // Half on fresh client connections, half on one kept-alive client connection.
    for i in 0..25 {
        let (parts, body) = s.harness.get(HOST, &format!("/{i}")).await;
        assert_eq!((parts.status, body.as_ref()), (StatusCode::OK, b"hello".as_ref()));
    }
    let mut client = s.harness.connect().await;
    for i in 0..25 {
        let req = Request::get(format!("/{i}")).header("host", HOST).body(empty()).unwrap();
        let response = client.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(s.instance.accepted(), 1, "50 sequential requests should share one instance connection");
    s.backend.wait_idle().await;
}

#[tokio::test]
async fn busy_backend_gets_429_and_no_instance_gets_503() {
    let s = setup(hello(), TIMEOUT).await;
    s.backend.set_mode(Mode::Busy);
    let (parts, body) = s.harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&body).contains("Rate exceeded."));

    s.backend.set_mode(Mode::NoInstance);
    let (parts, body) = s.harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("no instance became ready in time"));

    let records = s.harness.log.wait_for(2).await;
    assert_eq!(records.iter().map(|r| r.http_request.status).collect::<Vec<_>>(), [429, 503]);
    assert!(records.iter().all(|r| r.instance.is_empty() && r.service == "svc"));
    assert_eq!(s.instance.accepted(), 0);
}

/// A deploy moves the service's traffic on between a request's routing and its acquire: the old
/// revision's backend says `Retired`, and the request is served by the new revision, which its
/// record names.
#[tokio::test]
async fn a_request_whose_revision_retires_before_its_slot_is_served_by_the_new_one() {
    let s = setup(hello(), TIMEOUT).await;
    let new_instance = instance(hello());
    let new_backend = FakeBackend::new("svc-00002-def-y1", new_instance.dir());
    let new_route = revision_route("svc", "svc-00002-def", new_backend.clone(), TIMEOUT);
    let router = s.harness.router.clone();
    *s.backend.on_acquire.lock().unwrap() = Some(Box::new(move || router.set(HOST, new_route)));
    s.backend.set_mode(Mode::Retired);

    let (parts, body) = s.harness.get(HOST, "/").await;
    assert_eq!((parts.status, body.as_ref()), (StatusCode::OK, b"hello".as_ref()));
    assert_eq!((s.backend.acquired.load(Ordering::SeqCst), new_backend.acquired.load(Ordering::SeqCst)), (1, 1));
    assert_eq!((s.instance.accepted(), new_instance.accepted()), (0, 1));
    let records = s.harness.log.wait_for(1).await;
    assert_eq!(
        (records[0].revision.as_ref(), records[0].instance.as_ref(), records[0].http_request.status),
        ("svc-00002-def", "svc-00002-def-y1", 200)
    );
    new_backend.wait_idle().await;
}

/// A backend that says `Retired` while the route table still points at it (nothing newer
/// serves) ends the request at once with 503, without asking it again.
#[tokio::test]
async fn a_retired_revision_with_nothing_newer_gets_503_at_once() {
    let s = setup(hello(), TIMEOUT).await;
    s.backend.set_mode(Mode::Retired);
    let (parts, body) = s.harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("stopped serving while the request waited"), "{body}");
    assert!(!body.contains("no instance became ready"), "{body}");
    assert_eq!(s.backend.acquired.load(Ordering::SeqCst), 1, "the retired backend was asked again");
    assert_eq!(s.harness.log.wait_for(1).await[0].http_request.status, 503);
}

/// Every newer revision retires too (deploys in a row): the request follows at most
/// `MAX_REROUTES` of them, then gets 503; it never loops.
#[tokio::test]
async fn rerouting_is_bounded() {
    let s = setup(hello(), TIMEOUT).await;
    let dir = tempfile::tempdir().unwrap();
    let backends: Vec<Arc<FakeBackend>> =
        (2..=6).map(|n| FakeBackend::new(&format!("svc-0000{n}-x"), dir.path().to_path_buf())).collect();
    let chain = std::iter::once(&s.backend).chain(backends.iter());
    for (from, to) in chain.clone().zip(backends.iter()) {
        let (router, to) = (s.harness.router.clone(), revision_route("svc", &to.instance, to.clone(), TIMEOUT));
        *from.on_acquire.lock().unwrap() = Some(Box::new(move || router.set(HOST, to)));
    }
    for backend in chain {
        backend.set_mode(Mode::Retired);
    }
    let (parts, body) = s.harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("stopped serving while the request waited"));
    let asked: Vec<usize> =
        std::iter::once(&s.backend).chain(backends.iter()).map(|b| b.acquired.load(Ordering::SeqCst)).collect();
    assert_eq!(asked, [1, 1, 1, 1, 0, 0], "the original revision and then three newer ones");
}

#[tokio::test]
async fn slow_instance_gets_504_at_the_timeout() {
    let handler: Handler = Arc::new(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(full("too late"))
        })
    });
    let s = setup(handler, Duration::from_millis(300)).await;
    let started = Instant::now();
    let (parts, body) = s.harness.get(HOST, "/slow").await;
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream request timeout");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    s.backend.wait_idle().await;
    let records = s.harness.log.wait_for(1).await;
    assert_eq!(records[0].http_request.status, 504);
    assert_eq!(records[0].instance, "svc-00001-abc-x1");
}

/// The request deadline of a keep-alive connection's later request is kept by the connection's
/// one timer, first armed for an earlier request's deadline (`deadline.rs`).
#[tokio::test]
async fn a_slow_request_after_fast_ones_on_one_connection_gets_504_at_its_timeout() {
    let handler: Handler = Arc::new(|req| {
        Box::pin(async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Response::new(full("ok"))
        })
    });
    let s = setup(handler, Duration::from_millis(300)).await;
    let mut sender = s.harness.connect().await;
    for _ in 0..2 {
        let response =
            sender.send_request(Request::get("/").header("host", HOST).body(empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let response =
        sender.send_request(Request::get("/slow").header("host", HOST).body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

/// hyper's header-read timeout, kept by the connection's watch instead of a timer per head.
#[tokio::test]
async fn a_client_that_stalls_in_its_request_head_is_closed_at_the_header_read_timeout() {
    let mut config = test_config();
    config.header_read_timeout = Duration::from_millis(300);
    let s = setup_with(instance(hello()), TIMEOUT, config).await;
    let mut stream = tokio::net::TcpStream::connect(s.harness.addr).await.unwrap();
    stream.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: ").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was not closed");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "closed after {elapsed:?}");
}

#[tokio::test]
async fn instance_closing_the_connection_mid_request_gets_502() {
    let instance = raw_instance(|mut stream| async move {
        stream.write_all(&[1]).await.unwrap();
        // Read the request head, then hang up without answering.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    });
    let s = setup_with(instance, TIMEOUT, test_config()).await;
    let (parts, body) = s.harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&body).contains("closed the connection"));
    s.backend.wait_idle().await;
}

#[tokio::test]
async fn an_instance_that_hangs_up_idle_connections_still_gets_every_request() {
    // Answers one request per connection, as keep-alive, then closes it: the idle connection
    // the frontend kept is dead by the next request, which must go out on a new one.
    let instance = raw_instance(|mut stream| async move {
        stream.write_all(&[1]).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    });
    let s = setup_with(instance, TIMEOUT, test_config()).await;
    for i in 0..5 {
        let (parts, body) = s.harness.get(HOST, &format!("/{i}")).await;
        assert_eq!((parts.status, body.as_ref()), (StatusCode::OK, b"ok".as_ref()), "request {i}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.instance.accepted(), 5);
    s.backend.wait_idle().await;
}

#[tokio::test]
async fn nothing_listening_on_the_port_gets_503() {
    // The channel answers 0: the sandbox is up but the workload does not listen.
    let instance = raw_instance(|mut stream| async move {
        let _ = stream.write_all(&[0]).await;
    });
    let s = setup_with(instance, TIMEOUT, test_config()).await;
    let (parts, body) = s.harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("not accepting connections"));

    // The channel socket is gone altogether.
    let gone = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new("gone", gone.path().to_path_buf());
    let harness = Harness::start(vec![(HOST, route("svc", backend.clone(), TIMEOUT))], test_config()).await;
    let (parts, _) = harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    backend.wait_idle().await;
    s.backend.wait_idle().await;
}

#[tokio::test]
async fn a_64_mib_upload_streams_through() {
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                }
            }
            Response::new(full(total.to_string()))
        })
    });
    let s = setup(handler, TIMEOUT).await;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 256;
    // No Content-Length: the body goes chunked both hops, so nothing can size a buffer for it.
    let request = Request::post("/upload").header("host", HOST).body(repeat_body(CHUNK, CHUNKS)).unwrap();
    let (parts, body) = s.harness.send(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, (CHUNK * CHUNKS).to_string());
    let records = s.harness.log.wait_for(1).await;
    let size: usize = records[0].http_request.request_size.parse().unwrap();
    assert!(size > CHUNK * CHUNKS, "request size {size}");
    s.backend.wait_idle().await;
}

#[tokio::test]
async fn server_sent_events_stream_and_the_lease_is_held_until_the_end() {
    // The handler hands the test the sender of each response body it starts.
    let (feed, mut events) = tokio::sync::mpsc::channel::<tokio::sync::mpsc::Sender<Bytes>>(1);
    let handler: Handler = Arc::new(move |_| {
        let feed = feed.clone();
        Box::pin(async move {
            let (tx, body) = channel_body();
            feed.send(tx).await.unwrap();
            Response::builder().header("content-type", "text/event-stream").body(body).unwrap()
        })
    });
    let s = setup(handler, TIMEOUT).await;
    let mut client = s.harness.connect().await;
    let request = Request::get("/events").header("host", HOST).body(empty()).unwrap();
    let response = tokio::spawn(client.send_request(request));
    let tx = events.recv().await.unwrap();
    tx.send(Bytes::from_static(b"data: first\n\n")).await.unwrap();

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    // The first event arrived while the instance has not yet sent the last: it streamed, and
    // the request still holds its slot.
    assert_eq!(s.backend.outstanding(), 1);

    tx.send(Bytes::from_static(b"data: last\n\n")).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.unwrap().unwrap().to_bytes();
    assert_eq!(rest, "data: last\n\n");
    s.backend.wait_idle().await;
    let records = s.harness.log.wait_for(1).await;
    let size: usize = records[0].http_request.response_size.parse().unwrap();
    assert!(size > 26, "response size {size}");
}

#[tokio::test]
async fn a_streaming_response_is_cut_at_the_request_timeout() {
    let handler: Handler = Arc::new(|_| {
        Box::pin(async {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"data: first\n\n")).await.unwrap();
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(tx);
            });
            Response::new(body)
        })
    });
    let s = setup(handler, Duration::from_millis(400)).await;
    let started = Instant::now();
    let mut client = s.harness.connect().await;
    let request = Request::get("/events").header("host", HOST).body(empty()).unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    let cut = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap();
    assert!(matches!(cut, Some(Err(_))), "stream should be cut, got {cut:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    s.backend.wait_idle().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_releases_its_slot() {
    let handler: Handler = Arc::new(|_| Box::pin(async { Response::new(repeat_body(1 << 20, 256)) }));
    let config = FrontendConfig { client_stall_timeout: Duration::from_millis(300), ..test_config() };
    let s = setup_with(instance(handler), TIMEOUT, config).await;
    let mut stream = tokio::net::TcpStream::connect(s.harness.addr).await.unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nHost: svc.example.com\r\n\r\n").await.unwrap();
    // Never read: socket buffers fill, the frontend's writes block, the stall limit ends it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while s.backend.outstanding() > 0 || s.backend.acquired.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the lease of an unread response was not released");
    drop(stream);
}

#[tokio::test]
async fn request_log_record_describes_the_request() {
    let handler: Handler = Arc::new(|_| {
        Box::pin(async { Response::builder().status(StatusCode::CREATED).body(full("created!")).unwrap() })
    });
    let s = setup(handler, TIMEOUT).await;
    let request = Request::post("/items?color=blue")
        .header("host", "Svc.Example.com:8080")
        .header("user-agent", "curl/8.5.0")
        .header("content-length", "5")
        .body(full("12345"))
        .unwrap();
    let (parts, _) = s.harness.send(request).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(s.instance.last_seen().method, "POST");
    let records = s.harness.log.wait_for(1).await;
    let r = &records[0];
    assert_eq!(r.request_id, parts.headers["x-runnel-request-id"].to_str().unwrap());
    assert_eq!((&*r.region, &*r.service), ("europe-west1", "svc"));
    assert_eq!((&*r.revision, &*r.instance), ("svc-00001-abc", "svc-00001-abc-x1"));
    let h = &r.http_request;
    assert_eq!(h.request_method, "POST");
    assert_eq!(h.request_url, "http://Svc.Example.com:8080/items?color=blue");
    assert_eq!(h.status, 201);
    assert_eq!(h.user_agent, "curl/8.5.0");
    assert_eq!(h.remote_ip, "127.0.0.1");
    assert_eq!(h.protocol, "HTTP/1.1");
    assert!(h.request_size.parse::<u64>().unwrap() > 5);
    assert!(h.response_size.parse::<u64>().unwrap() > 8);
    assert!(h.latency.ends_with('s') && h.latency.trim_end_matches('s').parse::<f64>().is_ok(), "{}", h.latency);
    assert!(time::OffsetDateTime::parse(&r.timestamp, &time::format_description::well_known::Rfc3339).is_ok());
    // The JSON shape is Cloud Logging's.
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["httpRequest"]["requestMethod"], "POST");
    assert_eq!(json["httpRequest"]["responseSize"], &*h.response_size);
}

#[tokio::test]
async fn a_user_agent_that_is_not_utf8_is_logged_lossily_and_the_rest_of_the_record_intact() {
    let handler: Handler = Arc::new(|_| Box::pin(async { Response::new(full("ok")) }));
    let s = setup(handler, TIMEOUT).await;
    let request = Request::get("/caf%C3%A9")
        .header("host", "svc.example.com")
        .header("user-agent", hyper::header::HeaderValue::from_bytes(b"bot \xff\xfe/1").unwrap())
        .body(empty())
        .unwrap();
    let (parts, _) = s.harness.send(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let records = s.harness.log.wait_for(1).await;
    let r = &records[0];
    assert_eq!(r.http_request.user_agent, "bot \u{fffd}\u{fffd}/1");
    assert_eq!(r.http_request.request_url, "http://svc.example.com/caf%C3%A9");
    assert_eq!(r.request_id, parts.headers["x-runnel-request-id"].to_str().unwrap());
    assert_eq!(r.http_request.remote_ip, "127.0.0.1");
    assert!(time::OffsetDateTime::parse(&r.timestamp, &time::format_description::well_known::Rfc3339).is_ok());
    assert!(r.http_request.latency.ends_with('s'), "{}", r.http_request.latency);
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    let handler: Handler = Arc::new(|mut req: Request<Incoming>| {
        Box::pin(async move {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 4];
                io.read_exact(&mut buf).await.unwrap();
                io.write_all(&buf).await.unwrap();
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(empty())
                .unwrap()
        })
    });
    let s = setup(handler, TIMEOUT).await;
    let mut client = s.harness.connect().await;
    let request = Request::get("/ws")
        .header("host", HOST)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let mut response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(response.headers()["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let seen = s.instance.last_seen().headers;
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");

    let mut io = TokioIo::new(hyper::upgrade::on(&mut response).await.unwrap());
    io.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(s.backend.outstanding(), 1, "the tunnel holds its slot");
    drop(io);
    s.backend.wait_idle().await;
    let records = s.harness.log.wait_for(1).await;
    assert_eq!(records[0].http_request.status, 101);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let handler: Handler = Arc::new(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(full("finished"))
        })
    });
    let mut s = setup(handler, TIMEOUT).await;
    let mut client = s.harness.connect().await;
    let request = Request::get("/slow").header("host", HOST).body(empty()).unwrap();
    let in_flight = tokio::spawn(async move {
        let response = client.send_request(request).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    });
    while s.backend.acquired.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let serve = s.harness.shutdown();
    assert_eq!(in_flight.await.unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(3), serve).await.expect("serve did not return").unwrap();
    assert!(tokio::net::TcpStream::connect(s.harness.addr).await.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn http_1_0_clients_get_responses_they_can_read() {
    let handler: Handler = Arc::new(|_| {
        Box::pin(async {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"streamed")).await.unwrap();
            });
            Response::new(body)
        })
    });
    let s = setup(handler, TIMEOUT).await;
    let response = s.harness.raw("GET /stream HTTP/1.0\r\nHost: svc.example.com\r\n\r\n").await;
    // No chunked framing for a 1.0 client: the body is delimited by closing the connection.
    assert!(!response.to_ascii_lowercase().contains("transfer-encoding"), "{response}");
    assert!(response.ends_with("\r\n\r\nstreamed"), "{response}");
    // The instance was still spoken to in HTTP/1.1, so its connection stays pooled.
    let (parts, _) = s.harness.get(HOST, "/again").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(s.instance.accepted(), 1);
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_frontend() {
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(full(body))
        })
    });
    let s = setup(handler, TIMEOUT).await;
    let mut stream = tokio::net::TcpStream::connect(s.harness.addr).await.unwrap();
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: svc.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim)).await.unwrap().unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut rest)).await.unwrap().unwrap();
    assert!(rest.starts_with("HTTP/1.1 200 OK") && rest.ends_with("hello"), "{rest}");
    assert!(!s.instance.last_seen().headers.contains_key("expect"));
}

#[tokio::test]
async fn asterisk_form_options_reaches_the_instance() {
    let s = setup(hello(), TIMEOUT).await;
    let response = s.harness.raw("OPTIONS * HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let seen = s.instance.last_seen();
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("OPTIONS", "*"));
}

/// A route for `svc` with the given ingress settings, on a fresh frontend.
async fn setup_ingress(ingress: Ingress, default_uri_disabled: bool) -> (Harness, Arc<FakeBackend>, Instance) {
    let instance = instance(hello());
    let backend = FakeBackend::new("svc-00001-abc-x1", instance.dir());
    let base = route("svc", backend.clone(), TIMEOUT);
    let r = Arc::new(Route {
        project: base.project.clone(),
        project_number: base.project_number.clone(),
        region: base.region.clone(),
        service: base.service.clone(),
        revision: base.revision.clone(),
        timeout: base.timeout,
        backend: backend.clone(),
        ingress,
        default_uri_disabled,
        invoker: Arc::new(AllowAll),
    });
    (Harness::start(vec![(HOST, r)], test_config()).await, backend, instance)
}

#[tokio::test]
async fn internal_ingress_refuses_everything_arriving_on_the_frontend_whatever_it_claims() {
    for ingress in [Ingress::InternalOnly, Ingress::InternalLoadBalancer] {
        let (harness, backend, _instance) = setup_ingress(ingress, false).await;
        // Headers that claim an internal or trusted origin change nothing.
        let spoofs = [
            ("x-forwarded-for", "10.8.0.2"),
            ("forwarded", "for=10.8.0.2;proto=https"),
            ("x-real-ip", "10.8.0.2"),
            ("via", "1.1 vpc-connector"),
            ("x-runnel-origin", "vpc"),
            ("x-serverless-authorization", "Bearer x"),
        ];
        for (name, value) in spoofs {
            let req = Request::get("/").header("host", HOST).header(name, value).body(empty()).unwrap();
            let (parts, body) = harness.send(req).await;
            assert_eq!(parts.status, StatusCode::NOT_FOUND, "{ingress:?} with {name}");
            let body = String::from_utf8(body.to_vec()).unwrap();
            assert!(body.contains("404 Page not found"), "{body}");
            assert!(parts.headers.contains_key("x-runnel-request-id"), "the refusal carries a request id");
        }
        // Refused before any instance is involved, and not in the service's request log, but in
        // the refusal log with its reason.
        assert_eq!(backend.acquired.load(Ordering::SeqCst), 0, "{ingress:?}");
        assert!(harness.log.records().is_empty(), "{ingress:?}");
        let refusals = harness.log.1.lock().unwrap().clone();
        assert_eq!(refusals.len(), spoofs.len());
        let want = match ingress {
            Ingress::InternalOnly => "ingress.internal_only.from_internet",
            _ => "ingress.internal_and_cloud_load_balancing.from_internet",
        };
        for r in &refusals {
            assert_eq!((r.stage, r.reason.as_str(), r.caller.as_deref()), ("ingress", want, None));
            assert_eq!(r.target, "europe-west1/svc");
        }
    }
}

#[tokio::test]
async fn a_disabled_default_url_answers_404_and_ingress_all_admits() {
    let (harness, backend, _instance) = setup_ingress(Ingress::All, true).await;
    let (parts, _) = harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(backend.acquired.load(Ordering::SeqCst), 0);

    let (harness, backend, _instance) = setup_ingress(Ingress::All, false).await;
    let (parts, _) = harness.get(HOST, "/").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(backend.acquired.load(Ordering::SeqCst), 1);
}
