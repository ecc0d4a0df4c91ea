//! The broker connection's TCP socket, set to acknowledge what it receives at once.
//!
//! A broker that leaves Nagle's algorithm on (Mosquitto does, unless
//! `set_tcp_nodelay true`) holds back what it has for the agent while a small segment it
//! sent earlier is unacknowledged. The agent's kernel delays an acknowledgement, by at
//! least 40 ms on Linux, until the agent sends something it can ride on. After a packet
//! the agent does not answer (the broker's PUBACK of the agent's last result, above all)
//! nothing is sent, so the broker holds the next sensor messages while the agent waits
//! for them, until the timer fires. The agent's own side is the mirror image: with Nagle
//! on, its result waits while its last PUBACK is unacknowledged by the broker.
//!
//! Measured on loopback against Mosquitto 2.0 with its default configuration
//! (tests/bench/p99.py, the agent before and after this change alternating, two rounds):
//! p99 at 2,000 messages/s 40.3 and 40.0 ms before, 0.67 and 0.57 ms after; at 8,000/s
//! 63.0 and 58.4 ms before, 1.54 and 3.09 ms after. A packet capture showed each stall
//! starting with the broker's PUBACKs and ending with the agent's delayed ACK 40 ms
//! later. Either remedy alone left stalls: `TCP_NODELAY` alone a p99 of about 40 ms, and
//! immediate acknowledgements after the broker's PUBACKs alone 6 to 34 ms at 2,000 to
//! 4,000/s (tests/bench/notes.md).
//!
//! So the relay sets `TCP_NODELAY` on the connection, and `TCP_QUICKACK` after every
//! read that brought data: the option does not stay set (the kernel goes back to delaying
//! acknowledgements by its own rules), and set while an acknowledgement is pending it
//! sends that at once. It costs one system call per read and, when the agent has nothing
//! to send back, a 40-byte segment that would otherwise have been saved. Elsewhere than
//! on Linux the reads are passed through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that acknowledges each read's data at once.
pub struct QuickAck(TcpStream);

impl QuickAck {
    /// Also turns Nagle's algorithm off: a failure only costs latency, so it is ignored.
    pub fn new(tcp: TcpStream) -> QuickAck {
        let _ = tcp.set_nodelay(true);
        QuickAck(tcp)
    }

    /// Sends the pending acknowledgement now, if one is pending.
    fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (r, n) = super::poll_read_len(&mut self.0, cx, buf);
        if n > 0 {
            self.ack_now();
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The wrapper passes bytes through both ways unchanged, with Nagle off, and a read
    /// leaves the socket acknowledging at once; the timing itself is measured by
    /// tests/bench/p99.py.
    #[tokio::test]
    async fn bytes_pass_unchanged_with_nagle_off_and_reads_acknowledged_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 5];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(b"world!").await.unwrap();
            got
        });
        let mut q = QuickAck::new(TcpStream::connect(addr).await.unwrap());
        assert!(q.0.nodelay().unwrap(), "Nagle's algorithm is off");
        // Delayed acknowledgements on (the kernel's "pingpong" mode, which it enters by
        // itself on a connection that answers what it reads), as the agent's would be.
        #[cfg(target_os = "linux")]
        socket2::SockRef::from(&q.0).set_tcp_quickack(false).unwrap();
        q.write_all(b"hello").await.unwrap();
        let mut back = vec![0u8; 6];
        q.read_exact(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        // The read switched the socket to acknowledging at once.
        #[cfg(target_os = "linux")]
        assert!(socket2::SockRef::from(&q.0).tcp_quickack().unwrap(), "quick acknowledgements after a read");
        assert_eq!(server.await.unwrap(), b"hello");
    }
}
