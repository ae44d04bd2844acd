//! The original destination of a connection that the capture rules `REDIRECT`ed to egret's
//! outbound listener: the kernel keeps it in the connection-tracking entry, and
//! `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (`SOL_IPV6, IP6T_SO_ORIGINAL_DST` for IPv6) reads it.
//! socket2 wraps both calls, so egret needs no `unsafe` of its own for them.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where the client meant to connect, when the connection was redirected to egret; `None` when
/// it was not (the client connected to egret's own address, as an explicit proxy client does,
/// or the kernel has no NAT entry for it).
pub fn original_destination(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let got = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    let dst = got.ok()?.as_socket()?;
    // A connection made to egret directly has a NAT entry only if some rule touched it; either
    // way its original destination is egret's own address.
    (dst != local).then_some(dst)
}
