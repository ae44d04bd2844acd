use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Method, Version};

use super::format::TimeFmt;
use super::write::{push_addr, push_padded, push_u128, write_time};
use super::*;
use crate::error::Flags;

fn record() -> AccessRecord {
    let mut r = AccessRecord::new(
        "240.240.0.2:80".parse().expect("addr"),
        "10.128.2.33:56948".parse().expect("addr"),
        7,
    );
    r.start = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_666_549_713_789);
    r.method = Some(Method::GET);
    r.path = Some(http::uri::PathAndQuery::from_static("/"));
    r.protocol = Some(Version::HTTP_11);
    r.status = 200;
    r.details = Some("via_upstream".into());
    r.bytes_sent = 44;
    r.end = Some(r.start_instant + std::time::Duration::from_millis(28));
    r.upstream_host = Some("10.128.2.35:3000".parse().expect("addr"));
    r.upstream_cluster = Some(Arc::from("outbound|3000||egress.ns.svc.cluster.local"));
    r.upstream_local = Some("10.128.2.33:50174".parse().expect("addr"));
    r
}

#[test]
fn istio_text_format_matches_the_seed_line_shape() {
    let f = LogFormat::istio_text();
    let mut r = record();
    let mut h = HeaderMap::new();
    h.insert("user-agent", HeaderValue::from_static("curl/7.64.0"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("56140728-4722-972f-afaa-299e00837e1a"),
    );
    r.authority = Some("349bc685.apps.example".into());
    f.capture_request(&mut r, &h);
    let mut resp = HeaderMap::new();
    resp.insert(
        "x-envoy-upstream-service-time",
        HeaderValue::from_static("27"),
    );
    f.capture_response(&mut r, &resp);
    let line = f.format(&r);
    assert_eq!(
        line,
        "[2022-10-23T18:28:33.789Z] \"GET / HTTP/1.1\" 200 - via_upstream - \"-\" 0 44 28 27 \"-\" \"curl/7.64.0\" \"56140728-4722-972f-afaa-299e00837e1a\" \"349bc685.apps.example\" \"10.128.2.35:3000\" outbound|3000||egress.ns.svc.cluster.local 10.128.2.33:50174 240.240.0.2:80 10.128.2.33:56948 - -\n"
    );
}

#[test]
fn json_keeps_types_and_nulls() {
    let f = LogFormat::istio_json();
    let r = record();
    let line = f.format(&r);
    assert!(
        line.starts_with("{\"authority\":null,\"bytes_received\":0,\"bytes_sent\":44,"),
        "{line}"
    );
    assert!(line.contains("\"response_code\":200"), "{line}");
    assert!(line.contains("\"response_flags\":\"-\""), "{line}");
    assert!(line.contains("\"route_name\":null"), "{line}");
    assert!(line.ends_with("}\n"));
}

#[test]
fn operators_parse_with_alternatives_and_truncation() {
    let f = LogFormat::text(
        "%REQ(X-MISSING?USER-AGENT):4% %START_TIME(%s.%3f)% %RESPONSE_FLAGS_LONG% 100% done",
    )
    .expect("compiles");
    let mut r = record();
    r.flags = Flags::UF | Flags::URX;
    let mut h = HeaderMap::new();
    h.insert("user-agent", HeaderValue::from_static("curl/8"));
    f.capture_request(&mut r, &h);
    assert_eq!(
        f.format(&r),
        "curl 1666549713.789 UpstreamConnectionFailure,UpstreamRetryLimitExceeded 100% done\n"
    );
}

#[test]
fn bad_formats_are_errors_that_name_the_operator() {
    assert!(
        LogFormat::text("%REQ_METHOD%")
            .unwrap_err()
            .contains("unknown access log operator %REQ_METHOD%")
    );
    assert!(
        LogFormat::text("%DURATON%")
            .unwrap_err()
            .contains("did you mean %DURATION%?")
    );
    assert!(
        LogFormat::text("%REQ(A?B?C)%")
            .unwrap_err()
            .contains("at most one '?'")
    );
    assert!(
        LogFormat::text("%REQ(A)x%")
            .unwrap_err()
            .contains("incorrect position of ')'")
    );
    assert!(
        LogFormat::text("%BYTES_SENT:x%")
            .unwrap_err()
            .contains("must be an integer")
    );
    assert!(
        LogFormat::text("%REQ%")
            .unwrap_err()
            .contains("needs a header name")
    );
}

#[test]
fn start_time_extensions() {
    let f = LogFormat::text("%START_TIME(%Y/%m/%d %H:%M:%E3S)%").expect("compiles");
    assert_eq!(f.format(&record()), "2022/10/23 18:28:33.789\n");
}

#[test]
fn a_stalled_writer_never_blocks_logging_and_drops_are_counted() {
    /// A writer that blocks until released.
    struct Stalled(std::sync::Arc<std::sync::Mutex<()>>);
    impl std::io::Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            drop(self.0.lock());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let gate = std::sync::Arc::new(std::sync::Mutex::new(()));
    let held = gate.lock().expect("lock");
    let line = LogFormat::istio_text().format(&record()).len();
    // Room for 8 lines.
    let log = AccessLog::start_with_capacity(
        Sink::Writer(Box::new(Stalled(gate.clone()))),
        LogFormat::istio_text(),
        8 * line,
    )
    .expect("starts");
    let rec = record();
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        log.log(&rec);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "logging must not wait for the writer"
    );
    let dropped = log.dropped.load(Ordering::Relaxed);
    // The writer is stalled on its first write: at most two buffers' worth (the one being
    // written and the one filling) got through.
    assert!(
        dropped >= 1000 - 16,
        "the buffer overflowed: dropped {dropped}"
    );
    drop(held);
    log.flush();
    let written = log.written.load(Ordering::Relaxed);
    assert_eq!(
        written + dropped,
        1000,
        "every line is either written or counted as dropped"
    );
}

#[test]
fn hand_written_number_and_address_formatting_matches_display() {
    for v in [0u128, 7, 10, 99, 100, 65535, 1_666_549_713_789, u128::MAX] {
        let mut s = String::new();
        push_u128(&mut s, v);
        assert_eq!(s, v.to_string());
    }
    for (v, w, want) in [
        (7, 2, "07"),
        (2026, 4, "2026"),
        (5, 3, "005"),
        (0, 2, "00"),
        (123, 2, "123"),
    ] {
        let mut s = String::new();
        push_padded(&mut s, v, w);
        assert_eq!(s, want);
    }
    for a in [
        "10.128.2.35:3000",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "[::1]:443",
        "[fe80::1]:80",
    ] {
        let addr: SocketAddr = a.parse().expect("addr");
        let mut s = String::new();
        push_addr(&mut s, addr);
        assert_eq!(s, addr.to_string());
    }
    let mut s = String::new();
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_666_549_713_789);
    write_time(&mut s, t, &TimeFmt::Default);
    assert_eq!(s, "2022-10-23T18:28:33.789Z");
    // The per-second cache: same second, the next second, and back.
    for (ms, want) in [
        (1_666_549_713_001_i64, "2022-10-23T18:28:33.001Z"),
        (1_666_549_714_000, "2022-10-23T18:28:34.000Z"),
        (1_666_549_713_999, "2022-10-23T18:28:33.999Z"),
        (-1_500, "1969-12-31T23:59:58.500Z"),
    ] {
        let t = if ms >= 0 {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
        } else {
            SystemTime::UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
        };
        let mut s = String::new();
        write_time(&mut s, t, &TimeFmt::Default);
        assert_eq!(s, want);
    }
}

#[test]
fn custom_json_format() {
    let f = LogFormat::from_mesh(
        Encoding::Json,
        Some(r#"{"code": "%RESPONSE_CODE%", "where": "%UPSTREAM_HOST% via %ROUTE_NAME%"}"#),
    )
    .expect("compiles");
    assert_eq!(
        f.format(&record()),
        "{\"code\":200,\"where\":\"10.128.2.35:3000 via -\"}\n"
    );
}

/// Every operator the parser knows (aliases included) on one fully filled record: pins what each
/// one prints, so moving the operator table or the writer cannot change a line unnoticed.
#[test]
fn every_operator_prints_what_it_did_before() {
    let ops = [
        "START_TIME",
        "START_TIME(%Y/%m/%d %H:%M:%S.%3f)",
        "START_TIME_LOCAL",
        "REQ(:METHOD)",
        "REQ(:PATH)",
        "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)",
        "REQ(:AUTHORITY)",
        "REQ(HOST)",
        "REQ(:SCHEME)",
        "REQ(USER-AGENT)",
        "REQUEST_HEADER(X-REQUEST-ID)",
        "REQ_WITHOUT_QUERY(:PATH)",
        "REQ(X-ABSENT)",
        "RESP(SERVER)",
        "RESPONSE_HEADER(X-ABSENT?SERVER)",
        "TRAILER(GRPC-STATUS)",
        "RESPONSE_TRAILER(GRPC-MESSAGE)",
        "REQ(USER-AGENT):4",
        "PROTOCOL",
        "UPSTREAM_PROTOCOL",
        "RESPONSE_CODE",
        "RESPONSE_FLAGS",
        "RESPONSE_FLAGS_LONG",
        "RESPONSE_CODE_DETAILS",
        "RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)",
        "CONNECTION_TERMINATION_DETAILS",
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        "BYTES_RECEIVED",
        "UPSTREAM_WIRE_BYTES_SENT",
        "DOWNSTREAM_WIRE_BYTES_RECEIVED",
        "BYTES_SENT",
        "UPSTREAM_WIRE_BYTES_RECEIVED",
        "DOWNSTREAM_WIRE_BYTES_SENT",
        "DURATION",
        "REQUEST_DURATION",
        "RESPONSE_DURATION",
        "RESPONSE_TX_DURATION",
        "UPSTREAM_HOST",
        "UPSTREAM_HOST_NAME",
        "UPSTREAM_CLUSTER",
        "UPSTREAM_CLUSTER_RAW",
        "UPSTREAM_LOCAL_ADDRESS",
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "UPSTREAM_LOCAL_PORT",
        "UPSTREAM_REMOTE_ADDRESS",
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "UPSTREAM_REMOTE_PORT",
        "UPSTREAM_TLS_VERSION",
        "UPSTREAM_TLS_CIPHER",
        "UPSTREAM_PEER_SUBJECT",
        "UPSTREAM_PEER_ISSUER",
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        "UPSTREAM_CONNECTION_ID",
        "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_LOCAL_PORT",
        "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_REMOTE_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_PORT",
        "REQUESTED_SERVER_NAME",
        "ROUTE_NAME",
        "CONNECTION_ID",
        "ENVIRONMENT(EGRET_TEST_ABSENT_VARIABLE)",
        "LOCAL_REPLY_BODY",
        "DYNAMIC_METADATA(istio.mixer:status)",
        "CLUSTER_METADATA(x)",
        "UPSTREAM_METADATA(x)",
        "FILTER_STATE(x)",
        "UPSTREAM_FILTER_STATE(x)",
        "GRPC_STATUS",
        "GRPC_STATUS_NUMBER",
        "STREAM_ID",
        "VIRTUAL_CLUSTER_NAME",
        "DOWNSTREAM_PEER_SUBJECT",
        "DOWNSTREAM_PEER_ISSUER",
        "DOWNSTREAM_TLS_VERSION",
        "DOWNSTREAM_TLS_CIPHER",
        "DOWNSTREAM_PEER_URI_SAN",
        "DOWNSTREAM_LOCAL_URI_SAN",
        "UPSTREAM_PEER_URI_SAN",
        "UPSTREAM_LOCAL_URI_SAN",
    ];
    let format: String = ops
        .iter()
        .enumerate()
        .map(|(i, o)| format!("{i}=%{o}%\n"))
        .collect();
    let text = LogFormat::text(&format).expect("every operator compiles");
    let json_pairs: Vec<(String, String)> = ops
        .iter()
        .map(|o| ((*o).to_string(), format!("%{o}%")))
        .collect();
    let json = LogFormat::json(&json_pairs).expect("every operator compiles as JSON");

    let mut req = HeaderMap::new();
    req.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    req.insert("x-request-id", HeaderValue::from_static("rid-1"));
    let mut resp = HeaderMap::new();
    resp.insert("server", HeaderValue::from_static("nginx"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let line = |f: &LogFormat| {
        let mut r = filled_record();
        f.capture_request(&mut r, &req);
        f.capture_response(&mut r, &resp);
        f.capture_trailers(&mut r, &trailers);
        f.format(&r)
    };
    assert_eq!(line(&text), EVERY_OPERATOR_TEXT);
    assert_eq!(line(&json), EVERY_OPERATOR_JSON);
}

const EVERY_OPERATOR_TEXT: &str = "0=2022-10-23T18:28:33.789Z\n1=2022/10/23 18:28:33.789\n2=2022-10-23T18:28:33.789Z\n3=GET\n4=/a/b?x=1\n5=/a/b?x=1\n6=api.example.com\n7=api.example.com\n8=http\n9=curl/8.5.0\n10=rid-1\n11=/a/b\n12=-\n13=nginx\n14=nginx\n15=0\n16=-\n17=curl\n18=HTTP/1.1\n19=HTTP/1.1\n20=200\n21=UF,URX\n22=UpstreamConnectionFailure,UpstreamRetryLimitExceeded\n23=upstream_reset_before_response_started{connection_failure}\n24=upstream_reset_before_response_started{connection failure}\n25=idle timeout\n26=TLS_error:|268435581:SSL routines:CERTIFICATE_VERIFY_FAILED\n27=1234\n28=1234\n29=1234\n30=44\n31=44\n32=44\n33=28\n34=3\n35=20\n36=8\n37=10.128.2.35:3000\n38=api.example.com\n39=outbound|3000||egress.ns.svc.cluster.local\n40=outbound|3000||egress.ns.svc.cluster.local\n41=10.128.2.33:50174\n42=10.128.2.33\n43=50174\n44=10.128.2.35:3000\n45=10.128.2.35\n46=3000\n47=TLSv1.3\n48=TLS13_AES_128_GCM_SHA256\n49=CN=api.example.com\n50=CN=Example CA\n51=2\n52=42\n53=240.240.0.2:80\n54=240.240.0.2\n55=80\n56=10.128.2.33:56948\n57=10.128.2.33:56948\n58=10.128.2.33\n59=10.128.2.33\n60=56948\n61=56948\n62=api.example.com\n63=api-route\n64=7\n65=-\n66=upstream connect error\n67=-\n68=-\n69=-\n70=-\n71=-\n72=-\n73=-\n74=-\n75=-\n76=-\n77=-\n78=-\n79=-\n80=-\n81=-\n82=-\n83=-\n";
const EVERY_OPERATOR_JSON: &str = "{\"START_TIME\":\"2022-10-23T18:28:33.789Z\",\"START_TIME(%Y/%m/%d %H:%M:%S.%3f)\":\"2022/10/23 18:28:33.789\",\"START_TIME_LOCAL\":\"2022-10-23T18:28:33.789Z\",\"REQ(:METHOD)\":\"GET\",\"REQ(:PATH)\":\"/a/b?x=1\",\"REQ(X-ENVOY-ORIGINAL-PATH?:PATH)\":\"/a/b?x=1\",\"REQ(:AUTHORITY)\":\"api.example.com\",\"REQ(HOST)\":\"api.example.com\",\"REQ(:SCHEME)\":\"http\",\"REQ(USER-AGENT)\":\"curl/8.5.0\",\"REQUEST_HEADER(X-REQUEST-ID)\":\"rid-1\",\"REQ_WITHOUT_QUERY(:PATH)\":\"/a/b\",\"REQ(X-ABSENT)\":null,\"RESP(SERVER)\":\"nginx\",\"RESPONSE_HEADER(X-ABSENT?SERVER)\":\"nginx\",\"TRAILER(GRPC-STATUS)\":\"0\",\"RESPONSE_TRAILER(GRPC-MESSAGE)\":null,\"REQ(USER-AGENT):4\":\"curl\",\"PROTOCOL\":\"HTTP/1.1\",\"UPSTREAM_PROTOCOL\":\"HTTP/1.1\",\"RESPONSE_CODE\":200,\"RESPONSE_FLAGS\":\"UF,URX\",\"RESPONSE_FLAGS_LONG\":\"UpstreamConnectionFailure,UpstreamRetryLimitExceeded\",\"RESPONSE_CODE_DETAILS\":\"upstream_reset_before_response_started{connection_failure}\",\"RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)\":\"upstream_reset_before_response_started{connection failure}\",\"CONNECTION_TERMINATION_DETAILS\":\"idle timeout\",\"UPSTREAM_TRANSPORT_FAILURE_REASON\":\"TLS_error:|268435581:SSL routines:CERTIFICATE_VERIFY_FAILED\",\"BYTES_RECEIVED\":1234,\"UPSTREAM_WIRE_BYTES_SENT\":1234,\"DOWNSTREAM_WIRE_BYTES_RECEIVED\":1234,\"BYTES_SENT\":44,\"UPSTREAM_WIRE_BYTES_RECEIVED\":44,\"DOWNSTREAM_WIRE_BYTES_SENT\":44,\"DURATION\":28,\"REQUEST_DURATION\":3,\"RESPONSE_DURATION\":20,\"RESPONSE_TX_DURATION\":8,\"UPSTREAM_HOST\":\"10.128.2.35:3000\",\"UPSTREAM_HOST_NAME\":\"api.example.com\",\"UPSTREAM_CLUSTER\":\"outbound|3000||egress.ns.svc.cluster.local\",\"UPSTREAM_CLUSTER_RAW\":\"outbound|3000||egress.ns.svc.cluster.local\",\"UPSTREAM_LOCAL_ADDRESS\":\"10.128.2.33:50174\",\"UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT\":\"10.128.2.33\",\"UPSTREAM_LOCAL_PORT\":50174,\"UPSTREAM_REMOTE_ADDRESS\":\"10.128.2.35:3000\",\"UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT\":\"10.128.2.35\",\"UPSTREAM_REMOTE_PORT\":3000,\"UPSTREAM_TLS_VERSION\":\"TLSv1.3\",\"UPSTREAM_TLS_CIPHER\":\"TLS13_AES_128_GCM_SHA256\",\"UPSTREAM_PEER_SUBJECT\":\"CN=api.example.com\",\"UPSTREAM_PEER_ISSUER\":\"CN=Example CA\",\"UPSTREAM_REQUEST_ATTEMPT_COUNT\":2,\"UPSTREAM_CONNECTION_ID\":42,\"DOWNSTREAM_LOCAL_ADDRESS\":\"240.240.0.2:80\",\"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT\":\"240.240.0.2\",\"DOWNSTREAM_LOCAL_PORT\":80,\"DOWNSTREAM_REMOTE_ADDRESS\":\"10.128.2.33:56948\",\"DOWNSTREAM_DIRECT_REMOTE_ADDRESS\":\"10.128.2.33:56948\",\"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT\":\"10.128.2.33\",\"DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT\":\"10.128.2.33\",\"DOWNSTREAM_REMOTE_PORT\":56948,\"DOWNSTREAM_DIRECT_REMOTE_PORT\":56948,\"REQUESTED_SERVER_NAME\":\"api.example.com\",\"ROUTE_NAME\":\"api-route\",\"CONNECTION_ID\":7,\"ENVIRONMENT(EGRET_TEST_ABSENT_VARIABLE)\":null,\"LOCAL_REPLY_BODY\":\"upstream connect error\",\"DYNAMIC_METADATA(istio.mixer:status)\":null,\"CLUSTER_METADATA(x)\":null,\"UPSTREAM_METADATA(x)\":null,\"FILTER_STATE(x)\":null,\"UPSTREAM_FILTER_STATE(x)\":null,\"GRPC_STATUS\":null,\"GRPC_STATUS_NUMBER\":null,\"STREAM_ID\":null,\"VIRTUAL_CLUSTER_NAME\":null,\"DOWNSTREAM_PEER_SUBJECT\":null,\"DOWNSTREAM_PEER_ISSUER\":null,\"DOWNSTREAM_TLS_VERSION\":null,\"DOWNSTREAM_TLS_CIPHER\":null,\"DOWNSTREAM_PEER_URI_SAN\":null,\"DOWNSTREAM_LOCAL_URI_SAN\":null,\"UPSTREAM_PEER_URI_SAN\":null,\"UPSTREAM_LOCAL_URI_SAN\":null}\n";

fn filled_record() -> AccessRecord {
    let mut r = record();
    r.path = Some(http::uri::PathAndQuery::from_static("/a/b?x=1"));
    r.authority = Some("api.example.com".into());
    r.scheme = "http";
    r.flags = Flags::UF | Flags::URX;
    r.details = Some("upstream_reset_before_response_started{connection failure}".into());
    r.termination_details = Some("idle timeout".into());
    r.transport_failure =
        Some("TLS_error:|268435581:SSL routines:CERTIFICATE_VERIFY_FAILED".into());
    r.bytes_received = 1234;
    r.request_done = Some(r.start_instant + std::time::Duration::from_millis(3));
    r.first_upstream_byte = Some(r.start_instant + std::time::Duration::from_millis(20));
    r.upstream_host_name = Some("api.example.com".into());
    let tls = ConnTls::default();
    let _ = tls.version.set(rustls::ProtocolVersion::TLSv1_3);
    let _ = tls
        .cipher
        .set(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let _ = tls.peer_subject.set("CN=api.example.com".into());
    let _ = tls.peer_issuer.set("CN=Example CA".into());
    r.upstream_tls = Some(Arc::new(tls));
    r.upstream_conn_id = Some(42);
    r.attempts = 2;
    r.requested_server_name = Some("api.example.com".into());
    r.route_name = Some(Arc::from("api-route"));
    r.local_reply_body = Some("upstream connect error\n".into());
    r
}
