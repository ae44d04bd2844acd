//! The HTTP/1 wire helpers both halves of egret's HTTP/1.1 code share (`server`, the
//! downstream loop, and `client`, the upstream one): header lines, chunk sizes, the cached
//! `Date`, vectored writes, and the per-thread reuse of header maps.
//!
//! Kept apart so that the two halves do not import each other: each uses this file, and
//! nothing here knows about requests, routes or pools.

use std::io::IoSlice;

use http::header::{HeaderMap, HeaderName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Most header maps kept per thread for reuse, and the largest (in entries) worth keeping.
const SPARE_MAPS: usize = 32;
const SPARE_MAP_MAX: usize = 64;

thread_local! {
    /// Header maps of responses already written, emptied, for the next response heads. A map
    /// with room for a typical response's fields is larger than 1 KiB, a size glibc's malloc
    /// serves from its slower bins (consolidating fast bins first) on every request.
    static SPARE: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty header map with room for at least `n` fields, reused when one is spare.
pub fn spare_header_map(n: usize) -> HeaderMap {
    match SPARE.with(|s| s.borrow_mut().pop()) {
        Some(m) if m.capacity() >= n => m,
        _ => HeaderMap::with_capacity(n),
    }
}

/// Keeps a map whose response was written for [`spare_header_map`] (emptied; its values' bytes
/// are released now). Very large maps and maps beyond the per-thread cap are dropped.
pub fn recycle_header_map(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAP_MAX {
        return;
    }
    map.clear();
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_MAPS {
            s.push(map);
        }
    });
}

/// Appends `name: value` lines, leaving out `skip`.
pub fn push_headers(out: &mut Vec<u8>, headers: &HeaderMap, skip: Option<&HeaderName>) {
    for (name, value) in headers {
        if skip == Some(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in lower-case hex (a chunk-size line).
pub fn push_hex(out: &mut Vec<u8>, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut v = n;
    loop {
        i -= 1;
        tmp[i] = DIGITS[v & 0xf];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Appends the current time as an HTTP date, formatted at most once a second per thread.
pub fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == text.len() {
                text.copy_from_slice(s.as_bytes());
                *at = secs;
            } else {
                out.extend_from_slice(s.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&text[..]);
    });
}

/// Writes every buffer, in order, with as few `writev` calls as the socket allows.
pub async fn write_all_vectored(
    stream: &mut TcpStream,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = stream.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn a_recycled_header_map_comes_back_empty_and_is_reused() {
        let mut m = HeaderMap::with_capacity(12);
        m.insert("set-cookie", HeaderValue::from_static("session=secret"));
        m.append("x-a", HeaderValue::from_static("1"));
        let cap = m.capacity();
        recycle_header_map(m);
        let again = spare_header_map(4);
        assert!(
            again.is_empty(),
            "a reused map carried fields over: {again:?}"
        );
        assert_eq!(
            again.capacity(),
            cap,
            "the spare map was not the recycled one"
        );
        // A map too small for the ask is not handed out.
        recycle_header_map(HeaderMap::with_capacity(1));
        assert!(spare_header_map(40).capacity() >= 40);
        // Oversized maps are not kept.
        recycle_header_map(HeaderMap::with_capacity(1000));
        assert!(spare_header_map(1).capacity() <= SPARE_MAP_MAX);
    }
}
