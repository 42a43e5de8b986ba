//! Embeds every scenario of `scenarios/`: each `NAME.toml` there (but `regressions.toml`, the list of
//! seeds that once failed) is the embedded scenario NAME, so adding a scenario is adding its file.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read when the script runs, not when it is built: a checkout that moved keeps its script.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../scenarios");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the scenarios directory")
        .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter_map(|file| file.strip_suffix(".toml").map(str::to_string))
        .filter(|name| name != "regressions")
        .collect();
    names.sort();
    let mut code = String::from("/// The embedded scenarios: each file of scenarios/, by name.\n");
    code.push_str("const EMBEDDED: &[(&str, &str)] = &[\n");
    for name in &names {
        let path = dir.join(format!("{name}.toml"));
        println!("cargo::rerun-if-changed={}", path.display());
        writeln!(code, "    ({name:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    code.push_str(
        "];\n\n/// The names of the embedded scenarios, in file-name order.\npub const NAMES: &[&str] = &[\n",
    );
    for name in &names {
        writeln!(code, "    {name:?},").unwrap();
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("scenarios.rs");
    std::fs::write(out, code).expect("writing the scenario registry");
}
