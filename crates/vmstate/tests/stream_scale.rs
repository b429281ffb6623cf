//! Streams at scale, on the repository's fixtures (default tier): progress offsets, the
//! writer's pieces, runs that do not grow with the pages, and `strip_ram`.
//!
//! Time and memory are measured by `scripts/bench-scale.sh`, never asserted here.

mod stream_checks;
mod support;

use std::io::Write;

use stream_checks::{ram_runs as runs, read_stream_file};
use vmstate::stream::{self, RunKind, Stream};

const FIXTURES: [&str; 3] = [
    "qemu7.2-noos-pc-alldev",
    "qemu10.0-noos-q35-alldev",
    "qemu7.2-noos-q35-nofooter-noconfig",
];

fn fixture(name: &str) -> Vec<u8> {
    read_stream_file(&support::fixture(&format!("streams/{name}.mig.gz")))
}

#[test]
fn progress_offsets_never_decrease_and_end_at_the_end() {
    for name in FIXTURES {
        let data = fixture(name);
        let mut seen: Vec<u64> = Vec::new();
        let parsed = stream::read_with_progress(&data, &mut |offset| seen.push(offset)).unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{name}");
        assert_eq!(seen.last().copied(), Some(data.len() as u64), "{name}");
        // At least one report per RAM record: a reader can release a mapping as it goes.
        let records: u64 = runs(&parsed).iter().map(|r| r.count).sum();
        assert!(seen.len() as u64 > records, "{name}");
    }
}

/// An output that takes at most a few bytes per call, to show the writer copes with short
/// writes through `write_all`.
struct Trickle(Vec<u8>);

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(4099);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_to_gives_the_input_back_in_pieces() {
    for name in FIXTURES {
        let data = fixture(name);
        let parsed = stream::read(&data).unwrap();
        let mut out = Trickle(Vec::new());
        let mut offsets = Vec::new();
        let n = stream::write_to(&parsed, &data, &mut out, &mut |o| offsets.push(o)).unwrap();
        assert_eq!(n, data.len() as u64, "{name}");
        assert!(out.0 == data, "{name}");
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{name}");
    }
}

#[test]
fn a_failing_output_is_an_error_not_a_panic() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("no space left"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let data = fixture(FIXTURES[1]);
    let parsed = stream::read(&data).unwrap();
    let err = stream::write_to(&parsed, &data, &mut Full, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
}

#[test]
fn interleaved_zero_and_page_records_make_one_run() {
    // The fixtures' guests alternate between used and zero pages: runs stay few, and the
    // counts by kind add up to the records.
    for name in FIXTURES {
        let data = fixture(name);
        let parsed = stream::read(&data).unwrap();
        let runs = runs(&parsed);
        let records: u64 = runs.iter().map(|r| r.count).sum();
        assert!(runs.len() < 40, "{name}: {} runs", runs.len());
        assert!(records > 8000, "{name}: {records} records");
        assert!(
            runs.iter().any(|r| matches!(r.kind, RunKind::Mixed { .. })),
            "{name}: no mixed run"
        );
        for run in &runs {
            let (pages, zero, xbzrle) = run.page_counts();
            assert_eq!(pages + zero + xbzrle, run.count, "{name}");
        }
    }
}

#[test]
fn a_mixed_run_whose_source_disagrees_is_refused() {
    let data = fixture(FIXTURES[1]);
    let parsed = stream::read(&data).unwrap();
    let run = runs(&parsed)
        .into_iter()
        .find(|r| matches!(r.kind, RunKind::Mixed { .. }))
        .unwrap();
    // Make the second record of the run (a CONTINUE record) an EOS word in the source.
    let first_len = {
        let word_end = run.span.offset as usize + 8;
        let name_len = if run.first_continues {
            0
        } else {
            1 + data[word_end] as usize
        };
        let kind_flag =
            u64::from_be_bytes(data[run.span.offset as usize..word_end].try_into().unwrap())
                & 0xfff
                & !0x20;
        8 + name_len + if kind_flag == 0x02 { 1 } else { 4096 }
    };
    let mut source = data.clone();
    let second = run.span.offset as usize + first_len;
    source[second..second + 8].copy_from_slice(&0x10u64.to_be_bytes());
    assert!(stream::write(&parsed, &source).is_err());
}

#[test]
fn stripped_fixtures_keep_blocks_and_devices_and_shrink() {
    for name in FIXTURES {
        let data = fixture(name);
        let original = stream::read(&data).unwrap();
        let mut stripped = original.clone();
        let dropped = stripped.strip_ram();
        assert!(dropped > 8000, "{name}: dropped {dropped}");
        let bytes = stream::write(&stripped, &data).unwrap();
        // Exactly the page records go: every byte of them, nothing else.
        let page_bytes: u64 = runs(&original).iter().map(|r| r.span.len).sum();
        assert_eq!(bytes.len() as u64, data.len() as u64 - page_bytes, "{name}");
        let reread = stream::read(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stream::write(&reread, &bytes).unwrap(), bytes, "{name}");
        let before = original.ram_summary();
        let after = reread.ram_summary();
        assert_eq!(before.len(), after.len(), "{name}");
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((&b.name, b.used_length), (&a.name, a.used_length), "{name}");
            assert_eq!((a.pages, a.zero_pages, a.xbzrle_pages), (0, 0, 0), "{name}");
        }
        // Every device section is there, byte for byte: only RAM sections changed.
        let devices = |s: &Stream, source: &[u8]| -> Vec<Vec<u8>> {
            s.sections()
                .into_iter()
                .filter(|sec| sec.idstr != "ram")
                .map(|sec| source[sec.span.offset as usize..sec.span.end() as usize].to_vec())
                .collect()
        };
        assert_eq!(
            devices(&original, &data),
            devices(&reread, &bytes),
            "{name}"
        );
        assert_eq!(
            original.trailer.as_ref().map(|t| t.json.clone()),
            reread.trailer.as_ref().map(|t| t.json.clone()),
            "{name}"
        );
        assert_eq!(original.sections().len(), reread.sections().len(), "{name}");
    }
}
