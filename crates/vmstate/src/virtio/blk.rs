//! virtio-blk's own part of the blob: the requests that failed and wait to be retried.
//!
//! Each request is a byte 1, the virtqueue index when the device has more than one queue,
//! the packed-ring `ndescs` word when the device offers packed rings (QEMU writes it before
//! the element; its loader reads it after), and the element. A byte 0 ends the list. Whether
//! the queue index and `ndescs` are there is not written anywhere: the caller settles it
//! (see [`Framing`]).

use serde::Serialize;

use super::framing::{self, Framing, InFlight};
use crate::error::{Error, ErrorKind, Result};
use crate::note::Note;
use crate::wire::{Endian, Reader, Writer};

/// One request waiting to be retried: an in-flight element with its queue when the stream
/// carries it.
pub type BlkRequest = InFlight;

/// virtio-blk's device state: its request list, head first as QEMU wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlkState {
    /// The requests.
    pub requests: Vec<BlkRequest>,
    /// How they are framed.
    pub framing: Framing,
}

/// Reads the request list with `framing`, adding the elements' notes to `notes`.
pub fn decode(r: &mut Reader<'_>, framing: Framing, notes: &mut Vec<Note>) -> Result<BlkState> {
    let mut requests = Vec::new();
    loop {
        let path = format!("rq[{}]", requests.len());
        let marker_offset = r.offset();
        match r.u8("rq.marker").map_err(|e| e.within(&path))? {
            0 => break,
            1 => {}
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidValue {
                        value: u64::from(other),
                        expected: "1 (a request follows) or 0 (end of the list)",
                    },
                    marker_offset,
                    format!("{path}.marker"),
                ))
            }
        }
        let request = decode_request(r, framing, notes, &path).map_err(|e| e.within(&path))?;
        requests.push(request);
    }
    Ok(BlkState { requests, framing })
}

fn decode_request(
    r: &mut Reader<'_>,
    framing: Framing,
    notes: &mut Vec<Note>,
    path: &str,
) -> Result<BlkRequest> {
    let queue = match framing.queue_index {
        true => Some(r.u32(Endian::Big, "queue")?),
        false => None,
    };
    let mut request = framing::read_element(r, framing, notes, path)?;
    request.queue = queue;
    Ok(request)
}

/// Writes the request list with `framing` (which may differ from the one it was read with:
/// that is how elements change layout or `ndescs` changes place).
pub fn encode(state: &BlkState, framing: Framing, w: &mut Writer) -> Result<()> {
    for (k, request) in state.requests.iter().enumerate() {
        let path = format!("rq[{k}]");
        w.u8(1);
        if framing.queue_index {
            let queue = request
                .queue
                .ok_or_else(|| framing::missing(w.offset(), &path, "queue"))?;
            w.u32(Endian::Big, queue);
        }
        framing::write_element(w, framing, request, &path)?;
    }
    w.u8(0);
    Ok(())
}
