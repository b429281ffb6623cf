//! The transport that carried a virtio device: virtio-pci, virtio-mmio or virtio-ccw.
//!
//! A transport saves its own state in three places of the `virtio` field: before the common
//! fields (`save_config`), after each queue (`save_queue`, and a ring alignment where the
//! guest chooses it) and inside the core subsection `virtio/extra_state`. Everything else in
//! the field is the same whatever the transport, so the core, device and check layers see
//! only [`Transport`] and what it says about the queues.
//!
//! Which transport a section's device sits on is not written in its bytes; the section's
//! idstr names the bus it hangs from (`0000:00:01.0/virtio-blk`,
//! `virtio-mmio@000000000a003e00/virtio-blk`, `/fe.0.0000/virtio-blk`).

use serde::Serialize;

use super::ccw::CcwTransport;
use super::core::PciExtraState;
use super::mmio::{MmioExtraState, MmioTransport};
use super::pci::PciTransport;
use super::Inference;
use crate::error::Result;
use crate::wire::{Reader, Writer};

/// Which transport a device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// virtio-pci (conventional PCI or PCI Express).
    #[serde(rename = "virtio-pci")]
    Pci,
    /// virtio-mmio (a memory-mapped device on a system bus).
    #[serde(rename = "virtio-mmio")]
    Mmio,
    /// virtio-ccw (a channel device of s390x).
    #[serde(rename = "virtio-ccw")]
    Ccw,
}

impl TransportKind {
    /// The transport named by a section's idstr, and how that was settled; `None` when the
    /// idstr names no bus (QEMU's `format_transport_address=off`, or channel devices of old
    /// s390x machine types), which leaves it to the bytes.
    pub fn of_section(idstr: &str) -> Option<(Self, String)> {
        let (parent, _) = idstr.rsplit_once('/')?;
        if parent
            .split('/')
            .any(|part| part.starts_with("virtio-mmio@"))
        {
            return Some((
                TransportKind::Mmio,
                format!("the section's idstr {idstr:?} names a virtio-mmio bus"),
            ));
        }
        let first = parent
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        if is_ccw_bus_id(first) {
            return Some((
                TransportKind::Ccw,
                format!(
                    "the section's idstr {idstr:?} starts with a channel device number \
                     ({first})"
                ),
            ));
        }
        Some((
            TransportKind::Pci,
            format!("the section's idstr {idstr:?} names a PCI device, not a virtio-mmio or channel bus"),
        ))
    }

    /// Every transport, in the order they are tried when nothing names one.
    pub const ALL: [TransportKind; 3] =
        [TransportKind::Pci, TransportKind::Mmio, TransportKind::Ccw];

    /// The transport of a name as `--assume SECTION:transport=NAME` gives it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "pci" | "virtio-pci" => Some(TransportKind::Pci),
            "mmio" | "virtio-mmio" => Some(TransportKind::Mmio),
            "ccw" | "virtio-ccw" => Some(TransportKind::Ccw),
            _ => None,
        }
    }

    /// The transport's name as QEMU's device names use it.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Pci => "virtio-pci",
            TransportKind::Mmio => "virtio-mmio",
            TransportKind::Ccw => "virtio-ccw",
        }
    }
}

/// `cssid.ssid.devno` in hexadecimal, as the virtual channel subsystem bus names devices.
fn is_ccw_bus_id(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    let hex = |s: &&str, max: usize| {
        !s.is_empty() && s.len() <= max && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    matches!(parts.as_slice(), [c, s, d] if hex(c, 2) && hex(s, 1) && d.len() == 4 && hex(d, 4))
}

/// The transport's state before the common fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum Transport {
    /// virtio-pci: config space, IRQ state, MSI-X.
    #[serde(rename = "virtio-pci")]
    Pci(PciTransport),
    /// virtio-mmio: three registers.
    #[serde(rename = "virtio-mmio")]
    Mmio(MmioTransport),
    /// virtio-ccw: the channel device and its subchannel.
    #[serde(rename = "virtio-ccw")]
    Ccw(CcwTransport),
}

/// What a transport adds to each saved queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueExtras {
    /// A be32 ring alignment after the ring size (the guest chooses it).
    pub align: bool,
    /// A be16 vector after the queue's fields.
    pub vector: bool,
}

/// A transport's state inside the core subsection `virtio/extra_state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TransportExtra {
    /// The `virtio_pci` VMState.
    Pci(PciExtraState),
    /// The `virtio_mmio` VMState.
    Mmio(MmioExtraState),
}

impl Transport {
    /// Reads the transport's part before the common fields.
    pub fn decode(
        kind: TransportKind,
        r: &mut Reader<'_>,
        inferred: &mut Vec<Inference>,
    ) -> Result<Self> {
        Ok(match kind {
            TransportKind::Pci => Transport::Pci(PciTransport::decode(r, inferred)?),
            TransportKind::Mmio => Transport::Mmio(MmioTransport::decode(r)?),
            TransportKind::Ccw => Transport::Ccw(CcwTransport::decode(r, inferred)?),
        })
    }

    /// Writes it back.
    pub fn encode(&self, w: &mut Writer) -> Result<()> {
        match self {
            Transport::Pci(pci) => pci.encode(w),
            Transport::Mmio(mmio) => mmio.encode(w),
            Transport::Ccw(ccw) => ccw.encode(w)?,
        }
        Ok(())
    }

    /// Which transport this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            Transport::Pci(_) => TransportKind::Pci,
            Transport::Mmio(_) => TransportKind::Mmio,
            Transport::Ccw(_) => TransportKind::Ccw,
        }
    }

    /// What the transport saves with each queue.
    pub fn queue_extras(&self) -> QueueExtras {
        match self {
            Transport::Pci(pci) => QueueExtras {
                align: false,
                vector: pci.has_vectors(),
            },
            Transport::Mmio(_) => QueueExtras {
                align: true,
                vector: false,
            },
            Transport::Ccw(_) => QueueExtras {
                align: false,
                vector: true,
            },
        }
    }

    /// The virtio-pci state, when the device is on PCI.
    pub fn pci(&self) -> Option<&PciTransport> {
        match self {
            Transport::Pci(pci) => Some(pci),
            _ => None,
        }
    }
}
