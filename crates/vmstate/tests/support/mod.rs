//! Helpers shared by the integration tests: the two test tiers and where fixtures live.
//!
//! The default tier is `cargo test --workspace` on a fresh clone. The extended tier adds
//! corpus-wide tests and wider sweeps; it runs when the environment has `CI=true`, and then
//! the reference material in `../shared` must be present: a missing folder fails the test
//! instead of skipping it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// True when the extended tier runs (`CI=true`).
pub fn extended_tier() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A file committed under `tests/fixtures/` at the repository root.
pub fn fixture(relative: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(relative)
}

/// The shared reference folder (`../shared` beside the repository), for an extended-tier
/// test named `test`.
///
/// Returns `None`, after saying so loudly on stderr, when the extended tier is off. Panics
/// (failing the test) when the tier is on but the folder is missing.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    if !extended_tier() {
        eprintln!("NOTE: extended-tier test `{test}` not run: set CI=true (it needs ../shared)");
        return None;
    }
    let dir = repo_root().join("../shared");
    assert!(
        dir.is_dir(),
        "extended tier: {} is missing; `{test}` needs the shared reference material",
        dir.display()
    );
    Some(dir)
}

/// How many cases a sampled sweep or property test runs in the current tier.
pub fn cases(default_tier: u32, extended: u32) -> u32 {
    if extended_tier() {
        extended
    } else {
        default_tier
    }
}

/// The streams of a corpus folder (`*.mig` and `*.mig.gz`), as (name without the suffix,
/// path), sorted by name.
pub fn corpus_streams(corpus: &Path) -> Vec<(String, PathBuf)> {
    let mut streams: Vec<(String, PathBuf)> = std::fs::read_dir(corpus)
        .expect("corpus folder")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let file = path.file_name()?.to_str()?.to_owned();
            let name = file
                .strip_suffix(".mig.gz")
                .or_else(|| file.strip_suffix(".mig"))?
                .to_owned();
            Some((name, path))
        })
        .collect();
    streams.sort();
    streams
}

/// The offset of the `pick`-th byte counted over the byte ranges `fields` (each `(start,
/// end)`), as sweeps choose a byte of a stream's fields; `None` past their end.
pub fn nth_field_byte(fields: &[(usize, usize)], pick: usize) -> Option<usize> {
    let mut left = pick;
    fields.iter().find_map(|&(a, b)| {
        if left < b - a {
            Some(a + left)
        } else {
            left -= b - a;
            None
        }
    })
}
