//! Saving a live virtio-blk device with requests in flight and restoring it: every request
//! completes exactly once, on one side, and the disk holds what was written.

mod vmm_sim;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sim::{scenario, Device, Driver, Rng, Shape};

/// Scenarios of the property test: a sample in the default tier, 10^4 with `CI=true`.
fn scenario_count() -> u64 {
    match std::env::var("CI").as_deref() {
        Ok("true") => 10_000,
        _ => 300,
    }
}

fn random_shape(rng: &mut Rng, seed: u64) -> (Shape, u64, u64, u64) {
    let size = 1u16 << (1 + rng.below(10)); // 2 to 1024
    let shape = Shape {
        queues: 1 + rng.below(4) as u16,
        size,
        event_idx: rng.below(2) == 0,
        start_idx: u16::MAX - rng.below(3 * u64::from(size)) as u16,
        seed,
    };
    let requests = 1 + rng.below(3 * u64::from(size).min(200));
    let migrate_after = 1 + rng.below(12);
    let latency = 1 + rng.below(5);
    (shape, requests, migrate_after, latency)
}

#[test]
fn every_request_completes_exactly_once_across_a_migration() {
    let count = scenario_count();
    let mut rng = Rng(0x1234_5678);
    let mut with_in_flight = 0;
    for k in 0..count {
        let seed = rng.next();
        let (shape, requests, migrate_after, latency) = random_shape(&mut rng, seed);
        let outcome = scenario(shape, requests, migrate_after, latency);
        let what = format!("scenario {k} {shape:?} requests {requests} migrate after {migrate_after} latency {latency}: {outcome:?}");
        assert_eq!(outcome.submitted, requests, "{what}");
        assert_eq!(outcome.completed_once, requests, "{what}");
        assert_eq!(outcome.lost, 0, "{what}");
        assert_eq!(outcome.duplicated, 0, "{what}");
        assert!(outcome.disk_verified, "{what}");
        if outcome.in_flight_at_save > 0 {
            with_in_flight += 1;
        }
    }
    // The property is worth something only if most migrations had requests in flight.
    assert!(
        with_in_flight * 2 > count,
        "{with_in_flight} of {count} had requests in flight"
    );
    eprintln!("{count} scenarios, {with_in_flight} migrated with requests in flight");
}

fn stopped_source(shape: Shape, requests: u64) -> (GuestMemoryMmap, Device, Driver) {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), shape.memory_size() as usize)])
            .unwrap();
    let mut driver = Driver::new(shape, &mem);
    let mut device = Device::new(shape, &mem, shape.disk_sectors(requests), u64::MAX);
    for k in 0..requests {
        assert!(driver.submit(&mem, (k % u64::from(shape.queues)) as u16));
    }
    device.pop(&mem, 0);
    (mem, device, driver)
}

const SHAPE: Shape = Shape {
    queues: 2,
    size: 64,
    event_idx: true,
    start_idx: 65500,
    seed: 7,
};

#[test]
fn the_stream_reads_and_checks_clean_with_the_stream_reader() {
    let (mem, device, _) = stopped_source(SHAPE, 40);
    assert_eq!(device.in_flight(), 40);
    let bytes = vmm_sim::save_stream(&device, &mem).unwrap();
    let stream = vmstate::stream::read(&bytes).unwrap();
    // Written back byte for byte by the stream writer: the model holds all of it.
    assert_eq!(vmstate::stream::write(&stream, &bytes).unwrap(), bytes);
    let sections = vmstate::devices::decode_virtio(&stream, &Default::default()).unwrap();
    assert_eq!(sections.len(), 1);
    assert_eq!(sections[0].idstr, "virtio-mmio@00000000d0000000/virtio-blk");
    let map = vmstate::memory::map_for(&stream, &sections, None).unwrap();
    let ram = vmstate::memory::GuestRam::from_stream(&stream, &bytes, map, &mut |_| {}).unwrap();
    let report = vmstate::check::check_stream(
        &sections,
        &[],
        Some(&ram as &dyn vmstate::memory::GuestBytes),
    );
    assert!(report.is_clean(), "{report:?}");
    assert!(report.devices[0].not_checked.is_empty(), "{report:?}");
}

#[test]
fn restore_refuses_a_chain_the_memory_contradicts_and_names_it() {
    let (mem, device, _) = stopped_source(SHAPE, 10);
    let bytes = vmm_sim::save_stream(&device, &mem).unwrap();
    let (sections, memory) = vmstate::vmm::load_stream(&bytes).unwrap();
    // The destination's memory differs from the source's: one in-flight head's descriptor
    // points elsewhere.
    let head = device.pending[0][0].head;
    let at = SHAPE.desc(0) + 16 * u64::from(head);
    let addr: u64 = memory.read_obj(GuestAddress(at)).unwrap();
    memory.write_obj(addr + 0x1000, GuestAddress(at)).unwrap();
    let err = vmstate::vmm::restore_blk(&sections[0].device, &memory, 1024).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("requests[0]"), "{text}");
    assert!(
        matches!(err.kind(), vmstate::ErrorKind::Inconsistent { .. }),
        "{text}"
    );
}

#[test]
fn save_refuses_a_head_past_the_ring_and_a_head_twice() {
    let (mem, device, _) = stopped_source(SHAPE, 4);
    let mut snapshot = device.snapshot();
    snapshot.queues[0].in_flight.push(64);
    let err = snapshot.to_device(&mem).unwrap_err();
    assert!(err.path().contains("vq[0].in_flight[head 64]"), "{err}");
    let mut snapshot = device.snapshot();
    let first = snapshot.queues[1].in_flight[0];
    snapshot.queues[1].in_flight.push(first);
    assert!(snapshot.to_device(&mem).is_err());
    let mut snapshot = device.snapshot();
    snapshot.driver_features &= !(1 << 32);
    assert!(snapshot
        .to_device(&mem)
        .unwrap_err()
        .to_string()
        .contains("VIRTIO_F_VERSION_1"));
}
