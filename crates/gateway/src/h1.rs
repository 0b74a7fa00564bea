//! The frontend's HTTP/1.1 client to instances: one exchange at a time on one connection,
//! driven by the request that made it.
//!
//! hyper's client runs every connection as a task of its own: a request is queued to that task
//! on a channel, its response head comes back on another, and the body passes through the task
//! too. On the frontend's path that machinery cost about a third of the instructions per request
//! (`bench/instructions`). A connection to an instance carries one exchange at a time, so
//! nothing needs the task: here the request's own future writes the head and reads the response
//! head, and the response body, as hyper's server polls it for the client, reads the rest and
//! keeps the request body flowing (full duplex: an instance may answer before it has read an
//! upload, or stream its answer while it reads). A connection goes back to its instance's stack
//! (`upstream.rs`) only when its response ended exactly where its framing said, the request was
//! sent whole, and nothing else arrived.
//!
//! The instance is untrusted code. Its response head is bounded in size and header count; its
//! framing is read strictly (RFC 9112 §6.3: a `Content-Length` that is not one number is an
//! error; `Transfer-Encoding` wins over it and the connection is then not reused; a body with
//! neither ends at close); chunk lines and trailers are bounded. A hostile instance can make its
//! own responses fail, but cannot grow the frontend's memory or make one response bleed into the
//! next request. The client's side is hyper's server, which frames the response anew.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING};
use hyper::http::{request, response};
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncWrite;

use crate::upstream::InstanceStream;

/// The most header fields a response head may have.
const MAX_HEADERS: usize = 100;
/// The largest response head taken (nginx's default buffers hold 4–8 KiB; hyper allows ~400 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line (size and extensions) or trailer line.
const MAX_LINE: usize = 4 * 1024;
/// The most trailer bytes read (and dropped) after a chunked body.
const MAX_TRAILERS: usize = 64 * 1024;
/// Each read asks for at least this much room, and grows the buffer by [`READ_SIZE`] if not.
const READ_SPARE: usize = 4 * 1024;
const READ_SIZE: usize = 16 * 1024;
/// Request bytes queued for the instance before the request body is polled again.
const MAX_QUEUED: usize = 256 * 1024;
/// Buffers handed to one vectored write.
const MAX_SLICES: usize = 32;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("the connection to the instance failed")]
    Io(#[source] io::Error),
    #[error("the instance closed the connection before its response was complete")]
    Closed,
    #[error("the instance's response is not valid HTTP/1.1: {0}")]
    Malformed(&'static str),
    #[error("the client's request body failed")]
    ClientBody(#[source] BoxError),
}

/// An open connection to an instance and the bytes read from it but not yet used.
pub(crate) struct Conn {
    io: InstanceStream,
    read: BytesMut,
}

impl Conn {
    pub(crate) fn new(io: InstanceStream) -> Conn {
        Conn { io, read: BytesMut::new() }
    }

    /// Whether an idle connection can take another request: the instance has neither closed it
    /// nor sent anything unasked. A close the runtime has not noticed yet passes; a request
    /// that then finds the connection closed is replayed when that is safe ([`Failed`]).
    pub(crate) fn is_open(&self) -> bool {
        let mut byte = [0u8; 1];
        // Without readiness this costs no system call; with it (the instance sent something or
        // closed since the last read), one read that must block.
        matches!(self.io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads what the instance has sent into the buffer; `Ok(0)` is the end of the stream.
    ///
    /// Through `AsyncRead`, which forgets the socket's readiness after a read shorter than the
    /// buffer (the socket is drained), so that the idle check before the connection's next use
    /// ([`Conn::is_open`]) costs no system call unless epoll has reported something since: a
    /// `read` that could only say EAGAIN was one system call in every request. A close that
    /// epoll has not reported yet is caught like any close of an idle connection (upstream.rs
    /// sends a replayable request again).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        if self.read.capacity() - self.read.len() < READ_SPARE {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read).map_err(Error::Io)
    }
}

/// A request ready for the wire: its head encoded, its body still to come.
pub(crate) struct Request<B> {
    head: Bytes,
    body: Option<B>,
    chunked: bool,
    /// Safe to send again on another connection: idempotent and bodiless (RFC 9110 §9.2.2).
    replayable: bool,
    /// A response to HEAD has no body, whatever its headers say.
    head_method: bool,
}

impl<B> Request<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Encodes the head: the target in origin form, first the `added` fields (lowercase names,
    /// values already valid), then the headers as given (already rewritten for the instance;
    /// `Content-Length` excepted), and the framing the body calls for. A body of known size gets
    /// `Content-Length`, any other `Transfer-Encoding: chunked`; an empty body gets
    /// `Content-Length: 0` where a body is expected or the client sent one.
    ///
    /// `added` is how the frontend's own headers (`headers::Forwarding`) reach the instance:
    /// written here, they cost no `HeaderMap` insertion.
    pub(crate) fn new<'n, 'v, F>(parts: &request::Parts, added: F, body: B) -> Request<B>
    where
        F: IntoIterator<Item = (&'n str, &'v [u8])>,
        F::IntoIter: Clone,
    {
        let method = &parts.method;
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let added = added.into_iter();
        let fields: usize = parts.headers.iter().map(|(n, v)| field_size(n.as_str(), v.as_bytes())).sum::<usize>()
            + added.clone().map(|(n, v)| field_size(n, v)).sum::<usize>();
        let mut head = BytesMut::with_capacity(method.as_str().len() + target.len() + fields + 64);
        head.put_slice(method.as_str().as_bytes());
        head.put_u8(b' ');
        head.put_slice(target.as_bytes());
        head.put_slice(b" HTTP/1.1\r\n");
        for (name, value) in added {
            put_field(&mut head, name, value);
        }
        for (name, value) in &parts.headers {
            if name != CONTENT_LENGTH {
                put_field(&mut head, name.as_str(), value.as_bytes());
            }
        }
        let bodiless = body.is_end_stream();
        let mut chunked = false;
        if bodiless {
            let expects_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
            if expects_body || parts.headers.contains_key(CONTENT_LENGTH) {
                head.put_slice(b"content-length: 0\r\n");
            }
        } else if let Some(size) = body.size_hint().exact() {
            head.put_slice(b"content-length: ");
            put_number(&mut head, size, 10);
            head.put_slice(b"\r\n");
        } else {
            head.put_slice(b"transfer-encoding: chunked\r\n");
            chunked = true;
        }
        head.put_slice(b"\r\n");
        let idempotent = matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        Request {
            head: head.freeze(),
            body: (!bodiless).then_some(body),
            chunked,
            replayable: idempotent && bodiless,
            head_method: *method == Method::HEAD,
        }
    }
}

/// The bytes `name: value\r\n` takes in a head.
fn field_size(name: &str, value: &[u8]) -> usize {
    name.len() + value.len() + 4
}

fn put_field(head: &mut BytesMut, name: &str, value: &[u8]) {
    head.put_slice(name.as_bytes());
    head.put_slice(b": ");
    head.put_slice(value);
    head.put_slice(b"\r\n");
}

/// An exchange that failed, with the request back when it may be sent again: the connection
/// was reused (so it may have been closed by the instance while idle), nothing came back, and
/// the request is replayable.
pub(crate) struct Failed<B> {
    pub(crate) error: Error,
    pub(crate) replay: Option<Request<B>>,
}

/// Sends `request` on `conn` and waits for the response head (skipping interim 1xx
/// responses). The body streams from the returned [`Body`]; `reused` says whether the
/// connection served an earlier exchange.
pub(crate) async fn exchange<B>(
    conn: Conn,
    request: Request<B>,
    reused: bool,
) -> Result<(response::Parts, Body<B>), Failed<B>>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let Request { head: encoded, body, chunked, replayable, head_method } = request;
    let mut wire = Wire { conn, out: Outgoing::new(encoded.clone(), body, chunked), received: false };
    match std::future::poll_fn(|cx| wire.poll_head(cx)).await {
        Ok(mut head) => match framing(&mut head, head_method) {
            Ok((framing, keep_alive)) => {
                let (mut parts, ()) = Response::new(()).into_parts();
                parts.status = head.status;
                parts.headers = head.headers;
                Ok((parts, Body { wire: Some(wire), framing, keep_alive }))
            }
            Err(error) => Err(Failed { error, replay: None }),
        },
        Err(error) => {
            let replay = (reused && replayable && !wire.received).then(|| Request {
                head: encoded,
                body: None,
                chunked,
                replayable,
                head_method,
            });
            Err(Failed { error, replay })
        }
    }
}

/// A connection with an exchange on it.
struct Wire<B> {
    conn: Conn,
    out: Outgoing<B>,
    /// Some response byte has arrived for this exchange.
    received: bool,
}

impl<B> Wire<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Moves the request along as far as it goes without waiting. A write that fails ends the
    /// request but not the exchange: an instance may refuse an upload, answer and close, and
    /// that answer is still read.
    fn drive(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.out.finished() {
            return Ok(());
        }
        match self.out.poll_send(&mut self.conn.io, cx) {
            Poll::Ready(Err(Error::Io(e))) => {
                tracing::debug!(error = %e, "writing the request to the instance failed");
                self.out.abandon(e);
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Error>> {
        loop {
            self.drive(cx)?;
            if let Some(head) = parse_head(&mut self.conn.read)? {
                let status = head.status;
                if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
                    return Poll::Ready(Ok(head));
                }
                // 100 Continue, 103 Early Hints: hyper's server cannot pass them on.
                continue;
            }
            if self.conn.read.len() > MAX_HEAD {
                return Poll::Ready(Err(Error::Malformed("the response head is larger than 64 KiB")));
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(self.out.failure().unwrap_or(Error::Closed))),
                Ok(_) => self.received = true,
                Err(e) => return Poll::Ready(Err(self.out.failure().unwrap_or(e))),
            }
        }
    }
}

/// The request's bytes on their way out: a queue of buffers (the head, then the body's frames
/// with their chunk framing) written with vectored writes, refilled from the body as it
/// produces frames and as the queue drains.
struct Outgoing<B> {
    queue: VecDeque<Bytes>,
    queued: usize,
    body: Option<B>,
    chunked: bool,
    /// Why the request could not be written whole, once it could not.
    failed: Option<io::Error>,
}

impl<B> Outgoing<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(head: Bytes, body: Option<B>, chunked: bool) -> Outgoing<B> {
        let queued = head.len();
        Outgoing { queue: VecDeque::from([head]), queued, body, chunked, failed: None }
    }

    /// Nothing more will be written (sent whole, or given up).
    fn finished(&self) -> bool {
        self.queue.is_empty() && self.body.is_none()
    }

    /// The request was written whole.
    fn sent(&self) -> bool {
        self.finished() && self.failed.is_none()
    }

    fn abandon(&mut self, e: io::Error) {
        self.queue.clear();
        self.queued = 0;
        self.body = None;
        self.failed = Some(e);
    }

    /// The write failure, as the error to report when no response came.
    fn failure(&mut self) -> Option<Error> {
        self.failed.take().map(Error::Io)
    }

    fn push(&mut self, bytes: Bytes) {
        self.queued += bytes.len();
        self.queue.push_back(bytes);
    }

    fn push_data(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.chunked {
            let mut size = BytesMut::with_capacity(20);
            put_number(&mut size, data.len() as u64, 16);
            size.put_slice(b"\r\n");
            self.push(size.freeze());
            self.push(data);
            self.push(Bytes::from_static(b"\r\n"));
        } else {
            self.push(data);
        }
    }

    /// Writes until everything is sent (`Ready(Ok)`), the body or the socket makes it wait
    /// (`Pending`, with the waker registered), or something fails.
    fn poll_send(&mut self, io: &mut InstanceStream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            // Coalesce what the body has ready with what is queued (the first frame of a small
            // upload travels with the head).
            while self.queued < MAX_QUEUED
                && let Some(body) = self.body.as_mut()
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Request trailers are dropped: instances are not told to expect them.
                        if let Ok(data) = frame.into_data() {
                            self.push_data(data);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::ClientBody(e.into()))),
                    Poll::Ready(None) => {
                        self.body = None;
                        if self.chunked {
                            self.push(Bytes::from_static(b"0\r\n\r\n"));
                        }
                    }
                    Poll::Pending => break,
                }
            }
            if self.queue.is_empty() {
                return if self.body.is_none() { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = self.queue.iter().zip(slices.iter_mut()).map(|(b, s)| *s = IoSlice::new(b)).count();
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])).map_err(Error::Io)?;
            if written == 0 {
                return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
            }
            self.advance(written);
        }
    }

    fn advance(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.queue.pop_front();
        }
    }
}

/// Parses a complete response head at the start of `buf`, taking it out of the buffer; `None`
/// while the head is incomplete. Header values are copied (a few dozen bytes each) rather than
/// shared with the buffer, which would make it reference-counted (see [`take_data`]).
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Where each field sits in the head (name start and end, value start and end); `u32`
    // because a head is at most [`MAX_HEAD`] long, so that the array stays small to zero.
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let (len, code, version, count) = {
        // httparse fills the fields it finds; the rest are never read, so need no initialising.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut fields);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("more than 100 header fields")),
            Err(httparse::Error::Version) => return Err(Error::Malformed("not an HTTP/1.x response")),
            Err(httparse::Error::Status) => return Err(Error::Malformed("the status code is not three digits")),
            Err(_) => return Err(Error::Malformed("the response head cannot be parsed")),
        };
        if len > MAX_HEAD {
            return Err(Error::Malformed("the response head is larger than 64 KiB"));
        }
        let base = buf.as_ptr() as usize;
        let count = response.headers.len();
        let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
        for (field, span) in response.headers.iter().zip(spans.iter_mut()) {
            let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
            *span = [name, name + field.name.len() as u32, value, value + field.value.len() as u32];
        }
        (len, response.code.unwrap_or(0), response.version.unwrap_or(0), count)
    };
    let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed("the status code is out of range"))?;
    let mut headers = HeaderMap::with_capacity(count);
    for &[name_start, name_end, value_start, value_end] in &spans[..count] {
        let name = HeaderName::from_bytes(&buf[name_start as usize..name_end as usize])
            .map_err(|_| Error::Malformed("a header name is not a token"))?;
        let value = HeaderValue::from_bytes(&buf[value_start as usize..value_end as usize])
            .map_err(|_| Error::Malformed("a header value has control characters"))?;
        headers.append(name, value);
    }
    buf.advance(len);
    Ok(Some(Head { status, http10: version == 0, headers }))
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    /// An HTTP/1.0 response: its connection persists only if it says `keep-alive`.
    http10: bool,
    headers: HeaderMap,
}

/// How a response body is delimited (RFC 9112 §6.3), and where its decoding is.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes still to come; 0 is the end.
    Length(u64),
    Chunked(Chunk),
    /// Until the instance closes the connection.
    Close,
    /// A close-delimited body that has ended.
    Closed,
    /// 101: the connection is no longer HTTP.
    Upgrade,
}

#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers { read: usize },
    Done,
}

/// Decides the body's framing from the response head, and whether the connection can carry
/// another exchange afterwards. `Content-Length` is removed where `Transfer-Encoding`
/// overrides it and made one value where it was a repeated one, so that the client's side
/// frames what it is sent.
fn framing(head: &mut Head, head_method: bool) -> Result<(Framing, bool), Error> {
    let (status, headers) = (head.status, &mut head.headers);
    let mut keep_alive = if head.http10 {
        has_token(headers, CONNECTION, b"keep-alive")
    } else {
        !has_token(headers, CONNECTION, b"close")
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Upgrade, false));
    }
    if head_method || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), keep_alive));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        if headers.remove(CONTENT_LENGTH).is_some() {
            // Both: a sign of a smuggling attempt (RFC 9112 §6.3); this connection ends here.
            keep_alive = false;
        }
        let last = headers.get_all(TRANSFER_ENCODING).iter().flat_map(tokens).last();
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => (Framing::Chunked(Chunk::Size), keep_alive),
            _ => (Framing::Close, false),
        });
    }
    let mut length = None;
    let mut repeated = false;
    for value in headers.get_all(CONTENT_LENGTH) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let n = decimal(token.trim_ascii()).ok_or(Error::Malformed("Content-Length is not a number"))?;
            match length {
                Some(seen) if seen != n => return Err(Error::Malformed("Content-Length has conflicting values")),
                Some(_) => repeated = true,
                None => length = Some(n),
            }
        }
    }
    match length {
        Some(n) => {
            if repeated {
                let mut digits = BytesMut::with_capacity(20);
                put_number(&mut digits, n, 10);
                let value = HeaderValue::from_maybe_shared(digits.freeze())
                    .map_err(|_| Error::Malformed("Content-Length is not a number"))?;
                headers.insert(CONTENT_LENGTH, value);
            }
            Ok((Framing::Length(n), keep_alive))
        }
        None => Ok((Framing::Close, false)),
    }
}

/// What decoding the buffered bytes gave.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Data(Bytes),
    /// More bytes are needed.
    More,
    End,
}

/// Takes the next piece of body out of `buf` per `framing`. Pure, so the decoders are tested
/// byte by byte without a connection.
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Step, Error> {
    loop {
        match framing {
            Framing::Length(0) | Framing::Closed | Framing::Upgrade | Framing::Chunked(Chunk::Done) => {
                return Ok(Step::End);
            }
            Framing::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*remaining).min(buf.len() as u64);
                *remaining -= n;
                return Ok(Step::Data(take_data(buf, n as usize)));
            }
            Framing::Close => {
                return Ok(if buf.is_empty() { Step::More } else { Step::Data(take_data(buf, buf.len())) });
            }
            Framing::Chunked(chunk) => match chunk {
                Chunk::Size => {
                    let Some(size) = take_line(buf, chunk_size)? else { return Ok(Step::More) };
                    *chunk = if size == 0 { Chunk::Trailers { read: 0 } } else { Chunk::Data(size) };
                }
                Chunk::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (*remaining).min(buf.len() as u64);
                    *remaining -= n;
                    let data = take_data(buf, n as usize);
                    if *remaining == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                    return Ok(Step::Data(data));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Malformed("a chunk is longer than its size says"));
                    }
                    buf.advance(2);
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers { read } => {
                    let Some(len) = take_line(buf, |line| Ok(line.len()))? else { return Ok(Step::More) };
                    *read += len + 2;
                    if *read > MAX_TRAILERS {
                        return Err(Error::Malformed("the trailers are larger than 64 KiB"));
                    }
                    if len == 0 {
                        *chunk = Chunk::Done;
                    }
                }
                Chunk::Done => return Ok(Step::End),
            },
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) from `buf`, bounded by [`MAX_LINE`].
/// `read` gets the line; it is then dropped from the buffer (advanced past, not split off: see
/// [`take_data`]).
fn take_line<T>(buf: &mut BytesMut, read: impl FnOnce(&[u8]) -> Result<T, Error>) -> Result<Option<T>, Error> {
    let Some(end) = buf.iter().take(MAX_LINE + 2).position(|b| *b == b'\n') else {
        return if buf.len() > MAX_LINE + 1 { Err(Error::Malformed("a chunk line is too long")) } else { Ok(None) };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(Error::Malformed("a chunk line does not end in CRLF"));
    }
    let value = read(&buf[..end - 1])?;
    buf.advance(end + 1);
    Ok(Some(value))
}

/// Body bytes at most this long are copied out of the read buffer rather than split off it.
const COPY_AT_MOST: usize = 1024;

/// The next `n` bytes of `buf` as body data. Splitting a buffer off shares its memory, which
/// turns it (and every later split) into reference-counted memory: an atomic operation per
/// piece taken and per piece dropped. A short piece is cheaper copied, which keeps the buffer
/// plain; a long one is still shared rather than copied.
fn take_data(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_AT_MOST {
        let data = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        data
    } else {
        buf.split_to(n).freeze()
    }
}

/// The size on a chunk-size line: hex digits, then optional extensions after `;`, ignored.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(Error::Malformed("a chunk size is not a hex number"));
    }
    line[..digits].iter().try_fold(0u64, |n, b| {
        let digit = (*b as char).to_digit(16).ok_or(Error::Malformed("a chunk size is not a hex number"))?;
        Ok(n * 16 + u64::from(digit))
    })
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, b| n * 10 + u64::from(b - b'0')))
}

fn put_number(buf: &mut BytesMut, mut n: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &[u8]) -> bool {
    headers.get_all(name).iter().any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
}

/// A response body coming from an instance. It owns the connection until the body has ended;
/// [`Body::take_reusable`] then hands it back if it can carry another exchange.
pub(crate) struct Body<B> {
    /// `None` once the connection has been taken back or over.
    wire: Option<Wire<B>>,
    framing: Framing,
    keep_alive: bool,
}

impl<B> Body<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// The connection, if the response ended where its framing said, the request went out
    /// whole, nothing more was sent, and neither side asked to close.
    pub(crate) fn take_reusable(&mut self) -> Option<Conn> {
        let ended = matches!(self.framing, Framing::Length(0) | Framing::Chunked(Chunk::Done));
        let wire = self.wire.as_ref()?;
        if ended && self.keep_alive && wire.out.sent() && wire.conn.read.is_empty() {
            return self.wire.take().map(|wire| wire.conn);
        }
        None
    }

    /// After a 101: the connection and the bytes the instance already sent past the head,
    /// which belong to the new protocol.
    pub(crate) fn into_upgrade(mut self) -> Option<(InstanceStream, Bytes)> {
        if self.framing != Framing::Upgrade {
            return None;
        }
        self.wire.take().map(|wire| (wire.conn.io, wire.conn.read.freeze()))
    }
}

impl<B> HttpBody for Body<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(wire) = this.wire.as_mut() else { return Poll::Ready(None) };
        if let Err(e) = wire.drive(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match decode(&mut this.framing, &mut wire.conn.read) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            match ready!(wire.conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Closed;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(Error::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Length(0) | Framing::Closed | Framing::Upgrade | Framing::Chunked(Chunk::Done))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Closed | Framing::Upgrade | Framing::Chunked(Chunk::Done) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt, Empty, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio::sync::mpsc;

    use super::*;

    /// A request body fed by the test, of unknown size unless given one.
    struct Fed {
        rx: mpsc::Receiver<Result<Bytes, io::Error>>,
    }

    impl HttpBody for Fed {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            self.rx.poll_recv(cx).map(|item| item.map(|r| r.map(Frame::data)))
        }
    }

    fn fed() -> (mpsc::Sender<Result<Bytes, io::Error>>, Fed) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Fed { rx })
    }

    fn parts(method: &str, target: &str) -> request::Parts {
        let (mut parts, ()) = hyper::Request::builder().method(method).uri(target).body(()).unwrap().into_parts();
        parts.headers.insert("host", HeaderValue::from_static("hello.run.internal"));
        parts
    }

    fn head_text<B>(request: &Request<B>) -> String {
        String::from_utf8(request.head.to_vec()).unwrap()
    }

    fn pair() -> (Conn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (Conn::new(InstanceStream::Channel(ours)), theirs)
    }

    /// Reads from the instance's end until `end` has arrived, returning everything read.
    async fn read_until(peer: &mut UnixStream, end: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(end.len()).any(|w| w == end) {
            let n = peer.read(&mut buf).await.unwrap();
            assert!(n > 0, "the frontend closed before sending {:?}", String::from_utf8_lossy(end));
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    }

    /// Reads a whole body, then says whether the connection came back for reuse.
    async fn drain<B>(mut body: Body<B>) -> (Result<Vec<u8>, Error>, bool)
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => data.extend_from_slice(frame.data_ref().unwrap()),
                Err(e) => return (Err(e), body.take_reusable().is_some()),
            }
        }
        (Ok(data), body.take_reusable().is_some())
    }

    async fn answered(method: &str, response: &'static [u8]) -> (response::Parts, Result<Vec<u8>, Error>, bool) {
        let (conn, mut peer) = pair();
        let instance = tokio::spawn(async move {
            read_until(&mut peer, b"\r\n\r\n").await;
            peer.write_all(response).await.unwrap();
            peer
        });
        let request = Request::new(&parts(method, "/"), [], Empty::<Bytes>::new());
        let Ok((parts, body)) = exchange(conn, request, false).await else { panic!("the exchange failed") };
        let (data, reusable) = drain(body).await;
        drop(instance.await.unwrap());
        (parts, data, reusable)
    }

    #[test]
    fn a_request_head_carries_the_framing_its_body_needs() {
        let get = Request::new(&parts("GET", "/a/b?c=d"), [], Empty::<Bytes>::new());
        assert_eq!(head_text(&get), "GET /a/b?c=d HTTP/1.1\r\nhost: hello.run.internal\r\n\r\n");
        assert!(get.replayable && get.body.is_none());

        let post = Request::new(&parts("POST", "/"), [], Empty::<Bytes>::new());
        assert!(head_text(&post).ends_with("content-length: 0\r\n\r\n"));
        assert!(!post.replayable);

        // The client's Content-Length is replaced by the size the body has.
        let mut with_length = parts("PUT", "/");
        with_length.headers.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
        let put = Request::new(&with_length, [], Full::new(Bytes::from_static(b"hello")));
        let text = head_text(&put);
        assert!(text.contains("content-length: 5\r\n") && !text.contains("999"), "{text}");
        assert!(!put.replayable, "a request with a body is never sent twice");

        let (_tx, body) = fed();
        let chunked = Request::new(&parts("POST", "/upload"), [], body);
        assert!(head_text(&chunked).ends_with("transfer-encoding: chunked\r\n\r\n"));
        assert!(chunked.chunked);

        let head = Request::new(&parts("HEAD", "*"), [], Empty::<Bytes>::new());
        assert!(head_text(&head).starts_with("HEAD * HTTP/1.1\r\n"));
        assert!(head.head_method);
    }

    #[tokio::test]
    async fn a_chunked_request_body_is_framed_and_terminated() {
        let (conn, mut peer) = pair();
        let (tx, body) = fed();
        let request = Request::new(&parts("POST", "/"), [], body);
        let instance = tokio::spawn(async move {
            let seen = read_until(&mut peer, b"\r\n0\r\n\r\n").await;
            peer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            (seen, peer)
        });
        tx.send(Ok(Bytes::from_static(b"hello "))).await.unwrap();
        tx.send(Ok(Bytes::new())).await.unwrap();
        tx.send(Ok(Bytes::from(vec![b'x'; 300]))).await.unwrap();
        drop(tx);
        let Ok((parts, body)) = exchange(conn, request, false).await else { panic!("the exchange failed") };
        assert_eq!(parts.status, StatusCode::NO_CONTENT);
        let (seen, _peer) = instance.await.unwrap();
        let seen = String::from_utf8(seen).unwrap();
        let body_on_wire = &seen[seen.find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(body_on_wire, format!("6\r\nhello \r\n12c\r\n{}\r\n0\r\n\r\n", "x".repeat(300)));
        assert!(drain(body).await.1, "a 204 after a whole request leaves the connection reusable");
    }

    #[tokio::test]
    async fn a_connection_is_reused_only_after_a_clean_end() {
        let (parts, data, reusable) = answered("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!((parts.status, data.unwrap(), reusable), (StatusCode::OK, b"ok".to_vec(), true));

        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 1\r\n\r\n";
        let (_, data, reusable) = answered("GET", chunked).await;
        assert_eq!((data.unwrap(), reusable), (b"ok".to_vec(), true));

        let (_, data, reusable) =
            answered("GET", b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!((data.unwrap(), reusable), (b"ok".to_vec(), false), "the instance asked to close");

        let (_, data, reusable) = answered("GET", b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!((data.unwrap(), reusable), (b"ok".to_vec(), false), "HTTP/1.0 without keep-alive");

        let (_, data, reusable) =
            answered("GET", b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!((data.unwrap(), reusable), (b"ok".to_vec(), true), "HTTP/1.0 with keep-alive");

        let (_, data, reusable) = answered("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA").await;
        assert_eq!((data.unwrap(), reusable), (b"ok".to_vec(), false), "bytes nobody asked for");

        // A HEAD response's Content-Length describes the GET body; none follows.
        let (parts, data, reusable) = answered("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n").await;
        assert_eq!((data.unwrap(), reusable), (Vec::new(), true));
        assert_eq!(parts.headers[CONTENT_LENGTH], "1234");
    }

    #[tokio::test]
    async fn a_body_without_framing_ends_when_the_instance_closes() {
        let (conn, mut peer) = pair();
        let instance = tokio::spawn(async move {
            read_until(&mut peer, b"\r\n\r\n").await;
            peer.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil ").await.unwrap();
            peer.write_all(b"the end").await.unwrap();
        });
        let request = Request::new(&parts("GET", "/"), [], Empty::<Bytes>::new());
        let Ok((_, body)) = exchange(conn, request, false).await else { panic!("the exchange failed") };
        instance.await.unwrap();
        let (data, reusable) = drain(body).await;
        assert_eq!((data.unwrap(), reusable), (b"until the end".to_vec(), false));
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                         HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
        let (parts, data, reusable) = answered("POST", response).await;
        assert_eq!((parts.status, data.unwrap(), reusable), (StatusCode::CREATED, Vec::new(), true));
        assert!(!parts.headers.contains_key("link"));
    }

    #[tokio::test]
    async fn an_instance_closing_mid_body_is_an_error() {
        let cut: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        ];
        for response in cut {
            let (conn, mut peer) = pair();
            let instance = tokio::spawn(async move {
                read_until(&mut peer, b"\r\n\r\n").await;
                peer.write_all(response).await.unwrap();
                // The instance's end closes here, mid-body.
            });
            let request = Request::new(&parts("GET", "/"), [], Empty::<Bytes>::new());
            let Ok((_, body)) = exchange(conn, request, false).await else { panic!("the exchange failed") };
            instance.await.unwrap();
            let (data, reusable) = drain(body).await;
            assert!(matches!(data, Err(Error::Closed)), "{data:?}");
            assert!(!reusable);
        }
    }

    #[tokio::test]
    async fn malformed_heads_fail_with_what_is_wrong() {
        let cases: [(&[u8], &str); 4] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n", "conflicting"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "not a number"),
            (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x response"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "three digits"),
        ];
        for (response, says) in cases {
            let (conn, mut peer) = pair();
            let instance = tokio::spawn(async move {
                read_until(&mut peer, b"\r\n\r\n").await;
                peer.write_all(response).await.unwrap();
                peer
            });
            let request = Request::new(&parts("GET", "/"), [], Empty::<Bytes>::new());
            let Err(failed) = exchange(conn, request, true).await else { panic!("{says}: accepted") };
            assert!(failed.error.to_string().contains(says), "{says}: {}", failed.error);
            assert!(failed.replay.is_none(), "{says}: a response came, so the request is not sent again");
            drop(instance.await.unwrap());
        }

        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&many[..]);
        assert!(matches!(parse_head(&mut buf), Err(Error::Malformed(m)) if m.contains("100 header")));
    }

    #[tokio::test]
    async fn an_endless_head_is_cut_at_its_bound() {
        let (conn, mut peer) = pair();
        let instance = tokio::spawn(async move {
            read_until(&mut peer, b"\r\n\r\n").await;
            peer.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
            let line = format!("x-pad: {}\r\n", "p".repeat(1000));
            // Write errors are expected once the frontend gives up and closes.
            for _ in 0..100 {
                if peer.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let request = Request::new(&parts("GET", "/"), [], Empty::<Bytes>::new());
        let Err(failed) = exchange(conn, request, false).await else { panic!("an endless head was accepted") };
        assert!(failed.error.to_string().contains("larger than 64 KiB"), "{}", failed.error);
        instance.await.unwrap();
    }

    #[tokio::test]
    async fn only_a_replayable_request_on_a_reused_connection_comes_back_to_be_sent_again() {
        for (method, reused, replayed) in
            [("GET", true, true), ("DELETE", true, true), ("POST", true, false), ("GET", false, false)]
        {
            let (conn, peer) = pair();
            drop(peer);
            let request = Request::new(&parts(method, "/"), [], Empty::<Bytes>::new());
            let Err(failed) = exchange(conn, request, reused).await else { panic!("a closed connection answered") };
            assert_eq!(failed.replay.is_some(), replayed, "{method}, reused: {reused}: {}", failed.error);
        }
    }

    #[tokio::test]
    async fn added_fields_follow_the_request_line_and_go_again_with_a_replay() {
        let request = Request::new(&parts("GET", "/"), [("x-added", b"1".as_slice())], Empty::<Bytes>::new());
        let sent = head_text(&request);
        assert_eq!(sent, "GET / HTTP/1.1\r\nx-added: 1\r\nhost: hello.run.internal\r\n\r\n");
        let (conn, peer) = pair();
        drop(peer);
        let Err(failed) = exchange(conn, request, true).await else { panic!("a closed connection answered") };
        let replay = failed.replay.expect("a GET on a reused connection is sent again");
        assert_eq!(head_text(&replay), sent);
    }

    #[tokio::test]
    async fn an_instance_may_answer_before_reading_the_upload() {
        let (conn, mut peer) = pair();
        let (tx, body) = fed();
        let request = Request::new(&parts("POST", "/upload"), [], body);
        let instance = tokio::spawn(async move {
            read_until(&mut peer, b"\r\n\r\n").await;
            peer.write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!").await.unwrap();
            peer
        });
        tx.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
        // The rest of the upload never comes; the answer must not wait for it.
        let Ok((parts, body)) = exchange(conn, request, false).await else { panic!("the exchange failed") };
        assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        let (data, reusable) = drain(body).await;
        assert_eq!((data.unwrap(), reusable), (b"big!".to_vec(), false), "the request was not sent whole");
        drop((tx, instance.await.unwrap()));
    }

    #[tokio::test]
    async fn a_failing_client_body_is_the_clients_fault() {
        let (conn, mut peer) = pair();
        let (tx, body) = fed();
        let request = Request::new(&parts("POST", "/"), [], body);
        let _instance = tokio::spawn(async move {
            read_until(&mut peer, b"\r\n\r\n").await;
            peer
        });
        tx.send(Err(io::Error::other("client went away"))).await.unwrap();
        let Err(failed) = exchange(conn, request, false).await else { panic!("a broken upload was answered") };
        assert!(matches!(failed.error, Error::ClientBody(_)), "{}", failed.error);
    }

    #[tokio::test]
    async fn an_upgrade_hands_over_the_connection_and_the_bytes_after_the_101() {
        let (conn, mut peer) = pair();
        let instance = tokio::spawn(async move {
            read_until(&mut peer, b"\r\n\r\n").await;
            peer.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\nearly").await.unwrap();
            let mut buf = [0u8; 4];
            peer.read_exact(&mut buf).await.unwrap();
            buf
        });
        let request = Request::new(&parts("GET", "/ws"), [], Empty::<Bytes>::new());
        let Ok((parts, body)) = exchange(conn, request, false).await else { panic!("the exchange failed") };
        assert_eq!(parts.status, StatusCode::SWITCHING_PROTOCOLS);
        let (mut stream, early) = body.into_upgrade().expect("a 101 hands over its connection");
        assert_eq!(&early[..], b"early");
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(&instance.await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn an_idle_connection_is_open_until_the_instance_closes_it_or_speaks_unasked() {
        let (conn, peer) = pair();
        assert!(conn.is_open());
        drop(peer);
        tokio::task::yield_now().await;
        assert!(!conn.is_open());

        let (conn, mut peer) = pair();
        peer.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::task::yield_now().await;
        assert!(!conn.is_open(), "bytes on an idle connection mean it is out of step");
    }

    /// After an exchange the socket's readiness is forgotten (the last read drained it), so
    /// the idle check is free; a close or stray bytes that come later must still be seen.
    #[tokio::test]
    async fn a_connection_that_served_a_response_still_notices_a_later_close_or_stray_bytes() {
        for stray in [false, true] {
            let (conn, mut peer) = pair();
            let request = Request::new(&parts("GET", "/"), [], Empty::<Bytes>::new());
            let instance = tokio::spawn(async move {
                read_until(&mut peer, b"\r\n\r\n").await;
                peer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                peer
            });
            let Ok((_, mut body)) = exchange(conn, request, false).await else { panic!("the exchange failed") };
            while body.frame().await.is_some() {}
            let conn = body.take_reusable().expect("a whole response leaves the connection reusable");
            let mut peer = instance.await.unwrap();
            assert!(conn.is_open(), "nothing happened since the response");
            if stray {
                peer.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
            } else {
                drop(peer);
            }
            // The runtime learns of it from epoll when the task yields.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!conn.is_open(), "stray bytes: {stray}");
        }
    }

    fn head(text: &[u8]) -> Head {
        parse_head(&mut BytesMut::from(text)).unwrap().unwrap()
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&[u8], bool, Framing, bool); 8] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", false, Framing::Length(7), true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n", false, Framing::Length(7), true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false, Framing::Chunked(Chunk::Size), true),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 7\r\n\r\n",
                false,
                Framing::Chunked(Chunk::Size),
                false,
            ),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n", false, Framing::Close, false),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
            (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n", false, Framing::Length(0), true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true, Framing::Length(0), true),
        ];
        for (text, head_method, framed, keep_alive) in cases {
            let mut parsed = head(text);
            let what = String::from_utf8_lossy(text);
            assert_eq!(framing(&mut parsed, head_method).unwrap(), (framed, keep_alive), "{what}");
        }

        // Transfer-Encoding overrides Content-Length, which must not reach the client.
        let mut both = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 7\r\n\r\n");
        framing(&mut both, false).unwrap();
        assert!(!both.headers.contains_key(CONTENT_LENGTH));
        // A repeated Content-Length reaches the client as one value.
        let mut repeated = head(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 7\r\n\r\n");
        framing(&mut repeated, false).unwrap();
        assert_eq!(repeated.headers.get_all(CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["7"]);
    }

    /// Decodes `wire` fed `step` bytes at a time, as reads might deliver it.
    fn decode_in_steps(wire: &[u8], step: usize) -> Result<(Vec<u8>, Framing, usize), Error> {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match decode(&mut framing, &mut buf)? {
                Step::Data(bytes) => data.extend_from_slice(&bytes),
                Step::End => return Ok((data, framing, buf.len())),
                Step::More if fed == wire.len() => return Err(Error::Closed),
                Step::More => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;name=value\r\nhello\r\nA\r\n, chunked!\r\n0\r\nx-checksum: abc\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, framing, left) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"hello, chunked!", "step {step}");
            assert_eq!(framing, Framing::Chunked(Chunk::Done));
            // What follows the body stays in the buffer (and so makes the connection unusable).
            assert!(left <= 4, "step {step}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        let long_line = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(MAX_LINE + 10));
        let cases: [(&[u8], &str); 5] = [
            (b"zz\r\nhello\r\n0\r\n\r\n", "not a hex number"),
            (b"5\r\nhelloXX0\r\n\r\n", "longer than its size"),
            (b"5\nhello\r\n0\r\n\r\n", "CRLF"),
            (b"1000000000000000\r\n", "not a hex number"),
            (long_line.as_bytes(), "too long"),
        ];
        for (wire, says) in cases {
            let err = decode_in_steps(wire, 3).unwrap_err();
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
        let huge_trailers = format!("0\r\n{}\r\n", "x-t: 1\r\n".repeat(MAX_TRAILERS / 8 + 1));
        let err = decode_in_steps(huge_trailers.as_bytes(), 512).unwrap_err();
        assert!(err.to_string().contains("trailers"), "{err}");
    }

    #[test]
    fn numbers_are_written_and_read_exactly() {
        for (n, radix, text) in
            [(0u64, 10, "0"), (1234567890, 10, "1234567890"), (300, 16, "12c"), (u64::MAX, 16, "ffffffffffffffff")]
        {
            let mut buf = BytesMut::new();
            put_number(&mut buf, n, radix);
            assert_eq!(&buf[..], text.as_bytes());
        }
        assert_eq!(decimal(b"18446744073709551615"), None, "20 digits are refused, not wrapped");
        assert_eq!(decimal(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        assert_eq!(decimal(b""), None);
        assert_eq!(decimal(b"+5"), None);
    }
}
