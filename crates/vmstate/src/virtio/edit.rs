//! Setting one field of a decoded device by its path in the device's JSON form.
//!
//! Paths follow `dump --json`: `queues[0].last_avail_idx`, `requests[2].out[0].addr`,
//! `transport.msix.config_vector`, `subsections[virtio/started].value`,
//! `subsections[virtio/packed_virtqueues].queues[0].inuse`. Values are integers (decimal or
//! `0x` hex) or, for lists and requests, JSON. A value that does not fit the field is refused;
//! nothing else is checked, because making broken state on purpose is what editing is for.

use crate::element::{Element, Segment};
use crate::error::{Error, ErrorKind, Result};

use super::blk::BlkRequest;
use super::core::CoreState;
use super::net::NetState;
use super::scsi::ScsiRequests;
use super::serial::SerialPort;
use super::{DeviceState, Transport, VirtioDevice};

/// One step of a path: a name and, optionally, what stood in brackets after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<'a> {
    /// The name.
    pub name: &'a str,
    /// The bracketed part: an index or a name.
    pub key: Option<&'a str>,
}

/// Splits `a.b[3].c[virtio/started]` into steps; brackets may hold dots.
pub fn parse_path(path: &str) -> Option<Vec<Step<'_>>> {
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let name_end = rest.find(['.', '[']).unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_end);
        let (key, after) = match after.strip_prefix('[') {
            Some(inner) => {
                let close = inner.find(']')?;
                let (key, tail) = inner.split_at(close);
                (Some(key), tail.get(1..)?)
            }
            None => (None, after),
        };
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if (name.is_empty() && key.is_none()) || !name.chars().all(plain) {
            return None;
        }
        steps.push(Step { name, key });
        rest = match after.strip_prefix('.') {
            Some(next) if !next.is_empty() => next,
            Some(_) => return None,
            None if after.is_empty() => after,
            None => return None,
        };
    }
    (!steps.is_empty()).then_some(steps)
}

fn bad_path(path: &str, reason: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::BadPath {
            reason: reason.into(),
        },
        0,
        path,
    )
}

/// Parses an integer in decimal or `0x` hexadecimal.
fn parse_int(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Stores `text` into an integer field of type `T`, refusing values that do not fit.
fn put<T: TryFrom<u64>>(target: &mut T, text: &str, path: &str) -> Result<()> {
    let value =
        parse_int(text).ok_or_else(|| bad_path(path, format!("'{text}' is not an integer")))?;
    *target = T::try_from(value).map_err(|_| {
        Error::new(
            ErrorKind::ValueTooWide {
                value,
                bits: u32::try_from(std::mem::size_of::<T>().saturating_mul(8)).unwrap_or(64),
            },
            0,
            path,
        )
    })?;
    Ok(())
}

fn json<T: serde::de::DeserializeOwned>(text: &str, path: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| bad_path(path, format!("'{text}' is not valid here: {e}")))
}

fn index(step: &Step<'_>, len: usize, path: &str) -> Result<usize> {
    let key = step
        .key
        .ok_or_else(|| bad_path(path, format!("{} needs an index", step.name)))?;
    let i: usize = key
        .parse()
        .map_err(|_| bad_path(path, format!("'{key}' is not an index")))?;
    if i < len {
        Ok(i)
    } else {
        Err(bad_path(
            path,
            format!("{}[{i}] does not exist ({len} present)", step.name),
        ))
    }
}

impl VirtioDevice {
    /// Sets the field at `path` (relative to the device's JSON form) to `value`.
    pub fn set(&mut self, path: &str, value: &str) -> Result<()> {
        let steps = parse_path(path).ok_or_else(|| bad_path(path, "malformed path"))?;
        let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
        match (names.as_slice(), steps.as_slice()) {
            (["status"], _) => put(&mut self.status, value, path),
            (["isr"], _) => put(&mut self.isr, value, path),
            (["queue_sel"], _) => put(&mut self.queue_sel, value, path),
            (["guest_features"], _) => {
                let features: u64 = parse_int(value)
                    .ok_or_else(|| bad_path(path, format!("'{value}' is not an integer")))?;
                self.guest_features_low = (features & 0xffff_ffff) as u32;
                for sub in &mut self.subsections {
                    if let CoreState::Features64(f) = &mut sub.state {
                        *f = features;
                    }
                }
                Ok(())
            }
            (["transport", rest @ ..], [_, tail @ ..]) => {
                self.set_transport(rest, tail, value, path)
            }
            (["queues", field], [q, _]) => self.set_queue(q, field, value, path),
            (["requests"], [s]) if s.key.is_none() => {
                *self.requests_mut(path)? = json(value, path)?;
                Ok(())
            }
            (["requests", rest @ ..], [r, tail @ ..]) => {
                let requests = self.requests_mut(path)?;
                let i = index(r, requests.len(), path)?;
                match requests.get_mut(i) {
                    Some(request) => set_request(request, rest, tail, value, path),
                    None => Err(bad_path(path, "no such request")),
                }
            }
            (["net", field], _) => match &mut self.device {
                DeviceState::Net(net) => set_net(net, field, value, path),
                _ => Err(bad_path(path, "not a virtio-net device")),
            },
            (["balloon", field], _) => match &mut self.device {
                DeviceState::Balloon(b) => match *field {
                    "num_pages" => put(&mut b.num_pages, value, path),
                    "actual" => put(&mut b.actual, value, path),
                    other => Err(bad_path(path, format!("the balloon has no field {other}"))),
                },
                _ => Err(bad_path(path, "not a virtio-balloon device")),
            },
            (["serial", "ports", rest @ ..], [_, p, tail @ ..]) => {
                let DeviceState::Serial(serial) = &mut self.device else {
                    return Err(bad_path(path, "not a virtio-serial device"));
                };
                let i = index(p, serial.ports.len(), path)?;
                match serial.ports.get_mut(i) {
                    Some(port) => set_port(port, rest, tail, value, path),
                    None => Err(bad_path(path, "no such port")),
                }
            }
            (["serial", field], _) => match &mut self.device {
                DeviceState::Serial(serial) => match *field {
                    "max_nr_ports" => put(&mut serial.max_nr_ports, value, path),
                    "ports_map" => {
                        serial.ports_map = json(value, path)?;
                        Ok(())
                    }
                    other => Err(bad_path(
                        path,
                        format!("virtio-serial has no field {other}"),
                    )),
                },
                _ => Err(bad_path(path, "not a virtio-serial device")),
            },
            (["subsections", rest @ ..], [s, tail @ ..]) => {
                let name = s.key.ok_or_else(|| {
                    bad_path(path, "subsections needs a name, e.g. [virtio/started]")
                })?;
                let sub = self
                    .subsections
                    .iter_mut()
                    .find(|sub| sub.state.name() == name)
                    .ok_or_else(|| {
                        bad_path(path, format!("the device has no subsection {name}"))
                    })?;
                set_subsection(&mut sub.state, rest, tail, value, path)
            }
            _ => Err(bad_path(path, "not an editable field")),
        }
    }

    fn requests_mut(&mut self, path: &str) -> Result<&mut Vec<BlkRequest>> {
        match &mut self.device {
            DeviceState::Blk(blk) => Ok(&mut blk.requests),
            _ => Err(bad_path(path, "the device has no decoded request list")),
        }
    }

    fn set_transport(
        &mut self,
        names: &[&str],
        steps: &[Step<'_>],
        value: &str,
        path: &str,
    ) -> Result<()> {
        match (&mut self.transport, names, steps) {
            (Transport::Pci(pci), ["version"], _) => put(&mut pci.version, value, path),
            (Transport::Pci(pci), ["irq_state"], [s]) => {
                let i = index(s, 4, path)?;
                match pci.irq_state.get_mut(i) {
                    Some(level) => put(level, value, path),
                    None => Err(bad_path(path, "no such pin")),
                }
            }
            (Transport::Pci(pci), ["msix", "config_vector"], _) => match &mut pci.msix {
                Some(msix) => put(&mut msix.config_vector, value, path),
                None => Err(bad_path(path, "the device has no MSI-X")),
            },
            (Transport::Mmio(mmio), [field], _) => match *field {
                "host_features_sel" => put(&mut mmio.host_features_sel, value, path),
                "guest_features_sel" => put(&mut mmio.guest_features_sel, value, path),
                "guest_page_shift" => put(&mut mmio.guest_page_shift, value, path),
                other => Err(bad_path(path, format!("virtio-mmio has no field {other}"))),
            },
            (Transport::Ccw(ccw), [field], _) => {
                let number = parse_int(value)
                    .ok_or_else(|| bad_path(path, format!("'{value}' is not an integer")))?;
                ccw.set(field, number).ok_or_else(|| {
                    bad_path(
                        path,
                        format!("virtio-ccw has no field {field} to set (revision, config_vector)"),
                    )
                })
            }
            (transport, _, _) => Err(bad_path(
                path,
                format!("{} has no such field", transport.kind().name()),
            )),
        }
    }

    fn set_queue(&mut self, step: &Step<'_>, field: &str, value: &str, path: &str) -> Result<()> {
        let i = index(step, self.queues.len(), path)?;
        if matches!(field, "avail" | "used") {
            let rings = self
                .subsections
                .iter_mut()
                .find_map(|s| match &mut s.state {
                    CoreState::Virtqueues(rings) => rings.get_mut(i),
                    _ => None,
                })
                .ok_or_else(|| {
                    bad_path(
                        path,
                        "a legacy device saves no avail/used addresses to edit",
                    )
                })?;
            let target = if field == "avail" {
                &mut rings.avail
            } else {
                &mut rings.used
            };
            return put(target, value, path);
        }
        let Some(queue) = self.queues.get_mut(i) else {
            return Err(bad_path(path, "no such queue"));
        };
        match field {
            "num" => put(&mut queue.num, value, path),
            "desc" => put(&mut queue.desc, value, path),
            "last_avail_idx" => put(&mut queue.last_avail_idx, value, path),
            "vector" => match &mut queue.vector {
                Some(vector) => put(vector, value, path),
                None => Err(bad_path(path, "the device has no MSI-X vectors")),
            },
            "align" => match &mut queue.align {
                Some(align) => put(align, value, path),
                None => Err(bad_path(path, "the transport saves no ring alignment")),
            },
            other => Err(bad_path(path, format!("a queue has no field {other}"))),
        }
    }
}

fn set_request(
    request: &mut BlkRequest,
    names: &[&str],
    steps: &[Step<'_>],
    value: &str,
    path: &str,
) -> Result<()> {
    match (names, steps) {
        ([], _) => {
            *request = json(value, path)?;
            Ok(())
        }
        (["queue"], _) => {
            let mut queue = request.queue.unwrap_or(0);
            put(&mut queue, value, path)?;
            request.queue = Some(queue);
            Ok(())
        }
        (["ndescs"], _) => {
            let mut ndescs = request.ndescs.unwrap_or(0);
            put(&mut ndescs, value, path)?;
            request.ndescs = Some(ndescs);
            Ok(())
        }
        (["index"], _) => put(&mut request.element.index, value, path),
        ([list], [s]) if s.key.is_none() => {
            *segments(&mut request.element, list, path)? = json(value, path)?;
            Ok(())
        }
        ([list, field], [s, _]) => {
            let segments = segments(&mut request.element, list, path)?;
            let i = index(s, segments.len(), path)?;
            let Some(segment) = segments.get_mut(i) else {
                return Err(bad_path(path, "no such segment"));
            };
            match *field {
                "addr" => put(&mut segment.addr, value, path),
                "len" => put(&mut segment.len, value, path),
                other => Err(bad_path(path, format!("a segment has no field {other}"))),
            }
        }
        _ => Err(bad_path(path, "not an editable field of a request")),
    }
}

fn set_net(net: &mut NetState, field: &str, value: &str, path: &str) -> Result<()> {
    match field {
        "tx_waiting" => put(&mut net.tx_waiting, value, path),
        "mergeable_rx_bufs" => put(&mut net.mergeable_rx_bufs, value, path),
        "status" => put(&mut net.status, value, path),
        "promisc" => put(&mut net.promisc, value, path),
        "allmulti" => put(&mut net.allmulti, value, path),
        // The count as saved; the table must then be set to match before writing.
        "mac_table_in_use" => put(&mut net.mac_table_in_use, value, path),
        "has_vnet_hdr" => put(&mut net.has_vnet_hdr, value, path),
        "multi_overflow" => put(&mut net.multi_overflow, value, path),
        "uni_overflow" => put(&mut net.uni_overflow, value, path),
        "alluni" => put(&mut net.alluni, value, path),
        "nomulti" => put(&mut net.nomulti, value, path),
        "nouni" => put(&mut net.nouni, value, path),
        "nobcast" => put(&mut net.nobcast, value, path),
        "has_ufo" => put(&mut net.has_ufo, value, path),
        "curr_guest_offloads" => match &mut net.curr_guest_offloads {
            Some(v) => put(v, value, path),
            None => Err(bad_path(path, "the device saved no guest offloads")),
        },
        "max_queue_pairs" | "curr_queue_pairs" => match &mut net.queue_pairs {
            Some(p) if field == "max_queue_pairs" => put(&mut p.max, value, path),
            Some(p) => put(&mut p.curr, value, path),
            None => Err(bad_path(path, "the device saved no queue pairs")),
        },
        other => Err(bad_path(
            path,
            format!("virtio-net has no editable field {other}"),
        )),
    }
}

fn set_port(
    port: &mut SerialPort,
    names: &[&str],
    steps: &[Step<'_>],
    value: &str,
    path: &str,
) -> Result<()> {
    match (names, steps) {
        (["id"], _) => put(&mut port.id, value, path),
        (["guest_connected"], _) => put(&mut port.guest_connected, value, path),
        (["host_connected"], _) => put(&mut port.host_connected, value, path),
        (["elem_popped"], _) => put(&mut port.elem_popped, value, path),
        (["popped", rest @ ..], [_, tail @ ..]) => {
            let popped = port
                .popped
                .as_mut()
                .ok_or_else(|| bad_path(path, "the port holds no element"))?;
            match rest {
                ["iov_idx"] => put(&mut popped.iov_idx, value, path),
                ["iov_offset"] => put(&mut popped.iov_offset, value, path),
                _ => set_request(&mut popped.element, rest, tail, value, path),
            }
        }
        _ => Err(bad_path(path, "not an editable field of a port")),
    }
}

/// Sets the field at `path` (relative to one SCSI disk's entry in `dump --json`,
/// `requests[0].tag`, `requests[1].out[0].addr`) of its virtio-scsi requests.
pub fn set_scsi(state: &mut ScsiRequests, path: &str, value: &str) -> Result<()> {
    let steps = parse_path(path).ok_or_else(|| bad_path(path, "malformed path"))?;
    let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
    let (["requests", rest @ ..], [r, tail @ ..]) = (names.as_slice(), steps.as_slice()) else {
        return Err(bad_path(path, "expected requests[N].FIELD"));
    };
    let i = index(r, state.requests.len(), path)?;
    let Some(request) = state.requests.get_mut(i) else {
        return Err(bad_path(path, "no such request"));
    };
    match rest {
        ["retry"] => {
            let mut flag = u8::from(request.retry);
            put(&mut flag, value, path)?;
            request.retry = flag != 0;
            Ok(())
        }
        ["tag"] => put(&mut request.tag, value, path),
        ["lun"] => put(&mut request.lun, value, path),
        // Only the position: the data scsi-disk saved is sized by the count.
        ["disk", "sector"] => match &mut request.disk {
            Some(part) => put(&mut part.sector, value, path),
            None => Err(bad_path(path, "the request carries no scsi-disk part")),
        },
        ["queue_number"] => {
            put(&mut request.queue_number, value, path)?;
            request.element.queue = request.queue_number.checked_add(2);
            Ok(())
        }
        ["cdb"] => {
            let bytes = parse_hex(value)
                .filter(|b| b.len() == crate::virtio::scsi::CDB_BYTES)
                .ok_or_else(|| bad_path(path, "a CDB is 16 bytes of hex"))?;
            request.cdb = crate::hex::HexBytes(bytes);
            Ok(())
        }
        ["queue"] => Err(bad_path(
            path,
            "set queue_number: queue is queue_number + 2",
        )),
        _ => set_request(&mut request.element, rest, tail, value, path),
    }
}

/// Bytes from hex text, two digits per byte.
fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u32> = text
        .chars()
        .map(|c| c.to_digit(16))
        .collect::<Option<_>>()?;
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => u8::try_from(hi.checked_mul(16)?.checked_add(*lo)?).ok(),
            _ => None,
        })
        .collect()
}

fn segments<'a>(element: &'a mut Element, list: &str, path: &str) -> Result<&'a mut Vec<Segment>> {
    match list {
        "out" => Ok(&mut element.device_readable),
        "in" => Ok(&mut element.device_writable),
        other => Err(bad_path(path, format!("a request has no list {other}"))),
    }
}

fn set_subsection(
    state: &mut CoreState,
    names: &[&str],
    steps: &[Step<'_>],
    value: &str,
    path: &str,
) -> Result<()> {
    let slot = |steps: &[Step<'_>], len: usize| -> Result<usize> {
        match steps.first() {
            Some(step) => index(step, len, path),
            None => Err(bad_path(path, "needs queues[N]")),
        }
    };
    match (state, names) {
        (
            CoreState::DeviceEndian(v)
            | CoreState::Broken(v)
            | CoreState::Started(v)
            | CoreState::Disabled(v),
            ["value"],
        ) => put(v, value, path),
        (CoreState::Features64(v) | CoreState::Features128(v), ["value"]) => put(v, value, path),
        (CoreState::RingSize(sizes), ["queues"]) => {
            let i = slot(steps, sizes.len())?;
            match sizes.get_mut(i) {
                Some(size) => put(size, value, path),
                None => Err(bad_path(path, "no such slot")),
            }
        }
        (CoreState::Virtqueues(rings), ["queues", field]) => {
            let i = slot(steps, rings.len())?;
            let Some(ring) = rings.get_mut(i) else {
                return Err(bad_path(path, "no such slot"));
            };
            match *field {
                "avail" => put(&mut ring.avail, value, path),
                "used" => put(&mut ring.used, value, path),
                other => Err(bad_path(path, format!("no field {other}"))),
            }
        }
        (CoreState::PackedVirtqueues(queues), ["queues", field]) => {
            let i = slot(steps, queues.len())?;
            let Some(q) = queues.get_mut(i) else {
                return Err(bad_path(path, "no such slot"));
            };
            match *field {
                "last_avail_idx" => put(&mut q.last_avail_idx, value, path),
                "last_avail_wrap_counter" => put(&mut q.last_avail_wrap_counter, value, path),
                "used_idx" => put(&mut q.used_idx, value, path),
                "used_wrap_counter" => put(&mut q.used_wrap_counter, value, path),
                "inuse" => put(&mut q.inuse, value, path),
                other => Err(bad_path(path, format!("no field {other}"))),
            }
        }
        _ => Err(bad_path(path, "not an editable field of this subsection")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_steps() {
        let steps = parse_path("subsections[virtio/started].value").unwrap();
        assert_eq!(
            steps[0],
            Step {
                name: "subsections",
                key: Some("virtio/started")
            }
        );
        assert_eq!(
            steps[1],
            Step {
                name: "value",
                key: None
            }
        );
        let steps = parse_path("requests[2].out[0].addr").unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(
            steps[1],
            Step {
                name: "out",
                key: Some("0")
            }
        );
        let steps = parse_path("devices[0000:00:01.0/virtio-blk].status").unwrap();
        assert_eq!(steps[0].key, Some("0000:00:01.0/virtio-blk"));
        for bad in ["", "a.", "a[1", "a..b", "a]b"] {
            assert!(parse_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn integers_in_decimal_and_hex() {
        assert_eq!(parse_int("17"), Some(17));
        assert_eq!(parse_int("0x1f"), Some(31));
        assert_eq!(parse_int("-1"), None);
    }
}
