//! virtio-blk's own part of the blob: the requests that failed and wait to be retried.
//!
//! Each request is a byte 1, the virtqueue index when the device has more than one queue,
//! the packed-ring `ndescs` word when the device offers packed rings (QEMU writes it before
//! the element; its loader reads it after), and the element. A byte 0 ends the list. Whether
//! the queue index and `ndescs` are there is not written anywhere: the caller settles it
//! (see [`Framing`]).

use serde::{Deserialize, Serialize};

use crate::element::{self, Element, Layout};
use crate::error::{Error, ErrorKind, Result};
use crate::note::Note;
use crate::wire::{Endian, Reader, Writer};

/// Where a packed-ring request's `ndescs` word stands, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NdescsOrder {
    /// No `ndescs` word: the device has no packed rings.
    Absent,
    /// Before the element: what QEMU writes.
    BeforeElement,
    /// After the element: what QEMU's loader reads.
    AfterElement,
}

/// How each request of the list is framed: facts that the stream does not state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Framing {
    /// Each request carries its virtqueue index (the device has `num-queues` > 1).
    pub queue_index: bool,
    /// Where the packed-ring `ndescs` word stands.
    pub ndescs: NdescsOrder,
    /// Host layout of the elements.
    pub layout: Layout,
}

/// One request waiting to be retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BlkRequestJson")]
pub struct BlkRequest {
    /// The virtqueue it was popped from, when the stream says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// Number of descriptors the request used in a packed ring, when the stream says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ndescs: Option<u32>,
    /// The request's element.
    #[serde(flatten)]
    pub element: Element,
}

/// The JSON a request is read from: its own fields and its element's, in one object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlkRequestJson {
    #[serde(default)]
    queue: Option<u32>,
    #[serde(default)]
    ndescs: Option<u32>,
    index: u32,
    out: Vec<crate::element::Segment>,
    #[serde(rename = "in")]
    device_writable: Vec<crate::element::Segment>,
}

impl From<BlkRequestJson> for BlkRequest {
    fn from(json: BlkRequestJson) -> Self {
        BlkRequest {
            queue: json.queue,
            ndescs: json.ndescs,
            element: Element {
                index: json.index,
                device_readable: json.out,
                device_writable: json.device_writable,
            },
        }
    }
}

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
    let mut ndescs = match framing.ndescs {
        NdescsOrder::BeforeElement => Some(r.u32(Endian::Big, "ndescs")?),
        _ => None,
    };
    let decoded = element::decode(r, framing.layout).map_err(|e| e.within("element"))?;
    if framing.ndescs == NdescsOrder::AfterElement {
        ndescs = Some(r.u32(Endian::Big, "ndescs")?);
    }
    notes.extend(
        decoded
            .notes
            .into_iter()
            .map(|n| n.within("element").within(path)),
    );
    Ok(BlkRequest {
        queue,
        ndescs,
        element: decoded.element,
    })
}

/// Writes the request list with `framing` (which may differ from the one it was read with:
/// that is how elements change layout or `ndescs` changes place).
pub fn encode(state: &BlkState, framing: Framing, w: &mut Writer) -> Result<()> {
    for (k, request) in state.requests.iter().enumerate() {
        let path = format!("rq[{k}]");
        let offset = w.offset();
        let missing = |field: &str| {
            Error::new(
                ErrorKind::InvalidValue {
                    value: 0,
                    expected: "a value: the framing needs this field",
                },
                offset,
                format!("{path}.{field}"),
            )
        };
        w.u8(1);
        if framing.queue_index {
            w.u32(Endian::Big, request.queue.ok_or_else(|| missing("queue"))?);
        }
        let ndescs = match framing.ndescs {
            NdescsOrder::Absent => None,
            _ => Some(request.ndescs.ok_or_else(|| missing("ndescs"))?),
        };
        if let (NdescsOrder::BeforeElement, Some(n)) = (framing.ndescs, ndescs) {
            w.u32(Endian::Big, n);
        }
        element::encode(&request.element, framing.layout, w)
            .map_err(|e| e.within("element").within(&path))?;
        if let (NdescsOrder::AfterElement, Some(n)) = (framing.ndescs, ndescs) {
            w.u32(Endian::Big, n);
        }
    }
    w.u8(0);
    Ok(())
}
