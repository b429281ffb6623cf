//! `vmstate ram extract`: guest RAM out of a stream, as one sparse file per RAM block, one
//! sparse image laid out by guest-physical address, or an ELF core with one `PT_LOAD` per
//! RAM region (the layout of QEMU's `dump-guest-memory`).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use vmstate::extract::{self, BlockPages, Combined, PageTarget};
use vmstate::machine::Board;
use vmstate::memory::{self, MapRegion, RamMap};
use vmstate::wire::{Endian, Writer};

use super::devices::DeviceArgs;
use super::dump::{load_stream, SourceArgs};
use crate::io::write_output;
use crate::outcome::{Failure, Outcome};

/// `vmstate ram ...`.
#[derive(Debug, Subcommand)]
pub enum RamCommand {
    /// Write guest RAM out: a directory of one sparse file per RAM block (default), one
    /// sparse image by guest-physical address (--by physical) or an ELF core (--format elf).
    Extract(ExtractArgs),
}

/// How the output is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// One file per RAM block, named by the block's id with `/` replaced by `_`.
    Block,
    /// One image, each byte at its guest-physical address (the machine's memory map).
    Physical,
}

/// The output's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Bytes as they are.
    Raw,
    /// An ELF core file, one PT_LOAD per RAM region at its guest-physical address.
    Elf,
}

/// Arguments of `vmstate ram extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The stream (any container: libvirt image, qcow2 snapshot, compressed; `-` for stdin).
    input: PathBuf,
    /// A directory (--by block) or a file (--by physical, --format elf).
    output: PathBuf,
    /// Layout of the output.
    #[arg(long, value_enum, default_value = "block")]
    by: By,
    /// Format of the output (elf implies --by physical).
    #[arg(long, value_enum, default_value = "raw")]
    format: Format,
    /// Where RAM blocks sit in guest-physical memory, for machines whose map is not known
    /// (as for `check`).
    #[arg(long, value_name = "MAP")]
    ram_map: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// Runs `vmstate ram ...`.
pub fn run(command: RamCommand) -> Outcome {
    match command {
        RamCommand::Extract(args) => extract_command(args),
    }
}

/// The file name of RAM block `name`: its id with `/` replaced by `_`.
pub fn block_file_name(name: &str) -> String {
    let name = name.replace('/', "_");
    if name.is_empty() || name == "." || name == ".." {
        format!("_{name}")
    } else {
        name
    }
}

fn cannot(what: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::unreadable(format!("cannot write {}: {e}", what.display()))
}

/// One file per block, each as long as its block, with holes where nothing was written.
struct BlockFiles {
    index: HashMap<String, usize>,
    out: Combined<File>,
}

/// One file in which each (block, offset) has a place: `base + (offset - block_offset)` of
/// the region that holds it (the guest-physical address, or the offset in an ELF core).
struct Placed {
    out: Combined<File>,
    places: Vec<(MapRegion, u64)>,
}

impl Placed {
    fn position(&self, block: &str, offset: u64) -> Option<u64> {
        self.places.iter().find_map(|(r, base)| {
            let within = offset.checked_sub(r.block_offset)?;
            (r.block == block && within < r.len).then(|| base.saturating_add(within))
        })
    }
}

fn not_here() -> std::io::Error {
    std::io::Error::other("no file for this block")
}

impl PageTarget for BlockFiles {
    fn write(&mut self, block: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let file = *self.index.get(block).ok_or_else(not_here)?;
        self.out.write(file, offset, data)
    }
    fn zero(&mut self, block: &str, offset: u64, len: u64) -> std::io::Result<()> {
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.write(block, offset, &zeros)
    }
    fn read(&mut self, block: &str, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let file = *self.index.get(block).ok_or_else(not_here)?;
        self.out.read(file, offset, buf)
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl PageTarget for Placed {
    fn write(&mut self, block: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let last = offset.saturating_add((data.len() as u64).saturating_sub(1));
        if let (Some(first), Some(end)) = (self.position(block, offset), self.position(block, last))
        {
            if end.checked_sub(first) == Some(last.saturating_sub(offset)) {
                return self.out.write(0, first, data);
            }
        }
        // A page across regions, or partly unplaced: a sector at a time. Blocks (or parts)
        // the map does not place are not written: the report says so.
        for (k, chunk) in data.chunks(512).enumerate() {
            let at = offset.saturating_add((k * 512) as u64);
            if let Some(pos) = self.position(block, at) {
                self.out.write(0, pos, chunk)?;
            }
        }
        Ok(())
    }
    fn zero(&mut self, block: &str, offset: u64, len: u64) -> std::io::Result<()> {
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.write(block, offset, &zeros)
    }
    fn read(&mut self, block: &str, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self.position(block, offset) {
            Some(pos) => self.out.read(0, pos, buf),
            None => {
                buf.iter_mut().for_each(|b| *b = 0);
                Ok(())
            }
        }
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn extract_command(args: ExtractArgs) -> Outcome {
    let shown = args.input.display().to_string();
    let loaded = load_stream(&args.input, &args.source)?;
    let stream = &loaded.stream;
    let out = &args.output;
    let by = if args.format == Format::Elf {
        By::Physical
    } else {
        args.by
    };
    let blocks = memory::ram_blocks(stream);
    let machine = stream.configuration().map(|c| c.machine.clone());
    let mut map: Option<RamMap> = None;
    let mut report_extra = Vec::new();
    let pages: Vec<BlockPages> = match by {
        By::Block => {
            std::fs::create_dir_all(out).map_err(cannot(out))?;
            let mut index = HashMap::new();
            let mut files = Vec::new();
            for (name, len) in &blocks {
                let path = out.join(block_file_name(name));
                let file = File::create(&path).map_err(cannot(&path))?;
                file.set_len(*len).map_err(cannot(&path))?;
                index.insert(name.clone(), files.len());
                files.push(file);
            }
            let mut target = BlockFiles {
                index,
                out: Combined::new(files),
            };
            run_pass(&loaded, &mut target, &shown)?
        }
        By::Physical => {
            let devices = args.devices.decode(stream, &shown)?;
            let placed_map = memory::map_for(stream, &devices, args.ram_map.as_deref())
                .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
            let mut regions = placed_map.regions.clone();
            regions.sort_by_key(|r| r.gpa);
            let file = File::create(out).map_err(cannot(out))?;
            let places: Vec<(MapRegion, u64)> = match args.format {
                Format::Raw => {
                    let end = regions
                        .iter()
                        .map(|r| r.gpa.saturating_add(r.len))
                        .max()
                        .unwrap_or(0);
                    file.set_len(end).map_err(cannot(out))?;
                    regions.iter().map(|r| (r.clone(), r.gpa)).collect()
                }
                Format::Elf => {
                    let board = Board::identify(machine.as_deref(), &blocks);
                    let (header, places) = elf_layout(board, &regions);
                    file.write_all_at(&header, 0).map_err(cannot(out))?;
                    let end = places
                        .iter()
                        .map(|(r, base)| base.saturating_add(r.len))
                        .max()
                        .unwrap_or(header.len() as u64);
                    file.set_len(end).map_err(cannot(out))?;
                    places
                }
            };
            for (name, _) in &blocks {
                if !regions.iter().any(|r| r.block == *name) {
                    report_extra.push(format!(
                        "{name}: not placed (the memory map does not say where it sits), not \
                         written"
                    ));
                }
            }
            map = Some(placed_map);
            let mut target = Placed {
                out: Combined::new(vec![file]),
                places,
            };
            run_pass(&loaded, &mut target, &shown)?
        }
    };
    let text = if args.json {
        let value = serde_json::json!({
            "output": out.display().to_string(),
            "by": format!("{by:?}").to_lowercase(),
            "format": format!("{:?}", args.format).to_lowercase(),
            "map": map,
            "blocks": pages,
        });
        let mut text = serde_json::to_string_pretty(&value)
            .map_err(|e| Failure::unreadable(format!("cannot format the report: {e}")))?;
        text.push('\n');
        text
    } else {
        let mut text = String::new();
        if let Some(map) = &map {
            text.push_str(&format!("memory map: {}\n", map.how));
        }
        for b in &pages {
            text.push_str(&format!(
                "{}: {} bytes: {} page(s) of data, {} zero, {} not in the stream{}\n",
                b.name,
                b.used_length,
                b.data_pages,
                b.zero_pages,
                b.absent_pages,
                if by == By::Block {
                    format!(" -> {}", out.join(block_file_name(&b.name)).display())
                } else {
                    String::new()
                }
            ));
        }
        for line in &report_extra {
            text.push_str(line);
            text.push('\n');
        }
        text
    };
    write_output(Path::new("-"), text.as_bytes())
}

fn run_pass(
    loaded: &super::dump::LoadedStream,
    target: &mut dyn PageTarget,
    shown: &str,
) -> Result<Vec<BlockPages>, Failure> {
    let bytes = &loaded.bytes;
    bytes.rewind();
    let pages = extract::extract_ram(&loaded.stream, bytes, target, &mut |offset| {
        bytes.release_before(offset)
    })
    .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
    bytes.release_all();
    Ok(pages)
}

/// An ELF64 core's header and program headers for `regions` (sorted by address), and where
/// each region's bytes go in the file (page-aligned, after the headers).
fn elf_layout(board: Option<Board>, regions: &[MapRegion]) -> (Vec<u8>, Vec<(MapRegion, u64)>) {
    let (machine, endian) = match board {
        Some(Board::X86Pc | Board::X86Q35 | Board::X86Microvm) | None => (62u16, Endian::Little),
        Some(Board::ArmVirt) => (183, Endian::Little),
        Some(Board::RiscvVirt) => (243, Endian::Little),
        Some(Board::S390CcwVirtio) => (22, Endian::Big),
        Some(Board::PpcPseries) => (21, Endian::Big),
        Some(Board::PpcMac99) => (20, Endian::Big),
    };
    let phnum = u16::try_from(regions.len()).unwrap_or(u16::MAX);
    let mut h = Writer::new();
    h.bytes(&[0x7f, b'E', b'L', b'F', 2]);
    h.u8(if endian == Endian::Little { 1 } else { 2 });
    h.u8(1);
    h.zeros(9);
    h.u16(endian, 4); // ET_CORE
    h.u16(endian, machine);
    h.u32(endian, 1);
    h.u64(endian, 0); // entry
    h.u64(endian, 64); // program headers right after this header
    h.u64(endian, 0); // no section headers
    h.u32(endian, 0);
    h.u16(endian, 64);
    h.u16(endian, 56);
    h.u16(endian, phnum);
    h.u16(endian, 0);
    h.u16(endian, 0);
    h.u16(endian, 0);
    let headers = 64u64.saturating_add(56u64.saturating_mul(u64::from(phnum)));
    let mut at = headers.div_ceil(4096).saturating_mul(4096);
    let mut places = Vec::new();
    for r in regions.iter().take(usize::from(phnum)) {
        h.u32(endian, 1); // PT_LOAD
        h.u32(endian, 0);
        h.u64(endian, at);
        h.u64(endian, 0); // no virtual address: physical memory, as dump-guest-memory without paging
        h.u64(endian, r.gpa);
        h.u64(endian, r.len);
        h.u64(endian, r.len);
        h.u64(endian, 0);
        places.push((r.clone(), at));
        at = at.saturating_add(r.len.div_ceil(4096).saturating_mul(4096));
    }
    (h.into_bytes(), places)
}
