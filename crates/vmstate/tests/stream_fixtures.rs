//! Migration streams in the default tier: three small QEMU streams kept in the repository
//! (`tests/fixtures/streams/`, gzip -9 of corpus streams, with analyze-migration.py's
//! output for each), streams built here to reach records the fixtures lack, and damaged
//! streams.

mod stream_checks;
mod support;

use stream_checks::{
    check_against_peer_state, check_cut, check_stream, cut_points, read_json_gz, read_stream_file,
};
use vmstate::stream::{self, PageSizeSource, RamItem, Record, RunKind, SectionBody, SectionKind};
use vmstate::wire::{Endian, Writer};
use vmstate::ErrorKind;

const PC_72: &str = "qemu7.2-noos-pc-alldev";
const Q35_100: &str = "qemu10.0-noos-q35-alldev";
const NOFOOTER_72: &str = "qemu7.2-noos-q35-nofooter-noconfig";

fn fixture(name: &str) -> Vec<u8> {
    read_stream_file(&support::fixture(&format!("streams/{name}.mig.gz")))
}

#[test]
fn fixtures_read_agree_with_their_description_and_write_back_identically() {
    for name in [PC_72, Q35_100, NOFOOTER_72] {
        check_stream(name, &fixture(name));
    }
}

#[test]
fn fixtures_agree_with_analyze_migration_values() {
    for name in [PC_72, Q35_100, NOFOOTER_72] {
        let parsed = stream::read(&fixture(name)).unwrap();
        let peer = read_json_gz(&support::fixture(&format!(
            "streams/{name}.peer-state.json.gz"
        )));
        let compared = check_against_peer_state(name, &parsed, &peer);
        assert!(compared > 30, "{name}: only {compared} sections compared");
    }
}

#[test]
fn q35_10_0_has_configuration_switchover_and_footers() {
    let parsed = stream::read(&fixture(Q35_100)).unwrap();
    assert_eq!(parsed.footers, Some(true));
    assert_eq!(parsed.configuration().unwrap().machine, "pc-q35-10.0");
    let commands = parsed.commands();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].name, "SWITCHOVER_START");
    assert_eq!(parsed.page_size.source, PageSizeSource::Description);
    let blocks = parsed.ram_summary();
    let names: Vec<_> = blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "pc.ram",
            "/rom@etc/acpi/tables",
            "pc.bios",
            "pc.rom",
            "/rom@etc/table-loader",
            "/rom@etc/acpi/rsdp"
        ]
    );
    let pc_ram = &blocks[0];
    assert_eq!(pc_ram.used_length, 32 << 20);
    assert_eq!(
        pc_ram.pages + pc_ram.zero_pages,
        8192,
        "32 MiB of 4 KiB pages"
    );
    let kinds: Vec<_> = parsed
        .sections()
        .iter()
        .take(3)
        .map(|s| (s.kind, s.idstr.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (SectionKind::Start, "ram".to_owned()),
            (SectionKind::Part, "ram".to_owned()),
            (SectionKind::End, "ram".to_owned())
        ]
    );
    // The virtio blob is one raw field whose place and size the description gives.
    let blk = parsed
        .sections()
        .into_iter()
        .find(|s| s.idstr == "0000:00:01.0/virtio-blk")
        .unwrap();
    let SectionBody::Device(state) = &blk.body else {
        panic!("virtio-blk not decoded");
    };
    let virtio = state.field("virtio").unwrap();
    assert_eq!(virtio.type_name, "virtio");
    assert!(matches!(&virtio.value, stream::Value::Raw(b) if b.len() as u64 == virtio.size));
}

#[test]
fn stream_without_footers_or_configuration_reads() {
    let parsed = stream::read(&fixture(NOFOOTER_72)).unwrap();
    assert_eq!(parsed.footers, Some(false));
    assert!(parsed.configuration().is_none());
    assert!(parsed.sections().iter().all(|s| s.footer_offset.is_none()));
    // store-global-state=off still leaves a globalstate section in QEMU 7.2's stream.
    assert!(parsed.sections().iter().any(|s| s.idstr == "globalstate"));
}

#[test]
fn truncated_fixtures_fail_naming_an_offset_at_or_before_the_cut() {
    let extra = support::cases(20, 400) as usize;
    let limit = support::cases(60, 100_000) as usize;
    for name in [PC_72, Q35_100, NOFOOTER_72] {
        let data = fixture(name);
        let parsed = stream::read(&data).unwrap();
        for cut in cut_points(&parsed, data.len(), extra, limit) {
            check_cut(name, &data, parsed.eof_offset, cut);
        }
    }
}

#[test]
fn cut_inside_the_trailer_names_the_json() {
    let data = fixture(Q35_100);
    let parsed = stream::read(&data).unwrap();
    let trailer = parsed.trailer.as_ref().unwrap();
    let cut = (trailer.offset + 5 + 100) as usize;
    let err = stream::read(&data[..cut]).unwrap_err();
    assert_eq!(err.offset(), trailer.offset + 5);
    assert!(
        matches!(err.kind(), ErrorKind::UnexpectedEof { .. }),
        "{err}"
    );
}

#[test]
fn header_problems_are_named() {
    let data = fixture(PC_72);
    let mut v2 = data.clone();
    v2[7] = 2;
    let err = stream::read(&v2).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnsupportedVersion { version: 2 });
    assert!(err.to_string().contains("obsolete version 2"), "{err}");
    let mut v4 = data.clone();
    v4[7] = 4;
    assert!(matches!(
        stream::read(&v4).unwrap_err().kind(),
        ErrorKind::UnsupportedVersion { version: 4 }
    ));
    let mut magic = data.clone();
    magic[0] = b'X';
    assert!(matches!(
        stream::read(&magic).unwrap_err().kind(),
        ErrorKind::BadMagic { .. }
    ));
}

#[test]
fn damaged_sections_are_named_with_their_offset() {
    let data = fixture(Q35_100);
    let parsed = stream::read(&data).unwrap();
    let sections = parsed.sections();
    // A wrong id in a footer.
    let timer = sections.iter().find(|s| s.idstr == "timer").unwrap();
    let footer = timer.footer_offset.unwrap() as usize;
    let mut bad = data.clone();
    bad[footer + 4] ^= 0x40;
    let err = stream::read(&bad).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::FooterMismatch { .. }),
        "{err}"
    );
    assert_eq!(err.offset(), footer as u64);
    // An unknown section type where the next section starts.
    let mut bad = data.clone();
    bad[timer.span.end() as usize] = 0x09;
    let err = stream::read(&bad).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnknownSectionType { byte: 0x09 });
    assert_eq!(err.offset(), timer.span.end());
    assert!(err.to_string().contains("0x09"), "{err}");
    // A zero-length idstr.
    let mut bad = data.clone();
    bad[timer.span.offset as usize + 5] = 0;
    assert_eq!(
        stream::read(&bad).unwrap_err().kind(),
        &ErrorKind::EmptyString
    );
    // A prefixed subsection the description does not list.
    let fw_cfg = sections.iter().find(|s| s.idstr == "fw_cfg").unwrap();
    let SectionBody::Device(state) = &fw_cfg.body else {
        panic!()
    };
    let sub = &state.subsections[0];
    let name_at = sub.offset as usize + 2;
    let mut bad = data.clone();
    let last = name_at + sub.name.len() - 1;
    bad[last] = b'~';
    let err = stream::read(&bad).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::UnknownSubsection { .. }),
        "{err}"
    );
    assert_eq!(err.offset(), sub.offset);
}

/// Builds RAM START (block list) + PART (page, zero page, XBZRLE page) sections, a PACKAGED
/// command holding a FULL section and POSTCOPY_RUN, then EOF: records the corpus has none of.
fn built_stream(xbzrle: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(Endian::Big, stream::MAGIC);
    w.u32(Endian::Big, 3);
    // START ram: block list of one 16 KiB block, EOS, footer.
    w.u8(0x01);
    w.u32(Endian::Big, 2);
    w.counted_bytes(b"ram", "").unwrap();
    w.u32(Endian::Big, 0);
    w.u32(Endian::Big, 4);
    w.u64(Endian::Big, 0x4000 | 0x04);
    w.counted_bytes(b"pc.ram", "").unwrap();
    w.u64(Endian::Big, 0x4000);
    w.u64(Endian::Big, 0x10);
    w.u8(0x7e);
    w.u32(Endian::Big, 2);
    // PART ram: a page, a zero page (CONTINUE), an XBZRLE page (CONTINUE), EOS, footer.
    w.u8(0x02);
    w.u32(Endian::Big, 2);
    w.u64(Endian::Big, 0x08);
    w.counted_bytes(b"pc.ram", "").unwrap();
    w.bytes(&[0xab; 4096]);
    w.u64(Endian::Big, 0x1000 | 0x02 | 0x20);
    w.u8(0);
    w.u64(Endian::Big, 0x2000 | 0x40 | 0x20);
    w.u8(0x01);
    w.u16(Endian::Big, xbzrle.len() as u16);
    w.bytes(xbzrle);
    w.u64(Endian::Big, 0x10);
    w.u8(0x7e);
    w.u32(Endian::Big, 2);
    // PACKAGED: a FULL section with footer, then POSTCOPY_RUN.
    let mut nested = Writer::new();
    nested.u8(0x04);
    nested.u32(Endian::Big, 7);
    nested.counted_bytes(b"timer", "").unwrap();
    nested.u32(Endian::Big, 0);
    nested.u32(Endian::Big, 2);
    nested.bytes(&[1, 2, 3, 4, 5, 6, 7, 8]);
    nested.u8(0x7e);
    nested.u32(Endian::Big, 7);
    nested.u8(0x08);
    nested.u16(Endian::Big, 5);
    nested.u16(Endian::Big, 0);
    let nested = nested.into_bytes();
    w.u8(0x08);
    w.u16(Endian::Big, 7);
    w.u16(Endian::Big, 4);
    w.u32(Endian::Big, nested.len() as u32);
    w.bytes(&nested);
    w.u8(0x00);
    w.into_bytes()
}

#[test]
fn built_stream_with_xbzrle_and_packaged_reads_and_writes_back() {
    let data = built_stream(&[0, 2, 0xaa, 0xbb, 0x10, 1, 0xcc]);
    let parsed = stream::read(&data).unwrap();
    assert_eq!(stream::write(&parsed, &data).unwrap(), data);
    assert_eq!(parsed.page_size.source, PageSizeSource::DefaultX86);
    assert!(parsed.trailer.is_none());
    let summary = parsed.ram_summary();
    assert_eq!(summary.len(), 1);
    assert_eq!(
        (
            summary[0].pages,
            summary[0].zero_pages,
            summary[0].xbzrle_pages
        ),
        (1, 1, 1)
    );
    let Some(Record::Command(packaged)) = parsed.records.last() else {
        panic!("no PACKAGED command");
    };
    assert_eq!(packaged.name, "PACKAGED");
    let nested = packaged.packaged.as_ref().unwrap();
    assert_eq!(nested.records.len(), 2);
    let Record::Section(timer) = &nested.records[0] else {
        panic!()
    };
    assert!(
        matches!(&timer.body, SectionBody::Opaque { bytes, reason, .. } if bytes.len() == 8 && reason.contains("no description"))
    );
    let part = &parsed.sections()[1];
    let SectionBody::Ram(ram) = &part.body else {
        panic!()
    };
    assert!(ram.items.iter().any(|i| matches!(
        i,
        RamItem::Pages(run) if matches!(run.kind, RunKind::Xbzrle { encoded_len: 7 })
    )));
}

#[test]
fn built_stream_with_bad_xbzrle_is_refused() {
    // An empty literal run.
    let data = built_stream(&[0, 0]);
    let err = stream::read(&data).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::BadRamRecord { .. }),
        "{err}"
    );
}

#[test]
fn built_stream_cut_anywhere_fails() {
    let data = built_stream(&[0, 2, 0xaa, 0xbb]);
    for cut in 0..data.len() {
        assert!(stream::read(&data[..cut]).is_err(), "cut at {cut} accepted");
    }
}

#[test]
fn unsupported_ram_records_say_which() {
    let mut data = built_stream(&[0, 1, 1]);
    // Turn the PAGE record word into HOOK (RDMA control records).
    let page_word = data
        .windows(8)
        .position(|w| w == [0, 0, 0, 0, 0, 0, 0, 0x08])
        .unwrap();
    data[page_word + 7] = 0x80;
    let err = stream::read(&data).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unsupported { what } if what.contains("HOOK")),
        "{err}"
    );
    assert_eq!(err.offset(), page_word as u64);
}

/// A real QEMU 7.2 stream written with the `compress` capability (machine `pc`, never run):
/// its non-zero pages are COMPRESS_PAGE records, each a zlib stream of one page.
const COMPRESS_72: &str = "qemu7.2-noos-pc-compress";

#[test]
fn compressed_pages_are_read_inflated_and_written_back() {
    let data = read_stream_file(&support::fixture(&format!("ram/{COMPRESS_72}.mig.gz")));
    let parsed = stream::read(&data).unwrap();
    let compressed: Vec<_> = stream_checks::ram_runs(&parsed)
        .into_iter()
        .filter(|run| matches!(run.kind, RunKind::Compressed { .. }))
        .collect();
    assert!(
        compressed.len() > 20,
        "{} compressed pages",
        compressed.len()
    );
    assert_eq!(stream::write(&parsed, &data).unwrap(), data);

    // The content of a compressed page is the inflated zlib stream.
    let run = &compressed[0];
    let record = &data[run.span.offset as usize..run.span.end() as usize];
    let header = if record[7] & 0x20 != 0 {
        8
    } else {
        9 + record[8] as usize
    };
    let len = u32::from_be_bytes(record[header..header + 4].try_into().unwrap()) as usize;
    let zlib = &record[header + 4..header + 4 + len];
    let mut page = vec![0u8; 4096];
    stream::inflate_page(zlib, 0, Some(&mut page), 4096).unwrap();
    let mut expected = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(zlib), &mut expected).unwrap();
    assert_eq!(page, expected);

    // A damaged zlib stream is refused where it lies.
    let mut bad = data.clone();
    let at = run.span.offset as usize + header + 4 + len / 2;
    bad[at] ^= 0xff;
    let err = stream::read(&bad).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::BadRamRecord { .. }),
        "{err}"
    );
    assert_eq!(err.offset(), (run.span.offset as usize + header + 4) as u64);
}

/// A real QEMU 7.2 stream (machine `q35`, never run) written with block migration and the
/// `dirty-bitmaps` capability: its `block` sections carry the 2 MiB disk in 1 MiB blocks, its
/// `dirty-bitmap` sections the bitmap `bm0` of the disk's node.
#[test]
fn block_migration_and_dirty_bitmap_sections_are_read_and_written_back() {
    let data = read_stream_file(&support::fixture(
        "ram/qemu7.2-noos-q35-block-dirty-bitmap.mig.gz",
    ));
    let parsed = stream::read(&data).unwrap();
    assert_eq!(stream::write(&parsed, &data).unwrap(), data);
    let mut block_bytes = 0;
    let mut bitmaps_started = 0;
    for section in parsed.sections() {
        let SectionBody::Iterative(payload) = &section.body else {
            continue;
        };
        match payload.format {
            stream::IterativeFormat::Block => block_bytes += payload.data_bytes,
            stream::IterativeFormat::DirtyBitmap => {
                bitmaps_started += usize::from(payload.summary.starts_with("1 bitmap"))
            }
            other => panic!("{other:?} in an x86 stream"),
        }
        assert_eq!(
            payload.span.end() + 5,
            section.span.end(),
            "{}",
            section.idstr
        );
    }
    assert_eq!(block_bytes % (1 << 20), 0);
    assert!(block_bytes >= 2 << 20, "{block_bytes}");
    assert_eq!(bitmaps_started, 1);

    // A flag no record has is refused where it stands.
    let start = parsed
        .sections()
        .into_iter()
        .find_map(|s| match &s.body {
            SectionBody::Iterative(p) if p.format == stream::IterativeFormat::Block => {
                Some(p.span.offset)
            }
            _ => None,
        })
        .unwrap();
    let mut bad = data.clone();
    bad[start as usize + 7] = 0x10;
    let err = stream::read(&bad).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::InvalidValue { .. }),
        "{err}"
    );
}

/// A real QEMU 10.0 stream written with the `mapped-ram` capability to a `file:` URI (q35,
/// 16 MiB, never run): every RAM block's pages at fixed offsets after its list entry.
const MAPPED_RAM_100: &str = "qemu10.0-mapped-ram-noguest";

#[test]
fn mapped_ram_pages_are_read_from_their_fixed_offsets_and_written_back() {
    let data = read_stream_file(&support::fixture(&format!("ram/{MAPPED_RAM_100}.mig.gz")));
    let parsed = stream::read(&data).unwrap();
    assert_eq!(stream::write(&parsed, &data).unwrap(), data);
    let blocks = vmstate::memory::ram_blocks(&parsed);
    assert!(blocks.iter().any(|(name, _)| name == "pc.ram"));
    // Every block is mapped, its pages where its header says, with no page records.
    assert!(stream_checks::ram_runs(&parsed).is_empty());
    let list = parsed
        .sections()
        .into_iter()
        .find_map(|s| match &s.body {
            SectionBody::Ram(ram) => ram.items.iter().find_map(|i| match i {
                RamItem::BlockList(list) => Some(list.clone()),
                _ => None,
            }),
            _ => None,
        })
        .unwrap();
    for block in &list.blocks {
        let mapped = block.mapped.as_ref().unwrap();
        assert_eq!(mapped.pages_offset % (1 << 20), 0, "{}", block.name);
        let bitmap = &data[mapped.bitmap.offset as usize..mapped.bitmap.end() as usize];
        let set: u64 = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
        assert_eq!(set, mapped.pages_written, "{}", block.name);
    }
    // The summary, the guest memory and the extraction see the same pages.
    let summary = parsed.ram_summary();
    let ram = summary.iter().find(|b| b.name == "pc.bios").unwrap();
    assert!(ram.pages > 0 && ram.pages + ram.zero_pages == 64, "{ram:?}");
    let map = vmstate::memory::map_for(&parsed, &[], None).unwrap();
    let guest = vmstate::memory::GuestRam::from_stream(&parsed, &data, map, &mut |_| {}).unwrap();
    use vmstate::memory::GuestBytes;
    let bios = list.blocks.iter().find(|b| b.name == "pc.bios").unwrap();
    let mapped = bios.mapped.as_ref().unwrap();
    let mut top = [0u8; 16];
    guest.read((1u64 << 32) - 16, &mut top).unwrap();
    let at = (mapped.pages_offset + bios.used_length - 16) as usize;
    assert_eq!(
        top,
        data[at..at + 16],
        "the reset vector page, from the mapped pages"
    );

    // A header pointing outside the file is an error naming the field.
    let start = list.span.offset as usize;
    let name_at = start + 8;
    let header = name_at + 1 + data[name_at] as usize + 8;
    let mut bad = data.clone();
    bad[header + 12..header + 20].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let e = stream::read(&bad).unwrap_err();
    assert_eq!(
        e.path(),
        "section[ram].ram.block_list.mapped_ram.bitmap_offset",
        "{e}"
    );
}
