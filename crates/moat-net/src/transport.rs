//! A byte transport the driver reads MQTT from: a TCP or TLS stream, or WebSocket binary
//! messages carrying an MQTT byte stream (MQTT-6.0.0).

use bytes::BytesMut;
use std::future::Future;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the connection driver needs from a transport.
pub(crate) trait Transport: Send {
    /// Appends received bytes to `buf`, reserving about `hint` bytes for them; `Ok(0)` at
    /// end of stream. Cancel-safe: if the future is dropped, no bytes are lost.
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
        hint: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes and flushes all of `data`, leaving it empty.
    fn write_all_from(
        &mut self,
        data: &mut BytesMut,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the write side politely.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Reads of at most this many bytes wait in a buffer of their own, not in the read buffer.
pub(crate) const SMALL_READ: usize = 128;

/// A plain byte stream (TCP or TLS).
pub(crate) struct Stream<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for Stream<S> {
    async fn read_into(&mut self, buf: &mut BytesMut, hint: usize) -> io::Result<usize> {
        if hint <= SMALL_READ && buf.capacity() - buf.len() < hint {
            // A small read waits in a buffer of its own and grows `buf` only once bytes have
            // arrived. By then the payloads last cut from `buf` have usually been delivered,
            // so `buf` takes its allocation back whole instead of allocating another one
            // while they are still queued: a client that publishes now and then costs no
            // allocation per packet. Cancel-safe: bytes are appended in the poll that reads
            // them.
            let mut small = [0u8; SMALL_READ];
            let n = self.0.read(&mut small[..hint]).await?;
            buf.extend_from_slice(&small[..n]);
            return Ok(n);
        }
        buf.reserve(hint);
        self.0.read_buf(buf).await
    }

    async fn write_all_from(&mut self, data: &mut BytesMut) -> io::Result<()> {
        self.0.write_all(data).await?;
        data.clear();
        self.0.flush().await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}
