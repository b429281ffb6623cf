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
    // 4 to 1024: a request takes 3 descriptors, and no chain may be longer than its ring.
    let size = 1u16 << (2 + rng.below(9));
    let shape = Shape {
        queues: 1 + rng.below(4) as u16,
        size,
        event_idx: rng.below(2) == 0,
        start_idx: u16::MAX - rng.below(3 * u64::from(size)) as u16,
        indirect_only: rng.below(4) == 0,
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
    indirect_only: false,
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

mod support;

use proptest::prelude::*;
use std::io::Read as _;
use vmstate::element::{Element, Segment};
use vmstate::virtio::{Assumptions, DeviceKind, DeviceState, TransportKind, VirtioDevice};
use vmstate::wire::{Reader, Writer};

fn real_pci_blk() -> VirtioDevice {
    let name = "virtio/qemu7.2-blk-inflight-split--0000_00_01.0-virtio-blk.bin.gz";
    let file = std::fs::File::open(support::fixture(name)).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap();
    VirtioDevice::decode(
        &mut Reader::new(&bytes),
        DeviceKind::Blk,
        &Assumptions::default(),
    )
    .unwrap()
}

#[test]
fn a_hand_built_device_that_would_not_decode_is_refused_before_it_is_encoded() {
    let device = real_pci_blk();
    assert!(device.transport.pci().unwrap().msix.is_some());
    device.encode(&mut Writer::new()).unwrap();

    // MSI-X vectors with no MSI-X table: the bytes would be read without vectors.
    let mut no_table = device.clone();
    if let vmstate::virtio::Transport::Pci(pci) = &mut no_table.transport {
        pci.msix = None;
    }
    let err = no_table.encode(&mut Writer::new()).unwrap_err();
    assert!(err.to_string().contains("MSI-X capability"), "{err}");
    assert!(err.path().starts_with("pci"), "{err}");

    let mut no_vector = device.clone();
    no_vector.queues[0].vector = None;
    let err = no_vector.encode(&mut Writer::new()).unwrap_err();
    assert_eq!(err.path(), "vq[0].vector", "{err}");

    let mut mmio_align = device.clone();
    mmio_align.queues[0].align = Some(4096);
    assert_eq!(
        mmio_align.encode(&mut Writer::new()).unwrap_err().path(),
        "vq[0].align"
    );

    let mut selector = device;
    selector.queue_sel = 1024;
    assert_eq!(
        selector.encode(&mut Writer::new()).unwrap_err().path(),
        "queue_sel"
    );
}

/// A device as `BlkSnapshot::to_device` builds it, for the model property test to vary.
fn base_device(queues: u16) -> VirtioDevice {
    let shape = Shape {
        queues,
        size: 16,
        event_idx: false,
        start_idx: 0,
        indirect_only: false,
        seed: 1,
    };
    let (mem, device, _) = stopped_source(shape, u64::from(queues) * 3);
    device.snapshot().to_device(&mem).unwrap()
}

fn segment() -> impl Strategy<Value = Segment> {
    (any::<u32>(), 1u64..=1 << 20).prop_map(|(page, len)| Segment {
        addr: u64::from(page) << 12,
        len,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Models built by hand (queues, indices, status, config, requests with their segments)
    /// encode, and decode back to the same model.
    #[test]
    fn hand_built_models_decode_to_themselves(
        queues in 1u16..4,
        status in any::<u8>(),
        config in proptest::collection::vec(any::<u8>(), 0..64),
        indices in proptest::collection::vec(any::<u16>(), 4),
        requests in proptest::collection::vec(
            (0u32..4, 0u32..1024, proptest::collection::vec(segment(), 1..6),
             proptest::collection::vec(segment(), 0..4)),
            0..12,
        ),
    ) {
        let mut device = base_device(queues);
        device.status = status;
        device.config = vmstate::virtio::HexBytes(config);
        for (q, index) in device.queues.iter_mut().zip(&indices) {
            q.last_avail_idx = *index;
        }
        if let DeviceState::Blk(blk) = &mut device.device {
            blk.requests = requests
                .into_iter()
                .map(|(queue, head, out, inn)| vmstate::virtio::InFlight {
                    queue: (queues > 1).then_some(queue % u32::from(queues)),
                    ndescs: None,
                    element: Element { index: head, device_readable: out, device_writable: inn },
                })
                .collect();
        }
        let mut w = Writer::new();
        device.encode(&mut w).unwrap();
        let bytes = w.into_bytes();
        let assume = Assumptions { num_queues: Some(u32::from(queues)), packed: Some(false), ..Assumptions::default() };
        let decoded = VirtioDevice::decode_on(&mut Reader::new(&bytes), DeviceKind::Blk, TransportKind::Mmio, &assume).unwrap();
        prop_assert_eq!(&decoded.queues, &device.queues);
        prop_assert_eq!(&decoded.device, &device.device);
        prop_assert_eq!(decoded.status, device.status);
        prop_assert_eq!(&decoded.config, &device.config);
        let states = |d: &VirtioDevice| d.subsections.iter().map(|s| s.state.clone()).collect::<Vec<_>>();
        prop_assert_eq!(states(&decoded), states(&device));
    }
}

/// An output that refuses every write, as a closed socket does.
struct Closed;

impl std::io::Write for Closed {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "peer went away",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_output_error_keeps_the_io_error_as_its_source() {
    let (mem, device, _) = stopped_source(SHAPE, 4);
    let state = device.snapshot().to_device(&mem).unwrap();
    let err = (|| {
        let mut stream = vmstate::vmm::StreamWriter::new(Closed, &mem)?;
        stream.ram_pass(&mem, None)?;
        stream.device("virtio-mmio@00000000d0000000/virtio-blk", &state)?;
        stream.finish().map(|_| ())
    })()
    .unwrap_err();
    assert!(
        matches!(err.kind(), vmstate::ErrorKind::Output { .. }),
        "{err}"
    );
    let source = std::error::Error::source(&err).expect("the I/O error");
    assert_eq!(source.to_string(), "peer went away");
    assert_eq!(
        err.io_error().map(|e| e.kind()),
        Some(std::io::ErrorKind::BrokenPipe)
    );
}
