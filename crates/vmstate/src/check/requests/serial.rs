//! virtio-serial: the element a throttled port holds belongs to that port's transmit queue.
//!
//! QEMU returns it on the port's transmit queue when the port drains; an element taken from
//! another queue would be completed on the wrong ring, where the guest never submitted it.

use super::Outstanding;
use crate::check::{DeviceReport, Finding, Rule, SavedElement};
use crate::virtio::{queue_role, transmit_queue, SerialState};

pub(super) fn check(
    serial: &SerialState,
    saved: &[SavedElement<'_>],
    outstanding: Option<&Outstanding>,
    report: &mut DeviceReport,
) {
    for (k, port) in serial.ports.iter().enumerate() {
        let Some(popped) = &port.popped else {
            continue;
        };
        let path = format!("serial.ports[{k}].popped");
        let element = &popped.element.element;
        if !element.device_writable.is_empty() {
            report.findings.push(Finding::new(
                Rule::SerialElementQueue,
                format!("{path}.in"),
                format!(
                    "port {}'s element has {} device-writable buffer(s): the guest's transmit \
                     buffers are device-readable only, so it is not from the port's transmit \
                     queue",
                    port.id,
                    element.device_writable.len()
                ),
            ));
        }
        let (Some(outstanding), Some(queue)) = (outstanding, transmit_queue(port.id)) else {
            continue;
        };
        let head = u64::from(element.index);
        let on = |q: usize| {
            outstanding
                .get(&q)
                .is_some_and(|heads| heads.contains(&head))
        };
        let Ok(queue) = usize::try_from(queue) else {
            continue;
        };
        if on(queue) || !outstanding.contains_key(&queue) {
            continue;
        }
        let mut others: Vec<usize> = outstanding.keys().copied().filter(|&q| on(q)).collect();
        others.sort_unstable();
        if let Some(&other) = others.first() {
            report.findings.push(Finding::new(
                Rule::SerialElementQueue,
                format!("{path}.index"),
                format!(
                    "port {}'s element (head {head}) is not outstanding on its transmit queue \
                     {queue} but on queue {other}, {}",
                    port.id,
                    queue_role(u32::try_from(other).unwrap_or(u32::MAX))
                ),
            ));
        }
    }
    report.checked.push(format!(
        "{} throttled element(s): each belongs to its port's transmit queue",
        saved.len()
    ));
}
