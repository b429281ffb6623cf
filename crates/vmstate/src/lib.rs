//! `vmstate`: the saved state of virtio devices.
//!
//! Hypervisors such as QEMU write the state of a virtual machine's virtio devices into a
//! migration stream when they snapshot a VM or move it to another host. This crate reads that
//! state, checks it, converts it between host layouts and writes it back.
//!
//! The crate is layered, and data flows one way through it:
//!
//! * [`wire`]: byte order, a zero-copy [`wire::Reader`] and its mirror [`wire::Writer`].
//!   Every read is bounds-checked and names its field and offset.
//! * [`element`]: the in-flight request (`VirtQueueElement`), every legacy host layout and
//!   the stable format.
//! * [`stream`]: QEMU migration streams: the container, RAM as counts and ranges, device
//!   sections decoded through the stream's own description, and the writer that puts a
//!   stream back together byte for byte.
//!
//! Everything read from an input is untrusted. Decoders return [`Result`] and never panic:
//! counts are bounded before they size anything, and an [`Error`] says which field failed
//! and at which byte offset.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]
#![warn(missing_docs)]

pub mod check;
pub mod compat;
pub mod devices;
pub mod element;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod hex;
pub mod machine;
pub mod memory;
pub mod note;
mod pages;
pub mod schema;
pub mod stream;
pub mod subsection;
pub mod virtio;
pub mod vmm;
pub mod vmsd;
pub mod wire;

pub use error::{Error, ErrorKind, Result};
pub use note::Note;
