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

#[cfg(test)]
mod tests {
    use super::*;

    /// Small reads append exactly the bytes that arrived, at most `hint` at a time, whatever
    /// the buffer held; end of stream is `Ok(0)` and leaves the buffer as it was.
    #[tokio::test]
    async fn small_reads_append_what_arrived_and_end_of_stream_is_zero() {
        let (client, server) = tokio::io::duplex(4096);
        let mut stream = Stream(server);
        let mut peer = client;
        let sent: Vec<u8> = (0..300u16).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.expect("write");
        let mut buf = BytesMut::from(&b"kept"[..]);
        let mut reads = Vec::new();
        while buf.len() < 4 + sent.len() {
            let n = stream.read_into(&mut buf, SMALL_READ).await.expect("read");
            assert!(n > 0 && n <= SMALL_READ, "read {n} bytes");
            reads.push(n);
        }
        assert_eq!(&buf[..4], b"kept");
        assert_eq!(&buf[4..], &sent[..]);
        assert!(
            reads.len() >= 3,
            "300 bytes in reads of at most 128: {reads:?}"
        );
        drop(peer);
        assert_eq!(
            stream.read_into(&mut buf, SMALL_READ).await.expect("eof"),
            0
        );
        assert_eq!(buf.len(), 4 + sent.len());
    }

    /// A small read dropped while it waits (as `select!` drops it) loses nothing: the bytes
    /// that arrive later are all read by the next one.
    #[tokio::test]
    async fn a_dropped_small_read_loses_no_bytes() {
        let (mut peer, server) = tokio::io::duplex(4096);
        let mut stream = Stream(server);
        let mut buf = BytesMut::new();
        {
            let read = stream.read_into(&mut buf, SMALL_READ);
            tokio::pin!(read);
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "nothing was sent yet");
        }
        assert!(buf.is_empty());
        peer.write_all(b"\x30\x05\x00\x01tab").await.expect("write");
        let n = stream.read_into(&mut buf, SMALL_READ).await.expect("read");
        assert_eq!(n, 7);
        assert_eq!(&buf[..], b"\x30\x05\x00\x01tab");
    }
}
