//! Running the `vmstate` binary from the CLI tests: one way to start it, feed it, and read
//! what it wrote.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs `vmstate ARGS`, with `stdin` on its standard input (nothing when `None`), and fails
/// the test if it panicked.
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmstate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.map(<[u8]>::to_vec);
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        if let Some(input) = input {
            // The command may stop reading early on bad input; that is not a test failure.
            let _ = pipe.write_all(&input);
        }
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "vmstate {args:?} panicked: {stderr}"
    );
    output
}

/// Runs `vmstate ARGS` and fails the test unless it exits 0.
pub fn ok(args: &[&str]) -> Output {
    let out = run(args, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "vmstate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A path in a scratch folder of the test binary `test`.
pub fn tmp(test: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The decompressed bytes of a gzip file.
pub fn gunzip(path: impl AsRef<Path>) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// `vmstate dump --json FILE`, parsed.
pub fn dump_json(path: &str) -> serde_json::Value {
    serde_json::from_slice(&ok(&["dump", "--json", path]).stdout).unwrap()
}
