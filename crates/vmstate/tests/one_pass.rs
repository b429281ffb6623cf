//! The one-pass reader against the mapped one: the same model from every stream fixture,
//! whatever pieces the input arrives in, and the bytes it hands on plus the held end written
//! back give the stream again.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};

use vmstate::stream::{self, OnePass};

/// Every stream among the fixtures (gzip-compressed ones decompressed), by path.
fn fixture_streams() -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&support::fixture(""), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let raw = std::fs::read(&path).ok()?;
            let data = stream::decompress_if_gzip(&raw, 1 << 32).ok()?.into_owned();
            data.starts_with(b"QEVM").then_some((path, data))
        })
        .collect()
}

/// An input that hands out its bytes in pieces of pseudo-random sizes up to `max`.
struct Pieces<'a> {
    data: &'a [u8],
    state: u64,
    max: u64,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let size = (self.state >> 33) % self.max + 1;
        let n = (size as usize).min(buf.len()).min(self.data.len());
        let (piece, rest) = self.data.split_at(n);
        buf[..n].copy_from_slice(piece);
        self.data = rest;
        Ok(n)
    }
}

/// A source that has sent `data` and then has nothing more while its channel stays open: a
/// read past `data` fails, which a reader waiting for more would run into.
struct StaysOpen<'a> {
    data: &'a [u8],
}

impl Read for StaysOpen<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.data.is_empty() {
            return Err(std::io::Error::other("read past what the source has sent"));
        }
        let n = self.data.len().min(buf.len()).min(65536);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn one_pass(data: &[u8], seed: u64, max: u64) -> (vmstate::Result<OnePass>, Vec<u8>) {
    let mut input = Pieces {
        data,
        state: seed,
        max,
    };
    let mut passed = Vec::new();
    let read = stream::read_one_pass(&mut input, 0, &mut |bytes| {
        passed.extend_from_slice(bytes);
        Ok(())
    })
    .and_then(|read| {
        // The reader stops at the description's end: the input must end there too.
        let end = read.held.offset + read.held.bytes.len() as u64;
        stream::expect_input_end(&mut input, end).map(|()| read)
    });
    (read, passed)
}

/// The whole model, the description and its text included, as text to compare.
fn model(stream: &stream::Stream) -> String {
    format!("{stream:?}")
}

/// Reads `data` in one pass in pieces of up to `max` bytes and checks it against the mapped
/// reader's model `expected`: the same model, and written back, the same bytes.
fn same_as_mapped(shown: &str, data: &[u8], mapped: &stream::Stream, seed: u64, max: u64) {
    let (read, passed) = one_pass(data, seed, max);
    let read = read.unwrap_or_else(|e| panic!("{shown} (pieces up to {max}): {e}"));
    assert!(
        model(&read.stream) == model(mapped),
        "{shown} (pieces up to {max}): the models differ"
    );
    assert_eq!(
        read.held.offset,
        passed.len() as u64,
        "{shown}: the held bytes follow those handed on"
    );
    let mut out = passed;
    stream::write_held(&read.stream, &read.held, &mut out)
        .unwrap_or_else(|e| panic!("{shown}: writing the held end: {e}"));
    assert!(
        out == *data,
        "{shown} (pieces up to {max}): written back differs"
    );
}

/// What reading `data` in one pass should give: the mapped reader's model, or a refusal for
/// a mapped-ram stream; `None` when the mapped reader refuses it too (then so must a one-pass
/// read).
fn mapped_model(shown: &str, data: &[u8]) -> Option<stream::Stream> {
    let mapped = match stream::read(data) {
        Ok(stream) => stream,
        Err(e) => {
            let (read, _) = one_pass(data, 1, 1 << 20);
            assert!(
                read.is_err(),
                "{shown}: mapped read fails ({e}), one pass reads it"
            );
            return None;
        }
    };
    if mapped.has_mapped_ram() {
        let (read, _) = one_pass(data, 1, 1 << 20);
        let error = read.expect_err("mapped-ram read in one pass").to_string();
        assert!(error.contains("mapped-ram"), "{shown}: {error}");
        return None;
    }
    Some(mapped)
}

#[test]
fn every_fixture_reads_in_one_pass_as_mapped() {
    let streams = fixture_streams();
    assert!(
        streams.len() > 20,
        "only {} stream fixtures found",
        streams.len()
    );
    let mut compared = 0;
    for (path, data) in &streams {
        let shown = path.display().to_string();
        let Some(mapped) = mapped_model(&shown, data) else {
            continue;
        };
        // Pieces of a few bytes make every field run out at some point: on small fixtures.
        for (seed, max) in [(1, 1 << 20), (2, 4096), (3, 7)] {
            if max < 100 && data.len() > 128 << 10 {
                continue;
            }
            same_as_mapped(&shown, data, &mapped, seed, max);
        }
        compared += 1;
    }
    assert!(compared > 20, "only {compared} fixtures compared");
}

#[test]
fn extended_every_corpus_stream_reads_in_one_pass_as_mapped() {
    let Some(shared) = support::shared_dir("extended_every_corpus_stream_reads_in_one_pass") else {
        return;
    };
    let mut dirs = vec![shared.join("corpus")];
    dirs.extend(
        ["target/machine-corpus", "target/machine-corpus-10.0"]
            .iter()
            .map(|d| support::repo_root().join(d)),
    );
    for dir in dirs {
        assert!(
            dir.is_dir(),
            "extended tier: {} is missing (.ci/run makes the machine corpora first)",
            dir.display()
        );
        let streams = support::corpus_streams(&dir);
        assert!(
            streams.len() >= 16,
            "{} streams in {}",
            streams.len(),
            dir.display()
        );
        for (name, path) in streams {
            let raw = std::fs::read(&path).unwrap();
            let data = stream::decompress_if_gzip(&raw, 1 << 34).unwrap();
            let shown = format!("{}/{name}", dir.display());
            if let Some(mapped) = mapped_model(&shown, &data) {
                same_as_mapped(&shown, &data, &mapped, 11, 1 << 16);
            }
        }
    }
}

#[test]
fn a_cut_stream_is_refused_in_one_pass_wherever_it_is_cut() {
    let streams = fixture_streams();
    let (path, data) = streams
        .iter()
        .find(|(path, data)| {
            path.to_string_lossy().contains("streams") && data.len() > 100_000 && {
                stream::read(data).is_ok_and(|s| !s.has_mapped_ram())
            }
        })
        .expect("a stream fixture of more than 100 kB");
    for cut in support::sample(data.len(), support::cases(40, 400) as usize, 7) {
        let (read, passed) = one_pass(&data[..cut], cut as u64, 1 << 16);
        assert!(
            read.is_err(),
            "{}: cut at {cut} of {} reads",
            path.display(),
            data.len()
        );
        assert!(passed.len() <= cut);
        assert!(stream::read(&data[..cut]).is_err());
    }
}

#[test]
fn most_of_a_stream_is_handed_on_before_its_end_arrives() {
    // What a migration filter needs: fed all but the device state, the reader has handed on
    // all the RAM before the rest arrives.
    let streams = fixture_streams();
    let (path, data) = streams
        .iter()
        .filter(|(_, data)| stream::read(data).is_ok_and(|s| !s.has_mapped_ram()))
        .max_by_key(|(_, data)| data.len())
        .expect("a stream fixture");
    let mapped = stream::read(data).expect("the fixture reads");
    let first_device = mapped
        .sections()
        .into_iter()
        .find(|s| s.kind == stream::SectionKind::Full)
        .map(|s| s.span.offset)
        .expect("a device section");
    // The bytes before the device state, and then a source that stalls: the test sees what
    // was handed on by then.
    let before = usize::try_from(first_device).unwrap();
    let mut input = StaysOpen {
        data: &data[..before],
    };
    let mut passed = 0usize;
    let error = stream::read_one_pass(&mut input, 0, &mut |bytes| {
        passed += bytes.len();
        Ok(())
    })
    .expect_err("the input stalls");
    assert!(
        error.to_string().contains("past what the source has sent"),
        "{error}"
    );
    assert_eq!(
        passed,
        before,
        "{}: of the {before} bytes before the device state, {passed} were handed on",
        path.display()
    );
}

#[test]
fn the_reader_stops_at_the_end_of_the_description() {
    // A source that has sent its whole stream and keeps the channel open: the reader returns
    // without waiting for it to close.
    let raw = std::fs::read(support::fixture("streams/qemu10.0-noos-q35-alldev.mig.gz")).unwrap();
    let data = stream::decompress_if_gzip(&raw, 1 << 32).unwrap();
    let mut input = StaysOpen { data: &data };
    let read = stream::read_one_pass(&mut input, 0, &mut |_| Ok(())).unwrap();
    assert_eq!(
        read.held.offset + read.held.bytes.len() as u64,
        data.len() as u64
    );
    // Bytes after the description are refused once the input is read to its end.
    let mut longer = data.to_vec();
    longer.push(0);
    let (read, _) = one_pass(&longer, 3, 1 << 16);
    let error = read.expect_err("a byte after the description").to_string();
    assert!(error.contains("vmdescription"), "{error}");
    assert!(stream::read(&longer).is_err());
}

#[test]
fn a_page_size_only_the_description_gives_is_found_from_the_records() {
    let raw = std::fs::read(support::fixture(
        "onepass/qemu7.2-versatilepb-1k-pages.mig.gz",
    ))
    .unwrap();
    let data = stream::decompress_if_gzip(&raw, 1 << 32).unwrap();
    let mapped = stream::read(&data).unwrap();
    assert_eq!(mapped.page_size.bytes, 1024);
    assert!(mapped.configuration().unwrap().target_page_bits().is_none());
    let (read, _) = one_pass(&data, 5, 1 << 16);
    let read = read.unwrap();
    assert_eq!(read.stream.page_size, mapped.page_size);
    let pages: u64 = read.stream.ram_summary().iter().map(|b| b.pages).sum();
    assert_eq!(pages, 16);
    // Without the description, the records alone decide.
    let eof = usize::try_from(mapped.eof_offset).unwrap();
    let mut bare = data[..=eof].to_vec();
    bare.truncate(eof + 1);
    let (read, _) = one_pass(&bare, 5, 1 << 16);
    let read = read.unwrap();
    assert_eq!(read.stream.page_size.bytes, 1024);
    assert_eq!(
        read.stream.page_size.source,
        stream::PageSizeSource::RamRecords
    );
}
