//! Restoring a VMM's stream: the bytes are a whole migration stream (seeds: streams written
//! with `vmstate::vmm::StreamWriter` by the live-migration example), read into new guest
//! memory, its virtio-blk devices restored against that memory.
//!
//! Invariant: nothing panics, hangs or allocates without bound; a restore that succeeds
//! gives each queue its saved requests, and a queue that sets up.

#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vmstate::virtio::DeviceState;
use vmstate::vmm;

fuzz_target!(|data: &[u8]| {
    let Ok((sections, memory)) = vmm::load_stream(data) else {
        return;
    };
    for section in &sections {
        let Ok(queues) = vmm::restore_blk(&section.device, &memory, 1024) else {
            continue;
        };
        let DeviceState::Blk(blk) = &section.device.device else {
            // ok: the fuzz invariant: restore_blk accepts virtio-blk only.
            panic!("restored a device that is not virtio-blk");
        };
        let restored: usize = queues.iter().map(|q| q.requests.len()).sum();
        assert_eq!(restored, blk.requests.len());
        for q in &queues {
            assert!(q.queue.ready());
        }
    }
});
