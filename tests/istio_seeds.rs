//! The seeds' scenarios end to end, from the manifests in config/seeds used as they are: a
//! sidecar egret and an egress-gateway egret on loopback, real TLS origins with an rcgen PKI,
//! and curl. `--connect-to` puts the external hosts (and the gateway's Kubernetes service) on
//! local ports; `--mount` stands in for the gateway pod's Secret volume.

mod support;

use std::path::Path;

use support::*;

const EASY: &str = "4a1fa59d-c737-4102-a2df-cef1fe34afa5.apps.sbc-okd.pcbltools.ru";
const SIMPLE: &str = "01a47b88-7dd8-4548-ada1-bab9599efc41.apps.sbc-okd.pcbltools.ru";
const MUTUAL: &str = "ddb8b515-40b1-4ead-aaf4-2e52704bc73e.apps.sbc-okd.pcbltools.ru";
const EGRESS_SVC: &str = "ci00000000-test-egress.work.svc.cluster.local";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn seeds() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/seeds")
        .display()
        .to_string()
}

/// `-c FILE --param-file PARAMS` for a seed template.
fn template(args: &mut Vec<String>, name: &str, params: &str) {
    let s = seeds();
    args.extend([
        "-c".into(),
        format!("{s}/{name}.yaml"),
        "--param-file".into(),
        format!("{s}/{params}-params.env"),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_and_egress_gateway_from_the_seed_manifests() {
    // One PKI, like the seed's single `certs` Secret: crt.pem/key.pem are the client
    // certificate (its chain file also carries the intermediate, which is what lets the SIMPLE
    // rule's `caCertificates: crt.pem` verify the SIMPLE server), ca.pem is the root.
    let pki = Pki::new("seed");
    let client = pki.client_leaf("egress-gateway-client");
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("egress-certs");
    std::fs::create_dir(&certs).expect("mkdir");
    write(&certs, "crt.pem", &client.chain_pem);
    write(&certs, "key.pem", &client.key_pem);
    write(&certs, "ca.pem", &pki.root_pem());

    let easy = start_plain("easy").await;
    let (simple, mutual) = start_simple_and_mutual(&pki, SIMPLE, MUTUAL).await;
    let mount = format!("/etc/istio/egress-certs={}", certs.display());

    // The egress gateway: the egress template (Deployment, ConfigMap, Service) and the SIMPLE
    // and MUTUAL templates, each with its own parameter file.
    let mut g: Vec<String> = vec![
        "run".into(),
        "--role".into(),
        "gateway".into(),
        "--gateway-selector".into(),
        "istio=ci00000000-test-egress".into(),
        "--namespace".into(),
        "work".into(),
        "--listen-address".into(),
        "127.0.0.1".into(),
        "--bind-port".into(),
        "3000=0".into(),
        "--bind-port".into(),
        "3001=0".into(),
        "--mount".into(),
        mount.clone(),
        "--access-log".into(),
        "-".into(),
        "--connect-to".into(),
        format!("{SIMPLE}:443={}", simple.addr),
        "--connect-to".into(),
        format!("{MUTUAL}:443={}", mutual.addr),
    ];
    template(&mut g, "egress-template", "egress");
    template(&mut g, "simple", "simple");
    template(&mut g, "mutual", "mutual");
    let gargs: Vec<&str> = g.iter().map(String::as_str).collect();
    let gateway = EgretProcess::start(&gargs);
    let g3000 = gateway.listener("_3000");
    let g3001 = gateway.listener("_3001");

    // The client's sidecar: EASY, SIMPLE and MUTUAL templates; the gateway's Kubernetes service
    // is reached with --connect-to.
    let mut c: Vec<String> = vec![
        "run".into(),
        "--namespace".into(),
        "work".into(),
        "--outbound-listen".into(),
        "127.0.0.1:0".into(),
        "--mount".into(),
        mount,
        "--access-log".into(),
        "-".into(),
        "--connect-to".into(),
        format!("{EASY}:80={}", easy.addr),
        "--connect-to".into(),
        format!("{EGRESS_SVC}:3000={g3000}"),
        "--connect-to".into(),
        format!("{EGRESS_SVC}:3001={g3001}"),
    ];
    template(&mut c, "easy", "easy");
    template(&mut c, "simple", "simple");
    template(&mut c, "mutual", "mutual");
    let cargs: Vec<&str> = c.iter().map(String::as_str).collect();
    let sidecar = EgretProcess::start(&cargs);
    let proxy = format!("http://{}", sidecar.addr);

    // EASY: a ServiceEntry is enough; plain HTTP straight out.
    let p = proxy.clone();
    let (code, body, err) = blocking(move || curl(&["-x", &p, &format!("http://{EASY}/")])).await;
    assert_eq!((code, body.as_str()), (0, "hello from easy\n"), "{err}");

    // SIMPLE: sidecar port 80 -> gateway 3000 -> TLS to SIMPLE:443.
    let p = proxy.clone();
    let (code, out, err) =
        blocking(move || curl(&["-x", &p, "-D", "-", &format!("http://{SIMPLE}/")])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("hello from simple\n"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains(&format!("x-upstream-sni: {SIMPLE}")),
        "SNI is the host: {out}"
    );

    // MUTUAL: sidecar port 80 -> gateway 3001 -> mTLS to MUTUAL:443 with the client certificate.
    let p = proxy.clone();
    let (code, out, err) =
        blocking(move || curl(&["-x", &p, "-D", "-", &format!("http://{MUTUAL}/")])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("hello from mutual\n"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-upstream-client-cn: egress-gateway-client"),
        "{out}"
    );

    // An undeclared host: the sidecar's block_all.
    let p = proxy.clone();
    let (code, out, _) = blocking(move || {
        curl(&[
            "-x",
            &p,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://495aa19d-72cd-4f6d-a488-14175d4087d8.apps.sbc-okd.pcbltools.ru/",
        ])
    })
    .await;
    assert_eq!((code, out.as_str()), (0, "502"));

    // The sidecar's lines look like the seed's.
    let s: Vec<LogLine> = sidecar
        .wait_stdout(4)
        .iter()
        .map(|l| LogLine::parse(l))
        .collect();
    assert_eq!(
        (s[0].code, s[0].cluster.as_str(), s[0].route.as_str()),
        (200, format!("outbound|80||{EASY}").as_str(), "default")
    );
    assert_eq!(s[1].code, 200);
    assert_eq!(s[1].cluster, format!("outbound|3000||{EGRESS_SVC}"));
    assert_eq!(s[1].upstream_host, g3000.to_string());
    assert_eq!(s[1].authority, SIMPLE);
    assert_eq!(
        s[1].route, "-",
        "a VirtualService route without a name logs -"
    );
    assert_eq!(s[1].xff, "-", "the sidecar does not add x-forwarded-for");
    assert_eq!(s[2].cluster, format!("outbound|3001||{EGRESS_SVC}"));
    assert_eq!(s[2].upstream_host, g3001.to_string());
    assert_eq!(
        (s[3].code, s[3].details.as_str(), s[3].route.as_str()),
        (502, "direct_response", "block_all")
    );

    // The gateway's lines: the external cluster, the sidecar's address in x-forwarded-for, and
    // the same request id as the sidecar's line.
    let gl: Vec<LogLine> = gateway
        .wait_stdout(2)
        .iter()
        .map(|l| LogLine::parse(l))
        .collect();
    assert_eq!(gl[0].cluster, format!("outbound|443||{SIMPLE}"));
    assert_eq!(gl[0].upstream_host, simple.addr.to_string());
    assert_eq!(gl[0].downstream_local, g3000.to_string());
    assert_eq!(gl[0].xff, "127.0.0.1");
    assert_eq!(gl[0].request_id, s[1].request_id);
    assert_eq!(gl[1].cluster, format!("outbound|443||{MUTUAL}"));
    assert_eq!(gl[1].downstream_local, g3001.to_string());
    assert_eq!(gl[1].request_id, s[2].request_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_seed_port_80_to_tls_443() {
    let pki = Pki::new("oracle");
    let origin = start_tls(UpstreamOptions::from_leaf(
        &pki.server_leaf(&["www.oracle.com"]),
        "oracle",
    ))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = write(dir.path(), "bundle.pem", &pki.root_pem());
    let s = seeds();
    let se = format!("{s}/oracle-se.yaml");
    let dr = format!("{s}/oracle-dr.yaml");
    let connect = format!("www.oracle.com:443={}", origin.addr);
    // The DestinationRule has no caCertificates: --ca-bundle supplies the test root, as the
    // system bundle would for the real site.
    let sidecar = EgretProcess::start(&[
        "run",
        "-c",
        &dr,
        "-c",
        &se,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &connect,
        "--ca-bundle",
        &bundle,
        "--access-log",
        "-",
    ]);
    let p = format!("http://{}", sidecar.addr);
    let (code, out, err) =
        blocking(move || curl(&["-x", &p, "-D", "-", "http://www.oracle.com/index.html"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-upstream-sni: www.oracle.com"),
        "{out}"
    );
    let l = LogLine::parse(&sidecar.wait_stdout(1)[0]);
    assert_eq!(
        (l.cluster.as_str(), l.route.as_str(), l.path.as_str()),
        ("outbound|80||www.oracle.com", "default", "/index.html")
    );
    assert_eq!(l.upstream_host, origin.addr.to_string());
    assert_eq!(origin.handshakes(), 1, "TLS to the origin");
}

#[tokio::test]
async fn every_seed_manifest_loads_processed_and_unprocessed() {
    let s = seeds();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("load");
    let leaf = pki.client_leaf("c");
    write(dir.path(), "crt.pem", &leaf.chain_pem);
    write(dir.path(), "key.pem", &leaf.key_pem);
    write(dir.path(), "ca.pem", &pki.root_pem());
    let mut o = egret::config::Overrides::default();
    o.mounts
        .push(("/etc/istio/egress-certs".into(), dir.path().to_path_buf()));
    o.istio.namespace = "work".into();
    let read = |name: &str, params: Option<&str>| -> Vec<egret::config::Source> {
        let mut v = egret::config::read_sources(&[format!("{s}/{name}").into()]).expect("readable");
        if let Some(p) = params {
            let text = std::fs::read_to_string(format!("{s}/{p}")).expect("params");
            let kv = egret::config::k8s::parse_param_file(&text, p).expect("parses");
            for src in &mut v {
                src.params = kv.clone();
            }
        }
        v
    };
    // Unprocessed templates with their parameter files, and the Deployment/Service manifests.
    let mut sources = Vec::new();
    for (t, p) in [
        ("easy.yaml", "easy-params.env"),
        ("simple.yaml", "simple-params.env"),
        ("mutual.yaml", "mutual-params.env"),
        ("egress-template.yaml", "egress-params.env"),
    ] {
        sources.extend(read(t, Some(p)));
    }
    sources.extend(read("client.yaml", None));
    sources.extend(read("oracle-se.yaml", None));
    sources.extend(read("oracle-dr.yaml", None));
    let cfg = egret::config::load(&sources, &o).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = cfg.clusters.iter().map(|c| c.name.as_str()).collect();
    for want in [
        format!("outbound|80||{EASY}"),
        format!("outbound|443||{SIMPLE}"),
        format!("outbound|443||{MUTUAL}"),
        format!("outbound|3000||{EGRESS_SVC}"),
        "outbound|80||www.oracle.com".to_string(),
    ] {
        assert!(names.contains(&want.as_str()), "{want} in {names:?}");
    }
    // The ConfigMap's MeshConfig applies (the egress gateway's mesh says ALLOW_ANY).
    assert_eq!(cfg.outbound_policy, egret::config::OutboundPolicy::AllowAny);
    assert_eq!(cfg.drain_duration, Some(std::time::Duration::from_secs(45)));
    assert_eq!(cfg.concurrency, Some(2), "defaultConfig.concurrency");

    // The same as `oc process -o yaml` prints them (kind: List).
    let processed =
        egret::config::read_sources(&[format!("{s}/processed").into()]).expect("readable");
    let cfg2 = egret::config::load(&processed, &o).unwrap_or_else(|e| panic!("{e}"));
    let mut a: Vec<String> = cfg
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| !n.contains("oracle"))
        .collect();
    let mut b: Vec<String> = cfg2.clusters.iter().map(|c| c.name.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "processed and unprocessed manifests give the same clusters"
    );
}

#[tokio::test]
async fn a_missing_template_parameter_is_named() {
    let s = seeds();
    let mut src =
        egret::config::read_sources(&[format!("{s}/simple.yaml").into()]).expect("readable");
    src[0].params = vec![("HOST".into(), "a.example".into())];
    let err = egret::config::load(&src, &Default::default()).expect_err("must fail");
    let all = err.messages().join("\n");
    for p in [
        "HTTP_PORT",
        "HTTPS_PORT",
        "PREFIX",
        "EGRESS_NAME",
        "EGRESS_PORT",
    ] {
        assert!(
            all.contains(&format!("required parameter {p} has no value")),
            "{p}: {all}"
        );
    }
    assert!(all.contains("template \"egressgateway-template\""), "{all}");
}
