//! Bookkeeping for one routed request: its id, its lease, and the request-log record written
//! when it is over.
//!
//! The record is written when the response has been fully sent (or abandoned), because only
//! then are the response size and the latency known — Cloud Logging's `latency` runs until the
//! response is sent. The text the record takes from the request (URL, user agent, client
//! address) is copied into one buffer when the exchange starts; the rest is appended to it at
//! the end. The record is built and written once per request on the frontend's thread, so its
//! text is made by hand (timestamp, numbers, the JSON line itself) rather than through `fmt` and
//! the `time` crate's formatter, which cost as much as a good part of the proxying.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hyper::header::{HeaderValue, USER_AGENT};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Version};

use crate::contract::{HttpRequest, Lease, RequestLog, RequestRecord, Route};
use crate::headers::{Peer, head_size};

/// A random 128-bit request id in lowercase hex, the shape of a Cloud Trace id.
#[derive(Clone, Copy)]
pub(crate) struct RequestId([u8; 32]);

impl RequestId {
    pub(crate) fn random() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n: u128 = rand::random();
        let mut out = [0u8; 32];
        for digit in out.iter_mut().rev() {
            *digit = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        RequestId(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Always hex digits; the fallback only satisfies the types.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).unwrap_or(HeaderValue::from_static("0"))
    }
}

/// One routed request from the moment it was routed until its response is done.
pub(crate) struct Exchange {
    log: Arc<dyn RequestLog>,
    route: Arc<Route>,
    /// The instance slot; released when the exchange is finished, i.e. after the response
    /// body has been streamed or abandoned.
    pub(crate) lease: Option<Lease>,
    started: Instant,
    at: SystemTime,
    pub(crate) id: RequestId,
    method: Method,
    /// The record's text taken from the request, copied once into one buffer that the rest of
    /// the record is appended to when it is written: `http://` and the authority (which the
    /// frontend also forwards as `Host`), the path, the user agent, the client's address.
    /// Keeping the request's own values instead (shared buffers) cost an atomic reference
    /// count update for each, twice per request. Bytes, checked as UTF-8 once when the record
    /// is written: a header's bytes need not be UTF-8, and one check of the whole line costs a
    /// fraction of one per field.
    text: Vec<u8>,
    authority: std::ops::Range<usize>,
    url: std::ops::Range<usize>,
    user_agent: std::ops::Range<usize>,
    remote: std::ops::Range<usize>,
    version: Version,
    request_head: u64,
    /// Request body bytes read so far, shared with the body on its way to the instance.
    pub(crate) request_body: Option<Arc<AtomicU64>>,
    pub(crate) status: u16,
    pub(crate) response_head: u64,
}

/// What [`Exchange::finish`] appends to the text: a timestamp, the request id, two sizes and a
/// latency.
const FINISH_TEXT: usize = 128;

impl Exchange {
    /// `authority` is the one the request was routed by, so it is a valid host (ASCII).
    pub(crate) fn new<B>(
        log: Arc<dyn RequestLog>,
        route: Arc<Route>,
        started: Instant,
        id: RequestId,
        request: &Request<B>,
        authority: &[u8],
        peer: &Peer,
    ) -> Exchange {
        let uri = request.uri();
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len() + uri.scheme_str().map_or(0, |s| s.len() + 3));
        // Method, target and `HTTP/1.1` with the two spaces between them.
        let start_line = request.method().as_str().len() + target + 10;
        let user_agent = request.headers().get(USER_AGENT).map_or(&[][..], HeaderValue::as_bytes);
        let remote = peer.ip_text().as_bytes();
        let mut text =
            Vec::with_capacity(7 + authority.len() + path.len() + user_agent.len() + remote.len() + FINISH_TEXT);
        text.extend_from_slice(b"http://");
        let authority = push_range(&mut text, authority);
        text.extend_from_slice(path.as_bytes());
        let url = 0..text.len();
        let user_agent = push_range(&mut text, user_agent);
        let remote = push_range(&mut text, remote);
        Exchange {
            log,
            route,
            lease: None,
            started,
            at: SystemTime::now(),
            id,
            method: request.method().clone(),
            text,
            authority,
            url,
            user_agent,
            remote,
            version: request.version(),
            request_head: head_size(start_line, request.headers()),
            request_body: None,
            status: 0,
            response_head: 0,
        }
    }

    pub(crate) fn route(&self) -> &Route {
        &self.route
    }

    /// The request goes to another revision of the same service (its own stopped serving while
    /// the request waited); the record names the one that serves it.
    pub(crate) fn reroute(&mut self, route: Arc<Route>) {
        self.route = route;
    }

    pub(crate) fn instance(&self) -> &str {
        self.lease.as_ref().map_or("", Lease::instance)
    }

    /// The authority the client asked for, as it is forwarded in `Host`.
    pub(crate) fn authority(&self) -> &[u8] {
        self.text.get(self.authority.clone()).unwrap_or_default()
    }

    /// Writes the request-log record and releases the lease.
    pub(crate) fn finish(self, request_body: u64, response_body: u64) {
        self.finish_at(Instant::now(), request_body, response_body);
    }

    /// [`Exchange::finish`] for a request that ended at `now`.
    pub(crate) fn finish_at(mut self, now: Instant, request_body: u64, response_body: u64) {
        let latency = now.saturating_duration_since(self.started);
        let request_body = self.request_body.as_ref().map_or(request_body, |n| n.load(Ordering::Relaxed));
        // The rest of the record's text, appended to what the request gave.
        let mut made = std::mem::take(&mut self.text);
        let timestamp = push_with(&mut made, |t| push_rfc3339(t, self.at));
        let request_id = push_range(&mut made, &self.id.0);
        let request_size = push_with(&mut made, |t| push_decimal(t, self.request_head + request_body));
        let response_size = push_with(&mut made, |t| push_decimal(t, self.response_head + response_body));
        let latency = push_with(&mut made, |t| push_latency(t, latency));
        // What runnel wrote is ASCII; what the request gave nearly always is. One check of the
        // whole text, and a field is cut from it where characters begin (as `str::get`
        // checks); only a text that fails it is converted field by field, lossily, as
        // `from_utf8_lossy` would convert that header.
        let checked = std::str::from_utf8(&made);
        let text = |range: std::ops::Range<usize>| match checked {
            Ok(all) => Cow::Borrowed(all.get(range).unwrap_or_default()),
            Err(_) => String::from_utf8_lossy(made.get(range).unwrap_or_default()),
        };
        let record = RequestRecord {
            timestamp: text(timestamp),
            request_id: text(request_id),
            region: Cow::Borrowed(&self.route.region),
            service: Cow::Borrowed(&self.route.service),
            revision: Cow::Borrowed(&self.route.revision),
            instance: Cow::Borrowed(self.instance()),
            http_request: HttpRequest {
                request_method: Cow::Borrowed(self.method.as_str()),
                request_url: text(self.url.clone()),
                request_size: text(request_size),
                status: self.status,
                response_size: text(response_size),
                user_agent: text(self.user_agent.clone()),
                remote_ip: text(self.remote.clone()),
                latency: text(latency),
                protocol: Cow::Borrowed(protocol(self.version)),
            },
        };
        self.log.record(record);
        // `self.lease` drops here, after the record: the slot is free only once the request
        // is accounted for.
    }
}

/// Appends `part` to `text`, returning where it is.
fn push_range(text: &mut Vec<u8>, part: &[u8]) -> std::ops::Range<usize> {
    let start = text.len();
    text.extend_from_slice(part);
    start..text.len()
}

/// Appends what `write` writes to `text`, returning where it is.
fn push_with(text: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> std::ops::Range<usize> {
    let start = text.len();
    write(text);
    start..text.len()
}

impl RequestRecord<'_> {
    /// The record as one line of JSON, newline included, appended to `out`: the same JSON as
    /// its `Serialize` form, written directly (the request log writes one per request).
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        let h = &self.http_request;
        // Each literal closes the previous string and opens the next one, so a field costs two
        // appends rather than four; one reservation covers a typical line.
        out.reserve(320 + h.request_url.len() + h.user_agent.len());
        out.extend_from_slice(b"{\"timestamp\":\"");
        json_text(out, &self.timestamp);
        out.extend_from_slice(b"\",\"requestId\":\"");
        json_text(out, &self.request_id);
        out.extend_from_slice(b"\",\"region\":\"");
        json_text(out, &self.region);
        out.extend_from_slice(b"\",\"service\":\"");
        json_text(out, &self.service);
        out.extend_from_slice(b"\",\"revision\":\"");
        json_text(out, &self.revision);
        out.extend_from_slice(b"\",\"instance\":\"");
        json_text(out, &self.instance);
        out.extend_from_slice(b"\",\"httpRequest\":{\"requestMethod\":\"");
        json_text(out, &h.request_method);
        out.extend_from_slice(b"\",\"requestUrl\":\"");
        json_text(out, &h.request_url);
        out.extend_from_slice(b"\",\"requestSize\":\"");
        json_text(out, &h.request_size);
        out.extend_from_slice(b"\",\"status\":");
        let mut status = [0u8; 20];
        out.extend_from_slice(decimal_digits(&mut status, u64::from(h.status)));
        out.extend_from_slice(b",\"responseSize\":\"");
        json_text(out, &h.response_size);
        out.extend_from_slice(b"\",\"userAgent\":\"");
        json_text(out, &h.user_agent);
        out.extend_from_slice(b"\",\"remoteIp\":\"");
        json_text(out, &h.remote_ip);
        out.extend_from_slice(b"\",\"latency\":\"");
        json_text(out, &h.latency);
        out.extend_from_slice(b"\",\"protocol\":\"");
        json_text(out, &h.protocol);
        out.extend_from_slice(b"\"}}\n");
    }
}

/// `text` as the inside of a JSON string, escaped as serde_json escapes. Inlined: a record
/// has fourteen fields, nearly all of them short and in need of no escape.
#[inline(always)]
fn json_text(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if needs_escape(bytes) {
        json_escaped(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
}

/// [`json_text`] for a text that needs an escape: runs that need none are copied whole.
#[cold]
fn json_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether a JSON string would need an escape for any of `bytes`: a control character, `"` or
/// `\`. Every field of every record is scanned (what runnel wrote itself too: fail closed), so
/// the scan takes eight bytes at a time; byte by byte it was the record's largest cost.
#[inline(always)]
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The classic word-at-a-time tests: `(w - n·ONES) & !w & HIGHS` is non-zero exactly when
    // some byte of `w` is below `n` (for n ≤ 0x80), and a byte equals `c` where `w ^ c·ONES`
    // has a zero byte. Bytes from 0x80 up (UTF-8 beyond ASCII) never match.
    let word = |w: u64| {
        let below = |w: u64, n: u64| w.wrapping_sub(n * ONES) & !w;
        let quote = w ^ (u64::from(b'"') * ONES);
        let slash = w ^ (u64::from(b'\\') * ONES);
        (below(w, 0x20) | below(quote, 1) | below(slash, 1)) & HIGHS != 0
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut any = false;
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        any |= word(u64::from_le_bytes(w));
    }
    // The last few bytes one by one (copying them into a padded word cost a `memcpy` call).
    chunks.remainder().iter().fold(any, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\'))
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Text this module made: ASCII digits and separators, so always UTF-8.
fn ascii(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
fn format_latency(d: Duration) -> String {
    let mut out = Vec::new();
    push_latency(&mut out, d);
    ascii(out)
}

/// Appends a duration as Cloud Logging writes one: seconds with 0, 3, 6 or 9 fractional
/// digits and an `s` (the protobuf JSON form).
fn push_latency(out: &mut Vec<u8>, d: Duration) {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    push_decimal(out, secs);
    let digits = if nanos == 0 {
        0
    } else if nanos % 1_000_000 == 0 {
        3
    } else if nanos % 1_000 == 0 {
        6
    } else {
        9
    };
    push_fraction(out, nanos, digits);
    out.push(b's');
}

/// Now, as Cloud Logging writes timestamps.
pub(crate) fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

/// A point in time in RFC 3339 form, UTC, with as many fractional digits as it needs (none,
/// or up to nine without trailing zeros), as the `time` crate writes it.
fn rfc3339(at: SystemTime) -> String {
    let mut out = Vec::with_capacity(30);
    push_rfc3339(&mut out, at);
    ascii(out)
}

thread_local! {
    /// The second the last timestamp on this thread fell in, and its text up to the seconds'
    /// digits: the frontend writes thousands of timestamps a second, all in the same few.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// [`rfc3339`], appended to `out`.
fn push_rfc3339(out: &mut Vec<u8>, at: SystemTime) {
    /// 10000-01-01T00:00:00Z: years from here on do not fit four digits.
    const YEAR_10000: u64 = 253_402_300_800;
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let date = |text: &mut [u8; 19]| {
        let (year, month, day) = civil_from_days(secs / 86_400);
        put_date(text, year, month, day, secs % 86_400);
        year
    };
    if secs >= YEAR_10000 {
        // Written whole, and not kept.
        let mut text = *b"0000-00-00T00:00:00";
        push_decimal(out, date(&mut text));
        out.extend_from_slice(&text[4..]);
    } else {
        let (last, mut text) = LAST_SECOND.get();
        if last != secs {
            text = *b"0000-00-00T00:00:00";
            date(&mut text);
            LAST_SECOND.set((secs, text));
        }
        out.extend_from_slice(&text);
    }
    let nanos = since.subsec_nanos();
    if nanos != 0 {
        // As many fractional digits as needed: trailing zeros go.
        let mut fraction = *b".000000000";
        put_digits(&mut fraction[1..], u64::from(nanos));
        let mut end = fraction.len();
        while fraction[end - 1] == b'0' {
            end -= 1;
        }
        out.extend_from_slice(&fraction[..end]);
    }
    out.push(b'Z');
}

/// The date and time of day into `text`, shaped `0000-00-00T00:00:00`: every field has a fixed
/// width, so the digits go straight to their places (a push per digit cost more than the date
/// arithmetic).
fn put_date(text: &mut [u8; 19], year: u64, month: u64, day: u64, day_secs: u64) {
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    put_digits(&mut text[11..13], day_secs / 3600);
    put_digits(&mut text[14..16], day_secs / 60 % 60);
    put_digits(&mut text[17..19], day_secs % 60);
}

/// The last `dst.len()` decimal digits of `n`, zero-padded, into `dst`.
fn put_digits(dst: &mut [u8], mut n: u64) {
    for digit in dst.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `n` in decimal.
#[cfg(test)]
fn decimal(n: u64) -> String {
    let mut out = Vec::with_capacity(20);
    push_decimal(&mut out, n);
    ascii(out)
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(decimal_digits(&mut buf, n));
}

/// `n` in decimal, written into the end of `buf` (20 digits hold any `u64`).
fn decimal_digits(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

/// A dot and the first `digits` (0–9) digits of `nanos` as a nine-digit fraction.
fn push_fraction(out: &mut Vec<u8>, nanos: u32, digits: u32) {
    if digits == 0 {
        return;
    }
    let mut fraction = *b".000000000";
    let end = 1 + digits as usize;
    put_digits(&mut fraction[1..end], u64::from(nanos / 10u32.pow(9 - digits)));
    out.extend_from_slice(&fraction[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_uses_protobuf_duration_form() {
        assert_eq!(format_latency(Duration::from_secs(2)), "2s");
        assert_eq!(format_latency(Duration::from_millis(12)), "0.012s");
        assert_eq!(format_latency(Duration::from_micros(1_500_001)), "1.500001s");
        assert_eq!(format_latency(Duration::from_nanos(7)), "0.000000007s");
    }

    #[test]
    fn timestamps_are_what_the_time_crate_writes() {
        use time::OffsetDateTime;
        use time::format_description::well_known::Rfc3339;
        let base = SystemTime::UNIX_EPOCH;
        for (secs, nanos) in [
            (0, 0),
            (951_782_400, 5),             // 2000-02-29
            (1_795_000_000, 120_000_000), // 2026
            (4_102_444_799, 999_999_999), // 2099-12-31T23:59:59
            (1_709_251_199, 100),         // 2024-02-29T23:59:59
            (1_234_567_890, 123_456_000),
        ] {
            let at = base + Duration::new(secs, nanos);
            let expected = OffsetDateTime::from(at).format(&Rfc3339).unwrap();
            assert_eq!(rfc3339(at), expected);
        }
        assert_eq!(decimal(0), "0");
        assert_eq!(decimal(u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn the_json_line_is_the_records_serde_form() {
        fn record<'a>(user_agent: &'a str, url: &'a str) -> RequestRecord<'a> {
            RequestRecord {
                timestamp: "2026-11-29T15:52:00.1Z".into(),
                request_id: "0123456789abcdef0123456789abcdef".into(),
                region: "local1".into(),
                service: "svc".into(),
                revision: "svc-00001-abc".into(),
                instance: "".into(),
                http_request: crate::contract::HttpRequest {
                    request_method: "GET".into(),
                    request_url: url.into(),
                    request_size: "77".into(),
                    status: 204,
                    response_size: "0".into(),
                    user_agent: user_agent.into(),
                    remote_ip: "::1".into(),
                    latency: "0.000123s".into(),
                    protocol: "HTTP/1.1".into(),
                },
            }
        }
        for (ua, url) in [
            ("curl/8.0", "http://svc/"),
            ("quote \" back\\slash \u{1} \u{1f} \n\r\t\u{8}\u{c} \u{7f} é 😀", "http://svc/a?b=\"c\""),
            ("", ""),
        ] {
            let r = record(ua, url);
            let mut line = Vec::new();
            r.write_json_line(&mut line);
            let mut expected = serde_json::to_vec(&r).unwrap();
            expected.push(b'\n');
            assert_eq!(String::from_utf8(line).unwrap(), String::from_utf8(expected).unwrap());
        }
    }

    #[test]
    fn the_word_at_a_time_scan_finds_exactly_the_bytes_json_escapes() {
        let naive = |bytes: &[u8]| bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        // Every byte value at every position of texts of every length up to three words, in a
        // text of bytes that need no escape (ASCII and beyond: 0x20, 0x7f, 0x80, 0xff).
        for filler in [b'a', b' ', 0x7f, 0x80, 0xff] {
            for len in 0..=24 {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut text = vec![filler; len];
                        text[at] = b;
                        assert_eq!(needs_escape(&text), naive(&text), "{text:?}");
                    }
                }
                assert!(!needs_escape(&vec![filler; len]));
            }
        }
    }

    #[test]
    fn timestamps_within_one_second_share_its_text_and_keep_their_own_fraction() {
        let base = SystemTime::UNIX_EPOCH + Duration::new(1_795_000_000, 0);
        assert_eq!(rfc3339(base + Duration::from_nanos(250_000_000)), "2026-11-18T11:06:40.25Z");
        assert_eq!(rfc3339(base + Duration::from_nanos(999_999_999)), "2026-11-18T11:06:40.999999999Z");
        assert_eq!(rfc3339(base + Duration::from_secs(1)), "2026-11-18T11:06:41Z");
        assert_eq!(rfc3339(base), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800)), "10000-01-01T00:00:00Z");
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (RequestId::random(), RequestId::random());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.header_value(), a.as_str());
    }
}
