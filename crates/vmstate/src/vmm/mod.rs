//! Saving and restoring live virtqueues with their requests in flight, for VMMs built on
//! rust-vmm (`vm-memory`, `virtio-queue`).
//!
//! A VMM that snapshots or migrates a virtio device need not wait for its I/O to finish: it
//! stops taking requests, records which chains it has popped and not completed, and saves
//! them with the queues. The destination walks every saved chain again in its own guest
//! memory, compares it with what was saved, and resubmits the requests; a request completes
//! exactly once, on one side.
//!
//! * [`BlkSnapshot`] is what the VMM hands over: each queue's [`virtio_queue::QueueState`]
//!   and the heads it has in flight. [`BlkSnapshot::to_device`] walks the chains in guest
//!   memory and builds a QEMU virtio-blk device on virtio-mmio ([`VirtioDevice`]), which is
//!   checked to decode back to itself before it is returned.
//! * [`StreamWriter`] writes a whole migration stream in QEMU's format: guest RAM, as many
//!   passes as wanted (a live migration sends dirty pages again), then device sections.
//!   `vmstate dump` and `vmstate check` read it; its RAM blocks say where they sit.
//! * [`restore_blk`] takes a decoded device and the destination's guest memory (any
//!   [`vm_memory::GuestMemory`]), refuses state that the memory contradicts, and returns each
//!   queue as a [`virtio_queue::Queue`] with the requests to resubmit. It only reads: a failed
//!   restore changes nothing. [`load_stream`] reads a stream into guest memory and decodes its
//!   devices.
//!
//! ```
//! use virtio_queue::{Queue, QueueT};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmstate::vmm::{restore_blk, BlkSnapshot, QueueSnapshot, StreamWriter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?;
//! let mut queue = Queue::new(256)?;
//! queue.set_desc_table_address(Some(0x1000), Some(0));
//! queue.set_avail_ring_address(Some(0x2000), Some(0));
//! queue.set_used_ring_address(Some(0x3000), Some(0));
//! queue.set_ready(true);
//! let snapshot = BlkSnapshot {
//!     mmio_base: 0xd000_0000,
//!     driver_features: 1 << 32, // VIRTIO_F_VERSION_1
//!     status: 0x0f,
//!     config: vec![0; 60],
//!     queues: vec![QueueSnapshot { state: queue.state(), in_flight: vec![] }],
//! };
//! let device = snapshot.to_device(&memory)?;
//!
//! let mut stream = StreamWriter::new(Vec::new(), &memory)?;
//! stream.ram_pass(&memory, None)?;
//! stream.device(&snapshot.idstr(), &device)?;
//! let bytes = stream.finish()?;
//!
//! let (sections, restored_memory) = vmstate::vmm::load_stream(&bytes)?;
//! let queues = restore_blk(&sections[0].device, &restored_memory, 256)?;
//! assert_eq!(queues[0].queue.state(), queue.state());
//! # Ok(())
//! # }
//! ```

mod restore;
mod save;
mod stream;

pub use self::restore::{load_stream, restore_blk, RestoredQueue};
pub use self::save::{BlkSnapshot, QueueSnapshot};
pub use self::stream::StreamWriter;

use crate::virtio::VirtioDevice;

/// `VIRTIO_F_VERSION_1`: the device is driven through the modern interface.
const VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`: used and avail events in the rings.
const EVENT_IDX: u64 = 1 << 29;
/// The largest ring QEMU accepts (`VIRTQUEUE_MAX_SIZE`).
const MAX_QUEUE_SIZE: u16 = 1024;

/// The driver features of a decoded device, all 64 bits.
fn features(device: &VirtioDevice) -> u64 {
    device.guest_features()
}
