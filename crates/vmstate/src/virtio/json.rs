//! The JSON form of a decoded virtio device, as `vmstate dump --json` shows it.
//!
//! It puts what a user looks for first: one object per queue with all of its ring addresses
//! (the descriptor table from the queue's own fields, the avail and used rings from the
//! `virtio/virtqueues` subsection, or computed as QEMU does for legacy devices) and one object
//! per in-flight request. The 1024-slot arrays of the core subsections are shown for the
//! device's queues only, with a count of the other slots that are not zero, so that nothing
//! is hidden in silence.

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::core::{CoreState, CoreSubsection};
use super::transport::TransportExtra;
use super::{DeviceState, VirtioDevice};

/// Alignment of the used ring of a legacy queue where the guest does not choose it
/// (`VIRTIO_PCI_VRING_ALIGN`, and virtio-ccw's fixed 4096).
const LEGACY_VRING_ALIGN: u64 = 4096;

/// One queue with every address of its ring.
#[derive(serde::Serialize)]
struct QueueJson {
    index: usize,
    num: u32,
    desc: u64,
    avail: Option<u64>,
    used: Option<u64>,
    last_avail_idx: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    align: Option<u32>,
}

impl VirtioDevice {
    /// Avail and used ring addresses of queue `index`: from `virtio/virtqueues` when the
    /// device saved it, else computed from the descriptor table as QEMU does for a legacy
    /// queue (avail right after the table, used at the next boundary of the ring's alignment
    /// after avail: the saved one on virtio-mmio, 4096 elsewhere).
    ///
    /// `None` when the queue does not exist or when a saved alignment is not a power of two.
    pub fn ring_areas(&self, index: usize) -> Option<(u64, u64)> {
        if let Some(rings) = self.ring_addresses(index) {
            return Some((rings.avail, rings.used));
        }
        let queue = self.queues.get(index)?;
        if queue.desc == 0 {
            return Some((0, 0));
        }
        let num = u64::from(queue.num);
        let avail = queue.desc.checked_add(num.checked_mul(16)?)?;
        let avail_end = avail.checked_add(num.checked_mul(2)?.checked_add(4)?)?;
        let align = match queue.align {
            Some(align) => Some(u64::from(align)).filter(|a| a.is_power_of_two())?,
            None => LEGACY_VRING_ALIGN,
        };
        let mask = align.checked_sub(1)?;
        let used = avail_end.checked_add(mask).map(|v| v & !mask)?;
        Some((avail, used))
    }

    /// The full 64 guest feature bits when the stream has them, else the low 32.
    pub fn guest_features(&self) -> u64 {
        self.subsections
            .iter()
            .find_map(|s| match s.state {
                CoreState::Features64(features) => Some(features),
                _ => None,
            })
            .unwrap_or(u64::from(self.guest_features_low))
    }
}

/// A core subsection with its 1024-slot arrays cut to the device's queues.
struct SubsectionJson<'a> {
    subsection: &'a CoreSubsection,
    queues: usize,
}

impl Serialize for SubsectionJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sub = self.subsection;
        let mut s = serializer.serialize_struct("subsection", 5)?;
        s.serialize_field("name", sub.state.name())?;
        s.serialize_field("version", &sub.version)?;
        s.serialize_field("offset", &sub.offset)?;
        fn cut<T: Serialize + PartialEq + Default, S: SerializeStruct>(
            s: &mut S,
            entries: &[T],
            queues: usize,
        ) -> Result<(), S::Error> {
            let (shown, rest) = entries.split_at(queues.min(entries.len()));
            s.serialize_field("queues", shown)?;
            let zero = T::default();
            let other = rest.iter().filter(|e| **e != zero).count();
            s.serialize_field("other_non_zero_slots", &other)
        }
        match &sub.state {
            CoreState::Virtqueues(rings) => cut(&mut s, rings, self.queues)?,
            CoreState::RingSize(sizes) => cut(&mut s, sizes, self.queues)?,
            CoreState::PackedVirtqueues(packed) => cut(&mut s, packed, self.queues)?,
            CoreState::ExtraState(TransportExtra::Mmio(extra)) => {
                s.serialize_field("state_version", &extra.state_version)?;
                if let Some(state) = &extra.state {
                    s.serialize_field("guest_features", &state.guest_features)?;
                    cut(&mut s, &state.queues, self.queues)?;
                }
            }
            CoreState::ExtraState(TransportExtra::Pci(extra)) => {
                s.serialize_field("modern_version", &extra.modern_version)?;
                if let Some(modern) = &extra.modern {
                    s.serialize_field("dfselect", &modern.dfselect)?;
                    s.serialize_field("gfselect", &modern.gfselect)?;
                    s.serialize_field("guest_features", &modern.guest_features)?;
                    cut(&mut s, &modern.queues, self.queues)?;
                }
            }
            CoreState::DeviceEndian(v)
            | CoreState::Broken(v)
            | CoreState::Started(v)
            | CoreState::Disabled(v) => s.serialize_field("value", v)?,
            CoreState::Features64(v) | CoreState::Features128(v) => {
                s.serialize_field("value", v)?
            }
        }
        s.end()
    }
}

impl Serialize for VirtioDevice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("virtio", 14)?;
        s.serialize_field("device", self.kind.vmsd_name())?;
        s.serialize_field("transport", &self.transport)?;
        s.serialize_field("status", &self.status)?;
        s.serialize_field("isr", &self.isr)?;
        s.serialize_field("queue_sel", &self.queue_sel)?;
        s.serialize_field("guest_features", &self.guest_features())?;
        s.serialize_field("config", &self.config)?;
        let queues: Vec<QueueJson> = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, q)| {
                let areas = self.ring_areas(index);
                QueueJson {
                    index,
                    num: q.num,
                    desc: q.desc,
                    avail: areas.map(|a| a.0),
                    used: areas.map(|a| a.1),
                    last_avail_idx: q.last_avail_idx,
                    vector: q.vector,
                    align: q.align,
                }
            })
            .collect();
        s.serialize_field("queues", &queues)?;
        match &self.device {
            DeviceState::Blk(blk) => {
                s.serialize_field("requests", &blk.requests)?;
                s.serialize_field("framing", &blk.framing)?;
            }
            DeviceState::Net(net) => s.serialize_field("net", net)?,
            DeviceState::Serial(serial) => s.serialize_field("serial", serial)?,
            DeviceState::Balloon(balloon) => s.serialize_field("balloon", balloon)?,
            DeviceState::Mem(state) => s.serialize_field("mem", state)?,
            DeviceState::Empty => {}
            DeviceState::Opaque { bytes } => s.serialize_field("undecoded", bytes)?,
        }
        let subsections: Vec<SubsectionJson> = self
            .subsections
            .iter()
            .map(|subsection| SubsectionJson {
                subsection,
                queues: self.queues.len(),
            })
            .collect();
        s.serialize_field("subsections", &subsections)?;
        s.serialize_field("inferred", &self.inferred)?;
        s.serialize_field("notes", &self.notes)?;
        s.end()
    }
}
