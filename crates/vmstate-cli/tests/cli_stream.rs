//! `vmstate dump` and `vmstate convert` as a user runs them: output, exit codes, pipes.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use cli::gunzip;

use std::path::PathBuf;
use std::process::Output;

const Q35_100: &str = "qemu10.0-noos-q35-alldev";
const FIXTURES: [&str; 3] = [
    "qemu7.2-noos-pc-alldev",
    Q35_100,
    "qemu7.2-noos-q35-nofooter-noconfig",
];

fn vmstate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    cli::run(args, stdin)
}

fn fixture_path(name: &str) -> PathBuf {
    support::fixture(&format!("streams/{name}.mig.gz"))
}

fn tmp(name: &str) -> PathBuf {
    cli::tmp("cli_stream", name)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn dump_summarises_a_stream() {
    let path = fixture_path(Q35_100);
    let output = vmstate(&["dump", path.to_str().unwrap()], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "QEVM version 3",
        "section footers: yes",
        "machine pc-q35-10.0",
        "SWITCHOVER_START",
        "0000:00:01.0/virtio-blk",
        "pc.ram",
        "8192",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[test]
fn dump_json_reads_from_stdin() {
    let data = gunzip(fixture_path(Q35_100));
    let output = vmstate(&["dump", "--json", "-"], Some(&data));
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["size"], data.len() as u64);
    assert_eq!(json["ram_blocks"][0]["name"], "pc.ram");
    assert_eq!(json["ram_blocks"][0]["zero_pages"], 8192);
    let records = json["records"].as_array().unwrap();
    assert!(records.len() > 30);
    // RAM is counts and ranges: 8322 page records come out as a few runs, no page bytes.
    let part = records
        .iter()
        .find(|r| r["idstr"] == "ram" && r["kind"] == "part")
        .unwrap();
    let items = part["body"]["items"].as_array().unwrap();
    assert!(items.len() < 200, "{} RAM items", items.len());
    let counted: u64 = items.iter().filter_map(|i| i["count"].as_u64()).sum();
    assert_eq!(counted, 8322);
}

#[test]
fn convert_writes_fixtures_back_identically_from_files_and_pipes() {
    for name in FIXTURES {
        let path = fixture_path(name);
        let expected = gunzip(&path);
        let out = tmp(&format!("{name}.mig"));
        let output = vmstate(
            &["convert", path.to_str().unwrap(), out.to_str().unwrap()],
            None,
        );
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        assert!(std::fs::read(&out).unwrap() == expected, "{name}: file");

        let compressed = std::fs::read(&path).unwrap();
        let output = vmstate(&["convert", "-", "-"], Some(&compressed));
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        assert!(output.stdout == expected, "{name}: pipe");
    }
}

#[test]
fn truncated_stream_exits_2_naming_the_offset() {
    let data = gunzip(fixture_path(Q35_100));
    for cut in [3, 20_000, data.len() - 300] {
        let output = vmstate(&["dump", "-"], Some(&data[..cut]));
        assert_eq!(output.status.code(), Some(2), "cut at {cut}");
        let message = stderr(&output);
        assert!(message.starts_with("error: "), "{message}");
        assert!(message.contains("offset"), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
        // As a filter, convert writes what it has read before it fails; into a file, it
        // writes nothing.
        let output = vmstate(&["convert", "-", "-"], Some(&data[..cut]));
        assert_eq!(output.status.code(), Some(2), "convert, cut at {cut}");
        assert!(
            data[..cut].starts_with(&output.stdout),
            "convert, cut at {cut}"
        );
        let out =
            std::env::temp_dir().join(format!("vmstate-cut-{}-{cut}.mig", std::process::id()));
        let output = vmstate(&["convert", "-", out.to_str().unwrap()], Some(&data[..cut]));
        assert_eq!(
            output.status.code(),
            Some(2),
            "convert to a file, cut at {cut}"
        );
        assert!(
            !out.exists(),
            "convert to a file, cut at {cut}: the file was written"
        );
    }
}

#[test]
fn obsolete_version_is_named() {
    let mut data = gunzip(fixture_path(Q35_100));
    data[7] = 2;
    let output = vmstate(&["dump", "-"], Some(&data));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("obsolete version 2"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn every_corpus_stream_converts_identically() {
    let Some(shared) = support::shared_dir("every_corpus_stream_converts_identically") else {
        return;
    };
    let streams = support::corpus_streams(&shared.join("corpus"));
    assert_eq!(streams.len(), 16);
    for (_, path) in streams {
        let shown = path.display().to_string();
        let raw = std::fs::read(&path).unwrap();
        let expected = if shown.ends_with(".gz") {
            gunzip(&path)
        } else {
            raw.clone()
        };
        let output = vmstate(&["dump", &shown], None);
        assert!(output.status.success(), "{shown}: {}", stderr(&output));
        let out = tmp("corpus.mig");
        let output = vmstate(&["convert", &shown, out.to_str().unwrap()], None);
        assert!(output.status.success(), "{shown}: {}", stderr(&output));
        assert!(std::fs::read(&out).unwrap() == expected, "{shown}: file");
        let output = vmstate(&["convert", "-", "-"], Some(&raw));
        assert!(output.status.success(), "{shown}: {}", stderr(&output));
        assert!(output.stdout == expected, "{shown}: pipe");
    }
}
