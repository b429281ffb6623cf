//! RAM layouts: a mapped-ram stream written as page records and back, an ordinary stream
//! made mapped-ram, and a mapped-ram stream placed further into its file (a libvirt
//! "sparse" save image), each compared page for page with what the original holds.

mod stream_checks;
mod support;

use std::collections::BTreeMap;
use std::io::{self, Cursor};

use stream_checks::read_stream_file;
use vmstate::extract::{extract_ram, write_mapped_ram, PageTarget};
use vmstate::stream::{self, RamItem, RamLayout, SectionBody, Stream, WriteOptions};

const MAPPED: &str = "ram/qemu10.0-mapped-ram-noguest.mig.gz";
/// Ordinary streams: COMPRESS_PAGE records, and a booted guest's pages with requests in
/// flight.
const ORDINARY: &[&str] = &[
    "ram/qemu7.2-noos-pc-compress.mig.gz",
    "rings/qemu7.2-blk-inflight-split.rings.mig.gz",
];

/// Guest RAM by block, as a destination would hold it.
#[derive(Default)]
struct Memory(BTreeMap<String, Vec<u8>>);

impl Memory {
    fn page(&mut self, block: &str, offset: u64, len: usize) -> &mut [u8] {
        let bytes = self.0.entry(block.to_owned()).or_default();
        let end = offset as usize + len;
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        &mut bytes[offset as usize..end]
    }
}

impl PageTarget for Memory {
    fn write(&mut self, block: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.page(block, offset, data.len()).copy_from_slice(data);
        Ok(())
    }
    fn zero(&mut self, block: &str, offset: u64, len: u64) -> io::Result<()> {
        self.page(block, offset, len as usize).fill(0);
        Ok(())
    }
    fn read(&mut self, block: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.copy_from_slice(self.page(block, offset, buf.len()));
        Ok(())
    }
}

/// Every block's bytes, zero pages trimmed from the end (a hole and zeros are the same).
fn memory(parsed: &Stream, data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut memory = Memory::default();
    extract_ram(parsed, data, &mut memory, &mut |_| {}).unwrap();
    memory
        .0
        .into_iter()
        .map(|(name, mut bytes)| {
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            (name, bytes)
        })
        .filter(|(_, bytes)| !bytes.is_empty())
        .collect()
}

fn page_records(parsed: &Stream) -> u64 {
    stream_checks::ram_runs(parsed)
        .iter()
        .map(|run| run.page_counts().0)
        .sum()
}

fn capabilities(parsed: &Stream) -> Vec<String> {
    parsed
        .configuration()
        .map(|c| c.capabilities().into_iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn to_records(parsed: &Stream, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let options = WriteOptions {
        ram_layout: RamLayout::Records,
        file_offset: 0,
    };
    let len = stream::write_with(parsed, data, &mut out, &options, &mut |_| {}).unwrap();
    assert_eq!(len, out.len() as u64);
    out
}

fn to_mapped(parsed: &Stream, data: &[u8], at: u64) -> Vec<u8> {
    let mut file = Cursor::new(vec![0xAA; at as usize]);
    file.set_position(at);
    let written = write_mapped_ram(parsed, data, &mut file, &mut |_| {}).unwrap();
    assert_eq!(file.position(), at + written.len);
    file.into_inner()
}

#[test]
fn mapped_ram_becomes_page_records_and_back_byte_for_byte() {
    let data = read_stream_file(&support::fixture(MAPPED));
    let parsed = stream::read(&data).unwrap();
    assert_eq!(capabilities(&parsed), ["mapped-ram"]);
    let want = memory(&parsed, &data);
    assert!(want.contains_key("pc.bios"));

    let records = to_records(&parsed, &data);
    let ordinary = stream::read(&records).unwrap();
    assert!(!ordinary.has_mapped_ram());
    assert!(capabilities(&ordinary).is_empty());
    let written: u64 = blocks(&parsed)
        .iter()
        .map(|b| b.mapped.as_ref().unwrap().pages_written)
        .sum();
    assert!(written > 0);
    assert_eq!(page_records(&ordinary), written);
    assert_eq!(memory(&ordinary, &records), want);
    assert!(
        records.len() < data.len() / 4,
        "no room kept for absent pages"
    );
    // The description describes the configuration section as it now is.
    let described = |s: &Stream| {
        let json = &s.trailer.as_ref().unwrap().json;
        String::from_utf8_lossy(json).contains("configuration/capabilities")
    };
    assert!(described(&parsed) && !described(&ordinary));

    // Back to mapped-ram: QEMU's layout again, so the very bytes QEMU wrote.
    assert_eq!(to_mapped(&ordinary, &records, 0), data);
}

fn blocks(parsed: &Stream) -> Vec<stream::RamBlock> {
    stream_checks::ram_items(parsed)
        .into_iter()
        .filter_map(|i| match i {
            RamItem::BlockList(list) => Some(list.blocks),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn ordinary_streams_become_mapped_ram_with_the_same_memory() {
    for name in ORDINARY {
        let data = read_stream_file(&support::fixture(name));
        let parsed = stream::read(&data).unwrap();
        let want = memory(&parsed, &data);
        assert!(!want.is_empty(), "{name}");

        let mapped = to_mapped(&parsed, &data, 0);
        let reread = stream::read(&mapped).unwrap();
        assert_eq!(capabilities(&reread), ["mapped-ram"], "{name}");
        assert!(
            stream_checks::ram_runs(&reread).is_empty(),
            "{name}: no page records"
        );
        for block in blocks(&reread) {
            let m = block.mapped.unwrap();
            assert_eq!(m.pages_offset % (1 << 20), 0, "{name}: {}", block.name);
        }
        assert_eq!(memory(&reread, &mapped), want, "{name}");
        // The device state is untouched.
        let devices = |s: &Stream| {
            s.sections()
                .into_iter()
                .filter(|s| !matches!(s.body, SectionBody::Ram(_)))
                .count()
        };
        assert_eq!(devices(&reread), devices(&parsed), "{name}");

        // And back to page records.
        let records = to_records(&reread, &mapped);
        assert_eq!(memory(&stream::read(&records).unwrap(), &records), want);
    }
}

#[test]
fn a_mapped_ram_stream_further_into_its_file_is_read_and_laid_out_again() {
    let data = read_stream_file(&support::fixture(MAPPED));
    let parsed = stream::read(&data).unwrap();
    let want = memory(&parsed, &data);
    // Where a libvirt image's stream starts: its header and XML padded by 64 KiB.
    let at = 92 + 70_000;
    let file = to_mapped(&parsed, &data, at);
    let inner = &file[at as usize..];

    // Read as a stream of its own, its offsets point the wrong way.
    assert!(stream::read(inner).is_err());
    let placed = stream::read_in_file(inner, at, &mut |_| {}).unwrap();
    assert_eq!(memory(&placed, inner), want);

    // Written back at the same place: the same bytes.
    let mut same = Vec::new();
    let options = WriteOptions {
        ram_layout: RamLayout::AsRead,
        file_offset: at,
    };
    stream::write_with(&placed, inner, &mut same, &options, &mut |_| {}).unwrap();
    assert_eq!(same, inner);
    // As a bare stream: laid out for offset 0, which is what QEMU wrote.
    assert_eq!(stream::write(&placed, inner).unwrap(), data);

    // A header pointing before the stream's start is an error naming the field.
    let e = stream::read_in_file(inner, at + (1 << 30), &mut |_| {}).unwrap_err();
    assert!(e.path().ends_with("mapped_ram.bitmap_offset"), "{e}");
}

#[test]
fn page_records_become_mapped_ram_only_where_they_can_be_placed() {
    let data = read_stream_file(&support::fixture(ORDINARY[0]));
    let parsed = stream::read(&data).unwrap();
    // A writer that cannot seek has nowhere to put the pages after the rest.
    let options = WriteOptions {
        ram_layout: RamLayout::MappedRam,
        file_offset: 0,
    };
    let e = stream::write_with(&parsed, &data, &mut Vec::new(), &options, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("write_mapped_ram"), "{e}");

    // A block list that claims 2 EiB of RAM: holes cost nothing, and the file system's
    // limit on a file's size is an error, not a hang or an allocation of that size.
    let mut big = data.clone();
    let at = big.windows(7).position(|w| w == b"\x06pc.ram").unwrap();
    let total = u64::from_be_bytes(big[at - 8..at].try_into().unwrap()) & !0xfff;
    let used = u64::from_be_bytes(big[at + 7..at + 15].try_into().unwrap());
    let claimed = 1u64 << 61;
    big[at - 8..at].copy_from_slice(&((total - used + claimed) | 4).to_be_bytes());
    big[at + 7..at + 15].copy_from_slice(&claimed.to_be_bytes());
    let parsed = stream::read(&big).unwrap();
    let mut file = tempfile::tempfile().unwrap();
    let e = write_mapped_ram(&parsed, &big, &mut file, &mut |_| {}).unwrap_err();
    assert!(matches!(e.kind(), vmstate::ErrorKind::Output { .. }), "{e}");
}
