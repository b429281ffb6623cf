//! What wraps a stream: libvirt save images in every format libvirt writes (fixtures made by
//! the real compression tools, `tests/fixtures/libvirt/make-fixtures.py`), and the
//! compressions themselves, read and written.

mod stream_checks;
mod support;

use std::io::Write;

use stream_checks::read_stream_file;
use vmstate::envelope::{
    Compression, Envelope, LibvirtImage, Qcow2Image, SaveFormat, LIBVIRT_HEADER_LEN,
};
use vmstate::error::ErrorKind;
use vmstate::wire::Endian;

/// The stream inside every fixture image.
fn stream() -> Vec<u8> {
    read_stream_file(&support::fixture(
        "stripped/qemu7.2-blk-inflight-split.stripped.mig.gz",
    ))
}

/// The bytes of fixture image `name` (the raw ones are stored gzipped).
fn image(name: &str) -> Vec<u8> {
    let path = support::fixture(&format!("libvirt/{name}"));
    if name.ends_with(".gz") {
        read_stream_file(&path)
    } else {
        std::fs::read(&path).unwrap()
    }
}

fn unwrap(data: &[u8]) -> (LibvirtImage, Vec<u8>) {
    let Envelope::Libvirt(header) = Envelope::identify(data).unwrap() else {
        panic!("not a libvirt image")
    };
    let envelope = Envelope::Libvirt(header.clone());
    let (offset, compression) = envelope.payload().unwrap();
    let payload = &data[offset as usize..];
    let inner = match compression {
        None => payload.to_vec(),
        Some(c) => {
            let mut out = Vec::new();
            c.decompress(payload, &mut out, 1 << 30).unwrap();
            out
        }
    };
    (header, inner)
}

#[test]
fn every_format_libvirt_writes_unwraps_to_the_stream() {
    let original = stream();
    for (name, format) in [
        ("save-raw.img.gz", SaveFormat::Raw),
        ("save-gzip.img", SaveFormat::Compressed(Compression::Gzip)),
        ("save-bzip2.img", SaveFormat::Compressed(Compression::Bzip2)),
        ("save-xz.img", SaveFormat::Compressed(Compression::Xz)),
        ("save-lzop.img", SaveFormat::Compressed(Compression::Lzop)),
        ("save-zstd.img", SaveFormat::Compressed(Compression::Zstd)),
    ] {
        let data = image(name);
        let (header, inner) = unwrap(&data);
        assert_eq!(header.format, format, "{name}");
        assert_eq!(header.version, 2);
        assert_eq!(header.byte_order, Endian::Little);
        assert_eq!(header.was_running, 1);
        assert_eq!(header.domain_name.as_deref(), Some("fixture-vm"));
        assert_eq!(
            header.domain_uuid.as_deref(),
            Some("6f1c8e52-3b0a-4c1e-9d57-0f5b2a7c9e11")
        );
        assert!(header.xml.starts_with("<domain type='kvm'>"), "{name}");
        assert_eq!(
            header.cookie.as_deref(),
            Some("<cookie><cpu mode='custom'/></cookie>\n")
        );
        assert!(inner == original, "{name}: the stream inside differs");
        // Written back, the header and data are the bytes that were read.
        let before = &data[..header.stream_offset() as usize];
        assert_eq!(header.encode().unwrap(), before, "{name}");
        vmstate::stream::read(&inner).unwrap();
    }
}

#[test]
fn a_big_endian_hosts_header_is_read_in_its_order() {
    let data = image("save-raw-be.img.gz");
    let (header, inner) = unwrap(&data);
    assert_eq!(header.byte_order, Endian::Big);
    assert_eq!(header.format, SaveFormat::Raw);
    assert_eq!(
        header.encode().unwrap(),
        &data[..header.stream_offset() as usize]
    );
    assert!(inner == stream());
}

#[test]
fn every_compression_round_trips_through_its_own_writer() {
    let original = stream();
    for compression in Compression::ALL {
        let mut packed = Vec::new();
        let mut writer = compression.compressor(Box::new(&mut packed)).unwrap();
        // Odd-sized writes, so that the compressors' own blocking is crossed.
        for chunk in original.chunks(100_003) {
            writer.write_all(chunk).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(Compression::detect(&packed), Some(compression));
        let mut out = Vec::new();
        let n = compression
            .decompress(packed.as_slice(), &mut out, 1 << 30)
            .unwrap();
        assert_eq!(n, original.len() as u64, "{}", compression.name());
        assert!(out == original, "{}", compression.name());
        // The limit holds: a small compressed input cannot produce more than asked for.
        let err = compression
            .decompress(packed.as_slice(), &mut Vec::new(), 1000)
            .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Decompress { .. }), "{err}");
    }
}

/// Extended tier (or wherever the tools are installed): what our compressors write, the real
/// tools read back, as libvirt would pipe it through them on restore.
#[test]
fn the_real_tools_read_what_the_compressors_write() {
    let original = stream();
    for compression in Compression::ALL {
        let tool = compression.name();
        let found = std::process::Command::new(tool).arg("--version").output();
        if found.is_err() {
            assert!(
                !support::extended_tier(),
                "{tool} is not installed (the extended tier needs it)"
            );
            eprintln!("NOTE: {tool} is not installed: its output is not checked by the tool");
            continue;
        }
        let mut packed = Vec::new();
        let mut writer = compression.compressor(Box::new(&mut packed)).unwrap();
        writer.write_all(&original).unwrap();
        writer.finish().unwrap();
        let mut child = std::process::Command::new(tool)
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&packed));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success(), "{tool} -dc failed");
        assert!(out.stdout == original, "{tool} -dc gave other bytes");
    }
}

fn header_error(data: &[u8]) -> vmstate::Error {
    Envelope::identify(data).unwrap_err()
}

#[test]
fn a_broken_header_is_an_error_naming_its_field() {
    let good = image("save-gzip.img");
    // Still being written by libvirt.
    let mut partial = good.clone();
    partial[..16].copy_from_slice(b"LibvirtQemudPart");
    let e = header_error(&partial);
    assert!(matches!(e.kind(), ErrorKind::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("incomplete"), "{e}");
    // A data length past the end of the file.
    let mut lying = good.clone();
    lying[20..24].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let e = header_error(&lying);
    assert!(matches!(e.kind(), ErrorKind::UnexpectedEof { .. }), "{e}");
    assert_eq!(
        (e.offset(), e.path()),
        (LIBVIRT_HEADER_LEN, "libvirt.data_len")
    );
    // A format libvirt has no number for.
    let mut format = good.clone();
    format[28..32].copy_from_slice(&9u32.to_le_bytes());
    let e = header_error(&format);
    assert_eq!((e.offset(), e.path()), (28, "libvirt.format"));
    // A version from the future, in either byte order.
    let mut version = good.clone();
    version[16..20].copy_from_slice(&3u32.to_le_bytes());
    let e = header_error(&version);
    assert!(
        matches!(e.kind(), ErrorKind::UnsupportedVersion { .. }),
        "{e}"
    );
    // XML without its NUL (libvirt would read past it): refused, not kept in a form that
    // would no longer fit the data length when written back (found by the fuzzer).
    let mut unterminated = good.clone();
    let data_len = u32::from_le_bytes(good[20..24].try_into().unwrap()) as usize;
    unterminated[92..92 + data_len].fill(b'x');
    unterminated[32..36].copy_from_slice(&0u32.to_le_bytes());
    let e = header_error(&unterminated);
    assert_eq!(
        (e.offset(), e.path()),
        (LIBVIRT_HEADER_LEN, "libvirt.xml"),
        "{e}"
    );
    // The cookie past the data.
    let mut cookie = good.clone();
    cookie[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(header_error(&cookie).path(), "libvirt.cookie_offset");
    // Cut inside the header, and inside the XML.
    for cut in [16, 50, 91, 200] {
        let e = header_error(&good[..cut]);
        assert!(
            matches!(e.kind(), ErrorKind::UnexpectedEof { .. }),
            "{cut}: {e}"
        );
    }
    // A sparse image holds its (mapped-ram) stream uncompressed after the header, and says
    // where it starts in the file.
    let mut sparse = good;
    sparse[28..32].copy_from_slice(&6u32.to_le_bytes());
    let envelope = Envelope::identify(&sparse).unwrap();
    let start =
        LIBVIRT_HEADER_LEN + u64::from(u32::from_le_bytes(sparse[20..24].try_into().unwrap()));
    assert_eq!(envelope.payload().unwrap(), (start, None));
    assert_eq!(envelope.stream_file_offset(), start);
}

#[test]
fn a_corrupt_compressed_stream_is_an_error_not_a_panic() {
    for name in [
        "save-gzip.img",
        "save-bzip2.img",
        "save-xz.img",
        "save-lzop.img",
        "save-zstd.img",
    ] {
        let data = image(name);
        let (header, _) = unwrap(&data);
        let start = header.stream_offset() as usize;
        let Some(c) = Compression::detect(&data[start..]) else {
            panic!("{name}")
        };
        // Flip bytes at a few places of the payload, and cut it short.
        for at in [12, 40, 200, 1000, data.len() - start - 9] {
            let mut bad = data[start..].to_vec();
            bad[at] ^= 0x5a;
            bad[at + 1] ^= 0xa5;
            let _ = c.decompress(bad.as_slice(), &mut Vec::new(), 1 << 24);
        }
        let cut = &data[start..data.len() - 30];
        assert!(
            c.decompress(cut, &mut Vec::new(), 1 << 24).is_err(),
            "{name}: a cut stream decompressed without error"
        );
    }
}

/// The qcow2 fixture: a 1 MiB disk with one `savevm` snapshot "fixture" of a guestless
/// 16 MiB QEMU 7.2 (4 KiB clusters), made by `tests/interop/qcow2.py --fixture`.
fn qcow2() -> Vec<u8> {
    read_stream_file(&support::fixture("qcow2/savevm.qcow2.gz"))
}

fn qcow2_image(data: &[u8]) -> Qcow2Image {
    match Envelope::identify(data).unwrap() {
        Envelope::Qcow2 { image, chosen } => {
            assert_eq!(chosen, None);
            image
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_savevm_snapshot_reads_as_the_stream_qemu_stored() {
    let data = qcow2();
    let image = qcow2_image(&data);
    assert_eq!(
        (image.version, image.cluster_size, image.size),
        (3, 4096, 1 << 20)
    );
    assert_eq!(image.snapshots.len(), 1);
    let snap = &image.snapshots[0];
    assert_eq!((snap.id.as_str(), snap.name.as_str()), ("1", "fixture"));
    assert!(snap.vm_state_size > 100_000, "{snap:?}");
    for key in [None, Some("1"), Some("fixture")] {
        assert_eq!(image.select(key).unwrap(), snap);
    }
    let e = image.select(Some("nope")).unwrap_err();
    assert!(e.to_string().contains("it has 1 (fixture"), "{e}");
    let mut state = Vec::new();
    let n = image
        .read_vm_state(&data, snap, &mut state, 1 << 30)
        .unwrap();
    // A state over the caller's limit is refused before anything is written.
    let e = image
        .read_vm_state(&data, snap, &mut Vec::new(), 1000)
        .unwrap_err();
    assert!(e.path().ends_with("vm_state_size"), "{e}");
    assert_eq!(n, snap.vm_state_size);
    assert_eq!(state.len() as u64, n);
    // Exactly a stream: it reads to its end, description and all.
    let parsed = vmstate::stream::read(&state).unwrap();
    assert!(parsed.trailer.is_some());
    assert_eq!(
        parsed.configuration().map(|c| c.machine.as_str()),
        Some("pc-q35-7.2")
    );
}

#[test]
fn broken_qcow2_metadata_is_an_error_naming_the_structure() {
    let data = qcow2();
    let image = qcow2_image(&data);
    let snap = image.snapshots[0].clone();
    let table = u64::from_be_bytes(data[64..72].try_into().unwrap()) as usize;
    // The snapshot's L1 table past the end of the file.
    let mut bad = data.clone();
    bad[table..table + 8].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let image = qcow2_image(&bad);
    let e = image
        .read_vm_state(&bad, &image.snapshots[0], &mut Vec::new(), 1 << 30)
        .unwrap_err();
    assert!(e.path().starts_with("qcow2.snapshots[0].l1["), "{e}");
    // An L2 table pointer outside the file: the L1 entry of the VM state area.
    let cluster = 4096u64;
    let l1_span = cluster * (cluster / 8);
    let first = snap.disk_size.div_ceil(l1_span);
    let l1_at = (snap.l1_table_offset + first * 8) as usize;
    let mut bad = data.clone();
    bad[l1_at..l1_at + 8].copy_from_slice(&(0x7fff_0000_0000u64 | (1 << 63)).to_be_bytes());
    let image = qcow2_image(&bad);
    let e = image
        .read_vm_state(&bad, &image.snapshots[0], &mut Vec::new(), 1 << 30)
        .unwrap_err();
    assert!(e.path().starts_with("qcow2.snapshots[0].l2["), "{e}");
    assert_eq!(e.offset(), 0x7fff_0000_0000);
    // A VM state larger than the L1 table covers.
    let mut bad = data.clone();
    let size_at = table + 32;
    bad[size_at..size_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let extra = u32::from_be_bytes(data[table + 36..table + 40].try_into().unwrap());
    if extra >= 8 {
        bad[table + 40..table + 48].copy_from_slice(&(1u64 << 50).to_be_bytes());
    }
    let image = qcow2_image(&bad);
    let e = image
        .read_vm_state(&bad, &image.snapshots[0], &mut std::io::sink(), u64::MAX)
        .unwrap_err();
    assert!(e.path().ends_with("l1_size"), "{e}");
    // Header fields out of range.
    for (at, bytes, field) in [
        (20, 30u32.to_be_bytes().to_vec(), "qcow2.cluster_bits"),
        (60, u32::MAX.to_be_bytes().to_vec(), "qcow2.nb_snapshots"),
        (
            64,
            (1u64 << 40).to_be_bytes().to_vec(),
            "qcow2.snapshots_offset",
        ),
        (4, 9u32.to_be_bytes().to_vec(), "qcow2.version"),
    ] {
        let mut bad = data.clone();
        bad[at..at + bytes.len()].copy_from_slice(&bytes);
        let e = Envelope::identify(&bad).unwrap_err();
        assert_eq!(e.path(), field, "{e}");
    }
    // Cut short anywhere in the header or the snapshot table.
    for cut in [8, 50, 100, table + 10] {
        assert!(Envelope::identify(&data[..cut]).is_err(), "cut at {cut}");
    }
}
