//! virtio device state: the opaque `virtio` field of a device section, decoded.
//!
//! QEMU saves each virtio device as one field whose bytes no description covers: the
//! transport's state (virtio-pci), the common device fields, every virtqueue, the device's own
//! state (for virtio-blk, the requests in flight), and the core subsections. Nothing in it
//! carries a length, and some of its shape depends on device properties that the stream does
//! not hold. Where the bytes themselves settle such a fact, the decoder reads it from them;
//! where they do not, it tries every reading and keeps the one under which the whole field
//! parses and agrees with itself, and it records each such fact as an [`Inference`] saying how
//! it was settled. A fact that stays open is an error naming the `--assume` that settles it.
//!
//! Encoding the decoded state gives back the original bytes.

mod balloon;
mod blk;
mod ccw;
mod core;
mod edit;
mod framing;
mod json;
mod mem;
mod mmio;
pub mod net;
mod pci;
pub mod scsi;
mod serial;
mod transport;

pub use self::balloon::{BalloonState, BalloonSubsection};
pub use self::blk::{BlkRequest, BlkState};
pub use self::ccw::CcwTransport;
pub(crate) use self::core::KNOWN as CORE_SUBSECTIONS;
pub use self::core::{
    CoreState, CoreSubsection, ModernQueue, ModernState, PackedQueueState, PciExtraState,
    RingAddresses, VIRTIO_QUEUE_MAX,
};
pub use self::edit::{parse_path, set_scsi, Step};
pub use self::framing::{Framing, InFlight, NdescsOrder};
pub use self::mem::{MemRegion, MemState};
pub use self::mmio::{MmioExtraState, MmioQueue, MmioState, MmioTransport};
pub use self::net::{MacTable, NetQueuePairs, NetState, NetSubsection, RssState};
pub use self::pci::{MsixState, PciShape, PciTransport, NO_VECTOR};
pub use self::serial::{queue_role, transmit_queue, PoppedElement, SerialPort, SerialState};
pub use self::transport::{QueueExtras, Transport, TransportExtra, TransportKind};

use serde::Serialize;

pub use crate::hex::HexBytes;

use crate::element::LayoutChoice;
use crate::error::{Error, ErrorKind, Result};
use crate::note::Note;
use crate::subsection;
use crate::wire::{Endian, Reader, Writer};

/// A fact the stream does not state, and how the decoder settled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inference {
    /// What the fact is about (a field path).
    pub subject: String,
    /// The fact.
    pub fact: String,
    /// How it was settled.
    pub how: String,
}

impl Inference {
    /// A fact about `subject`, settled as `how` says.
    pub fn new(subject: &str, fact: impl Into<String>, how: impl Into<String>) -> Self {
        Inference {
            subject: subject.to_owned(),
            fact: fact.into(),
            how: how.into(),
        }
    }
}

/// Which virtio device a section holds, from its VMState name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// `virtio-blk`.
    Blk,
    /// `virtio-scsi`.
    Scsi,
    /// `virtio-rng`.
    Rng,
    /// `virtio-net`.
    Net,
    /// `virtio-console` (virtio-serial).
    Serial,
    /// `virtio-balloon`.
    Balloon,
    /// `virtio-mem`.
    Mem,
    /// Any other virtio device; its own state is not decoded yet.
    Other(String),
}

impl DeviceKind {
    /// The section's VMState name for this kind of device (`virtio-blk`, `virtio-console`...).
    pub fn vmsd_name(&self) -> &str {
        match self {
            DeviceKind::Blk => "virtio-blk",
            DeviceKind::Scsi => "virtio-scsi",
            DeviceKind::Rng => "virtio-rng",
            DeviceKind::Net => "virtio-net",
            DeviceKind::Serial => "virtio-console",
            DeviceKind::Balloon => "virtio-balloon",
            DeviceKind::Mem => "virtio-mem",
            DeviceKind::Other(name) => name,
        }
    }

    /// True for devices whose `virtio` field holds nothing of their own between the queues
    /// and the core subsections (QEMU's sections of these names have neither a legacy save
    /// function nor a device VMState): virtio-scsi and -rng, virtio-gpu (its resources travel
    /// in a field of their own after `virtio`), virtio-input, virtio-9p, vhost-vsock,
    /// vhost-user-blk, vhost-user-fs, vhost-scsi.
    pub fn saves_no_own_state(&self) -> bool {
        match self {
            DeviceKind::Scsi | DeviceKind::Rng => true,
            DeviceKind::Other(name) => matches!(
                name.as_str(),
                "virtio-gpu"
                    | "virtio-input"
                    | "virtio-9p"
                    | "virtio-vhost_vsock"
                    | "vhost-user-blk"
                    | "vhost-user-fs"
                    | "virtio-vhost_scsi"
            ),
            _ => false,
        }
    }

    /// The device a section's VMState name (`virtio-blk`, ...) stands for.
    pub fn from_vmsd_name(name: &str) -> Self {
        match name {
            "virtio-blk" => DeviceKind::Blk,
            "virtio-scsi" => DeviceKind::Scsi,
            "virtio-rng" => DeviceKind::Rng,
            "virtio-net" => DeviceKind::Net,
            "virtio-console" => DeviceKind::Serial,
            "virtio-balloon" => DeviceKind::Balloon,
            "virtio-mem" => DeviceKind::Mem,
            other => DeviceKind::Other(other.to_owned()),
        }
    }
}

/// Facts about the device that a user states because the stream does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Assumptions {
    /// The device's `num-queues` property (for virtio-net: its number of queue pairs).
    pub num_queues: Option<u32>,
    /// The device's `packed` property (packed rings offered).
    pub packed: Option<bool>,
    /// Where `ndescs` stands relative to the element, when `packed` is on.
    pub ndescs_order: Option<NdescsOrder>,
    /// Host layout of the in-flight elements.
    pub layout: LayoutChoice,
    /// The transport, when the section's idstr does not name it.
    pub transport: Option<TransportKind>,
    /// The byte order of the machine's guests after reset (from the stream's machine type),
    /// which legacy devices use unless `virtio/device_endian` says otherwise.
    pub machine_endian: Option<Endian>,
}

/// One virtqueue's saved fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueState {
    /// Ring size.
    pub num: u32,
    /// Ring alignment, on transports where the guest chooses it (virtio-mmio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub align: Option<u32>,
    /// Guest-physical address of the descriptor table (0: not set up).
    pub desc: u64,
    /// Next avail-ring entry the device will read.
    pub last_avail_idx: u16,
    /// The queue's vector: MSI-X (virtio-pci with MSI-X) or the queue's indicator bit
    /// (virtio-ccw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<u16>,
}

/// What a device saves between its queues and the core subsections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DeviceState {
    /// Nothing (virtio-scsi, virtio-rng).
    Empty,
    /// virtio-blk's request list.
    Blk(BlkState),
    /// virtio-net's device VMState.
    Net(NetState),
    /// virtio-serial's ports.
    Serial(SerialState),
    /// virtio-balloon's device VMState.
    Balloon(BalloonState),
    /// virtio-mem's device VMState.
    Mem(MemState),
    /// Not decoded: the device's own state as it was (the core subsections after it are
    /// read).
    Opaque {
        /// The bytes.
        bytes: HexBytes,
    },
}

/// A virtio device's state, decoded from its `virtio` field.
///
/// Its JSON form (`Serialize`) is the one `dump --json` shows; see the `json` module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioDevice {
    /// Which device this is.
    pub kind: DeviceKind,
    /// The transport's state.
    pub transport: Transport,
    /// Device status register.
    pub status: u8,
    /// Interrupt status register.
    pub isr: u8,
    /// Queue select register.
    pub queue_sel: u16,
    /// Guest features, bits 0 to 31 (the rest is in `virtio/64bit_features`).
    pub guest_features_low: u32,
    /// The device's config space as cached by the device.
    pub config: HexBytes,
    /// The queues, in index order (those with a non-zero size).
    pub queues: Vec<QueueState>,
    /// The device's own state.
    pub device: DeviceState,
    /// The core subsections, in stream order.
    pub subsections: Vec<CoreSubsection>,
    /// Facts the stream does not state, and how they were settled.
    pub inferred: Vec<Inference>,
    /// Facts about the bytes that are not defects.
    pub notes: Vec<Note>,
    /// The byte order of the machine's guests after reset, when the stream says which
    /// machine it is (see [`Assumptions::machine_endian`]).
    pub machine_endian: Option<Endian>,
}

/// The bit of `VIRTIO_F_VERSION_1` in the feature words.
const VERSION_1: u64 = 1 << 32;

impl VirtioDevice {
    /// The byte order of the device's config space and rings, and how it follows: VIRTIO 1
    /// devices are little-endian; legacy ones use the guest's byte order, which
    /// `virtio/device_endian` states when it differs from the machine's default.
    pub fn byte_order(&self) -> Option<(Endian, &'static str)> {
        if self.guest_features() & VERSION_1 != 0 {
            return Some((
                Endian::Little,
                "the driver negotiated VIRTIO 1: little-endian",
            ));
        }
        let saved = self.subsections.iter().find_map(|s| match s.state {
            CoreState::DeviceEndian(e) => Some(e),
            _ => None,
        });
        match saved {
            Some(1) => Some((
                Endian::Little,
                "legacy device: virtio/device_endian says little",
            )),
            Some(2) => Some((Endian::Big, "legacy device: virtio/device_endian says big")),
            _ => self.machine_endian.map(|e| {
                (
                    e,
                    match e {
                        Endian::Big => "legacy device: the machine's default, big-endian",
                        Endian::Little => "legacy device: the machine's default, little-endian",
                    },
                )
            }),
        }
    }

    /// Decodes the whole `virtio` field in `blob` of a device of `kind` on a PCI transport.
    pub fn decode(blob: &mut Reader<'_>, kind: DeviceKind, assume: &Assumptions) -> Result<Self> {
        Self::decode_on(blob, kind, TransportKind::Pci, assume)
    }

    /// Decodes the whole `virtio` field in `blob` of a device of `kind` on `transport` (see
    /// [`TransportKind::of_section`]).
    ///
    /// `blob` must hold exactly the field (the description's size of it): the decoder uses its
    /// end to tell readings apart. Offsets in errors and notes are those of the reader.
    pub fn decode_on(
        blob: &mut Reader<'_>,
        kind: DeviceKind,
        transport: TransportKind,
        assume: &Assumptions,
    ) -> Result<Self> {
        let mut inferred = Vec::new();
        let transport = Transport::decode(transport, blob, &mut inferred)?;
        let extras = transport.queue_extras();
        let status = blob.u8("status")?;
        let isr = blob.u8("isr")?;
        let queue_sel_offset = blob.offset();
        let queue_sel = blob.u16(Endian::Big, "queue_sel")?;
        if usize::from(queue_sel) >= VIRTIO_QUEUE_MAX {
            return Err(Error::new(
                ErrorKind::CountTooLarge {
                    value: u64::from(queue_sel),
                    max: (VIRTIO_QUEUE_MAX as u64).saturating_sub(1),
                },
                queue_sel_offset,
                "queue_sel",
            ));
        }
        let guest_features_low = blob.u32(Endian::Big, "guest_features")?;
        let config_len_offset = blob.offset();
        let config_len = blob.i32(Endian::Big, "config_len")?;
        let config_len = usize::try_from(config_len).map_err(|_| {
            Error::new(
                ErrorKind::InvalidValue {
                    value: u64::from(config_len.unsigned_abs()),
                    expected: "a config length of at least 0 (it is negative)",
                },
                config_len_offset,
                "config_len",
            )
        })?;
        let config = HexBytes(blob.bytes(config_len, "config")?.to_vec());
        let num_queues_offset = blob.offset();
        let num_queues = u64::from(blob.u32(Endian::Big, "num_queues")?);
        if num_queues > VIRTIO_QUEUE_MAX as u64 {
            return Err(Error::new(
                ErrorKind::CountTooLarge {
                    value: num_queues,
                    max: VIRTIO_QUEUE_MAX as u64,
                },
                num_queues_offset,
                "num_queues",
            ));
        }
        let queue_size: u64 = match (extras.vector, extras.align) {
            (false, false) => 14,
            (true, false) => 16,
            (false, true) => 18,
            (true, true) => 20,
        };
        let num_queues = blob.check_count(num_queues, queue_size, "num_queues")?;
        let mut queues = Vec::with_capacity(num_queues);
        for index in 0..num_queues {
            let path = format!("vq[{index}]");
            let mut read = || -> Result<QueueState> {
                Ok(QueueState {
                    num: blob.u32(Endian::Big, "num")?,
                    align: match extras.align {
                        true => Some(blob.u32(Endian::Big, "align")?),
                        false => None,
                    },
                    desc: blob.u64(Endian::Big, "desc")?,
                    last_avail_idx: blob.u16(Endian::Big, "last_avail_idx")?,
                    vector: match extras.vector {
                        true => Some(blob.u16(Endian::Big, "vector")?),
                        false => None,
                    },
                })
            };
            queues.push(read().map_err(|e| e.within(&path))?);
        }

        let common = Common {
            kind,
            machine_endian: assume.machine_endian,
            transport,
            status,
            isr,
            queue_sel,
            guest_features_low,
            config,
            queues,
        };
        common.decode_device(blob, assume, inferred)
    }

    /// Writes the `virtio` field back, with the framing the device was read with.
    pub fn encode(&self, w: &mut Writer) -> Result<()> {
        self.encode_with(w, self.framing())
    }

    /// The framing the device's in-flight elements were read with (virtio-blk, virtio-serial).
    pub fn framing(&self) -> Option<Framing> {
        match &self.device {
            DeviceState::Blk(blk) => Some(blk.framing),
            DeviceState::Serial(serial) => Some(serial.framing),
            _ => None,
        }
    }

    /// Writes the `virtio` field back; `framing` (devices with elements only) replaces the
    /// one the elements were read with, to change their layout or where `ndescs` stands.
    pub fn encode_with(&self, w: &mut Writer, framing: Option<Framing>) -> Result<()> {
        self.validate_with(framing)
            .map_err(|e| Error::new(e.kind().clone(), w.offset(), e.path().to_owned()))?;
        self.transport.encode(w)?;
        w.u8(self.status);
        w.u8(self.isr);
        w.u16(Endian::Big, self.queue_sel);
        w.u32(Endian::Big, self.guest_features_low);
        let config_len = i32::try_from(self.config.0.len()).map_err(|_| {
            Error::new(
                ErrorKind::ValueTooWide {
                    value: self.config.0.len() as u64,
                    bits: 31,
                },
                w.offset(),
                "config_len",
            )
        })?;
        w.i32(Endian::Big, config_len);
        w.bytes(&self.config.0);
        // At most 1024 queues were decoded.
        w.u32(
            Endian::Big,
            u32::try_from(self.queues.len()).unwrap_or(u32::MAX),
        );
        for q in &self.queues {
            w.u32(Endian::Big, q.num);
            if let Some(align) = q.align {
                w.u32(Endian::Big, align);
            }
            w.u64(Endian::Big, q.desc);
            w.u16(Endian::Big, q.last_avail_idx);
            if let Some(vector) = q.vector {
                w.u16(Endian::Big, vector);
            }
        }
        match &self.device {
            DeviceState::Empty => {}
            DeviceState::Blk(blk) => blk::encode(blk, framing.unwrap_or(blk.framing), w)?,
            DeviceState::Net(net) => net::encode(net, w)?,
            DeviceState::Serial(serial) => {
                serial::encode(serial, framing.unwrap_or(serial.framing), w)?
            }
            DeviceState::Balloon(balloon) => balloon::encode(balloon, w)?,
            DeviceState::Mem(state) => mem::encode(state, w),
            DeviceState::Opaque { bytes } => w.bytes(&bytes.0),
        }
        core::encode(&self.subsections, w)
    }

    /// Checks that the device is one the decoder reads back as itself: at most 1024 queues, a
    /// queue selector below that, a transport whose parts agree with its config space, a
    /// vector with each queue exactly when the transport saves vectors (virtio-pci with MSI-X,
    /// virtio-ccw) and a ring alignment exactly on virtio-mmio, and every in-flight request
    /// carrying the queue index and `ndescs` its framing writes. [`Self::encode`] refuses a
    /// device that fails, naming the field: a device built by hand cannot be written into
    /// bytes that do not decode.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(self.framing())
    }

    fn validate_with(&self, framing: Option<Framing>) -> Result<()> {
        let fail = |path: String, reason: String| {
            Err(Error::new(ErrorKind::Inconsistent { reason }, 0, path))
        };
        if self.queues.len() > VIRTIO_QUEUE_MAX {
            return fail(
                "queues".to_owned(),
                format!("{} queues, more than {VIRTIO_QUEUE_MAX}", self.queues.len()),
            );
        }
        if usize::from(self.queue_sel) >= VIRTIO_QUEUE_MAX {
            return fail(
                "queue_sel".to_owned(),
                format!(
                    "queue_sel {} is not below {VIRTIO_QUEUE_MAX}",
                    self.queue_sel
                ),
            );
        }
        if let Transport::Pci(pci) = &self.transport {
            if let Err(reason) = pci.validate() {
                return fail("pci".to_owned(), reason);
            }
        }
        let extras = self.transport.queue_extras();
        for (k, q) in self.queues.iter().enumerate() {
            if q.vector.is_some() != extras.vector {
                return fail(
                    format!("vq[{k}].vector"),
                    format!(
                        "{} on {}: a queue has a vector exactly when the transport saves \
                         vectors (virtio-pci with MSI-X, virtio-ccw)",
                        if q.vector.is_some() {
                            "a vector"
                        } else {
                            "no vector"
                        },
                        self.transport.kind().name()
                    ),
                );
            }
            if q.align.is_some() != extras.align {
                return fail(
                    format!("vq[{k}].align"),
                    format!(
                        "{} on {}: a queue has a ring alignment exactly on virtio-mmio",
                        if q.align.is_some() {
                            "an alignment"
                        } else {
                            "no alignment"
                        },
                        self.transport.kind().name()
                    ),
                );
            }
        }
        let requests = match &self.device {
            DeviceState::Blk(blk) => blk.requests.iter().collect::<Vec<_>>(),
            DeviceState::Serial(serial) => serial
                .ports
                .iter()
                .filter_map(|p| p.popped.as_ref().map(|p| &p.element))
                .collect(),
            _ => Vec::new(),
        };
        if let Some(framing) = framing {
            for (k, r) in requests.iter().enumerate() {
                if framing.queue_index && r.queue.is_none() {
                    return fail(
                        format!("requests[{k}].queue"),
                        "no queue index, which the framing writes with each request".to_owned(),
                    );
                }
                if let Some(queue) = r.queue.filter(|_| framing.queue_index) {
                    if usize::try_from(queue).map_or(true, |q| q >= self.queues.len()) {
                        return fail(
                            format!("requests[{k}].queue"),
                            format!(
                                "queue {queue} of a device with {} queues",
                                self.queues.len()
                            ),
                        );
                    }
                }
                if framing.ndescs != NdescsOrder::Absent && r.ndescs.is_none() {
                    return fail(
                        format!("requests[{k}].ndescs"),
                        "no ndescs, which the framing writes with each request".to_owned(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Gives every subsection that a QEMU release misnamed (so that no QEMU loads it) the
    /// name QEMU's loaders read; returns each renaming as (the name written, the new name).
    /// Encoding the device afterwards writes the mended names.
    pub fn mend_names(&mut self) -> Vec<(&'static str, &'static str)> {
        match &mut self.device {
            DeviceState::Balloon(balloon) => balloon.mend_names(),
            _ => Vec::new(),
        }
    }

    /// True when the core subsections include `virtio/packed_virtqueues`, which QEMU sends
    /// exactly when the device offers packed rings.
    pub fn offers_packed_rings(&self) -> bool {
        self.subsections
            .iter()
            .any(|s| matches!(s.state, CoreState::PackedVirtqueues(_)))
    }

    /// True when the driver negotiated packed rings (`VIRTIO_F_RING_PACKED`): what the rings
    /// in guest memory are. A device may offer packed rings to a driver that drives split
    /// ones (firmware does), so the offer alone says nothing about the rings.
    pub fn uses_packed_rings(&self) -> bool {
        const RING_PACKED: u64 = 1 << 34;
        self.guest_features() & RING_PACKED != 0
    }

    /// The avail and used ring addresses of queue `index`, from `virtio/virtqueues`.
    pub fn ring_addresses(&self, index: usize) -> Option<RingAddresses> {
        self.subsections.iter().find_map(|s| match &s.state {
            CoreState::Virtqueues(rings) => rings.get(index).copied(),
            _ => None,
        })
    }
}

/// The part of a device every virtio device has, read before its own state.
struct Common {
    kind: DeviceKind,
    machine_endian: Option<Endian>,
    transport: Transport,
    status: u8,
    isr: u8,
    queue_sel: u16,
    guest_features_low: u32,
    config: HexBytes,
    queues: Vec<QueueState>,
}

impl Common {
    fn finish(
        self,
        device: DeviceState,
        subsections: Vec<CoreSubsection>,
        inferred: Vec<Inference>,
        notes: Vec<Note>,
    ) -> VirtioDevice {
        let mut device = VirtioDevice {
            kind: self.kind,
            transport: self.transport,
            status: self.status,
            isr: self.isr,
            queue_sel: self.queue_sel,
            guest_features_low: self.guest_features_low,
            config: self.config,
            queues: self.queues,
            device,
            subsections,
            inferred,
            notes,
            machine_endian: self.machine_endian,
        };
        if let Some((endian, how)) = device.byte_order() {
            device.inferred.push(Inference::new(
                "byte_order",
                match endian {
                    Endian::Big => "config space and rings big-endian",
                    Endian::Little => "config space and rings little-endian",
                },
                how,
            ));
        }
        device
    }

    fn decode_device(
        self,
        r: &mut Reader<'_>,
        assume: &Assumptions,
        inferred: Vec<Inference>,
    ) -> Result<VirtioDevice> {
        match &self.kind {
            DeviceKind::Blk => self.decode_blk(r, assume, inferred),
            DeviceKind::Balloon => {
                let balloon = balloon::decode(r).map_err(|e| e.within("virtio"))?;
                let subsections = core::decode(r, self.transport.kind())?;
                r.expect_end("virtio")?;
                Ok(self.finish(
                    DeviceState::Balloon(balloon),
                    subsections,
                    inferred,
                    Vec::new(),
                ))
            }
            DeviceKind::Net => self.decode_net(r, assume, inferred),
            DeviceKind::Mem => self.decode_mem(r, inferred),
            DeviceKind::Serial => self.decode_serial(r, assume, inferred),
            DeviceKind::Other(name) if !self.kind.saves_no_own_state() => {
                let name = name.clone();
                self.decode_undecoded(r, &name, inferred)
            }
            DeviceKind::Scsi | DeviceKind::Rng | DeviceKind::Other(_) => {
                let subsections = core::decode(r, self.transport.kind())?;
                r.expect_end("virtio")?;
                Ok(self.finish(DeviceState::Empty, subsections, inferred, Vec::new()))
            }
        }
    }

    /// Reads virtio-mem's state in the one shape (region here, or in an early section)
    /// under which the field reads to its end; keeps it as bytes when neither does.
    fn decode_mem(self, r: &mut Reader<'_>, mut inferred: Vec<Inference>) -> Result<VirtioDevice> {
        let transport = self.transport.kind();
        let mut fits = Vec::new();
        for reading in [mem::MemReading::WithRegion, mem::MemReading::Early] {
            let mut attempt = r.clone();
            let parsed = mem::decode(&mut attempt, reading)
                .map_err(|e| e.within("virtio"))
                .and_then(|state| Ok((state, read_core(&mut attempt, transport)?.0)));
            if let Ok((state, subsections)) = parsed {
                fits.push((reading, state, subsections, attempt));
            }
        }
        if fits.len() != 1 {
            return self.decode_undecoded(r, "virtio-mem", inferred);
        }
        let Some((reading, state, subsections, attempt)) = fits.pop() else {
            return self.decode_undecoded(r, "virtio-mem", inferred);
        };
        *r = attempt;
        inferred.push(Inference::new(
            "virtio.mem",
            match reading {
                mem::MemReading::WithRegion => "the region, plugged size and bitmap are here",
                mem::MemReading::Early => {
                    "the region, plugged size and bitmap travel in virtio-mem-device-early"
                }
            },
            "the field reads to its end under this shape only",
        ));
        Ok(self.finish(DeviceState::Mem(state), subsections, inferred, Vec::new()))
    }

    /// Keeps the own state of a device this crate does not decode as bytes, and still reads
    /// the core subsections after it: they start at the first subsection header from which
    /// the rest of the field reads as core subsections to its end.
    fn decode_undecoded(
        self,
        r: &mut Reader<'_>,
        name: &str,
        inferred: Vec<Inference>,
    ) -> Result<VirtioDevice> {
        let transport = self.transport.kind();
        let rest = r.rest();
        let start = r.offset();
        // Each try reads at most the ten core subsections; a bounded number of tries keeps
        // hostile bytes full of subsection headers from costing a try at every offset.
        const MAX_TRIES: usize = 64;
        let opens_core = |at: &usize| {
            let tail = rest.get(*at..).unwrap_or(&[]);
            tail.is_empty()
                || (tail.first() == Some(&subsection::SUBSECTION_MARKER)
                    && tail.get(2..9) == Some(b"virtio/".as_slice()))
        };
        let split = (0..=rest.len())
            .filter(opens_core)
            .take(MAX_TRIES)
            .find(|&at| {
                let tail = rest.get(at..).unwrap_or(&[]);
                let mut attempt = Reader::at(tail, start.saturating_add(at as u64));
                core::decode(&mut attempt, transport).is_ok() && attempt.is_empty()
            });
        let at = split.unwrap_or(rest.len());
        let bytes = HexBytes(rest.get(..at).unwrap_or(rest).to_vec());
        r.skip(at, "virtio.device")?;
        let subsections = core::decode(r, transport)?;
        r.expect_end("virtio")?;
        let note = Note::new(
            start,
            "virtio.device",
            format!(
                "{name} device state is not decoded: its {} byte(s) are kept as they are; the \
                 core subsections after them are read",
                bytes.0.len()
            ),
        );
        Ok(self.finish(
            DeviceState::Opaque { bytes },
            subsections,
            inferred,
            vec![note],
        ))
    }

    /// Reads virtio-blk's requests under every framing the assumptions allow and keeps the
    /// one reading under which the field parses to its end and agrees with itself.
    fn decode_blk(
        self,
        r: &mut Reader<'_>,
        assume: &Assumptions,
        mut inferred: Vec<Inference>,
    ) -> Result<VirtioDevice> {
        let transport = self.transport.kind();
        let saved_queues = self.queues.len();
        // QEMU writes the index exactly when num-queues > 1, and saves exactly num-queues
        // queues (a guest cannot set a queue's size to 0), so the saved count settles it: a
        // reading against it is no reading, however well the bytes parse.
        let queue_index = match assume.num_queues {
            Some(n) => n > 1,
            None => saved_queues > 1,
        };
        let keys = framing::element_framings(assume, &[queue_index]);
        let settled = framing::settle(
            r,
            "virtio.rq",
            &keys,
            |r, framing| {
                let mut notes = Vec::new();
                let blk = blk::decode(r, framing, &mut notes).map_err(|e| e.within("virtio"))?;
                let (subsections, packed) = read_core(r, transport)?;
                Ok(framing::Parsed {
                    elements: blk.requests.len(),
                    state: blk,
                    subsections,
                    notes,
                    packed: Some(packed),
                })
            },
            &[],
            "SECTION:num-queues=N, SECTION:packed=on|off or the element layout",
        )?;
        let framing = settled.key;
        let mut blk = settled.parsed.state;
        blk.framing = framing;
        let queue_how = match assume.num_queues {
            Some(n) => format!("assumed: num-queues={n}"),
            None => format!(
                "the device saved {saved_queues} queue(s), and virtio-blk creates exactly \
                 num-queues of them"
            ),
        };
        inferred.push(Inference::new(
            "virtio.rq.queue",
            if framing.queue_index {
                "each request carries its virtqueue index (num-queues > 1)"
            } else {
                "requests carry no virtqueue index (num-queues = 1)"
            },
            queue_how,
        ));
        inferred.extend(framing::element_inferences(
            "virtio.rq",
            &framing,
            assume,
            PACKED_SUBSECTION_RULE,
            settled.no_elements,
            settled.others,
        ));
        r.skip(r.remaining(), "virtio")?;
        Ok(self.finish(
            DeviceState::Blk(blk),
            settled.parsed.subsections,
            inferred,
            settled.parsed.notes,
        ))
    }

    /// Reads virtio-net's device VMState; whether it holds the queue-pair fields (present
    /// when the device has more than one queue pair, a property the stream does not carry)
    /// is settled by trial.
    fn decode_net(
        self,
        r: &mut Reader<'_>,
        assume: &Assumptions,
        mut inferred: Vec<Inference>,
    ) -> Result<VirtioDevice> {
        let transport = self.transport.kind();
        let keys: Vec<net::NetReading> = match assume.num_queues {
            Some(n) => vec![net::NetReading { queue_pairs: n > 1 }],
            None => vec![
                net::NetReading { queue_pairs: false },
                net::NetReading { queue_pairs: true },
            ],
        };
        let features = self.guest_features_low;
        let config_pairs = net::config_max_queue_pairs(&self.config.0);
        let matches_config = |k: &net::NetReading| match config_pairs {
            Some(pairs) => k.queue_pairs == (pairs > 1),
            None => true,
        };
        let settled = framing::settle(
            r,
            "virtio.net",
            &keys,
            |r, key| {
                let net = net::decode(r, key, features).map_err(|e| e.within("virtio"))?;
                let (subsections, packed) = read_core(r, transport)?;
                Ok(framing::Parsed {
                    state: net,
                    subsections,
                    notes: Vec::new(),
                    elements: 0,
                    packed: Some(packed),
                })
            },
            &[&matches_config],
            "SECTION:num-queues=N (N: the queue pairs)",
        )?;
        inferred.extend(net::inferences(
            &settled.parsed.state,
            features,
            config_pairs,
            assume,
            settled.others,
        ));
        r.skip(r.remaining(), "virtio")?;
        Ok(self.finish(
            DeviceState::Net(settled.parsed.state),
            settled.parsed.subsections,
            inferred,
            Vec::new(),
        ))
    }

    /// Reads virtio-serial's state; the length of its ports map (from a device property)
    /// and the framing of a throttled port's element are settled by trial.
    fn decode_serial(
        self,
        r: &mut Reader<'_>,
        assume: &Assumptions,
        mut inferred: Vec<Inference>,
    ) -> Result<VirtioDevice> {
        let transport = self.transport.kind();
        let map_options = serial::map_word_options(r.rest());
        let mut keys = Vec::new();
        for &map_words in &map_options {
            for framing in framing::element_framings(assume, &[false]) {
                keys.push(serial::SerialReading { map_words, framing });
            }
        }
        let first_option = map_options.first().copied();
        let from_config = |k: &serial::SerialReading| Some(k.map_words) == first_option;
        let settled = framing::settle(
            r,
            "virtio.ports",
            &keys,
            |r, key| {
                let mut notes = Vec::new();
                let serial = serial::decode(r, key, &mut notes).map_err(|e| e.within("virtio"))?;
                let (subsections, packed) = read_core(r, transport)?;
                Ok(framing::Parsed {
                    elements: serial.popped_elements(),
                    state: serial,
                    subsections,
                    notes,
                    packed: Some(packed),
                })
            },
            &[&from_config],
            "SECTION:packed=on|off or the element layout",
        )?;
        let mut serial = settled.parsed.state;
        serial.framing = settled.key.framing;
        inferred.extend(serial::inferences(&serial, settled.others));
        inferred.extend(framing::element_inferences(
            "virtio.ports",
            &serial.framing,
            assume,
            PACKED_SUBSECTION_RULE,
            settled.no_elements,
            settled.others,
        ));
        r.skip(r.remaining(), "virtio")?;
        Ok(self.finish(
            DeviceState::Serial(serial),
            settled.parsed.subsections,
            inferred,
            settled.parsed.notes,
        ))
    }
}

/// How the presence of `ndescs` is settled inside a `virtio` field.
const PACKED_SUBSECTION_RULE: &str = "the virtio/packed_virtqueues subsection";

/// Reads the core subsections to the end of the field, and says whether they show that the
/// device offers packed rings.
fn read_core(r: &mut Reader<'_>, transport: TransportKind) -> Result<(Vec<CoreSubsection>, bool)> {
    let subsections = core::decode(r, transport).map_err(|e| e.within("virtio"))?;
    r.expect_end("virtio")?;
    let packed = subsections
        .iter()
        .any(|s| matches!(s.state, CoreState::PackedVirtqueues(_)));
    Ok((subsections, packed))
}
