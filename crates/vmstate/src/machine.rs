//! What a machine type tells about a stream: where its main RAM block sits in the guest's
//! physical address space, and the guest's byte order by default.
//!
//! A stream names its machine in the configuration section (`pc-q35-7.2`, `virt-7.2`,
//! `s390-ccw-virtio-7.2`...) and its RAM blocks by the names the board gave them
//! (`pc.ram`, `mach-virt.ram`, `riscv_virt_board.ram`...). The block name settles the board
//! where the machine name does not (`virt` is an Arm and a RISC-V machine), and the board
//! settles the rest. Facts from QEMU's board code (`hw/i386/pc.c`, `hw/i386/microvm.c`,
//! `hw/arm/virt.c`, `hw/riscv/virt.c`, `hw/s390x/s390-virtio-ccw.c`, `hw/ppc/spapr.c`,
//! `hw/ppc/mac_newworld.c`).

use serde::Serialize;

use crate::memory::{MapRegion, RamMap};
use crate::wire::Endian;

/// Where guest RAM starts again above the 32-bit PCI hole on x86.
const FOUR_GIB: u64 = 1 << 32;

/// A board this crate knows the memory map of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Board {
    /// x86 `pc` (i440fx).
    X86Pc,
    /// x86 `q35`.
    X86Q35,
    /// x86 `microvm`.
    X86Microvm,
    /// Arm `virt` (aarch64 and 32-bit).
    ArmVirt,
    /// RISC-V `virt`.
    RiscvVirt,
    /// s390x `s390-ccw-virtio`.
    S390CcwVirtio,
    /// ppc64 `pseries`.
    PpcPseries,
    /// ppc `mac99`.
    PpcMac99,
}

impl Board {
    /// The board a stream was written on, from its machine type and RAM block names.
    pub fn identify(machine: Option<&str>, blocks: &[(String, u64)]) -> Option<Board> {
        let has = |name: &str| blocks.iter().any(|(b, _)| b == name);
        let machine = machine.unwrap_or("");
        Some(if has("pc.ram") {
            if machine.contains("q35") {
                Board::X86Q35
            } else {
                Board::X86Pc
            }
        } else if has("microvm.ram") {
            Board::X86Microvm
        } else if has("mach-virt.ram") {
            Board::ArmVirt
        } else if has("riscv_virt_board.ram") {
            Board::RiscvVirt
        } else if has("s390.ram") {
            Board::S390CcwVirtio
        } else if has("ppc_spapr.ram") {
            Board::PpcPseries
        } else if has("ppc_core99.ram") {
            Board::PpcMac99
        } else {
            return None;
        })
    }

    /// The board's main RAM block.
    pub fn ram_block(self) -> &'static str {
        match self {
            Board::X86Pc | Board::X86Q35 => "pc.ram",
            Board::X86Microvm => "microvm.ram",
            Board::ArmVirt => "mach-virt.ram",
            Board::RiscvVirt => "riscv_virt_board.ram",
            Board::S390CcwVirtio => "s390.ram",
            Board::PpcPseries => "ppc_spapr.ram",
            Board::PpcMac99 => "ppc_core99.ram",
        }
    }

    /// The board's firmware block that sits right below 4 GiB (the x86 BIOS flash), if any.
    pub fn firmware_below_4g(self) -> Option<&'static str> {
        match self {
            Board::X86Pc | Board::X86Q35 => Some("pc.bios"),
            _ => None,
        }
    }

    /// The byte order of the board's CPUs after reset: what legacy virtio devices use unless
    /// the stream's `virtio/device_endian` says otherwise.
    pub fn default_endian(self) -> Endian {
        match self {
            Board::S390CcwVirtio | Board::PpcPseries | Board::PpcMac99 => Endian::Big,
            _ => Endian::Little,
        }
    }

    /// Where the main RAM block of `ram_size` bytes sits, and how that was decided.
    pub fn ram_map(self, machine: &str, ram_size: u64) -> RamMap {
        let block = self.ram_block();
        let at = |gpa: u64, block_offset: u64, len: u64| MapRegion {
            block: block.to_owned(),
            block_offset,
            gpa,
            len,
        };
        let split = |low_limit: u64| {
            let below = ram_size.min(low_limit);
            let mut regions = vec![at(0, 0, below)];
            if ram_size > below {
                regions.push(at(FOUR_GIB, below, ram_size.saturating_sub(below)));
            }
            regions
        };
        let (regions, how) = match self {
            Board::X86Q35 => (
                split(if ram_size >= 0xb000_0000 {
                    0x8000_0000
                } else {
                    0xb000_0000
                }),
                format!(
                    "q35 machine ({machine}): pc.ram below 2 GiB or 2.75 GiB, the rest from 4 GiB"
                ),
            ),
            Board::X86Pc => (
                split(if ram_size >= 0xe000_0000 {
                    0xc000_0000
                } else {
                    0xe000_0000
                }),
                format!(
                    "i440fx machine ({machine}): pc.ram below 3 or 3.5 GiB, the rest from 4 GiB"
                ),
            ),
            Board::X86Microvm => (
                split(0xe000_0000),
                format!(
                    "microvm machine ({machine}): microvm.ram below 3.5 GiB, the rest from 4 GiB"
                ),
            ),
            Board::ArmVirt => (
                vec![at(0x4000_0000, 0, ram_size)],
                format!("Arm virt machine ({machine}): mach-virt.ram from 1 GiB"),
            ),
            Board::RiscvVirt => (
                vec![at(0x8000_0000, 0, ram_size)],
                format!("RISC-V virt machine ({machine}): riscv_virt_board.ram from 2 GiB"),
            ),
            Board::S390CcwVirtio => (
                vec![at(0, 0, ram_size)],
                format!("s390x machine ({machine}): s390.ram from 0"),
            ),
            Board::PpcPseries => (
                vec![at(0, 0, ram_size)],
                format!("pseries machine ({machine}): ppc_spapr.ram from 0"),
            ),
            Board::PpcMac99 => (
                vec![at(0, 0, ram_size)],
                format!("mac99 machine ({machine}): ppc_core99.ram from 0"),
            ),
        };
        RamMap { regions, how }
    }
}

/// The default byte order of a machine's guests, when the board is known.
pub fn default_endian(machine: Option<&str>, blocks: &[(String, u64)]) -> Option<Endian> {
    Board::identify(machine, blocks).map(Board::default_endian)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(name: &str, size: u64) -> Vec<(String, u64)> {
        vec![(name.to_owned(), size), ("pc.bios".to_owned(), 1 << 16)]
    }

    #[test]
    fn the_ram_block_settles_the_board() {
        let arm = Board::identify(Some("virt-7.2"), &blocks("mach-virt.ram", 1 << 26));
        let riscv = Board::identify(Some("virt"), &blocks("riscv_virt_board.ram", 1 << 26));
        assert_eq!(arm, Some(Board::ArmVirt));
        assert_eq!(riscv, Some(Board::RiscvVirt));
        assert_eq!(
            Board::identify(Some("pc-q35-7.2"), &blocks("pc.ram", 1 << 26)),
            Some(Board::X86Q35)
        );
        assert_eq!(
            Board::identify(Some("sun4u"), &blocks("sun4u.ram", 1)),
            None
        );
    }

    #[test]
    fn maps_place_the_main_block() {
        let map = Board::ArmVirt.ram_map("virt-7.2", 1 << 26);
        assert_eq!(
            map.block_offset(0x4000_1000),
            Some(("mach-virt.ram", 0x1000))
        );
        assert_eq!(map.block_offset(0x1000), None);
        let big = Board::X86Microvm.ram_map("microvm", 4 << 30);
        assert_eq!(big.regions.len(), 2);
        assert_eq!(
            big.block_offset(FOUR_GIB),
            Some(("microvm.ram", 0xe000_0000))
        );
        assert_eq!(Board::S390CcwVirtio.default_endian(), Endian::Big);
        assert_eq!(Board::RiscvVirt.default_endian(), Endian::Little);
    }
}
