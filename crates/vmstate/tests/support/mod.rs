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

/// A deterministic sample of `count` values of `0..len` (all of them when `count >= len`),
/// as the sweeps pick bytes, cuts and fields.
pub fn sample(len: usize, count: usize, seed: u64) -> Vec<usize> {
    if count >= len {
        return (0..len).collect();
    }
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % len as u64) as usize
        })
        .collect()
}

/// A stream cut down by [`cut_to_virtio`], with what was read to cut it.
pub struct CutStream {
    /// The cut stream.
    pub data: Vec<u8>,
    /// Offset of its EOF byte.
    pub eof: usize,
    /// Each record kept: its offset in the original, its offset in `data`, its length.
    pub moved: Vec<(usize, usize, usize)>,
    /// The original, read.
    pub parsed: vmstate::stream::Stream,
    /// The original's virtio devices.
    pub found: Vec<vmstate::devices::VirtioSection>,
    /// The original's SCSI disks with requests.
    pub scsi: Vec<vmstate::devices::ScsiDiskSection>,
}

/// A stream cut down to its configuration, its RAM sections, its virtio and SCSI disk
/// sections, EOF and a description of just those sections: the same devices, rings and
/// requests, without the CPU, chipset and other sections whose decoding would take most of
/// each run of a sweep or a fuzz target. Panics when `original` is not a readable stream
/// with a description (it is meant for fixtures).
pub fn cut_to_virtio(original: &[u8]) -> CutStream {
    use vmstate::devices::{self, DecodeOptions};
    use vmstate::stream::{self, Record, SectionBody};
    let parsed = stream::read(original).expect("a fixture reads");
    let options = DecodeOptions::default();
    let found = devices::decode_virtio(&parsed, &options).expect("a fixture decodes");
    let scsi = devices::decode_scsi_requests(&parsed, &found, &options).expect("SCSI decodes");
    let keep = |idstr: &str| {
        idstr == "ram"
            || found.iter().any(|v| v.idstr == idstr)
            || scsi.iter().any(|d| d.idstr == idstr)
    };
    let mut data = original[..8].to_vec();
    let mut described = Vec::new();
    let mut moved = Vec::new();
    for record in &parsed.records {
        let span = match record {
            Record::Configuration(c) => c.span,
            Record::Section(s) if keep(&s.idstr) => {
                if !matches!(s.body, SectionBody::Ram(_)) {
                    described.push((s.idstr.clone(), u64::from(s.instance_id)));
                }
                s.span
            }
            _ => continue,
        };
        let (from, to) = (span.offset as usize, span.end() as usize);
        moved.push((from, data.len(), to - from));
        data.extend_from_slice(&original[from..to]);
    }
    let eof = data.len();
    data.push(0);
    let trailer = parsed
        .trailer
        .as_ref()
        .expect("a fixture has a description");
    let mut json: serde_json::Value =
        serde_json::from_slice(&trailer.json).expect("the description is JSON");
    if let Some(devices) = json.get_mut("devices").and_then(|d| d.as_array_mut()) {
        devices.retain(|d| {
            described.iter().any(|(idstr, instance)| {
                d["name"].as_str() == Some(idstr) && d["instance_id"].as_u64() == Some(*instance)
            })
        });
    }
    let text = serde_json::to_vec(&json).expect("JSON writes");
    data.push(0x06);
    data.extend_from_slice(&(text.len() as u32).to_be_bytes());
    data.extend_from_slice(&text);
    CutStream {
        data,
        eof,
        moved,
        parsed,
        found,
        scsi,
    }
}

/// How many PAGE records the first part of [`large_ram_stream`] carries: enough for runs
/// of several MiB, which the writer hands on as spans of the source.
pub const LARGE_STREAM_PAGES: u64 = 700;

/// A RAM-only stream with runs of several MiB, as QEMU writes them (a START section with
/// the block list, PART sections of page records, an END section): a run of
/// [`LARGE_STREAM_PAGES`] PAGE records of varied bytes, a run of ZERO records, then a run
/// of PAGE and ZERO records mixed; no device state, no description.
pub fn large_ram_stream() -> Vec<u8> {
    const PAGE: u64 = 4096;
    let block = b"pc.ram";
    let used_length: u64 = 8 << 20;
    let mut s = b"QEVM\0\0\0\x03".to_vec();
    // START, section 2, "ram", instance 0, version 4: the block list and EOS.
    s.extend_from_slice(b"\x01\0\0\0\x02\x03ram\0\0\0\0\0\0\0\x04");
    s.extend_from_slice(&(used_length | 0x04).to_be_bytes());
    s.push(block.len() as u8);
    s.extend_from_slice(block);
    s.extend_from_slice(&used_length.to_be_bytes());
    s.extend_from_slice(&0x10u64.to_be_bytes());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut page_bytes = || {
        (0..PAGE)
            .map(|_| {
                // xorshift64: bytes that differ from page to page.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect::<Vec<u8>>()
    };
    // Each PART names the block in its first record, as QEMU does after a section break.
    let mut part = |s: &mut Vec<u8>, pages: std::ops::Range<u64>, zero: &dyn Fn(u64) -> bool| {
        s.extend_from_slice(b"\x02\0\0\0\x02");
        for (n, page) in pages.enumerate() {
            let flag = if zero(page) { 0x02 } else { 0x08 };
            let continues = if n == 0 { 0 } else { 0x20 };
            s.extend_from_slice(&((page * PAGE) | flag | continues).to_be_bytes());
            if n == 0 {
                s.push(block.len() as u8);
                s.extend_from_slice(block);
            }
            if zero(page) {
                s.push(0);
            } else {
                s.extend_from_slice(&page_bytes());
            }
        }
        s.extend_from_slice(&0x10u64.to_be_bytes());
    };
    part(&mut s, 0..LARGE_STREAM_PAGES, &|_| false);
    part(&mut s, LARGE_STREAM_PAGES..1000, &|_| true);
    part(&mut s, 1000..1800, &|page| page % 3 == 0);
    // END, section 2: EOS; then EOF.
    s.extend_from_slice(b"\x03\0\0\0\x02");
    s.extend_from_slice(&0x10u64.to_be_bytes());
    s.push(0);
    s
}
