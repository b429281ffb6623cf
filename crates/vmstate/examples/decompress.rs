//! Decompresses a compressed stream (gzip, bzip2, xz, lzop, zstd, told by its magic) and
//! counts the bytes, writing nothing: what reading a compressed input costs before any
//! parsing, the floor of `vmstate dump FILE.gz`.
//!
//! `cargo run --release --example decompress -- FILE`

use std::io::Read;

use vmstate::envelope::Compression;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).ok_or("usage: decompress FILE")?;
    let mut file = std::fs::File::open(&path)?;
    let mut magic = [0u8; 6];
    let got = file.read(&mut magic)?;
    let compression =
        Compression::detect(magic.get(..got).unwrap_or_default()).ok_or("not a compressed file")?;
    let input = std::io::Cursor::new(magic[..got].to_vec()).chain(file);
    let mut reader =
        compression.reader(std::io::BufReader::with_capacity(1 << 20, input), u64::MAX)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if reader.read(&mut buf)? == 0 {
            break;
        }
    }
    println!("{} bytes of {} data", reader.produced(), compression.name());
    Ok(())
}
