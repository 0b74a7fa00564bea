//! The responses the frontend writes itself, shaped like the plain HTML error pages Google's
//! frontend serves for Cloud Run.
//!
//! They are compile-time constants: refusing a request must cost no allocation, and a page
//! must never name anything internal (hosts routed, instances, paths on disk) — the reason
//! for a refusal goes to the log, the client gets what happened and what to do next.

use hyper::StatusCode;

/// A response body the frontend answers with, and the status that goes with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static str,
}

const HTML: &str = "text/html; charset=UTF-8";

macro_rules! google_page {
    ($code:literal, $title:literal, $message:literal) => {
        concat!(
            "<html><head>\n",
            "<meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n",
            "<title>",
            $code,
            " ",
            $title,
            "</title>\n",
            "</head>\n",
            "<body text=#000000 bgcolor=#ffffff>\n",
            "<h1>Error: ",
            $title,
            "</h1>\n",
            "<h2>",
            $message,
            "</h2>\n",
            "<h2></h2>\n",
            "</body></html>\n"
        )
    };
}

/// No service answers to the requested host. Deliberately the same page whatever the host,
/// so that it reveals nothing about which services exist.
pub(crate) const NOT_FOUND: Page = Page {
    status: StatusCode::NOT_FOUND,
    content_type: HTML,
    body: google_page!("404", "Page not found", "The requested URL was not found on this server."),
};

pub(crate) const BAD_HOST: Page = Page {
    status: StatusCode::BAD_REQUEST,
    content_type: HTML,
    body: google_page!(
        "400",
        "Bad Request",
        "Your client has issued a malformed or illegal request: it needs exactly one valid Host header naming the service."
    ),
};

pub(crate) const CONNECT_REFUSED: Page = Page {
    status: StatusCode::METHOD_NOT_ALLOWED,
    content_type: HTML,
    body: google_page!(
        "405",
        "Method Not Allowed",
        "CONNECT is not supported: this is a service frontend, not a proxy. Send the request to the service's URL instead."
    ),
};

pub(crate) const BODY_UNREADABLE: Page = Page {
    status: StatusCode::BAD_REQUEST,
    content_type: HTML,
    body: google_page!(
        "400",
        "Bad Request",
        "The request body could not be read to its end: the client closed the connection or sent a malformed body."
    ),
};

/// Every instance is at its concurrency and no slot freed up in time; Cloud Run's words.
pub(crate) const RATE_EXCEEDED: Page = Page {
    status: StatusCode::TOO_MANY_REQUESTS,
    content_type: HTML,
    body: google_page!("429", "Too Many Requests", "Rate exceeded."),
};

pub(crate) const NO_INSTANCE: Page = Page {
    status: StatusCode::SERVICE_UNAVAILABLE,
    content_type: HTML,
    body: google_page!(
        "503",
        "Service Unavailable",
        "Service Unavailable: no instance became ready in time. Try again; if this persists, check the service's logs for a failing start."
    ),
};

/// The revision the request was routed to stopped serving while the request waited for a slot,
/// and no other revision takes the service's traffic (the service was deleted, or deploys came
/// faster than the request could follow them). Not "no instance became ready": nothing failed
/// to start, and a retry goes wherever the service's traffic goes by then.
pub(crate) const REVISION_STOPPED: Page = Page {
    status: StatusCode::SERVICE_UNAVAILABLE,
    content_type: HTML,
    body: google_page!(
        "503",
        "Service Unavailable",
        "Service Unavailable: the revision this request was routed to stopped serving while the request waited (the service was deleted or redeployed). Try again: a retry goes to the revision that serves the service now, or gets 404 if the service no longer exists."
    ),
};

pub(crate) const NOT_LISTENING: Page = Page {
    status: StatusCode::SERVICE_UNAVAILABLE,
    content_type: HTML,
    body: google_page!(
        "503",
        "Service Unavailable",
        "Service Unavailable: the instance is not accepting connections. Try again; if this persists, check that the container listens on the port given in $PORT."
    ),
};

pub(crate) const CLOSED_EARLY: Page = Page {
    status: StatusCode::BAD_GATEWAY,
    content_type: HTML,
    body: google_page!(
        "502",
        "Bad Gateway",
        "The instance closed the connection before sending a complete response. Check the service's logs for a crash."
    ),
};

/// Cloud Run answers a request that outlived its timeout with exactly this plain text.
pub(crate) const TIMEOUT: Page =
    Page { status: StatusCode::GATEWAY_TIMEOUT, content_type: "text/plain", body: "upstream request timeout" };

/// Cloud Run's 403 page: no token, or a principal without `run.routes.invoke`.
pub(crate) fn forbidden(path: &str) -> String {
    format!(
        "<html><head>\n<meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n<title>403 Forbidden</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n<h1>Error: Forbidden</h1>\n<h2>Your client does not have permission to get URL <code>{}</code> from this server.</h2>\n<h2></h2>\n</body></html>\n",
        escape(path)
    )
}

/// Cloud Run's 401 page: a token that is not valid for this service.
pub(crate) fn unauthorized(path: &str) -> String {
    format!(
        "<html><head>\n<meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n<title>401 Unauthorized</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n<h1>Error: Unauthorized</h1>\n<h2>Your client does not have permission to the requested URL <code>{}</code>.</h2>\n<h2></h2>\n</body></html>\n",
        escape(path)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_html_with_status_in_title() {
        for page in [NOT_FOUND, BAD_HOST, CONNECT_REFUSED, BODY_UNREADABLE, RATE_EXCEEDED, NO_INSTANCE, CLOSED_EARLY] {
            let title = format!("<title>{} ", page.status.as_u16());
            assert!(page.body.contains(&title), "{}", page.body);
        }
        assert!(NOT_FOUND.body.contains("404 Page not found"));
        assert!(RATE_EXCEEDED.body.contains("Rate exceeded."));
    }
}
