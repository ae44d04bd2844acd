//! Tests of the client transport's read-ahead, of alert names and of the plaintext-HTTP sniff.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::AlertDescription;
use tokio::io::{AsyncRead, ReadBuf};

use super::failure::{alert_name, plaintext_http};
use super::stream::AHEAD;
use super::*;

/// A socket that hands out whatever is asked for, up to what it holds (the first read at
/// most `first` bytes: a short answer), and counts reads.
struct Counted {
    data: Vec<u8>,
    at: usize,
    first: usize,
    reads: usize,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let limit = if this.reads == 0 {
            this.first
        } else {
            usize::MAX
        };
        this.reads += 1;
        let n = out.remaining().min(this.data.len() - this.at).min(limit);
        out.put_slice(&this.data[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

async fn read_in_4k(r: &mut Recording<Counted>, total: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while got.len() < total {
        let n = tokio::io::AsyncReadExt::read(r, &mut chunk)
            .await
            .expect("read");
        assert!(n > 0, "early end after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

#[tokio::test]
async fn small_reads_go_direct_and_large_ones_read_ahead_without_losing_bytes() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut r = Recording::new(Counted {
        data: data.clone(),
        at: 0,
        first: 100,
        reads: 0,
    });
    // A short answer does not fill the caller's buffer: read directly, nothing allocated.
    let mut small = [0u8; 4096];
    assert_eq!(
        tokio::io::AsyncReadExt::read(&mut r, &mut small)
            .await
            .expect("read"),
        100
    );
    assert!(r.ahead.is_empty());
    // A read that fills the caller's 4 KiB switches to read-ahead: the rest of the stream
    // arrives in AHEAD-sized socket reads, byte for byte.
    let rest = read_in_4k(&mut r, data.len() - 100).await;
    assert_eq!(&rest[..], &data[100..]);
    let socket_reads = r.get_ref().reads;
    let expected = 2 + (data.len() - 100 - 4096).div_ceil(AHEAD);
    assert_eq!(
        socket_reads, expected,
        "socket reads for 100 kB in 4 KiB asks"
    );
    // End of stream passes through as a zero-length read.
    assert_eq!(
        tokio::io::AsyncReadExt::read(&mut r, &mut small)
            .await
            .expect("read"),
        0
    );
}

#[test]
fn alert_names_are_snake_case() {
    assert_eq!(
        alert_name(AlertDescription::CertificateRequired),
        "certificate_required"
    );
    assert_eq!(alert_name(AlertDescription::UnknownCA), "unknown_ca");
}

#[test]
fn plaintext_http_is_recognised() {
    assert_eq!(
        plaintext_http(b"HTTP/1.1 400 Bad Request\r\nServer: nginx").as_deref(),
        Some("HTTP/1.1 400 Bad Request")
    );
    assert_eq!(plaintext_http(b"\x16\x03\x03"), None);
}
