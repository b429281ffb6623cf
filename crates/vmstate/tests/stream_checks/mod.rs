//! Checks shared by the fixture tests (default tier) and the corpus tests (extended tier):
//! what a correctly read stream must satisfy, judged against the stream's own description and
//! against QEMU's analyze-migration.py output for the same stream.

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value as Json};
use vmstate::stream::{self, Field, RamItem, SectionBody, SectionKind, Stream, StructValue, Value};

/// Reads a file, decompressing it when it is gzip.
pub fn read_stream_file(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    stream::decompress_if_gzip(&raw, 1 << 32)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_owned()
}

/// Every item of a stream's RAM sections, in stream order.
pub fn ram_items(stream: &Stream) -> Vec<RamItem> {
    stream
        .sections()
        .into_iter()
        .filter_map(|s| match &s.body {
            SectionBody::Ram(ram) => Some(ram.items.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Every run of page records of a stream, in stream order.
pub fn ram_runs(stream: &Stream) -> Vec<stream::RamRun> {
    ram_items(stream)
        .into_iter()
        .filter_map(|item| match item {
            RamItem::Pages(run) => Some(run),
            _ => None,
        })
        .collect()
}

/// Reads a gzip-compressed JSON file.
pub fn read_json_gz(path: &Path) -> Json {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = String::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads `data`, checks it against its own description and writes it back byte for byte.
pub fn check_stream(name: &str, data: &[u8]) -> Stream {
    let parsed = stream::read(data).unwrap_or_else(|e| panic!("{name}: {e}"));
    let written = stream::write(&parsed, data).unwrap_or_else(|e| panic!("{name}: write: {e}"));
    assert!(
        written == data,
        "{name}: written stream differs from the input (first difference at {:?})",
        written.iter().zip(data).position(|(a, b)| a != b)
    );
    check_against_description(name, &parsed);
    parsed
}

/// FULL sections and the description's devices: same names, instances and order, and every
/// described section decoded through its description.
pub fn check_against_description(name: &str, parsed: &Stream) {
    let trailer = parsed
        .trailer
        .as_ref()
        .expect("corpus streams have a trailer");
    let description = trailer.description.as_ref().expect("the trailer parses");
    let full: Vec<_> = parsed
        .sections()
        .into_iter()
        .filter(|s| s.kind == SectionKind::Full)
        .collect();
    assert_eq!(
        full.len(),
        description.devices.len(),
        "{name}: one FULL section per described device"
    );
    for (section, device) in full.iter().zip(&description.devices) {
        assert_eq!(section.idstr, device.name, "{name}");
        assert_eq!(section.instance_id, device.instance_id, "{name}");
        // Old-style handlers (s390-skeys, todclock) are described with no version.
        if let Some(version) = device.vmsd.version {
            assert_eq!(
                u64::from(section.version_id),
                version,
                "{name}: {}",
                section.idstr
            );
        }
        // An entry QEMU describes wrongly (s390_css: an array of pointers described by its
        // first, null, element) is delimited by its footer and kept as bytes.
        let decoded = matches!(section.body, SectionBody::Device(_));
        assert_eq!(
            decoded,
            device.problem.is_none(),
            "{name}: {} decoded: {:?}",
            section.idstr,
            device.problem
        );
    }
    assert_eq!(parsed.page_size.bytes, description.page_size.unwrap_or(0));
}

/// Compares every section with analyze-migration.py's `-d state` output: RAM block sizes
/// and every device's values. Returns the number of sections compared.
pub fn check_against_peer_state(name: &str, parsed: &Stream, peer: &Json) -> usize {
    let peer = peer.as_object().expect("peer state is an object");
    let sections = parsed.sections();
    let mut compared = 0;
    for (key, expected) in peer {
        let (idstr, id) = key
            .rsplit_once(" (")
            .and_then(|(idstr, rest)| Some((idstr, rest.strip_suffix(')')?.parse::<u32>().ok()?)))
            .unwrap_or_else(|| panic!("{name}: peer key {key:?}"));
        let section = sections
            .iter()
            .find(|s| s.section_id == id && s.idstr == idstr && s.kind.has_full_header())
            .unwrap_or_else(|| panic!("{name}: no section {key:?}"));
        if idstr == "ram" {
            let sizes = &expected["section sizes"];
            let blocks: Vec<_> = sections
                .iter()
                .filter(|s| s.section_id == id)
                .flat_map(|s| match &s.body {
                    SectionBody::Ram(ram) => ram.items.clone(),
                    _ => Vec::new(),
                })
                .filter_map(|item| match item {
                    RamItem::BlockList(list) => Some(list.blocks),
                    _ => None,
                })
                .flatten()
                .collect();
            let ours: Map<String, Json> = blocks
                .iter()
                .map(|b| {
                    (
                        b.name.clone(),
                        Json::String(format!("0x{:016x}", b.used_length)),
                    )
                })
                .collect();
            assert_eq!(&Json::Object(ours), sizes, "{name}: RAM block list");
        } else {
            let SectionBody::Device(state) = &section.body else {
                panic!("{name}: {key} not decoded");
            };
            assert_eq!(&peer_struct(state), expected, "{name}: {key}");
        }
        compared += 1;
    }
    compared
}

/// A struct as analyze-migration.py prints it: fields and subsections by name, a name that
/// repeats becoming a list.
pub fn peer_struct(state: &StructValue) -> Json {
    let mut map = Map::new();
    let mut entries: Vec<(String, Json)> = Vec::new();
    for field in &state.fields {
        match &field.value {
            Value::Array(elements) => {
                for element in elements {
                    entries.push((field.name.clone(), peer_value(element)));
                }
            }
            Value::Uints(values) => {
                let width = (field.size as usize / values.len().max(1)) * 2;
                for v in values {
                    entries.push((field.name.clone(), Json::String(format!("0x{v:0width$x}"))));
                }
            }
            _ => entries.push((field.name.clone(), peer_value(field))),
        }
    }
    for sub in &state.subsections {
        entries.push((sub.name.clone(), peer_struct(&sub.state)));
    }
    for (key, value) in entries {
        match map.get_mut(&key) {
            None => {
                map.insert(key, value);
            }
            Some(Json::Array(list)) => list.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Json::Array(vec![first, value]);
            }
        }
    }
    Json::Object(map)
}

fn peer_value(field: &Field) -> Json {
    let width = (field.size * 2) as usize;
    match &field.value {
        Value::Bool(b) => Json::Bool(*b),
        Value::Unsigned(v) => Json::String(format!("0x{v:0width$x}")),
        Value::Signed(v) if *v < 0 => {
            let bits = field.size * 8;
            let unsigned = (*v as u64) & (u64::MAX >> (64 - bits));
            Json::String(format!("0x{unsigned:0width$x} ({v})"))
        }
        Value::Signed(v) => Json::String(format!("0x{v:0width$x}")),
        Value::Text(t) => Json::String(t.clone()),
        Value::Raw(bytes) => Json::String(
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Value::Struct(s) => peer_struct(s),
        Value::Array(elements) => Json::Array(elements.iter().map(peer_value).collect()),
        Value::Uints(values) => {
            let width = (field.size as usize / values.len().max(1)) * 2;
            Json::Array(
                values
                    .iter()
                    .map(|v| Json::String(format!("0x{v:0width$x}")))
                    .collect(),
            )
        }
    }
}

/// Offsets worth cutting a stream at: around every section boundary and the trailer, plus
/// `extra` evenly spread points; at most `limit` of them, evenly sampled.
pub fn cut_points(parsed: &Stream, len: usize, extra: usize, limit: usize) -> Vec<usize> {
    let mut points = vec![0, 1, 4, 7, 8, 9];
    let mut mark = |p: u64| {
        let p = p as usize;
        for q in [p.saturating_sub(1), p, p + 1, p + 5] {
            if q < len {
                points.push(q);
            }
        }
    };
    for section in parsed.sections() {
        mark(section.span.offset);
        mark(section.span.end().saturating_sub(5));
    }
    if let Some(c) = parsed.configuration() {
        mark(c.span.end());
    }
    mark(parsed.eof_offset);
    if let Some(t) = &parsed.trailer {
        mark(t.offset);
        mark(t.offset + 5);
        mark(t.offset + 5 + t.json.len() as u64 / 2);
    }
    points.push(len - 1);
    for i in 1..=extra {
        points.push(len * i / (extra + 1));
    }
    points.sort_unstable();
    points.dedup();
    if points.len() > limit {
        let step = points.len().div_ceil(limit);
        points = points.into_iter().step_by(step).collect();
    }
    points
}

/// A stream cut at `cut` must fail with an error at or before the cut, unless the cut lands
/// right after EOF (a stream may legitimately end there), in which case the stream must
/// say it has no trailer.
pub fn check_cut(name: &str, data: &[u8], eof_offset: u64, cut: usize) {
    let result = std::panic::catch_unwind(|| stream::read(&data[..cut]));
    let result = result.unwrap_or_else(|_| panic!("{name}: panic when cut at {cut}"));
    match result {
        Err(e) => assert!(
            e.offset() <= cut as u64,
            "{name}: cut at {cut}, error names offset {} past the cut: {e}",
            e.offset()
        ),
        Ok(parsed) => {
            assert_eq!(
                cut as u64,
                eof_offset + 1,
                "{name}: stream cut at {cut} accepted as complete"
            );
            assert!(parsed.trailer.is_none());
        }
    }
}

/// Offset in `data` of the byte at guest-physical `gpa` (x86 map: pc.ram at 0), when the
/// stream carries that page as a PAGE record.
pub fn page_byte(data: &[u8], gpa: u64) -> usize {
    let stream = stream::read(data).unwrap();
    let page_size = stream.page_size.bytes;
    let page = gpa & !(page_size - 1);
    for section in stream.sections() {
        let SectionBody::Ram(payload) = &section.body else {
            continue;
        };
        for item in &payload.items {
            let RamItem::Pages(run) = item else { continue };
            if run.block != "pc.ram" {
                continue;
            }
            let bytes = &data[run.span.offset as usize..run.span.end() as usize];
            let mut r = vmstate::wire::Reader::at(bytes, run.span.offset);
            for _ in 0..run.count {
                let record = stream::read_page_record(&mut r, page_size).unwrap();
                if let stream::RamRecordKind::Page { data: span } = record.kind {
                    if record.page == page {
                        return (span.offset + (gpa - page)) as usize;
                    }
                }
            }
        }
    }
    panic!("no page for {gpa:#x}");
}
