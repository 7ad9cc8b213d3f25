//! Embeds the SQL migrations (both dialects) and the git commit into the binary.
//!
//! Invariant: `migrations/sqlite` and `migrations/postgres` hold the same migration numbers and
//! names; the build fails with the difference otherwise, so a schema change cannot land in one
//! dialect only.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn migrations(dir: &Path) -> Vec<(i64, String, PathBuf)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
    {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name")
            .to_string();
        let (number, name) = stem.split_once('_').unwrap_or_else(|| {
            panic!(
                "{}: migration files are named NNNN_description.sql",
                path.display()
            )
        });
        let version: i64 = number.parse().unwrap_or_else(|_| {
            panic!(
                "{}: migration files are named NNNN_description.sql",
                path.display()
            )
        });
        found.push((version, name.to_string(), path));
    }
    found.sort();
    found
}

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut generated = String::new();
    let mut shapes = Vec::new();
    for (dialect, constant) in [("sqlite", "SQLITE"), ("postgres", "POSTGRES")] {
        let dir = root.join("migrations").join(dialect);
        println!("cargo:rerun-if-changed={}", dir.display());
        let found = migrations(&dir);
        shapes.push(
            found
                .iter()
                .map(|(v, n, _)| (*v, n.clone()))
                .collect::<BTreeSet<_>>(),
        );
        writeln!(
            generated,
            "/// Migrations for {dialect}: (version, description, SQL)."
        )
        .unwrap();
        writeln!(
            generated,
            "pub(crate) const {constant}: &[(i64, &str, &str)] = &["
        )
        .unwrap();
        for (version, name, path) in &found {
            println!("cargo:rerun-if-changed={}", path.display());
            writeln!(
                generated,
                "    ({version}, {name:?}, include_str!({:?})),",
                path.display().to_string()
            )
            .unwrap();
        }
        writeln!(generated, "];").unwrap();
    }
    if shapes[0] != shapes[1] {
        panic!(
            "migrations/sqlite and migrations/postgres differ: only in sqlite {:?}, only in postgres {:?}",
            shapes[0].difference(&shapes[1]).collect::<Vec<_>>(),
            shapes[1].difference(&shapes[0]).collect::<Vec<_>>()
        );
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("migrations.rs"), generated).expect("write migrations.rs");

    // The commit for tenantd_build_info; "unknown" outside a git checkout. Not named TENANTD_*:
    // `cargo run` and `cargo test` also set it in the process's environment, where the
    // configuration loader would warn about a TENANTD_ variable that sets no key.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
    // Rebuild the label when HEAD moves: HEAD itself, the branch it points at, packed refs.
    let git = root.join(".git");
    let mut watched = vec![git.join("HEAD"), git.join("packed-refs")];
    if let Ok(head) = fs::read_to_string(git.join("HEAD")) {
        if let Some(reference) = head.trim().strip_prefix("ref: ") {
            watched.push(git.join(reference));
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
