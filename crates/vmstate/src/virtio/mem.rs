//! virtio-mem's device state (`virtio-mem-device`): where its memory region sits in the
//! guest, how it is cut into blocks, and which blocks the guest has plugged.
//!
//! QEMU 7.2 (and 10.0 on machine types up to 7.2) saves the region's address, size, block
//! size and NUMA node first (a temporary struct its loader compares with the destination's),
//! then the usable region size, the plugged size, the requested size, and the plug bitmap: one
//! bit per block, `ceil(region_size / block_size / 64)` be64 words. QEMU 10.0 on newer machine
//! types moves the region, the plugged size and the bitmap to a section of their own
//! (`virtio-mem-device-early`, sent before RAM) and keeps only the usable and requested sizes
//! here.

use serde::Serialize;

use crate::error::{ErrorKind, Result};
use crate::stream::{StructValue, Value};
use crate::wire::{Endian, Reader, Writer};

/// virtio-mem's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemState {
    /// The region and its plug bitmap, when they travel here (not in an early section).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<MemRegion>,
    /// Bytes of the region the guest may plug.
    pub usable_region_size: u64,
    /// Bytes the host asks the guest to have plugged.
    pub requested_size: u64,
}

/// A virtio-mem device's memory region and the blocks of it that are plugged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemRegion {
    /// Guest-physical address of the region.
    pub addr: u64,
    /// Bytes of the region (its memory backend's size).
    pub region_size: u64,
    /// Bytes of one block.
    pub block_size: u64,
    /// NUMA node.
    pub node: u32,
    /// Bytes plugged.
    pub size: u64,
    /// One bit per block, set where the block is plugged.
    pub bitmap: Vec<u64>,
}

/// Which shape of the state to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemReading {
    /// Region, sizes and bitmap here.
    WithRegion,
    /// Usable and requested sizes only (the rest in `virtio-mem-device-early`).
    Early,
}

/// Reads the state in `reading`'s shape.
pub fn decode(r: &mut Reader<'_>, reading: MemReading) -> Result<MemState> {
    let region = match reading {
        MemReading::Early => None,
        MemReading::WithRegion => {
            let addr = r.u64(Endian::Big, "mem.addr")?;
            let region_size = r.u64(Endian::Big, "mem.region_size")?;
            let block_offset = r.offset();
            let block_size = r.u64(Endian::Big, "mem.block_size")?;
            if !block_size.is_power_of_two() {
                return Err(crate::Error::new(
                    ErrorKind::InvalidValue {
                        value: block_size,
                        expected: "a block size that is a power of two",
                    },
                    block_offset,
                    "mem.block_size",
                ));
            }
            let node = r.u32(Endian::Big, "mem.node")?;
            Some((addr, region_size, block_size, node))
        }
    };
    let usable_region_size = r.u64(Endian::Big, "mem.usable_region_size")?;
    let region = match region {
        None => None,
        Some((addr, region_size, block_size, node)) => {
            let size = r.u64(Endian::Big, "mem.size")?;
            let requested_size = r.u64(Endian::Big, "mem.requested_size")?;
            let blocks = region_size.checked_div(block_size).unwrap_or(0);
            let words = r.check_count(blocks.div_ceil(64), 8, "mem.bitmap")?;
            let mut bitmap = Vec::with_capacity(words);
            for _ in 0..words {
                bitmap.push(r.u64(Endian::Big, "mem.bitmap")?);
            }
            return Ok(MemState {
                region: Some(MemRegion {
                    addr,
                    region_size,
                    block_size,
                    node,
                    size,
                    bitmap,
                }),
                usable_region_size,
                requested_size,
            });
        }
    };
    Ok(MemState {
        region,
        usable_region_size,
        requested_size: r.u64(Endian::Big, "mem.requested_size")?,
    })
}

/// Writes the state back in the shape it was read in.
pub fn encode(state: &MemState, w: &mut Writer) {
    match &state.region {
        Some(region) => {
            w.u64(Endian::Big, region.addr);
            w.u64(Endian::Big, region.region_size);
            w.u64(Endian::Big, region.block_size);
            w.u32(Endian::Big, region.node);
            w.u64(Endian::Big, state.usable_region_size);
            w.u64(Endian::Big, region.size);
            w.u64(Endian::Big, state.requested_size);
            for word in &region.bitmap {
                w.u64(Endian::Big, *word);
            }
        }
        None => {
            w.u64(Endian::Big, state.usable_region_size);
            w.u64(Endian::Big, state.requested_size);
        }
    }
}

impl MemRegion {
    /// The region as QEMU 10.0 sends it in the device's early section
    /// (`<bus path>/virtio-mem-device-early`, sent before RAM): its `tmp` struct (addr,
    /// region_size, block_size, node), the plugged `size` and the `bitmap`, as the stream's
    /// description decodes them. `None` when the section does not have that shape.
    pub fn from_early_section(state: &StructValue) -> Option<MemRegion> {
        let raw = |name: &str| match &state.field(name)?.value {
            Value::Raw(bytes) => Some(bytes.as_slice()),
            _ => None,
        };
        let mut tmp = Reader::new(raw("tmp")?);
        let addr = tmp.u64(Endian::Big, "addr").ok()?;
        let region_size = tmp.u64(Endian::Big, "region_size").ok()?;
        let block_size = tmp.u64(Endian::Big, "block_size").ok()?;
        let node = tmp.u32(Endian::Big, "node").ok()?;
        let size = match &state.field("size")?.value {
            Value::Unsigned(size) => *size,
            _ => return None,
        };
        let bitmap = raw("bitmap")?
            .chunks(8)
            .map(|word| {
                word.iter()
                    .fold(0u64, |acc, &b| acc.wrapping_shl(8) | u64::from(b))
            })
            .collect();
        Some(MemRegion {
            addr,
            region_size,
            block_size: Some(block_size).filter(|b| b.is_power_of_two())?,
            node,
            size,
            bitmap,
        })
    }
}
