//! `vmstate convert --strip-ram`, and the ways a stream reaches the command (mapped file,
//! redirected file, pipe, gzip) as a user runs them. Time and memory are measured by
//! `scripts/bench-scale.sh`, never asserted here.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use cli::gunzip;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: [&str; 3] = [
    "qemu7.2-noos-pc-alldev",
    "qemu10.0-noos-q35-alldev",
    "qemu7.2-noos-q35-nofooter-noconfig",
];

fn vmstate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    cli::run(args, stdin)
}

fn ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // No progress bar, nothing else: stderr is not a terminal here. A command that reads
    // a compressed or piped stream out of order says that it copies it first.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let rest: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("copying the stream to a temporary file first"))
        .collect();
    assert!(rest.is_empty(), "{what}: stderr not empty: {stderr}");
}

fn tmp(name: &str) -> PathBuf {
    cli::tmp("cli_scale", name)
}

fn dump_json(path: &str) -> serde_json::Value {
    let output = vmstate(&["dump", "--json", path], None);
    ok(&output, path);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Strips `path`, checks that the output dumps cleanly with the same block list, no pages,
/// the same device sections and description, and is exactly the input less its page records.
/// Returns (stream size, stripped size).
fn check_strip(path: &Path) -> (u64, u64) {
    let shown = path.to_str().unwrap();
    // Named after the input: the fixture and corpus tests strip at the same time.
    let out = tmp(&format!(
        "{}.stripped.mig",
        path.file_name().unwrap().to_string_lossy()
    ));
    let output = vmstate(
        &["convert", "--strip-ram", shown, out.to_str().unwrap()],
        None,
    );
    ok(&output, shown);
    let spooled = String::from_utf8_lossy(&output.stderr).contains("temporary file");
    assert_eq!(spooled, shown.ends_with(".gz"), "{shown}: {output:?}");
    let before = dump_json(shown);
    let after = dump_json(out.to_str().unwrap());
    let stripped_size = std::fs::metadata(&out).unwrap().len();
    let size = before["size"].as_u64().unwrap();
    let page_bytes: u64 = before["ram_blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["ranges"].as_array().unwrap())
        .map(|r| r["len"].as_u64().unwrap())
        .sum();
    assert_eq!(stripped_size, size - page_bytes, "{shown}");
    assert_eq!(after["size"].as_u64(), Some(stripped_size), "{shown}");
    let blocks = |j: &serde_json::Value| -> Vec<(String, u64)> {
        j["ram_blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["name"].as_str().unwrap().to_owned(),
                    b["used_length"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(blocks(&before), blocks(&after), "{shown}");
    assert!(!blocks(&after).is_empty(), "{shown}");
    for block in after["ram_blocks"].as_array().unwrap() {
        assert_eq!(block["pages"], 0, "{shown}");
        assert_eq!(block["zero_pages"], 0, "{shown}");
        assert_eq!(block["xbzrle_pages"], 0, "{shown}");
    }
    let devices = |j: &serde_json::Value| -> Vec<serde_json::Value> {
        j["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["record"] == "section" && r["idstr"] != "ram")
            .map(|r| {
                serde_json::json!([
                    r["idstr"],
                    r["instance_id"],
                    r["version_id"],
                    r["span"]["len"]
                ])
            })
            .collect()
    };
    assert_eq!(devices(&before), devices(&after), "{shown}");
    assert_eq!(
        before["trailer_json_len"], after["trailer_json_len"],
        "{shown}"
    );
    // A stripped stream strips to itself.
    let again = tmp("stripped-again.mig");
    let output = vmstate(
        &[
            "convert",
            "--strip-ram",
            out.to_str().unwrap(),
            again.to_str().unwrap(),
        ],
        None,
    );
    ok(&output, shown);
    assert!(
        std::fs::read(&again).unwrap() == std::fs::read(&out).unwrap(),
        "{shown}"
    );
    (size, stripped_size)
}

#[test]
fn strip_ram_keeps_blocks_and_devices_of_every_fixture() {
    for name in FIXTURES {
        check_strip(&support::fixture(&format!("streams/{name}.mig.gz")));
    }
}

#[test]
fn strip_ram_of_every_corpus_stream_dumps_cleanly_and_is_far_smaller() {
    let Some(shared) = support::shared_dir("strip_ram_of_every_corpus_stream") else {
        return;
    };
    let streams = support::corpus_streams(&shared.join("corpus"));
    assert_eq!(streams.len(), 16);
    for (_, path) in streams {
        let (size, stripped) = check_strip(&path);
        eprintln!("{}: {size} -> {stripped} bytes", path.display());
        // Guests that booted carry megabytes of RAM; the others a few hundred KiB of it
        // beside their device state and description.
        let ratio = if size > 4 << 20 { 20 } else { 3 };
        assert!(
            stripped * ratio / 2 < size,
            "{}: {stripped} of {size} bytes",
            path.display()
        );
    }
}

#[test]
fn every_way_in_reads_the_same_stream() {
    let path = support::fixture(&format!("streams/{}.mig.gz", FIXTURES[1]));
    let raw = gunzip(&path);
    let plain = tmp("plain.mig");
    std::fs::write(&plain, &raw).unwrap();
    let compressed = std::fs::read(&path).unwrap();
    let expected = vmstate(&["dump", "--json", plain.to_str().unwrap()], None);
    ok(&expected, "mapped file");
    let json = |o: &Output| {
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        // How the stream came (gzip or bare) is the one thing that differs.
        v.as_object_mut().unwrap().remove("compressed");
        v.as_object_mut().unwrap().remove("envelope");
        v
    };
    // A gzip file, a pipe, a gzip pipe, and standard input redirected from a file.
    let gz = vmstate(&["dump", "--json", path.to_str().unwrap()], None);
    ok(&gz, "gzip file");
    assert_eq!(json(&gz), json(&expected));
    let piped = vmstate(&["dump", "--json", "-"], Some(&raw));
    ok(&piped, "pipe");
    assert_eq!(json(&piped), json(&expected));
    let gz_piped = vmstate(&["dump", "--json", "-"], Some(&compressed));
    ok(&gz_piped, "gzip pipe");
    assert_eq!(json(&gz_piped), json(&expected));
    let redirected = Command::new(env!("CARGO_BIN_EXE_vmstate"))
        .args(["dump", "--json", "-"])
        .stdin(std::fs::File::open(&plain).unwrap())
        .output()
        .unwrap();
    ok(&redirected, "redirected file");
    assert_eq!(json(&redirected), json(&expected));
}

#[test]
fn convert_onto_its_own_input_and_to_a_device() {
    let path = support::fixture(&format!("streams/{}.mig.gz", FIXTURES[0]));
    let raw = gunzip(&path);
    let file = tmp("in-place.mig");
    std::fs::write(&file, &raw).unwrap();
    let shown = file.to_str().unwrap();
    // The output replaces the input by renaming: the mapped input is never truncated.
    let output = vmstate(&["convert", shown, shown], None);
    ok(&output, "in place");
    assert!(std::fs::read(&file).unwrap() == raw);
    let output = vmstate(&["convert", "--strip-ram", shown, shown], None);
    ok(&output, "in place, stripped");
    assert!(std::fs::read(&file).unwrap().len() < raw.len());
    let output = vmstate(&["convert", shown, "/dev/null"], None);
    ok(&output, "to /dev/null");
    // A failed conversion leaves no output behind.
    let missing = tmp("never-written.mig");
    let output = vmstate(
        &["convert", "-", missing.to_str().unwrap()],
        Some(&raw[..raw.len() / 2]),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(!missing.exists());
}

/// Where `convert FILE OUT` can put its output to try each way it copies: beside the input
/// (one filesystem: `copy_file_range`), and on tmpfs when there is one on another device
/// (`sendfile`).
fn outputs_beside_and_elsewhere(input: &Path, name: &str) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut outputs = vec![tmp(&format!("{name}.out.mig"))];
    let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && device(shm) != device(input) {
        outputs.push(shm.join(format!(
            "vmstate-cli-scale-{}-{name}.mig",
            std::process::id()
        )));
    }
    outputs
}

#[test]
fn convert_copies_the_same_bytes_to_a_file_as_it_writes_to_a_pipe() {
    // Runs of several MiB, which go to a file as spans copied in the kernel, and to a pipe
    // as bytes; bare, and behind a libvirt header (the stream starts further into the file).
    let bare = support::large_ram_stream();
    let image = gunzip(support::fixture("libvirt/save-raw.img.gz"));
    let header = image.windows(4).position(|w| w == b"QEVM").unwrap();
    let mut wrapped = image[..header].to_vec();
    wrapped.extend_from_slice(&bare);
    for (name, raw) in [("bare", &bare), ("libvirt", &wrapped)] {
        let input = tmp(&format!("{name}.mig"));
        std::fs::write(&input, raw).unwrap();
        let shown = input.to_str().unwrap();
        let piped = vmstate(&["convert", shown, "-"], None);
        ok(&piped, name);
        assert!(piped.stdout.ends_with(&bare), "{name}: not the stream back");
        for output in outputs_beside_and_elsewhere(&input, name) {
            let result = vmstate(&["convert", shown, output.to_str().unwrap()], None);
            ok(&result, &output.display().to_string());
            let written = std::fs::read(&output).unwrap();
            std::fs::remove_file(&output).unwrap();
            assert!(written == piped.stdout, "{name} to {}", output.display());
        }
        // Standard output redirected to a regular file is copied to as well.
        let redirected = tmp(&format!("{name}.stdout.mig"));
        let status = Command::new(env!("CARGO_BIN_EXE_vmstate"))
            .args(["convert", shown, "-"])
            .stdout(std::fs::File::create(&redirected).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "{name}: convert to a redirected stdout");
        assert!(
            std::fs::read(&redirected).unwrap() == piped.stdout,
            "{name}: stdout"
        );
    }
}
