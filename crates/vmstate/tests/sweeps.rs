//! Truncation and mutation sweeps over device state.
//!
//! The inputs are the fixture streams reduced to what the virtio decoders and checks read:
//! the configuration, the RAM sections (block lists, and ring pages for the `rings`
//! fixtures), the virtio and SCSI disk sections, EOF and a description of just those
//! sections. Every reduced stream reads, decodes and checks as its original does.
//!
//! * Truncation: a prefix of a device-state stream is an error (never a success, never a
//!   panic), and so is a cut device state followed by the stream's own EOF and description,
//!   unless the cut falls between two sections.
//! * Mutation: bytes of the device sections replaced by 0x00, 0xFF, themselves ^ 0x80 and
//!   themselves + 1, and the fields the checks cover set to boundary values: nothing
//!   panics, and every change of a covered field is an error or a finding.
//!
//! The default tier samples; the extended tier (`CI=true`) sweeps every prefix of the small
//! reduced streams and a wider set of mutations.

mod stream_checks;
mod support;

use std::time::{Duration, Instant};

use stream_checks::read_stream_file;
use vmstate::check::{self, Report};
use vmstate::devices::{self, DecodeOptions, VirtioSection};
use vmstate::memory::{self, GuestBytes, GuestRam};
use vmstate::stream::{self, Record, Stream};
use vmstate::virtio::{DeviceState, VirtioDevice};

const NAMES: [&str; 5] = [
    "blk-inflight-split",
    "blk-inflight-mq2",
    "blk-inflight-packed",
    "scsi-inflight",
    "serial-throttled",
];

/// One input takes at most this long (a hang is a failure, not a slow test).
const PER_INPUT: Duration = Duration::from_secs(10);

/// A fixture stream reduced to its configuration, RAM, virtio and SCSI disk sections.
struct Reduced {
    data: Vec<u8>,
    /// Offset of the EOF byte.
    eof: usize,
    /// Where each kept section starts and ends, in `data`.
    sections: Vec<(usize, usize)>,
    /// Where the first section's footer starts: a cut there, followed by EOF, is a valid
    /// stream without footers.
    first_footer: Option<usize>,
    /// The `virtio` fields (and SCSI `requests` fields), as byte ranges of `data`.
    fields: Vec<(usize, usize)>,
}

fn reduce(name: &str, original: &[u8]) -> Reduced {
    let support::CutStream {
        data,
        eof,
        moved,
        parsed,
        found,
        scsi,
    } = support::cut_to_virtio(original);
    let relocate = |offset: u64, len: u64| {
        let offset = offset as usize;
        let (from, to, _) = moved
            .iter()
            .find(|(from, _, len)| (*from..from + len).contains(&offset))
            .unwrap();
        (offset - from + to, offset - from + to + len as usize)
    };
    let sections: Vec<(usize, usize)> = moved.iter().map(|&(_, to, len)| (to, to + len)).collect();
    // The first section kept (the configuration before it has no footer).
    let first_footer = parsed
        .records
        .iter()
        .find_map(|record| match record {
            Record::Section(s) if moved.iter().any(|m| m.0 == s.span.offset as usize) => Some(s),
            _ => None,
        })
        .and_then(|s| s.footer_offset)
        .map(|f| relocate(f, 0).0);
    let mut fields: Vec<_> = found
        .iter()
        .map(|v| relocate(v.field_offset, v.field_size))
        .collect();
    fields.extend(scsi.iter().map(|d| relocate(d.field_offset, d.field_size)));

    // The reduced stream decodes to the same devices.
    let (again, again_found) = decode(&data).unwrap();
    assert_eq!(again_found.len(), found.len(), "{name}");
    for (a, b) in again_found.iter().zip(&found) {
        assert_eq!(a.device.queues, b.device.queues, "{name}");
        assert_eq!(a.device.device, b.device.device, "{name}");
    }
    assert_eq!(again.eof_offset as usize, eof);
    Reduced {
        data,
        eof,
        sections,
        first_footer,
        fields,
    }
}

fn stripped(name: &str) -> Reduced {
    let original = read_stream_file(&support::fixture(&format!(
        "stripped/qemu7.2-{name}.stripped.mig.gz"
    )));
    reduce(name, &original)
}

fn rings(name: &str) -> Reduced {
    let original = read_stream_file(&support::fixture(&format!(
        "rings/qemu7.2-{name}.rings.mig.gz"
    )));
    let reduced = reduce(name, &original);
    // With its ring pages, the reduced stream checks as clean as the original.
    assert!(
        full_check(&reduced.data).unwrap().is_clean(),
        "{name}: reduced"
    );
    reduced
}

fn decode(data: &[u8]) -> vmstate::Result<(Stream, Vec<VirtioSection>)> {
    let s = stream::read(data)?;
    let d = devices::decode_virtio(&s, &DecodeOptions::default())?;
    Ok((s, d))
}

/// Everything `vmstate check` does: read, decode (SCSI requests included), place guest
/// memory and check.
fn full_check(data: &[u8]) -> vmstate::Result<Report> {
    let (stream, found) = decode(data)?;
    let scsi = devices::decode_scsi_requests(&stream, &found, &DecodeOptions::default())?;
    let map = memory::map_for(&stream, &[], None)?;
    let ram = GuestRam::from_stream(&stream, data, map, &mut |_| {})?;
    Ok(check::check_stream(
        &found,
        &scsi,
        Some(&ram as &dyn GuestBytes),
    ))
}

/// Runs `f` on `input`, failing on a panic (with the input's name) or on a run over
/// [`PER_INPUT`].
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| panic!("{what}: panicked"));
    assert!(
        start.elapsed() < PER_INPUT,
        "{what}: took {:?}",
        start.elapsed()
    );
    out
}

// ---------------------------------------------------------------------------------------
// Truncation.

/// Reduced streams up to this size are small: the extended tier cuts them at every byte.
const SMALL: usize = 100 * 1024;

/// Every prefix of a reduced stream is an error, but one: the device state cut right after
/// its EOF byte, a complete stream without its (optional) description. The default tier
/// samples 48 prefixes per stream; the extended tier takes every prefix of the small streams
/// (serial-throttled, 96 KiB) and 3000 of each other.
#[test]
fn prefixes_of_device_state_streams_are_errors() {
    let mut total = 0;
    for name in NAMES {
        let r = stripped(name);
        let cuts = if support::extended_tier() && r.data.len() <= SMALL {
            (0..r.data.len()).collect()
        } else {
            let count = support::cases(48, 3000) as usize;
            support::sample(r.data.len(), count, 0x9e37_79b9 ^ r.data.len() as u64)
        };
        for cut in cuts {
            let prefix = &r.data[..cut];
            let result = guarded(&format!("{name}[..{cut}]"), || decode(prefix).is_ok());
            assert!(
                !result || cut == r.eof + 1,
                "{name}: the prefix of {cut} bytes reads"
            );
            total += 1;
        }
    }
    eprintln!("truncation sweep: {total} prefixes");
}

/// The device state cut anywhere and followed by the stream's own EOF and description: an
/// error unless the cut falls between two sections (a shorter valid stream).
#[test]
fn cut_device_state_with_its_description_is_an_error() {
    let mut total = 0;
    for name in NAMES {
        let r = stripped(name);
        let tail = &r.data[r.eof..];
        let span = r.eof;
        let cuts = if support::extended_tier() {
            // Every cut in the small sections and the first and last 4 KiB of each large
            // one (the counts and the framing), a sample of 2000 elsewhere.
            let mut cuts: Vec<usize> = r
                .sections
                .iter()
                .flat_map(|&(a, b)| {
                    if b - a <= 8192 {
                        (a..b).collect::<Vec<_>>()
                    } else {
                        (a..a + 4096).chain(b - 4096..b).collect()
                    }
                })
                .collect();
            cuts.extend(support::sample(span, 2000, 0x51ed_270b ^ span as u64));
            cuts
        } else {
            support::sample(span, 24, 0x2545_f491 ^ span as u64)
        };
        for cut in cuts {
            let mut input = r.data[..cut].to_vec();
            input.extend_from_slice(tail);
            let reads = guarded(&format!("{name}: cut at {cut}"), || decode(&input).is_ok());
            let boundary = cut == 8
                || r.sections.iter().any(|&(_, end)| end == cut)
                || r.first_footer == Some(cut);
            assert!(
                !reads || boundary,
                "{name}: the device state cut at {cut} reads"
            );
            total += 1;
        }
    }
    eprintln!("cut-with-description sweep: {total} inputs");
}

// ---------------------------------------------------------------------------------------
// Mutation.

/// The four byte mutations.
fn mutations(byte: u8) -> [u8; 4] {
    [0x00, 0xff, byte ^ 0x80, byte.wrapping_add(1)]
}

/// Bytes of the `virtio` (and SCSI `requests`) fields replaced: read, decode and check with
/// guest memory never panic or hang.
#[test]
fn byte_mutations_of_device_sections_never_panic() {
    let per_fixture = support::cases(12, 100) as usize;
    let mut total = 0;
    let mut outcomes = [0usize; 3]; // error, findings, clean
    for name in NAMES {
        let r = rings(name);
        let span: usize = r.fields.iter().map(|(a, b)| b - a).sum();
        for pick in support::sample(span, per_fixture, 0xdead_beef ^ span as u64) {
            let at = support::nth_field_byte(&r.fields, pick).unwrap();
            for value in mutations(r.data[at]) {
                if value == r.data[at] {
                    continue;
                }
                let mut input = r.data.clone();
                input[at] = value;
                let outcome = guarded(&format!("{name}: byte {at} = {value:#04x}"), || {
                    full_check(&input)
                });
                outcomes[match outcome {
                    Err(_) => 0,
                    Ok(report) if !report.is_clean() => 1,
                    Ok(_) => 2,
                }] += 1;
                total += 1;
            }
        }
    }
    eprintln!(
        "byte mutation sweep: {total} inputs: {} errors, {} with findings, {} clean",
        outcomes[0], outcomes[1], outcomes[2]
    );
}

/// Boundary values of integer fields.
const BOUNDARIES: [u64; 7] = [
    0,
    1,
    1 << 15,
    (1 << 16) - 1,
    1 << 31,
    (1 << 32) - 1,
    u64::MAX,
];

/// The fields the checks cover, as editor paths, for a device.
fn covered_fields(device: &VirtioDevice) -> Vec<String> {
    let mut paths = vec!["queue_sel".to_owned()];
    let busy = busy_queues(device);
    for (q, queue) in device.queues.iter().enumerate() {
        if queue.num == 0 {
            continue; // an unused queue slot: nothing reads its fields
        }
        if q >= 8 && !busy.contains(&(q as u32)) {
            continue; // idle queues past the first 8 are alike
        }
        paths.push(format!("queues[{q}].num"));
        paths.push(format!("queues[{q}].desc"));
        paths.push(format!("queues[{q}].last_avail_idx"));
        if queue.vector.is_some() {
            paths.push(format!("queues[{q}].vector"));
        }
        if device.ring_addresses(q).is_some() && device.offers_packed_rings() {
            continue;
        }
        if device
            .subsections
            .iter()
            .any(|s| s.state.name() == "virtio/virtqueues")
        {
            paths.push(format!("queues[{q}].avail"));
            paths.push(format!("queues[{q}].used"));
        }
    }
    if let DeviceState::Serial(serial) = &device.device {
        for (k, port) in serial.ports.iter().enumerate() {
            paths.push(format!("serial.ports[{k}].id"));
            let Some(popped) = &port.popped else { continue };
            let at = format!("serial.ports[{k}].popped");
            paths.push(format!("{at}.index"));
            paths.push(format!("{at}.iov_idx"));
            paths.push(format!("{at}.iov_offset"));
            for (list, segments) in [
                ("out", &popped.element.element.device_readable),
                ("in", &popped.element.element.device_writable),
            ] {
                for s in 0..segments.len() {
                    paths.push(format!("{at}.{list}[{s}].addr"));
                    paths.push(format!("{at}.{list}[{s}].len"));
                }
            }
        }
    }
    if let DeviceState::Blk(blk) = &device.device {
        for (k, request) in blk.requests.iter().enumerate() {
            paths.push(format!("requests[{k}].index"));
            if request.queue.is_some() {
                paths.push(format!("requests[{k}].queue"));
            }
            for (list, segments) in [
                ("out", &request.element.device_readable),
                ("in", &request.element.device_writable),
            ] {
                for s in 0..segments.len() {
                    paths.push(format!("requests[{k}].{list}[{s}].addr"));
                    paths.push(format!("requests[{k}].{list}[{s}].len"));
                }
            }
        }
    }
    paths
}

/// Every covered field of every device of the `rings` fixtures set to every boundary value
/// it can hold: the stream written, read back, decoded and checked with guest memory is an
/// error or has a finding, unless
///
/// * the check says what it could not check that it checked before (the value points at
///   guest memory the rings-only stream does not carry), or
/// * the value is one the device could hold (see [`valid_value`]), or
/// * it is a known gap of the checks (see [`KNOWN_GAPS`]), counted and listed.
#[test]
fn boundary_values_of_covered_fields_are_errors_or_findings() {
    let mut tally = [0usize; 5]; // error, finding, unverifiable, valid, gap
    let mut unnoticed = Vec::new();
    let mut gaps = Vec::new();
    let names: &[&str] = if support::extended_tier() {
        &NAMES
    } else {
        &["blk-inflight-split"]
    };
    for name in names {
        let r = rings(name);
        let (model, found) = decode(&r.data).unwrap();
        let baseline = full_check(&r.data).unwrap();
        for (d, section) in found.iter().enumerate() {
            let not_checked_before = baseline.devices[d].not_checked.len();
            let paths = covered_fields(&section.device);
            let paths: Vec<_> = if support::extended_tier() {
                paths
            } else {
                support::sample(paths.len(), 10, 7)
                    .into_iter()
                    .map(|i| paths[i].clone())
                    .collect()
            };
            for path in paths {
                for value in BOUNDARIES {
                    let mut edited = section.clone();
                    if edited.device.set(&path, &value.to_string()).is_err() {
                        continue; // wider than the field
                    }
                    if edited.device == section.device {
                        continue; // the value it already has
                    }
                    let mut m = model.clone();
                    if devices::store_virtio(&mut m, &edited, None).is_err() {
                        continue; // the encoder refuses it: no stream to read
                    }
                    let input = stream::write(&m, &r.data).unwrap();
                    let what = format!("{name} device {d}: {path} = {value}");
                    let outcome = guarded(&what, || full_check(&input));
                    let class = match outcome {
                        Err(_) => 0,
                        Ok(report) if !report.is_clean() => 1,
                        Ok(report) if report.devices[d].not_checked.len() > not_checked_before => 2,
                        Ok(_) if valid_value(&section.device, &path, value) => 3,
                        Ok(_) if KNOWN_GAPS.iter().any(|g| g(&section.device, &path)) => {
                            gaps.push(what);
                            4
                        }
                        Ok(_) => {
                            unnoticed.push(what);
                            continue;
                        }
                    };
                    tally[class] += 1;
                }
            }
        }
    }
    eprintln!(
        "boundary sweep: {} edited streams: {} errors, {} with findings, {} not checkable \
         (memory the stream does not carry), {} valid values, {} known gaps: {gaps:?}",
        tally.iter().sum::<usize>() + unnoticed.len(),
        tally[0],
        tally[1],
        tally[2],
        tally[3],
        tally[4]
    );
    assert!(
        unnoticed.is_empty(),
        "passed the checks unnoticed: {unnoticed:#?}"
    );
}

/// Values a covered field may take without anything being wrong: a vector in the MSI-X
/// table or 0xffff ("no vector"), a `queue_sel` of an existing queue, for a queue with
/// nothing in flight no ring (address 0), a ring elsewhere in guest RAM or a ring of 1
/// entry, and a serial port's `iov_offset` inside the buffer it is sending.
fn valid_value(device: &VirtioDevice, path: &str, value: u64) -> bool {
    let queue = path
        .strip_prefix("queues[")
        .and_then(|p| p.split(']').next())
        .and_then(|q| q.parse::<usize>().ok())
        .and_then(|q| device.queues.get(q));
    let vectors = u64::from(device.transport.pci().map_or(0, |p| p.shape().msix_vectors));
    let index = path
        .strip_prefix("queues[")
        .and_then(|p| p.split(']').next())
        .and_then(|q| q.parse::<u32>().ok());
    let idle = queue.is_some() && index.is_some_and(|q| !busy_queues(device).contains(&q));
    if path.ends_with(".vector") {
        value == 0xffff || value < vectors
    } else if path == "queue_sel" {
        value < device.queues.len() as u64
    } else if path.ends_with(".desc") || path.ends_with(".avail") || path.ends_with(".used") {
        // No ring, or a ring at another aligned address of guest RAM.
        idle && (value == 0 || value == 1 << 15)
    } else if path.ends_with(".num") {
        value == 1 && idle
    } else if path.ends_with(".popped.iov_offset") {
        // A position inside the buffer being sent.
        serial_popped_out_len(device, path).is_some_and(|len| value < len)
    } else {
        false
    }
}

/// The length of the segment a serial port's `iov_idx` points at, for a path under
/// `serial.ports[K].popped`.
fn serial_popped_out_len(device: &VirtioDevice, path: &str) -> Option<u64> {
    let DeviceState::Serial(serial) = &device.device else {
        return None;
    };
    let k: usize = path
        .strip_prefix("serial.ports[")?
        .split(']')
        .next()?
        .parse()
        .ok()?;
    let popped = serial.ports.get(k)?.popped.as_ref()?;
    let segment = popped
        .element
        .element
        .device_readable
        .get(popped.iov_idx as usize)?;
    Some(segment.len)
}

/// The queues some saved element was popped from.
fn busy_queues(device: &VirtioDevice) -> Vec<u32> {
    match &device.device {
        DeviceState::Blk(blk) => blk.requests.iter().map(|r| r.queue.unwrap_or(0)).collect(),
        DeviceState::Serial(serial) => serial
            .ports
            .iter()
            .filter_map(|p| p.popped.as_ref()?.element.queue)
            .collect(),
        // virtio-scsi's requests (in its disks' sections) are on queues 2 and up.
        _ => (2..device.queues.len() as u32).collect(),
    }
}

/// Known gaps of the checks, listed so that closing one shows here. None is open: a packed
/// ring's indices are compared with the ring size (QEMU loads them unchecked).
const KNOWN_GAPS: [fn(&VirtioDevice, &str) -> bool; 0] = [];
