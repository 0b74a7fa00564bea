//! The client connection's I/O, with a bound on how long a client may leave a response unread.
//!
//! A response holds its instance slot until it has been sent. hyper has no write timeout, so a
//! client that stops reading would keep the slot forever and, repeated, starve the service.
//! Here a write that stays blocked for longer than the stall limit fails the connection, which
//! drops the response and releases the slot. Reads need no such bound: hyper's header-read
//! timeout covers idle connections and the request deadline covers slow uploads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

pub(crate) struct ClientIo {
    inner: TokioIo<TcpStream>,
    stall: Stall,
}

impl ClientIo {
    pub(crate) fn new(stream: TcpStream, limit: Duration) -> ClientIo {
        ClientIo { inner: TokioIo::new(stream), stall: Stall { limit, timer: None, armed: false } }
    }
}

struct Stall {
    limit: Duration,
    /// Created on the first blocked write and reused after, so a connection allocates it at
    /// most once.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    fn watch<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.armed = false;
            return result;
        }
        if !self.armed {
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let fired = self.timer.as_mut().is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if fired {
            Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading the response")))
        } else {
            Poll::Pending
        }
    }
}

impl Read for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl Write for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stall.watch(cx, result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.stall.watch(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stall.watch(cx, result)
    }
}
