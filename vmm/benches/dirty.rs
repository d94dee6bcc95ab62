//! Write-watch figures for docs/PERFORMANCE.md, all measured in one run:
//!
//! 1. Harvest cost (get + reset over all of RAM) with the bitmap source at
//!    0 %, 1 %, 10 % and 100 % dirty for guests of 256 MiB to 8 GiB, per GiB,
//!    and its ratio to a bare loop of the same ioctls (`KVM_GET_DIRTY_LOG` +
//!    `KVM_CLEAR_DIRTY_LOG`, nothing done with the bits) on the same state.
//!    The dirty state is made without guest writes: tracking starts with
//!    every page dirty (`KVM_DIRTY_LOG_INITIALLY_SET`), then all but the
//!    wanted fraction is cleared with bare ioctls (untimed).
//! 2. The same for the ring source, per entry and per GiB, against a bare
//!    harvest of the rings; the entries come from a guest workload run
//!    between measurements, with the vCPUs paused while timing.
//! 3. The cost of tracking to the guest: the workload's write rate with
//!    tracking off, on, and off again after stopping (bitmap and ring VMs).
//! 4. Accuracy: `watch --verify` for each workload and source: missed
//!    (must be 0) and extra pages.
//! 5. How long a 4 GiB workload takes from process start to writing.
//!
//! `cargo bench -p writewatch --bench dirty` (about 4 minutes here), or
//! `-- --sizes 256M,1G --rounds 3 --skip-accuracy`.

mod support;

use std::io;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use support::median;
use writewatch::builder;
use writewatch::config::{VmConfig, format_size, parse_size};
use writewatch::devices::records::{Record, RecordError};
use writewatch::dirty::{Initial, Source};
use writewatch::output::Sink;
use writewatch::runner::{self, Observer, Running, StopReason, VmHandle};
use writewatch::vstate::dirty_log::{DirtyLogExt, PAGES_PER_WORD};
use writewatch::workload::{Announced, Kind, Mapping, Spec};

struct Quiet;

impl Observer for Quiet {
    fn record(&mut self, _: &Record, _: bool) -> bool {
        true
    }
    fn bad_record(&mut self, _: &RecordError) {}
}

struct Options {
    sizes: Vec<u64>,
    rounds: usize,
    accuracy: bool,
}

fn options() -> Options {
    let mut o = Options {
        sizes: ["256M", "1G", "4G", "8G"]
            .iter()
            .map(|s| parse_size(s).unwrap())
            .collect(),
        rounds: 5,
        accuracy: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                o.sizes = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| parse_size(s).expect("a size"))
                    .collect()
            }
            "--rounds" => o.rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            "--skip-accuracy" => o.accuracy = false,
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

/// A booted VM running `spec`, paused or not, with its announced workload.
struct Vm {
    running: Running<Quiet>,
    handle: VmHandle,
    workload: Announced,
}

fn boot(mem: u64, vcpus: u32, spec: Spec, ring: Option<u32>) -> Vm {
    let config = VmConfig {
        vcpus,
        mem_bytes: mem,
        cmdline: spec.guest_words(),
        dirty_ring_entries: ring,
        ..VmConfig::default()
    };
    let console = Arc::new(Sink::spawn("console", || {
        Ok(Box::new(io::sink()) as Box<dyn io::Write + Send>)
    }));
    let machine = builder::build(&config, console).expect("building the VM");
    let (tx, rx) = bounded(4);
    let running = runner::start(machine, None, Quiet, vec![("workload".into(), tx)]);
    let handle = running.handle();
    let record = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the workload record");
    let workload = Announced::from_record(&record).expect("a workload record");
    Vm {
        running,
        handle,
        workload,
    }
}

impl Vm {
    fn end(self) {
        let _ = self.workload.stop(self.handle.memory());
        if self.handle.sleep(Duration::from_secs(10)) {
            self.handle.stop(StopReason::Requested("done".into()));
        }
        drop(self.handle);
        self.running.wait();
    }
}

fn spec(kind: Kind, wss: u64) -> Spec {
    Spec {
        kind,
        rate_mib: 0,
        wss,
        mapping: Mapping::Huge,
        wait: true,
        first: 0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Leaves `fraction` of every slot's pages dirty in KVM (every `1/fraction`th
/// page), clearing the rest with bare ioctls. Tracking must have started dirty.
fn keep_dirty(vm: &VmHandle, fraction: f64) {
    let ww = vm.write_watch();
    for (slot, (_, len)) in ww.ram_ranges().into_iter().enumerate() {
        let pages = len / 4096;
        let keep_every = if fraction > 0.0 {
            (1.0 / fraction).round() as u64
        } else {
            0
        };
        let words: Vec<u64> = (0..pages.div_ceil(PAGES_PER_WORD))
            .map(|w| {
                (0..64u64)
                    .filter(|b| {
                        let page = w * 64 + b;
                        keep_every == 0 || page % keep_every != 0
                    })
                    .fold(0u64, |acc, b| acc | 1 << b)
            })
            .collect();
        ww.vm()
            .fd
            .clear_dirty_log(slot as u32, 0, pages as u32, &words)
            .expect("clearing");
    }
}

/// The bare loop: get and clear every slot's log, nothing else.
fn bare_bitmap_harvest(vm: &VmHandle) -> u64 {
    let ww = vm.write_watch();
    let mut dirty = 0;
    for (slot, (_, len)) in ww.ram_ranges().into_iter().enumerate() {
        let words = ww
            .vm()
            .fd
            .get_dirty_log(slot as u32, len as usize)
            .expect("get");
        dirty += words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
        ww.vm()
            .fd
            .clear_dirty_log(slot as u32, 0, (len / 4096) as u32, &words)
            .expect("clear");
    }
    dirty
}

fn bitmap_harvest(o: &Options) {
    println!("\n### Harvest cost, bitmap source (get + reset over all RAM, vCPUs paused)\n");
    println!(
        "`get + reset` counts the pages; `+ list` also builds GetWriteWatch's array of addresses.\n"
    );
    println!(
        "| guest | dirty | pages | get + reset ms | bare ioctls ms | ratio | ms per GiB | + list ms | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &mem in &o.sizes {
        let vm = boot(mem, 1, spec(Kind::Idle, 16 << 20), None);
        vm.handle.pause().expect("pause");
        let ww = vm.handle.write_watch();
        let ram: u64 = ww.ram_ranges().iter().map(|r| r.1).sum();
        let gib = ram as f64 / (1u64 << 30) as f64;
        for fraction in [0.0, 0.01, 0.1, 1.0] {
            let (mut ours, mut listed, mut bare) = (Vec::new(), Vec::new(), Vec::new());
            let mut pages = 0;
            for round in 0..o.rounds {
                // Each kind goes first in turn: no order effect.
                for what in (0..3).map(|i| (i + round) % 3) {
                    ww.start(Source::Bitmap, Initial::Dirty).expect("start");
                    if fraction < 1.0 {
                        keep_dirty(&vm.handle, fraction);
                    }
                    let began = Instant::now();
                    match what {
                        0 => {
                            pages = ww
                                .ram_ranges()
                                .iter()
                                .map(|&(start, len)| {
                                    ww.get_count(start, len, true, None).expect("get").0 as u64
                                })
                                .sum();
                            ours.push(ms(began.elapsed()));
                        }
                        1 => {
                            for (start, len) in ww.ram_ranges() {
                                ww.get(start, len, true, None).expect("get");
                            }
                            listed.push(ms(began.elapsed()));
                        }
                        _ => {
                            bare_bitmap_harvest(&vm.handle);
                            bare.push(ms(began.elapsed()));
                        }
                    }
                    ww.stop().expect("stop");
                }
            }
            let (ours, listed, bare) = (median(&mut ours), median(&mut listed), median(&mut bare));
            println!(
                "| {} | {:.0} % | {pages} | {ours:.2} | {bare:.2} | {:.2} | {:.2} | {listed:.2} | {:.2} |",
                format_size(mem),
                fraction * 100.0,
                ours / bare,
                ours / gib,
                listed / bare
            );
        }
        vm.handle.resume().expect("resume");
        vm.end();
    }
}

fn ring_harvest(o: &Options) {
    println!("\n### Harvest cost, ring source (65536 entries per vCPU, 2 vCPUs, vCPUs paused)\n");
    println!(
        "| workload wss | entries/round | ours ns per entry | bare ns per entry | ours/bare | ours ms per GiB of entries |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for wss in [16u64 << 20, 256 << 20] {
        let vm = boot(512 << 20, 2, spec(Kind::Uniform, wss), Some(65536));
        let ww = vm.handle.write_watch();
        ww.start(Source::Ring, Initial::Clean).expect("start");
        vm.workload.set_interval(vm.handle.memory(), 1).unwrap();
        let (mut ours, mut bare, mut entries) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..o.rounds * 2 {
            std::thread::sleep(Duration::from_millis(300));
            vm.handle.pause().expect("pause");
            let before = ww.stats().ring_entries;
            let began = Instant::now();
            if round % 2 == 0 {
                for (start, len) in ww.ram_ranges() {
                    ww.get_count(start, len, true, None).expect("get");
                }
                let elapsed = began.elapsed();
                let n = ww.stats().ring_entries - before;
                ours.push(ms(elapsed) * 1e6 / n.max(1) as f64);
                entries.push(n as f64);
            } else {
                let n = ww.drain_rings_unwatched().expect("drain");
                bare.push(ms(began.elapsed()) * 1e6 / n.max(1) as f64);
            }
            vm.handle.resume().expect("resume");
        }
        let (ours, bare, entries) = (median(&mut ours), median(&mut bare), median(&mut entries));
        println!(
            "| {} | {entries:.0} | {ours:.0} | {bare:.0} | {:.2} | {:.1} |",
            format_size(wss),
            ours / bare,
            ours * 262_144.0 / 1e6
        );
        vm.end();
    }
}

/// The workload's write rate over `period`, in writes per second.
fn write_rate(vm: &Vm, period: Duration) -> f64 {
    let mem = vm.handle.memory();
    let (before, began) = (vm.workload.writes(mem), Instant::now());
    std::thread::sleep(period);
    (vm.workload.writes(mem) - before) as f64 / began.elapsed().as_secs_f64()
}

fn guest_cost() {
    println!(
        "\n### Cost of tracking to the guest (uniform workload, 2 vCPUs, 64 MiB working set)\n"
    );
    println!("| VM | tracking off | tracking on | ratio | off again after stop | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let period = Duration::from_secs(3);
    for (name, source, ring) in [
        ("bitmap", Source::Bitmap, None),
        ("ring", Source::Ring, Some(16384)),
    ] {
        let vm = boot(256 << 20, 2, spec(Kind::Uniform, 64 << 20), ring);
        vm.workload.set_interval(vm.handle.memory(), 1).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let off = write_rate(&vm, period);
        let ww = vm.handle.write_watch();
        ww.start(source, Initial::Clean).expect("start");
        // A harvest every 100 ms, as a live consumer would.
        let on = {
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        for (start, len) in ww.ram_ranges() {
                            let _ = ww.get(start, len, true, Some(1));
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
                let rate = write_rate(&vm, period);
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                rate
            })
        };
        ww.stop().expect("stop");
        std::thread::sleep(Duration::from_millis(200));
        let after = write_rate(&vm, period);
        println!(
            "| {name} | {off:.0} writes/s | {on:.0} writes/s | {:.2} | {after:.0} writes/s | {:.2} |",
            on / off,
            after / off
        );
        vm.end();
    }
}

fn accuracy() {
    println!(
        "\n### Accuracy (`watch --verify`, 2 vCPUs, 16 MiB working set, 3 intervals of 1 s)\n"
    );
    println!("| source | workload | truth pages | missed | extra | extra by kind |");
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    for source in ["bitmap", "ring"] {
        for workload in ["uniform", "zipf", "seq", "idle"] {
            let out = Command::new(env!("CARGO_BIN_EXE_writewatch"))
                .args([
                    "watch",
                    "--verify",
                    "--intervals",
                    "3",
                    "--vcpus",
                    "2",
                    "--wss",
                    "16M",
                ])
                .args(["--source", source, "--workload", workload])
                .output()
                .expect("running watch");
            let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let sum = |k: &str| {
                lines
                    .iter()
                    .map(|l| l[k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            };
            let by = |k: &str| {
                lines
                    .iter()
                    .map(|l| l["extra_by"][k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            };
            println!(
                "| {source} | {workload} | {} | {} | {} | stale {}, older {}, control {}, kernel image {}, other kernel {} |",
                sum("truth"),
                sum("missed"),
                sum("extra"),
                by("arena_stale"),
                by("arena_older"),
                by("control"),
                by("kernel_image"),
                by("kernel_other")
            );
            assert!(
                out.status.success(),
                "watch --verify failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn big_start() {
    println!("\n### Starting a 4 GiB workload\n");
    let began = Instant::now();
    let vm = boot(5 << 30, 2, spec(Kind::Uniform, 4 << 30), None);
    let announced = began.elapsed();
    vm.workload.set_interval(vm.handle.memory(), 1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let writes = vm.workload.writes(vm.handle.memory());
    println!(
        "`--mem 5G --wss 4G`, 2 vCPUs: the workload announced its {} pages {:.0} ms after the VMM began building the VM; {writes} writes in the next 0.5 s.",
        vm.workload.pages,
        ms(announced)
    );
    vm.end();
}

fn main() {
    let o = options();
    bitmap_harvest(&o);
    ring_harvest(&o);
    guest_cost();
    if o.accuracy {
        accuracy();
    }
    big_start();
}
