//! Bookkeeping for one routed request: its id, its lease, and the request-log record written
//! when it is over.
//!
//! The record is written when the response has been fully sent (or abandoned), because only
//! then are the response size and the latency known — Cloud Logging's `latency` runs until the
//! response is sent. Strings for the record are built only then; until that point the exchange
//! holds cheap clones of what the request already had.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::header::{HeaderValue, USER_AGENT};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Version};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::contract::{HttpRequest, Lease, RequestLog, RequestRecord, Route};
use crate::headers::head_size;

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
    at: OffsetDateTime,
    pub(crate) id: RequestId,
    method: Method,
    authority: HeaderValue,
    path: Option<PathAndQuery>,
    user_agent: Option<HeaderValue>,
    remote: IpAddr,
    version: Version,
    request_head: u64,
    /// Request body bytes read so far, shared with the body on its way to the instance.
    pub(crate) request_body: Option<Arc<AtomicU64>>,
    pub(crate) status: u16,
    pub(crate) response_head: u64,
}

impl Exchange {
    pub(crate) fn new<B>(
        log: Arc<dyn RequestLog>,
        route: Arc<Route>,
        started: Instant,
        id: RequestId,
        request: &Request<B>,
        authority: HeaderValue,
        remote: IpAddr,
    ) -> Exchange {
        let uri = request.uri();
        let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len() + uri.scheme_str().map_or(0, |s| s.len() + 3));
        // Method, target and `HTTP/1.1` with the two spaces between them.
        let start_line = request.method().as_str().len() + target + 10;
        Exchange {
            log,
            route,
            lease: None,
            started,
            at: OffsetDateTime::now_utc(),
            id,
            method: request.method().clone(),
            authority,
            path: uri.path_and_query().cloned(),
            user_agent: request.headers().get(USER_AGENT).cloned(),
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

    pub(crate) fn instance(&self) -> &str {
        self.lease.as_ref().map_or("", |l| l.instance.as_str())
    }

    /// Writes the request-log record and releases the lease.
    pub(crate) fn finish(self, request_body: u64, response_body: u64) {
        let latency = self.started.elapsed();
        let request_body = self.request_body.as_ref().map_or(request_body, |n| n.load(Ordering::Relaxed));
        let path = self.path.as_ref().map_or("/", PathAndQuery::as_str);
        let record = RequestRecord {
            timestamp: self.at.format(&Rfc3339).unwrap_or_default(),
            request_id: self.id.as_str().to_owned(),
            region: self.route.region.clone(),
            service: self.route.service.clone(),
            revision: self.route.revision.clone(),
            instance: self.instance().to_owned(),
            http_request: HttpRequest {
                request_method: self.method.as_str().to_owned(),
                request_url: format!("http://{}{path}", String::from_utf8_lossy(self.authority.as_bytes())),
                request_size: (self.request_head + request_body).to_string(),
                status: self.status,
                response_size: (self.response_head + response_body).to_string(),
                user_agent: self
                    .user_agent
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default(),
                remote_ip: self.remote.to_string(),
                latency: format_latency(latency),
                protocol: protocol(self.version).to_owned(),
            },
        };
        self.log.record(record);
        // `self.lease` drops here, after the record: the slot is free only once the request
        // is accounted for.
    }
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

/// A duration as Cloud Logging writes one: seconds with 0, 3, 6 or 9 fractional digits and
/// an `s` (the protobuf JSON form).
pub(crate) fn format_latency(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos == 0 {
        format!("{secs}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{secs}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{secs}.{:06}s", nanos / 1_000)
    } else {
        format!("{secs}.{nanos:09}s")
    }
}

/// Now, as Cloud Logging writes timestamps.
pub(crate) fn timestamp() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
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
    fn request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (RequestId::random(), RequestId::random());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.header_value(), a.as_str());
    }
}
