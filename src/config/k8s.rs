//! Kubernetes documents: `kind: List` (what `kubectl get -o yaml` and `oc process -o yaml`
//! print), OpenShift `Template`s with `${P}` / `${{P}}` parameters processed exactly as
//! `oc process` does, `Secret`s (for `credentialName`) and the Istio MeshConfig
//! (`--mesh-config`, or the `mesh` key of a ConfigMap). Splitting the stream and decoding a
//! document are in [`doc`](crate::config::doc).
//!
//! Istio objects are handed to the Istio store; other Kubernetes objects (Deployment, Service,
//! ...) are skipped with a debug note.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde::Deserialize;

use crate::config::decl::Model;
use crate::config::diag::{Origin, Problems};
use crate::config::doc::{Doc, Input, Meta, ObjSource, decode};
use crate::config::istio::credentials::SecretData;
use crate::config::istio::resources::MeshConfigSpec;
use crate::config::istio::store::add_object;
use crate::config::source::Source;

/// The parts of any object egret looks at before knowing its kind.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Meta>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListDoc {
    #[serde(rename = "apiVersion")]
    _api_version: serde_json::Value,
    #[serde(rename = "kind")]
    _kind: serde_json::Value,
    #[serde(default)]
    items: Vec<serde_json::Value>,
    #[serde(default, rename = "metadata")]
    _metadata: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateDoc {
    #[serde(rename = "apiVersion")]
    _api_version: serde_json::Value,
    #[serde(rename = "kind")]
    _kind: serde_json::Value,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    objects: Vec<serde_json::Value>,
    #[serde(default)]
    parameters: Vec<TemplateParam>,
    #[serde(default, rename = "labels")]
    _labels: BTreeMap<String, String>,
    #[serde(default, rename = "message")]
    _message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TemplateParam {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    generate: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SecretDoc {
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default, rename = "stringData")]
    string_data: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ConfigMapDoc {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// Parses one Kubernetes document (and the objects inside a List or Template).
pub fn parse_doc(
    source: &Source,
    doc: &Doc<'_>,
    params: &[(String, String)],
    model: &mut Model,
    problems: &mut Problems,
) {
    let mut origin = Origin::file(&source.name);
    if doc.multi {
        origin = origin.doc(doc.index);
    }
    let src = ObjSource {
        origin,
        prefix: String::new(),
        base_dir: source.base_dir.clone(),
    };
    object(
        Input::Text(doc.text, doc.first_line - 1),
        &src,
        params,
        model,
        problems,
    );
}

/// One object (top-level document, List item or Template object).
fn object(
    input: Input<'_>,
    src: &ObjSource,
    params: &[(String, String)],
    model: &mut Model,
    problems: &mut Problems,
) {
    let (env, input) = match input {
        Input::Text(t, off) => match decode::<Envelope>(Input::Text(t, off), src, problems) {
            Some(e) => (e, Input::Text(t, off)),
            None => return,
        },
        Input::Value(v) => match decode::<Envelope>(Input::Value(v.clone()), src, problems) {
            Some(e) => (e, Input::Value(v)),
            None => return,
        },
    };
    let kind = env.kind.as_deref().unwrap_or("");
    let api = env.api_version.as_deref().unwrap_or("");
    let name = env
        .metadata
        .as_ref()
        .and_then(|m| m.name.clone())
        .unwrap_or_default();
    let mut src = src.clone();
    src.origin = src.origin.clone().object(format!("{kind} {name}"));
    match kind {
        "" => problems.error(
            &src.origin,
            src.path("kind"),
            "the object has no kind",
            Some("Kubernetes objects need apiVersion and kind; egret's own configuration has neither".into()),
        ),
        "List" => {
            if let Some(list) = decode::<ListDoc>(input, &src, problems) {
                for (i, item) in list.items.into_iter().enumerate() {
                    let s = ObjSource {
                        prefix: src.path(&format!("items[{i}]")),
                        ..src.clone()
                    };
                    object(Input::Value(item), &s, params, model, problems);
                }
            }
        }
        "Template" => {
            if !api.is_empty() && !matches!(api, "template.openshift.io/v1" | "v1") {
                problems.error(&src.origin, src.path("apiVersion"), format!("unsupported Template apiVersion \"{api}\""), Some("use template.openshift.io/v1".into()));
                return;
            }
            if let Some(t) = decode::<TemplateDoc>(input, &src, problems) {
                template(t, &src, params, model, problems);
            }
        }
        "ServiceEntry" | "DestinationRule" | "VirtualService" | "Gateway" => {
            let group_ok = matches!(
                api,
                "networking.istio.io/v1alpha3" | "networking.istio.io/v1beta1" | "networking.istio.io/v1"
            );
            if !group_ok {
                problems.error(
                    &src.origin,
                    src.path("apiVersion"),
                    format!("unsupported apiVersion \"{api}\" for {kind}"),
                    Some("use networking.istio.io/v1 (v1beta1 and v1alpha3 are accepted too)".into()),
                );
                return;
            }
            add_object(kind, input, env.metadata.unwrap_or_default(), &src, &mut model.istio, problems);
        }
        "Secret" => {
            if let Some(s) = decode::<SecretDoc>(input, &src, problems) {
                let meta = env.metadata.unwrap_or_default();
                let mut keys = HashMap::new();
                for (k, v) in s.data {
                    match base64::engine::general_purpose::STANDARD.decode(v.trim()) {
                        Ok(b) => {
                            keys.insert(k, b);
                        }
                        Err(e) => problems.error(&src.origin, src.path(&format!("data.{k}")), format!("not valid base64: {e}"), Some("data values are base64; use stringData for plain text".into())),
                    }
                }
                for (k, v) in s.string_data {
                    keys.insert(k, v.into_bytes());
                }
                let store = model.istio.get_or_insert_with(Default::default);
                store.add_secret(meta.namespace, name, SecretData { keys, origin: src.origin.clone() });
            }
        }
        "ConfigMap" => {
            if let Some(cm) = decode::<ConfigMapDoc>(input, &src, problems) {
                if let Some(mesh) = cm.data.get("mesh") {
                    let mesh_src = ObjSource {
                        prefix: src.path("data.mesh"),
                        ..src.clone()
                    };
                    mesh_config(mesh, &mesh_src, model, problems);
                } else {
                    tracing::debug!("{}: ConfigMap without a mesh key: not egret's business, skipped", src.origin);
                }
            }
        }
        "Sidecar" | "EnvoyFilter" | "AuthorizationPolicy" | "RequestAuthentication" | "WorkloadEntry" | "WorkloadGroup" => {
            problems.error(
                &src.origin,
                src.path("kind"),
                format!("{kind} changes routing or security, and egret does not implement it"),
                Some(format!("remove the {kind} from egret's configuration; egret would not honour it")),
            );
        }
        "PeerAuthentication" | "Telemetry" | "ProxyConfig" | "WasmPlugin" => {
            problems.warn(&src.origin, src.path("kind"), format!("{kind} is ignored: it does not apply to egret's egress role"), None);
        }
        _ => {
            tracing::debug!("{}: {kind} is not egret's business, skipped", src.origin);
        }
    }
}

/// Parses a MeshConfig (`--mesh-config`, or a ConfigMap's `mesh` key).
pub fn mesh_config(text: &str, src: &ObjSource, model: &mut Model, problems: &mut Problems) {
    if let Some(m) = decode::<MeshConfigSpec>(Input::Text(text, 0), src, problems) {
        let store = model.istio.get_or_insert_with(Default::default);
        if let Some((_, prev)) = &store.mesh {
            problems.error(
                &src.origin,
                src.prefix.clone(),
                format!("a MeshConfig is also given in {prev}"),
                Some("give one MeshConfig (--mesh-config or one ConfigMap with a mesh key)".into()),
            );
            return;
        }
        store.mesh = Some((m, src.origin.clone()));
    }
}

/// Processes a Template like `oc process`: parameters from `value`, then `--param`/`--param-file`
/// (the ones given after this file's `--config` first); `${{P}}` as a whole string becomes the
/// typed value, `${P}` is replaced inside strings.
fn template(
    t: TemplateDoc,
    src: &ObjSource,
    params: &[(String, String)],
    model: &mut Model,
    problems: &mut Problems,
) {
    let tname = t
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "<unnamed>".into());
    let declared: Vec<&str> = t.parameters.iter().map(|p| p.name.as_str()).collect();
    let mut values: HashMap<String, String> = HashMap::new();
    for p in &t.parameters {
        if let Some(v) = &p.value {
            values.insert(p.name.clone(), v.clone());
        }
        let _ = (&p.description, &p.display_name, &p.from);
    }
    for (k, v) in params {
        if declared.contains(&k.as_str()) {
            values.insert(k.clone(), v.clone());
        }
    }
    let mut ok = true;
    for (i, p) in t.parameters.iter().enumerate() {
        let missing = values.get(&p.name).is_none_or(|v| v.is_empty());
        if p.required && missing {
            let hint = if p.generate.is_some() {
                "egret does not generate parameter values; pass it with --param or --param-file"
                    .to_string()
            } else {
                format!(
                    "pass --param {}=VALUE, or a --param-file with a {}= line, right after this --config",
                    p.name, p.name
                )
            };
            problems.error(
                &src.origin,
                src.path(&format!("parameters[{i}]")),
                format!(
                    "template \"{tname}\": required parameter {} has no value",
                    p.name
                ),
                Some(hint),
            );
            ok = false;
        }
    }
    if !ok {
        return;
    }
    for (i, mut obj) in t.objects.into_iter().enumerate() {
        let path = src.path(&format!("objects[{i}]"));
        if let Err(e) = substitute(&mut obj, &values) {
            problems.error(&src.origin, path.clone(), e, None);
            continue;
        }
        let s = ObjSource {
            prefix: path,
            ..src.clone()
        };
        object(Input::Value(obj), &s, params, model, problems);
    }
}

/// `oc process` substitution on one value tree.
fn substitute(v: &mut serde_json::Value, values: &HashMap<String, String>) -> Result<(), String> {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${{").and_then(|r| r.strip_suffix("}}"))
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                if let Some(val) = values.get(name) {
                    // The value is used as a JSON/YAML scalar: 443 is a number, true a bool.
                    *v = serde_saphyr::from_str::<Value>(val).map_err(|e| {
                        format!("${{{{{name}}}}}: \"{val}\" is not a valid value: {e}")
                    })?;
                }
                return Ok(());
            }
            if s.contains("${") {
                let mut out = String::with_capacity(s.len());
                let mut rest = s.as_str();
                while let Some(i) = rest.find("${") {
                    out.push_str(&rest[..i]);
                    let after = &rest[i + 2..];
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    let name = &after[..end];
                    if end > 0 && after[end..].starts_with('}') {
                        match values.get(name) {
                            Some(val) => out.push_str(val),
                            None => {
                                out.push_str("${");
                                out.push_str(name);
                                out.push('}');
                            }
                        }
                        rest = &after[end + 1..];
                    } else {
                        out.push_str("${");
                        rest = after;
                    }
                }
                out.push_str(rest);
                *s = out;
            }
            Ok(())
        }
        Value::Array(a) => a.iter_mut().try_for_each(|x| substitute(x, values)),
        Value::Object(o) => {
            // Keys are substituted too (oc processes the whole JSON).
            let entries: Vec<(String, Value)> = std::mem::take(o).into_iter().collect();
            for (mut k, mut val) in entries {
                let mut kv = Value::String(k.clone());
                substitute(&mut kv, values)?;
                if let Value::String(s) = kv {
                    k = s;
                }
                substitute(&mut val, values)?;
                o.insert(k, val);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Reads `KEY=VALUE` lines (`oc process --param-file`): `#` comments and blank lines are
/// skipped, surrounding quotes removed.
pub fn parse_param_file(text: &str, file: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l);
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("{file}:{}: expected KEY=VALUE, got \"{l}\"", i + 1))?;
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("{file}:{}: \"{k}\" is not a parameter name", i + 1));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_follows_oc_process() {
        let mut v: serde_json::Value = serde_json::json!({
            "number": "${{PORT}}",
            "name": "http-${PORT}",
            "odd": "http-${{PORT}}",
            "host": "${HOST}",
            "keep": "${UNKNOWN}",
            "list": ["${HOST}:${PORT}"],
        });
        let values: HashMap<String, String> = [
            ("PORT".to_string(), "443".to_string()),
            ("HOST".to_string(), "a.example".to_string()),
        ]
        .into();
        substitute(&mut v, &values).expect("substitutes");
        assert_eq!(v["number"], serde_json::json!(443));
        assert_eq!(v["name"], "http-443");
        // oc leaves ${{P}} alone when it is not the whole string.
        assert_eq!(v["odd"], "http-${{PORT}}");
        assert_eq!(v["host"], "a.example");
        assert_eq!(v["keep"], "${UNKNOWN}");
        assert_eq!(v["list"][0], "a.example:443");
    }

    #[test]
    fn param_files_parse_env_syntax() {
        let p = parse_param_file("# c\nHOST=a.example\nPORT = 443\nQ=\"x y\"\n", "p.env")
            .expect("parses");
        assert_eq!(
            p,
            vec![
                ("HOST".into(), "a.example".into()),
                ("PORT".into(), "443".into()),
                ("Q".into(), "x y".into())
            ]
        );
        assert!(
            parse_param_file("nope\n", "p.env")
                .unwrap_err()
                .contains("p.env:1")
        );
    }
}
