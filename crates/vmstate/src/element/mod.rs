//! In-flight requests: the `VirtQueueElement` model, its host layouts and the stable format.
//!
//! A request that a device popped from a virtqueue but had not completed when the VM was
//! saved travels in the stream as one element: the head index of its descriptor chain and its
//! scatter-gather segments, split into the device-readable (`out`) and device-writable (`in`)
//! ones. QEMU writes it as a raw copy of a C struct, so its bytes depend on the host; the
//! [`Layout`]s describe every host this crate reads, and [`Layout::Stable`] is the
//! host-independent format that this crate writes by default.
//!
//! Data flows one way: bytes are [`decode`]d with a layout (chosen, or [`choose_layout`]d from
//! the bytes) into an [`Element`], which [`encode`] writes in any layout.

mod codec;
mod detect;
mod layout;

pub use codec::{decode, encode, Decoded};
pub use detect::{choose_layout, detect, Candidate};
pub use layout::{Geometry, Layout, LayoutChoice, UnknownLayout, VIRTQUEUE_MAX_SIZE};

use serde::{Deserialize, Serialize};

/// One scatter-gather segment of a request: a guest-physical address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Guest-physical address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// An in-flight request, as it is independent of any host layout.
///
/// Decoded elements are untrusted: [`decode`] bounds the counts and the address arithmetic,
/// but whether the segments match the descriptors the guest wrote is for a check against
/// guest memory to say.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Element {
    /// Head index of the descriptor chain (split rings) or buffer id (packed rings).
    pub index: u32,
    /// Device-readable segments, in chain order (QEMU's `out_addr`/`out_sg`).
    #[serde(rename = "out")]
    pub device_readable: Vec<Segment>,
    /// Device-writable segments, in chain order (QEMU's `in_addr`/`in_sg`).
    #[serde(rename = "in")]
    pub device_writable: Vec<Segment>,
}
