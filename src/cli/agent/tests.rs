use super::*;

fn flags() -> Vec<EgretFlag> {
    let f = |long: &str, short: Option<char>, takes_value: bool| EgretFlag {
        long: long.into(),
        short,
        takes_value,
    };
    vec![
        f("config", Some('c'), true),
        f("mount", None, true),
        f("role", None, true),
        f("namespace", None, true),
        f("cluster-domain", None, true),
        f("gateway-selector", None, true),
        f("workload-label", None, true),
        f("log-level", None, true),
        f("concurrency", None, true),
        f("drain-duration", None, true),
        f("ready", None, true),
        f("admin", None, true),
        f("mesh-config", None, true),
        f("bind-port", None, true),
        f("no-tls-resumption", None, false),
        f("capture", None, false),
        f("dns-capture", None, false),
        f("help", Some('h'), false),
    ]
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The values of `--name` in `args`.
fn values<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == format!("--{name}"))
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn istio_log_levels_map_to_egret_levels() {
    for (istio, egret) in [
        ("trace", Some("trace")),
        ("debug", Some("debug")),
        ("info", Some("info")),
        ("warning", Some("warn")),
        ("WARN", Some("warn")),
        ("error", Some("error")),
        ("critical", Some("error")),
        ("off", Some("off")),
        ("warning,misc:error,upstream:debug", Some("warn")),
        ("misc:error", None),
    ] {
        assert_eq!(log_level(istio), Ok(egret), "{istio}");
    }
    let e = log_level("loud").expect_err("not a level");
    assert!(e.contains("expected trace, debug"), "{e}");
}

#[test]
fn downward_api_labels_are_parsed_with_go_quoting() {
    let text = "app=\"egress\"\nistio=\"egress\"\npod-template-hash=\"7d9f\"\n\
        note=\"a \\\"quoted\\\" \\\\ value\\n\\u00e9\\x41\"\nbare=plain\n\n";
    let l = parse_labels(text).expect("labels");
    assert_eq!(l["app"], "egress");
    assert_eq!(l["istio"], "egress");
    assert_eq!(l["pod-template-hash"], "7d9f");
    assert_eq!(l["note"], "a \"quoted\" \\ value\n\u{e9}A");
    assert_eq!(l["bare"], "plain");
    assert_eq!(l.len(), 5);
    for bad in ["novalue", "k=\"open", "k=\"bad \\q\"", "k=\"dangling\\\""] {
        assert!(parse_labels(bad).is_err(), "{bad}");
    }
}

#[test]
fn proxy_config_takes_concurrency_drain_and_ports_and_names_the_rest() {
    // The seed's PROXY_CONFIG: nothing egret uses.
    let seed = r#"{"discoveryAddress":"istiod-basic.istio-system.svc:15012","tracing":{"zipkin":{"address":"jaeger-collector.istio-system.svc:9411"}},"proxyMetadata":{"ISTIO_META_DNS_AUTO_ALLOCATE":"true"}}
"#;
    let pc = parse_proxy_config(seed).expect("seed PROXY_CONFIG");
    assert_eq!(
        pc,
        ProxyConfigEnv {
            ignored: strings(&["discoveryAddress", "proxyMetadata", "tracing"]),
            ..Default::default()
        }
    );
    // YAML, as `proxy.istio.io/config` annotations are written.
    let pc = parse_proxy_config(
        "concurrency: 3\ndrainDuration: 20s\nstatusPort: 15521\nproxyAdminPort: 15500\nproxyStatsMatcher:\n  inclusionPrefixes: [a]\n",
    )
    .expect("yaml");
    assert_eq!(pc.concurrency, Some(3));
    assert_eq!(pc.drain_duration.as_deref(), Some("20s"));
    assert_eq!(pc.status_port, Some(15521));
    assert_eq!(pc.admin_port, Some(15500));
    assert_eq!(pc.ignored, ["proxyStatsMatcher"]);
    assert_eq!(
        parse_proxy_config(r#"{"concurrency":"2"}"#)
            .expect("string int")
            .concurrency,
        Some(2)
    );
    assert_eq!(
        parse_proxy_config("  ").expect("empty"),
        ProxyConfigEnv::default()
    );
    for bad in [
        r#"{"concurrency":-1}"#,
        r#"{"statusPort":70000}"#,
        r#"{"drainDuration":5}"#,
        "[1, 2]",
        "{unclosed",
    ] {
        assert!(parse_proxy_config(bad).is_err(), "{bad}");
    }
}

/// A pod's files under a temporary directory, reached with `--mount /etc=DIR/etc`.
fn pod(labels: Option<&str>, mesh: Option<&str>, config_dir: bool) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("istio/pod")).expect("mkdir");
    std::fs::create_dir_all(etc.join("istio/config")).expect("mkdir");
    if let Some(l) = labels {
        std::fs::write(etc.join("istio/pod/labels"), l).expect("labels");
    }
    if let Some(m) = mesh {
        std::fs::write(etc.join("istio/config/mesh"), m).expect("mesh");
    }
    if config_dir {
        std::fs::create_dir_all(etc.join("egret")).expect("mkdir");
    }
    let mount = format!("/etc={}", etc.display());
    (dir, mount)
}

#[test]
fn the_seed_argument_list_becomes_a_gateway_run() {
    let (dir, mount) = pod(
        Some("app=\"egress\"\nistio=\"egress\"\n"),
        Some("defaultConfig:\n  concurrency: 2\n"),
        true,
    );
    let args = strings(&[
        "router",
        "--domain",
        "work.svc.cluster.local",
        "--proxyLogLevel=warning",
        "--proxyComponentLogLevel=misc:error",
        "--log_output_level=default:info",
        "--serviceCluster",
        "egress",
        "--trust-domain=cluster.local",
        "--mount",
        &mount,
    ]);
    let e = env(&[
        ("POD_NAME", "egress-7d9f-x"),
        ("POD_NAMESPACE", "work"),
        ("INSTANCE_IP", "10.1.2.3"),
        ("JWT_POLICY", "first-party-jwt"),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("PROXY_CONFIG", r#"{"discoveryAddress":"istiod:15012"}"#),
        ("HOME", "/"),
    ]);
    let t = translate(&args, &e, &flags()).expect("translate");
    let a = &t.args;
    assert_eq!(a[0], "run");
    assert_eq!(values(a, "role"), ["gateway"]);
    assert_eq!(values(a, "namespace"), ["work"]);
    assert_eq!(values(a, "cluster-domain"), ["cluster.local"]);
    assert_eq!(values(a, "log-level"), ["warn"]);
    assert_eq!(
        values(a, "gateway-selector"),
        ["app=egress", "istio=egress"]
    );
    assert_eq!(values(a, "workload-label"), ["app=egress", "istio=egress"]);
    let etc = dir.path().join("etc");
    assert_eq!(
        values(a, "mesh-config"),
        [etc.join("istio/config/mesh").display().to_string()]
    );
    assert_eq!(
        values(a, "config"),
        [etc.join("egret").display().to_string()]
    );
    assert_eq!(
        values(a, "mount"),
        [mount.as_str()],
        "egret's own flags pass"
    );
    assert!(
        values(a, "concurrency").is_empty(),
        "the MeshConfig says it"
    );
    let n = &t.notice;
    assert!(!n.contains('\n'), "one line: {n}");
    assert!(
        n.contains(
            "ignored flags: --proxyComponentLogLevel=misc:error --log_output_level=default:info --trust-domain=cluster.local;"
        ),
        "{n}"
    );
    assert!(
        n.contains("ignored env: ISTIO_META_CLUSTER_ID JWT_POLICY;"),
        "{n}"
    );
    assert!(
        n.contains("ignored PROXY_CONFIG fields: discoveryAddress"),
        "{n}"
    );
    assert!(n.contains("pod egress-7d9f-x (10.1.2.3)"), "{n}");
    assert!(n.contains("service cluster egress"), "{n}");
    assert!(!n.contains("HOME"), "{n}");
}

#[test]
fn egret_flags_and_proxy_config_win_in_order() {
    let (_dir, mount) = pod(Some("istio=\"egress\"\n"), None, false);
    let args = strings(&[
        "router",
        "--statusPort",
        "15521",
        "--drainDuration=30s",
        "--mount",
        &mount,
        "-c",
        "/srv/manifests",
        "--gateway-selector",
        "istio=other",
        "--log-level",
        "debug",
        "--proxyLogLevel",
        "error",
        "--ready=127.0.0.1:0",
    ]);
    let e = env(&[(
        "PROXY_CONFIG",
        "concurrency: 4\ndrainDuration: 10s\nproxyAdminPort: 15500\n",
    )]);
    let t = translate(&args, &e, &flags()).expect("translate");
    let a = &t.args;
    assert_eq!(values(a, "gateway-selector"), ["istio=other"]);
    assert_eq!(values(a, "log-level"), ["debug"]);
    assert_eq!(
        values(a, "ready"),
        Vec::<&str>::new(),
        "--ready= inline, given"
    );
    assert!(a.contains(&"--ready=127.0.0.1:0".to_string()));
    assert_eq!(values(a, "concurrency"), ["4"]);
    assert_eq!(
        values(a, "drain-duration"),
        ["30s"],
        "the flag beats PROXY_CONFIG"
    );
    assert_eq!(values(a, "admin"), ["127.0.0.1:15500"]);
    assert!(values(a, "config").is_empty());
    assert!(a.windows(2).any(|w| w == ["-c", "/srv/manifests"]));
    assert!(
        values(a, "mesh-config").is_empty(),
        "no file at the default path"
    );

    // A sidecar with the manifests from EGRET_CONFIG, the namespace from --domain.
    let (dir, mount) = pod(Some("app=\"shop\"\n"), None, false);
    let t = translate(
        &strings(&[
            "sidecar",
            "--domain",
            "shop.svc.corp.local",
            "--mount",
            &mount,
        ]),
        &env(&[("EGRET_CONFIG", "/etc/a.yaml:/srv/b")]),
        &flags(),
    )
    .expect("translate");
    let a = &t.args;
    assert_eq!(values(a, "role"), ["sidecar"]);
    assert_eq!(values(a, "namespace"), ["shop"]);
    assert_eq!(values(a, "cluster-domain"), ["corp.local"]);
    assert!(values(a, "gateway-selector").is_empty());
    assert_eq!(values(a, "workload-label"), ["app=shop"]);
    assert_eq!(
        values(a, "config"),
        [
            dir.path().join("etc/a.yaml").display().to_string(),
            "/srv/b".to_string()
        ]
    );
}

#[test]
fn unknown_flags_are_errors_with_a_suggestion_and_manifests_are_required() {
    let e =
        translate(&strings(&["router", "--proxyLogLevl=info"]), &[], &flags()).expect_err("typo");
    assert!(e.contains("--proxyLogLevl"), "{e}");
    assert!(e.contains("did you mean --proxyLogLevel?"), "{e}");
    let e = translate(
        &strings(&["router", "--gateway-selectr", "a=b"]),
        &[],
        &flags(),
    )
    .expect_err("typo");
    assert!(e.contains("did you mean --gateway-selector?"), "{e}");
    let e = translate(&strings(&["ingress"]), &[], &flags()).expect_err("type");
    assert!(e.contains("proxy router"), "{e}");
    let e = translate(&strings(&["router", "stray"]), &[], &flags()).expect_err("stray");
    assert!(e.contains("unexpected argument \"stray\""), "{e}");
    let e = translate(&strings(&["router", "--serviceCluster"]), &[], &flags())
        .expect_err("missing value");
    assert!(e.contains("--serviceCluster needs a value"), "{e}");

    let (_dir, mount) = pod(None, None, false);
    let e = translate(&strings(&["router", "--mount", &mount]), &[], &flags())
        .expect_err("no manifests");
    assert!(e.contains("no manifests"), "{e}");
    assert!(
        e.contains("EGRET_CONFIG") && e.contains("/etc/egret"),
        "{e}"
    );
    let t = translate(
        &strings(&["router", "--mount", &mount, "-h"]),
        &[],
        &flags(),
    )
    .expect("help needs no manifests");
    assert_eq!(t.args.last().map(String::as_str), Some("-h"));
    let e = translate(
        &strings(&[
            "router",
            "--mount",
            &mount,
            "--meshConfig",
            "/etc/nope",
            "-c",
            "x",
        ]),
        &[],
        &flags(),
    )
    .expect_err("missing mesh config");
    assert!(e.contains("--meshConfig /etc/nope: no such file"), "{e}");
}

#[test]
fn a_sidecar_is_captured_and_istio_dns_capture_turns_on_the_dns_proxy() {
    let with = |args: &[&str], vars: &[(&str, &str)]| {
        let mut all = vec!["-c", "/etc/a.yaml"];
        all.splice(0..0, args.iter().copied());
        translate(&strings(&all), &env(vars), &flags())
    };
    let t = with(&["sidecar"], &[]).expect("translate");
    assert!(t.args.iter().any(|a| a == "--capture"), "{:?}", t.args);
    assert!(
        t.notice.contains("transparent capture (REDIRECT)"),
        "{}",
        t.notice
    );
    let t = with(&["sidecar"], &[("ISTIO_META_DNS_CAPTURE", "true")]).expect("translate");
    assert!(t.args.iter().any(|a| a == "--dns-capture"), "{:?}", t.args);
    assert!(!t.args.iter().any(|a| a == "--capture"), "{:?}", t.args);
    assert!(
        !t.notice.contains("ignored env: ISTIO_META_DNS_CAPTURE"),
        "{}",
        t.notice
    );
    let t = with(&["sidecar"], &[("ISTIO_META_INTERCEPTION_MODE", "NONE")]).expect("translate");
    assert!(
        !t.args.iter().any(|a| a.contains("capture")),
        "{:?}",
        t.args
    );
    let e = with(&["sidecar"], &[("ISTIO_META_INTERCEPTION_MODE", "TPROXY")]).expect_err("tproxy");
    assert!(e.contains("TPROXY is not supported"), "{e}");
    // A gateway is not captured, whatever the variables say.
    let t = with(&["router"], &[("ISTIO_META_DNS_CAPTURE", "true")]).expect("translate");
    assert!(
        !t.args.iter().any(|a| a.contains("capture")),
        "{:?}",
        t.args
    );
}
