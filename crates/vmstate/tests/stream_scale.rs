//! Streams at scale, on the repository's fixtures (default tier): progress offsets, the
//! writer's pieces, runs that do not grow with the pages, and `strip_ram`.
//!
//! Time and memory are measured by `scripts/bench-scale.sh`, never asserted here.

mod stream_checks;
mod support;

use std::io::Write;

use stream_checks::{ram_runs as runs, read_stream_file};
use support::{large_ram_stream, LARGE_STREAM_PAGES};
use vmstate::stream::{
    self, RamItem, RamRun, Record, RunKind, SectionBody, Span, SpanWrite, Stream, WriteOptions,
};
use vmstate::wire::Reader;

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

/// An output that puts together what it is handed as spans of the source from the source
/// itself, as one that copies spans from the input file does, and keeps the spans.
struct FromSpans<'a> {
    source: &'a [u8],
    out: Vec<u8>,
    spans: Vec<Span>,
}

impl Write for FromSpans<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SpanWrite for FromSpans<'_> {
    fn write_source_span(&mut self, span: Span, bytes: &[u8]) -> std::io::Result<()> {
        let range = span.offset as usize..span.end() as usize;
        assert!(
            bytes == &self.source[range.clone()],
            "{span:?}: other bytes"
        );
        self.out.extend_from_slice(&self.source[range]);
        self.spans.push(span);
        Ok(())
    }
}

fn write_from_spans<'a>(parsed: &Stream, data: &'a [u8]) -> FromSpans<'a> {
    let mut out = FromSpans {
        source: data,
        out: Vec::new(),
        spans: Vec::new(),
    };
    let options = WriteOptions::default();
    let n = stream::write_spans(parsed, data, &mut out, &options, &mut |_| {}).unwrap();
    assert_eq!(n, out.out.len() as u64);
    out
}

#[test]
fn an_unchanged_stream_is_handed_on_as_spans_of_the_source_where_runs_are_large() {
    let data = large_ram_stream();
    let parsed = stream::read(&data).unwrap();
    let kinds: Vec<RunKind> = runs(&parsed).iter().map(|r| r.kind).collect();
    assert!(
        matches!(
            kinds[..],
            [RunKind::Page, RunKind::Zero { .. }, RunKind::Mixed { .. }]
        ),
        "{kinds:?}"
    );
    let out = write_from_spans(&parsed, &data);
    assert!(out.out == data);
    // The PAGE run and the mixed one, each of more than a buffer, in order; the ZERO run
    // (9-byte records) is too small to be handed on.
    assert!(
        out.spans.iter().all(|s| s.len >= 1 << 20),
        "{:?}",
        out.spans
    );
    assert!(out.spans.windows(2).all(|w| w[0].end() <= w[1].offset));
    let handed: u64 = out.spans.iter().map(|s| s.len).sum();
    assert!(handed > (LARGE_STREAM_PAGES + 500) * 4096, "{handed}");
    for name in FIXTURES {
        let data = fixture(name);
        let parsed = stream::read(&data).unwrap();
        assert!(write_from_spans(&parsed, &data).out == data, "{name}");
    }
}

/// The PAGE run of [`large_ram_stream`]'s model.
fn page_run(stream: &mut Stream) -> &mut RamRun {
    stream
        .records
        .iter_mut()
        .find_map(|record| match record {
            Record::Section(section) => match &mut section.body {
                SectionBody::Ram(ram) => ram.items.iter_mut().find_map(|item| match item {
                    RamItem::Pages(run) if run.kind == RunKind::Page => Some(run),
                    _ => None,
                }),
                _ => None,
            },
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_page_run_moved_in_the_model_is_written_from_the_model() {
    let data = large_ram_stream();
    let mut parsed = stream::read(&data).unwrap();
    let moved = 1000 * 4096;
    page_run(&mut parsed).first_page = moved;
    let out = stream::write(&parsed, &data).unwrap();
    assert_eq!(out.len(), data.len());
    // Every record word of the run says its new page, the pages are the source's.
    let differing = (0..data.len() / 8)
        .filter(|&i| out[i * 8..i * 8 + 8] != data[i * 8..i * 8 + 8])
        .count();
    assert!(differing >= LARGE_STREAM_PAGES as usize, "{differing}");
    let mut reread = stream::read(&out).unwrap();
    let run = page_run(&mut reread);
    assert_eq!((run.first_page, run.count), (moved, LARGE_STREAM_PAGES));
    let span = run.span.offset as usize..run.span.end() as usize;
    let mut reader = Reader::at(&out[span], run.span.offset);
    for _ in 0..run.count {
        let record = stream::read_page_record(&mut reader, 4096).unwrap();
        let stream::RamRecordKind::Page { data: page } = record.kind else {
            panic!("{record:?}");
        };
        let at = page.offset as usize..page.end() as usize;
        assert!(out[at.clone()] == data[at], "{record:?}");
    }
}

#[test]
fn page_records_visited_are_the_records_read() {
    let mut streams = vec![("large".to_owned(), large_ram_stream())];
    streams.extend(FIXTURES.iter().map(|n| (n.to_string(), fixture(n))));
    for (name, data) in streams {
        let parsed = stream::read(&data).unwrap();
        let mut visited = Vec::new();
        stream::visit_page_records(
            &parsed,
            &data,
            &mut |block, record| {
                visited.push((block.to_owned(), record.clone()));
                Ok(())
            },
            &mut |_| {},
        )
        .unwrap();
        let mut read = Vec::new();
        for run in runs(&parsed) {
            let span = run.span.offset as usize..run.span.end() as usize;
            let mut reader = Reader::at(&data[span], run.span.offset);
            for _ in 0..run.count {
                let record = stream::read_page_record(&mut reader, 4096).unwrap();
                read.push((run.block.clone(), record));
            }
            assert!(reader.is_empty(), "{name}");
        }
        assert!(visited.len() > 1000, "{name}");
        assert!(visited == read, "{name}");
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
