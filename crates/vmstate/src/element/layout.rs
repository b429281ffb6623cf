//! The host layouts of the legacy `VirtQueueElementOld` struct, and the stable format.

use std::fmt;
use std::str::FromStr;

use crate::wire::Endian;

/// Number of address slots and iovec slots in each direction of the legacy struct
/// (QEMU's `VIRTQUEUE_MAX_SIZE`). It is also the largest number of segments an element has.
pub const VIRTQUEUE_MAX_SIZE: usize = 1024;

/// How a host's C compiler laid out `VirtQueueElementOld`, whose bytes QEMU copies into the
/// stream.
///
/// The struct is `unsigned index, out_num, in_num; hwaddr in_addr[1024], out_addr[1024];
/// struct iovec in_sg[1024], out_sg[1024]`. Hosts differ in byte order, in the width of
/// `size_t` and pointers (the iovec), and in whether a 64-bit `hwaddr` is aligned to 8 (which
/// puts four bytes of padding after `in_num`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    /// The stable format: little-endian, 64-bit. Byte-identical to what LP64 little-endian
    /// hosts (x86-64, aarch64, ppc64le, riscv64) have always written.
    Stable,
    /// LP64 big-endian hosts: s390x, ppc64, sparc64.
    Lp64Be,
    /// 32-bit x86 (System V i386 ABI: `u64` aligned to 4, so no padding after `in_num`).
    I386,
    /// 32-bit little-endian hosts that align `u64` to 8: ARM EABI, riscv32, x32.
    Ilp32Le,
    /// 32-bit big-endian hosts that align `u64` to 8: ppc32, mips.
    Ilp32Be,
}

/// Byte offsets of each field of the struct in one layout.
///
/// Element `k` of an array lies at `array offset + k * element size` (8 for addresses,
/// [`Geometry::iovec_size`] for iovecs). Within an iovec, `iov_base` comes first and
/// `iov_len` follows it, each [`Geometry::word_size`] bytes wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Byte order of every field.
    pub endian: Endian,
    /// Width of `size_t` and of a pointer: 8 on LP64, 4 on ILP32.
    pub word_size: usize,
    /// Offset of `index` (u32).
    pub index: usize,
    /// Offset of `out_num` (u32).
    pub out_num: usize,
    /// Offset of `in_num` (u32).
    pub in_num: usize,
    /// Offset of `in_addr[0]` (u64 each).
    pub in_addr: usize,
    /// Offset of `out_addr[0]` (u64 each).
    pub out_addr: usize,
    /// Offset of `in_sg[0]`.
    pub in_sg: usize,
    /// Offset of `out_sg[0]`.
    pub out_sg: usize,
    /// Size of one `struct iovec`.
    pub iovec_size: usize,
    /// Size of the whole struct: the bytes of one element on the wire.
    pub size: usize,
}

impl Layout {
    /// Every layout, stable first.
    pub const ALL: [Layout; 5] = [
        Layout::Stable,
        Layout::Lp64Be,
        Layout::I386,
        Layout::Ilp32Le,
        Layout::Ilp32Be,
    ];

    /// The layout's canonical name, as the command line takes it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Stable => "stable",
            Layout::Lp64Be => "lp64-be",
            Layout::I386 => "i386",
            Layout::Ilp32Le => "ilp32-le",
            Layout::Ilp32Be => "ilp32-be",
        }
    }

    /// Other names the layout is known by.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Layout::Stable => &["lp64-le", "x86_64", "aarch64"],
            Layout::Lp64Be => &["s390x", "ppc64"],
            Layout::I386 => &["x86"],
            Layout::Ilp32Le => &["arm"],
            Layout::Ilp32Be => &["ppc32", "ppc"],
        }
    }

    /// Looks a layout up by its name or one of its aliases.
    pub fn from_name(name: &str) -> Option<Layout> {
        Layout::ALL
            .into_iter()
            .find(|l| l.name() == name || l.aliases().contains(&name))
    }

    /// Where each field lies in this layout (the table of `docs/FORMAT.md`).
    pub fn geometry(self) -> Geometry {
        // LP64: u64 aligned to 8 (pad 12..16), 16-byte iovecs.
        const LP64: Geometry = Geometry {
            endian: Endian::Little,
            word_size: 8,
            index: 0,
            out_num: 4,
            in_num: 8,
            in_addr: 16,
            out_addr: 8_208,
            in_sg: 16_400,
            out_sg: 32_784,
            iovec_size: 16,
            size: 49_168,
        };
        // ILP32 with u64 aligned to 8: pad 12..16, 8-byte iovecs.
        const ILP32: Geometry = Geometry {
            endian: Endian::Little,
            word_size: 4,
            index: 0,
            out_num: 4,
            in_num: 8,
            in_addr: 16,
            out_addr: 8_208,
            in_sg: 16_400,
            out_sg: 24_592,
            iovec_size: 8,
            size: 32_784,
        };
        // i386: u64 aligned to 4, no padding, 8-byte iovecs.
        const I386: Geometry = Geometry {
            endian: Endian::Little,
            word_size: 4,
            index: 0,
            out_num: 4,
            in_num: 8,
            in_addr: 12,
            out_addr: 8_204,
            in_sg: 16_396,
            out_sg: 24_588,
            iovec_size: 8,
            size: 32_780,
        };
        match self {
            Layout::Stable => LP64,
            Layout::Lp64Be => Geometry {
                endian: Endian::Big,
                ..LP64
            },
            Layout::I386 => I386,
            Layout::Ilp32Le => ILP32,
            Layout::Ilp32Be => Geometry {
                endian: Endian::Big,
                ..ILP32
            },
        }
    }

    /// Bytes of one element in this layout.
    pub fn size(self) -> usize {
        self.geometry().size
    }
}

impl serde::Serialize for Layout {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A layout that a user asked for: a fixed one, or detection from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayoutChoice {
    /// Detect the layout from the size and the plausibility of the counters.
    #[default]
    Auto,
    /// Use this layout.
    Fixed(Layout),
}

/// The name given is not a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLayout(pub String);

impl fmt::Display for UnknownLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Layout::ALL.iter().map(|l| l.name()).collect();
        write!(
            f,
            "unknown layout '{}': expected auto, {} or lp64-le",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownLayout {}

impl FromStr for Layout {
    type Err = UnknownLayout;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Layout::from_name(s).ok_or_else(|| UnknownLayout(s.to_owned()))
    }
}

impl FromStr for LayoutChoice {
    type Err = UnknownLayout;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            Ok(LayoutChoice::Auto)
        } else {
            s.parse().map(LayoutChoice::Fixed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays the struct out as a C compiler does, from the ABI's three facts, and checks the
    /// hand-written table against it.
    #[test]
    fn geometry_table_matches_the_c_layout_rules() {
        fn align_up(v: usize, a: usize) -> usize {
            v.div_ceil(a) * a
        }
        for layout in Layout::ALL {
            let (u64_align, word) = match layout {
                Layout::Stable | Layout::Lp64Be => (8, 8),
                Layout::I386 => (4, 4),
                Layout::Ilp32Le | Layout::Ilp32Be => (8, 4),
            };
            let g = layout.geometry();
            let in_addr = align_up(12, u64_align);
            let out_addr = in_addr + 8 * VIRTQUEUE_MAX_SIZE;
            let in_sg = align_up(out_addr + 8 * VIRTQUEUE_MAX_SIZE, word);
            let out_sg = in_sg + 2 * word * VIRTQUEUE_MAX_SIZE;
            let size = align_up(out_sg + 2 * word * VIRTQUEUE_MAX_SIZE, u64_align.max(word));
            assert_eq!(
                (
                    g.in_addr,
                    g.out_addr,
                    g.in_sg,
                    g.out_sg,
                    g.size,
                    g.iovec_size,
                    g.word_size
                ),
                (in_addr, out_addr, in_sg, out_sg, size, 2 * word, word),
                "{layout}"
            );
            assert_eq!((g.index, g.out_num, g.in_num), (0, 4, 8));
        }
    }

    #[test]
    fn names_round_trip() {
        for layout in Layout::ALL {
            assert_eq!(Layout::from_name(layout.name()), Some(layout));
            assert_eq!(
                layout.name().parse::<LayoutChoice>(),
                Ok(LayoutChoice::Fixed(layout))
            );
        }
        assert_eq!("lp64-le".parse::<Layout>(), Ok(Layout::Stable));
        assert_eq!("auto".parse::<LayoutChoice>(), Ok(LayoutChoice::Auto));
        assert!("lp32".parse::<LayoutChoice>().is_err());
    }

    #[test]
    fn sizes_are_the_documented_ones() {
        let sizes: Vec<usize> = Layout::ALL.iter().map(|l| l.size()).collect();
        assert_eq!(sizes, [49_168, 49_168, 32_780, 32_784, 32_784]);
    }
}
