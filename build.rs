//! Embeds the commit the binary is built from (`roomlab --version`, and every repro line), marked
//! `-dirty` when the tree had uncommitted changes, so a repro line names the code that failed
//! wherever it is run.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|out| out.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            let dirty =
                git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        None => "unknown (built outside a git checkout)".to_string(),
    };
    println!("cargo:rustc-env=ROOMLAB_COMMIT={commit}");
    // A commit moves HEAD or its branch and rewrites the index; an edit changes a source folder.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{reference}");
        }
    }
    for folder in
        ["src", "protocol", "engine", "server", "client", "oracle", "sim", "conformance", "scenarios"]
    {
        println!("cargo:rerun-if-changed={folder}");
    }
    println!("cargo:rerun-if-changed=Cargo.toml");
}
