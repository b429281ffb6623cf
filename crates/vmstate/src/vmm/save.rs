//! A VMM's live virtio-blk device as QEMU's saved state.

use std::collections::HashSet;

use super::{EVENT_IDX, MAX_QUEUE_SIZE, VERSION_1};
use crate::check::split_chain_element;
use crate::element::Layout;
use crate::error::{Error, ErrorKind, Result};
use crate::memory::GuestBytes;

use crate::virtio::{
    BlkState, CoreState, CoreSubsection, DeviceKind, DeviceState, Framing, HexBytes, InFlight,
    MmioExtraState, MmioQueue, MmioState, MmioTransport, NdescsOrder, QueueState, RingAddresses,
    Transport, TransportExtra, VirtioDevice, VIRTIO_QUEUE_MAX,
};
use crate::wire::Endian;

/// One queue of a live device: its state as `virtio_queue::Queue::state` gives it, and the
/// heads of the chains popped from it and not completed, in the order they were popped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The queue's state.
    pub state: virtio_queue::QueueState,
    /// Heads of the chains in flight.
    pub in_flight: Vec<u16>,
}

/// A virtio-blk device on virtio-mmio, as a VMM holds it when it stops taking requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkSnapshot {
    /// Base address of the device's virtio-mmio window (it names the section).
    pub mmio_base: u64,
    /// The features the driver acknowledged; must include `VIRTIO_F_VERSION_1`.
    pub driver_features: u64,
    /// The device status register.
    pub status: u8,
    /// The device's config space (`struct virtio_blk_config`, little-endian).
    pub config: Vec<u8>,
    /// The queues, in index order.
    pub queues: Vec<QueueSnapshot>,
}

fn refuse(path: String, reason: String) -> Error {
    Error::new(ErrorKind::Inconsistent { reason }, 0, path)
}

impl BlkSnapshot {
    /// The idstr of the device's section: `virtio-mmio@<base>/virtio-blk`, as QEMU names a
    /// virtio-blk device on a virtio-mmio bus.
    pub fn idstr(&self) -> String {
        format!("virtio-mmio@{:016x}/virtio-blk", self.mmio_base)
    }

    /// Builds the device's saved state, walking every in-flight chain in `memory` (the
    /// source's guest memory, which the chains must still be in).
    ///
    /// Refused, naming the queue: no queue or more than 1024, a queue not ready or of a size
    /// that is not a power of two up to 1024, a head past the ring, a head in flight twice,
    /// more requests than the ring has entries, a chain that does not walk, and features
    /// without `VIRTIO_F_VERSION_1` (legacy devices are not written). The state built passes
    /// [`VirtioDevice::validate`], so it encodes into bytes that decode back to it (the
    /// property tests of `tests/vmm.rs` check that it does).
    pub fn to_device(&self, memory: &dyn GuestBytes) -> Result<VirtioDevice> {
        if self.driver_features & VERSION_1 == 0 {
            return Err(refuse(
                "guest_features".to_owned(),
                format!(
                    "features {:#x} lack VIRTIO_F_VERSION_1: only modern devices are saved",
                    self.driver_features
                ),
            ));
        }
        if self.queues.is_empty() || self.queues.len() > VIRTIO_QUEUE_MAX {
            return Err(refuse(
                "queues".to_owned(),
                format!(
                    "{} queues: a device has 1 to {VIRTIO_QUEUE_MAX}",
                    self.queues.len()
                ),
            ));
        }
        let event_idx = self.driver_features & EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        let mut rings = vec![RingAddresses::default(); VIRTIO_QUEUE_MAX];
        let mut mmio_queues = vec![MmioQueue::default(); VIRTIO_QUEUE_MAX];
        let mut requests = Vec::new();
        for (index, q) in self.queues.iter().enumerate() {
            let path = format!("vq[{index}]");
            let s = &q.state;
            if !s.ready || s.size == 0 || !s.size.is_power_of_two() || s.size > MAX_QUEUE_SIZE {
                return Err(refuse(
                    path,
                    format!(
                        "queue of size {} (ready: {}): a saved queue is ready, its size a \
                         power of two up to {MAX_QUEUE_SIZE}",
                        s.size, s.ready
                    ),
                ));
            }
            if s.event_idx_enabled != event_idx {
                return Err(refuse(
                    path,
                    format!(
                        "event_idx_enabled is {} but the features say {}",
                        s.event_idx_enabled, event_idx
                    ),
                ));
            }
            if q.in_flight.len() > usize::from(s.size) {
                return Err(refuse(
                    format!("{path}.in_flight"),
                    format!(
                        "{} requests in flight on a ring of {}",
                        q.in_flight.len(),
                        s.size
                    ),
                ));
            }
            let mut seen = HashSet::new();
            for &head in &q.in_flight {
                let at = format!("{path}.in_flight[head {head}]");
                if head >= s.size || !seen.insert(head) {
                    return Err(refuse(
                        at,
                        format!(
                            "head {head} is past the ring of {} or in flight twice",
                            s.size
                        ),
                    ));
                }
                let element =
                    split_chain_element(memory, Endian::Little, s.desc_table, s.size, head)
                        .map_err(|reason| refuse(at, reason))?;
                requests.push(InFlight {
                    queue: (self.queues.len() > 1).then_some(index as u32),
                    ndescs: None,
                    element,
                });
            }
            queues.push(QueueState {
                num: u32::from(s.size),
                align: Some(4096),
                desc: s.desc_table,
                last_avail_idx: s.next_avail,
                vector: None,
            });
            if let (Some(ring), Some(slot)) = (rings.get_mut(index), mmio_queues.get_mut(index)) {
                *ring = RingAddresses {
                    avail: s.avail_ring,
                    used: s.used_ring,
                };
                *slot = MmioQueue {
                    num: s.size,
                    enabled: 1,
                    desc: split(s.desc_table),
                    avail: split(s.avail_ring),
                    used: split(s.used_ring),
                };
            }
        }
        let [features_low, features_high] = split(self.driver_features);
        let subsection = |state| CoreSubsection {
            offset: 0,
            version: 1,
            state,
        };
        let device = VirtioDevice {
            kind: DeviceKind::Blk,
            transport: Transport::Mmio(MmioTransport {
                host_features_sel: 0,
                guest_features_sel: 0,
                guest_page_shift: 0,
            }),
            status: self.status,
            isr: 0,
            queue_sel: 0,
            guest_features_low: features_low,
            config: HexBytes(self.config.clone()),
            queues,
            device: DeviceState::Blk(BlkState {
                requests,
                framing: Framing {
                    queue_index: self.queues.len() > 1,
                    ndescs: NdescsOrder::Absent,
                    layout: Layout::Stable,
                },
            }),
            subsections: vec![
                subsection(CoreState::Features64(self.driver_features)),
                subsection(CoreState::Virtqueues(rings)),
                subsection(CoreState::ExtraState(TransportExtra::Mmio(
                    MmioExtraState {
                        state_version: Some(1),
                        state: Some(MmioState {
                            guest_features: [features_low, features_high],
                            queues: mmio_queues,
                        }),
                    },
                ))),
            ],
            inferred: Vec::new(),
            notes: Vec::new(),
            machine_endian: Some(Endian::Little),
        };
        device.validate()?;
        Ok(device)
    }
}

/// A 64-bit value as QEMU's (low, high) pair of 32-bit registers.
fn split(value: u64) -> [u32; 2] {
    [value as u32, (value >> 32) as u32]
}
