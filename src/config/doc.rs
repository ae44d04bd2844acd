//! Documents: a YAML stream split at `---` into documents, and a document (or a tree already
//! parsed from one) decoded into a serde shape, reporting the field path and line of any error.
//! Both front ends (native and Kubernetes) read through here, and [`ObjSource`] and [`Meta`]
//! travel with every Kubernetes object into the Istio store.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::diag::{Origin, Problems, explain_serde_message};

/// One YAML document of a source.
pub struct Doc<'a> {
    pub text: &'a str,
    /// 1-based.
    pub index: usize,
    /// Line of the document's first line in the file (1-based).
    pub first_line: usize,
    /// Whether the source has several documents (then messages name the document).
    pub multi: bool,
}

/// Splits a YAML stream at `---` lines (and after `...`).
pub fn split_documents<'a>(text: &'a str) -> Vec<Doc<'a>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    let push = |from: usize, to: usize, first_line: usize, docs: &mut Vec<Doc<'a>>| {
        let t = &text[from..to];
        if t.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        }) {
            docs.push(Doc {
                text: t,
                index: 0,
                first_line,
                multi: false,
            });
        }
    };
    for (line_no, line) in (1usize..).zip(text.split_inclusive('\n')) {
        let trimmed = line.trim_end();
        let is_start =
            trimmed == "---" || trimmed.starts_with("--- ") || trimmed.starts_with("---\t");
        let is_end = trimmed == "...";
        if is_start || is_end {
            push(start, offset, start_line, &mut docs);
            // `--- key: value` keeps content on the marker line.
            start = if is_start && trimmed.len() > 3 {
                offset + 4
            } else {
                offset + line.len()
            };
            start_line = if is_start && trimmed.len() > 3 {
                line_no
            } else {
                line_no + 1
            };
        }
        offset += line.len();
    }
    push(start, text.len(), start_line, &mut docs);
    let multi = docs.len() > 1;
    for (i, d) in docs.iter_mut().enumerate() {
        d.index = i + 1;
        d.multi = multi;
    }
    docs
}

/// Whether a document is a Kubernetes object (has a top-level `apiVersion` or `kind`).
pub fn is_kubernetes(doc: &str) -> bool {
    doc.lines()
        .any(|l| l.starts_with("apiVersion:") || l.starts_with("kind:"))
}

/// Where an object came from, for messages.
#[derive(Clone, Debug)]
pub struct ObjSource {
    pub origin: Origin,
    /// Field path prefix inside the document (`items[2]`, `objects[1]`), empty at top level.
    pub prefix: String,
    pub base_dir: Option<PathBuf>,
}

impl ObjSource {
    pub fn path(&self, rest: &str) -> String {
        match (self.prefix.is_empty(), rest.is_empty()) {
            (true, _) => rest.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{rest}", self.prefix),
        }
    }
}

/// A document's payload: the text (line numbers in errors) or an already parsed tree (items of
/// a List, objects of a processed Template).
pub enum Input<'a> {
    Text(&'a str, usize),
    Value(serde_json::Value),
}

/// Deserializes `input` into `T`, reporting the field path (and line, for text) on error.
pub fn decode<T: DeserializeOwned>(
    input: Input<'_>,
    src: &ObjSource,
    problems: &mut Problems,
) -> Option<T> {
    match input {
        Input::Text(text, line_offset) => {
            let mut path = String::new();
            let result = serde_saphyr::with_deserializer_from_str(text, |de| {
                serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
                    path = e.path().to_string();
                    e.into_inner()
                })
            });
            match result {
                Ok(v) => Some(v),
                Err(e) => {
                    let mut origin = src.origin.clone();
                    if let Some(loc) = e.location() {
                        origin.line_col =
                            Some((loc.line() as usize + line_offset, loc.column() as usize));
                    }
                    let first = e.to_string();
                    let first = first.lines().next().unwrap_or("").to_string();
                    let msg = first.split_once(": ").map(|(_, r)| r).unwrap_or(&first);
                    let msg = match msg.split_once(": ") {
                        Some((head, rest)) if head.starts_with("line ") => rest,
                        _ => msg,
                    };
                    let (message, hint) = explain_serde_message(msg);
                    problems.error(&origin, src.path(&path), message, hint);
                    None
                }
            }
        }
        Input::Value(v) => match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let (message, hint) = explain_serde_message(&e.into_inner().to_string());
                problems.error(&src.origin, src.path(&path), message, hint);
                None
            }
        },
    }
}

/// `metadata`: only what egret uses; other keys (uid, resourceVersion, ...) are allowed.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_on_markers_with_line_numbers() {
        let t = "a: 1\n---\n# only a comment\n---\nkind: X\nb: 2\n...\n--- c: 3\n";
        let d = split_documents(t);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].text, "a: 1\n");
        assert_eq!((d[1].first_line, d[1].index), (5, 2));
        assert_eq!(d[1].text, "kind: X\nb: 2\n");
        assert_eq!(d[2].text, "c: 3\n");
        assert!(d[0].multi);
    }
}
