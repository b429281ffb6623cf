//! `vmstate convert - -` as a migration filter: a piped stream converts to the same bytes as
//! the same stream in a file, and what precedes the device state is written out before the
//! device state has arrived.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Fixtures with requests in flight on every kind of ring and transport, and the streams of
/// whole machines.
fn fixtures() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for dir in ["streams", "rings", "machines"] {
        let Ok(entries) = std::fs::read_dir(support::fixture(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let wanted =
                name.ends_with(".mig.gz") && (dir != "machines" || name.contains("inflight"));
            if wanted {
                paths.push(path);
            }
        }
    }
    paths.sort();
    assert!(paths.len() >= 10, "{paths:?}");
    paths
}

/// The decompressed fixture, written to a file of its own for the test `test` (tests run
/// at once, and a file must not be rewritten while another maps it): the mapped reader's
/// input.
fn unpacked(test: &str, path: &PathBuf) -> (PathBuf, Vec<u8>) {
    let raw = cli::gunzip(path);
    let name = path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".gz", "");
    let file = cli::tmp("cli_filter", &format!("{test}-{name}"));
    std::fs::write(&file, &raw).unwrap();
    (file, raw)
}

#[test]
fn a_piped_stream_converts_as_the_same_file_does() {
    let options: [&[&str]; 3] = [&[], &["--reencode"], &["--to-layout", "stable"]];
    for path in fixtures() {
        let (file, raw) = unpacked("same", &path);
        let gz = std::fs::read(&path).unwrap();
        for opts in options {
            let out = cli::tmp("cli_filter", "converted.mig");
            let mut args = vec!["convert"];
            args.extend_from_slice(opts);
            let mut from_file = args.clone();
            from_file.extend([file.to_str().unwrap(), out.to_str().unwrap()]);
            let expected = cli::run(&from_file, None);
            let mut piped = args.clone();
            piped.extend(["-", "-"]);
            for (what, input) in [("stream", &raw), ("gzip", &gz)] {
                let got = cli::run(&piped, Some(input));
                let shown = format!("{} {opts:?} piped as {what}", path.display());
                assert_eq!(
                    got.status.code(),
                    expected.status.code(),
                    "{shown}: {}",
                    String::from_utf8_lossy(&got.stderr)
                );
                if expected.status.success() {
                    assert!(
                        got.stdout == std::fs::read(&out).unwrap(),
                        "{shown}: the output differs from the file's"
                    );
                    assert!(
                        got.stderr.is_empty(),
                        "{shown}: {}",
                        String::from_utf8_lossy(&got.stderr)
                    );
                }
                if opts.is_empty() && expected.status.success() {
                    assert!(
                        got.stdout == raw,
                        "{shown}: an unchanged stream is not its input"
                    );
                }
            }
        }
    }
}

/// The offset of the first FULL section: where the device state starts.
fn device_state_offset(file: &str) -> usize {
    let json = cli::dump_json(file);
    json["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["record"] == "section" && r["kind"] == "full")
        .and_then(|r| r["span"]["offset"].as_u64())
        .expect("a device section") as usize
}

#[test]
fn the_filter_writes_the_ram_before_the_device_state_arrives() {
    // The fixture with the most guest memory before its device state.
    let mut candidates = fixtures();
    candidates.push(support::fixture(
        "ram/qemu7.2-noos-q35-block-dirty-bitmap.mig.gz",
    ));
    let (file, raw, before) = candidates
        .iter()
        .map(|path| {
            let (file, raw) = unpacked("early", path);
            let before = device_state_offset(file.to_str().unwrap());
            (file, raw, before)
        })
        .max_by_key(|(_, _, before)| *before)
        .unwrap();
    assert!(
        before > raw.len() / 2,
        "{}: {before} of {}",
        file.display(),
        raw.len()
    );
    let out = cli::tmp("cli_filter", "expected.mig");
    cli::ok(&[
        "convert",
        "--to-layout",
        "stable",
        file.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let expected = std::fs::read(&out).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_vmstate"))
        .args(["convert", "--to-layout", "stable", "-", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (sent, received) = mpsc::channel();
    let reader = std::thread::spawn(move || loop {
        let mut buf = vec![0u8; 1 << 16];
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.truncate(n);
                if sent.send(buf).is_err() {
                    break;
                }
            }
        }
    });
    // Everything but the device state, then a pause, as a source still sending would.
    stdin.write_all(&raw[..before]).unwrap();
    stdin.flush().unwrap();
    let mut got = Vec::new();
    while got.len() < before {
        match received.recv_timeout(Duration::from_secs(30)) {
            Ok(piece) => got.extend_from_slice(&piece),
            Err(_) => break,
        }
    }
    assert_eq!(
        got.len(),
        before,
        "of the {before} bytes before the device state, {} were written before it arrived",
        got.len()
    );
    assert!(
        got == raw[..before],
        "the bytes written are not the input's"
    );
    // The rest, with the channel left open as a source's may be: the device state is
    // written once the description has arrived, not when the input closes.
    stdin.write_all(&raw[before..]).unwrap();
    stdin.flush().unwrap();
    while got.len() < expected.len() {
        match received.recv_timeout(Duration::from_secs(30)) {
            Ok(piece) => got.extend_from_slice(&piece),
            Err(_) => break,
        }
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "the device state was not written before the input closed"
    );
    drop(stdin);
    while let Ok(piece) = received.recv_timeout(Duration::from_secs(30)) {
        got.extend_from_slice(&piece);
    }
    reader.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(
        got == expected,
        "the filter's output differs from the file's conversion"
    );
}

#[test]
fn a_libvirt_image_through_the_filter_stays_an_image() {
    let path = support::fixture("libvirt/save-raw.img.gz");
    let (file, raw) = unpacked("image", &path);
    let out = cli::tmp("cli_filter", "image.img");
    cli::ok(&[
        "convert",
        "--reencode",
        file.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let got = cli::run(&["convert", "--reencode", "-", "-"], Some(&raw));
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(got.stdout == std::fs::read(&out).unwrap());
    assert!(got.stdout == raw, "an unchanged image is not its input");
    let bare = cli::run(&["convert", "--to", "stream", "-", "-"], Some(&raw));
    assert!(bare.status.success());
    assert!(raw.ends_with(&bare.stdout) && bare.stdout.starts_with(b"QEVM"));
}

#[test]
fn a_stream_cut_short_fails_the_filter() {
    let path = support::fixture("rings/qemu7.2-blk-inflight-split.rings.mig.gz");
    let raw = cli::gunzip(&path);
    for cut in [100, raw.len() / 2, raw.len() - 10] {
        let got = cli::run(&["convert", "-", "-"], Some(&raw[..cut]));
        assert_eq!(got.status.code(), Some(2), "cut at {cut}");
        assert!(got.stdout.len() <= cut);
        let stderr = String::from_utf8_lossy(&got.stderr);
        assert!(
            stderr.contains("-: ") && stderr.contains(" offset "),
            "cut at {cut}: {stderr}"
        );
    }
}
