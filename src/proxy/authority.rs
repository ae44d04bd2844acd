//! Step 1 of an HTTP request: whose request is it? The authority comes from the absolute-form
//! URI (a forward-proxy request), the authority-form of `CONNECT`, HTTP/2's `:authority`, or
//! else the `Host` header, and the request is refused here, before routing, when it breaks a
//! rule of HTTP that a proxy must enforce. A proxy that forwards what its origin would parse
//! differently (two `Host` headers, credentials in the authority) is how requests get
//! smuggled past policy, so each rule answers `400` with the rule's name in
//! `%RESPONSE_CODE_DETAILS%` (flag `DPE`), as Envoy's codec errors do.
//!
//! | request | rule (`response_code_details`) |
//! |---|---|
//! | more than one `Host` header | `http1.multiple_host_headers` (RFC 9112 3.2) |
//! | `user:pass@` in the URL or in `Host` | `http1.userinfo_in_authority` (RFC 9110 4.2.4) |
//! | absolute-form with a scheme other than http/https | `http1.unsupported_scheme` |
//! | `*` as the target of anything but `OPTIONS` | `http1.invalid_asterisk_form` (RFC 9112 3.2.4) |
//! | `CONNECT` to anything but `host:port` | `http1.invalid_connect_authority` (RFC 9110 9.3.6) |
//! | a host longer than 255 bytes | `http1.host_too_long` (no DNS name is longer) |
//!
//! When a request has both an absolute-form URI and a `Host` header, the URI wins and `Host`
//! is rebuilt from it on the way upstream (RFC 9112 3.2.2; see `upstream_host_header`).

use std::str::FromStr;

use http::header;
use http::uri::Authority;
use http::{Method, Request, Version};

use crate::error::ProxyError;
use crate::http::body::Downstream;

/// The longest host egret routes: a DNS name is at most 255 bytes on the wire (253 as text).
const MAX_HOST: usize = 255;

/// The request's authority and the default port for its scheme, or why the request is refused.
pub(super) fn authority_of(req: &Request<Downstream>) -> Result<(Authority, u16), ProxyError> {
    if req.version() < Version::HTTP_2 {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        if hosts.next().is_some() && hosts.next().is_some() {
            return Err(rejected(
                "http1.multiple_host_headers",
                "the request has more than one Host header; a proxy must refuse it (RFC 9112 3.2), \
                 because the next hop may read the other one"
                    .into(),
            ));
        }
    }
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        return match uri.authority() {
            Some(a) if uri.scheme().is_none() && a.port_u16().is_some() => {
                let a = checked(a.clone())?;
                Ok((a, 443))
            }
            _ => Err(rejected(
                "http1.invalid_connect_authority",
                format!(
                    "CONNECT {uri}: the target of CONNECT is host:port (RFC 9110 9.3.6), e.g. \
                     CONNECT api.example.com:443"
                ),
            )),
        };
    }
    if let Some(a) = uri.authority() {
        let default_port = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => 80,
            Some(s) if s.eq_ignore_ascii_case("https") => 443,
            Some(s) => {
                return Err(rejected(
                    "http1.unsupported_scheme",
                    format!(
                        "the URL's scheme is '{s}'; egret proxies http:// (and https://) URLs only"
                    ),
                ));
            }
            None => {
                return Err(rejected(
                    "http1.invalid_url",
                    format!(
                        "the request target '{uri}' is an authority, which only CONNECT takes; \
                         send a path (GET / with a Host header) or a full http:// URL"
                    ),
                ));
            }
        };
        return Ok((checked(a.clone())?, default_port));
    }
    if uri.path() == "*" && req.method() != Method::OPTIONS {
        return Err(rejected(
            "http1.invalid_asterisk_form",
            format!(
                "'{} *': the target '*' is for OPTIONS only (RFC 9112 3.2.4)",
                req.method()
            ),
        ));
    }
    let Some(host) = req.headers().get(header::HOST) else {
        return Err(ProxyError::MissingHost);
    };
    let invalid = || {
        ProxyError::BadRequest(format!(
            "the Host header '{}' is not a valid host[:port]",
            String::from_utf8_lossy(host.as_bytes())
        ))
    };
    let a = host
        .to_str()
        .ok()
        .and_then(|h| Authority::from_str(h).ok())
        .filter(|a| !a.host().is_empty())
        .ok_or_else(invalid)?;
    Ok((checked(a)?, 80))
}

/// The rules every authority keeps, wherever it came from: no userinfo, a host a DNS name can be.
fn checked(a: Authority) -> Result<Authority, ProxyError> {
    if a.as_str().contains('@') {
        return Err(rejected(
            "http1.userinfo_in_authority",
            "the authority carries credentials (user:pass@host); egret never forwards them \
             (RFC 9110 4.2.4 deprecates them): send them in an Authorization header"
                .into(),
        ));
    }
    if a.host().len() > MAX_HOST {
        return Err(rejected(
            "http1.host_too_long",
            format!(
                "the host is {} bytes long; no DNS name is longer than {MAX_HOST}",
                a.host().len()
            ),
        ));
    }
    Ok(a)
}

fn rejected(rule: &'static str, why: String) -> ProxyError {
    ProxyError::Rejected { rule, why }
}
