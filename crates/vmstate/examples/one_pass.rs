//! Reads a migration stream from standard input in one pass, as it arrives, and prints what
//! it holds: the way to read a stream from a socket or a pipe without keeping it.
//!
//! `cat FILE.mig | cargo run --example one_pass`

use vmstate::stream::{self, Record, SectionBody};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut passed = 0u64;
    // Every byte before the device state is handed on as soon as it is read: a filter would
    // write it out here.
    let read = stream::read_one_pass(&mut std::io::stdin().lock(), 0, &mut |bytes| {
        passed += bytes.len() as u64;
        Ok(())
    })?;
    println!(
        "{passed} bytes read and handed on, {} held for the device state",
        read.held.bytes.len()
    );
    for block in read.stream.ram_summary() {
        println!(
            "RAM block {}: {} bytes, {} pages, {} zero pages",
            block.name, block.used_length, block.pages, block.zero_pages
        );
    }
    let devices = read
        .stream
        .records
        .iter()
        .filter(|r| matches!(r, Record::Section(s) if matches!(s.body, SectionBody::Device(_))))
        .count();
    println!("{devices} device sections decoded through the stream's description");
    Ok(())
}
