//! The house checker: reads a source tree and the floor table of its `ARCHITECTURE.md`, and
//! reports every import that breaks the house rules:
//!
//! - a wing (a top-level module of `src/`) may use only wings on lower floors of the table: a
//!   path into a wing on a higher floor, or on the same floor, is a violation, and so is a wing
//!   the table does not name;
//! - inside a wing, the files' imports must not run in a circle.
//!
//! An import is any `crate::`, `super::` or `self::` path in code (in `use` trees and in
//! expressions), any path that starts with a child module the file declares (`mod x;` then
//! `x::Y`), and, in the binary's `main.rs`, any `egret::` path. Comments and string literals
//! are skipped. A path is resolved to the deepest module that has a file of its own, so
//! `crate::upstream::connect::UpstreamIo` is an edge to `src/upstream/connect.rs` and
//! `crate::config::Config` one to `src/config/mod.rs`. `mod x;` declarations are containment,
//! not edges; `pub use` re-exports are edges. Paths into the crate root (`crate::FastMap`) are
//! allowed everywhere, and the binary's `main.rs` stands above the library: it may use any
//! wing (it shares the top floor with `app` only in name).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One broken rule, named well enough to fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Violation {
    /// `file` (in wing `from`, floor `from_floor`) uses `path`, which is in wing `to` on floor
    /// `to_floor`, not below it.
    Upward {
        file: String,
        line: usize,
        path: String,
        from: String,
        from_floor: u32,
        to: String,
        to_floor: u32,
    },
    /// A wing that the floor table does not name.
    UnknownWing { wing: String, file: String },
    /// Files of one wing whose imports run in a circle: each file, and the path by which it
    /// reaches the next one.
    Circle {
        wing: String,
        steps: Vec<(String, String)>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Upward {
                file,
                line,
                path,
                from,
                from_floor,
                to,
                to_floor,
            } => {
                let how = if to_floor == from_floor {
                    "the same floor"
                } else {
                    "a higher floor"
                };
                write!(
                    f,
                    "{file}:{line}: `{path}` goes from wing `{from}` (floor {from_floor}) to wing \
                     `{to}` (floor {to_floor}), {how}; a wing may use only wings below it \
                     (move the item down, or pass it in as a parameter)"
                )
            }
            Violation::UnknownWing { wing, file } => write!(
                f,
                "{file}: wing `{wing}` is not in the floor table of ARCHITECTURE.md; give it a floor"
            ),
            Violation::Circle { wing, steps } => {
                write!(f, "files of wing `{wing}` import each other in a circle:")?;
                for (file, path) in steps {
                    write!(f, "\n    {file} uses `{path}`")?;
                }
                Ok(())
            }
        }
    }
}

/// What the checker found: the violations, and how much it looked at (so that a checker that
/// silently scans nothing cannot pass).
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub files: usize,
    pub edges: usize,
    pub wings: BTreeSet<String>,
}

/// The floor of each wing, from the first Markdown table whose header row starts with
/// `| floor |`: the first column is the floor number, the second names the wings in backticks
/// (`proxy/`, `route`, `main.rs` all name a wing).
pub fn parse_floors(markdown: &str) -> BTreeMap<String, u32> {
    let mut floors = BTreeMap::new();
    let mut in_table = false;
    for line in markdown.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if !in_table {
            in_table = cells
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case("floor"));
            continue;
        }
        let Some(Ok(floor)) = cells.first().map(|c| c.parse::<u32>()) else {
            continue;
        };
        let Some(wings) = cells.get(1) else { continue };
        for name in wings.split('`').skip(1).step_by(2) {
            let name = name.trim_end_matches('/').trim_end_matches(".rs");
            if !name.is_empty() {
                floors.insert(name.to_string(), floor);
            }
        }
    }
    floors
}

/// One source file: where it is, the module path it defines, and its code with comments and
/// string literals blanked out (same length, so byte offsets still give line numbers).
struct SourceFile {
    rel: String,
    module: Vec<String>,
    code: String,
    /// `egret::` paths are the library's (only in the binary's root).
    is_bin_root: bool,
}

/// Checks the tree under `root` (which holds `src/` and `ARCHITECTURE.md`).
pub fn check(root: &Path) -> Result<Report, String> {
    let arch = root.join("ARCHITECTURE.md");
    let md = std::fs::read_to_string(&arch).map_err(|e| format!("{}: {e}", arch.display()))?;
    let floors = parse_floors(&md);
    if floors.is_empty() {
        return Err(format!(
            "{}: no floor table (a Markdown table whose header starts with `| floor |`)",
            arch.display()
        ));
    }
    let src = root.join("src");
    let mut paths = Vec::new();
    collect_rs(&src, &mut paths).map_err(|e| format!("{}: {e}", src.display()))?;
    paths.sort();
    let mut files = Vec::new();
    for p in &paths {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let rel = p.strip_prefix(root).unwrap_or(p).display().to_string();
        let Some(module) = module_of(p.strip_prefix(&src).unwrap_or(p)) else {
            continue;
        };
        files.push(SourceFile {
            is_bin_root: rel.ends_with("src/main.rs"),
            rel,
            module,
            code: blank_comments_and_strings(&text),
        });
    }
    Ok(check_files(&files, &floors))
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `lib.rs` -> [], `main.rs` -> ["main"], `a.rs` and `a/mod.rs` -> ["a"], `a/b.rs` -> ["a", "b"].
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?.to_string();
    if parts.is_empty() && stem == "lib" {
        return Some(Vec::new());
    }
    if stem != "mod" {
        parts.push(stem);
    }
    Some(parts)
}

fn check_files(files: &[SourceFile], floors: &BTreeMap<String, u32>) -> Report {
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    let by_module: BTreeMap<&[String], &str> = files
        .iter()
        .map(|f| (f.module.as_slice(), f.rel.as_str()))
        .collect();
    // Inside each wing: file -> file -> the first path that makes the edge.
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>> = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for f in files {
        let Some(wing) = f.module.first() else {
            continue; // the crate root declares the wings
        };
        report.wings.insert(wing.clone());
        let Some(&from_floor) = floors.get(wing) else {
            if unknown.insert(wing.clone()) {
                report.violations.push(Violation::UnknownWing {
                    wing: wing.clone(),
                    file: f.rel.clone(),
                });
            }
            continue;
        };
        for (offset, written, target) in imports(f) {
            let line = f.code[..offset].matches('\n').count() + 1;
            // A path into the crate root (`crate::FastMap`) names no wing: only modules with a
            // file of their own are wings.
            let Some(to) = target
                .first()
                .filter(|_| by_module.contains_key(&target[..1]))
            else {
                continue;
            };
            report.edges += 1;
            // The binary's root stands above the library: it may use any wing.
            if f.is_bin_root {
                continue;
            }
            if to != wing {
                match floors.get(to) {
                    Some(&to_floor) if to_floor > from_floor => {}
                    Some(&to_floor) => report.violations.push(Violation::Upward {
                        file: f.rel.clone(),
                        line,
                        path: written,
                        from: wing.clone(),
                        from_floor,
                        to: to.clone(),
                        to_floor,
                    }),
                    None => {
                        if unknown.insert(to.clone()) {
                            report.violations.push(Violation::UnknownWing {
                                wing: to.clone(),
                                file: f.rel.clone(),
                            });
                        }
                    }
                }
                continue;
            }
            // The deepest module of the path that has a file of its own.
            let target_file = (1..=target.len())
                .rev()
                .find_map(|n| by_module.get(&target[..n]).copied());
            if let Some(tf) = target_file
                && tf != f.rel
            {
                edges
                    .entry(wing.clone())
                    .or_default()
                    .entry(f.rel.clone())
                    .or_default()
                    .entry(tf.to_string())
                    .or_insert(written);
            }
        }
    }
    for (wing, graph) in &edges {
        for cycle in cycles(graph) {
            report.violations.push(Violation::Circle {
                wing: wing.clone(),
                steps: cycle,
            });
        }
    }
    report.violations.sort();
    report
}

/// Every import of a file: (byte offset, the path as written, the absolute module path it
/// names).
fn imports(f: &SourceFile) -> Vec<(usize, String, Vec<String>)> {
    let code = &f.code;
    let children = declared_children(code);
    let mut out = Vec::new();
    let mut use_spans = Vec::new();
    // `use` trees first, expanded (`use super::{a::B, c::{D, E}}`).
    let mut i = 0;
    while let Some(pos) = find_word(code, "use", i) {
        let Some(end) = code[pos..].find(';').map(|e| pos + e) else {
            break;
        };
        let tree = &code[pos + 3..end];
        // Only a use declaration: its tree holds nothing but paths, braces, commas and `as`.
        let is_tree = tree
            .bytes()
            .all(|b| is_ident(b) || b":{},* \t\r\n".contains(&b));
        if !is_tree {
            i = pos + 3;
            continue;
        }
        let mut paths = Vec::new();
        expand_use(tree.trim(), String::new(), &mut paths);
        paths.retain(|p| is_ours(p, &children, f.is_bin_root));
        if !paths.is_empty() {
            let scope = scope_at(code, pos, &f.module);
            for p in paths {
                if let Some(abs) = absolute(&p, &scope, &children, f.is_bin_root) {
                    out.push((pos, p, abs));
                }
            }
        }
        use_spans.push((pos, end));
        i = end;
    }
    // Paths in expressions and types.
    let bytes = code.as_bytes();
    let mut j = 0;
    while j < bytes.len() {
        let in_use = use_spans.iter().any(|&(a, b)| j >= a && j < b);
        let starts_word = j == 0 || !is_ident(bytes[j - 1]) && bytes[j - 1] != b':';
        if in_use || !starts_word || !is_ident(bytes[j]) {
            j += 1;
            continue;
        }
        let mut k = j;
        while k < bytes.len() && (is_ident(bytes[k]) || code[k..].starts_with("::")) {
            k += if bytes[k] == b':' { 2 } else { 1 };
        }
        let path = code[j..k].trim_end_matches("::");
        if path.contains("::") && is_ours(path, &children, f.is_bin_root) {
            let scope = scope_at(code, j, &f.module);
            if let Some(abs) = absolute(path, &scope, &children, f.is_bin_root) {
                out.push((j, path.to_string(), abs));
            }
        }
        j = k.max(j + 1);
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The next occurrence of `word` as a whole word at or after `from`.
fn find_word(code: &str, word: &str, from: usize) -> Option<usize> {
    let bytes = code.as_bytes();
    let mut at = from;
    while let Some(p) = code[at..].find(word).map(|p| p + at) {
        let before = p == 0 || !is_ident(bytes[p - 1]);
        let after = bytes.get(p + word.len()).is_none_or(|&b| !is_ident(b));
        if before && after {
            return Some(p);
        }
        at = p + word.len();
    }
    None
}

/// Child modules a file declares (`mod x;` or `mod x {`).
fn declared_children(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(p) = find_word(code, "mod", i) {
        let rest = code[p + 3..].trim_start();
        let name: String = rest
            .bytes()
            .take_while(|&b| is_ident(b))
            .map(char::from)
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        i = p + 3;
    }
    out
}

/// The module path at `offset`: the file's module plus the inline modules (`mod x { ... }`)
/// that enclose the offset.
fn scope_at(code: &str, offset: usize, module: &[String]) -> Vec<String> {
    let mut scope = module.to_vec();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let bytes = code.as_bytes();
    let mut i = 0;
    let mut pending: Option<String> = None;
    while i < offset.min(bytes.len()) {
        match bytes[i] {
            b'{' => {
                depth += 1;
                if let Some(name) = pending.take() {
                    stack.push((depth, name));
                }
            }
            b'}' => {
                if stack.last().is_some_and(|(d, _)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
            }
            b';' => pending = None,
            b'm' if code[i..].starts_with("mod ") && (i == 0 || !is_ident(bytes[i - 1])) => {
                let name: String = code[i + 4..]
                    .trim_start()
                    .bytes()
                    .take_while(|&b| is_ident(b))
                    .map(char::from)
                    .collect();
                pending = Some(name);
            }
            _ => {}
        }
        i += 1;
    }
    scope.extend(stack.into_iter().map(|(_, n)| n));
    scope
}

/// Expands a use tree into full paths: `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str, prefix: String, out: &mut Vec<String>) {
    let tree = tree.trim();
    let tree = tree.strip_prefix("::").unwrap_or(tree);
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        let prefix = join(&prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&inner[start..i], prefix.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use(&inner[start..], prefix, out);
        return;
    }
    // `a::b as c` and `self` inside a group.
    let item = tree.split(" as ").next().unwrap_or(tree).trim();
    if item.is_empty() {
        return;
    }
    if item == "self" {
        out.push(prefix);
    } else {
        out.push(join(&prefix, item));
    }
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}::{rest}"),
    }
}

/// Whether a path starts where the crate's own paths start (cheap; [`absolute`] resolves it).
fn is_ours(path: &str, children: &BTreeSet<String>, bin_root: bool) -> bool {
    let first = path.split("::").next().unwrap_or("").trim();
    match first {
        "crate" | "self" | "super" => !bin_root || first != "crate",
        "egret" => bin_root,
        c => !bin_root && children.contains(c),
    }
}

/// The absolute module path `path` names from `scope`, if it is one of the crate's.
fn absolute(
    path: &str,
    scope: &[String],
    children: &BTreeSet<String>,
    bin_root: bool,
) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").map(str::trim).collect();
    let first = *segs.first()?;
    let (mut base, rest): (Vec<String>, &[&str]) = match first {
        "crate" if !bin_root => (Vec::new(), &segs[1..]),
        "egret" if bin_root => (Vec::new(), &segs[1..]),
        "self" => (scope.to_vec(), &segs[1..]),
        "super" => {
            let mut s = scope.to_vec();
            let mut n = 0;
            while segs.get(n) == Some(&"super") {
                s.pop();
                n += 1;
            }
            (s, &segs[n..])
        }
        c if children.contains(c) && !bin_root => (scope.to_vec(), &segs[..]),
        _ => return None,
    };
    base.extend(rest.iter().filter(|s| **s != "*").map(|s| s.to_string()));
    Some(base)
}

/// The circles in a directed graph of files (one per strongly connected component of more
/// than one file), each as the steps around it.
fn cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<(String, String)>> {
    let nodes: BTreeSet<&String> = graph
        .keys()
        .chain(graph.values().flat_map(|m| m.keys()))
        .collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for next in graph.get(&n).into_iter().flat_map(|m| m.keys()) {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in nodes {
        if done.contains(n) || !reach(n).contains(n) {
            continue;
        }
        // The shortest circle through `n`, by breadth-first search back to it.
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([n.clone()]);
        'search: while let Some(cur) = queue.pop_front() {
            for next in graph.get(&cur).into_iter().flat_map(|m| m.keys()) {
                if next == n {
                    prev.insert(n.clone(), cur.clone());
                    break 'search;
                }
                if !prev.contains_key(next) {
                    prev.insert(next.clone(), cur.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let mut ring = vec![n.clone()];
        let mut at = prev.get(n).cloned();
        while let Some(p) = at {
            if &p == n {
                break;
            }
            ring.push(p.clone());
            at = prev.get(&p).cloned();
        }
        ring.reverse();
        ring.rotate_right(1);
        let steps = (0..ring.len())
            .map(|i| {
                let from = &ring[i];
                let to = &ring[(i + 1) % ring.len()];
                let path = graph[from][to].clone();
                (from.clone(), path)
            })
            .collect();
        for f in &ring {
            done.insert(f.clone());
        }
        out.push(steps);
    }
    out
}

/// Blanks comments, string literals and character literals (bytes become spaces; newlines
/// stay), so that paths in docs and messages are not imports.
pub fn blank_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = text[i..].find('\n').map_or(b.len(), |e| i + e);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !is_ident(b[i - 1]))
        {
            // Raw string: r"..." or r#"..."#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let start = i + 2 + hashes;
            let end = b[start..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |p| start + p + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'\'' {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 3 + p)
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch) == Some(&b'\'')).then_some(i + 2 + ch)
            };
            match end {
                Some(e) => {
                    blank(&mut out, i, e);
                    i = e;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}
