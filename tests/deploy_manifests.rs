//! The Kubernetes manifests in `deploy/`, proven without a cluster:
//!
//! - every document is checked against the Kubernetes API types (`k8s-openapi`, offline), with
//!   unknown fields refused (the typed round trip must keep every key the YAML has), plus the
//!   cross-object rules a cluster would only show at run time: Service and policy selectors
//!   match the pod labels, probe ports are container ports, every volume mount has a volume,
//!   the termination grace period outlasts egret's drain, kustomizations list files that exist;
//! - every egret argument list in `deploy/` passes `egret check` with the pod's files laid out
//!   from the ConfigMaps (and test certificates where the Secret goes);
//! - the egress gateway's pod life: files laid out as kubelet does (`..data` symlinks,
//!   read-only), egret run with the Deployment's exact args as uid 1337 from a read-only working
//!   directory, readiness, SIMPLE and MUTUAL traffic on 3000/3001, TCP+mTLS on 9093, an atomic
//!   ConfigMap swap with no failed request, and SIGTERM draining to exit 0 within the grace
//!   period.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::Value;
use support::*;

const SIMPLE: &str = "01a47b88-7dd8-4548-ada1-bab9599efc41.apps.sbc-okd.pcbltools.ru";
const MUTUAL: &str = "ddb8b515-40b1-4ead-aaf4-2e52704bc73e.apps.sbc-okd.pcbltools.ru";
const KAFKA: &str = "kafka-broker.example.com";
/// What kubelet substitutes for `$(POD_NAMESPACE)` in these tests.
const NAMESPACE: &str = "work";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every `*.yaml` under `deploy/`, sorted.
fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read deploy/") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    assert!(!out.is_empty(), "no manifests in deploy/");
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(p)
        .display()
        .to_string()
}

/// The YAML documents of a file (empty documents dropped).
fn docs(p: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(p).expect("read a manifest");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", rel(p)));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The first key path of `orig` that `round` lacks: a field the typed object did not keep,
/// i.e. one the Kubernetes schema does not have (a typo such as `readinesProbe`).
fn unknown_path(orig: &Value, round: &Value, path: &str) -> Option<String> {
    match (orig, round) {
        (Value::Object(o), Value::Object(r)) => o.iter().find_map(|(k, v)| {
            let p = format!("{path}.{k}");
            match r.get(k) {
                // A null (a key without a value) carries nothing; the round trip drops it.
                None if v.is_null() => None,
                None => Some(p),
                Some(rv) => unknown_path(v, rv, &p),
            }
        }),
        (Value::Object(o), _) if !o.is_empty() => o.keys().next().map(|k| format!("{path}.{k}")),
        (Value::Array(o), Value::Array(r)) => o
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (v, rv))| unknown_path(v, rv, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Deserializes `doc` as `T` (which checks apiVersion and kind, required fields and types) and
/// checks that nothing was dropped. Returns the typed object.
fn try_typed<T>(doc: &Value) -> Result<T, String>
where
    T: k8s_openapi::Resource + serde::de::DeserializeOwned + serde::Serialize,
{
    let t: T = serde_path_to_error::deserialize(doc.clone()).map_err(|e| {
        format!(
            "not a valid {} {}: {} at {}",
            T::API_VERSION,
            T::KIND,
            e.inner(),
            e.path()
        )
    })?;
    let round = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    match unknown_path(doc, &round, "") {
        Some(p) => Err(format!(
            "{} {} has no field {p} (unknown to the Kubernetes schema; a typo?)",
            T::API_VERSION,
            T::KIND
        )),
        None => Ok(t),
    }
}

fn typed<T>(doc: &Value, file: &str) -> T
where
    T: k8s_openapi::Resource + serde::de::DeserializeOwned + serde::Serialize,
{
    try_typed(doc).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn the_schema_check_catches_typos_and_wrong_types() {
    let doc = |y: &str| -> Value { serde_saphyr::from_str(y).expect("yaml") };
    let base = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n        - name: c\n          image: egret:0.1.0\n";
    assert!(try_typed::<Deployment>(&doc(base)).is_ok());
    let typo = format!("{base}          readinesProbe: {{tcpSocket: {{port: 15021}}}}\n");
    let err = try_typed::<Deployment>(&doc(&typo))
        .map(|_| ())
        .expect_err("a typo");
    assert!(
        err.contains(".spec.template.spec.containers[0].readinesProbe"),
        "{err}"
    );
    let wrong = format!("{base}          ports: [{{containerPort: http}}]\n");
    let err = try_typed::<Deployment>(&doc(&wrong))
        .map(|_| ())
        .expect_err("a wrong type");
    assert!(err.contains("containerPort"), "{err}");
    let kind = base.replace("kind: Deployment", "kind: Deploymnet");
    assert!(
        try_typed::<Deployment>(&doc(&kind)).is_err(),
        "a wrong kind"
    );
}

/// One manifest, typed.
enum Obj {
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ConfigMap(Box<ConfigMap>),
    Pod(Box<Pod>),
    Pdb(Box<PodDisruptionBudget>),
    Hpa(Box<HorizontalPodAutoscaler>),
    NetPol(Box<NetworkPolicy>),
    Kustomization(Value),
}

fn classify(doc: &Value, file: &str) -> Obj {
    let api = doc["apiVersion"].as_str().unwrap_or("");
    let kind = doc["kind"].as_str().unwrap_or("");
    match (api, kind) {
        ("apps/v1", "Deployment") => Obj::Deployment(Box::new(typed(doc, file))),
        ("v1", "Service") => Obj::Service(Box::new(typed(doc, file))),
        ("v1", "ConfigMap") => Obj::ConfigMap(Box::new(typed(doc, file))),
        ("v1", "Pod") => Obj::Pod(Box::new(typed(doc, file))),
        ("policy/v1", "PodDisruptionBudget") => Obj::Pdb(Box::new(typed(doc, file))),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => Obj::Hpa(Box::new(typed(doc, file))),
        ("networking.k8s.io/v1", "NetworkPolicy") => Obj::NetPol(Box::new(typed(doc, file))),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => Obj::Kustomization(doc.clone()),
        _ => panic!("{file}: unexpected apiVersion/kind {api:?}/{kind:?}"),
    }
}

/// Kustomize's strategic merge for what our patches use: maps merge, lists of objects with a
/// `name` merge by name, anything else is replaced.
fn strategic_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(bv) => strategic_merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p))
            if p.iter().all(|x| x.get("name").is_some())
                && b.iter().all(|x| x.get("name").is_some()) =>
        {
            for item in p {
                match b.iter_mut().find(|x| x["name"] == item["name"]) {
                    Some(bv) => strategic_merge(bv, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Every file's typed objects, plus, per kustomization with patches, the patched objects
/// (named `dir/kustomization.yaml:patched NAME`).
fn all_objects() -> Vec<(String, Obj)> {
    let mut out = Vec::new();
    for f in yaml_files() {
        let name = rel(&f);
        let d = docs(&f);
        let is_patch = yaml_files().iter().any(|k| {
            k.file_name().is_some_and(|n| n == "kustomization.yaml")
                && docs(k)[0]["patches"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| k.with_file_name(p["path"].as_str().unwrap_or("")) == f)
                })
        });
        if is_patch {
            // A patch is partial; it is validated merged onto its target below.
            continue;
        }
        for doc in &d {
            out.push((name.clone(), classify(doc, &name)));
        }
    }
    // Patched targets.
    for k in yaml_files()
        .into_iter()
        .filter(|k| k.file_name().is_some_and(|n| n == "kustomization.yaml"))
    {
        let kz = &docs(&k)[0];
        let dir = k.parent().expect("dir");
        for p in kz["patches"].as_array().into_iter().flatten() {
            let patch = &docs(&dir.join(p["path"].as_str().expect("patch path")))[0];
            let (kind, name) = (
                p["target"]["kind"].as_str().expect("target kind"),
                p["target"]["name"].as_str().expect("target name"),
            );
            let base = kz["resources"]
                .as_array()
                .expect("resources")
                .iter()
                .flat_map(|r| docs(&dir.join(r.as_str().expect("resource"))))
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{}: no {kind} {name} to patch", rel(&k)));
            let mut merged = base;
            strategic_merge(&mut merged, patch);
            let label = format!("{}:patched {name}", rel(&k));
            out.push((label.clone(), classify(&merged, &label)));
        }
    }
    out
}

/// The pod spec and labels of a Deployment or Pod.
fn pod_of(o: &Obj) -> Option<(&PodSpec, BTreeMap<String, String>)> {
    match o {
        Obj::Deployment(d) => {
            let t = &d.spec.as_ref()?.template;
            Some((
                t.spec.as_ref()?,
                t.metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default(),
            ))
        }
        Obj::Pod(p) => Some((
            p.spec.as_ref()?,
            p.metadata.labels.clone().unwrap_or_default(),
        )),
        _ => None,
    }
}

/// A flag's value in an argument list (`--flag=value` or `--flag value`).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&eq) {
            Some(v)
        } else if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

fn secs(d: &str) -> f64 {
    let (n, mult) = if let Some(n) = d.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = d.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = d.strip_suffix('m') {
        (n, 60.0)
    } else {
        (d, 1.0)
    };
    n.parse::<f64>()
        .unwrap_or_else(|_| panic!("duration {d:?}"))
        * mult
}

fn is_egret(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.image.as_deref().is_some_and(|i| {
        let name = i.rsplit('/').next().unwrap_or(i);
        name.starts_with("egret:") || name.starts_with("egret-init:")
    })
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    let objs = all_objects();
    let kinds: Vec<&str> = objs
        .iter()
        .map(|(_, o)| match o {
            Obj::Deployment(_) => "Deployment",
            Obj::Service(_) => "Service",
            Obj::ConfigMap(_) => "ConfigMap",
            Obj::Pod(_) => "Pod",
            Obj::Pdb(_) => "PodDisruptionBudget",
            Obj::Hpa(_) => "HorizontalPodAutoscaler",
            Obj::NetPol(_) => "NetworkPolicy",
            Obj::Kustomization(_) => "Kustomization",
        })
        .collect();
    for k in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Pod",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Kustomization",
    ] {
        assert!(kinds.contains(&k), "no {k} in deploy/ (found {kinds:?})");
    }
    println!(
        "{} objects valid against Kubernetes 1.33's types",
        objs.len()
    );

    // Per directory: selectors match the workloads' pod labels.
    let dir_of = |f: &str| {
        f.rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default()
    };
    let subset = |sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    for (file, o) in &objs {
        let dir = dir_of(file);
        let pods: Vec<BTreeMap<String, String>> = objs
            .iter()
            .filter(|(f, _)| dir_of(f) == dir && !f.contains(":patched"))
            .filter_map(|(_, o)| pod_of(o).map(|(_, l)| l))
            .collect();
        let matches_a_pod = |sel: &BTreeMap<String, String>| pods.iter().any(|l| subset(sel, l));
        match o {
            Obj::Service(s) => {
                let sel = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.clone())
                    .unwrap_or_default();
                assert!(
                    matches_a_pod(&sel),
                    "{file}: Service selector {sel:?} matches no pod labels in {dir}"
                );
            }
            Obj::Pdb(p) => {
                let sel = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default();
                assert!(
                    matches_a_pod(&sel),
                    "{file}: PodDisruptionBudget selector {sel:?} matches no pod"
                );
            }
            Obj::NetPol(n) => {
                let sel = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_selector.as_ref())
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default();
                assert!(
                    matches_a_pod(&sel),
                    "{file}: NetworkPolicy podSelector {sel:?} matches no pod"
                );
            }
            Obj::Hpa(h) => {
                let t = &h.spec.as_ref().expect("hpa spec").scale_target_ref;
                assert!(
                    objs.iter().any(|(f, o)| dir_of(f) == dir
                        && matches!(o, Obj::Deployment(d) if d.metadata.name.as_deref() == Some(t.name.as_str()))),
                    "{file}: scaleTargetRef {} is no Deployment in {dir}",
                    t.name
                );
            }
            Obj::Deployment(d) => {
                let spec = d.spec.as_ref().expect("spec");
                let sel = spec.selector.match_labels.clone().unwrap_or_default();
                let labels = spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                assert!(
                    subset(&sel, &labels),
                    "{file}: selector {sel:?} does not match the template labels {labels:?}"
                );
            }
            Obj::Kustomization(k) => {
                let base = deploy_dir().parent().expect("repo").join(&dir);
                for r in k["resources"].as_array().into_iter().flatten() {
                    let r = r.as_str().expect("a resource path");
                    assert!(
                        base.join(r).is_file(),
                        "{file}: resource {r} does not exist"
                    );
                }
                for p in k["patches"].as_array().into_iter().flatten() {
                    let r = p["path"].as_str().expect("a patch path");
                    assert!(base.join(r).is_file(), "{file}: patch {r} does not exist");
                }
            }
            _ => {}
        }

        // Workloads: probes, volumes, grace period.
        let Some((spec, _)) = pod_of(o) else { continue };
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for m in c.volume_mounts.iter().flatten() {
                assert!(
                    volumes.contains(&m.name.as_str()),
                    "{file}: container {} mounts {}, which is no volume",
                    c.name,
                    m.name
                );
            }
            let ports: Vec<(i32, Option<&str>)> = c
                .ports
                .iter()
                .flatten()
                .map(|p| (p.container_port, p.name.as_deref()))
                .collect();
            for (what, probe) in [
                ("startupProbe", &c.startup_probe),
                ("readinessProbe", &c.readiness_probe),
                ("livenessProbe", &c.liveness_probe),
            ] {
                let Some(p) = probe else { continue };
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
                let port = p
                    .http_get
                    .as_ref()
                    .map(|h| &h.port)
                    .or(p.tcp_socket.as_ref().map(|t| &t.port))
                    .expect("an httpGet or tcpSocket probe");
                let ok = match port {
                    IntOrString::Int(n) => ports.iter().any(|(p, _)| p == n),
                    IntOrString::String(s) => ports.iter().any(|(_, n)| *n == Some(s.as_str())),
                };
                assert!(
                    ok,
                    "{file}: container {} {what} port {port:?} is not one of its ports {ports:?}",
                    c.name
                );
            }
            if is_egret(c)
                && c.args
                    .as_ref()
                    .is_some_and(|a| a.first().map(String::as_str) == Some("run"))
            {
                let args = c.args.as_ref().expect("args");
                let drain = secs(flag(args, "--drain-duration").unwrap_or("45s"));
                let grace = secs(flag(args, "--drain-grace").unwrap_or("2s"));
                let tgp = spec.termination_grace_period_seconds.unwrap_or(30) as f64;
                assert!(
                    tgp > drain + grace,
                    "{file}: terminationGracePeriodSeconds {tgp} must exceed --drain-grace {grace} + --drain-duration {drain}"
                );
                assert!(
                    c.readiness_probe.is_some(),
                    "{file}: the egret container has no readinessProbe"
                );
            }
        }
    }
}

/// The files a pod would see, for one egret container: each volume mount's path mapped to a
/// local directory (ConfigMap volumes from the ConfigMap's data, Secret volumes with test
/// certificates under the names the seed's DestinationRules use).
struct PodFiles {
    /// (mount path, local dir)
    mounts: Vec<(String, PathBuf)>,
}

fn configmap_data(dir: &str, name: &str) -> BTreeMap<String, String> {
    all_objects()
        .into_iter()
        .find_map(|(f, o)| match o {
            Obj::ConfigMap(c) if f.starts_with(dir) && c.metadata.name.as_deref() == Some(name) => {
                c.data
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ConfigMap {name} in {dir}"))
}

/// The seed's Secret: ca.pem (the root), crt.pem (the client certificate's chain, which also
/// carries the intermediate), key.pem.
fn secret_files(pki: &Pki) -> BTreeMap<String, String> {
    let client = pki.client_leaf("egress-gateway-client");
    BTreeMap::from([
        ("ca.pem".to_string(), pki.root_pem()),
        ("crt.pem".to_string(), client.chain_pem.clone()),
        ("key.pem".to_string(), client.key_pem.clone()),
    ])
}

/// Writes a volume as kubelet's atomic writer does: `..<timestamp>/KEY` files, a `..data`
/// symlink to that directory and a `KEY -> ..data/KEY` symlink per key; files get `mode`
/// without any write bit (the mount is read-only), directories 0555.
fn kubelet_volume(dir: &Path, files: &BTreeMap<String, String>, mode: u32, group: Option<u32>) {
    std::fs::create_dir_all(dir).expect("volume dir");
    set_mode(dir, 0o755);
    let ts = format!("..{}", chrono_like_stamp());
    let tsdir = dir.join(&ts);
    std::fs::create_dir(&tsdir).expect("timestamp dir");
    for (k, v) in files {
        let p = tsdir.join(k);
        std::fs::write(&p, v).expect("write a volume file");
        if let Some(g) = group {
            let _ = std::os::unix::fs::chown(&p, Some(0), Some(g));
        }
        set_mode(&p, mode & !0o222);
    }
    set_mode(&tsdir, 0o555);
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("..data swap");
    for k in files.keys() {
        let link = dir.join(k);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{k}"), &link).expect("key symlink");
        }
    }
    // Old timestamp directories go, as kubelet removes them after the swap.
    for e in std::fs::read_dir(dir).expect("read volume").flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("..") && n != ".." && n != "..data" && n != ts {
            set_mode(&e.path(), 0o755);
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    set_mode(dir, 0o555);
}

fn chrono_like_stamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    format!("{}_{:09}", d.as_secs(), d.subsec_nanos())
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Lays out the volumes of `spec`'s container `c` under `root`.
fn pod_files(
    dir: &str,
    spec: &PodSpec,
    c: &k8s_openapi::api::core::v1::Container,
    root: &Path,
    pki: &Pki,
) -> PodFiles {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .expect("the mount's volume");
        let local = root.join(&m.name);
        if let Some(cm) = &v.config_map {
            let data = configmap_data(dir, &cm.name);
            kubelet_volume(
                &local,
                &data,
                cm.default_mode.map_or(0o644, |m| m as u32),
                None,
            );
        } else if let Some(s) = &v.secret {
            let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
            kubelet_volume(
                &local,
                &secret_files(pki),
                s.default_mode.map_or(0o644, |m| m as u32),
                fs_group.map(|g| g as u32),
            );
        } else {
            std::fs::create_dir_all(&local).expect("emptyDir");
        }
        mounts.push((m.mount_path.clone(), local));
    }
    PodFiles { mounts }
}

/// The container's args as this machine can run them: `$(POD_NAMESPACE)` expanded, paths under
/// a volume mount moved to the local directory (`--config`, `--mesh-config`; files the
/// manifests name go through `--mount`), every operational server on 127.0.0.1:0, gateway
/// listeners on 127.0.0.1 with `--bind-port P=0` for every container port that is not an
/// operational one.
fn local_args(
    args: &[String],
    c: &k8s_openapi::api::core::v1::Container,
    files: &PodFiles,
    check: bool,
) -> Vec<String> {
    let remap = |v: &str| -> String {
        for (from, to) in &files.mounts {
            if let Some(rest) = v.strip_prefix(from.as_str()) {
                return format!("{}{rest}", to.display());
            }
        }
        v.to_string()
    };
    let mut out: Vec<String> = Vec::new();
    let mut it = args.iter().peekable();
    let mut first = true;
    while let Some(a) = it.next() {
        let a = a.replace("$(POD_NAMESPACE)", NAMESPACE);
        if first {
            first = false;
            out.push(if check && a == "run" {
                "check".into()
            } else {
                a
            });
            continue;
        }
        let (name, value) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let takes_value = !matches!(name.as_str(), "--no-tls-resumption");
        let value = match value {
            Some(v) => Some(v),
            None if takes_value && name.starts_with("--") => {
                it.next().map(|v| v.replace("$(POD_NAMESPACE)", NAMESPACE))
            }
            None => None,
        };
        let value = value.map(|v| match name.as_str() {
            "--ready" | "--stats" | "--admin" | "--outbound-listen" => "127.0.0.1:0".to_string(),
            "--listen-address" | "--tcp-listen-address" => "127.0.0.1".to_string(),
            "--config" | "-c" | "--mesh-config" | "--ca-bundle" | "--credentials-dir"
            | "--param-file" => remap(&v),
            _ => v,
        });
        out.push(name);
        if let Some(v) = value {
            out.push(v);
        }
    }
    for flag in ["--ready", "--stats", "--admin"] {
        if !out.iter().any(|a| a == flag) {
            out.extend([flag.to_string(), "127.0.0.1:0".to_string()]);
        }
    }
    let ops = ["--ready", "--stats", "--admin"]
        .iter()
        .filter_map(|f| flag(args, f))
        .filter_map(|a| a.rsplit(':').next()?.parse::<i32>().ok())
        .collect::<Vec<_>>();
    if flag(args, "--role") == Some("gateway") {
        for p in c.ports.iter().flatten() {
            if !ops.contains(&p.container_port) {
                out.extend(["--bind-port".to_string(), format!("{}=0", p.container_port)]);
            }
        }
    }
    for (from, to) in &files.mounts {
        out.extend(["--mount".to_string(), format!("{from}={}", to.display())]);
    }
    out
}

/// Every egret container in deploy/ with its pod: (file, dir, pod spec, container).
fn egret_containers() -> Vec<(
    String,
    String,
    PodSpec,
    k8s_openapi::api::core::v1::Container,
)> {
    let mut out = Vec::new();
    for (file, o) in all_objects() {
        let Some((spec, _)) = pod_of(&o) else {
            continue;
        };
        let dir = file
            .rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            if is_egret(c) {
                out.push((file.clone(), dir.clone(), spec.clone(), c.clone()));
            }
        }
    }
    out
}

#[test]
fn every_egret_argument_list_passes_egret_check() {
    let pki = Pki::new("deploy-check");
    let mut checked = 0;
    for (i, (file, dir, spec, c)) in egret_containers().into_iter().enumerate() {
        let args = c.args.clone().unwrap_or_default();
        if args.first().map(String::as_str) == Some("capture") {
            check_capture(&file, &spec, &c, &args);
            checked += 1;
            continue;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = pod_files(&dir, &spec, &c, &tmp.path().join(format!("pod{i}")), &pki);
        let local = local_args(&args, &c, &files, true);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
            .args(&local)
            .output()
            .expect("run egret check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{file}: container {}: `egret {}` failed:\n{stderr}\n{stdout}",
            c.name,
            local.join(" ")
        );
        assert!(stdout.contains("configuration OK"), "{stdout}");
        println!("{file}: container {}: egret check OK", c.name);
        checked += 1;
        // Let every directory's files go (0555) before the tempdir is removed.
        make_writable(tmp.path());
    }
    assert!(
        checked >= 4,
        "expected the gateway, two sidecar pods' and the patched Deployment's egret containers, checked {checked}"
    );
}

/// An init container's `egret capture` argument list: valid (its --dry-run succeeds and shows
/// the rules), and consistent with the pod's egret container: the uid it exempts is the one
/// egret runs as, the port it redirects to is egret's outbound listener, and DNS capture is
/// on in both or neither.
fn check_capture(
    file: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    init: &k8s_openapi::api::core::v1::Container,
    args: &[String],
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let resolv = tmp.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.96.0.10\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(args)
        .args(["--dry-run", "--resolv-conf"])
        .arg(&resolv)
        .output()
        .expect("run egret capture --dry-run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{file}: init container {}: `egret {}` failed: {}",
        init.name,
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("-A OUTPUT -p tcp -j EGRET_OUTPUT"),
        "{stdout}"
    );
    let flag = |list: &[String], name: &str| -> Option<String> {
        list.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("{name}="))
                .map(str::to_string)
                .or_else(|| (a == name).then(|| list.get(i + 1).cloned()).flatten())
        })
    };
    let proxy = spec
        .containers
        .iter()
        .find(|c| is_egret(c))
        .unwrap_or_else(|| panic!("{file}: an init container captures for no egret container"));
    let run = proxy.args.clone().unwrap_or_default();
    let uid = proxy
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .expect("egret's runAsUser");
    assert_eq!(
        flag(args, "--proxy-uid").unwrap_or_else(|| "1337".into()),
        uid.to_string(),
        "{file}: the uid `egret capture` exempts is the one egret runs as"
    );
    let outbound = flag(&run, "--outbound-listen").unwrap_or_else(|| "127.0.0.1:15001".into());
    assert_eq!(
        outbound.rsplit(':').next(),
        Some(
            flag(args, "--outbound-port")
                .unwrap_or_else(|| "15001".into())
                .as_str()
        ),
        "{file}: capture redirects to egret's outbound listener"
    );
    assert!(
        run.iter().any(|a| a == "--capture" || a == "--dns-capture"),
        "{file}: egret must run with --capture (or --dns-capture) behind capture rules"
    );
    assert_eq!(
        args.iter().any(|a| a == "--dns-capture"),
        run.iter().any(|a| a == "--dns-capture"),
        "{file}: --dns-capture in both containers or neither"
    );
    println!(
        "{file}: init container {}: egret capture --dry-run OK",
        init.name
    );
}

fn make_writable(p: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(p)
        && m.is_dir()
    {
        set_mode(p, 0o755);
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            make_writable(&e.path());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The egress gateway pod's life.

/// egret started as the container would be, with its listeners read from stderr.
struct PodProcess {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl PodProcess {
    fn spawn(program: &Path, prefix: &[String], args: &[String], cwd: &Path) -> PodProcess {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let (cmd, rest): (PathBuf, Vec<String>) = if prefix.is_empty() {
            (program.to_path_buf(), args.to_vec())
        } else {
            let mut r = prefix[1..].to_vec();
            r.push(program.display().to_string());
            r.extend(args.iter().cloned());
            (PathBuf::from(&prefix[0]), r)
        };
        let mut child = Command::new(cmd)
            .args(&rest)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn egret");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for (pipe, lines) in [
            (
                Box::new(child.stderr.take().expect("stderr")) as Box<dyn std::io::Read + Send>,
                stderr.clone(),
            ),
            (
                Box::new(child.stdout.take().expect("stdout")),
                stdout.clone(),
            ),
        ] {
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().expect("lock").push(l);
                }
            });
        }
        PodProcess {
            child,
            stderr,
            stdout,
        }
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// The address of the listener whose name ends with `suffix` (waits up to 30 s).
    fn listener(&mut self, suffix: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for l in self.stderr() {
                if let Some(rest) = l.strip_prefix("egret: listening on ")
                    && let Some((addr, name)) = rest.split_once(' ')
                    && name.trim_end_matches(')').ends_with(suffix)
                    && let Ok(a) = addr.parse()
                {
                    return a;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("egret exited ({st}): {:#?}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no listener *{suffix}: {:#?}", self.stderr());
    }

    fn vm_rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET on a fresh connection; errors are returned, not panicked on.
async fn try_get(addr: SocketAddr, host: &str) -> Result<Resp, String> {
    try_get_path(addr, host, "/").await
}

async fn try_get_path(addr: SocketAddr, host: &str, path: &str) -> Result<Resp, String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn ready_status(addr: SocketAddr) -> Option<u16> {
    try_get_path(addr, "localhost", "/healthz/ready")
        .await
        .ok()
        .map(|r| r.status.as_u16())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|u| u.split_whitespace().next() == Some("0"))
            })
        })
        .unwrap_or(false)
}

fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_pod_life() {
    let deployment = all_objects()
        .into_iter()
        .find_map(|(f, o)| match o {
            Obj::Deployment(d) if f == "deploy/egress-gateway/deployment.yaml" => Some(d),
            _ => None,
        })
        .expect("the egress gateway Deployment");
    let spec = deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .clone()
        .expect("pod spec");
    let c = spec
        .containers
        .iter()
        .find(|c| is_egret(c))
        .expect("the egret container")
        .clone();
    let grace = spec
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds") as u64;
    let uid = spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .expect("runAsUser");
    let gid = spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_group)
        .expect("runAsGroup");

    // The external hosts: a TLS origin for SIMPLE, one that requires the client certificate for
    // MUTUAL, and a TLS echo server with client authentication for the Kafka TCP port.
    let pki = Pki::new("deploy-pod");
    let (simple, mutual) = start_simple_and_mutual(&pki, SIMPLE, MUTUAL).await;
    let kafka = start_echo_tls(&pki.server_leaf(&[KAFKA])).await;

    // The pod's filesystem, world-traversable so uid 1337 can reach it.
    let tmp = tempfile::tempdir().expect("tempdir");
    set_mode(tmp.path(), 0o755);
    let root = tmp.path().join("pod");
    std::fs::create_dir(&root).expect("pod dir");
    let files = pod_files(
        "deploy/egress-gateway",
        &spec,
        &c,
        &root.join("volumes"),
        &pki,
    );
    // The image's /egret.
    let bin = root.join("egret");
    // EGRET_DEPLOY_BIN=target/dist/egret measures the shipped build instead of the test build.
    let src = std::env::var("EGRET_DEPLOY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_egret").to_string());
    println!("binary: {src}");
    std::fs::copy(&src, &bin).expect("copy the binary");
    set_mode(&bin, 0o555);
    // A read-only working directory (the container's root filesystem is read-only).
    let cwd = root.join("cwd");
    std::fs::create_dir(&cwd).expect("cwd");
    set_mode(&cwd, 0o555);
    set_mode(&root, 0o555);

    let mut args = local_args(c.args.as_ref().expect("args"), &c, &files, false);
    args.extend([
        "--connect-to".to_string(),
        format!("{SIMPLE}:443={}", simple.addr),
        "--connect-to".to_string(),
        format!("{MUTUAL}:443={}", mutual.addr),
        "--connect-to".to_string(),
        format!("{KAFKA}:9093={}", kafka.addr),
    ]);
    let prefix: Vec<String> = match (is_root(), setpriv()) {
        (true, Some(sp)) => {
            println!(
                "running egret as uid {uid}, gid {gid} with setpriv, cwd {} (0555)",
                cwd.display()
            );
            vec![
                sp.display().to_string(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--no-new-privs".into(),
                "--".into(),
            ]
        }
        (root, sp) => {
            println!(
                "running egret as the current user (not uid {uid}): {}; cwd {} (0555)",
                if !root {
                    "the test is not running as root"
                } else if sp.is_none() {
                    "setpriv is not installed"
                } else {
                    ""
                },
                cwd.display()
            );
            Vec::new()
        }
    };
    let mut pod = PodProcess::spawn(&bin, &prefix, &args, &cwd);
    let ready = pod.listener("readiness");
    let g3000 = pod.listener("_3000");
    let g3001 = pod.listener("_3001");
    let g9093 = pod.listener("_9093");
    println!("listeners: 3000 at {g3000}, 3001 at {g3001}, 9093 at {g9093}, readiness at {ready}");

    // startupProbe / readinessProbe: 200 within the startup probe's budget.
    let startup = c.startup_probe.as_ref().expect("startupProbe");
    let budget = Duration::from_secs(
        (startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3)) as u64,
    );
    let t0 = Instant::now();
    while ready_status(ready).await != Some(200) {
        assert!(
            t0.elapsed() < budget,
            "not ready within {budget:?}: {:#?}",
            pod.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "ready after {:?}; idle VmRSS {} KiB",
        t0.elapsed(),
        pod.vm_rss_kib()
    );

    // SIMPLE through 3000, MUTUAL through 3001.
    let r = try_get(g3000, SIMPLE).await.expect("SIMPLE via 3000");
    assert_eq!(r.status, 200, "{r:?}\n{:#?}", pod.stderr());
    assert_eq!(r.body, "hello from simple\n");
    assert_eq!(r.header("x-upstream-sni"), SIMPLE);
    assert_eq!(r.header("x-egret-route"), "simple-v1");
    let r = try_get(g3001, MUTUAL).await.expect("MUTUAL via 3001");
    assert_eq!(r.status, 200, "{r:?}\n{:#?}", pod.stderr());
    assert_eq!(r.body, "hello from mutual\n");
    assert_eq!(r.header("x-upstream-client-cn"), "egress-gateway-client");
    // Kafka: plain TCP into 9093, TLS to the broker.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(g9093)
            .await
            .expect("connect 9093");
        s.write_all(b"kafka bytes").await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("the TCP connection closes")
            .expect("read");
        let mut want = b"kafka bytes".to_vec();
        want.extend_from_slice(ECHO_TRAILER);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{:#?}",
            pod.stderr()
        );
    }

    // A short bounded load (32 concurrent clients, 50 requests each, SIMPLE and MUTUAL on
    // fresh connections): the RSS figures the Deployment's memory request is sized from.
    let idle = pod.vm_rss_kib();
    let mut tasks = Vec::new();
    for i in 0..32 {
        tasks.push(tokio::spawn(async move {
            let (addr, host) = if i % 2 == 0 {
                (g3000, SIMPLE)
            } else {
                (g3001, MUTUAL)
            };
            let mut failed = 0;
            for _ in 0..50 {
                if !try_get(addr, host).await.is_ok_and(|r| r.status == 200) {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let t0 = Instant::now();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.expect("load task");
    }
    assert_eq!(failed, 0, "requests failed under load: {:#?}", pod.stderr());
    println!(
        "1600 requests on 32 clients in {:?}: VmRSS idle {idle} KiB, after load {} KiB, peak (VmHWM) {} KiB",
        t0.elapsed(),
        pod.vm_rss_kib(),
        pod.status_kib("VmHWM")
    );

    // A ConfigMap update: kubelet's atomic `..data` swap, with requests running throughout.
    let (cm_mount, cm_dir) = files
        .mounts
        .iter()
        .find(|(m, _)| m == "/etc/egret")
        .cloned()
        .expect("the ConfigMap mount");
    let mut data = configmap_data("deploy/egress-gateway", "egret-egress-config");
    let v1 = data["simple.yaml"].clone();
    assert!(
        v1.contains("x-egret-route: simple-v1"),
        "the example sets a response header"
    );
    data.insert("simple.yaml".into(), v1.replace("simple-v1", "simple-v2"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut v2) = (0u32, Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match try_get(g3000, SIMPLE).await {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        if r.header("x-egret-route") == "simple-v2" {
                            v2 += 1;
                        }
                    }
                    Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed, v2)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_mode(&cm_dir, 0o755);
    kubelet_volume(&cm_dir, &data, 0o644, None);
    let t0 = Instant::now();
    loop {
        let r = try_get(g3000, SIMPLE)
            .await
            .expect("a request during the reload");
        if r.header("x-egret-route") == "simple-v2" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the swapped {cm_mount} was not applied: {:#?}",
            pod.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ConfigMap swap applied after {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, v2) = load.await.expect("load task");
    assert!(
        failed.is_empty(),
        "requests failed during the ConfigMap swap: {failed:?}"
    );
    assert!(
        ok > 20 && v2 > 0,
        "the loop ran across the swap: {ok} ok, {v2} on the new config"
    );
    println!(
        "{ok} requests across the swap, none failed; VmRSS {} KiB",
        pod.vm_rss_kib()
    );

    // SIGTERM: readiness turns 503, then egret drains and exits 0 within the grace period.
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pod.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let t0 = Instant::now();
    let mut saw_503 = false;
    let status = loop {
        if let Ok(Some(st)) = pod.child.try_wait() {
            break st;
        }
        if !saw_503 && ready_status(ready).await == Some(503) {
            saw_503 = true;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(grace),
            "egret still running {grace} s after SIGTERM: {:#?}",
            pod.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "exited {status} {:?} after SIGTERM (grace period {grace} s)",
        t0.elapsed()
    );
    assert!(
        status.success(),
        "exit status {status}: {:#?}",
        pod.stderr()
    );
    assert!(saw_503, "readiness turned 503 while draining");
    let out = pod.stdout.lock().expect("lock").clone();
    assert!(
        out.iter()
            .any(|l| l.contains(&format!("outbound|443||{SIMPLE}"))),
        "access log on stdout: {out:?}"
    );
    drop(pod);
    make_writable(tmp.path());
}

/// deploy/grafana-dashboard.json is valid JSON and reads only metric names egret exports (the
/// golden exposition in tests/golden/metrics.prom lists every family).
#[test]
fn the_grafana_dashboard_reads_metrics_egret_exports() {
    let path = deploy_dir().join("grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
        .expect("the dashboard is JSON");
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/metrics.prom"),
    )
    .expect("golden exposition");
    let re = regex::Regex::new(r"\b((?:istio|envoy|egret)_[a-z0-9_]+)\{").expect("regex");
    let mut names = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for c in re.captures_iter(expr) {
                names.push((
                    p["title"].as_str().unwrap_or("").to_string(),
                    c[1].to_string(),
                ));
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for (panel, n) in &names {
        let family = n.strip_suffix("_bucket").unwrap_or(n);
        assert!(
            golden.contains(&format!("# TYPE {family} ")),
            "panel {panel:?} reads {n}, which egret does not export"
        );
    }
}
