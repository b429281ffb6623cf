//! The subsections of the virtio core's `virtio` VMState, saved after the device's own state.

use serde::Serialize;

use super::mmio;
use super::transport::{TransportExtra, TransportKind};
use crate::error::Result;
use crate::subsection::{self, SubsectionHeader};
use crate::wire::{Endian, Reader, Writer};

/// Entries of the per-queue arrays in the core subsections: QEMU's `VIRTIO_QUEUE_MAX`,
/// whatever the number of queues the device has.
pub const VIRTIO_QUEUE_MAX: usize = 1024;

/// Name of the VMState whose subsections these are.
pub const VMSD: &str = "virtio";

/// Every subsection the `virtio` VMState has, in the order QEMU writes them.
pub(crate) const KNOWN: &[&str] = &[
    "virtio/device_endian",
    "virtio/128bit_features",
    "virtio/64bit_features",
    "virtio/virtqueues",
    "virtio/ringsize",
    "virtio/broken",
    "virtio/extra_state",
    "virtio/started",
    "virtio/packed_virtqueues",
    "virtio/disabled",
];

/// One core subsection as it appeared in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoreSubsection {
    /// Offset of its 0x05 marker.
    pub offset: u64,
    /// The version written in the stream.
    pub version: u32,
    /// Its state.
    #[serde(flatten)]
    pub state: CoreState,
}

/// The state of one core subsection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "name", content = "state")]
pub enum CoreState {
    /// `virtio/device_endian`: 0 unknown, 1 little, 2 big.
    #[serde(rename = "virtio/device_endian")]
    DeviceEndian(u8),
    /// `virtio/128bit_features`: guest feature bits 64 to 127.
    #[serde(rename = "virtio/128bit_features")]
    Features128(u64),
    /// `virtio/64bit_features`: guest feature bits 0 to 63.
    #[serde(rename = "virtio/64bit_features")]
    Features64(u64),
    /// `virtio/virtqueues`: avail and used ring addresses of all 1024 queue slots.
    #[serde(rename = "virtio/virtqueues")]
    Virtqueues(Vec<RingAddresses>),
    /// `virtio/ringsize`: the default ring size of all 1024 queue slots.
    #[serde(rename = "virtio/ringsize")]
    RingSize(Vec<u32>),
    /// `virtio/broken`: the device was marked broken (a byte; non-zero is true).
    #[serde(rename = "virtio/broken")]
    Broken(u8),
    /// `virtio/extra_state`: the transport's own state.
    #[serde(rename = "virtio/extra_state")]
    ExtraState(TransportExtra),
    /// `virtio/started` (a byte; non-zero is true).
    #[serde(rename = "virtio/started")]
    Started(u8),
    /// `virtio/packed_virtqueues`: packed-ring indices of all 1024 queue slots.
    #[serde(rename = "virtio/packed_virtqueues")]
    PackedVirtqueues(Vec<PackedQueueState>),
    /// `virtio/disabled` (a byte; non-zero is true).
    #[serde(rename = "virtio/disabled")]
    Disabled(u8),
}

/// Avail and used ring addresses of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RingAddresses {
    /// Guest-physical address of the avail (driver) ring.
    pub avail: u64,
    /// Guest-physical address of the used (device) ring.
    pub used: u64,
}

/// Indices of one packed-ring queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PackedQueueState {
    /// Next descriptor the device will read.
    pub last_avail_idx: u16,
    /// Wrap counter that goes with `last_avail_idx` (a byte; non-zero is true).
    pub last_avail_wrap_counter: u8,
    /// Next descriptor the device will write back.
    pub used_idx: u16,
    /// Wrap counter that goes with `used_idx`.
    pub used_wrap_counter: u8,
    /// Requests popped and not yet returned.
    pub inuse: u32,
}

/// virtio-pci's extra state: the `virtio_pci` VMState and its subsections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciExtraState {
    /// Version of `virtio_pci/modern_state`, when it is present (modern devices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modern_version: Option<u32>,
    /// The modern interface's registers, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modern: Option<ModernState>,
}

/// The registers of virtio-pci's modern interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModernState {
    /// Device feature select register.
    pub dfselect: u32,
    /// Guest (driver) feature select register.
    pub gfselect: u32,
    /// Guest features, low and high words.
    pub guest_features: [u32; 2],
    /// Per-queue registers of all 1024 slots.
    pub queues: Vec<ModernQueue>,
}

/// One queue's registers in the modern interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ModernQueue {
    /// Queue size the driver chose.
    pub num: u16,
    /// Queue enable register.
    pub enabled: u16,
    /// Descriptor table address, low and high words.
    pub desc: [u32; 2],
    /// Avail ring address, low and high words.
    pub avail: [u32; 2],
    /// Used ring address, low and high words.
    pub used: [u32; 2],
}

/// Reads the core subsections of a device on `transport`; stops at the first bytes that are
/// not one.
pub fn decode(r: &mut Reader<'_>, transport: TransportKind) -> Result<Vec<CoreSubsection>> {
    let mut found = Vec::new();
    let mut seen = Vec::new();
    while let Some(header) = subsection::next_subsection(r, VMSD, KNOWN)? {
        subsection::first_time(&mut seen, &header)?;
        subsection::check_version(&header, 1)?;
        let state = decode_state(r, &header, transport).map_err(|e| e.within(header.name))?;
        subsection::end_of_struct(r, header.name)?;
        found.push(CoreSubsection {
            offset: header.offset,
            version: header.version,
            state,
        });
    }
    Ok(found)
}

fn decode_state(
    r: &mut Reader<'_>,
    header: &SubsectionHeader<'_>,
    transport: TransportKind,
) -> Result<CoreState> {
    Ok(match header.name {
        "virtio/device_endian" => CoreState::DeviceEndian(r.u8("device_endian")?),
        "virtio/128bit_features" => CoreState::Features128(r.u64(Endian::Big, "guest_features")?),
        "virtio/64bit_features" => CoreState::Features64(r.u64(Endian::Big, "guest_features")?),
        "virtio/virtqueues" => CoreState::Virtqueues(per_queue(r, "virtqueue_state", |r| {
            Ok(RingAddresses {
                avail: r.u64(Endian::Big, "vring.avail")?,
                used: r.u64(Endian::Big, "vring.used")?,
            })
        })?),
        "virtio/ringsize" => CoreState::RingSize(per_queue(r, "ringsize_state", |r| {
            r.u32(Endian::Big, "vring.num_default")
        })?),
        "virtio/broken" => CoreState::Broken(r.u8("broken")?),
        "virtio/extra_state" => CoreState::ExtraState(match transport {
            TransportKind::Pci => TransportExtra::Pci(decode_extra_state(r)?),
            TransportKind::Mmio => TransportExtra::Mmio(mmio::decode_extra_state(r)?),
            // virtio-ccw has no extra state: QEMU's loader has nothing to read it with.
            TransportKind::Ccw => {
                return Err(crate::Error::new(
                    crate::ErrorKind::UnknownSubsection {
                        name: header.name.to_owned(),
                        parent: format!("{VMSD} (on virtio-ccw, which has no extra state)"),
                    },
                    header.offset,
                    "subsection",
                ))
            }
        }),
        "virtio/started" => CoreState::Started(r.u8("started")?),
        "virtio/packed_virtqueues" => {
            CoreState::PackedVirtqueues(per_queue(r, "packed_virtqueue_state", |r| {
                Ok(PackedQueueState {
                    last_avail_idx: r.u16(Endian::Big, "last_avail_idx")?,
                    last_avail_wrap_counter: r.u8("last_avail_wrap_counter")?,
                    used_idx: r.u16(Endian::Big, "used_idx")?,
                    used_wrap_counter: r.u8("used_wrap_counter")?,
                    inuse: r.u32(Endian::Big, "inuse")?,
                })
            })?)
        }
        "virtio/disabled" => CoreState::Disabled(r.u8("disabled")?),
        // `next_subsection` returns only names from KNOWN, all matched above.
        other => {
            return Err(crate::Error::new(
                crate::ErrorKind::UnknownSubsection {
                    name: other.to_owned(),
                    parent: VMSD.to_owned(),
                },
                header.offset,
                "subsection",
            ))
        }
    })
}

/// Reads a 1024-entry array of structs, peeking for subsections after each entry as QEMU
/// does.
fn per_queue<T>(
    r: &mut Reader<'_>,
    vmsd: &str,
    mut entry: impl FnMut(&mut Reader<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut entries = Vec::with_capacity(VIRTIO_QUEUE_MAX);
    for index in 0..VIRTIO_QUEUE_MAX {
        let value = entry(r).map_err(|e| e.within(&format!("vq[{index}]")))?;
        subsection::end_of_struct(r, vmsd)?;
        entries.push(value);
    }
    Ok(entries)
}

/// Reads the `virtio_pci` VMState: no fields, one optional subsection.
fn decode_extra_state(r: &mut Reader<'_>) -> Result<PciExtraState> {
    let mut extra = PciExtraState {
        modern_version: None,
        modern: None,
    };
    let mut seen = Vec::new();
    while let Some(header) =
        subsection::next_subsection(r, "virtio_pci", &["virtio_pci/modern_state"])?
    {
        subsection::first_time(&mut seen, &header)?;
        subsection::check_version(&header, 1)?;
        let mut words = || r.u32(Endian::Big, "modern_state");
        let (dfselect, gfselect, low, high) = (words()?, words()?, words()?, words()?);
        // Written by a custom function, not as a struct array: no peeks between queues.
        let mut queues = Vec::with_capacity(VIRTIO_QUEUE_MAX);
        for _ in 0..VIRTIO_QUEUE_MAX {
            queues.push(ModernQueue {
                num: r.u16(Endian::Big, "modern_state.num")?,
                enabled: r.u16(Endian::Big, "modern_state.enabled")?,
                desc: word_pair(r, "modern_state.desc")?,
                avail: word_pair(r, "modern_state.avail")?,
                used: word_pair(r, "modern_state.used")?,
            });
        }
        subsection::end_of_struct(r, header.name)?;
        extra.modern_version = Some(header.version);
        extra.modern = Some(ModernState {
            dfselect,
            gfselect,
            guest_features: [low, high],
            queues,
        });
    }
    Ok(extra)
}

/// Reads an address split into low and high 32-bit words.
pub(super) fn word_pair(r: &mut Reader<'_>, field: &str) -> Result<[u32; 2]> {
    Ok([r.u32(Endian::Big, field)?, r.u32(Endian::Big, field)?])
}

/// Writes the core subsections back in the order they were read.
pub fn encode(subsections: &[CoreSubsection], w: &mut Writer) -> Result<()> {
    for sub in subsections {
        subsection::write_subsection_header(w, sub.state.name(), sub.version)?;
        match &sub.state {
            CoreState::DeviceEndian(v)
            | CoreState::Broken(v)
            | CoreState::Started(v)
            | CoreState::Disabled(v) => w.u8(*v),
            CoreState::Features128(v) | CoreState::Features64(v) => w.u64(Endian::Big, *v),
            CoreState::Virtqueues(queues) => {
                for q in queues {
                    w.u64(Endian::Big, q.avail);
                    w.u64(Endian::Big, q.used);
                }
            }
            CoreState::RingSize(sizes) => {
                for size in sizes {
                    w.u32(Endian::Big, *size);
                }
            }
            CoreState::PackedVirtqueues(queues) => {
                for q in queues {
                    w.u16(Endian::Big, q.last_avail_idx);
                    w.u8(q.last_avail_wrap_counter);
                    w.u16(Endian::Big, q.used_idx);
                    w.u8(q.used_wrap_counter);
                    w.u32(Endian::Big, q.inuse);
                }
            }
            CoreState::ExtraState(TransportExtra::Mmio(extra)) => {
                mmio::encode_extra_state(extra, w)?
            }
            CoreState::ExtraState(TransportExtra::Pci(extra)) => {
                if let (Some(version), Some(modern)) = (extra.modern_version, &extra.modern) {
                    subsection::write_subsection_header(w, "virtio_pci/modern_state", version)?;
                    w.u32(Endian::Big, modern.dfselect);
                    w.u32(Endian::Big, modern.gfselect);
                    w.u32(Endian::Big, modern.guest_features[0]);
                    w.u32(Endian::Big, modern.guest_features[1]);
                    for q in &modern.queues {
                        w.u16(Endian::Big, q.num);
                        w.u16(Endian::Big, q.enabled);
                        for word in q.desc.iter().chain(&q.avail).chain(&q.used) {
                            w.u32(Endian::Big, *word);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

impl CoreState {
    /// The subsection's name in the stream.
    pub fn name(&self) -> &'static str {
        match self {
            CoreState::DeviceEndian(_) => "virtio/device_endian",
            CoreState::Features128(_) => "virtio/128bit_features",
            CoreState::Features64(_) => "virtio/64bit_features",
            CoreState::Virtqueues(_) => "virtio/virtqueues",
            CoreState::RingSize(_) => "virtio/ringsize",
            CoreState::Broken(_) => "virtio/broken",
            CoreState::ExtraState(_) => "virtio/extra_state",
            CoreState::Started(_) => "virtio/started",
            CoreState::PackedVirtqueues(_) => "virtio/packed_virtqueues",
            CoreState::Disabled(_) => "virtio/disabled",
        }
    }
}
