//! The VM state of qcow2 internal snapshots (HMP `savevm`, `virsh snapshot-create` of a
//! running domain), read-only: the header, the snapshot table, and the snapshot's L1 and L2
//! tables down to its clusters, compressed ones included.
//!
//! QEMU stores a snapshot's VM state in the image's own address space, past the disk: from
//! the first L1 entry after the disk's size (`qcow2_vm_state_offset`), mapped through the
//! L1 table the snapshot keeps. The state is the migration stream `savevm` wrote, byte for
//! byte, `vm_state_size` long.

use std::io::Write;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::wire::slice;
use crate::wire::{Endian, Reader};

/// The first four bytes of every qcow2 image.
pub const MAGIC: &[u8; 4] = b"QFI\xfb";

/// Incompatible feature bits this reader understands: dirty (0), corrupt (1), compression
/// type (3), extended L2 entries (4). An external data file (2) keeps the clusters elsewhere.
const KNOWN_INCOMPATIBLE: u64 = 0b11011;
const EXTERNAL_DATA_FILE: u64 = 1 << 2;
const EXTENDED_L2: u64 = 1 << 4;

/// Most snapshots in a table (QEMU's `QCOW_MAX_SNAPSHOTS`).
const MAX_SNAPSHOTS: u32 = 65536;
/// Cluster sizes QEMU allows: 512 bytes to 2 MiB.
const CLUSTER_BITS: std::ops::RangeInclusive<u32> = 9..=21;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Its position in the snapshot table.
    pub index: usize,
    /// Its id (`1`, `2`, ...).
    pub id: String,
    /// Its name (`savevm NAME`).
    pub name: String,
    /// When it was taken: seconds and nanoseconds since the epoch.
    pub date_sec: u32,
    /// Nanoseconds of `date_sec`.
    pub date_nsec: u32,
    /// The guest's clock at the snapshot, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Bytes of VM state (0: a disk-only snapshot).
    pub vm_state_size: u64,
    /// The disk's size when the snapshot was taken.
    pub disk_size: u64,
    /// Where its L1 table is, and its entries.
    pub l1_table_offset: u64,
    /// Entries of its L1 table.
    pub l1_size: u32,
}

/// A qcow2 image's header and snapshot table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Qcow2Image {
    /// Format version, 2 or 3.
    pub version: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// The disk's size now.
    pub size: u64,
    /// Compressed clusters are zstd rather than deflate.
    pub zstd: bool,
    /// L2 entries are 16 bytes, with subcluster bitmaps.
    pub extended_l2: bool,
    /// The internal snapshots, in table order.
    pub snapshots: Vec<Snapshot>,
}

fn bad(offset: u64, field: &str, value: u64, expected: &'static str) -> Error {
    Error::new(ErrorKind::InvalidValue { value, expected }, offset, field)
}

impl Qcow2Image {
    /// Reads the header and the snapshot table of the image in `data`.
    pub fn parse(data: &[u8]) -> Result<Qcow2Image> {
        let mut r = Reader::new(data);
        let magic = r.bytes(4, "qcow2.magic")?;
        if magic != MAGIC {
            return Err(bad(0, "qcow2.magic", 0, "the magic QFI\\xfb"));
        }
        let be = Endian::Big;
        let version = r.u32(be, "qcow2.version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion { version },
                4,
                "qcow2.version",
            ));
        }
        let _backing_offset = r.u64(be, "qcow2.backing_file_offset")?;
        let _backing_size = r.u32(be, "qcow2.backing_file_size")?;
        let cluster_bits = r.u32(be, "qcow2.cluster_bits")?;
        if !CLUSTER_BITS.contains(&cluster_bits) {
            return Err(bad(
                20,
                "qcow2.cluster_bits",
                u64::from(cluster_bits),
                "9 to 21 (clusters of 512 bytes to 2 MiB)",
            ));
        }
        let size = r.u64(be, "qcow2.size")?;
        let crypt = r.u32(be, "qcow2.crypt_method")?;
        let _l1_size = r.u32(be, "qcow2.l1_size")?;
        let _l1_offset = r.u64(be, "qcow2.l1_table_offset")?;
        let _refcount_offset = r.u64(be, "qcow2.refcount_table_offset")?;
        let _refcount_clusters = r.u32(be, "qcow2.refcount_table_clusters")?;
        let nb_snapshots = r.u32(be, "qcow2.nb_snapshots")?;
        let snapshots_offset = r.u64(be, "qcow2.snapshots_offset")?;
        let (mut incompatible, mut compression_type) = (0u64, 0u8);
        if version >= 3 {
            incompatible = r.u64(be, "qcow2.incompatible_features")?;
            let _compatible = r.u64(be, "qcow2.compatible_features")?;
            let _autoclear = r.u64(be, "qcow2.autoclear_features")?;
            let _refcount_order = r.u32(be, "qcow2.refcount_order")?;
            let header_length = r.u32(be, "qcow2.header_length")?;
            if header_length > 104 {
                compression_type = r.u8("qcow2.compression_type")?;
            }
        }
        if crypt != 0 {
            return Err(unsupported(
                32,
                "qcow2.crypt_method",
                "an encrypted qcow2 image",
            ));
        }
        if incompatible & EXTERNAL_DATA_FILE != 0 {
            return Err(unsupported(
                72,
                "qcow2.incompatible_features",
                "a qcow2 image whose clusters are in an external data file",
            ));
        }
        if incompatible & !KNOWN_INCOMPATIBLE != 0 {
            return Err(bad(
                72,
                "qcow2.incompatible_features",
                incompatible,
                "only the feature bits dirty, corrupt, compression type, extended L2",
            ));
        }
        if compression_type > 1 {
            return Err(bad(
                104,
                "qcow2.compression_type",
                u64::from(compression_type),
                "0 (deflate) or 1 (zstd)",
            ));
        }
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::new(
                ErrorKind::CountTooLarge {
                    value: u64::from(nb_snapshots),
                    max: u64::from(MAX_SNAPSHOTS),
                },
                60,
                "qcow2.nb_snapshots",
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut snapshots = Vec::new();
        let mut at = usize::try_from(snapshots_offset).unwrap_or(usize::MAX);
        for index in 0..nb_snapshots as usize {
            let rest = data
                .get(at..)
                .ok_or_else(|| outside(snapshots_offset, "qcow2.snapshots_offset", data))?;
            let mut r = Reader::at(rest, at as u64);
            let path = format!("qcow2.snapshots[{index}]");
            let field = |f: &str| format!("{path}.{f}");
            let l1_table_offset = r.u64(be, &field("l1_table_offset"))?;
            let l1_size = r.u32(be, &field("l1_size"))?;
            let id_len = r.u16(be, &field("id_str_size"))?;
            let name_len = r.u16(be, &field("name_size"))?;
            let date_sec = r.u32(be, &field("date_sec"))?;
            let date_nsec = r.u32(be, &field("date_nsec"))?;
            let vm_clock_nsec = r.u64(be, &field("vm_clock_nsec"))?;
            let small_state = r.u32(be, &field("vm_state_size"))?;
            let extra_len = r.u32(be, &field("extra_data_size"))?;
            if extra_len > 1024 {
                return Err(Error::new(
                    ErrorKind::CountTooLarge {
                        value: u64::from(extra_len),
                        max: 1024,
                    },
                    r.offset().saturating_sub(4),
                    field("extra_data_size"),
                ));
            }
            let extra = r.bytes(extra_len as usize, &field("extra_data"))?;
            let word = |at: usize| -> Option<u64> {
                Some(u64::from_be_bytes(
                    extra.get(at..at.checked_add(8)?)?.try_into().ok()?,
                ))
            };
            let vm_state_size = word(0).unwrap_or(u64::from(small_state));
            let disk_size = word(8).unwrap_or(size);
            let id = String::from_utf8_lossy(r.bytes(usize::from(id_len), &field("id_str"))?)
                .into_owned();
            let name = String::from_utf8_lossy(r.bytes(usize::from(name_len), &field("name"))?)
                .into_owned();
            let len = usize::try_from(r.offset())
                .unwrap_or(usize::MAX)
                .saturating_sub(at);
            at = at.saturating_add(len.saturating_add(7) & !7);
            snapshots.push(Snapshot {
                index,
                id,
                name,
                date_sec,
                date_nsec,
                vm_clock_nsec,
                vm_state_size,
                disk_size,
                l1_table_offset,
                l1_size,
            });
        }
        Ok(Qcow2Image {
            version,
            cluster_size,
            size,
            zstd: compression_type == 1,
            extended_l2: incompatible & EXTENDED_L2 != 0,
            snapshots,
        })
    }

    /// The snapshot `key` names (its id, else its name), or without a key the newest one
    /// that has VM state.
    pub fn select(&self, key: Option<&str>) -> Result<&Snapshot> {
        let found = match key {
            Some(key) => self
                .snapshots
                .iter()
                .find(|s| s.id == key)
                .or_else(|| self.snapshots.iter().find(|s| s.name == key)),
            None => self
                .snapshots
                .iter()
                .filter(|s| s.vm_state_size > 0)
                .max_by_key(|s| (s.date_sec, s.date_nsec, s.index)),
        };
        let listed: Vec<String> = self
            .snapshots
            .iter()
            .map(|s| {
                format!(
                    "{} ({}, {} bytes of VM state)",
                    s.id, s.name, s.vm_state_size
                )
            })
            .collect();
        let listed = if listed.is_empty() {
            "it has none".to_owned()
        } else {
            format!("it has {}", listed.join(", "))
        };
        match found {
            Some(s) if s.vm_state_size > 0 => Ok(s),
            Some(s) => Err(unsupported(
                0,
                "qcow2.snapshots",
                &format!(
                    "snapshot {} ({}) holds no VM state (a disk-only snapshot); {listed}",
                    s.id, s.name
                ),
            )),
            None => Err(unsupported(
                0,
                "qcow2.snapshots",
                &match key {
                    Some(key) => format!("no snapshot with id or name {key:?}; {listed}"),
                    None => format!("no internal snapshot with VM state; {listed}"),
                },
            )),
        }
    }

    /// Writes the VM state of `snapshot` (the stream `savevm` stored) from the image in
    /// `data` to `out`, a cluster at a time; returns the bytes written. A state larger than
    /// `limit` is refused before anything is written: clusters that are not allocated read
    /// as zeros, so a small image can claim any size.
    pub fn read_vm_state(
        &self,
        data: &[u8],
        snapshot: &Snapshot,
        out: &mut dyn Write,
        limit: u64,
    ) -> Result<u64> {
        if snapshot.vm_state_size > limit {
            return Err(Error::new(
                ErrorKind::CountTooLarge {
                    value: snapshot.vm_state_size,
                    max: limit,
                },
                snapshot.l1_table_offset,
                format!("qcow2.snapshots[{}].vm_state_size", snapshot.index),
            ));
        }
        let cluster = self.cluster_size;
        let entry_len: u64 = if self.extended_l2 { 16 } else { 8 };
        let l2_entries = cluster.checked_div(entry_len).unwrap_or(1);
        let l1_span = cluster.saturating_mul(l2_entries);
        // The first L1 entry past the disk: where QEMU puts the VM state.
        let first = snapshot.disk_size.div_ceil(l1_span);
        let l1 = snapshot.l1_table_offset;
        let path = format!("qcow2.snapshots[{}]", snapshot.index);
        let mut written = 0u64;
        let mut pos = 0u64;
        let mut zeros = Vec::new();
        while pos < snapshot.vm_state_size {
            let virt = first.saturating_mul(l1_span).saturating_add(pos);
            let l1_index = virt.checked_div(l1_span).unwrap_or(0);
            let l2_index = virt
                .checked_rem(l1_span)
                .and_then(|r| r.checked_div(cluster))
                .unwrap_or(0);
            let take = cluster.min(snapshot.vm_state_size.saturating_sub(pos));
            if l1_index >= u64::from(snapshot.l1_size) {
                return Err(Error::new(
                    ErrorKind::CountTooLarge {
                        value: l1_index,
                        max: u64::from(snapshot.l1_size),
                    },
                    l1,
                    format!("{path}.l1_size"),
                ));
            }
            let l1_at = l1.saturating_add(l1_index.saturating_mul(8));
            let l1_entry = be64(data, l1_at, &format!("{path}.l1[{l1_index}]"))?;
            let l2_table = l1_entry & L1_OFFSET_MASK;
            let chunk = if l2_table == 0 {
                None
            } else {
                let l2_at = l2_table.saturating_add(l2_index.saturating_mul(entry_len));
                let l2_path = format!("{path}.l2[{l1_index}][{l2_index}]");
                let entry = be64(data, l2_at, &l2_path)?;
                let bitmap = if self.extended_l2 {
                    be64(data, l2_at.saturating_add(8), &l2_path)?
                } else {
                    0
                };
                self.cluster_data(data, entry, bitmap, l2_at, &l2_path)?
            };
            let bytes: &[u8] = match &chunk {
                Some(bytes) => bytes,
                None => {
                    zeros.resize(cluster as usize, 0);
                    &zeros
                }
            };
            let part = bytes.get(..take as usize).ok_or_else(|| {
                Error::new(
                    ErrorKind::UnexpectedEof {
                        needed: take,
                        available: bytes.len() as u64,
                    },
                    l1_at,
                    format!("{path}.vm_state"),
                )
            })?;
            out.write_all(part)
                .map_err(|e| Error::output(e, written, "qcow2.vm_state"))?;
            written = written.saturating_add(take);
            pos = pos.saturating_add(take);
        }
        Ok(written)
    }

    /// One cluster's bytes from its L2 entry (and subcluster bitmap); `None` for a cluster
    /// that reads as zeros.
    fn cluster_data(
        &self,
        data: &[u8],
        entry: u64,
        bitmap: u64,
        at: u64,
        path: &str,
    ) -> Result<Option<Vec<u8>>> {
        let cluster = self.cluster_size;
        let cluster_bits = cluster.trailing_zeros();
        if entry & L2_COMPRESSED != 0 {
            let x = 62u32.saturating_sub(cluster_bits.saturating_sub(8));
            let low_bits = |n: u32| (1u64 << n).wrapping_sub(1);
            let offset = entry & low_bits(x);
            let sectors =
                ((entry >> x) & low_bits(cluster_bits.saturating_sub(8))).saturating_add(1);
            let len = sectors.saturating_mul(512).saturating_sub(offset & 511);
            let compressed = slice(data, offset, len)
                .or_else(|| slice(data, offset, (data.len() as u64).saturating_sub(offset)))
                .ok_or_else(|| outside_at(at, path, offset))?;
            return self.inflate(compressed, at, path).map(Some);
        }
        let host = entry & L2_OFFSET_MASK;
        if !self.extended_l2 {
            if entry & L2_ZERO != 0 || host == 0 {
                return Ok(None);
            }
            return slice(data, host, cluster)
                .map(|b| Some(b.to_vec()))
                .ok_or_else(|| outside_at(at, path, host));
        }
        // Extended L2: 32 subclusters, each allocated (low word) or zero (high word).
        let sub = cluster / 32;
        let mut out = vec![0u8; cluster as usize];
        for k in 0..32u64 {
            let allocated = bitmap & (1 << k) != 0;
            let zero = bitmap & (1 << (k | 32)) != 0;
            if zero || !allocated || host == 0 {
                continue;
            }
            let within = k.saturating_mul(sub);
            let from = host.saturating_add(within);
            let bytes = slice(data, from, sub).ok_or_else(|| outside_at(at, path, from))?;
            let start = within as usize;
            if let Some(dst) = out.get_mut(start..start.saturating_add(sub as usize)) {
                dst.copy_from_slice(bytes);
            }
        }
        Ok(Some(out))
    }

    /// A compressed cluster's bytes: raw deflate, or zstd, of exactly one cluster.
    fn inflate(&self, compressed: &[u8], at: u64, path: &str) -> Result<Vec<u8>> {
        let cluster = self.cluster_size as usize;
        let mut out = vec![0u8; cluster];
        let failed = |reason: String| {
            Error::new(
                ErrorKind::Decompress {
                    format: if self.zstd {
                        "qcow2 zstd cluster"
                    } else {
                        "qcow2 deflate cluster"
                    },
                    reason,
                },
                at,
                path,
            )
        };
        let produced = if self.zstd {
            // The compressed area is rounded up to whole sectors: zstd stops at its frame's end.
            let mut frame = zstd::stream::read::Decoder::with_buffer(compressed)
                .map_err(|e| failed(e.to_string()))?
                .single_frame();
            let mut n = 0usize;
            while let Some(rest) = out.get_mut(n..).filter(|r| !r.is_empty()) {
                match std::io::Read::read(&mut frame, rest) {
                    Ok(0) => break,
                    Ok(k) => n = n.saturating_add(k),
                    Err(e) => return Err(failed(e.to_string())),
                }
            }
            n
        } else {
            let mut inflater = flate2::Decompress::new(false);
            inflater
                .decompress(compressed, &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| failed(e.to_string()))?;
            usize::try_from(inflater.total_out()).unwrap_or(0)
        };
        if produced != cluster {
            return Err(failed(format!(
                "it inflates to {produced} bytes, not a cluster of {cluster}"
            )));
        }
        Ok(out)
    }
}

fn unsupported(offset: u64, field: &str, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported {
            what: what.to_owned(),
        },
        offset,
        field,
    )
}

fn be64(data: &[u8], at: u64, field: &str) -> Result<u64> {
    slice(data, at, 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| outside_at(at, field, at))
}

fn outside(offset: u64, field: &str, data: &[u8]) -> Error {
    Error::new(
        ErrorKind::UnexpectedEof {
            needed: 1,
            available: (data.len() as u64).saturating_sub(offset),
        },
        offset,
        field,
    )
}

/// An entry at `at` pointing to `target`, outside the file.
fn outside_at(at: u64, field: &str, target: u64) -> Error {
    Error::new(
        ErrorKind::InvalidValue {
            value: target,
            expected: "an offset inside the image file",
        },
        at,
        field,
    )
}
