//! Validation of Istio manifests as a whole: every problem is reported in one run, each with
//! the file, document, object, field path, value and a hint.

use egret::config::{Overrides, Source, load};

const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: work}
spec:
  hosts: [api.example.com]
  ports:
    - {number: 80, name: http, protocol: HTTP, targetPort: 443}
    - {number: 8443, name: https, protocol: HTTPS}
  resolution: DNS
";

fn errors(docs: &[&str]) -> String {
    let text = docs.join("---\n");
    let mut o = Overrides::default();
    o.istio.namespace = "work".into();
    match load(&[Source::inline("m.yaml", &text)], &o) {
        Ok(_) => String::new(),
        Err(e) => e.messages().join("\n"),
    }
}

/// (case, documents, substrings every one of which must appear in the errors)
const CASES: &[(&str, &[&str], &[&str])] = &[
    (
        "VirtualService names a Gateway that does not exist",
        &[
            SE,
            "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: vs, namespace: work}
spec:
  hosts: [api.example.com]
  gateways: [egress-gw, mesh]
  http:
    - route:
        - destination: {host: api.example.com, port: {number: 80}}
",
        ],
        &[
            "m.yaml (document 2) VirtualService vs: spec.gateways[0]: the VirtualService work/vs names Gateway \"egress-gw\", which does not exist",
            "declare a Gateway named work/egress-gw",
        ],
    ),
    (
        "DestinationRule for a host no ServiceEntry declares",
        &[
            SE,
            "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: dr, namespace: work}
spec:
  host: api.exmaple.com
  trafficPolicy:
    tls: {mode: SIMPLE}
",
        ],
        &[
            "DestinationRule dr: spec.host: DestinationRule work/dr is for api.exmaple.com, which no ServiceEntry declares",
            "did you mean \"api.example.com\"?",
        ],
    ),
    (
        "route to a port the host does not expose",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: work}
spec:
  hosts: [api.example.com]
  http:
    - route:
        - destination: {host: api.example.com, port: {number: 443}}
",
        ],
        &[
            "spec.http[0].route[0].destination.port.number: api.example.com does not expose port 443 (declared: 80, 8443)",
            "destination.port is the service port: use 80 (whose targetPort is 443)",
        ],
    ),
    (
        "route to a host no ServiceEntry declares",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: work}
spec:
  hosts: [api.example.com]
  http:
    - route:
        - destination: {host: api.example.org}
",
        ],
        &[
            "spec.http[0].route[0].destination.host: the route goes to api.example.org, which no ServiceEntry declares",
        ],
    ),
    (
        "two DestinationRules claim the same host",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: work}
spec:
  host: api.example.com
  trafficPolicy: {tls: {mode: SIMPLE}}
",
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b, namespace: work}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
      - port: {number: 80}
        tls: {mode: SIMPLE}
",
        ],
        &[
            "DestinationRules work/a and work/b both apply to api.example.com",
            "Istio would silently drop the second rule's trafficPolicy",
        ],
    ),
    (
        "two VirtualServices claim the same host for the mesh",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: one, namespace: work}
spec:
  hosts: [api.example.com]
  http: [{route: [{destination: {host: api.example.com}}]}]
",
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: two, namespace: work}
spec:
  hosts: [api.example.com]
  http: [{route: [{destination: {host: api.example.com}}]}]
",
        ],
        &[
            "host api.example.com is routed by two VirtualServices bound to mesh: work/one and work/two",
        ],
    ),
    (
        "two ServiceEntries claim the same host and port",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api2, namespace: work}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS
",
        ],
        &["host api.example.com port 80 is declared twice"],
    ),
    (
        "misspelled enum value",
        &["apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr}
spec:
  host: api.example.com
  trafficPolicy:
    tls:
      mode: MUTAL
"],
        &[
            "m.yaml:8:13 DestinationRule dr: spec.trafficPolicy.tls.mode: unknown value \"MUTAL\"; expected one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
            "did you mean \"MUTUAL\"?",
        ],
    ),
    (
        "unknown field",
        &["apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSetting: []
"],
        &[
            "spec.trafficPolicy.portLevelSetting: unknown field \"portLevelSetting\"",
            "did you mean \"portLevelSettings\"?",
        ],
    ),
    (
        "undefined subset",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: work}
spec:
  host: api.example.com
  subsets: [{name: v1}]
",
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: work}
spec:
  hosts: [api.example.com]
  http: [{route: [{destination: {host: api.example.com, subset: v2, port: {number: 80}}}]}]
",
        ],
        &[
            "destination.subset: subset \"v2\" of api.example.com is not defined by a DestinationRule",
            "did you mean \"v1\"?",
        ],
    ),
    (
        "ISTIO_MUTUAL",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: work}
spec:
  host: api.example.com
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
",
        ],
        &[
            "ISTIO_MUTUAL needs an Istio mesh identity",
            "use mode: MUTUAL with clientCertificate, privateKey and caCertificates (or credentialName)",
        ],
    ),
    (
        "portLevelSettings names a targetPort",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: work}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
      - port: {number: 443}
        tls: {mode: SIMPLE}
",
        ],
        &[
            "portLevelSettings[0].port.number: 443 is not a port of api.example.com (declared: 80, 8443)",
            "portLevelSettings match the service port number, not targetPort: use 80",
        ],
    ),
    (
        "unsupported apiVersion",
        &["apiVersion: networking.istio.io/v2
kind: ServiceEntry
metadata: {name: x}
spec: {hosts: [a.example.com]}
"],
        &["apiVersion: unsupported apiVersion \"networking.istio.io/v2\" for ServiceEntry"],
    ),
    (
        "resources egret cannot honour",
        &["apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec: {egress: [{hosts: [\"./*\"]}]}
"],
        &["Sidecar changes routing or security, and egret does not implement it"],
    ),
    (
        "MUTUAL without a key",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: work}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: MUTUAL, clientCertificate: /etc/certs/crt.pem}
",
        ],
        &[
            "mode MUTUAL but privateKey is missing",
            "egret never falls back to plaintext",
        ],
    ),
    (
        "credentialName that cannot be found",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: work}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: client-cert}
",
        ],
        &[
            "credentialName: secret work/client-cert was not given with --config, and no --credentials-dir is set",
        ],
    ),
    (
        "misspelled outbound policy in a MeshConfig ConfigMap",
        &["apiVersion: v1
kind: ConfigMap
metadata: {name: istio}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTER_ONLY
"],
        &[
            "data.mesh.outboundTrafficPolicy.mode: unknown value \"REGISTER_ONLY\"",
            "did you mean \"REGISTRY_ONLY\"?",
        ],
    ),
    (
        "a fault percentage above 100",
        &[
            SE,
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: work}
spec:
  hosts: [api.example.com]
  http:
    - fault: {abort: {httpStatus: 500, percentage: {value: 150}}}
      route: [{destination: {host: api.example.com, port: {number: 80}}}]
",
        ],
        &[
            "spec.http[0].fault.abort.percentage.value: percentage 150 is not between 0 and 100",
        ],
    ),
    (
        "a TCP port claimed by two hosts (a sidecar TCP listener cannot tell them apart)",
        &[
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: kafka-a, namespace: work}
spec:
  hosts: [kafka-a.example.com]
  ports: [{number: 9092, name: tcp-kafka, protocol: TCP}]
  resolution: DNS
",
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: kafka-b, namespace: work}
spec:
  hosts: [kafka-b.example.com]
  ports: [{number: 9092, name: tcp-kafka}]
  resolution: DNS
",
        ],
        &[
            "TCP port 9092 is declared by kafka-a.example.com and by kafka-b.example.com",
            "cannot tell them apart",
            "give each TCP destination its own port number",
        ],
    ),
    (
        "a tls route without sniHosts, and a tcp route to an undeclared port",
        &[
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: broker, namespace: work}
spec:
  hosts: [broker.example.com]
  ports: [{number: 9093, name: tls-kafka, protocol: TLS}, {number: 9094, name: tcp-kafka, protocol: TCP}]
  resolution: DNS
",
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broker, namespace: work}
spec:
  hosts: [broker.example.com]
  tls:
    - match: [{port: 9093}]
      route: [{destination: {host: broker.example.com, port: {number: 9093}}}]
  tcp:
    - match: [{port: 9094}]
      route: [{destination: {host: broker.example.com, port: {number: 9999}}}]
",
        ],
        &[
            "VirtualService broker: spec.tls[0].match[0].sniHosts: sniHosts is required in a tls route match",
            "spec.tcp[0].route[0].destination",
            "9999",
        ],
    ),
];

#[test]
fn each_validation_error_names_where_and_how_to_fix() {
    let mut failures = Vec::new();
    for (case, docs, want) in CASES {
        let got = errors(docs);
        for w in *want {
            if !got.contains(w) {
                failures.push(format!("{case}: expected {w:?} in:\n{got}\n"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let got = errors(&[
        SE,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: work}
spec:
  hosts: [api.example.com]
  gateways: [nope]
  http: [{route: [{destination: {host: api.example.com, port: {number: 9}}}]}]
",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: work}
spec:
  host: other.example.com
",
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: egress}
  servers: [{port: {number: 3000, name: http, protocol: HTTPX}, hosts: ['*']}]
",
    ]);
    for w in [
        "names Gateway \"nope\", which does not exist",
        "does not expose port 9",
        "DestinationRule work/dr is for other.example.com",
    ] {
        assert!(got.contains(w), "{w} in:\n{got}");
    }
}

#[test]
fn gateway_role_reports_an_unknown_server_protocol_and_missing_selector() {
    let doc = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: egress}
  servers: [{port: {number: 3000, name: http, protocol: HTTPX}, hosts: ['*']}]
";
    let mut o = Overrides::default();
    o.istio.role = egret::config::istio::Role::Gateway;
    let err = load(&[Source::inline("g.yaml", doc)], &o).expect_err("no selector");
    assert!(
        err.to_string()
            .contains("--role gateway needs --gateway-selector"),
        "{err}"
    );
    o.istio
        .gateway_selector
        .insert("istio".into(), "egress".into());
    let err = load(&[Source::inline("g.yaml", doc)], &o).expect_err("bad protocol");
    let s = err.to_string();
    assert!(
        s.contains("spec.servers[0].port.protocol: unknown protocol \"HTTPX\""),
        "{s}"
    );
    assert!(s.contains("did you mean \"HTTP\"?"), "{s}");
}

/// Every DestinationRule field egret parses but does not act on is warned about by name, at the
/// top level, in portLevelSettings and in subsets, saying what egret does instead; the fields
/// egret does apply (the connection pool's limits and timeouts, outlierDetection) are not.
#[test]
fn fields_egret_does_not_act_on_are_warned_about_by_name() {
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: work}
spec:
  host: api.example.com
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 3s, maxConnectionDuration: 1h, tcpKeepalive: {time: 60s}}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 100, maxRequestsPerConnection: 10, maxRetries: 3, idleTimeout: 30s, h2UpgradePolicy: UPGRADE, useClientProtocol: true}
    loadBalancer: {consistentHash: {httpHeaderName: x-user}, localityLbSetting: {enabled: true}}
    outlierDetection: {consecutive5xxErrors: 5, maxEjectionPercent: 100}
    retryBudget: {percent: 20}
    portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s}
        outlierDetection: {consecutiveGatewayErrors: 2, maxEjectionPercent: 100}
        connectionPool: {http: {http1MaxPendingRequests: 1, maxRetries: 1}}
  subsets:
    - name: v1
      labels: {version: v1}
      trafficPolicy:
        connectionPool: {http: {maxConcurrentStreams: 10}}
        outlierDetection: {consecutive5xxErrors: 1}
";
    let text = [SE, dr].join("---\n");
    let mut o = Overrides::default();
    o.istio.namespace = "work".into();
    let cfg = load(&[Source::inline("m.yaml", &text)], &o)
        .unwrap_or_else(|e| panic!("must load:\n{}", e.messages().join("\n")));
    let warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
    let all = warnings.join("\n");
    for (field, instead) in [
        (
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
            "HTTP/1.1",
        ),
        (
            "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            "HTTP/1.1",
        ),
        (
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "round robin",
        ),
        (
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
            "one locality",
        ),
        ("spec.trafficPolicy.retryBudget", "maxRetries"),
        (
            "spec.trafficPolicy.portLevelSettings[0].loadBalancer.warmupDurationSecs",
            "full share",
        ),
        (
            "spec.subsets[0].trafficPolicy.connectionPool.http.maxConcurrentStreams",
            "http2MaxRequests",
        ),
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(field)
                && w.contains("is accepted but not acted on")
                && w.contains(instead)),
            "no warning for {field} saying \"{instead}\":\n{all}"
        );
    }
    for applied in [
        "maxConnections",
        "connectTimeout",
        "maxRequestsPerConnection",
        "idleTimeout",
        "simple",
        "maxConnectionDuration",
        "tcpKeepalive",
        "http1MaxPendingRequests",
        "http2MaxRequests",
        "maxRetries",
        "outlierDetection",
    ] {
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains(&format!(".{applied}: "))),
            "{applied} is applied, yet warned about:\n{all}"
        );
    }
}
