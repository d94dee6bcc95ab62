//! Write watch over a guest process's virtual ranges, through its page
//! tables, with a real ring-3 process (`wwprobe`) that forks, breaks
//! copy-on-write, shares pages, drops and unmaps them. The process spins
//! between phases (each started by the host writing into its flag page), so
//! each phase's result must be exactly what the phase did: written pages,
//! and pages whose translation changed (a moved page must never look
//! clean); a shared page reports in each process that maps it.

mod common;

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::kvm_available;
use crossbeam_channel::Receiver;
use serde::Deserialize;
use vm_memory::{Bytes, GuestAddress};
use writewatch::builder;
use writewatch::config::VmConfig;
use writewatch::devices::records::{Record, RecordError};
use writewatch::dirty::guest_pt::translate_range;
use writewatch::dirty::{Initial, Source, WatchError, WriteWatch};
use writewatch::output::Sink;
use writewatch::runner::{self, Observer, StopReason, VmHandle};

struct Quiet;

impl Observer for Quiet {
    fn record(&mut self, _: &Record, _: bool) -> bool {
        true
    }
    fn bad_record(&mut self, _: &RecordError) {}
}

#[derive(Deserialize)]
struct Probe {
    pid: u64,
    arena: u64,
    arena_pages: u64,
    shared: u64,
    shared_pages: u64,
    flag: u64,
}

#[derive(Deserialize)]
struct Done {
    phase: u64,
    pid: u64,
}

const PAGE: u64 = 4096;

struct Session {
    vm: VmHandle,
    probe: Probe,
    flag_gpa: u64,
    done: Receiver<Record>,
}

impl Session {
    fn ww(&self) -> &WriteWatch {
        self.vm.write_watch()
    }

    /// Starts `phase` and waits until process `by` says it is done.
    fn phase(&self, phase: u64, by: u64) {
        self.vm
            .memory()
            .write_obj(phase, GuestAddress(self.flag_gpa))
            .unwrap();
        loop {
            let record = self
                .done
                .recv_timeout(Duration::from_secs(60))
                .expect("phase done");
            let done: Done = record.fields().unwrap();
            if done.phase == phase && done.pid == by {
                return;
            }
        }
    }

    /// The pages (indices from `base`) written in `[base, base + pages)` of
    /// `cr3` since the last look, reset.
    fn written(&self, cr3: u64, base: u64, pages: u64) -> BTreeSet<u64> {
        self.ww()
            .get_va(cr3, base, pages * PAGE, true, None)
            .unwrap()
            .addresses
            .iter()
            .map(|a| (a - base) / PAGE)
            .collect()
    }

    fn arena(&self, cr3: u64) -> BTreeSet<u64> {
        self.written(cr3, self.probe.arena, self.probe.arena_pages)
    }

    fn shared(&self, cr3: u64) -> BTreeSet<u64> {
        self.written(cr3, self.probe.shared, self.probe.shared_pages)
    }

    fn watch(&self, cr3: u64) {
        let p = &self.probe;
        self.ww()
            .watch_va(cr3, p.arena, p.arena_pages * PAGE)
            .unwrap();
        self.ww()
            .watch_va(cr3, p.shared, p.shared_pages * PAGE)
            .unwrap();
    }
}

fn set(pages: &[u64]) -> BTreeSet<u64> {
    pages.iter().copied().collect()
}

fn probe(source: Source) {
    let config = VmConfig {
        vcpus: 2,
        mem_bytes: 128 << 20,
        cmdline: "mode=run program=wwprobe".into(),
        // Big enough that KVM never overruns it (see `a_ring_overrun_...`).
        dirty_ring_entries: (source == Source::Ring).then_some(65536),
        ..VmConfig::default()
    };
    let console = Arc::new(Sink::spawn("console", || {
        Ok(Box::new(io::sink()) as Box<dyn io::Write + Send>)
    }));
    let machine = builder::build(&config, console).expect("building the VM");
    let (probe_tx, probe_rx) = crossbeam_channel::bounded(4);
    let (done_tx, done_rx) = crossbeam_channel::bounded(16);
    let running = runner::start(
        machine,
        Some(Duration::from_secs(120)),
        Quiet,
        vec![
            ("wwprobe".into(), probe_tx),
            ("wwprobe_done".into(), done_tx),
        ],
    );
    let vm = running.handle();
    vm.write_watch().start(source, Initial::Clean).unwrap();
    let record = probe_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "no wwprobe record: {:?} {:?}",
                vm.status(),
                vm.write_watch().stats()
            )
        });
    let probe: Probe = record.fields().unwrap();
    let parent = vm
        .write_watch()
        .cr3_of(probe.pid)
        .expect("the guest reported the process");
    let flag_gpa =
        translate_range(vm.memory(), parent, probe.flag, 1).unwrap()[0].expect("flag mapped");
    let s = Session {
        vm: vm.clone(),
        probe,
        flag_gpa,
        done: done_rx,
    };
    s.watch(parent);
    let pid = s.probe.pid;

    s.phase(1, pid);
    assert_eq!(
        s.arena(parent),
        set(&[0, 3, 6, 9]),
        "{source:?} phase 1: plain writes"
    );
    assert_eq!(s.shared(parent), set(&[]));

    s.phase(2, pid);
    assert_eq!(
        s.arena(parent),
        set(&[4]),
        "{source:?} phase 2: the parent's COW break"
    );
    assert_eq!(s.shared(parent), set(&[5]));
    let child = s
        .ww()
        .processes()
        .into_iter()
        .find(|p| p.pid != pid)
        .expect("the fork was reported");
    s.watch(child.cr3);

    s.phase(3, child.pid);
    assert_eq!(
        s.arena(child.cr3),
        set(&[1]),
        "{source:?} phase 3: the child's COW break"
    );
    assert_eq!(s.shared(child.cr3), set(&[2]));
    assert_eq!(
        s.arena(parent),
        set(&[]),
        "the child's private copy is not the parent's"
    );
    assert_eq!(
        s.shared(parent),
        set(&[2]),
        "a shared page reports in each process"
    );

    s.phase(4, pid);
    assert_eq!(
        s.arena(parent),
        set(&[]),
        "{source:?} phase 4: the child's exit moves nothing"
    );
    assert_eq!(s.shared(parent), set(&[]));
    assert!(matches!(
        s.ww().get_va(child.cr3, s.probe.arena, PAGE, false, None),
        Err(WatchError::UnknownPageTable(_))
    ));

    s.phase(5, pid);
    assert_eq!(
        s.arena(parent),
        set(&[7]),
        "{source:?} phase 5: dropped, then the zero page"
    );

    s.phase(6, pid);
    assert_eq!(s.arena(parent), set(&[8]), "{source:?} phase 6: unmapped");

    s.phase(7, pid);
    assert_eq!(s.arena(parent), set(&[]), "{source:?} phase 7: nothing");
    assert_eq!(s.shared(parent), set(&[]));

    vm.memory()
        .write_obj(8u64, GuestAddress(s.flag_gpa))
        .unwrap();
    drop(s);
    drop(vm);
    let (outcome, _) = running.wait();
    assert_eq!(
        outcome.reason,
        StopReason::GuestExit(0),
        "wwprobe's own checks"
    );
}

#[test]
fn virtual_ranges_through_the_bitmap() {
    if kvm_available() {
        probe(Source::Bitmap);
    }
}

#[test]
fn virtual_ranges_through_the_ring() {
    if kvm_available() {
        probe(Source::Ring);
    }
}

/// On kvm_pvm, ring-0 code the host emulates pushes one ring entry per
/// store, and KVM does not stop it when the ring fills: zeroing one page is
/// 512 entries, so a small ring overruns and entries are lost. The write
/// watch must notice and report everything as written rather than miss a
/// page. The guest kernel runs in ring-0 mode here: in its default ring-3
/// mode on kvm_pvm its page zeroing is native and stays within the ring.
#[test]
fn a_ring_overrun_is_detected_and_nothing_is_missed() {
    if !kvm_available() {
        return;
    }
    let config = VmConfig {
        vcpus: 2,
        mem_bytes: 128 << 20,
        cmdline: "mode=run program=wwprobe kernel_mode=ring0".into(),
        dirty_ring_entries: Some(1024),
        ..VmConfig::default()
    };
    let console = Arc::new(Sink::spawn("console", || {
        Ok(Box::new(io::sink()) as Box<dyn io::Write + Send>)
    }));
    let machine = builder::build(&config, console).expect("building the VM");
    let (probe_tx, probe_rx) = crossbeam_channel::bounded(4);
    let running = runner::start(
        machine,
        Some(Duration::from_secs(120)),
        Quiet,
        vec![("wwprobe".into(), probe_tx)],
    );
    let vm = running.handle();
    let ww = vm.write_watch();
    ww.start(Source::Ring, Initial::Clean).unwrap();
    probe_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the guest got going despite the small ring");
    let stats = ww.stats();
    // Whether a KVM overruns at all is its own business; this one (kvm_pvm)
    // does. After an overrun every page of guest RAM must be reported.
    assert!(
        stats.ring_overruns > 0,
        "expected an overrun here: {stats:?}"
    );
    let ram = ww.ram_bytes();
    let all = ww.get(0, ram, false, None).unwrap();
    assert_eq!(
        all.count as u64,
        ram / PAGE,
        "after an overrun every page counts as written"
    );
    vm.stop(StopReason::Requested("done".into()));
    drop(vm);
    running.wait();
}
