//! virtio-serial's own part of the blob (the `virtio-console` section's legacy save): a
//! config snapshot, the map of port ids in use, and each active port with, when the port was
//! throttled in the middle of a guest buffer, that buffer's element and how far the host had
//! consumed it.
//!
//! The ports map has `ceil(max_nr_ports / 32)` words, `max_nr_ports` being a device property
//! the stream does not carry as such. The config snapshot written just before it holds the
//! property's value, but QEMU ignores it on load and writes it through a guest-endian
//! buffer; the caller tries the value as read and byte-swapped, and the reading that parses
//! to the end of the field settles it.

use serde::Serialize;

use super::framing::{self, Framing, InFlight, Reading};
use super::Inference;
use crate::error::{Error, ErrorKind, Result};
use crate::note::Note;
use crate::wire::{Endian, Reader, Writer};

/// Most ports a virtio-serial device can have (`VIRTIO_QUEUE_MAX / 2 - 1`).
pub const MAX_PORTS: u32 = 511;

/// virtio-serial's device state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SerialState {
    /// Config snapshot: console columns (ignored on load).
    pub cols: u16,
    /// Config snapshot: console rows (ignored on load).
    pub rows: u16,
    /// Config snapshot: `max_nr_ports` as written (ignored on load).
    pub max_nr_ports: u32,
    /// The map of port ids in use, one bit per id (must equal the destination's).
    pub ports_map: Vec<u32>,
    /// The active ports, as saved.
    pub ports: Vec<SerialPort>,
    /// How the throttled elements are framed.
    pub framing: Framing,
}

/// One active port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SerialPort {
    /// Port id.
    pub id: u32,
    /// The guest has the port open (a byte).
    pub guest_connected: u8,
    /// The host side is connected (a byte).
    pub host_connected: u8,
    /// Non-zero when the port holds a half-consumed guest buffer (`elem_popped`, as saved).
    pub elem_popped: u32,
    /// That buffer, when `elem_popped` is non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub popped: Option<PoppedElement>,
}

/// A throttled port's half-consumed element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoppedElement {
    /// Index of the `out` segment the host was consuming.
    pub iov_idx: u32,
    /// Bytes of that segment already consumed.
    pub iov_offset: u64,
    /// The element (its `queue` is the port's transmit queue, from virtio-serial's queue
    /// numbering).
    #[serde(flatten)]
    pub element: InFlight,
}

/// One reading of the device's part: the ports map length and the element framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialReading {
    /// Words in the ports map.
    pub map_words: u32,
    /// Element framing.
    pub framing: Framing,
}

impl Reading for SerialReading {
    fn framing(&self) -> Option<Framing> {
        Some(self.framing)
    }
    fn with_framing(self, framing: Framing) -> Self {
        SerialReading { framing, ..self }
    }
    fn describe(&self) -> String {
        format!(
            "{} ports map word(s), {}",
            self.map_words,
            framing::describe_framing(&self.framing)
        )
    }
}

impl SerialState {
    /// The device's `max_nr_ports`. QEMU keeps the config in the guest's byte order and
    /// saves that memory as a big-endian word, so the word is the property when the writing
    /// host's byte order is the guest's and byte-swapped when it is not (a big-endian guest
    /// on an x86 host); only one of the two is a port count QEMU allows.
    pub fn max_ports(&self) -> u32 {
        let swapped = self.max_nr_ports.swap_bytes();
        if self.max_nr_ports > MAX_PORTS && swapped <= MAX_PORTS {
            swapped
        } else {
            self.max_nr_ports
        }
    }

    /// How many ports hold an element.
    pub fn popped_elements(&self) -> usize {
        self.ports.iter().filter(|p| p.popped.is_some()).count()
    }
}

/// The transmit (guest to host) queue of port `id`: port 0 uses queues 0 and 1, the control
/// queues are 2 and 3, port n ≥ 1 uses 2n + 2 and 2n + 3.
pub fn transmit_queue(id: u32) -> Option<u32> {
    match id {
        0 => Some(1),
        n => n.checked_mul(2)?.checked_add(3),
    }
}

/// What queue `index` of a virtio-serial device serves, in words (the numbering of
/// [`transmit_queue`]).
pub fn queue_role(index: u32) -> String {
    let way = if index % 2 == 0 {
        "receive"
    } else {
        "transmit"
    };
    match index / 2 {
        0 => format!("port 0's {way} queue"),
        1 => format!("the control {way} queue"),
        n => format!("port {}'s {way} queue", n.saturating_sub(1)),
    }
}

/// The ports map lengths to try, first the one the config snapshot states, from the bytes
/// at the start of the device's part (`cols`, `rows`, `max_nr_ports`).
pub fn map_word_options(rest: &[u8]) -> Vec<u32> {
    let Some(&[a, b, c, d]) = rest.get(4..8) else {
        return vec![1];
    };
    let mut out = Vec::new();
    for max in [
        u32::from_be_bytes([a, b, c, d]),
        u32::from_le_bytes([a, b, c, d]),
    ] {
        let words = max.div_ceil(32);
        if max <= MAX_PORTS && !out.contains(&words) {
            out.push(words);
        }
    }
    if out.is_empty() {
        // No plausible property value: QEMU's default of 31 ports.
        out.push(1);
    }
    out
}

/// Reads the device's part with `reading`.
pub fn decode(
    r: &mut Reader<'_>,
    reading: SerialReading,
    notes: &mut Vec<Note>,
) -> Result<SerialState> {
    let cols = r.u16(Endian::Big, "serial.cols")?;
    let rows = r.u16(Endian::Big, "serial.rows")?;
    let max_nr_ports = r.u32(Endian::Big, "serial.max_nr_ports")?;
    let words = r.check_count(u64::from(reading.map_words), 4, "serial.ports_map")?;
    let mut ports_map = Vec::with_capacity(words);
    for _ in 0..words {
        ports_map.push(r.u32(Endian::Big, "serial.ports_map")?);
    }
    let count = r.u32(Endian::Big, "serial.nr_active_ports")?;
    // A port takes at least 10 bytes (id, two flags, elem_popped).
    let count = r.check_count(u64::from(count), 10, "serial.nr_active_ports")?;
    // At most MAX_PORTS ports can be in the map; the count itself is only bounded by the
    // bytes left (10 per port), and a port takes far more than 10 bytes of memory.
    let mut ports = Vec::with_capacity(count.min(MAX_PORTS as usize));
    for k in 0..count {
        let path = format!("ports[{k}]");
        let port = decode_port(r, reading.framing, notes, &path).map_err(|e| e.within(&path))?;
        if !id_in_map(&ports_map, port.id) {
            // QEMU's loader looks the id up among the destination's ports, whose map must
            // equal this one: a port outside the map cannot load.
            return Err(Error::new(
                ErrorKind::InvalidValue {
                    value: u64::from(port.id),
                    expected: "a port id set in the ports map",
                },
                r.offset(),
                format!("{path}.id"),
            ));
        }
        ports.push(port);
    }
    Ok(SerialState {
        cols,
        rows,
        max_nr_ports,
        ports_map,
        ports,
        framing: reading.framing,
    })
}

fn id_in_map(map: &[u32], id: u32) -> bool {
    let word = usize::try_from(id / 32).ok().and_then(|i| map.get(i));
    matches!(word, Some(w) if w & (1u32 << (id % 32)) != 0)
}

fn decode_port(
    r: &mut Reader<'_>,
    framing: Framing,
    notes: &mut Vec<Note>,
    path: &str,
) -> Result<SerialPort> {
    let id = r.u32(Endian::Big, "id")?;
    let guest_connected = r.u8("guest_connected")?;
    let host_connected = r.u8("host_connected")?;
    let elem_popped = r.u32(Endian::Big, "elem_popped")?;
    let popped = match elem_popped {
        0 => None,
        _ => {
            let iov_idx = r.u32(Endian::Big, "iov_idx")?;
            let iov_offset = r.u64(Endian::Big, "iov_offset")?;
            let mut element = framing::read_element(r, framing, notes, path)?;
            element.queue = transmit_queue(id);
            Some(PoppedElement {
                iov_idx,
                iov_offset,
                element,
            })
        }
    };
    Ok(SerialPort {
        id,
        guest_connected,
        host_connected,
        elem_popped,
        popped,
    })
}

/// Writes the device's part with `framing`.
pub fn encode(state: &SerialState, framing: Framing, w: &mut Writer) -> Result<()> {
    w.u16(Endian::Big, state.cols);
    w.u16(Endian::Big, state.rows);
    w.u32(Endian::Big, state.max_nr_ports);
    for word in &state.ports_map {
        w.u32(Endian::Big, *word);
    }
    let count = u32::try_from(state.ports.len()).map_err(|_| {
        Error::new(
            ErrorKind::ValueTooWide {
                value: state.ports.len() as u64,
                bits: 32,
            },
            w.offset(),
            "serial.nr_active_ports",
        )
    })?;
    w.u32(Endian::Big, count);
    for (k, port) in state.ports.iter().enumerate() {
        let path = format!("ports[{k}]");
        w.u32(Endian::Big, port.id);
        w.u8(port.guest_connected);
        w.u8(port.host_connected);
        w.u32(Endian::Big, port.elem_popped);
        match (port.elem_popped, &port.popped) {
            (0, None) => {}
            (n, Some(popped)) if n != 0 => {
                w.u32(Endian::Big, popped.iov_idx);
                w.u64(Endian::Big, popped.iov_offset);
                framing::write_element(w, framing, &popped.element, &path)?;
            }
            (n, _) => {
                return Err(Error::new(
                    ErrorKind::InvalidValue {
                        value: u64::from(n),
                        expected: "elem_popped non-zero exactly when the port holds an element",
                    },
                    w.offset(),
                    format!("{path}.elem_popped"),
                ))
            }
        }
    }
    Ok(())
}

/// Says how the ports map length and the queues of the elements were settled.
pub fn inferences(state: &SerialState, other_readings: usize) -> Vec<Inference> {
    let words = state.ports_map.len();
    let mut out = vec![Inference::new(
        "virtio.ports_map",
        format!(
            "{words} word(s): room for {} port ids",
            words.saturating_mul(32)
        ),
        format!(
            "ceil(max_nr_ports / 32) with max_nr_ports = {} from the config snapshot ({}); \
             the field parses to its end under this reading and every active port id is set \
             in the map ({other_readings} other reading(s) parsed)",
            state.max_ports(),
            if state.max_ports() == state.max_nr_ports {
                "as written"
            } else {
                "byte-swapped: the writing host's byte order is not the guest's"
            }
        ),
    )];
    if state.popped_elements() > 0 {
        out.push(Inference::new(
            "virtio.ports.element.queue",
            "each element's queue is its port's transmit queue",
            "virtio-serial numbers queues per port: port 0 uses 0 and 1, control 2 and 3, port \
             n uses 2n+2 and 2n+3; a throttled buffer comes from the guest (transmit) side",
        ));
    }
    out
}
