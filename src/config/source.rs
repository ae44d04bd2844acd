//! What a load reads: [`Source`]s (a name for messages, the text, the directory its relative
//! paths start from), from files and directories given with `--config`, inline text, or the
//! embedded default.

use std::path::{Path, PathBuf};

use crate::config::diag::{ConfigError, Origin, Problems};

/// The embedded default configuration (`egret` with no `--config`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.yaml");
pub const EMBEDDED_DEFAULT_NAME: &str = "<embedded default>";

/// One configuration input: a name for messages and its text.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
    /// Directory that relative paths in this source are resolved against.
    pub base_dir: Option<PathBuf>,
    /// Template parameters that apply to this source only (`--param-file` after `--config`).
    pub params: Vec<(String, String)>,
}

impl Source {
    pub fn embedded_default() -> Source {
        Source {
            name: EMBEDDED_DEFAULT_NAME.into(),
            text: EMBEDDED_DEFAULT.into(),
            base_dir: None,
            params: Vec::new(),
        }
    }

    pub fn inline(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
            base_dir: None,
            params: Vec::new(),
        }
    }
}

/// Reads files and directories (`*.yaml`, `*.yml`, `*.json`, sorted by name) into sources.
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<Source>, ConfigError> {
    let mut out = Vec::new();
    let mut problems = Problems::default();
    for path in paths {
        let origin = Origin::file(path.display().to_string());
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                problems.error(
                    &origin,
                    "",
                    format!("cannot read the configuration: {e}"),
                    Some("check the --config path".into()),
                );
                continue;
            }
        };
        let files = if meta.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                    })
                    .collect(),
                Err(e) => {
                    problems.error(&origin, "", format!("cannot list the directory: {e}"), None);
                    continue;
                }
            };
            files.sort();
            if files.is_empty() {
                problems.error(
                    &origin,
                    "",
                    "the directory holds no *.yaml, *.yml or *.json file",
                    None,
                );
            }
            files
        } else {
            vec![path.clone()]
        };
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => out.push(Source {
                    name: file.display().to_string(),
                    text,
                    base_dir: file.parent().map(Path::to_path_buf),
                    params: Vec::new(),
                }),
                Err(e) => problems.error(
                    &Origin::file(file.display().to_string()),
                    "",
                    format!("cannot read the file: {e}"),
                    None,
                ),
            }
        }
    }
    if problems.has_errors() {
        return Err(ConfigError {
            problems: problems.list,
        });
    }
    Ok(out)
}
