//! The bodies that stream through the frontend, and what happens when they end.
//!
//! A response body carries the request's [`Exchange`], so the instance slot is released and the
//! request-log record written exactly when the body has been sent or abandoned (hyper drops it
//! when the client goes away). It also carries the request deadline: a streaming response
//! (server-sent events, a long download) is cut when the request timeout runs out, as on Cloud
//! Run, where the timeout covers the whole request and not only the wait for the head. An
//! upstream body owns the connection it came on (`h1.rs`), and gives it back to the instance's
//! idle stack when its exchange has ended cleanly, before the slot is released; a body cut or
//! abandoned drops it, which closes that connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::h1;
use crate::record::Exchange;
use crate::upstream::Home;

/// Why a response stream was cut; hyper then aborts the client connection, which is how
/// HTTP/1.1 tells a client that a response is incomplete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the instance's response body failed")]
    Upstream(#[source] h1::Error),
    #[error("the internal endpoint's response body failed")]
    Passthrough(#[source] hyper::Error),
    #[error("the request timeout ran out while the response was streaming")]
    Deadline,
}

enum Kind {
    Empty,
    Page(Option<Bytes>),
    Upstream(h1::Body<RequestBody>),
    Passthrough(Incoming),
}

/// Boxed: hyper moves a response's body several times between the handler and the connection
/// (about 600 bytes here: the exchange and the upstream body), where a pointer is 8.
pub(crate) struct ResponseBody(Box<Streaming>);

struct Streaming {
    kind: Kind,
    deadline: Option<Instant>,
    /// Created the first time the upstream body makes us wait, so that responses that are
    /// ready at once never touch the timer.
    timer: Option<Pin<Box<Sleep>>>,
    sent: u64,
    /// A frame has been sent: the clock is checked from the next one on (see `poll_frame`).
    past_first: bool,
    exchange: Option<Exchange>,
    /// Where the upstream connection goes back to when the body has ended cleanly.
    home: Option<Home>,
}

impl ResponseBody {
    /// A body of `kind` that ends with `exchange` (if any), with no deadline and no connection
    /// to give back: everything but an instance's answer.
    fn new(kind: Kind, exchange: Option<Exchange>) -> ResponseBody {
        ResponseBody(Box::new(Streaming {
            kind,
            deadline: None,
            timer: None,
            sent: 0,
            past_first: false,
            exchange,
            home: None,
        }))
    }

    pub(crate) fn empty() -> ResponseBody {
        ResponseBody::new(Kind::Empty, None)
    }

    pub(crate) fn page(body: &'static str, exchange: Option<Exchange>) -> ResponseBody {
        ResponseBody::new(Kind::Page(Some(Bytes::from_static(body.as_bytes()))), exchange)
    }

    /// A body of text made at request time (an egress refusal that explains itself).
    pub(crate) fn text(body: String) -> ResponseBody {
        ResponseBody::new(Kind::Page(Some(Bytes::from(body))), None)
    }

    /// A refusal page made at request time that still closes the request's log record.
    pub(crate) fn text_recorded(body: String, exchange: Exchange) -> ResponseBody {
        ResponseBody::new(Kind::Page(Some(Bytes::from(body))), Some(exchange))
    }

    /// A body passed through untouched (an internal endpoint's answer through the egress proxy).
    pub(crate) fn passthrough(body: Incoming) -> ResponseBody {
        ResponseBody::new(Kind::Passthrough(body), None)
    }

    pub(crate) fn upstream(
        body: h1::Body<RequestBody>,
        deadline: Instant,
        exchange: Exchange,
        home: Home,
    ) -> ResponseBody {
        let mut response = ResponseBody::new(Kind::Upstream(body), Some(exchange));
        response.0.deadline = Some(deadline);
        response.0.home = Some(home);
        response
    }
}

impl Streaming {
    fn finish(&mut self) {
        self.timer = None;
        // One clock read for both: when the connection went idle and the request's latency.
        let now = std::time::Instant::now();
        // The body knows whether its exchange ended cleanly, including a body hyper never
        // polled because it was empty from the start (a HEAD response, a 204).
        if let (Some(home), Kind::Upstream(body)) = (self.home.take(), &mut self.kind)
            && let Some(conn) = body.take_reusable()
        {
            home.give_back(conn, now);
        }
        if let Some(exchange) = self.exchange.take() {
            exchange.finish_at(now, 0, self.sent);
        }
    }

    fn cut(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // The response is incomplete: its connection must not serve another request.
        self.home = None;
        tracing::debug!(
            request_id = self.exchange.as_ref().map(|e| e.id.as_str()),
            "request timeout reached while streaming the response; cutting it"
        );
        self.finish();
        Poll::Ready(Some(Err(BodyError::Deadline)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self.get_mut().0;
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Page(page) => Poll::Ready(page.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Upstream),
            Kind::Passthrough(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Passthrough),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                // A body that is always ready never waits on the timer, so the clock is also
                // checked per frame, from the second on: the first follows the head, whose wait
                // the deadline bounded (most responses are that one frame), and a body that
                // waited for it had the timer running.
                if this.past_first
                    && let Some(deadline) = this.deadline
                    && Instant::now() >= deadline
                {
                    return this.cut();
                }
                this.past_first = true;
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.home = None;
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(deadline) = this.deadline else { return Poll::Pending };
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() { this.cut() } else { Poll::Pending }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0.kind {
            Kind::Empty => true,
            Kind::Page(page) => page.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Passthrough(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0.kind {
            Kind::Empty | Kind::Page(None) => SizeHint::with_exact(0),
            Kind::Page(Some(page)) => SizeHint::with_exact(page.len() as u64),
            Kind::Upstream(body) => body.size_hint(),
            Kind::Passthrough(body) => body.size_hint(),
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The client's request body could not be read; the client, not the instance, is at fault.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub(crate) struct ClientBodyError(#[source] hyper::Error);

/// The client's request body on its way to the instance, counted for the request log.
pub(crate) struct RequestBody {
    inner: Incoming,
    read: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    /// Counting needs a shared counter; bodiless requests (most of them) skip it.
    pub(crate) fn new(inner: Incoming) -> (RequestBody, Option<Arc<AtomicU64>>) {
        let read = (!inner.is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        (RequestBody { inner, read: read.clone() }, read)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(read)) = (&polled, &this.read)
            && let Some(data) = frame.data_ref()
        {
            read.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled.map_err(ClientBodyError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
