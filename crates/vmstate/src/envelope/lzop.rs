//! lzop's file format around LZO1X blocks (what `lzop -c` writes and `lzop -dc` reads), on
//! top of minilzo's bounds-checked LZO1X decompressor.
//!
//! A file is a header (magic, versions, method, flags, mode, times, a name, a checksum), then
//! blocks: the uncompressed and compressed lengths, checksums as the flags ask, and the data
//! (stored as it is when compressing did not make it smaller), up to a block of length 0.

use std::io::{self, Read, Write};

/// The nine bytes every lzop file starts with.
pub(super) const MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0, b'\r', b'\n', 0x1a, b'\n'];

const F_ADLER32_D: u32 = 0x1;
const F_ADLER32_C: u32 = 0x2;
const F_H_EXTRA_FIELD: u32 = 0x40;
const F_CRC32_D: u32 = 0x100;
const F_CRC32_C: u32 = 0x200;
const F_MULTIPART: u32 = 0x400;
const F_H_FILTER: u32 = 0x800;
const F_H_CRC32: u32 = 0x1000;

/// lzop's largest block (its `MAX_BLOCK_SIZE`): no length read from the input above it is
/// believed, so a hostile length cannot make the decoder allocate more.
const MAX_BLOCK: u32 = 64 << 20;
/// The block size lzop itself writes.
const BLOCK: usize = 256 << 10;

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("lzop: {}", why.into()))
}

fn adler32(data: &[u8]) -> u32 {
    minilzo_rs::adler32(data)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// Reads `N` bytes, also into `seen` (the header's bytes, for its checksum).
fn take<const N: usize>(r: &mut impl Read, seen: &mut Vec<u8>) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    seen.extend_from_slice(&b);
    Ok(b)
}

fn be16(r: &mut impl Read, seen: &mut Vec<u8>) -> io::Result<u16> {
    take::<2>(r, seen).map(u16::from_be_bytes)
}

fn be32(r: &mut impl Read, seen: &mut Vec<u8>) -> io::Result<u32> {
    take::<4>(r, seen).map(u32::from_be_bytes)
}

/// Decompresses an lzop file as it is read.
pub(super) struct Decoder<R> {
    input: R,
    flags: Option<u32>,
    block: Vec<u8>,
    at: usize,
    done: bool,
    lzo: Option<minilzo_rs::LZO>,
}

impl<R: Read> Decoder<R> {
    pub(super) fn new(input: R) -> Self {
        Decoder {
            input,
            flags: None,
            block: Vec::new(),
            at: 0,
            done: false,
            lzo: None,
        }
    }

    fn header(&mut self) -> io::Result<u32> {
        let r = &mut self.input;
        let mut magic = [0u8; 9];
        r.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(invalid("not an lzop file (bad magic)"));
        }
        let mut seen = Vec::new();
        let version = be16(r, &mut seen)?;
        let _library = be16(r, &mut seen)?;
        if version >= 0x0940 {
            let _needed = be16(r, &mut seen)?;
        }
        let [method] = take::<1>(r, &mut seen)?;
        if !(1..=3).contains(&method) {
            return Err(invalid(format!("method {method} is not LZO1X")));
        }
        if version >= 0x0940 {
            let _level = take::<1>(r, &mut seen)?;
        }
        let flags = be32(r, &mut seen)?;
        if flags & F_MULTIPART != 0 {
            return Err(invalid("multi-part files are not supported"));
        }
        if flags & F_H_FILTER != 0 {
            let _filter = be32(r, &mut seen)?;
        }
        let _mode = be32(r, &mut seen)?;
        let _mtime = be32(r, &mut seen)?;
        if version >= 0x0940 {
            let _mtime_high = be32(r, &mut seen)?;
        }
        let [name_len] = take::<1>(r, &mut seen)?;
        let mut name = vec![0u8; usize::from(name_len)];
        r.read_exact(&mut name)?;
        seen.extend_from_slice(&name);
        let sum = be32(r, &mut Vec::new())?;
        let expected = if flags & F_H_CRC32 != 0 {
            crc32(&seen)
        } else {
            adler32(&seen)
        };
        if sum != expected {
            return Err(invalid(format!(
                "header checksum {sum:#010x}, the header's bytes give {expected:#010x}"
            )));
        }
        if flags & F_H_EXTRA_FIELD != 0 {
            let len = be32(r, &mut Vec::new())?;
            if len > MAX_BLOCK {
                return Err(invalid(format!("extra field of {len} bytes")));
            }
            io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
            let _sum = be32(r, &mut Vec::new())?;
        }
        Ok(flags)
    }

    /// Reads the next block into `self.block`; false at the end of the file.
    fn next_block(&mut self, flags: u32) -> io::Result<bool> {
        let r = &mut self.input;
        let mut none = Vec::new();
        let dst_len = be32(r, &mut none)?;
        if dst_len == 0 {
            return Ok(false);
        }
        let src_len = be32(r, &mut none)?;
        if dst_len > MAX_BLOCK || src_len > dst_len || src_len == 0 {
            return Err(invalid(format!(
                "a block of {src_len} compressed bytes for {dst_len} (at most {MAX_BLOCK}, and \
                 never more than it decompresses to)"
            )));
        }
        let sum_d_adler = (flags & F_ADLER32_D != 0)
            .then(|| be32(r, &mut none))
            .transpose()?;
        let sum_d_crc = (flags & F_CRC32_D != 0)
            .then(|| be32(r, &mut none))
            .transpose()?;
        let compressed = src_len < dst_len;
        let sum_c_adler = (compressed && flags & F_ADLER32_C != 0)
            .then(|| be32(r, &mut none))
            .transpose()?;
        let sum_c_crc = (compressed && flags & F_CRC32_C != 0)
            .then(|| be32(r, &mut none))
            .transpose()?;
        let mut src = Vec::new();
        r.take(u64::from(src_len)).read_to_end(&mut src)?;
        if src.len() != src_len as usize {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "lzop: the file ends inside a block",
            ));
        }
        let check = |what: &str, data: &[u8], adler: Option<u32>, crc: Option<u32>| {
            if adler.is_some_and(|s| s != adler32(data)) || crc.is_some_and(|s| s != crc32(data)) {
                return Err(invalid(format!("{what} checksum mismatch")));
            }
            Ok(())
        };
        self.block = if compressed {
            check("compressed block", &src, sum_c_adler, sum_c_crc)?;
            let lzo = match &mut self.lzo {
                Some(lzo) => lzo,
                lzo @ None => {
                    lzo.insert(minilzo_rs::LZO::init().map_err(|e| invalid(format!("{e:?}")))?)
                }
            };
            let out = lzo
                .decompress_safe(&src, dst_len as usize)
                .map_err(|e| invalid(format!("corrupt LZO1X block: {e:?}")))?;
            if out.len() != dst_len as usize {
                return Err(invalid(format!(
                    "a block decompressed to {} bytes, its header says {dst_len}",
                    out.len()
                )));
            }
            out
        } else {
            src
        };
        check("block", &self.block, sum_d_adler, sum_d_crc)?;
        self.at = 0;
        Ok(true)
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let flags = match self.flags {
            Some(f) => f,
            None => {
                let flags = self.header()?;
                self.flags = Some(flags);
                flags
            }
        };
        while self.at >= self.block.len() {
            if !self.next_block(flags)? {
                self.done = true;
                return Ok(0);
            }
        }
        let rest = self.block.get(self.at..).unwrap_or(&[]);
        let n = rest.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.at = self.at.saturating_add(n);
        Ok(n)
    }
}

/// Compresses into an lzop file as it is written, in lzop's own block size, with Adler-32
/// checksums of each block as lzop writes by default.
pub(super) struct Encoder<W: Write> {
    out: W,
    pending: Vec<u8>,
    started: bool,
    lzo: Option<minilzo_rs::LZO>,
}

impl<W: Write> Encoder<W> {
    pub(super) fn new(out: W) -> Self {
        Encoder {
            out,
            pending: Vec::with_capacity(BLOCK),
            started: false,
            lzo: None,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let mut header = Vec::new();
        header.extend(0x1040u16.to_be_bytes()); // version
        header.extend(0x2080u16.to_be_bytes()); // LZO library version
        header.extend(0x0940u16.to_be_bytes()); // version needed to extract
        header.push(1); // M_LZO1X_1
        header.push(5); // level
        header.extend((F_ADLER32_D | F_ADLER32_C).to_be_bytes());
        header.extend(0o100644u32.to_be_bytes()); // mode
        header.extend([0u8; 8]); // mtime, low and high
        header.push(0); // no name
        let sum = adler32(&header);
        self.out.write_all(&MAGIC)?;
        self.out.write_all(&header)?;
        self.out.write_all(&sum.to_be_bytes())
    }

    fn write_block(&mut self) -> io::Result<()> {
        self.start()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let lzo = match &mut self.lzo {
            Some(lzo) => lzo,
            lzo @ None => {
                lzo.insert(minilzo_rs::LZO::init().map_err(|e| invalid(format!("{e:?}")))?)
            }
        };
        let packed = lzo
            .compress(&self.pending)
            .map_err(|e| invalid(format!("cannot compress: {e:?}")))?;
        let data = &self.pending;
        let stored = packed.len() >= data.len();
        let len = |n: usize| u32::try_from(n).map_err(|_| invalid("block too large"));
        self.out.write_all(&len(data.len())?.to_be_bytes())?;
        let body: &[u8] = if stored { data } else { &packed };
        self.out.write_all(&len(body.len())?.to_be_bytes())?;
        self.out.write_all(&adler32(data).to_be_bytes())?;
        if !stored {
            self.out.write_all(&adler32(&packed).to_be_bytes())?;
        }
        self.out.write_all(body)?;
        self.pending.clear();
        Ok(())
    }

    /// Writes the last block and the end marker; returns the output.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.write_block()?;
        self.out.write_all(&0u32.to_be_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = BLOCK.saturating_sub(self.pending.len());
        let n = room.min(buf.len());
        self.pending.extend_from_slice(buf.get(..n).unwrap_or(&[]));
        if self.pending.len() >= BLOCK {
            self.write_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
