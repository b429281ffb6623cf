//! Streams inside libvirt save images, as a user runs the commands on them: every command
//! reads them (from files and pipes), `dump` shows the container, `convert` and `edit` keep
//! it (header, domain XML and compression) unless `--to stream`, and broken headers exit 2.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use std::io::Read;
use std::path::PathBuf;

const FORMATS: [&str; 6] = ["raw", "gzip", "bzip2", "xz", "lzop", "zstd"];

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_envelope");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The fixture image of `format` as a file (the raw one is stored gzipped: unpacked here).
fn image(format: &str) -> String {
    if format == "raw" {
        // Unpacked once: tests run in parallel, and rewriting a file another one has mapped
        // would pull the pages from under it.
        static RAW: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        return RAW
            .get_or_init(|| {
                let path = tmp("save-raw.img");
                let packed = std::fs::read(support::fixture("libvirt/save-raw.img.gz")).unwrap();
                std::fs::write(&path, gunzip(&packed)).unwrap();
                path.to_string_lossy().into_owned()
            })
            .clone();
    }
    support::fixture(&format!("libvirt/save-{format}.img"))
        .to_string_lossy()
        .into_owned()
}

/// The stream inside every fixture image.
fn stream() -> Vec<u8> {
    gunzip(
        &std::fs::read(support::fixture(
            "stripped/qemu7.2-blk-inflight-split.stripped.mig.gz",
        ))
        .unwrap(),
    )
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dump_shows_the_container_of_every_format() {
    for format in FORMATS {
        let out = cli::ok(&["dump", &image(format)]);
        let text = text(&out);
        assert!(
            text.contains(&format!(
                "container: libvirt save image v2 (little-endian header): domain fixture-vm \
                 (6f1c8e52-3b0a-4c1e-9d57-0f5b2a7c9e11), was running (resumed on restore), \
                 stream {format} at offset 1457"
            )),
            "{format}: {text}"
        );
        assert!(text.contains("0000:00:01.0/virtio-blk"), "{format}: {text}");
        let out = cli::ok(&["dump", "--json", &image(format)]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["envelope"]["kind"], "libvirt");
        assert_eq!(json["envelope"]["domain_name"], "fixture-vm");
        assert_eq!(json["size"], stream().len());
        assert_eq!(json["compressed"], format != "raw");
    }
}

#[test]
fn every_command_reads_images_from_files_and_pipes() {
    let expected = text(&cli::run(&["check", "-"], Some(&stream())));
    for format in FORMATS {
        let out = cli::run(&["check", &image(format)], None);
        assert_eq!(out.status.code(), Some(0), "{format}");
        assert_eq!(text(&out), expected, "{format}");
        let bytes = std::fs::read(image(format)).unwrap();
        let piped = cli::run(&["check", "-"], Some(&bytes));
        assert_eq!(piped.status.code(), Some(0), "{format} through a pipe");
        assert_eq!(text(&piped), expected, "{format} through a pipe");
    }
}

#[test]
fn convert_and_edit_keep_the_image_unless_asked_for_the_stream() {
    let original = stream();
    for format in FORMATS {
        let input = image(format);
        let before = std::fs::read(&input).unwrap();
        let out = tmp(&format!("converted-{format}.img"));
        cli::ok(&["convert", &input, out.to_str().unwrap()]);
        let after = std::fs::read(&out).unwrap();
        // The header, domain XML, cookie and padding are the bytes that were read.
        assert_eq!(after[..1457], before[..1457], "{format}");
        if format == "raw" {
            assert!(after == before, "raw: convert changed the image");
        }
        // The stream inside is the one that went in.
        let bare = tmp(&format!("bare-{format}.mig"));
        cli::ok(&[
            "convert",
            "--to",
            "stream",
            out.to_str().unwrap(),
            bare.to_str().unwrap(),
        ]);
        assert!(std::fs::read(&bare).unwrap() == original, "{format}");
        // edit writes the image back too, with the change inside.
        let edited = tmp(&format!("edited-{format}.img"));
        cli::ok(&[
            "edit",
            &input,
            edited.to_str().unwrap(),
            "--set",
            "virtio_devices[0].virtio.requests[2].index=7",
        ]);
        let out = cli::run(&["check", edited.to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(1), "{format}");
        assert!(text(&out).contains("[duplicate-head]"), "{format}");
        let dump = text(&cli::ok(&["dump", edited.to_str().unwrap()]));
        assert!(
            dump.contains(&format!("stream {format} at offset 1457")),
            "{format}: {dump}"
        );
    }
}

#[test]
fn broken_headers_exit_2_naming_the_field() {
    let good = std::fs::read(image("gzip")).unwrap();
    let cases: [(&str, usize, &[u8], &str); 4] = [
        (
            "partial",
            0,
            b"LibvirtQemudPart",
            "incomplete libvirt save image",
        ),
        (
            "lying-len",
            20,
            &(1u32 << 30).to_le_bytes(),
            "libvirt.data_len",
        ),
        ("format", 28, &9u32.to_le_bytes(), "libvirt.format"),
        // "sparse" says the stream follows uncompressed: gzip's magic is no stream's.
        ("sparse", 28, &6u32.to_le_bytes(), "header.magic"),
    ];
    for (name, at, bytes, wanted) in cases {
        let mut bad = good.clone();
        bad[at..at + bytes.len()].copy_from_slice(bytes);
        let path = tmp(&format!("bad-{name}.img"));
        std::fs::write(&path, &bad).unwrap();
        for input in [Some(path.to_str().unwrap()), None] {
            let out = match input {
                Some(p) => cli::run(&["dump", p], None),
                None => cli::run(&["dump", "-"], Some(&bad)),
            };
            assert_eq!(out.status.code(), Some(2), "{name}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(wanted), "{name}: {stderr}");
        }
    }
}

/// A libvirt "sparse" image as QEMU 10.0 writes it (mapped-ram after libvirt's header),
/// unpacked once.
fn sparse() -> String {
    static SPARSE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SPARSE
        .get_or_init(|| {
            let path = tmp("save-sparse.img");
            let packed =
                std::fs::read(support::fixture("libvirt/save-sparse-qemu10.0.img.gz")).unwrap();
            std::fs::write(&path, gunzip(&packed)).unwrap();
            path.to_string_lossy().into_owned()
        })
        .clone()
}

/// Every file `ram extract` wrote into `dir`, by name.
fn extracted(input: &str, dir: &str) -> Vec<(String, Vec<u8>)> {
    let _ = std::fs::remove_dir_all(dir);
    cli::ok(&["ram", "extract", input, dir]);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_sparse_image_is_read_kept_and_converted_to_either_layout() {
    let input = sparse();
    let original = std::fs::read(&input).unwrap();
    let dump = text(&cli::ok(&["dump", &input]));
    assert!(dump.contains("stream sparse at offset 1458"), "{dump}");
    assert!(dump.contains("capabilities mapped-ram"), "{dump}");
    let piped = cli::run(&["dump", "-"], Some(&original));
    assert_eq!(piped.status.code(), Some(0));
    assert!(text(&piped).contains("block list of 6"), "{}", text(&piped));
    let memory = extracted(&input, tmp("sparse-ram").to_str().unwrap());
    assert!(memory
        .iter()
        .any(|(name, bytes)| name == "pc.bios" && bytes.iter().any(|b| *b != 0)));

    // Kept as it is: the same bytes.
    let kept = tmp("sparse-kept.img");
    cli::ok(&["convert", &input, kept.to_str().unwrap()]);
    assert!(
        std::fs::read(&kept).unwrap() == original,
        "convert changed the image"
    );

    // The bare stream: mapped-ram laid out for offset 0, the same memory.
    let bare = tmp("sparse-bare.mig");
    cli::ok(&["convert", "--to", "stream", &input, bare.to_str().unwrap()]);
    let dump = text(&cli::ok(&["dump", bare.to_str().unwrap()]));
    assert!(
        dump.starts_with("file: ") && !dump.contains("container:"),
        "{dump}"
    );
    assert_eq!(
        extracted(bare.to_str().unwrap(), tmp("bare-ram").to_str().unwrap()),
        memory
    );

    // Page records in a raw image, and back to the very image QEMU and libvirt wrote.
    let raw = tmp("sparse-as-raw.img");
    cli::ok(&[
        "convert",
        "--ram-layout",
        "ordinary",
        &input,
        raw.to_str().unwrap(),
    ]);
    let dump = text(&cli::ok(&["dump", raw.to_str().unwrap()]));
    assert!(dump.contains("stream raw at offset 1458"), "{dump}");
    assert!(!dump.contains("mapped-ram"), "{dump}");
    assert!(std::fs::metadata(&raw).unwrap().len() < original.len() as u64 / 4);
    assert_eq!(
        extracted(raw.to_str().unwrap(), tmp("raw-ram").to_str().unwrap()),
        memory
    );
    let back = tmp("sparse-back.img");
    cli::ok(&[
        "convert",
        "--ram-layout",
        "mapped-ram",
        raw.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&back).unwrap() == original,
        "not the image QEMU wrote"
    );
}

#[test]
fn mapped_ram_that_cannot_be_written_exits_2_saying_why() {
    let cases: [(&str, &str, &str); 2] = [
        (
            &image("gzip"),
            "compressed.img",
            "cannot hold a mapped-ram stream",
        ),
        (&image("raw"), "-", "written to a regular file"),
    ];
    for (input, output, wanted) in cases {
        let output = if output == "-" {
            "-".to_owned()
        } else {
            tmp(output).to_string_lossy().into_owned()
        };
        let out = cli::run(
            &["convert", "--ram-layout", "mapped-ram", input, &output],
            None,
        );
        assert_eq!(out.status.code(), Some(2), "{input}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(wanted), "{input}: {stderr}");
    }
    // Dropping pages of a mapped-ram stream says how to get page records first.
    let out = cli::run(&["convert", "--strip-ram", &sparse(), "-"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ram-layout ordinary"));
}

/// The qcow2 fixture (one `savevm` snapshot "fixture"), unpacked once.
fn qcow2() -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let path = tmp("savevm.qcow2");
            let packed = std::fs::read(support::fixture("qcow2/savevm.qcow2.gz")).unwrap();
            std::fs::write(&path, gunzip(&packed)).unwrap();
            path.to_string_lossy().into_owned()
        })
        .clone()
}

#[test]
fn a_qcow2_snapshot_is_read_by_every_command() {
    let image = qcow2();
    let out = cli::ok(&["dump", &image]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reading snapshot 1 \"fixture\", the newest of 1 with VM state"),
        "{stderr}"
    );
    let text = text(&out);
    assert!(
        text.contains("container: qcow2 v3 image (4 KiB clusters, 1048576 bytes of disk), 1 internal snapshot(s): snapshot 1 \"fixture\" of "),
        "{text}"
    );
    assert!(text.contains("configuration: machine pc-q35-7.2"), "{text}");
    // By id or by name, from a file or a pipe: the same state.
    let bare = tmp("qcow2-state.mig");
    cli::ok(&[
        "convert",
        "--snapshot",
        "fixture",
        &image,
        bare.to_str().unwrap(),
    ]);
    let state = std::fs::read(&bare).unwrap();
    let piped = cli::run(
        &["convert", "--snapshot", "1", "-", "-"],
        Some(&std::fs::read(&image).unwrap()),
    );
    assert_eq!(piped.status.code(), Some(0));
    assert!(piped.stdout == state, "the state read from a pipe differs");
    let out = cli::run(&["check", &image], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&cli::ok(&["dump", "--json", &image]).stdout).unwrap();
    assert_eq!(json["envelope"]["kind"], "qcow2");
    assert_eq!(json["envelope"]["chosen"], 0);
    assert_eq!(json["envelope"]["image"]["snapshots"][0]["name"], "fixture");
    assert_eq!(json["size"], state.len());
}

#[test]
fn a_snapshot_that_is_not_there_exits_2_listing_those_that_are() {
    let out = cli::run(&["dump", "--snapshot", "nope", &qcow2()], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no snapshot with id or name \"nope\"; it has 1 (fixture"),
        "{stderr}"
    );
    let out = cli::run(&["dump", "--snapshot", "1", &image("xz")], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--snapshot: this is a libvirt save image"),
        "{stderr}"
    );
}

/// A qcow2 image with two `savevm` snapshots ("first", "second", the guest running between
/// them) and a disk-only one (`qemu-img snapshot -c disk-only`): `dump` lists them all, as
/// `qemu-img snapshot -l` does, and marks the one read.
#[test]
fn dump_lists_every_snapshot_of_a_qcow2_image() {
    let path = tmp("two-snapshots.qcow2");
    let packed = std::fs::read(support::fixture("qcow2/two-snapshots.qcow2.gz")).unwrap();
    std::fs::write(&path, gunzip(&packed)).unwrap();
    let image = path.to_string_lossy().into_owned();
    let listing = |out: &std::process::Output| -> Vec<String> {
        let text = text(out);
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.iter().position(|l| *l == "snapshots:").expect(&text);
        lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with(' ') || l.starts_with('*'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let rows = listing(&cli::ok(&["dump", &image]));
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0], "id name VM state date VM clock");
    assert!(
        rows[1].starts_with("1 first ") && rows[1].ends_with(" 00:00:00.083"),
        "{rows:?}"
    );
    assert!(
        rows[2].starts_with("* 2 second ") && rows[2].ends_with(" 00:00:01.290"),
        "{rows:?}"
    );
    assert!(
        rows[3].starts_with("3 disk-only none 2026-12-08 "),
        "{rows:?}"
    );
    let rows = listing(&cli::ok(&["dump", "--snapshot", "first", &image]));
    assert!(rows[1].starts_with("* 1 first "), "{rows:?}");
    assert!(rows[2].starts_with("2 second "), "{rows:?}");

    let json: serde_json::Value =
        serde_json::from_slice(&cli::ok(&["dump", "--json", &image]).stdout).unwrap();
    let envelope = &json["envelope"];
    assert_eq!(envelope["kind"], "qcow2");
    let snapshots = envelope["image"]["snapshots"].as_array().unwrap();
    let named: Vec<(&str, &str, bool)> = snapshots
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap(),
                s["name"].as_str().unwrap(),
                s["vm_state_size"].as_u64().unwrap() > 0,
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            ("1", "first", true),
            ("2", "second", true),
            ("3", "disk-only", false)
        ]
    );
    assert_eq!(
        snapshots[1]["vm_clock_nsec"].as_u64().unwrap() / 1_000_000,
        1290
    );
    assert_eq!(envelope["chosen"], 1);
}
