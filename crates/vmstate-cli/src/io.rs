//! Reading inputs and writing outputs, with `-` for standard input and output.
//!
//! Small inputs (element blobs, JSON) are read whole by [`read_input`]. Migration streams,
//! which carry all of a guest's memory, go through [`Input`]: a read-only mapping of the file,
//! so that the library parses a `&[u8]` without the stream ever being copied into memory, and
//! whose pages behind the parser are released as it goes ([`Input::release_before`]).
//! Input that cannot be mapped as it is (a pipe, a socket, a compressed stream) is a
//! [`Flowing`] stream, read once front to back as it arrives ([`Input::open_flowing`], for
//! the commands that read in one pass); for a command that reads pages out of order it is
//! first copied, a chunk at a time, to an anonymous temporary file in the temporary folder
//! (`TMPDIR`), which is then mapped the same way ([`Input::open`] says so on stderr).
//! What wraps the stream (a compression, a libvirt save image's header and domain XML) is
//! recognised by content ([`Envelope`]): a raw libvirt image is mapped in place from its
//! stream's offset, a compressed one decompressed as it is read.
//!
//! This is the crate's only `unsafe` code: mapping a file, releasing pages of the mapping,
//! and widening a pipe's buffer.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Deref;
use std::os::fd::AsFd;
use std::path::Path;
use std::rc::Rc;

use memmap2::{Advice, Mmap, UncheckedAdvice};
use vmstate::envelope::{
    Envelope, LibvirtImage, Qcow2Image, SaveFormat, LIBVIRT_HEADER_LEN, QCOW2_MAGIC,
};
use vmstate::stream::{self, Span, SpanWrite};

use crate::outcome::Failure;
use crate::progress::Progress;

/// The largest stream spooled from a pipe or decompressed from gzip: it goes to disk, not
/// memory, but a small compressed input must not fill the disk.
pub const SPOOL_LIMIT: u64 = 1 << 38;

/// How much of the mapping the parser gets ahead before the pages behind it are released:
/// resident memory stays within about this much whatever the size of the stream.
const RELEASE_STEP: usize = 16 << 20;

/// Bytes copied at a time when spooling: as much as a widened pipe holds.
const SPOOL_CHUNK: usize = 1 << 20;

/// The pipe buffer asked for on a pipe that is read (Linux gives 64 KiB by default, and
/// lets anyone raise it to `/proc/sys/fs/pipe-max-size`, 1 MiB by default): fewer, larger
/// reads and far fewer wake-ups of the writer and the reader.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Asks for a [`PIPE_SIZE`] buffer on `fd` when it is a pipe; anything else (a socket, a
/// terminal, a limit set lower) keeps what it has.
fn widen_pipe(fd: std::os::fd::BorrowedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of this process; on an fd
    // that is not a pipe it fails with EBADF or EINVAL, which changes nothing.
    let _ = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
}

/// The most XML and padding believed in a libvirt header read from a pipe (libvirt writes
/// the domain XML and 64 KiB): a lying length cannot make the reader hold more.
const LIBVIRT_DATA_LIMIT: u32 = 64 << 20;

/// Reads all of `path` (`-` for standard input), refusing inputs larger than `limit` bytes so
/// that a wrong file cannot exhaust memory.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, Failure> {
    let shown = path.display();
    let mut data = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
    } else {
        File::open(path).and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut data))
    };
    read.map_err(|e| Failure::unreadable(format!("cannot read {shown}: {e}")))?;
    if data.len() as u64 > limit {
        return Err(Failure::unreadable(format!(
            "{shown} is larger than {limit} bytes, more than this command reads"
        )));
    }
    Ok(data)
}

/// Writes `data` to `path` (`-` for standard output).
pub fn write_output(path: &Path, data: &[u8]) -> Result<(), Failure> {
    let shown = path.display();
    let written = if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(data).and_then(|()| out.flush())
    } else {
        std::fs::write(path, data)
    };
    written.map_err(|e| Failure::unreadable(format!("cannot write {shown}: {e}")))
}

/// A migration stream's bytes, unwrapped and decompressed, mapped read-only from a file.
pub struct Input {
    /// The file mapped: what the writer copies spans of the stream from, in the kernel.
    file: File,
    map: Mmap,
    /// Where the stream starts in the mapping (after a raw libvirt image's header and XML).
    start: usize,
    /// Bytes of the input as given (compressed, wrapped).
    pub file_size: u64,
    /// What wrapped the stream.
    pub envelope: Envelope,
    /// The mapping before this offset has been released.
    released: Cell<usize>,
}

impl Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.get(self.start..).unwrap_or(&[])
    }
}

/// A stream read once, front to back, as it arrives: from a pipe, or decompressed as it is
/// read. The envelope around it has been read already.
pub struct Flowing {
    reader: Box<dyn Read>,
    /// What wrapped the stream.
    pub envelope: Envelope,
    /// Bytes of the input read so far, counted by the reader beneath any decompressor.
    consumed: Rc<Cell<u64>>,
}

impl Read for Flowing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Flowing {
    /// Bytes of the input as given (compressed, wrapped) read so far: all of it at the end.
    pub fn file_size(&self) -> u64 {
        self.consumed.get()
    }
}

/// A stream opened for reading: mapped, or arriving in one pass.
pub enum Opened {
    /// A file (or a spooled copy) mapped whole.
    Mapped(Input),
    /// A pipe or a decompressor, read front to back.
    Flowing(Flowing),
}

/// How much of a flowing stream is looked at before it is read, to see whether it can be
/// read in one pass: its header and configuration section.
const HEAD_LOOK: usize = 4096;

impl Input {
    /// Opens the stream in `path` (`-` for standard input) for a command that reads it out
    /// of order: a regular file is mapped as it is; a compressed stream and anything that is
    /// not a regular file are spooled to a temporary file first, which is said on stderr.
    /// `snapshot` picks a qcow2 image's internal snapshot.
    pub fn open(path: &Path, snapshot: Option<&str>) -> Result<Input, Failure> {
        match Input::open_flowing(path, snapshot)? {
            Opened::Mapped(input) => Ok(input),
            Opened::Flowing(flowing) => {
                eprintln!(
                    "vmstate: {}: copying the stream to a temporary file first: this command \
                     reads it out of order",
                    path.display()
                );
                Input::spool(flowing, path)
            }
        }
    }

    /// Opens the stream in `path` (`-` for standard input) for a command that can read it
    /// front to back: a regular file is mapped, a pipe or a compressed stream is left to be
    /// read as it arrives (except a mapped-ram stream and a qcow2 image, which are read out
    /// of order and spooled).
    pub fn open_flowing(path: &Path, snapshot: Option<&str>) -> Result<Opened, Failure> {
        let shown = path.display();
        let cannot = |e: std::io::Error| Failure::unreadable(format!("cannot read {shown}: {e}"));
        if path == Path::new("-") {
            // Standard input redirected from a file can be mapped like any file.
            let stdin = std::io::stdin();
            let as_file = stdin
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .ok()
                .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
                .filter(|f| matches!((&*f).stream_position(), Ok(0)));
            return match as_file {
                Some(file) => Input::from_file(file, path, snapshot),
                None => {
                    widen_pipe(stdin.as_fd());
                    Input::from_pipe(Box::new(stdin.lock()), path, snapshot)
                }
            };
        }
        let file = File::open(path).map_err(cannot)?;
        let meta = file.metadata().map_err(cannot)?;
        if meta.is_file() {
            Input::from_file(file, path, snapshot)
        } else {
            widen_pipe(file.as_fd());
            Input::from_pipe(Box::new(file), path, snapshot)
        }
    }

    fn from_file(mut file: File, path: &Path, snapshot: Option<&str>) -> Result<Opened, Failure> {
        let shown = path.display();
        let cannot = |e: std::io::Error| Failure::unreadable(format!("cannot read {shown}: {e}"));
        let map = map(&file).map_err(cannot)?;
        let envelope =
            Envelope::identify(&map).map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        if let Envelope::Qcow2 { image, .. } = envelope {
            return Input::from_snapshot(&map, image, path, snapshot).map(Opened::Mapped);
        }
        if snapshot.is_some() {
            return Err(Failure::unreadable(format!(
                "{shown}: --snapshot: this is a {}, not a qcow2 image",
                envelope.describe()
            )));
        }
        let (offset, compression) = envelope
            .payload()
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        let size = map.len() as u64;
        match compression {
            None => Ok(Opened::Mapped(Input::new(
                size, envelope, file, map, offset,
            ))),
            Some(_) => {
                drop(map);
                file.seek(SeekFrom::Start(offset)).map_err(cannot)?;
                Input::flowing(Box::new(file), path, envelope, offset)
            }
        }
    }

    fn new(file_size: u64, envelope: Envelope, file: File, map: Mmap, start: u64) -> Input {
        // Only a hint: the parser reads front to back, so the kernel may read ahead further.
        let _ = map.advise(Advice::Sequential);
        let start = usize::try_from(start).unwrap_or(usize::MAX).min(map.len());
        Input {
            file,
            map,
            start,
            file_size,
            envelope,
            released: Cell::new(page_floor(start)),
        }
    }

    /// The VM state of the snapshot `key` picks (the newest with state by default, named on
    /// stderr) of the qcow2 image in `data`, copied to a temporary file and mapped.
    fn from_snapshot(
        data: &[u8],
        image: Qcow2Image,
        path: &Path,
        key: Option<&str>,
    ) -> Result<Input, Failure> {
        let shown = path.display();
        let chosen = image
            .select(key)
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        if key.is_none() {
            eprintln!(
                "vmstate: {shown}: reading snapshot {} \"{}\", the newest of {} with VM state \
                 (--snapshot picks another)",
                chosen.id,
                chosen.name,
                image
                    .snapshots
                    .iter()
                    .filter(|s| s.vm_state_size > 0)
                    .count()
            );
        }
        let spool = tempfile::tempfile()
            .map_err(|e| Failure::unreadable(format!("cannot create a temporary file: {e}")))?;
        let mut out = BufWriter::with_capacity(SPOOL_CHUNK, &spool);
        let mut bar = Progress::new("reading the snapshot", chosen.vm_state_size);
        image
            .read_vm_state(data, chosen, &mut out, SPOOL_LIMIT)
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        bar.finish();
        out.flush()
            .map_err(|e| Failure::unreadable(format!("cannot write a temporary file: {e}")))?;
        drop(out);
        let index = chosen.index;
        let map = map(&spool)
            .map_err(|e| Failure::unreadable(format!("cannot read a temporary file: {e}")))?;
        let envelope = Envelope::Qcow2 {
            image,
            chosen: Some(index),
        };
        Ok(Input::new(data.len() as u64, envelope, spool, map, 0))
    }

    /// Reads what wraps the stream from the start of `source` (a pipe), leaving the stream
    /// after it to flow. A qcow2 image, which must be read out of order, is spooled whole
    /// and read as a file.
    fn from_pipe(
        source: Box<dyn Read>,
        path: &Path,
        snapshot: Option<&str>,
    ) -> Result<Opened, Failure> {
        let shown = path.display();
        let cannot = |e: std::io::Error| Failure::unreadable(format!("cannot read {shown}: {e}"));
        let mut source = BufReader::with_capacity(SPOOL_CHUNK, source);
        let mut head = Vec::new();
        fill(&mut source, &mut head, 16).map_err(cannot)?;
        if head.starts_with(QCOW2_MAGIC) {
            let whole = Input::flowing_as_is(Box::new(std::io::Cursor::new(head).chain(source)));
            let whole = Input::spool(whole, path)?;
            let image = Qcow2Image::parse(&whole)
                .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
            return Input::from_snapshot(&whole, image, path, snapshot).map(Opened::Mapped);
        }
        if snapshot.is_some() {
            return Err(Failure::unreadable(format!(
                "{shown}: --snapshot: the input is not a qcow2 image"
            )));
        }
        if Envelope::is_libvirt(&head) {
            fill(&mut source, &mut head, LIBVIRT_HEADER_LEN as usize).map_err(cannot)?;
            // The data length is the second word, in the header's byte order: the order
            // that makes the version word (first) small.
            let word = |at: usize| {
                let b: [u8; 4] = head.get(at..at + 4)?.try_into().ok()?;
                Some((u32::from_le_bytes(b), u32::from_be_bytes(b)))
            };
            let data_len = match (word(16), word(20)) {
                (Some((version, le)), Some((_, be))) => {
                    if version <= 2 {
                        le
                    } else {
                        be
                    }
                }
                _ => 0,
            };
            if data_len > LIBVIRT_DATA_LIMIT {
                return Err(Failure::unreadable(format!(
                    "{shown}: libvirt.data_len: {data_len} bytes of domain XML, more than the \
                     {LIBVIRT_DATA_LIMIT} read from a pipe"
                )));
            }
            let total = (LIBVIRT_HEADER_LEN as usize).saturating_add(data_len as usize);
            fill(&mut source, &mut head, total).map_err(cannot)?;
        }
        let envelope =
            Envelope::identify(&head).map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        let (offset, _) = envelope
            .payload()
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        let rest = head
            .get(usize::try_from(offset).unwrap_or(usize::MAX)..)
            .unwrap_or(&[])
            .to_vec();
        Input::flowing(
            Box::new(std::io::Cursor::new(rest).chain(source)),
            path,
            envelope,
            offset,
        )
    }

    /// The stream in `source` (what follows the envelope's `skipped` bytes), decompressed as
    /// the envelope says. A stream that cannot be read in one pass (mapped-ram, found in its
    /// configuration section) is spooled.
    fn flowing(
        source: Box<dyn Read>,
        path: &Path,
        envelope: Envelope,
        skipped: u64,
    ) -> Result<Opened, Failure> {
        let shown = path.display();
        let consumed = Rc::new(Cell::new(skipped));
        let counted = Counted {
            inner: source,
            count: Rc::clone(&consumed),
        };
        let (_, compression) = envelope
            .payload()
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        let mut reader: Box<dyn Read> = match compression {
            Some(compression) => Box::new(
                compression
                    .reader(counted, SPOOL_LIMIT)
                    .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?,
            ),
            None => Box::new(counted),
        };
        let mut head = Vec::new();
        fill(&mut reader, &mut head, HEAD_LOOK)
            .map_err(|e| Failure::unreadable(format!("cannot read {shown}: {e}")))?;
        let refusal = stream::one_pass_refusal(&head);
        let flowing = Flowing {
            reader: Box::new(std::io::Cursor::new(head).chain(reader)),
            envelope,
            consumed,
        };
        match refusal {
            None => Ok(Opened::Flowing(flowing)),
            Some(reason) => {
                eprintln!(
                    "vmstate: {shown}: copying the stream to a temporary file first: {reason}"
                );
                Input::spool(flowing, path).map(Opened::Mapped)
            }
        }
    }

    /// A stream with no envelope, read as it comes.
    fn flowing_as_is(source: Box<dyn Read>) -> Flowing {
        let consumed = Rc::new(Cell::new(0));
        Flowing {
            reader: Box::new(Counted {
                inner: source,
                count: Rc::clone(&consumed),
            }),
            envelope: Envelope::Bare,
            consumed,
        }
    }

    /// Copies a flowing stream to an anonymous temporary file, a chunk at a time, and maps
    /// that.
    fn spool(mut flowing: Flowing, path: &Path) -> Result<Input, Failure> {
        let shown = path.display();
        let cannot = |e: std::io::Error| Failure::unreadable(format!("cannot read {shown}: {e}"));
        let spool = tempfile::tempfile()
            .map_err(|e| Failure::unreadable(format!("cannot create a temporary file: {e}")))?;
        let mut out = BufWriter::with_capacity(SPOOL_CHUNK, &spool);
        let copied =
            std::io::copy(&mut (&mut flowing).take(SPOOL_LIMIT), &mut out).map_err(cannot)?;
        let more = flowing.read(&mut [0u8]).map_err(cannot)?;
        if copied >= SPOOL_LIMIT && more > 0 {
            return Err(Failure::unreadable(format!(
                "{shown} is larger than {SPOOL_LIMIT} bytes, more than this command spools"
            )));
        }
        out.flush()
            .map_err(|e| Failure::unreadable(format!("cannot write a temporary file: {e}")))?;
        drop(out);
        let map = map(&spool).map_err(cannot)?;
        Ok(Input::new(
            flowing.file_size(),
            flowing.envelope,
            spool,
            map,
            0,
        ))
    }

    /// Tells the kernel that the mapping before `offset` is no longer needed, once the
    /// parser is [`RELEASE_STEP`] past what was released last.
    ///
    /// The pages are dropped from this process, not from the file: touching them again reads
    /// them back (from the page cache), so a release is never wrong, only sometimes wasted.
    pub fn release_before(&self, offset: u64) {
        let offset = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .saturating_add(self.start)
            .min(self.map.len());
        self.release(offset.saturating_sub(offset % RELEASE_STEP));
    }

    /// Releases the whole mapping, at the end of a pass.
    pub fn release_all(&self) {
        self.release(self.map.len());
    }

    fn release(&self, target: usize) {
        let from = self.released.get();
        if target <= from {
            return;
        }
        // SAFETY: the mapping is read-only and private, and never written through, so no page
        // of it holds data that is not in the file: MADV_DONTNEED only drops the pages from
        // this process, and a later access faults them in again with the same contents. The
        // range lies within the mapping (`target <= self.map.len()`) and starts at 0, at the
        // stream's start rounded down to a page, or where the last release ended, a multiple
        // of RELEASE_STEP and so of every page size.
        let _ = unsafe {
            self.map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                from,
                target.saturating_sub(from),
            )
        };
        self.released.set(target);
    }

    /// Starts releasing from the start again, for a second pass over the mapping (the writer
    /// copying pages after the reader has gone through).
    pub fn rewind(&self) {
        self.released.set(page_floor(self.start));
    }
}

/// `offset` rounded down to a page: releases start on page boundaries.
fn page_floor(offset: usize) -> usize {
    offset.saturating_sub(offset % 4096)
}

/// Reads from `source` into `head` until it holds `len` bytes or the input ends.
fn fill(source: &mut impl Read, head: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    let missing = len.saturating_sub(head.len());
    source.take(missing as u64).read_to_end(head).map(|_| ())
}

/// Maps `file` read-only.
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only, and the only way to change the bytes under it is for
    // the file to be changed while this process runs. Spooled files are anonymous, so only a
    // file named on the command line could be; like every tool that maps its input, vmstate
    // relies on its input file not being rewritten while it reads it (`convert` never
    // truncates a file it has mapped: its output replaces the old file by renaming).
    unsafe { Mmap::map(file) }
}

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get().saturating_add(n as u64));
        Ok(n)
    }
}

/// Reads the stream in `input`, drawing a progress bar for large inputs and releasing the
/// mapping behind the parser.
pub fn read_stream(input: &Input) -> vmstate::Result<stream::Stream> {
    let mut bar = Progress::new("reading", input.len() as u64);
    input.rewind();
    let parsed = stream::read_in_file(input, input.envelope.stream_file_offset(), &mut |offset| {
        bar.update(offset);
        input.release_before(offset);
    });
    input.release_all();
    bar.finish();
    parsed
}

/// Writes `stream` to `path` (`-` for standard output), copying pages from `input`, with a
/// progress bar for large inputs; releases the mapping behind the writer. Inside `image`,
/// when given: its header and domain XML first, then the stream compressed as it says (a
/// mapped-ram stream makes the image "sparse", page records a sparse image "raw").
/// `layout` is the RAM layout to write.
///
/// A regular file (or a new one) is written under a temporary name beside it and renamed
/// into place at the end, so a failed write leaves no partial output, and converting a file
/// onto itself never truncates the file that is being read. A mapped-ram stream written to
/// a file leaves holes where its pages hold nothing, as QEMU's does; one made from page
/// records can only be written to a file.
pub fn write_stream(
    stream: &stream::Stream,
    input: &Input,
    path: &Path,
    image: Option<&LibvirtImage>,
    layout: stream::RamLayout,
) -> Result<(), Failure> {
    let shown = path.display();
    let cannot = |e: std::io::Error| Failure::unreadable(format!("cannot write {shown}: {e}"));
    let to_mapped = layout.writes_mapped_ram(stream);
    // Pages of page records are placed after the rest is written: that takes a file.
    let places_pages = to_mapped && !stream.has_mapped_ram();
    let wrapping = Wrapping::new(image, to_mapped, path)?;
    let target = Target::open(path)?;
    if places_pages && !matches!(target, Target::Temporary(_)) {
        return Err(Failure::unreadable(format!(
            "cannot write {shown}: a mapped-ram stream made from page records is written to a \
             regular file (its pages are placed at fixed offsets after the rest), not to a pipe \
             or device"
        )));
    }
    let failed = |e: vmstate::Error| Failure::unreadable(format!("cannot write the stream: {e}"));
    let mut bar = Progress::new("writing", input.len() as u64);
    input.rewind();
    let mut progress = |offset| {
        bar.update(offset);
        input.release_before(offset);
    };
    match &target {
        Target::Temporary(temp) if to_mapped => {
            // Pages at fixed offsets, holes where they hold nothing, as QEMU writes them.
            let mut file = temp.as_file();
            file.write_all(&wrapping.header).map_err(cannot)?;
            let written =
                vmstate::extract::write_mapped_ram(stream, input, &mut file, &mut progress)
                    .map_err(failed)?;
            let absent: u64 = written.placed.iter().map(|b| b.absent_pages).sum();
            if absent > 0 {
                eprintln!(
                    "note: {absent} page(s) the input did not carry are zero pages in the \
                     mapped-ram output (it has no way to say a page is missing)"
                );
            }
        }
        _ => wrapping.write(target.writer(), path, Some(input), |out, file_offset| {
            let options = stream::WriteOptions {
                ram_layout: layout,
                file_offset,
            };
            stream::write_spans(stream, input, out, &options, &mut progress).map_err(failed)?;
            Ok(())
        })?,
    }
    target.finish(path)?;
    input.release_all();
    bar.finish();
    Ok(())
}

/// Converts a stream as it arrives: every byte before its device sections is written to
/// `path` as soon as it has been read, then `edit` changes the model of the device
/// sections, which are written from it. In `image`, when given, as [`write_stream`] writes.
/// What is written equals what [`write_stream`] writes of the same stream and edit.
pub fn convert_flowing(
    mut flowing: Flowing,
    input: &Path,
    path: &Path,
    image: Option<&LibvirtImage>,
    edit: impl FnOnce(&mut stream::Stream) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let shown_in = input.display();
    let wrapping = Wrapping::new(image, false, path)?;
    let target = Target::open(path)?;
    let file_offset = flowing.envelope.stream_file_offset();
    wrapping.write(target.writer(), path, None, |out, _| {
        let mut read =
            stream::read_one_pass(&mut flowing, file_offset, &mut |bytes| out.write_all(bytes))
                .map_err(|e| match e.kind() {
                    vmstate::ErrorKind::Output { .. } => {
                        Failure::unreadable(format!("cannot write {}: {e}", path.display()))
                    }
                    _ => Failure::unreadable(format!("{shown_in}: {e}")),
                })?;
        edit(&mut read.stream)?;
        stream::write_held(&read.stream, &read.held, &mut &mut *out)
            .map_err(|e| Failure::unreadable(format!("cannot write the stream: {e}")))?;
        // Written before the input ends: the destination gets the device state as soon as
        // the description has arrived, not when the source closes the channel.
        out.flush()
            .map_err(|e| Failure::unreadable(format!("cannot write {}: {e}", path.display())))?;
        let end = read
            .held
            .offset
            .saturating_add(read.held.bytes.len() as u64);
        stream::expect_input_end(&mut flowing, end)
            .map_err(|e| Failure::unreadable(format!("{shown_in}: {e}")))
    })?;
    target.finish(path)
}

/// What goes around a stream written into a libvirt save image: the header and XML, and
/// the image's compression.
struct Wrapping {
    header: Vec<u8>,
    format: Option<SaveFormat>,
}

impl Wrapping {
    /// The wrapping of `image` made to hold a stream that is mapped-ram or not; none
    /// without an image.
    fn new(image: Option<&LibvirtImage>, mapped: bool, path: &Path) -> Result<Wrapping, Failure> {
        let shown = path.display();
        let image = image
            .map(|image| image_holding(image, mapped))
            .transpose()
            .map_err(|reason| Failure::unreadable(format!("cannot write {shown}: {reason}")))?;
        let header = image
            .as_ref()
            .map(LibvirtImage::encode)
            .transpose()
            .map_err(|e| Failure::unreadable(format!("cannot write {shown}: {e}")))?
            .unwrap_or_default();
        Ok(Wrapping {
            header,
            format: image.map(|i| i.format),
        })
    }

    /// Writes the header to `file`, then what `body` writes, compressed as the image says;
    /// `body` is told where the stream starts in the file. Uncompressed, the spans of the
    /// stream in `copy_from` that `body` hands on unchanged are copied from its file in the
    /// kernel, when both are regular files ([`KernelCopy`]).
    fn write(
        &self,
        file: &File,
        path: &Path,
        copy_from: Option<&Input>,
        body: impl FnOnce(&mut dyn SpanWrite, u64) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let shown = path.display();
        let cannot = |e: std::io::Error| Failure::unreadable(format!("cannot write {shown}: {e}"));
        let mut out = file;
        out.write_all(&self.header).map_err(cannot)?;
        match self.format {
            Some(SaveFormat::Compressed(compression)) => {
                let mut packed = compression
                    .compressor(Box::new(&mut out))
                    .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
                body(&mut Spans::plain(&mut packed), 0)?;
                packed.finish().map_err(cannot)?;
            }
            _ => {
                let kernel = copy_from.and_then(|input| KernelCopy::new(input, file));
                let mut spans = Spans {
                    out: &mut out,
                    kernel,
                };
                body(&mut spans, self.header.len() as u64)?;
            }
        }
        out.flush().map_err(cannot)
    }
}

/// A written stream's output, which copies the spans of the input it is handed unchanged in
/// the kernel when it can, and writes everything else.
struct Spans<'a> {
    out: &'a mut dyn Write,
    kernel: Option<KernelCopy<'a>>,
}

impl<'a> Spans<'a> {
    /// An output that writes spans of the input as bytes.
    fn plain(out: &'a mut dyn Write) -> Spans<'a> {
        Spans { out, kernel: None }
    }
}

impl Write for Spans<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl SpanWrite for Spans<'_> {
    fn write_source_span(&mut self, span: Span, bytes: &[u8]) -> std::io::Result<()> {
        let copied = match self.kernel.as_mut() {
            Some(kernel) => kernel.copy(span)?,
            None => 0,
        };
        self.out.write_all(bytes.get(copied..).unwrap_or_default())
    }
}

/// Copies spans of an input file to an output file in the kernel, so that the pages of
/// the input are neither mapped nor read by this process: `copy_file_range`, or, between
/// two filesystems (to tmpfs), `sendfile`. Each comes after the output's file position, as
/// a write does.
struct KernelCopy<'a> {
    from: &'a File,
    /// Where the stream starts in `from`.
    start: u64,
    to: &'a File,
    how: CopyHow,
}

/// The system call spans are copied with: the next is tried when one fails in a way that
/// says it cannot copy between these files, and the bytes are written once none can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyHow {
    CopyFileRange,
    SendFile,
    Write,
}

impl<'a> KernelCopy<'a> {
    /// Copying from `input`'s file to `to`, when `to` is a regular file (a pipe or a device
    /// is written).
    fn new(input: &'a Input, to: &'a File) -> Option<KernelCopy<'a>> {
        to.metadata()
            .is_ok_and(|m| m.is_file())
            .then_some(KernelCopy {
                from: &input.file,
                start: input.start as u64,
                to,
                how: CopyHow::CopyFileRange,
            })
    }

    /// Copies `span` of the stream, or as much of it from its start as the kernel will;
    /// returns how much.
    fn copy(&mut self, span: Span) -> std::io::Result<usize> {
        let mut done = 0u64;
        while done < span.len {
            let from = self.start.saturating_add(span.offset).saturating_add(done);
            let len = usize::try_from(span.len.saturating_sub(done)).unwrap_or(usize::MAX);
            let copied = match self.how {
                CopyHow::CopyFileRange => copy_file_range(self.from, from, self.to, len),
                CopyHow::SendFile => send_file(self.from, from, self.to, len),
                CopyHow::Write => break,
            };
            match copied {
                // The input ends early: the rest is written, from the mapping.
                Ok(0) => break,
                Ok(n) => done = done.saturating_add(n as u64),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if cannot_copy(&e) => {
                    self.how = match self.how {
                        CopyHow::CopyFileRange => CopyHow::SendFile,
                        CopyHow::SendFile | CopyHow::Write => CopyHow::Write,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(usize::try_from(done).unwrap_or(0))
    }
}

/// Whether a copy failed because it cannot copy between these two files (another
/// filesystem, a kind of file or an open mode it does not take, a kernel without it), not
/// because the output failed: then the bytes are written instead.
fn cannot_copy(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EBADF)
    )
}

/// `copy_file_range` of up to `len` bytes at `offset` of `from` to `to` at its position.
fn copy_file_range(from: &File, offset: u64, to: &File, len: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut offset = libc::loff_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both descriptors are open for the length of the call; the call writes only
    // `offset`, a loff_t it is given the address of, and a null output offset makes it
    // write at the output's file position.
    let copied = unsafe {
        libc::copy_file_range(
            from.as_raw_fd(),
            &mut offset,
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            0,
        )
    };
    usize::try_from(copied).map_err(|_| std::io::Error::last_os_error())
}

/// `sendfile` of up to `len` bytes at `offset` of `from` to `to` at its position.
fn send_file(from: &File, offset: u64, to: &File, len: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both descriptors are open for the length of the call, which writes only
    // `offset`, an off_t it is given the address of.
    let copied = unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), &mut offset, len) };
    usize::try_from(copied).map_err(|_| std::io::Error::last_os_error())
}

/// Where an output stream goes.
enum Target {
    /// Standard output, written unbuffered (the writer gathers its own pieces).
    Stdout(File),
    /// A device or a pipe (`/dev/null`, a FIFO), written in place.
    InPlace(File),
    /// A regular file, written under a temporary name beside it and renamed at the end.
    Temporary(tempfile::NamedTempFile),
}

impl Target {
    fn open(path: &Path) -> Result<Target, Failure> {
        let shown = path.display();
        let cannot = |e: std::io::Error| Failure::unreadable(format!("cannot write {shown}: {e}"));
        if path == Path::new("-") {
            let stdout = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(cannot)?;
            return Ok(Target::Stdout(File::from(stdout)));
        }
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return File::create(path).map(Target::InPlace).map_err(cannot);
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        tempfile::Builder::new()
            .prefix(".vmstate-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            .map(Target::Temporary)
            .map_err(cannot)
    }

    fn writer(&self) -> &File {
        match self {
            Target::Stdout(file) | Target::InPlace(file) => file,
            Target::Temporary(temp) => temp.as_file(),
        }
    }

    /// Puts a temporary file in place; the others are written already.
    fn finish(self, path: &Path) -> Result<(), Failure> {
        match self {
            Target::Temporary(temp) => temp.persist(path).map(|_| ()).map_err(|e| {
                Failure::unreadable(format!("cannot write {}: {}", path.display(), e.error))
            }),
            Target::Stdout(_) | Target::InPlace(_) => Ok(()),
        }
    }
}

/// `image` with the format that holds the stream written: "sparse" for a mapped-ram
/// stream, "raw" for page records that came in a sparse image, else as it was.
fn image_holding(image: &LibvirtImage, mapped: bool) -> Result<LibvirtImage, String> {
    let mut image = image.clone();
    image.format = match (image.format, mapped) {
        (SaveFormat::Compressed(c), true) => {
            return Err(format!(
                "a {}-compressed libvirt save image cannot hold a mapped-ram stream (its pages \
                 sit at fixed offsets of the file): add --to stream",
                c.name()
            ))
        }
        (_, true) => SaveFormat::Sparse,
        (SaveFormat::Sparse, false) => SaveFormat::Raw,
        (format, false) => format,
    };
    Ok(image)
}

/// Prints `value` as indented JSON on standard output.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::unreadable(format!("cannot render JSON: {e}")))?;
    text.push('\n');
    write_output(Path::new("-"), text.as_bytes())
}
