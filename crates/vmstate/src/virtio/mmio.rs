//! The virtio-mmio transport's parts of the blob.
//!
//! Three registers before the common fields, a ring alignment with every queue (the guest
//! sets it in the legacy interface), nothing after each queue, and, for a device in the
//! modern (version 2) interface, the `virtio_mmio` state inside `virtio/extra_state`: the
//! driver's features and the per-queue registers of all 1024 slots.

use serde::Serialize;

use super::core::{word_pair, VIRTIO_QUEUE_MAX};
use crate::error::Result;
use crate::subsection;
use crate::wire::{Endian, Reader, Writer};

/// The registers virtio-mmio saves before the virtio core's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MmioTransport {
    /// HostFeaturesSel: which 32 bits of the device features the driver reads.
    pub host_features_sel: u32,
    /// GuestFeaturesSel: which 32 bits of the driver features the driver writes.
    pub guest_features_sel: u32,
    /// GuestPageSize as a shift (legacy interface; 0 in the modern one).
    pub guest_page_shift: u32,
}

impl MmioTransport {
    /// Reads the three registers.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        Ok(MmioTransport {
            host_features_sel: r.u32(Endian::Big, "mmio.host_features_sel")?,
            guest_features_sel: r.u32(Endian::Big, "mmio.guest_features_sel")?,
            guest_page_shift: r.u32(Endian::Big, "mmio.guest_page_shift")?,
        })
    }

    /// Writes them back.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(Endian::Big, self.host_features_sel);
        w.u32(Endian::Big, self.guest_features_sel);
        w.u32(Endian::Big, self.guest_page_shift);
    }
}

/// virtio-mmio's extra state: the `virtio_mmio` VMState and its subsection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MmioExtraState {
    /// Version of `virtio_mmio/state`, when present (devices in the modern interface).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_version: Option<u32>,
    /// The modern interface's registers, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<MmioState>,
}

/// The registers of virtio-mmio's modern interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MmioState {
    /// Driver features, low and high words.
    pub guest_features: [u32; 2],
    /// Per-queue registers of all 1024 slots.
    pub queues: Vec<MmioQueue>,
}

/// One queue's registers in the modern interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MmioQueue {
    /// QueueNum: the ring size the driver chose.
    pub num: u16,
    /// QueueReady (a byte; non-zero is true).
    pub enabled: u8,
    /// Descriptor table address, low and high words.
    pub desc: [u32; 2],
    /// Driver (avail) area address, low and high words.
    pub avail: [u32; 2],
    /// Device (used) area address, low and high words.
    pub used: [u32; 2],
}

/// Name of the VMState saved inside `virtio/extra_state`.
const VMSD: &str = "virtio_mmio";
/// Its one subsection.
const STATE: &str = "virtio_mmio/state";
/// The struct of each queue slot, peeked after as any struct array element.
const QUEUE_VMSD: &str = "virtio_mmio/queue_state";

/// Reads the `virtio_mmio` VMState inside `virtio/extra_state`.
pub fn decode_extra_state(r: &mut Reader<'_>) -> Result<MmioExtraState> {
    let mut extra = MmioExtraState {
        state_version: None,
        state: None,
    };
    let mut seen = Vec::new();
    while let Some(header) = subsection::next_subsection(r, VMSD, &[STATE])? {
        subsection::first_time(&mut seen, &header)?;
        subsection::check_version(&header, 1)?;
        let guest_features = word_pair(r, "guest_features")?;
        let mut queues = Vec::with_capacity(VIRTIO_QUEUE_MAX);
        for index in 0..VIRTIO_QUEUE_MAX {
            let mut read = || -> Result<MmioQueue> {
                Ok(MmioQueue {
                    num: r.u16(Endian::Big, "num")?,
                    enabled: r.u8("enabled")?,
                    desc: word_pair(r, "desc")?,
                    avail: word_pair(r, "avail")?,
                    used: word_pair(r, "used")?,
                })
            };
            let queue = read().map_err(|e| e.within(&format!("{STATE}.vqs[{index}]")))?;
            subsection::end_of_struct(r, QUEUE_VMSD)?;
            queues.push(queue);
        }
        subsection::end_of_struct(r, STATE)?;
        extra.state_version = Some(header.version);
        extra.state = Some(MmioState {
            guest_features,
            queues,
        });
    }
    Ok(extra)
}

/// Writes the `virtio_mmio` VMState back.
pub fn encode_extra_state(extra: &MmioExtraState, w: &mut Writer) -> Result<()> {
    if let (Some(version), Some(state)) = (extra.state_version, &extra.state) {
        subsection::write_subsection_header(w, STATE, version)?;
        for word in state.guest_features {
            w.u32(Endian::Big, word);
        }
        for q in &state.queues {
            w.u16(Endian::Big, q.num);
            w.u8(q.enabled);
            for word in q.desc.iter().chain(&q.avail).chain(&q.used) {
                w.u32(Endian::Big, *word);
            }
        }
    }
    Ok(())
}
