//! The house rules, checked: every wing of `src/` uses only wings below it in the floor table
//! of `ARCHITECTURE.md`, and no files import each other in a circle. The checker itself is
//! tested on small synthetic trees with known faults.

#[path = "layering/check.rs"]
mod check;

use std::path::Path;

use check::{Violation, check, parse_floors};

#[test]
fn the_house_has_no_upward_imports_and_no_circles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let report = check(root).unwrap_or_else(|e| panic!("{e}"));
    let text: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
    assert!(
        text.is_empty(),
        "{} house rule violation(s):\n{}",
        text.len(),
        text.join("\n")
    );
    // A checker that reads nothing would pass: make sure it saw the house.
    assert!(report.files > 40, "only {} files scanned", report.files);
    assert!(report.edges > 300, "only {} imports found", report.edges);
    for wing in [
        "proxy", "upstream", "http", "tls", "config", "route", "error",
    ] {
        assert!(report.wings.contains(wing), "wing {wing} not seen");
    }
}

#[test]
fn the_floor_table_names_every_wing_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let floors = parse_floors(&md);
    assert_eq!(floors.get("main"), Some(&1));
    assert_eq!(floors.get("error"), floors.values().max());
    let mut on_disk: Vec<String> = std::fs::read_dir(root.join("src"))
        .expect("src/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let wing = name.strip_suffix(".rs").unwrap_or(&name).to_string();
            (wing != "lib").then_some(wing)
        })
        .collect();
    on_disk.sort();
    on_disk.dedup();
    let mut named: Vec<String> = floors.keys().cloned().collect();
    named.sort();
    assert_eq!(named, on_disk, "the floor table and src/ disagree");
}

/// A synthetic tree under a temporary directory.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    dir
}

const FLOORS: &str = "# House\n\n| floor | wing | holds |\n|---|---|---|\n\
    | 1 | `main.rs`, `top` | the top |\n| 2 | `mid/` | the middle |\n\
    | 3 | `low`, `side` | leaves |\n";

#[test]
fn the_checker_reports_an_upward_import_with_its_file_line_and_path() {
    let dir = tree(&[
        ("ARCHITECTURE.md", FLOORS),
        (
            "src/lib.rs",
            "pub mod top;\npub mod mid;\npub mod low;\npub mod side;\n",
        ),
        (
            "src/top.rs",
            "use crate::mid::Thing;\npub fn f() { crate::low::g(); }\n",
        ),
        ("src/mid/mod.rs", "pub mod a;\npub use a::Thing;\n"),
        ("src/mid/a.rs", "pub struct Thing;\n"),
        // One upward import, in an expression; mentions in comments and strings are not.
        (
            "src/low.rs",
            "// crate::top::f is documented here\npub fn g() {\n    let _ = \"crate::top::f\";\n    crate::top::f();\n}\n",
        ),
        ("src/side.rs", "pub fn h() {}\n"),
    ]);
    let report = check(dir.path()).expect("check");
    assert_eq!(
        report.violations,
        vec![Violation::Upward {
            file: "src/low.rs".into(),
            line: 4,
            path: "crate::top::f".into(),
            from: "low".into(),
            from_floor: 3,
            to: "top".into(),
            to_floor: 1,
        }],
        "{:#?}",
        report.violations
    );
    let text = report.violations[0].to_string();
    assert!(text.starts_with("src/low.rs:4: `crate::top::f`"), "{text}");
}

#[test]
fn the_checker_reports_same_floor_imports_and_unknown_wings() {
    let dir = tree(&[
        ("ARCHITECTURE.md", FLOORS),
        (
            "src/lib.rs",
            "pub mod low;\npub mod side;\npub mod attic;\n",
        ),
        ("src/low.rs", "use crate::side::{self, h};\n"),
        ("src/side.rs", "pub fn h() {}\n"),
        ("src/attic.rs", "pub fn old() {}\n"),
    ]);
    let report = check(dir.path()).expect("check");
    let text: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
    assert_eq!(report.violations.len(), 3, "{text:#?}");
    assert!(
        text.iter()
            .any(|t| t.contains("`crate::side::h`") && t.contains("the same floor")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("wing `attic` is not in the floor table")),
        "{text:#?}"
    );
}

#[test]
fn the_checker_reports_a_circle_between_files_of_a_wing() {
    let dir = tree(&[
        ("ARCHITECTURE.md", FLOORS),
        ("src/lib.rs", "pub mod mid;\n"),
        // The façade re-exports; a reaches b by its path; b comes back through the façade.
        ("src/mid/mod.rs", "pub mod a;\npub mod b;\npub use a::A;\n"),
        ("src/mid/a.rs", "use super::b::B;\npub struct A(B);\n"),
        ("src/mid/b.rs", "pub struct B;\nfn f(_: crate::mid::A) {}\n"),
        // A child test module using its parent is not a circle.
        ("src/mid/a/tests.rs", "use super::*;\n"),
    ]);
    let report = check(dir.path()).expect("check");
    assert_eq!(report.violations.len(), 1, "{:#?}", report.violations);
    let Violation::Circle { wing, steps } = &report.violations[0] else {
        panic!("{:#?}", report.violations);
    };
    assert_eq!(wing, "mid");
    let files: Vec<&str> = steps.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(files, ["src/mid/a.rs", "src/mid/b.rs", "src/mid/mod.rs"]);
    let paths: Vec<&str> = steps.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(paths, ["super::b::B", "crate::mid::A", "a::A"]);
}

#[test]
fn the_checker_follows_inline_modules_and_the_binary_root() {
    let dir = tree(&[
        ("ARCHITECTURE.md", FLOORS),
        ("src/lib.rs", "pub mod top;\npub mod low;\n"),
        ("src/main.rs", "fn main() { egret::top::run(); }\n"),
        // `super::` inside an inline module is the file's own module: no edge, no violation.
        (
            "src/top.rs",
            "pub fn run() {}\n#[cfg(test)]\nmod tests {\n    use super::run;\n}\n",
        ),
        (
            "src/low.rs",
            "pub fn g() {}\nmod inner {\n    pub fn x() { super::g(); }\n}\nfn bad() { egret::top::run(); }\n",
        ),
    ]);
    let report = check(dir.path()).expect("check");
    // `egret::` is the library only in main.rs (which may use any wing, even on its own
    // floor); in the library it is no path of ours.
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert!(report.edges >= 2, "{report:?}");

    let dir = tree(&[
        ("ARCHITECTURE.md", FLOORS),
        ("src/lib.rs", "pub mod top;\npub mod low;\n"),
        ("src/top.rs", "pub fn run() {}\n"),
        (
            "src/low.rs",
            "mod inner {\n    use super::super::top::run;\n}\n",
        ),
    ]);
    let report = check(dir.path()).expect("check");
    assert_eq!(report.violations.len(), 1, "{:#?}", report.violations);
    assert!(
        report.violations[0]
            .to_string()
            .contains("`super::super::top::run`")
    );
}
