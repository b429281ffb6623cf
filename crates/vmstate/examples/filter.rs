//! A migration filter: reads a QEMU stream on standard input and writes it on standard
//! output with every in-flight request in the stable element layout, which an x86-64 QEMU
//! loads whatever host wrote the stream. Everything before the device state goes out as it
//! arrives; the device state, once the stream's description at its end has.
//!
//! `qemu ... -incoming "exec:cargo run -q --release --example filter -p vmstate < FIFO"`, or
//! `cargo run --example filter < i386.mig > stable.mig`

use std::io::Write;

use vmstate::devices::{self, DecodeOptions};
use vmstate::element::Layout;
use vmstate::stream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout().lock();
    let mut input = std::io::stdin().lock();
    let mut read = stream::read_one_pass(&mut input, 0, &mut |bytes| out.write_all(bytes))?;
    for device in devices::decode_virtio(&read.stream, &DecodeOptions::default())? {
        let framing = device.device.framing().map(|mut framing| {
            framing.layout = Layout::Stable;
            framing
        });
        devices::store_virtio(&mut read.stream, &device, framing)?;
    }
    stream::write_held(&read.stream, &read.held, &mut out)?;
    out.flush()?;
    // Written as soon as the description has arrived; then nothing may follow it.
    let end = read.held.offset + read.held.bytes.len() as u64;
    stream::expect_input_end(&mut input, end)?;
    Ok(())
}
