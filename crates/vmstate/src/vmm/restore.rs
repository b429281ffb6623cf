//! Saved virtqueues back into live `virtio_queue::Queue`s, validated against guest memory.

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::{features, EVENT_IDX, MAX_QUEUE_SIZE, VERSION_1};
use crate::check;
use crate::devices::{decode_virtio, DecodeOptions, VirtioSection};
use crate::element::Element;
use crate::error::{Error, ErrorKind, Result};
use crate::extract::{extract_ram, PageTarget};
use crate::memory::{map_for, GuestBytes, MapRegion};
use crate::virtio::{DeviceState, VirtioDevice};
use crate::wire::Endian;

/// One restored queue: ready to run, and the requests that were in flight on it, to be
/// resubmitted in this order and completed with `add_used` on their `index` (the head).
#[derive(Debug)]
pub struct RestoredQueue {
    /// The queue, its indices where the source left them.
    pub queue: Queue,
    /// The chains in flight, walked again in the destination's memory and equal to what was
    /// saved.
    pub requests: Vec<Element>,
}

fn refuse(path: impl Into<String>, reason: String) -> Error {
    Error::new(ErrorKind::Inconsistent { reason }, 0, path)
}

/// Restores a virtio-blk device's queues against `memory`, the destination's guest memory
/// (any `vm_memory::GuestMemory`); `max_size` is the destination device's largest queue
/// size (QEMU's streams do not carry it), and a saved queue larger than it is refused.
///
/// Every check of `vmstate check` runs first: rings inside RAM, indices within their rings,
/// every in-flight chain walked from its head and compared with the saved element, each
/// request's header. The first finding refuses the whole device, naming its field; nothing is
/// written, so a refused restore leaves the destination as it was.
pub fn restore_blk<M: GuestMemory>(
    device: &VirtioDevice,
    memory: &M,
    max_size: u16,
) -> Result<Vec<RestoredQueue>> {
    let DeviceState::Blk(blk) = &device.device else {
        return Err(refuse(
            "device",
            format!("a {} device, not virtio-blk", device.kind.vmsd_name()),
        ));
    };
    let features = features(device);
    if features & VERSION_1 == 0 {
        return Err(refuse(
            "guest_features",
            format!("features {features:#x} lack VIRTIO_F_VERSION_1: a legacy device"),
        ));
    }
    let section = VirtioSection {
        idstr: String::new(),
        instance_id: 0,
        section_id: 0,
        field_offset: 0,
        field_size: 0,
        device: device.clone(),
    };
    let report = check::check_stream(
        std::slice::from_ref(&section),
        &[],
        Some(memory as &dyn GuestBytes),
    );
    let findings: Vec<_> = report.devices.iter().flat_map(|d| &d.findings).collect();
    if let Some(first) = findings.first() {
        return Err(refuse(
            first.path.clone(),
            format!(
                "{} ({} finding(s) in all; the first: {})",
                first.message,
                findings.len(),
                first.rule.name()
            ),
        ));
    }

    let mut restored = Vec::with_capacity(device.queues.len());
    for (index, q) in device.queues.iter().enumerate() {
        let path = format!("vq[{index}]");
        let rings = device.ring_addresses(index).ok_or_else(|| {
            refuse(
                path.clone(),
                "no ring addresses (virtio/virtqueues) for this queue".to_owned(),
            )
        })?;
        let used_idx = memory
            .read_u16(rings.used.saturating_add(2), Endian::Little)
            .map_err(|e| refuse(format!("{path}.used.idx"), format!("the used ring is {e}")))?;
        let state = virtio_queue::QueueState {
            max_size: max_size.min(MAX_QUEUE_SIZE),
            next_avail: q.last_avail_idx,
            next_used: used_idx,
            event_idx_enabled: features & EVENT_IDX != 0,
            size: u16::try_from(q.num).unwrap_or(0),
            ready: true,
            desc_table: q.desc,
            avail_ring: rings.avail,
            used_ring: rings.used,
        };
        let queue = Queue::try_from(state)
            .map_err(|e| refuse(path.clone(), format!("the queue does not set up: {e}")))?;
        if !queue.is_valid(memory) {
            return Err(refuse(
                path,
                "its rings do not fit in guest memory".to_owned(),
            ));
        }
        restored.push(RestoredQueue {
            queue,
            requests: Vec::new(),
        });
    }
    for (k, request) in blk.requests.iter().enumerate() {
        let queue = request.queue.unwrap_or(0);
        let slot = usize::try_from(queue)
            .ok()
            .and_then(|q| restored.get_mut(q))
            .ok_or_else(|| {
                refuse(
                    format!("requests[{k}].queue"),
                    format!(
                        "queue {queue} of a device with {} queues",
                        device.queues.len()
                    ),
                )
            })?;
        slot.requests.push(request.element.clone());
    }
    Ok(restored)
}

/// Reads a whole stream written with [`super::StreamWriter`] (or any stream whose RAM blocks
/// say where they sit): its guest RAM into new guest memory, and its virtio devices decoded.
pub fn load_stream(bytes: &[u8]) -> Result<(Vec<VirtioSection>, GuestMemoryMmap)> {
    let stream = crate::stream::read(bytes)?;
    let sections = decode_virtio(&stream, &DecodeOptions::default())?;
    let map = map_for(&stream, &sections, None)?;
    let ranges: Vec<(GuestAddress, usize)> = map
        .regions
        .iter()
        .map(|r| (GuestAddress(r.gpa), usize::try_from(r.len).unwrap_or(0)))
        .collect();
    let memory = GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| {
        Error::new(
            ErrorKind::BadRamMap {
                reason: format!("guest memory cannot be set up: {e}"),
            },
            0,
            "ram",
        )
    })?;
    let mut target = IntoMemory {
        memory: &memory,
        regions: &map.regions,
    };
    extract_ram(&stream, bytes, &mut target, &mut |_| {})?;
    Ok((sections, memory))
}

/// Pages of a stream written into guest memory by the map's regions.
struct IntoMemory<'a> {
    memory: &'a GuestMemoryMmap,
    regions: &'a [MapRegion],
}

impl IntoMemory<'_> {
    fn gpa(&self, block: &str, offset: u64) -> io::Result<GuestAddress> {
        self.regions
            .iter()
            .find(|r| {
                r.block == block
                    && offset >= r.block_offset
                    && offset.saturating_sub(r.block_offset) < r.len
            })
            .map(|r| GuestAddress(r.gpa.saturating_add(offset.saturating_sub(r.block_offset))))
            .ok_or_else(|| io::Error::other(format!("{block}+{offset:#x} is not placed")))
    }
}

impl PageTarget for IntoMemory<'_> {
    fn write(&mut self, block: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let at = self.gpa(block, offset)?;
        self.memory
            .write_slice(data, at)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn zero(&mut self, block: &str, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.write(block, offset, &zeros)
    }

    fn read(&mut self, block: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.gpa(block, offset)?;
        self.memory
            .read_slice(buf, at)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}
