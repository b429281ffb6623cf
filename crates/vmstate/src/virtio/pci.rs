//! The virtio-pci transport's part of the blob: PCI config space, IRQ state and MSI-X.
//!
//! Its length is not written anywhere. Two facts settle it, and both can be read from the
//! saved config space itself: a PCI Express capability means 4096 bytes of config space
//! (else 256), and an MSI-X capability gives the table size, which decides the length of the
//! MSI-X table and pending bits and whether a vector follows the config and each queue.

use serde::Serialize;

use super::{HexBytes, Inference};
use crate::error::{ErrorKind, Result};
use crate::subsection;
use crate::wire::{Endian, Reader, Writer};

/// Bytes of config space of a conventional PCI function.
const PCI_CONFIG_SIZE: usize = 256;
/// Bytes of config space of a PCI Express function.
const PCIE_CONFIG_SIZE: usize = 4096;
/// Bytes of one MSI-X table entry.
const MSIX_ENTRY_SIZE: usize = 16;
/// The vector value meaning "no vector".
pub const NO_VECTOR: u16 = 0xffff;

/// What the saved config space says about the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PciShape {
    /// The function has a PCI Express capability, so its config space is 4096 bytes.
    pub express: bool,
    /// Number of MSI-X vectors (0: no MSI-X capability).
    pub msix_vectors: u16,
    /// Offset of the MSI-X capability in config space, when there is one.
    pub msix_capability: Option<u8>,
}

/// The transport state that virtio-pci saves before the virtio core's fields.
///
/// What delimits it ([`PciShape`]) is not stored beside it: it is read from the config space
/// each time ([`PciTransport::shape`]), so the two cannot disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciTransport {
    /// The PCIDevice VMState's own `version_id` field (0 to 2).
    pub version: u32,
    /// The saved config space: 256 bytes, or 4096 for PCI Express.
    pub config_space: HexBytes,
    /// Level of each of the four INTx pins (0 or 1).
    pub irq_state: [u32; 4],
    /// MSI-X state, when the function has MSI-X.
    pub msix: Option<MsixState>,
}

impl Serialize for PciTransport {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            version: u32,
            config_space: &'a HexBytes,
            irq_state: [u32; 4],
            #[serde(skip_serializing_if = "Option::is_none")]
            msix: Option<&'a MsixState>,
            shape: PciShape,
        }
        View {
            version: self.version,
            config_space: &self.config_space,
            irq_state: self.irq_state,
            msix: self.msix.as_ref(),
            shape: self.shape(),
        }
        .serialize(serializer)
    }
}

/// The MSI-X table, pending bits and the config-change vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MsixState {
    /// The MSI-X table: 16 bytes per vector.
    pub table: HexBytes,
    /// The pending-bit array: one bit per vector, rounded up to bytes.
    pub pending: HexBytes,
    /// The vector for configuration changes (0xffff: none).
    pub config_vector: u16,
}

impl PciTransport {
    /// Name of the VMState that saved the config space; its subsections are peeked for.
    fn vmsd_name(express: bool) -> &'static str {
        if express {
            "PCIEDevice"
        } else {
            "PCIDevice"
        }
    }

    /// What the saved config space says about the function.
    pub fn shape(&self) -> PciShape {
        shape_of(&self.config_space.0)
    }

    /// Whether the parts agree with what the config space says, as the decoder requires:
    /// its size, and an MSI-X table and pending bits exactly when it has an MSI-X capability,
    /// of the sizes the capability gives.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let shape = self.shape();
        let size = if shape.express {
            PCIE_CONFIG_SIZE
        } else {
            PCI_CONFIG_SIZE
        };
        if self.config_space.0.len() != size {
            return Err(format!(
                "pci.config_space: {} bytes, but its capabilities make it {size}",
                self.config_space.0.len()
            ));
        }
        let vectors = match shape.msix_capability {
            Some(_) => usize::from(shape.msix_vectors),
            None => 0,
        };
        match (&self.msix, vectors) {
            (None, 0) => Ok(()),
            (Some(_), 0) => Err(
                "pci.msix: MSI-X state without an MSI-X capability in the config space".to_owned(),
            ),
            (None, n) => Err(format!(
                "pci.msix: the config space has an MSI-X capability of {n} vectors but no MSI-X \
                 state is given"
            )),
            (Some(msix), n) => {
                if msix.table.0.len() != n.saturating_mul(MSIX_ENTRY_SIZE)
                    || msix.pending.0.len() != n.div_ceil(8)
                {
                    return Err(format!(
                        "pci.msix: a table of {} and pending bits of {} bytes for {n} vectors",
                        msix.table.0.len(),
                        msix.pending.0.len()
                    ));
                }
                Ok(())
            }
        }
    }

    /// True when each queue carries an MSI-X vector after its fields.
    pub fn has_vectors(&self) -> bool {
        self.msix.is_some()
    }

    /// Reads the transport part, recording in `inferred` what the config space told.
    pub fn decode(r: &mut Reader<'_>, inferred: &mut Vec<Inference>) -> Result<Self> {
        let version_offset = r.offset();
        let version = r.u32(Endian::Big, "pci.version")?;
        if version > 2 {
            return Err(crate::Error::new(
                ErrorKind::InvalidValue {
                    value: u64::from(version),
                    expected: "a PCIDevice version from 0 to 2",
                },
                version_offset,
                "pci.version",
            ));
        }
        let head = r.peek(PCI_CONFIG_SIZE);
        let shape = shape_of(head);
        let config_size = if shape.express {
            PCIE_CONFIG_SIZE
        } else {
            PCI_CONFIG_SIZE
        };
        inferred.push(Inference::new(
            "pci.config_space",
            if shape.express {
                "PCI Express function: 4096 bytes of config space"
            } else {
                "conventional PCI function: 256 bytes of config space"
            },
            if shape.express {
                "the saved config space has a PCI Express capability (id 0x10)"
            } else {
                "the saved config space has no PCI Express capability (id 0x10)"
            },
        ));
        let config_space = HexBytes(r.bytes(config_size, "pci.config_space")?.to_vec());
        let mut irq_state = [0u32; 4];
        for (pin, level) in irq_state.iter_mut().enumerate() {
            let offset = r.offset();
            *level = r.u32(Endian::Big, "pci.irq_state")?;
            if *level > 1 {
                return Err(crate::Error::new(
                    ErrorKind::InvalidValue {
                        value: u64::from(*level),
                        expected: "an IRQ level of 0 or 1",
                    },
                    offset,
                    format!("pci.irq_state[{pin}]"),
                ));
            }
        }
        subsection::end_of_struct(r, Self::vmsd_name(shape.express))?;

        let msix = match (shape.msix_vectors, shape.msix_capability) {
            (0, _) | (_, None) => {
                inferred.push(Inference::new(
                    "pci.msix",
                    "no MSI-X: no vectors saved",
                    "the saved config space has no MSI-X capability (id 0x11)",
                ));
                None
            }
            (vectors, Some(cap)) => {
                inferred.push(Inference::new(
                    "pci.msix",
                    format!("MSI-X with {vectors} vectors"),
                    format!("the MSI-X capability at config offset {cap:#x} gives the table size"),
                ));
                let vectors = usize::from(vectors);
                let table = r.bytes(vectors.saturating_mul(MSIX_ENTRY_SIZE), "pci.msix.table")?;
                let pending = r.bytes(vectors.div_ceil(8), "pci.msix.pending")?;
                let config_vector = r.u16(Endian::Big, "pci.msix.config_vector")?;
                Some(MsixState {
                    table: HexBytes(table.to_vec()),
                    pending: HexBytes(pending.to_vec()),
                    config_vector,
                })
            }
        };
        Ok(PciTransport {
            version,
            config_space,
            irq_state,
            msix,
        })
    }

    /// Writes the transport part back.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(Endian::Big, self.version);
        w.bytes(&self.config_space.0);
        for level in self.irq_state {
            w.u32(Endian::Big, level);
        }
        if let Some(msix) = &self.msix {
            w.bytes(&msix.table.0);
            w.bytes(&msix.pending.0);
            w.u16(Endian::Big, msix.config_vector);
        }
    }
}

/// Walks the capability list of a saved config space.
///
/// The walk is bounded (at most 48 capabilities, pointers inside the first 256 bytes), so a
/// looping or wild list in hostile input ends it rather than hanging.
pub fn shape_of(config: &[u8]) -> PciShape {
    const STATUS: usize = 0x06;
    const STATUS_CAP_LIST: u8 = 0x10;
    const CAPABILITIES_POINTER: usize = 0x34;
    const CAP_ID_MSIX: u8 = 0x11;
    const CAP_ID_EXPRESS: u8 = 0x10;
    let byte = |at: usize| config.get(at).copied().unwrap_or(0);

    let mut shape = PciShape {
        express: false,
        msix_vectors: 0,
        msix_capability: None,
    };
    if byte(STATUS) & STATUS_CAP_LIST == 0 {
        return shape;
    }
    let mut pointer = usize::from(byte(CAPABILITIES_POINTER) & !0x3);
    for _ in 0..48 {
        if pointer < 0x40 {
            break;
        }
        match byte(pointer) {
            CAP_ID_EXPRESS => shape.express = true,
            CAP_ID_MSIX if shape.msix_capability.is_none() => {
                let control = u16::from_le_bytes([
                    byte(pointer.saturating_add(2)),
                    byte(pointer.saturating_add(3)),
                ]);
                shape.msix_vectors = (control & 0x7ff).saturating_add(1);
                shape.msix_capability = u8::try_from(pointer).ok();
            }
            _ => {}
        }
        pointer = usize::from(byte(pointer.saturating_add(1)) & !0x3);
    }
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(caps: &[(u8, u8, u16)]) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[6] = 0x10;
        c[0x34] = caps.first().map_or(0, |c| c.0);
        for (k, &(at, id, control)) in caps.iter().enumerate() {
            let at = usize::from(at);
            c[at] = id;
            c[at + 1] = caps.get(k + 1).map_or(0, |c| c.0);
            c[at + 2..at + 4].copy_from_slice(&control.to_le_bytes());
        }
        c
    }

    #[test]
    fn reads_msix_size_and_express_from_capabilities() {
        let shape = shape_of(&config_with(&[(0x98, 0x11, 0x8001), (0x40, 0x09, 0)]));
        assert_eq!(
            shape,
            PciShape {
                express: false,
                msix_vectors: 2,
                msix_capability: Some(0x98)
            }
        );
        assert!(shape_of(&config_with(&[(0x40, 0x10, 0)])).express);
    }

    #[test]
    fn a_looping_capability_list_ends() {
        let mut c = config_with(&[(0x40, 0x09, 0)]);
        c[0x41] = 0x40;
        assert_eq!(shape_of(&c).msix_vectors, 0);
        assert_eq!(shape_of(&[]).msix_vectors, 0);
    }
}
