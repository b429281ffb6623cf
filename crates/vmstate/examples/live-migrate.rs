//! Live migration of a virtio-blk device with requests in flight, over TCP, in QEMU's stream
//! format, without draining.
//!
//! A guest driver keeps many writes in flight on split rings (direct and indirect chains,
//! EVENT_IDX, several queues, ring indices that wrap past 65535) against a VMM's virtio-blk
//! device built on `virtio-queue`. Halfway through, the source migrates: it sends guest RAM
//! while the driver runs, then the pages dirtied since, then stops the device, records what
//! is in flight and sends the device state. The destination reads the stream as it arrives,
//! restores the queues against its own guest memory, and answers "ready"; only on the
//! source's "go" does it resubmit the requests in flight and run the driver to the end. A
//! connection cut anywhere leaves the source running as it was and the destination refusing;
//! the source retries.
//!
//! ```text
//! cargo run --release --example live-migrate -- [--queues Q] [--queue-size S] [--requests N]
//!     [--seed K] [--cut-at BYTE] [--save-stream FILE] [--restore-from FILE]
//!     [--backend-latency-steps L]
//! ```
//!
//! Time is the driver's own clock: one step submits what fits, pops, completes what is due
//! and reaps. The backend completes a request L steps after it popped it (by default 3 + K
//! mod 3, from the seed), and until the switch the source's backend holds the newest request
//! of each queue, so that what is in flight at the switch follows from the options alone,
//! not from how fast the machine runs: with N >= 2 x Q every queue has at least one.
//!
//! The destination is a second process (this program, started with `--serve`) with guest
//! memory of its own; the stream is the only device state that crosses. At the switch the
//! source writes the disk to a file both use (shared storage) and, after "go", sends the
//! driver's own variables (guest CPU state, which a VMM migrates in its own sections).
//! `--save-stream FILE` also writes FILE (the stream), FILE.disk (the disk at the switch)
//! and FILE.driver (the driver's state and its ledger); `--restore-from FILE` runs a
//! destination from them. The last line is
//! `migrated: submitted N, completed once N, lost 0, duplicated 0, disk verified, in flight
//! at the switch K`, K counted in the restored device; the exit status is 1 if a request was
//! lost or repeated, the disk is wrong, or, with N >= 2 x Q, a queue had none in flight.

#[path = "../tests/vmm_sim/mod.rs"]
mod vmm_sim;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Instant;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sim::{disk_verified, restore_stream, Device, Driver, Rng, Shape};
use vmstate::vmm::StreamWriter;

struct Options {
    queues: u16,
    queue_size: u16,
    requests: u64,
    seed: u64,
    cut_at: Option<u64>,
    save_stream: Option<String>,
    restore_from: Option<String>,
    /// Steps from the backend's taking a request to its completing it.
    latency_steps: u64,
    /// Internal: run as the destination process, the shared disk in this file.
    serve: Option<String>,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        queues: 4,
        queue_size: 256,
        requests: 4000,
        seed: 1,
        cut_at: None,
        save_stream: None,
        restore_from: None,
        latency_steps: 0,
        serve: None,
    };
    let mut latency_steps = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v} is not a number"))
        };
        match flag.as_str() {
            "--queues" => o.queues = number(value()?)?.clamp(1, 64) as u16,
            "--queue-size" => {
                let size = number(value()?)?;
                if !size.is_power_of_two() || !(4..=1024).contains(&size) {
                    return Err(format!(
                        "--queue-size {size}: a power of two from 4 to 1024 (a request takes 3 descriptors)"
                    ));
                }
                o.queue_size = size as u16;
            }
            "--requests" => o.requests = number(value()?)?,
            "--seed" => o.seed = number(value()?)?,
            "--cut-at" => o.cut_at = Some(number(value()?)?),
            "--save-stream" => o.save_stream = Some(value()?),
            "--restore-from" => o.restore_from = Some(value()?),
            "--backend-latency-steps" => {
                let steps = number(value()?)?;
                if steps > MAX_LATENCY_STEPS {
                    return Err(format!(
                        "--backend-latency-steps {steps}: at most {MAX_LATENCY_STEPS}"
                    ));
                }
                latency_steps = Some(steps);
            }
            "--serve" => o.serve = Some(value()?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    o.latency_steps = latency_steps.unwrap_or(3 + o.seed % 3);
    Ok(o)
}

/// The longest backend latency accepted, in steps: longer ones only make the run slower.
const MAX_LATENCY_STEPS: u64 = 1000;

fn main() -> ExitCode {
    let options = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("live-migrate: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match (&options.serve, &options.restore_from) {
        (Some(disk), _) => serve(disk),
        (None, Some(file)) => restore_from(file),
        (None, None) => migrate(&options),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("live-migrate: {e}");
            ExitCode::from(2)
        }
    }
}

type Memory = GuestMemoryMmap<AtomicBitmap>;

/// The driver's clock, in steps: the backend's latencies count in it, so that a run does the
/// same whatever the machine's speed.
struct StepClock(u64);

impl StepClock {
    /// The current step, and the clock moved on to the next.
    fn tick(&mut self) -> u64 {
        let now = self.0;
        self.0 += 1;
        now
    }
}

/// One step of the guest and the device: submit what fits, on every queue in turn from a
/// random one (so that the first Q requests go one to each queue), pop, complete what is
/// due, reap. Returns the number of requests completed.
fn step<M: vm_memory::GuestMemory>(
    driver: &mut Driver,
    device: &mut Device,
    mem: &M,
    clock: &mut StepClock,
    rng: &mut Rng,
    limit: u64,
) -> u64 {
    let now = clock.tick();
    let queues = u64::from(driver.shape.queues);
    let first = rng.below(queues);
    for k in 0..u64::from(driver.shape.size) * queues {
        if driver.ledger.submitted.len() as u64 >= limit {
            break;
        }
        driver.submit(mem, ((first + k) % queues) as u16);
    }
    device.pop(mem, now);
    let done = device.complete(mem, now, rng);
    driver.reap(mem);
    done
}

/// Pages written since the last call, and the log cleared.
fn dirty_pages(mem: &Memory) -> Vec<u64> {
    let mut pages = Vec::new();
    for region in mem.iter() {
        let bitmap = region.get_mmap();
        let bitmap = bitmap.bitmap();
        for page in 0..region.len() / 4096 {
            if bitmap.is_bit_set(page as usize) {
                pages.push(region.start_addr().0 + page * 4096);
            }
        }
        bitmap.reset();
    }
    pages
}

/// A connection that breaks after `left` bytes, as a cut cable does.
struct Cut<W> {
    inner: W,
    left: Option<u64>,
}

impl<W: Write> Write for Cut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let take = match self.left {
            Some(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "connection cut",
                ))
            }
            Some(left) => (left.min(buf.len() as u64)) as usize,
            None => buf.len(),
        };
        let n = self.inner.write(&buf[..take])?;
        if let Some(left) = &mut self.left {
            *left -= n as u64;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What the destination has once the source said "go": the device and guest memory restored
/// from the stream, and the connection, on which the guest CPU state follows.
type Restored = (Device, GuestMemoryMmap, BufReader<TcpStream>);

/// The destination: reads the stream as it arrives, restores, says "ready" and waits for
/// "go"; or says why it refused.
fn destination(listener: TcpListener) -> Result<Restored, String> {
    let (socket, _) = listener.accept().map_err(|e| e.to_string())?;
    let mut input = BufReader::new(socket.try_clone().map_err(|e| e.to_string())?);
    let mut bytes = Vec::new();
    let read = vmstate::stream::read_one_pass(&mut input, 0, &mut |piece| {
        bytes.extend_from_slice(piece);
        Ok(())
    });
    let mut reply = socket;
    let read = match read {
        Ok(read) => read,
        Err(e) => {
            let _ = writeln!(reply, "refused: {e}");
            return Err(format!("destination refused the stream: {e}"));
        }
    };
    bytes.extend_from_slice(&read.held.bytes);
    // The disk is shared storage: the destination takes it over at the switch.
    let restored = restore_stream(&bytes, Vec::new(), 0, 0);
    let (device, memory) = match restored {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(reply, "refused: {e}");
            return Err(format!("destination refused the stream: {e}"));
        }
    };
    writeln!(reply, "ready").map_err(|e| e.to_string())?;
    let mut go = String::new();
    input.read_line(&mut go).map_err(|e| e.to_string())?;
    if go.trim() != "go" {
        return Err(
            "the source never said go: the destination discards what it restored".to_owned(),
        );
    }
    Ok((device, memory, input))
}

/// The guest CPU state that follows "go": the driver, and what the run needs to finish.
#[derive(serde::Serialize, serde::Deserialize)]
struct Handover {
    driver: Driver,
    latency_steps: u64,
    requests: u64,
    retries: Option<u64>,
}

/// The destination process: prints the port it listens on, restores what arrives, and runs
/// the guest to the end once the source says "go".
fn serve(disk_file: &str) -> Result<bool, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("port {port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (mut device, memory, mut input) = match destination(listener) {
        Ok(restored) => restored,
        Err(reason) => {
            eprintln!("{reason}");
            return Err("nothing restored".to_owned());
        }
    };
    let mut state = Vec::new();
    std::io::Read::read_to_end(&mut input, &mut state).map_err(|e| e.to_string())?;
    let Handover {
        mut driver,
        latency_steps,
        requests,
        retries,
    } = serde_json::from_slice(&state).map_err(|e| format!("guest CPU state: {e}"))?;
    // The disk is shared storage: the source stopped writing it before it said go.
    device.disk = std::fs::read(disk_file).map_err(|e| format!("{disk_file}: {e}"))?;
    // Restored before the latency was known, at step 0 of the destination's clock.
    device.latency = latency_steps;
    for p in device.pending.iter_mut().flatten() {
        p.done_at = latency_steps;
    }
    let mut rng = Rng(driver.shape.seed ^ 0xd057);
    finish(
        &mut driver,
        &mut device,
        &memory,
        &mut rng,
        requests,
        retries,
    )
}

fn migrate(o: &Options) -> Result<bool, String> {
    let shape = Shape {
        queues: o.queues,
        size: o.queue_size,
        event_idx: true,
        start_idx: 0u16.wrapping_sub(o.queue_size / 2),
        indirect_only: false,
        seed: o.seed,
    };
    let mem = Memory::from_ranges(&[(GuestAddress(0), shape.memory_size() as usize)])
        .map_err(|e| e.to_string())?;
    let mut clock = StepClock(0);
    let mut rng = Rng(o.seed);
    let mut driver = Driver::new(shape, &mem);
    let mut device = Device::new(shape, &mem, shape.disk_sectors(o.requests), o.latency_steps);
    device.holds_newest = true;
    while (driver.ledger.submitted.len() as u64) < o.requests / 2 {
        step(
            &mut driver,
            &mut device,
            &mem,
            &mut clock,
            &mut rng,
            o.requests,
        );
    }
    let mut retries = 0u64;
    let mut cut = o.cut_at;
    let disk_file = std::env::temp_dir().join(format!("live-migrate-{}.disk", std::process::id()));
    let disk_path = disk_file.to_string_lossy().into_owned();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    loop {
        let mut child = std::process::Command::new(&exe)
            .args(["--serve", &disk_path])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("destination process: {e}"))?;
        let mut child_out = BufReader::new(child.stdout.take().ok_or("no destination stdout")?);
        let mut line = String::new();
        child_out.read_line(&mut line).map_err(|e| e.to_string())?;
        let port: u16 = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .ok_or(format!("destination said {line:?}"))?;
        let socket = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        socket.set_nodelay(true).ok();
        let this_cut = cut.take();
        let sent = send(
            &mut driver,
            &mut device,
            &mem,
            &mut clock,
            &mut rng,
            o,
            Cut {
                inner: socket.try_clone().map_err(|e| e.to_string())?,
                left: this_cut,
            },
        );
        let ready = match &sent {
            // A cut past the stream's end falls after its last byte: before the handshake.
            Ok(_) if this_cut.is_some() => {
                eprintln!(
                    "source: connection cut after the stream's last byte; the guest runs on here"
                );
                let _ = socket.shutdown(std::net::Shutdown::Both);
                String::new()
            }
            Ok(_) => {
                let mut line = String::new();
                BufReader::new(&socket)
                    .read_line(&mut line)
                    .map_err(|e| e.to_string())?;
                line
            }
            Err(e) => {
                eprintln!("source: sending failed ({e}); the guest runs on here");
                String::new()
            }
        };
        if let (Ok(sent), "ready") = (&sent, ready.trim()) {
            // The switch: the source stops for good, hands over the disk and the CPU state.
            eprintln!(
                "source: stream of {} bytes sent, {} request(s) in flight at the switch",
                sent.len(),
                device.in_flight()
            );
            std::fs::write(&disk_file, &device.disk).map_err(|e| e.to_string())?;
            if let Some(file) = &o.save_stream {
                std::fs::write(file, sent).map_err(|e| e.to_string())?;
                std::fs::write(format!("{file}.disk"), &device.disk).map_err(|e| e.to_string())?;
                let state = serde_json::to_vec(&(&driver, o.latency_steps, o.requests))
                    .map_err(|e| e.to_string())?;
                std::fs::write(format!("{file}.driver"), state).map_err(|e| e.to_string())?;
            }
            let handover = Handover {
                driver: driver.clone(),
                latency_steps: o.latency_steps,
                requests: o.requests,
                retries: Some(retries).filter(|_| o.cut_at.is_some()),
            };
            let mut go = &socket;
            go.write_all(b"go\n").map_err(|e| e.to_string())?;
            serde_json::to_writer(&mut go, &handover).map_err(|e| e.to_string())?;
            socket
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            drop(device);
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut child_out, &mut rest).map_err(|e| e.to_string())?;
            print!("{rest}");
            let status = child.wait().map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&disk_file);
            return match status.code() {
                Some(0) => Ok(true),
                Some(1) => Ok(false),
                _ => Err(format!("destination process: {status}")),
            };
        }
        drop(socket);
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            return Err("destination ran without go".to_owned());
        }
        retries += 1;
        // The source's device was only stopped: it resumes where it was.
        for _ in 0..5 {
            step(
                &mut driver,
                &mut device,
                &mem,
                &mut clock,
                &mut rng,
                o.requests,
            );
        }
    }
}

/// Sends the stream: all RAM while the guest runs, two passes of dirty pages, then the stop
/// and the device state. Returns the bytes sent.
fn send(
    driver: &mut Driver,
    device: &mut Device,
    mem: &Memory,
    clock: &mut StepClock,
    rng: &mut Rng,
    o: &Options,
    out: Cut<TcpStream>,
) -> Result<Vec<u8>, String> {
    let mut copy = Tee {
        out,
        copy: Vec::new(),
    };
    dirty_pages(mem);
    let mut stream = StreamWriter::new(&mut copy, mem).map_err(|e| e.to_string())?;
    stream.ram_pass(mem, None).map_err(|e| e.to_string())?;
    for _ in 0..2 {
        for _ in 0..3 {
            step(driver, device, mem, clock, rng, o.requests);
        }
        stream
            .ram_pass(mem, Some(&dirty_pages(mem)))
            .map_err(|e| e.to_string())?;
    }
    // Stop: no more requests are taken; what is in flight is recorded, not waited for.
    let pause = Instant::now();
    let snapshot = device.snapshot();
    let state = snapshot.to_device(mem).map_err(|e| e.to_string())?;
    stream
        .ram_pass(mem, Some(&dirty_pages(mem)))
        .map_err(|e| e.to_string())?;
    stream
        .device(&snapshot.idstr(), &state)
        .map_err(|e| e.to_string())?;
    stream.finish().map_err(|e| e.to_string())?;
    eprintln!(
        "source: paused with {} request(s) in flight; final pass and device state in {:.2} ms",
        device.in_flight(),
        pause.elapsed().as_secs_f64() * 1e3
    );
    Ok(copy.copy)
}

/// Writes to the connection and keeps a copy of what went.
struct Tee<W> {
    out: W,
    copy: Vec<u8>,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Runs the driver on the destination until every request has completed, then reports,
/// with the requests in flight at the switch: those the restored device holds.
fn finish<M: vm_memory::GuestMemory>(
    driver: &mut Driver,
    device: &mut Device,
    mem: &M,
    rng: &mut Rng,
    requests: u64,
    retries: Option<u64>,
) -> Result<bool, String> {
    let at_switch = device.in_flight_per_queue();
    let in_flight_ok = in_flight_on_every_queue(&at_switch, requests);
    let mut clock = StepClock(0);
    // A request the device holds completes within its latency: longer without one, the
    // outstanding ones are lost.
    let patience = device.latency.saturating_add(2);
    let mut idle = 0;
    while (driver.ledger.submitted.len() as u64) < requests || driver.outstanding() > 0 {
        if step(driver, device, mem, &mut clock, rng, requests) > 0 {
            idle = 0;
        } else {
            idle += 1;
        }
        if idle > patience {
            eprintln!(
                "destination: {} request(s) outstanding, none completed in {idle} steps",
                driver.outstanding()
            );
            break;
        }
    }
    let ledger = &driver.ledger;
    let verified = disk_verified(&device.disk, ledger, driver.shape.seed) && ledger.failed == 0;
    let ok = ledger.completed_once() == ledger.submitted.len() as u64
        && ledger.lost() == 0
        && ledger.duplicated() == 0
        && verified
        && in_flight_ok;
    let mut line = format!(
        "migrated: submitted {}, completed once {}, lost {}, duplicated {}, {}, in flight at the switch {}",
        ledger.submitted.len(),
        ledger.completed_once(),
        ledger.lost(),
        ledger.duplicated(),
        if verified {
            "disk verified"
        } else {
            "disk NOT verified"
        },
        at_switch.iter().sum::<usize>()
    );
    if let Some(retries) = retries {
        line.push_str(&format!(", retries {retries}"));
    }
    println!("{line}");
    Ok(ok)
}

/// Whether the switch had what the run promises: with at least two requests a queue, each
/// queue has had one before the stop and the source's backend held its newest, so a queue
/// with none in flight means the migration did not carry what it was run for.
fn in_flight_on_every_queue(at_switch: &[usize], requests: u64) -> bool {
    if requests < 2 * at_switch.len() as u64 {
        return true;
    }
    let empty: Vec<usize> = at_switch
        .iter()
        .enumerate()
        .filter(|(_, &n)| n == 0)
        .map(|(q, _)| q)
        .collect();
    if !empty.is_empty() {
        eprintln!(
            "live-migrate: no request in flight at the switch on queue(s) {empty:?}, \
             where a run of {requests} requests on {} queue(s) leaves one on each",
            at_switch.len()
        );
    }
    empty.is_empty()
}

fn restore_from(file: &str) -> Result<bool, String> {
    let read = |path: String| std::fs::read(&path).map_err(|e| format!("{path}: {e}"));
    let bytes = read(file.to_owned())?;
    let disk = read(format!("{file}.disk"))?;
    let (mut driver, latency_steps, requests): (Driver, u64, u64) =
        serde_json::from_slice(&read(format!("{file}.driver"))?)
            .map_err(|e| format!("{file}.driver: {e}"))?;
    let (mut device, mem) = restore_stream(&bytes, disk, latency_steps, 0)
        .map_err(|e| format!("{file}: refused: {e}"))?;
    let mut rng = Rng(driver.shape.seed ^ 0xdead);
    finish(&mut driver, &mut device, &mem, &mut rng, requests, None)
}
