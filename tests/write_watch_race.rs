//! A write racing with `get(reset)` is reported by that call or the next,
//! never lost: guest writers on several vCPUs hammer the arena while this
//! thread calls get+reset in a loop, through the library, with no pause.
//!
//! The check needs no cooperation from the writers: after call `j` returns,
//! the test reads every arena page (snapshot `S_j`). A page whose content
//! differs between `S_j` and `S_{j+1}` was written after call `j` ended and
//! before `S_{j+1}` was read, so before call `j+2` began: it must be in the
//! result of call `j+1` or `j+2`. The VMM bumps the workload's interval
//! number after each snapshot, so nearly every write changes its page.

mod common;

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::kvm_available;
use vm_memory::{Bytes, GuestAddress};
use writewatch::builder;
use writewatch::config::VmConfig;
use writewatch::devices::records::{Record, RecordError};
use writewatch::dirty::{Initial, Source};
use writewatch::output::Sink;
use writewatch::runner::{self, Observer};
use writewatch::workload::{Announced, Kind, Mapping, Spec};

struct Quiet;

impl Observer for Quiet {
    fn record(&mut self, _: &Record, _: bool) -> bool {
        true
    }
    fn bad_record(&mut self, _: &RecordError) {}
}

const ROUNDS: usize = 120;

fn race(source: Source, vcpus: u32) {
    let spec = Spec {
        kind: Kind::Uniform,
        rate_mib: 0,
        wss: 8 << 20,
        mapping: Mapping::Huge,
        wait: true,
        first: 0,
    };
    let config = VmConfig {
        vcpus,
        mem_bytes: 64 << 20,
        cmdline: spec.guest_words(),
        dirty_ring_entries: (source == Source::Ring).then_some(4096),
        ..VmConfig::default()
    };
    let console = Arc::new(Sink::spawn("console", || {
        Ok(Box::new(io::sink()) as Box<dyn io::Write + Send>)
    }));
    let machine = builder::build(&config, console).expect("building the VM");
    let (tx, rx) = crossbeam_channel::bounded(4);
    let running = runner::start(
        machine,
        Some(Duration::from_secs(120)),
        Quiet,
        vec![("workload".into(), tx)],
    );
    let vm = running.handle();
    let record = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("workload record");
    let workload = Announced::from_record(&record).unwrap();
    let ww = vm.write_watch();
    ww.start(source, Initial::Clean).unwrap();
    let mem = vm.memory().clone();
    let pages: Vec<u64> = workload
        .arena
        .iter()
        .flat_map(|&[start, len]| (start..start + len).step_by(4096))
        .collect();
    let snapshot = || -> Vec<u64> {
        pages
            .iter()
            .map(|&gpa| mem.read_obj::<u64>(GuestAddress(gpa)).unwrap())
            .collect()
    };
    workload.set_interval(&mem, 1).unwrap();
    let mut results: Vec<HashSet<u64>> = Vec::with_capacity(ROUNDS);
    let mut snapshots = Vec::with_capacity(ROUNDS);
    for j in 0..ROUNDS {
        let mut got = HashSet::new();
        for &[start, len] in &workload.arena {
            got.extend(ww.get(start, len, true, None).unwrap().addresses);
        }
        results.push(got);
        snapshots.push(snapshot());
        workload.set_interval(&mem, j as u64 + 2).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    workload.stop(&mem).unwrap();
    let (outcome, _) = running.wait();
    assert_eq!(outcome.reason, runner::StopReason::GuestExit(0));
    let mut checked = 0;
    for j in 0..ROUNDS - 2 {
        for (i, &gpa) in pages.iter().enumerate() {
            if snapshots[j][i] != snapshots[j + 1][i] {
                checked += 1;
                assert!(
                    results[j + 1].contains(&gpa) || results[j + 2].contains(&gpa),
                    "{source:?}: page {gpa:#x} changed after call {j} but calls {} and {} did not report it",
                    j + 1,
                    j + 2
                );
            }
        }
    }
    assert!(checked > 1000, "too few writes to check: {checked}");
}

#[test]
fn bitmap_get_reset_races_lose_nothing() {
    if kvm_available() {
        race(Source::Bitmap, 4);
    }
}

#[test]
fn ring_get_reset_races_lose_nothing() {
    if kvm_available() {
        race(Source::Ring, 4);
    }
}
