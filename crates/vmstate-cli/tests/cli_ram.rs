//! `vmstate ram extract` as a user runs it: per-block files, a physical image and an ELF
//! core from real streams, the pages counted against the stream, and what is absent said.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use std::io::Read;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_ram");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A real q35 stream with its ring pages (6 pages of pc.ram carried, the rest absent).
fn rings() -> String {
    support::fixture("rings/qemu7.2-blk-inflight-split.rings.mig.gz")
        .to_string_lossy()
        .into_owned()
}

fn report(args: &[&str]) -> serde_json::Value {
    let out = cli::ok(args);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn per_block_files_hold_each_page_where_its_block_has_it() {
    let dir = tmp("blocks");
    let _ = std::fs::remove_dir_all(&dir);
    let json = report(&["ram", "extract", "--json", &rings(), dir.to_str().unwrap()]);
    let blocks = json["blocks"].as_array().unwrap();
    let ram = blocks.iter().find(|b| b["name"] == "pc.ram").unwrap();
    // Every page of the block is accounted for, and most of them were never in the stream.
    let pages = ram["used_length"].as_u64().unwrap() / 4096;
    let (data, zero, absent) = (
        ram["data_pages"].as_u64().unwrap(),
        ram["zero_pages"].as_u64().unwrap(),
        ram["absent_pages"].as_u64().unwrap(),
    );
    assert_eq!(data + zero + absent, pages);
    assert!(data >= 5 && absent > pages - 10, "{ram}");
    // The files are named by block id, `/` as `_`, and as long as their blocks.
    for b in blocks {
        let name = b["name"].as_str().unwrap().replace('/', "_");
        let meta = std::fs::metadata(dir.join(&name)).unwrap();
        assert_eq!(meta.len(), b["used_length"].as_u64().unwrap(), "{name}");
    }
    // The descriptor table of the request queue (0x2318000) is in pc.ram at that offset:
    // head 7's descriptor is an indirect table whose first entry is its request header,
    // 0x232cd00 (the corpus MANIFEST's ground truth).
    let file = std::fs::read(dir.join("pc.ram")).unwrap();
    let word = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
    let table = word(0x2318000 + 7 * 16) as usize;
    assert_eq!(word(table), 0x232cd00);
    // The text report says what is not in the stream.
    let out = cli::ok(&["ram", "extract", &rings(), dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "pc.ram: 134217728 bytes: {data} page(s) of data, {zero} zero, {absent} not in the stream"
        )),
        "{text}"
    );
}

#[test]
fn the_physical_image_and_the_elf_core_place_blocks_by_the_memory_map() {
    let stream = support::fixture("streams/qemu7.2-noos-q35-nofooter-noconfig.mig.gz");
    let raw = tmp("noconfig.mig");
    std::fs::write(&raw, gunzip(&stream)).unwrap();
    let blocks = tmp("noconfig-blocks");
    let _ = std::fs::remove_dir_all(&blocks);
    cli::ok(&[
        "ram",
        "extract",
        raw.to_str().unwrap(),
        blocks.to_str().unwrap(),
    ]);
    let image = tmp("noconfig.phys");
    let json = report(&[
        "ram",
        "extract",
        "--json",
        "--by",
        "physical",
        raw.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let regions = json["map"]["regions"].as_array().unwrap();
    assert!(regions.iter().any(|r| r["block"] == "pc.bios"), "{json}");
    // A 4 GiB sparse file: read only where the blocks are.
    let phys = std::fs::File::open(&image).unwrap();
    let read_at = |at: u64, len: usize| {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        phys.read_exact_at(&mut buf, at).unwrap();
        buf
    };
    let bios = std::fs::read(blocks.join("pc.bios")).unwrap();
    // pc.bios ends at 4 GiB; pc.ram starts at 0.
    assert_eq!(phys.metadata().unwrap().len(), 1 << 32);
    assert!(read_at((1u64 << 32) - bios.len() as u64, bios.len()) == bios);
    let ram = std::fs::read(blocks.join("pc.ram")).unwrap();
    assert!(read_at(0, ram.len()) == ram);

    let elf = tmp("noconfig.elf");
    cli::ok(&[
        "ram",
        "extract",
        "--format",
        "elf",
        raw.to_str().unwrap(),
        elf.to_str().unwrap(),
    ]);
    let core = std::fs::read(&elf).unwrap();
    assert_eq!(&core[..6], b"\x7fELF\x02\x01");
    assert_eq!(u16::from_le_bytes([core[16], core[17]]), 4, "ET_CORE");
    assert_eq!(u16::from_le_bytes([core[18], core[19]]), 62, "EM_X86_64");
    let phnum = u16::from_le_bytes([core[56], core[57]]) as usize;
    assert_eq!(phnum, regions.len());
    for k in 0..phnum {
        let ph = &core[64 + 56 * k..64 + 56 * (k + 1)];
        let word = |at: usize| u64::from_le_bytes(ph[at..at + 8].try_into().unwrap());
        assert_eq!(
            u32::from_le_bytes(ph[..4].try_into().unwrap()),
            1,
            "PT_LOAD"
        );
        let (offset, paddr, size) = (word(8) as usize, word(24), word(32) as usize);
        // Each segment's bytes are the physical image's at its address.
        assert!(
            core[offset..offset + size] == read_at(paddr, size),
            "segment {k}"
        );
    }
}

#[test]
fn a_stream_without_pages_reports_every_page_absent() {
    let stripped = support::fixture("stripped/qemu7.2-serial-throttled.stripped.mig.gz");
    let dir = tmp("stripped");
    let _ = std::fs::remove_dir_all(&dir);
    let json = report(&[
        "ram",
        "extract",
        "--json",
        stripped.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    for b in json["blocks"].as_array().unwrap() {
        assert_eq!(b["data_pages"], 0, "{b}");
        assert_eq!(b["zero_pages"], 0, "{b}");
    }
    // Nothing was written: the files are holes.
    let ram = std::fs::metadata(dir.join("pc.ram")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(ram.blocks(), 0, "pc.ram should be one hole");
}
