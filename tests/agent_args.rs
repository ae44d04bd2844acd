//! The seed's egress-gateway pod with egret in Istio's place: the container's `args` and `env`
//! are read from the seed's Template (`config/seeds/egress-template.yaml`), resolved as
//! kubelet would (downward-API fields, `$(VAR)` expansion), and the pod's files are laid out
//! in a temporary directory (the downward-API labels, the mesh ConfigMap, the `certs` Secret,
//! the manifests at /etc/egret) reached with `--mount`. Only egret's test overrides are added:
//! ephemeral ports, loopback addresses and `--connect-to` for the external hosts.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::*;

const SIMPLE: &str = "01a47b88-7dd8-4548-ada1-bab9599efc41.apps.sbc-okd.pcbltools.ru";
const MUTUAL: &str = "ddb8b515-40b1-4ead-aaf4-2e52704bc73e.apps.sbc-okd.pcbltools.ru";
const NAMESPACE: &str = "work";

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/seeds")
}

/// The seed's egress Template with its parameter file applied (`${P}` and `${{P}}`), parsed.
fn egress_template() -> Value {
    let mut text =
        std::fs::read_to_string(seeds().join("egress-template.yaml")).expect("egress template");
    let params = std::fs::read_to_string(seeds().join("egress-params.env")).expect("params");
    for line in params.lines().filter(|l| l.contains('=')) {
        let (k, v) = line.split_once('=').expect("KEY=VALUE");
        text = text
            .replace(&format!("${{{{{k}}}}}", k = k.trim()), v.trim())
            .replace(&format!("${{{k}}}", k = k.trim()), v.trim());
    }
    assert!(!text.contains("${"), "every parameter is given");
    serde_saphyr::from_str(&text).expect("the template is YAML")
}

fn object<'a>(template: &'a Value, kind: &str) -> &'a Value {
    template["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the template"))
}

/// Kubernetes' `$(VAR)` expansion in container args and env values.
fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// What kubelet makes of the proxy container: its args and env, with the pod's labels.
struct Container {
    args: Vec<String>,
    env: Vec<(String, String)>,
    labels: BTreeMap<String, String>,
    mounts: Vec<String>,
}

fn proxy_container(deployment: &Value, pod_name: &str, pod_ip: &str) -> Container {
    let pod = &deployment["spec"]["template"];
    let labels: BTreeMap<String, String> = pod["metadata"]["labels"]
        .as_object()
        .expect("pod labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
        .collect();
    let c = pod["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("the istio-proxy container");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut env = Vec::new();
    for e in c["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("env name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &vars)
        } else {
            let path = e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: a fieldRef"));
            match path {
                "metadata.name" => pod_name.to_string(),
                "metadata.namespace" => NAMESPACE.to_string(),
                "status.podIP" | "status.hostIP" => pod_ip.to_string(),
                "spec.serviceAccountName" => "default".to_string(),
                p => {
                    let label = p
                        .strip_prefix("metadata.labels['")
                        .and_then(|l| l.strip_suffix("']"))
                        .unwrap_or_else(|| panic!("{name}: fieldPath {p}"));
                    labels.get(label).cloned().unwrap_or_default()
                }
            }
        };
        vars.insert(name.clone(), value.clone());
        env.push((name, value));
    }
    let args = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| expand(a.as_str().expect("arg"), &vars))
        .collect();
    let mounts = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| m["mountPath"].as_str().expect("mountPath").to_string())
        .collect();
    Container {
        args,
        env,
        labels,
        mounts,
    }
}

/// The downward-API `metadata.labels` file: `key="value"` lines, sorted, values quoted.
fn labels_file(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_egress_pod_runs_egret_with_istios_argument_list() {
    let template = egress_template();
    let deployment = object(&template, "Deployment");
    let c = proxy_container(
        deployment,
        "ci00000000-test-egress-5d8c7b-x2x7q",
        "127.0.0.1",
    );
    assert_eq!(c.args[..2], ["proxy", "router"], "the seed's args");
    assert!(
        c.args.contains(&format!("{NAMESPACE}.svc.cluster.local")),
        "$(POD_NAMESPACE) expanded: {:?}",
        c.args
    );
    for m in ["/etc/istio/egress-certs", "/etc/istio/pod"] {
        assert!(c.mounts.iter().any(|p| p == m), "{m} in {:?}", c.mounts);
    }

    // The pod's files, as kubelet lays them out.
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc");
    let istio = etc.join("istio");
    for d in ["pod", "config", "egress-certs"] {
        std::fs::create_dir_all(istio.join(d)).expect("mkdir");
    }
    std::fs::write(istio.join("pod/labels"), labels_file(&c.labels)).expect("labels");
    // The ConfigMap's `mesh` key, where Istio's gateway charts mount it.
    let mesh = object(&template, "ConfigMap")["data"]["mesh"]
        .as_str()
        .expect("the mesh key");
    std::fs::write(istio.join("config/mesh"), mesh).expect("mesh");
    // The `certs` Secret: the client certificate (with its intermediate) and the root.
    let pki = Pki::new("agent");
    let client = pki.client_leaf("egress-gateway-client");
    let certs = istio.join("egress-certs");
    write(&certs, "crt.pem", &client.chain_pem);
    write(&certs, "key.pem", &client.key_pem);
    write(&certs, "ca.pem", &pki.root_pem());
    // The seed's SIMPLE and MUTUAL manifests as `oc process` prints them: a ConfigMap at
    // /etc/egret, the default place of the manifests in `egret proxy`.
    let manifests = etc.join("egret");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    for f in ["simple.yaml", "mutual.yaml"] {
        std::fs::copy(seeds().join("processed").join(f), manifests.join(f)).expect("copy");
    }

    let (simple, mutual) = start_simple_and_mutual(&pki, SIMPLE, MUTUAL).await;

    // The seed's args, then egret's test overrides (the harness adds ephemeral --ready,
    // --stats and --admin).
    let mut args = c.args.clone();
    args.extend([
        "--mount".into(),
        format!("/etc/istio={}", istio.display()),
        "--mount".into(),
        format!("/etc/egret={}", manifests.display()),
        "--listen-address".into(),
        "127.0.0.1".into(),
        "--bind-port".into(),
        "3000=0".into(),
        "--bind-port".into(),
        "3001=0".into(),
        "--connect-to".into(),
        format!("{SIMPLE}:443={}", simple.addr),
        "--connect-to".into(),
        format!("{MUTUAL}:443={}", mutual.addr),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let egret = EgretProcess::start_with_env(&argv, &c.env);
    let stderr = egret.stderr();

    // The one notice: what was mapped, and every ignored flag and variable.
    let notice = stderr
        .iter()
        .find(|l| l.starts_with("egret: Istio agent arguments (proxy router): "))
        .unwrap_or_else(|| panic!("no notice: {stderr:#?}"));
    for want in [
        "role gateway",
        "namespace work (POD_NAMESPACE)",
        "cluster domain cluster.local (--domain)",
        "log level warn (--proxyLogLevel=warning)",
        "mesh config /etc/istio/config/mesh",
        "5 pod labels from /etc/istio/pod/labels as --gateway-selector and --workload-label",
        "manifests from /etc/egret",
        "pod ci00000000-test-egress-5d8c7b-x2x7q (127.0.0.1)",
        "service cluster ci00000000-test-egress",
        "ignored flags: --proxyComponentLogLevel=misc:error --log_output_level=default:info --trust-domain=cluster.local;",
        "ignored PROXY_CONFIG fields: discoveryAddress proxyMetadata tracing",
    ] {
        assert!(notice.contains(want), "{want:?} in {notice}");
    }
    let ignored_env = notice
        .split("ignored env: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .expect("ignored env");
    for name in [
        "JWT_POLICY",
        "PILOT_CERT_PROVIDER",
        "CA_ADDR",
        "SERVICE_ACCOUNT",
        "HOST_IP",
        "CANONICAL_SERVICE",
        "ISTIO_META_CLUSTER_ID",
        "ISTIO_META_WORKLOAD_NAME",
        "ISTIO_META_OWNER",
        "ISTIO_METAJSON_ANNOTATIONS",
        "TRUST_DOMAIN",
        "PROXY_XDS_VIA_AGENT",
    ] {
        assert!(
            ignored_env.split(' ').any(|n| n == name),
            "{name} in {ignored_env}"
        );
    }
    for used in ["POD_NAMESPACE", "PROXY_CONFIG", "POD_NAME", "INSTANCE_IP"] {
        assert!(
            !ignored_env.split(' ').any(|n| n == used),
            "{used} is used, not ignored: {ignored_env}"
        );
    }
    assert_eq!(
        stderr
            .iter()
            .filter(|l| l.contains("ignored flags"))
            .count(),
        1,
        "one line"
    );
    // The MeshConfig's defaultConfig.concurrency, and --proxyLogLevel=warning: no INFO lines.
    assert!(
        stderr
            .iter()
            .any(|l| l == "egret: 2 worker threads (MeshConfig defaultConfig.concurrency)"),
        "{stderr:#?}"
    );
    assert!(!stderr.iter().any(|l| l.contains(" INFO ")), "{stderr:#?}");

    // Readiness and the Prometheus endpoint, on the ports Istio's probes and scrapes use
    // (ephemeral here).
    let ready = egret.listener("readiness");
    let stats = egret.listener("stats");
    assert_eq!(get(ready, "pod", "/healthz/ready").await.status, 200);

    // Through the seed's gateway ports: SIMPLE on 3000, MUTUAL on 3001 with the client
    // certificate from the mounted Secret.
    let r = get(egret.listener("_3000"), SIMPLE, "/").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "hello from simple\n")
    );
    assert_eq!(r.header("x-upstream-sni"), SIMPLE);
    let r = get(egret.listener("_3001"), MUTUAL, "/").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "hello from mutual\n")
    );
    assert_eq!(r.header("x-upstream-client-cn"), "egress-gateway-client");

    let m = get(stats, "pod", "/stats/prometheus").await;
    assert_eq!(m.status, 200);
    assert!(
        m.body
            .lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\"")),
        "{}",
        m.body
    );
    // The access log (the MeshConfig's /dev/stdout): one line per request.
    let lines = egret.wait_stdout(2);
    assert!(
        lines[0].contains(&format!("outbound|443||{SIMPLE}")),
        "{lines:#?}"
    );
    assert!(egret.terminate().success());

    // `egret check proxy ...` validates the same translation and exits.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .arg("check")
        .args(&args)
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run egret check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.ends_with("configuration OK\n"), "{stdout}");
    assert!(
        stdout.contains(SIMPLE) && stdout.contains(MUTUAL),
        "{stdout}"
    );
    assert!(
        stderr.contains("Istio agent arguments (proxy router): role gateway"),
        "{stderr}"
    );
}

#[test]
fn a_misspelt_flag_after_proxy_router_is_an_error_with_a_suggestion() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["proxy", "router", "--serviceClustr", "x"])
        .output()
        .expect("run egret");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown flag --serviceClustr (did you mean --serviceCluster?)"),
        "{err}"
    );

    // Without --config, EGRET_CONFIG or /etc/egret there is nothing to serve.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .args([
            "proxy",
            "router",
            "--mount",
            &format!("/etc={}", dir.path().display()),
        ])
        .env_remove("EGRET_CONFIG")
        .output()
        .expect("run egret");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no manifests"), "{err}");
}
