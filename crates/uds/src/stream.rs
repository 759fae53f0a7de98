//! [`UdsStream`]: an accepted unix-socket connection whose client bytes go through the
//! [`AuthorityFixup`] before tonic's HTTP/2 server reads them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::authority::AuthorityFixup;

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One accepted connection. Writes (server to client) pass straight through.
#[derive(Debug)]
pub struct UdsStream {
    io: UnixStream,
    fixup: AuthorityFixup,
    /// Filtered bytes not yet handed to the reader, and how many of them it has taken.
    ready: Vec<u8>,
    taken: usize,
    raw: Box<[u8]>,
}

impl UdsStream {
    /// Wraps an accepted connection.
    pub fn new(io: UnixStream) -> Self {
        Self {
            io,
            fixup: AuthorityFixup::default(),
            ready: Vec::new(),
            taken: 0,
            raw: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }
}

impl AsyncRead for UdsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.taken);
                buf.put_slice(&this.ready[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.ready.len() {
                    this.ready.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut raw = ReadBuf::new(&mut this.raw);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                // End of stream; a partial frame left behind is the client's problem.
                return Poll::Ready(Ok(()));
            }
            this.fixup
                .feed(raw.filled(), &mut this.ready)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl AsyncWrite for UdsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for UdsStream {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections accepted on `listener`, ready for `serve_with_incoming*`.
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = io::Result<UdsStream>> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|io| io.map(UdsStream::new))
}
