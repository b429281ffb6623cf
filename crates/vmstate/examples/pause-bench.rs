//! The pause of a snapshot, measured: from "pause" to "device state saved", draining the
//! requests in flight first (what Rust VMMs do today) against saving them in flight, for
//! backends whose I/O takes 0, 10 ms, 1 s and never; then the size and the save and restore
//! times of 1, 16 and 64 queues with 1024 requests in flight each.
//!
//! `cargo run --release --example pause-bench [-- --give-up-after-ms MS]`
//!
//! Draining gives up after `--give-up-after-ms` (default 5000; Cloud Hypervisor gives up
//! after 30 s), which is what a hung disk costs it.

#[path = "../tests/vmm_sim/mod.rs"]
mod vmm_sim;

use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sim::{Device, Driver, Rng, Shape};
use vmstate::vmm::restore_blk;
use vmstate::wire::Writer;

fn memory(shape: &Shape) -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), shape.memory_size() as usize)])
        // ok: a benchmark of its own state; no input reaches it.
        .expect("guest memory")
}

/// A device with `per_queue` requests popped on each queue, whose I/O takes `latency` ms
/// from the moment they were popped.
fn loaded(shape: Shape, per_queue: u64, latency: u64) -> (GuestMemoryMmap, Device, Driver) {
    let mem = memory(&shape);
    let mut driver = Driver::new(shape, &mem);
    let total = per_queue * u64::from(shape.queues);
    let mut device = Device::new(shape, &mem, shape.disk_sectors(total), latency);
    for k in 0..total {
        driver.submit(&mem, (k % u64::from(shape.queues)) as u16);
    }
    device.pop(&mem, 0);
    (mem, device, driver)
}

/// Saving the device state with its requests in flight: snapshot, chains walked, encoded.
fn save(device: &Device, mem: &GuestMemoryMmap) -> Vec<u8> {
    // ok: the benchmark built this device itself; a failure is a bug to see at once.
    let state = device.snapshot().to_device(mem).expect("save");
    let mut w = Writer::new();
    // ok: as above, the state is the benchmark's own.
    state.encode(&mut w).expect("encode");
    w.into_bytes()
}

fn main() {
    let mut give_up = Duration::from_millis(5000);
    let args: Vec<String> = std::env::args().collect();
    if let Some(k) = args.iter().position(|a| a == "--give-up-after-ms") {
        if let Some(ms) = args.get(k + 1).and_then(|v| v.parse().ok()) {
            give_up = Duration::from_millis(ms);
        }
    }
    let shape = Shape {
        queues: 1,
        size: 256,
        event_idx: true,
        start_idx: 0,
        indirect_only: true,
        seed: 9,
    };
    println!("pause to state saved, 128 requests in flight, virtio-blk on one queue of 256");
    println!("| backend I/O | drain, then save | save in flight | state bytes |");
    println!("|---|---|---|---|");
    for (name, latency) in [
        ("0", 0u64),
        ("10 ms", 10),
        ("1 s", 1000),
        ("never (hung)", u64::MAX),
    ] {
        // Drain: no new requests are taken; the ones in flight finish, then the state is saved.
        let (mem, mut device, _) = loaded(shape, 128, latency);
        let clock = Instant::now();
        let mut rng = Rng(1);
        let pause = Instant::now();
        let mut gave_up = false;
        while device.in_flight() > 0 {
            if pause.elapsed() > give_up {
                gave_up = true;
                break;
            }
            device.complete(&mem, clock.elapsed().as_millis() as u64, &mut rng);
            if device.in_flight() > 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let drained = if gave_up {
            format!(
                "gave up after {:.0} s, nothing saved",
                give_up.as_secs_f64()
            )
        } else {
            let _ = save(&device, &mem);
            format!("{:.3} ms", pause.elapsed().as_secs_f64() * 1e3)
        };

        let (mem, device, _) = loaded(shape, 128, latency);
        let runs = 20;
        let mut best = f64::MAX;
        let mut bytes = 0;
        for _ in 0..runs {
            let pause = Instant::now();
            bytes = save(&device, &mem).len();
            best = best.min(pause.elapsed().as_secs_f64() * 1e3);
        }
        println!("| {name} | {drained} | {best:.3} ms (best of {runs}) | {bytes} |");
    }

    println!();
    println!("1024 requests in flight per queue (rings of 1024, indirect chains)");
    println!("| queues | requests | state bytes | bytes per request | save | restore |");
    println!("|---|---|---|---|---|---|");
    for queues in [1u16, 16, 64] {
        let shape = Shape {
            queues,
            size: 1024,
            event_idx: true,
            start_idx: 0,
            indirect_only: true,
            seed: 3,
        };
        let (mem, device, _) = loaded(shape, 1024, u64::MAX);
        let requests = device.in_flight();
        let start = Instant::now();
        let bytes = save(&device, &mem);
        let saved = start.elapsed();
        let start = Instant::now();
        let decoded = vmstate::virtio::VirtioDevice::decode_on(
            &mut vmstate::wire::Reader::new(&bytes),
            vmstate::virtio::DeviceKind::Blk,
            vmstate::virtio::TransportKind::Mmio,
            &vmstate::virtio::Assumptions {
                num_queues: Some(u32::from(queues)),
                packed: Some(false),
                ..Default::default()
            },
        )
        // ok: the bytes are the ones just encoded.
        .expect("decode");
        // ok: restored against the memory it was saved from.
        let restored = restore_blk(&decoded, &mem, 1024).expect("restore");
        let restore = start.elapsed();
        let back: usize = restored.iter().map(|q| q.requests.len()).sum();
        assert_eq!(back, requests);
        println!(
            "| {queues} | {requests} | {} | {} | {:.1} ms | {:.1} ms |",
            bytes.len(),
            bytes.len() / requests.max(1),
            saved.as_secs_f64() * 1e3,
            restore.as_secs_f64() * 1e3
        );
    }
}
