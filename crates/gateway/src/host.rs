//! Which host a request asks for, and its normal form for routing.
//!
//! The host is the only thing a client chooses about where its request goes, so it is parsed
//! strictly: one authority, DNS-name characters or a bracketed IPv6 literal, a numeric port.
//! Anything else is refused with 400 rather than guessed at. Pure functions, no I/O.

use hyper::header::{HOST, HeaderMap};
use hyper::http::Uri;

/// Longest host accepted: the DNS limit for a name.
pub(crate) const MAX_HOST: usize = 255;

/// Why a request cannot be routed by its host (all answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadHost {
    /// No `Host` header and no authority in the request-target.
    Missing,
    /// More than one `Host` header: which one a hop would use is ambiguous (RFC 9112 §3.2).
    Repeated,
    /// Not an authority: bad characters, userinfo, non-numeric port, empty, too long.
    Invalid,
}

/// The authority the client asked for, as it will be forwarded in `Host`.
///
/// For an absolute-form request-target the target's authority wins over `Host`
/// (RFC 9112 §3.2.2); only its authority is used, never its scheme or userinfo.
/// Borrowed from the request: the caller copies it once, into the request's record
/// (`record.rs`), which also gives it to the forwarded head.
pub(crate) fn requested_authority<'r>(uri: &'r Uri, headers: &'r HeaderMap) -> Result<&'r [u8], BadHost> {
    if let Some(authority) = uri.authority() {
        return Ok(authority.as_str().as_bytes());
    }
    let mut all = headers.get_all(HOST).iter();
    let first = all.next().ok_or(BadHost::Missing)?;
    if all.next().is_some() {
        return Err(BadHost::Repeated);
    }
    Ok(first.as_bytes())
}

/// The bytes a host name may hold (letters, digits, `-`, `.`, `_`), lowercased; 0 for any other.
const NAME_BYTE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_' {
            table[b] = c.to_ascii_lowercase();
        }
        b += 1;
    }
    table
};

/// RFC 3986 allows an empty port; more than five digits is never a port.
fn check_port(port: Option<&[u8]>) -> Result<(), BadHost> {
    match port {
        Some(port) if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) => Err(BadHost::Invalid),
        _ => Ok(()),
    }
}

/// The host in the form routes are keyed by: lowercase, without port, without one trailing
/// dot. Written into `buf` so that the request path does not allocate for it.
pub(crate) fn normalise_host<'b>(raw: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Result<&'b str, BadHost> {
    let (host, port) = if raw.first() == Some(&b'[') {
        let end = raw.iter().position(|b| *b == b']').ok_or(BadHost::Invalid)?;
        let (literal, rest) = raw.split_at(end + 1);
        let inner = &literal[1..end];
        if inner.is_empty() || !inner.iter().all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.') {
            return Err(BadHost::Invalid);
        }
        let port = match rest {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(BadHost::Invalid),
        };
        (literal, port)
    } else {
        // One pass over the name: each byte checked and lowercased through a table, straight
        // into `buf` (a per-byte `all`, a search for the colon and a copy cost three passes).
        let mut name_len = raw.len();
        let mut port = None;
        for (i, &b) in raw.iter().enumerate() {
            let lower = NAME_BYTE[usize::from(b)];
            if lower == 0 {
                if b != b':' {
                    return Err(BadHost::Invalid);
                }
                port = Some(&raw[i + 1..]);
                name_len = i;
                break;
            }
            // Past the longest name a byte is only checked; the length decides below.
            if let Some(slot) = buf.get_mut(i) {
                *slot = lower;
            }
        }
        let len = if raw[..name_len].ends_with(b".") { name_len - 1 } else { name_len };
        check_port(port)?;
        if len == 0 || len > MAX_HOST {
            return Err(BadHost::Invalid);
        }
        return std::str::from_utf8(&buf[..len]).map_err(|_| BadHost::Invalid);
    };
    check_port(port)?;
    if host.is_empty() || host.len() > MAX_HOST {
        return Err(BadHost::Invalid);
    }
    let out = &mut buf[..host.len()];
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).map_err(|_| BadHost::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn norm(raw: &str) -> Result<String, BadHost> {
        let mut buf = [0u8; MAX_HOST];
        normalise_host(raw.as_bytes(), &mut buf).map(str::to_owned)
    }

    #[test]
    fn normal_forms() {
        let cases = [
            ("svc.example.com", "svc.example.com"),
            ("SVC.Example.COM", "svc.example.com"),
            ("svc.example.com.", "svc.example.com"),
            ("svc.example.com:8080", "svc.example.com"),
            ("Svc.Example.com.:80", "svc.example.com"),
            ("svc.example.com:", "svc.example.com"),
            ("svc.example.com..", "svc.example.com."),
            ("my_svc-1.localhost", "my_svc-1.localhost"),
            ("127.0.0.1:8080", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refused_forms() {
        let long = "a".repeat(MAX_HOST + 1);
        let cases = [
            "",
            ".",
            ":80",
            "user@svc.example.com",
            "svc.example.com:http",
            "svc.example.com:123456",
            "svc.example.com:80:80",
            "svc example.com",
            "svc.example.com/",
            "svc%2eexample.com",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:8o",
            "[fe80::1%eth0]",
            long.as_str(),
        ];
        for raw in cases {
            assert_eq!(norm(raw), Err(BadHost::Invalid), "{raw:?}");
        }
    }

    #[test]
    fn names_at_the_length_limit() {
        let longest = "a".repeat(MAX_HOST);
        assert_eq!(norm(&longest).as_deref(), Ok(longest.as_str()));
        assert_eq!(norm(&format!("{longest}.")).as_deref(), Ok(longest.as_str()), "a trailing dot may stand past it");
        assert_eq!(norm(&format!("{longest}.:80")).as_deref(), Ok(longest.as_str()));
        assert_eq!(norm(&format!("{longest}a.")), Err(BadHost::Invalid));
        assert_eq!(norm("caf\u{e9}.example.com"), Err(BadHost::Invalid), "bytes beyond ASCII are refused");
    }

    /// The single-pass name check agrees with the rules written out plainly.
    fn plain_rules(raw: &[u8]) -> Result<String, BadHost> {
        let (name, port) = match raw.iter().position(|b| *b == b':') {
            Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
            None => (raw, None),
        };
        if !name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
            return Err(BadHost::Invalid);
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        if port.is_some_and(|p| p.len() > 5 || !p.iter().all(u8::is_ascii_digit)) {
            return Err(BadHost::Invalid);
        }
        if name.is_empty() || name.len() > MAX_HOST {
            return Err(BadHost::Invalid);
        }
        Ok(String::from_utf8(name.to_ascii_lowercase()).unwrap())
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_check_keeps_the_rules(raw in proptest::collection::vec(
            proptest::sample::select(b"aZ0-._:9 /@\xc3".to_vec()), 0..300)
        ) {
            let mut buf = [0u8; MAX_HOST];
            let got = normalise_host(&raw, &mut buf).map(str::to_owned);
            proptest::prop_assert_eq!(got, plain_rules(&raw));
        }
    }

    #[test]
    fn host_header_rules() {
        let origin_form: Uri = "/path".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(requested_authority(&origin_form, &headers), Err(BadHost::Missing));
        headers.append(HOST, HeaderValue::from_static("a.example.com"));
        assert_eq!(requested_authority(&origin_form, &headers).unwrap(), b"a.example.com");
        headers.append(HOST, HeaderValue::from_static("b.example.com"));
        assert_eq!(requested_authority(&origin_form, &headers), Err(BadHost::Repeated));
    }

    #[test]
    fn absolute_form_target_wins_over_host() {
        let absolute: Uri = "http://Target.example.com:8080/path?q".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("other.example.com"));
        assert_eq!(requested_authority(&absolute, &headers).unwrap(), b"Target.example.com:8080");
        // Userinfo in the target is kept in the authority and then refused by normalisation.
        let with_user: Uri = "http://user@target.example.com/".parse().unwrap();
        let raw = requested_authority(&with_user, &headers).unwrap();
        let mut buf = [0u8; MAX_HOST];
        assert_eq!(normalise_host(raw, &mut buf), Err(BadHost::Invalid));
    }
}
