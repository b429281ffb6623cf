//! A guest driver and a VMM's virtio-blk device in one process, for the exactly-once property
//! test and the live-migration example: the driver keeps writes in flight on split rings
//! (direct and indirect chains, several queues, 16-bit index wrap-around), the device pops
//! them with `virtio_queue` and completes them after a latency, and a migration saves the
//! device with its requests in flight and restores it on fresh guest memory.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::num::Wrapping;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmstate::element::Element;
use vmstate::vmm::{restore_blk, BlkSnapshot, QueueSnapshot, RestoredQueue, StreamWriter};

pub const SECTOR: u64 = 512;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;
const INDIRECT_DESC: u64 = 1 << 28;
/// Guest memory per queue for its rings.
const RING_AREA: u64 = 0x1_0000;
/// Guest memory per descriptor slot: header, status, indirect table, data.
const SLOT: u64 = 0x2000;
const MAX_SECTORS: u64 = 8;
pub const MMIO_BASE: u64 = 0xd000_0000;

/// A small seeded generator (splitmix64), so that every scenario replays from its seed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// The shape of one scenario.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    pub queues: u16,
    pub size: u16,
    pub event_idx: bool,
    /// Where the ring indices start, to cross 65535 -> 0 soon.
    pub start_idx: u16,
    /// Every request one indirect descriptor (else half of them, at random), so that a
    /// ring holds as many requests as it has entries.
    pub indirect_only: bool,
    pub seed: u64,
}

impl Shape {
    fn ring_base(&self, q: u16) -> u64 {
        0x1_0000 + u64::from(q) * RING_AREA
    }
    pub fn desc(&self, q: u16) -> u64 {
        self.ring_base(q)
    }
    pub fn avail(&self, q: u16) -> u64 {
        self.ring_base(q) + 0x4000
    }
    pub fn used(&self, q: u16) -> u64 {
        self.ring_base(q) + 0x8000
    }
    fn slot(&self, q: u16, head: u16) -> u64 {
        self.ring_base(self.queues) + (u64::from(q) * u64::from(self.size) + u64::from(head)) * SLOT
    }
    /// Bytes of guest memory the scenario needs.
    pub fn memory_size(&self) -> u64 {
        let end = self.slot(self.queues, 0);
        end.div_ceil(1 << 20) << 20
    }
    /// Sectors of the disk: enough for every request of the run at its own sectors.
    pub fn disk_sectors(&self, requests: u64) -> u64 {
        requests * MAX_SECTORS
    }
    pub fn features(&self) -> u64 {
        VERSION_1 | INDIRECT_DESC | if self.event_idx { EVENT_IDX } else { 0 }
    }
}

/// What the driver submitted and what came back.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// (sector, sectors) of every request, by id.
    pub submitted: Vec<(u64, u64)>,
    /// Completions seen per request id.
    pub completions: HashMap<u64, u32>,
    /// Used-ring entries for heads the driver had not submitted.
    pub phantom: u64,
    /// Completions whose status byte was not 0.
    pub failed: u64,
}

impl Ledger {
    pub fn completed_once(&self) -> u64 {
        self.completions.values().filter(|&&n| n == 1).count() as u64
    }
    pub fn duplicated(&self) -> u64 {
        self.completions.values().filter(|&&n| n > 1).count() as u64 + self.phantom
    }
    pub fn lost(&self) -> u64 {
        (0..self.submitted.len() as u64)
            .filter(|id| !self.completions.contains_key(id))
            .count() as u64
    }
}

/// The data a request writes: a function of its id and sector, so that the disk can be
/// verified afterwards.
pub fn pattern(seed: u64, id: u64, sector: u64, byte: u64) -> u8 {
    (seed ^ id.wrapping_mul(31) ^ sector.wrapping_mul(7) ^ byte) as u8
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DriverQueue {
    free: Vec<u16>,
    avail_idx: Wrapping<u16>,
    last_used: Wrapping<u16>,
    /// head -> (request id, descriptors it holds)
    outstanding: HashMap<u16, (u64, Vec<u16>)>,
}

/// The guest's driver: its state is the guest's, so it moves with the migration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Driver {
    pub shape: Shape,
    queues: Vec<DriverQueue>,
    pub ledger: Ledger,
    rng: Rng,
}

impl Driver {
    /// Sets up the rings in `mem` (indices at `start_idx`) and returns the driver.
    pub fn new<M: GuestMemory>(shape: Shape, mem: &M) -> Driver {
        let queues = (0..shape.queues)
            .map(|q| {
                mem.write_obj(shape.start_idx, GuestAddress(shape.avail(q) + 2))
                    .unwrap();
                mem.write_obj(shape.start_idx, GuestAddress(shape.used(q) + 2))
                    .unwrap();
                DriverQueue {
                    free: (0..shape.size).rev().collect(),
                    avail_idx: Wrapping(shape.start_idx),
                    last_used: Wrapping(shape.start_idx),
                    outstanding: HashMap::new(),
                }
            })
            .collect();
        Driver {
            shape,
            queues,
            ledger: Ledger::default(),
            rng: Rng(shape.seed ^ 0x5eed),
        }
    }

    pub fn outstanding(&self) -> usize {
        self.queues.iter().map(|q| q.outstanding.len()).sum()
    }

    fn write_desc<M: GuestMemory>(mem: &M, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Submits one write on queue `q` if it has room; returns whether it did.
    pub fn submit<M: GuestMemory>(&mut self, mem: &M, q: u16) -> bool {
        let shape = self.shape;
        let indirect = self.shape.indirect_only || self.rng.below(2) == 0;
        let sectors = 1 + self.rng.below(MAX_SECTORS);
        let need = if indirect { 1 } else { 3 };
        let queue = &mut self.queues[usize::from(q)];
        if queue.free.len() < need {
            return false;
        }
        let descs: Vec<u16> = (0..need).map(|_| queue.free.pop().unwrap()).collect();
        let head = descs[0];
        let id = self.ledger.submitted.len() as u64;
        let sector = id * MAX_SECTORS;
        self.ledger.submitted.push((sector, sectors));
        let slot = shape.slot(q, head);
        let (header, status, table, data) = (slot, slot + 0x10, slot + 0x20, slot + 0x1000);
        mem.write_obj(1u32, GuestAddress(header)).unwrap(); // VIRTIO_BLK_T_OUT
        mem.write_obj(0u32, GuestAddress(header + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(header + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let bytes: Vec<u8> = (0..sectors * SECTOR)
            .map(|b| pattern(shape.seed, id, sector, b))
            .collect();
        mem.write_slice(&bytes, GuestAddress(data)).unwrap();
        let parts = [
            (header, 16u32, DESC_F_NEXT),
            (data, (sectors * SECTOR) as u32, DESC_F_NEXT),
            (status, 1u32, DESC_F_WRITE),
        ];
        if indirect {
            for (k, (addr, len, flags)) in parts.iter().enumerate() {
                Self::write_desc(
                    mem,
                    table + 16 * k as u64,
                    *addr,
                    *len,
                    *flags,
                    k as u16 + 1,
                );
            }
            Self::write_desc(
                mem,
                shape.desc(q) + 16 * u64::from(head),
                table,
                48,
                DESC_F_INDIRECT,
                0,
            );
        } else {
            for (k, (addr, len, flags)) in parts.iter().enumerate() {
                let next = descs.get(k + 1).copied().unwrap_or(0);
                let at = shape.desc(q) + 16 * u64::from(descs[k]);
                Self::write_desc(mem, at, *addr, *len, *flags, next);
            }
        }
        let entry = shape.avail(q) + 4 + 2 * u64::from(queue.avail_idx.0 % shape.size);
        mem.write_obj(head, GuestAddress(entry)).unwrap();
        queue.avail_idx += 1;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write_obj(queue.avail_idx.0, GuestAddress(shape.avail(q) + 2))
            .unwrap();
        queue.outstanding.insert(head, (id, descs));
        true
    }

    /// Reads the used rings and records every completion.
    pub fn reap<M: GuestMemory>(&mut self, mem: &M) {
        let shape = self.shape;
        for (q, queue) in self.queues.iter_mut().enumerate() {
            let q = q as u16;
            let used_idx: u16 = mem.read_obj(GuestAddress(shape.used(q) + 2)).unwrap();
            while queue.last_used.0 != used_idx {
                let entry = shape.used(q) + 4 + 8 * u64::from(queue.last_used.0 % shape.size);
                let head: u32 = mem.read_obj(GuestAddress(entry)).unwrap();
                queue.last_used += 1;
                let Some((id, descs)) = queue.outstanding.remove(&(head as u16)) else {
                    self.ledger.phantom += 1;
                    continue;
                };
                let status: u8 = mem
                    .read_obj(GuestAddress(shape.slot(q, head as u16) + 0x10))
                    .unwrap();
                if status != 0 {
                    self.ledger.failed += 1;
                }
                *self.ledger.completions.entry(id).or_default() += 1;
                queue.free.extend(descs);
            }
        }
    }
}

/// A request the device holds: popped (or restored), its I/O not done yet.
#[derive(Debug, Clone)]
pub struct Pending {
    pub head: u16,
    pub element: Element,
    /// The tick at which its I/O completes (`u64::MAX`: never, a hung disk).
    pub done_at: u64,
}

/// The VMM's virtio-blk device.
#[derive(Debug)]
pub struct Device {
    pub queues: Vec<Queue>,
    pub pending: Vec<VecDeque<Pending>>,
    pub disk: Vec<u8>,
    pub features: u64,
    /// Ticks a request's I/O takes.
    pub latency: u64,
    /// Whether the newest request of each queue stays in flight whatever its tick: the
    /// source's backend until the switch, so that every queue that has had a request has one
    /// in flight when the device stops.
    pub holds_newest: bool,
}

fn element_of<M: GuestMemory>(chain: virtio_queue::DescriptorChain<&M>) -> Element {
    let head = chain.head_index();
    let mut element = Element {
        index: u32::from(head),
        ..Element::default()
    };
    for d in chain {
        let segment = vmstate::element::Segment {
            addr: d.addr().0,
            len: u64::from(d.len()),
        };
        if d.is_write_only() {
            element.device_writable.push(segment);
        } else {
            element.device_readable.push(segment);
        }
    }
    element
}

impl Device {
    pub fn new<M: GuestMemory>(shape: Shape, mem: &M, disk_sectors: u64, latency: u64) -> Device {
        let queues = (0..shape.queues)
            .map(|q| {
                let mut queue = Queue::new(1024).unwrap();
                queue.set_size(shape.size);
                queue.set_desc_table_address(Some(shape.desc(q) as u32), Some(0));
                queue.set_avail_ring_address(Some(shape.avail(q) as u32), Some(0));
                queue.set_used_ring_address(Some(shape.used(q) as u32), Some(0));
                queue.set_event_idx(shape.event_idx);
                queue.set_next_avail(shape.start_idx);
                queue.set_next_used(shape.start_idx);
                queue.set_ready(true);
                assert!(queue.is_valid(mem));
                queue
            })
            .collect();
        Device {
            queues,
            pending: (0..shape.queues).map(|_| VecDeque::new()).collect(),
            disk: vec![0; (disk_sectors * SECTOR) as usize],
            features: shape.features(),
            latency,
            holds_newest: false,
        }
    }

    /// Pops what the driver made available on every queue.
    pub fn pop<M: GuestMemory>(&mut self, mem: &M, now: u64) {
        for (queue, pending) in self.queues.iter_mut().zip(self.pending.iter_mut()) {
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                pending.push_back(Pending {
                    head,
                    element: element_of(chain),
                    done_at: now.saturating_add(self.latency),
                });
            }
        }
    }

    /// Completes every request whose I/O is done by `now` (the newest of each queue kept
    /// while `holds_newest`): data to the disk, status 0, the head to the used ring. `rng`
    /// chooses, for out-of-order completion, which of the done requests goes first.
    pub fn complete<M: GuestMemory>(&mut self, mem: &M, now: u64, rng: &mut Rng) -> u64 {
        let mut done = 0;
        let held = usize::from(self.holds_newest);
        for (queue, pending) in self.queues.iter_mut().zip(self.pending.iter_mut()) {
            loop {
                // Popped in order, so the newest is the last.
                let ready: Vec<usize> = (0..pending.len().saturating_sub(held))
                    .filter(|&k| pending[k].done_at <= now)
                    .collect();
                if ready.is_empty() {
                    break;
                }
                let k = ready[rng.below(ready.len() as u64) as usize];
                let request = pending.remove(k).unwrap();
                let e = &request.element;
                let header = e.device_readable[0];
                let sector: u64 = mem.read_obj(GuestAddress(header.addr + 8)).unwrap();
                let mut at = (sector * SECTOR) as usize;
                for s in &e.device_readable[1..] {
                    let mut buf = vec![0u8; s.len as usize];
                    mem.read_slice(&mut buf, GuestAddress(s.addr)).unwrap();
                    self.disk[at..at + buf.len()].copy_from_slice(&buf);
                    at += buf.len();
                }
                let status = e.device_writable.last().unwrap();
                mem.write_obj(0u8, GuestAddress(status.addr)).unwrap();
                queue.add_used(mem, request.head, 1).unwrap();
                done += 1;
            }
        }
        done
    }

    /// What the device saves: its queues and the heads in flight, no I/O waited for.
    pub fn snapshot(&self) -> BlkSnapshot {
        BlkSnapshot {
            mmio_base: MMIO_BASE,
            driver_features: self.features,
            status: 0x0f,
            config: blk_config(self.disk.len() as u64 / SECTOR),
            queues: self
                .queues
                .iter()
                .zip(&self.pending)
                .map(|(queue, pending)| QueueSnapshot {
                    state: queue.state(),
                    in_flight: pending.iter().map(|p| p.head).collect(),
                })
                .collect(),
        }
    }

    /// The device on the destination, from its restored queues: the requests in flight
    /// resubmitted to the backend.
    pub fn restored(
        restored: Vec<RestoredQueue>,
        disk: Vec<u8>,
        features: u64,
        latency: u64,
        now: u64,
    ) -> Device {
        let mut queues = Vec::new();
        let mut pending = Vec::new();
        for r in restored {
            queues.push(r.queue);
            pending.push(
                r.requests
                    .into_iter()
                    .map(|element| Pending {
                        head: element.index as u16,
                        element,
                        done_at: now.saturating_add(latency),
                    })
                    .collect(),
            );
        }
        Device {
            queues,
            pending,
            disk,
            features,
            latency,
            holds_newest: false,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.pending.iter().map(VecDeque::len).sum()
    }

    /// Requests in flight on each queue.
    pub fn in_flight_per_queue(&self) -> Vec<usize> {
        self.pending.iter().map(VecDeque::len).collect()
    }
}

/// `struct virtio_blk_config` up to `capacity` and the fields QEMU fills for a plain disk.
pub fn blk_config(sectors: u64) -> Vec<u8> {
    let mut config = vec![0u8; 60];
    config[..8].copy_from_slice(&sectors.to_le_bytes());
    config
}

/// Writes the whole stream of a stopped source: all RAM, then the device.
pub fn save_stream<M: vm_memory::GuestMemoryBackend>(
    device: &Device,
    mem: &M,
) -> Result<Vec<u8>, vmstate::Error> {
    let snapshot = device.snapshot();
    let state = snapshot.to_device(mem)?;
    let mut stream = StreamWriter::new(Vec::new(), mem)?;
    stream.ram_pass(mem, None)?;
    stream.device(&snapshot.idstr(), &state)?;
    stream.finish()
}

/// The destination's side: guest memory and the device, from the stream.
pub fn restore_stream(
    bytes: &[u8],
    disk: Vec<u8>,
    latency: u64,
    now: u64,
) -> Result<(Device, GuestMemoryMmap), vmstate::Error> {
    let (sections, memory) = vmstate::vmm::load_stream(bytes)?;
    let section = sections.first().ok_or_else(|| {
        vmstate::Error::new(
            vmstate::ErrorKind::Inconsistent {
                reason: "the stream holds no virtio device".to_owned(),
            },
            0,
            "devices",
        )
    })?;
    let queues =
        restore_blk(&section.device, &memory, 1024).map_err(|e| e.within(&section.idstr))?;
    let features = section.device.guest_features();
    Ok((
        Device::restored(queues, disk, features, latency, now),
        memory,
    ))
}

/// Whether the disk holds exactly what every request wrote, and zeros elsewhere.
pub fn disk_verified(disk: &[u8], ledger: &Ledger, seed: u64) -> bool {
    let mut expected = vec![0u8; disk.len()];
    for (id, &(sector, sectors)) in ledger.submitted.iter().enumerate() {
        for b in 0..sectors * SECTOR {
            expected[(sector * SECTOR + b) as usize] = pattern(seed, id as u64, sector, b);
        }
    }
    expected == disk
}

/// One scenario of the property test: `requests` writes submitted in bursts, the device
/// completing some out of order, a migration after `migrate_after` ticks; every request must
/// complete exactly once and the disk hold what was written.
#[derive(Debug)]
pub struct Outcome {
    pub submitted: u64,
    pub completed_once: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub in_flight_at_save: usize,
    pub disk_verified: bool,
}

pub fn scenario(shape: Shape, requests: u64, migrate_after: u64, latency: u64) -> Outcome {
    let src_mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), shape.memory_size() as usize)])
            .unwrap();
    let mut driver = Driver::new(shape, &src_mem);
    let mut device = Device::new(shape, &src_mem, shape.disk_sectors(requests), latency);
    let mut rng = Rng(shape.seed);
    let mut now = 0;
    let drive = |driver: &mut Driver,
                 device: &mut Device,
                 mem: &GuestMemoryMmap,
                 now: u64,
                 rng: &mut Rng| {
        let burst = rng.below(u64::from(shape.size)) + 1;
        for _ in 0..burst {
            if driver.ledger.submitted.len() as u64 >= requests {
                break;
            }
            let q = rng.below(u64::from(shape.queues)) as u16;
            driver.submit(mem, q);
        }
        device.pop(mem, now);
        device.complete(mem, now, rng);
        driver.reap(mem);
    };
    while now < migrate_after {
        drive(&mut driver, &mut device, &src_mem, now, &mut rng);
        now += 1;
    }
    let in_flight_at_save = device.in_flight();
    let bytes = save_stream(&device, &src_mem).expect("save");
    let disk = device.disk.clone();
    drop(device);
    let (mut device, dst_mem) = restore_stream(&bytes, disk, latency, now).expect("restore");
    let mut idle = 0;
    while idle < 4 * (latency + 2) {
        let before = driver.ledger.completions.len();
        drive(&mut driver, &mut device, &dst_mem, now, &mut rng);
        now += 1;
        let finished =
            driver.ledger.submitted.len() as u64 >= requests && driver.outstanding() == 0;
        if finished {
            break;
        }
        if driver.ledger.completions.len() == before {
            idle += 1;
        } else {
            idle = 0;
        }
    }
    Outcome {
        submitted: driver.ledger.submitted.len() as u64,
        completed_once: driver.ledger.completed_once(),
        lost: driver.ledger.lost(),
        duplicated: driver.ledger.duplicated(),
        in_flight_at_save,
        disk_verified: disk_verified(&device.disk, &driver.ledger, shape.seed)
            && driver.ledger.failed == 0,
    }
}
