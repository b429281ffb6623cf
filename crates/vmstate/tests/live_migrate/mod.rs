//! Running the `live-migrate` example from the tests: its binary, how to run it, and what its
//! last line says.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// The example's binary, built once per test binary: `cargo test --test NAME` and the tests
/// of other packages do not build it, and one left from an earlier build would run old code.
pub fn example() -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join("live-migrate");
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", "vmstate", "--example", "live-migrate"])
            .status()
            .unwrap();
        assert!(status.success(), "building the live-migrate example");
    });
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// The example started with `args`, its output captured.
pub fn start(args: &[&str]) -> Child {
    Command::new(example())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Exit code, standard output and standard error of a finished run.
pub fn outcome(out: Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the example with `args` to its end.
pub fn run(args: &[&str]) -> (Option<i32>, String, String) {
    outcome(start(args).wait_with_output().unwrap())
}

/// The K of the last line's `in flight at the switch K`.
pub fn in_flight_at_switch(stdout: &str) -> Option<u64> {
    let (_, after) = stdout
        .lines()
        .last()?
        .split_once("in flight at the switch ")?;
    after.split(',').next()?.parse().ok()
}
