//! The oracle must never share logic with what it judges: it depends on no other roomlab crate but
//! the protocol's types, and calls none of the protocol's logic. clippy.toml refuses those calls by
//! path; this test refuses them by name, so it holds even where clippy does not run.

use std::fs;
use std::path::{Path, PathBuf};

/// Crates the oracle judges, or that judge with it.
const FORBIDDEN_CRATES: &[&str] = &[
    "roomlab-engine",
    "roomlab-server",
    "roomlab-client",
    "roomlab-sim",
    "roomlab-conformance",
    "roomlab-benches",
];

/// Names of roomlab-protocol logic (see clippy.toml for each reason), as they would appear in code.
const FORBIDDEN_NAMES: &[&str] = &[
    "merge_patch",
    "json_equal",
    "total_order",
    "value_in",
    "query::compare",
    ".check()",
    ".matches(",
    ".compare(",
    ".evaluate(",
    "ListItem::sort",
    "ListDiff::between",
    "ListDiff::apply",
    ".between(",
    ".apply(",
    "fracdex",
    "Mutant",
    "mutants",
    "fuzzing",
    "check_decode",
    "roomlab_protocol::decode",
    "roomlab_protocol::encode",
    "roomlab_protocol::awareness_entries",
    "decode_server",
    "encode_server",
    "YjsFrame::decode",
    "YjsFrame::encode",
    "YSync::encode",
    ".encode()",
    "write_var_uint",
    "is_system",
    "schema_for",
    "is_definite",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_manifest_depends_on_no_judged_crate() {
    let manifest = fs::read_to_string(crate_dir().join("Cargo.toml")).unwrap();
    for line in manifest.lines().map(str::trim).filter(|line| !line.starts_with('#')) {
        for forbidden in FORBIDDEN_CRATES {
            assert!(!line.contains(forbidden), "oracle/Cargo.toml depends on {forbidden}: {line}");
        }
        assert!(!line.contains("mutants"), "oracle/Cargo.toml enables planted bugs: {line}");
    }
    assert!(manifest.contains("roomlab-protocol = { path = \"../protocol\" }"));
}

#[test]
fn the_sources_call_no_protocol_logic() {
    let mut offences = Vec::new();
    for file in rust_files(&crate_dir().join("src")) {
        let text = fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for name in FORBIDDEN_NAMES {
                if line.contains(name) {
                    offences.push(format!("{}:{}: {name}: {}", file.display(), number + 1, line.trim()));
                }
            }
        }
    }
    assert!(offences.is_empty(), "protocol logic named in oracle/src:\n{}", offences.join("\n"));
}

#[test]
fn clippy_refuses_the_same_calls() {
    let config = fs::read_to_string(crate_dir().join("clippy.toml")).unwrap();
    for path in [
        "roomlab_protocol::merge_patch",
        "roomlab_protocol::query::Query::check",
        "roomlab_protocol::query::total_order",
        "roomlab_protocol::ListDiff::between",
        "roomlab_protocol::DocId::is_system",
        "roomlab_protocol::ErrorCode::is_definite",
    ] {
        assert!(config.contains(&format!("path = \"{path}\"")), "clippy.toml does not refuse {path}");
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}
