//! The header rewriting the frontend does between a client and an instance.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and must not travel over the
//! next one; the frontend owns both connections, so it removes them both ways and frames each
//! side itself. Headers that claim who the client is (`X-Forwarded-For`, `Forwarded`,
//! `X-Real-IP`) or which request this is (`X-Request-Id`) are written by the frontend from the
//! connection it accepted, never passed on from the client, so a workload can trust them.
//!
//! The client's copies of the frontend's own request headers are removed from the map, and the
//! frontend's values ([`Forwarding`]) go straight into the encoded request head (`h1.rs`)
//! instead of into the map: inserting them cost more than the rest of the rewriting. Pure
//! functions, no I/O.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::Method;
use hyper::Version;
use hyper::header::{CONNECTION, HeaderMap, HeaderName, HeaderValue, UPGRADE};

use crate::deadline::Watch;

/// The request id as the client sees it, to quote when asking about a request.
pub(crate) const X_RUNNEL_REQUEST_ID: HeaderName = HeaderName::from_static("x-runnel-request-id");

/// The hop-by-hop headers every message loses (RFC 9110 §7.6.1, and the obsolete
/// `Keep-Alive` and `Proxy-Connection`), as lowercase names: a `match` on the name is cheaper
/// than comparing `HeaderName`s built from constants.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Request headers the instance never gets from the client, as lowercase names: `Proxy`, which
/// no HTTP/1.1 client needs and attackers set so that CGI-style workloads read it as
/// `HTTP_PROXY` ("httpoxy"); `Expect`, already answered; `X-Real-IP`, a claim only the frontend
/// may make; and every header the frontend writes itself ([`Forwarding::fields`]), so that a
/// client's copy is never sent alongside the frontend's.
fn not_forwarded(name: &str) -> bool {
    matches!(
        name,
        "proxy"
            | "expect"
            | "x-real-ip"
            | "host"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "forwarded"
            | "x-request-id"
    )
}

/// The client's address in the forms the forwarding headers need; built once per connection
/// so that requests only copy its bytes into their heads.
pub(crate) struct Peer {
    forwarded_for: HeaderValue,
    forwarded: HeaderValue,
    /// The connection's deadline watch, when the connection has one (`deadline.rs`).
    watch: Option<Arc<Watch>>,
}

impl Peer {
    pub(crate) fn new(ip: IpAddr) -> Peer {
        // A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; workloads expect
        // the IPv4 form.
        let ip = ip.to_canonical();
        let forwarded = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto=http"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
        };
        Peer { forwarded_for: value(ip.to_string()), forwarded: value(forwarded), watch: None }
    }

    /// A peer on a connection whose task runs `watch`'s [`crate::deadline::Watcher`].
    pub(crate) fn watched(ip: IpAddr, watch: Arc<Watch>) -> Peer {
        Peer { watch: Some(watch), ..Peer::new(ip) }
    }

    pub(crate) fn watch(&self) -> Option<&Watch> {
        self.watch.as_deref()
    }

    /// The client's address as text (what `X-Forwarded-For` gets), made once per connection.
    pub(crate) fn ip_text(&self) -> &HeaderValue {
        &self.forwarded_for
    }
}

fn value(text: String) -> HeaderValue {
    // An IP address always makes a valid header value; the fallback only satisfies the types.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Removes the headers that belong to one connection: `Connection` and every header it names,
/// and the fixed hop-by-hop set. `Upgrade` stays only for an upgrade being forwarded.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, |_| false);
}

/// [`strip_hop_by_hop`], also removing the names `also` picks. One pass over the names present
/// decides what goes, and only those are removed: most messages carry none of them (or only
/// `Connection: keep-alive`), and a `remove` per candidate name, each hashing it, cost more
/// than the rest of the rewriting.
fn strip(headers: &mut HeaderMap, keep_upgrade: bool, also: impl Fn(&str) -> bool) {
    let connection = headers.get_all(CONNECTION);
    // `keep-alive`, nearly every message's only `Connection` token, names a header that goes
    // anyway; only a message whose `Connection` lists something else needs its tokens matched
    // against each header name (case-insensitively; one that names no header present matches
    // nothing).
    let skipped =
        |t: &[u8]| t.eq_ignore_ascii_case(b"keep-alive") || (keep_upgrade && t.eq_ignore_ascii_case(b"upgrade"));
    let lists_names = connection.iter().flat_map(tokens).any(|t| !skipped(t));
    let named_by_connection = |name: &str| {
        lists_names
            && connection.iter().flat_map(tokens).any(|t| !skipped(t) && t.eq_ignore_ascii_case(name.as_bytes()))
    };
    // Room for the usual few without allocating; more spill into `more`.
    let mut doomed: [Option<HeaderName>; 4] = [const { None }; 4];
    let mut count = 0;
    let mut more = Vec::new();
    for name in headers.keys() {
        let text = name.as_str();
        let hop = is_hop_by_hop(text) || (text == "upgrade" && !keep_upgrade) || also(text);
        if hop || named_by_connection(text) {
            match doomed.get_mut(count) {
                Some(slot) => *slot = Some(name.clone()),
                None => more.push(name.clone()),
            }
            count += 1;
        }
    }
    for name in doomed.into_iter().flatten().chain(more) {
        headers.remove(name);
    }
}

/// The comma-separated tokens of a list header, without surrounding whitespace.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &[u8]) -> bool {
    headers.get_all(name).iter().any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
}

/// A WebSocket opening handshake (RFC 6455 §4.1): the one upgrade the frontend forwards.
pub(crate) fn wants_websocket(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    method == Method::GET
        && version == Version::HTTP_11
        && has_token(headers, UPGRADE, b"websocket")
        && has_token(headers, CONNECTION, b"upgrade")
}

/// The request headers the frontend writes itself, for the encoder to add to the client's
/// (`h1::Request::new`).
pub(crate) struct Forwarding<'a> {
    host: &'a [u8],
    peer: &'a Peer,
    request_id: &'a HeaderValue,
    websocket: bool,
}

impl<'a> Forwarding<'a> {
    /// The fields as lowercase names and values. `Host` comes first, where RFC 9112 §3.2 has
    /// clients put it (and where the client's own, now removed, usually was). Every name here
    /// is one [`prepare_request`] removes from the client's headers, so none is ever sent twice.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'static str, &'a [u8])> + Clone {
        // The client's `Connection` went with the other hop-by-hop headers; an upgrade being
        // forwarded needs one of its own.
        let upgrade = self.websocket.then_some(("connection", b"upgrade".as_slice()));
        let peer = self.peer;
        [("host", self.host)].into_iter().chain(upgrade).chain([
            ("x-forwarded-for", peer.forwarded_for.as_bytes()),
            ("x-forwarded-proto", b"http".as_slice()),
            ("forwarded", peer.forwarded.as_bytes()),
            ("x-request-id", self.request_id.as_bytes()),
        ])
    }
}

/// Rewrites a client's request headers for the instance, returning the headers the frontend
/// adds to them: `host`, the authority asked for, the client's address from `peer`,
/// `request_id`, and for a `websocket` upgrade `Connection: upgrade`.
///
/// `Expect` is dropped because the frontend already answered `100-continue` to the client
/// (hyper does when the body is first read); the instance gets the body without waiting.
/// Other client headers (`Authorization`, `traceparent`, cookies, …) pass untouched.
pub(crate) fn prepare_request<'a>(
    headers: &mut HeaderMap,
    host: &'a [u8],
    peer: &'a Peer,
    request_id: &'a HeaderValue,
    websocket: bool,
) -> Forwarding<'a> {
    strip(headers, websocket, not_forwarded);
    Forwarding { host, peer, request_id, websocket }
}

/// Rewrites an instance's response headers for the client. The request id is moved in, not
/// cloned: a clone of a header value is an atomic reference count, and the response is its
/// last use.
pub(crate) fn prepare_response(headers: &mut HeaderMap, request_id: HeaderValue, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers.insert(X_RUNNEL_REQUEST_ID, request_id);
}

/// Roughly the bytes of a message head on the wire (start line, headers, blank line), for the
/// request log's sizes; hyper does not report what it read or wrote.
pub(crate) fn head_size(start_line: usize, headers: &HeaderMap) -> u64 {
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    (start_line + 2 + fields + 2) as u64
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Empty;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    use super::*;
    use crate::h1;
    use crate::upstream::InstanceStream;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (n, v) in pairs {
            headers.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = map(&[
            ("connection", "close, X-Foo"),
            ("connection", " x-bar ,,"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("content-type", "text/plain"),
            ("x-keep", "3"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(names(&headers), ["content-type", "x-keep"]);
    }

    #[test]
    fn upgrade_survives_only_when_forwarding_an_upgrade() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(names(&headers), ["upgrade"]);
    }

    #[test]
    fn websocket_handshake_is_recognised() {
        let ws = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]);
        assert!(wants_websocket(&Method::GET, Version::HTTP_11, &ws));
        assert!(!wants_websocket(&Method::POST, Version::HTTP_11, &ws));
        assert!(!wants_websocket(&Method::GET, Version::HTTP_10, &ws));
        let h2c = map(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert!(!wants_websocket(&Method::GET, Version::HTTP_11, &h2c));
        let unannounced = map(&[("upgrade", "websocket")]);
        assert!(!wants_websocket(&Method::GET, Version::HTTP_11, &unannounced));
    }

    /// The request head an instance receives for a client's `GET /` from 192.0.2.7 carrying
    /// `client`'s headers, forwarded to `authority` (read off the socket, as the instance would).
    async fn received(client: &[(&'static str, &'static str)], authority: &'static str, websocket: bool) -> String {
        let (mut parts, ()) = hyper::Request::get("/").body(()).unwrap().into_parts();
        parts.headers = map(client);
        let peer = Peer::new("::ffff:192.0.2.7".parse().unwrap());
        let (host, id) = (HeaderValue::from_static(authority), HeaderValue::from_static("0123"));
        let forwarding = prepare_request(&mut parts.headers, host.as_bytes(), &peer, &id, websocket);
        let request = h1::Request::new(&parts, forwarding.fields(), Empty::<Bytes>::new());
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let instance = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = theirs.read(&mut buf).await.unwrap();
                assert!(n > 0, "the head ended early: {:?}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            // Dropping this end without answering ends the exchange.
            seen
        });
        let answered = h1::exchange(h1::Conn::new(InstanceStream::Channel(ours)), request, false).await;
        assert!(answered.is_err(), "an instance that closed without answering cannot have answered");
        String::from_utf8(instance.await.unwrap()).unwrap()
    }

    /// The values of every `name` field in `head`, in order.
    fn values<'h>(head: &'h str, name: &str) -> Vec<&'h str> {
        head.split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(": "))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    #[tokio::test]
    async fn client_claims_about_itself_are_replaced() {
        let head = received(
            &[
                ("host", "client.example.com"),
                ("host", "second.example.com"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "10.0.0.2"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=6.6.6.6"),
                ("x-real-ip", "6.6.6.6"),
                ("x-request-id", "mine"),
                ("proxy", "http://evil.example.com"),
                ("expect", "100-continue"),
                ("authorization", "Bearer t"),
            ],
            "svc.example.com",
            false,
        )
        .await;
        assert!(head.starts_with("GET / HTTP/1.1\r\nhost: svc.example.com\r\n"), "{head}");
        assert_eq!(values(&head, "host"), ["svc.example.com"], "{head}");
        assert_eq!(values(&head, "x-forwarded-for"), ["192.0.2.7"], "{head}");
        assert_eq!(values(&head, "x-forwarded-proto"), ["http"], "{head}");
        assert_eq!(values(&head, "forwarded"), ["for=192.0.2.7;proto=http"], "{head}");
        assert_eq!(values(&head, "x-request-id"), ["0123"], "{head}");
        assert_eq!(values(&head, "authorization"), ["Bearer t"], "{head}");
        for gone in ["client.example.com", "second.example.com", "6.6.6.6", "10.0.0.2", "https", "mine"] {
            assert!(!head.contains(gone), "{gone}: {head}");
        }
        for gone in ["x-real-ip", "proxy", "expect", "connection", "upgrade"] {
            assert!(values(&head, gone).is_empty(), "{gone}: {head}");
        }
    }

    #[test]
    fn ipv6_peer_is_quoted_in_forwarded() {
        let peer = Peer::new("2001:db8::1".parse().unwrap());
        assert_eq!(peer.forwarded, "for=\"[2001:db8::1]\";proto=http");
        assert_eq!(peer.forwarded_for, "2001:db8::1");
    }

    #[tokio::test]
    async fn a_client_cannot_use_connection_to_remove_what_the_frontend_sets() {
        let client = [
            ("connection", "host, x-forwarded-for, x-request-id, authorization"),
            ("host", "svc.example.com"),
            ("authorization", "Bearer t"),
        ];
        let head = received(&client, "svc.example.com", false).await;
        assert_eq!(values(&head, "host"), ["svc.example.com"], "{head}");
        assert_eq!(values(&head, "x-forwarded-for"), ["192.0.2.7"], "{head}");
        assert_eq!(values(&head, "x-request-id"), ["0123"], "{head}");
        // What `Connection` names of the client's own headers still goes.
        assert!(values(&head, "authorization").is_empty(), "{head}");
        assert!(values(&head, "connection").is_empty(), "{head}");
    }

    #[tokio::test]
    async fn a_websocket_upgrade_is_asked_of_the_instance_once() {
        let client = [
            ("host", "svc.example.com"),
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let head = received(&client, "svc.example.com", true).await;
        assert_eq!(values(&head, "connection"), ["upgrade"], "{head}");
        assert_eq!(values(&head, "upgrade"), ["websocket"], "{head}");
        assert_eq!(values(&head, "sec-websocket-key"), ["dGhlIHNhbXBsZSBub25jZQ=="], "{head}");
        assert_eq!(values(&head, "host"), ["svc.example.com"], "{head}");
    }

    #[test]
    fn every_header_the_frontend_writes_is_one_it_removes_from_the_client() {
        let peer = Peer::new("192.0.2.7".parse().unwrap());
        let value = HeaderValue::from_static("v");
        let forwarding = Forwarding { host: value.as_bytes(), peer: &peer, request_id: &value, websocket: true };
        let names: Vec<&str> = forwarding.fields().map(|(name, _)| name).collect();
        assert_eq!(names.len(), 6, "{names:?}");
        for name in names {
            assert!(not_forwarded(name) || is_hop_by_hop(name), "the client's `{name}` would be sent alongside");
        }
    }

    #[test]
    fn response_gets_the_request_id_and_loses_hop_by_hop_headers() {
        let mut headers = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("x-runnel-request-id", "forged"),
            ("content-type", "text/event-stream"),
        ]);
        prepare_response(&mut headers, HeaderValue::from_static("0123"), false);
        assert_eq!(names(&headers), ["content-type", "x-runnel-request-id"]);
        assert_eq!(headers["x-runnel-request-id"], "0123");
    }
}
