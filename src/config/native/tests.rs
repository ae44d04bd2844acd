//! Tests of the native schema, through the whole load: messages name the path and suggest,
//! errors are all reported, and a destination lowers to Envoy-named clusters.

use super::*;
use crate::config::load::load;
use crate::config::model::{DnsEndpoint, Endpoints, TlsMode};
use crate::config::overrides::Overrides;

fn errors(yaml: &str) -> Vec<String> {
    match load(&[Source::inline("test.yaml", yaml)], &Overrides::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.messages(),
    }
}

#[test]
fn unknown_field_names_the_path_and_suggests() {
    let e = errors(
        "destinations:\n  - hosts: [a.example.com]\n    ports: [{number: 80}]\n    trafficPolicy:\n      portLevelSetting: []\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("error: test.yaml:5:7: destinations[0].trafficPolicy.portLevelSetting: unknown field \"portLevelSetting\""), "{}", e[0]);
    assert!(
        e[0].contains("did you mean \"portLevelSettings\"?"),
        "{}",
        e[0]
    );
}

#[test]
fn misspelled_enum_values_are_errors() {
    let e = errors("outboundTrafficPolicy:\n  mode: REGISTER_ONLY\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("outboundTrafficPolicy.mode: unknown value \"REGISTER_ONLY\""),
        "{}",
        e[0]
    );
    assert!(e[0].contains("did you mean \"REGISTRY_ONLY\"?"), "{}", e[0]);
    let e = errors(
        "destinations:\n  - hosts: [a.example.com]\n    ports: [{number: 443}]\n    trafficPolicy:\n      tls: {mode: MUTAL}\n",
    );
    assert!(e[0].contains("did you mean \"MUTUAL\"?"), "{}", e[0]);
}

#[test]
fn semantic_errors_are_all_reported() {
    let e = errors(
        "destinations:\n  - hosts: [a.example.com, 'bad host']\n    ports: [{number: 80, protocol: HTTPX}, {number: 70000}]\n    trafficPolicy:\n      portLevelSettings:\n        - port: {number: 443}\n          tls: {mode: MUTUAL}\n",
    );
    let all = e.join("\n");
    assert!(
        all.contains("destinations[0].hosts[1]: \"bad host\" is not a valid host name"),
        "{all}"
    );
    assert!(
        all.contains("destinations[0].ports[0].protocol: unknown protocol \"HTTPX\""),
        "{all}"
    );
    assert!(all.contains("did you mean \"HTTP\"?"), "{all}");
    assert!(
        all.contains("destinations[0].ports[1].number: 70000 is not a port number"),
        "{all}"
    );
    assert!(
        all.contains("portLevelSettings[0].port.number: 443 is not a port of a.example.com"),
        "{all}"
    );
}

#[test]
fn mutual_without_key_is_an_error_not_plaintext() {
    let e = errors(
        "destinations:\n  - hosts: [kafka.example.com]\n    ports: [{number: 9093, protocol: TLS}]\n    trafficPolicy:\n      tls: {mode: MUTUAL, clientCertificate: /c.pem}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("mode MUTUAL but privateKey is missing"),
        "{}",
        e[0]
    );
    assert!(e[0].contains("never falls back to plaintext"), "{}", e[0]);
}

#[test]
fn istio_mutual_says_what_to_use() {
    let e = errors(
        "destinations:\n  - hosts: [a.example.com]\n    ports: [{number: 443}]\n    trafficPolicy:\n      tls: {mode: ISTIO_MUTUAL}\n",
    );
    assert!(
        e[0].contains("ISTIO_MUTUAL needs an Istio mesh identity"),
        "{}",
        e[0]
    );
    assert!(e[0].contains("use mode: MUTUAL"), "{}", e[0]);
}

#[test]
fn port_level_settings_pointing_at_target_port_get_a_hint() {
    let e = errors(
        "destinations:\n  - hosts: [www.oracle.com]\n    ports: [{number: 80, targetPort: 443}]\n    trafficPolicy:\n      portLevelSettings:\n        - port: {number: 443}\n          tls: {mode: SIMPLE}\n",
    );
    assert!(e[0].contains("use 80 (which targets 443)"), "{}", e[0]);
}

#[test]
fn duplicate_host_port_is_reported_with_both_places() {
    let e = errors(
        "destinations:\n  - hosts: [a.example.com]\n    ports: [{number: 80}]\n  - hosts: [a.example.com]\n    ports: [{number: 80}]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(
            "host a.example.com port 80 is declared twice (also by test.yaml: destinations[0])"
        ),
        "{}",
        e[0]
    );
}

#[test]
fn oracle_style_destination_lowers_to_envoy_clusters() {
    let cfg = load(
            &[Source::inline(
                "t.yaml",
                "destinations:\n  - hosts: [www.oracle.com]\n    ports:\n      - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}\n      - {number: 443, name: https-port, protocol: HTTPS}\n    resolution: DNS\n    trafficPolicy:\n      portLevelSettings:\n        - port: {number: 80}\n          tls: {mode: SIMPLE}\n",
            )],
            &Overrides::default(),
        )
        .expect("loads");
    let c80 = cfg
        .clusters
        .iter()
        .find(|c| c.name == "outbound|80||www.oracle.com")
        .expect("cluster 80");
    assert_eq!(
        c80.endpoints,
        Endpoints::Dns(vec![DnsEndpoint {
            name: Some("www.oracle.com".into()),
            port: Some(443)
        }])
    );
    assert_eq!(c80.tls.as_ref().map(|t| t.mode), Some(TlsMode::Simple));
    let c443 = cfg
        .clusters
        .iter()
        .find(|c| c.name == "outbound|443||www.oracle.com")
        .expect("cluster 443");
    assert!(
        c443.tls.is_none(),
        "port-level settings do not leak to other ports"
    );
    let d = cfg.describe();
    assert!(d.contains("www.oracle.com"), "{d}");
    assert!(d.contains("outbound|80||www.oracle.com"), "{d}");
    assert!(d.contains("www.oracle.com:443"), "{d}");
}
