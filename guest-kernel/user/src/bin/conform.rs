//! `conform`: runs the conformance edge cases
//! (`resources/conformance/cases.txt`) in this guest, from ring 3, with
//! the real system calls, page faults and forks, and prints each case's
//! transcript between a `case NAME` and an `end NAME` line, in the same
//! canonical text the differential test prints for guest-mm and Linux
//! (tests/guest_conformance.rs compares it with Linux's). Argument 0 runs
//! every case, `N` only the N-th (from 1), [`LIGHT`] every case not marked
//! `heavy`, [`STDIN`] every case of the table on standard input instead
//! (`writewatch scenario`: the VMM hands the scenario files over as the
//! input module).
//!
//! A case runs in a child of its own, so it starts with an empty window.
//! Its processes share a control page (outside the window) that says whose
//! turn it is: the process a step belongs to runs it, prints the result
//! and then every live process's layout and resident pages (read without
//! touching them, `mm_maps` and `mm_peek`), and passes the turn on. Faults
//! of the accesses are caught by a SIGSEGV/SIGBUS handler that skips the
//! probing instruction, as in the Linux oracle.

#![no_std]
#![no_main]

use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

use guest_user::probe;
use guest_user::script::{
    Access, AccessResult, CallResult, Case, Digest, HUGE_2M_LOG, HugeCountersText, MAX_PROCS,
    MAX_SCAN_REGIONS, MAX_STEPS, MapLine, MapsEntry, Op, PAGE, PAGEMAP_SCAN, PagemapLine,
    SYS_CLOSE, SYS_HUGETLB_COUNTERS, SYS_HUGETLB_POOL, SYS_IOCTL, SYS_MEMFD_CREATE, SYS_OPEN,
    SYS_PREAD64, SYS_READ, ScanText, State, Step, UffdMsgText, UffdResultText, cases,
};
use guest_user::signal::{SIGBUS, SIGSEGV, sched_yield, sigaction};
use guest_user::watch::Syscalls;
use guest_user::writewatch::{WatchError, WatchText};
use guest_user::*;

guest_user::entry!(main);

const TABLE: &str = include_str!("../../../../resources/conformance/cases.txt");
/// The argument that runs every case but the `heavy` ones.
const LIGHT: u64 = 1 << 32;
/// The argument that runs every case of the table on standard input.
const STDIN: u64 = 1 << 33;
/// Where a table read from standard input goes, and the most it may hold.
const INPUT: u64 = 0x5100_0000_0000;
const INPUT_MAX: u64 = 16 << 20;
/// The control page: far from the window, the program and its stack.
const CONTROL: u64 = 0x5000_0000_0000;
const MAP_FIXED: u64 = 0x10;
/// Most VMAs of one process the state lines look at.
const MAX_VMAS: usize = 128;
/// Pages `mm_peek` hands over per call.
const PEEK_PAGES: usize = 64;
const PEEK_RECORD: usize = 16 + PAGE as usize;

/// The name `memfd` steps give their files.
const MEMFD_NAME: &[u8] = b"t\0";

/// What the processes of one case share.
#[repr(C)]
struct Control {
    /// The step that may run now.
    turn: AtomicUsize,
    /// The step at which each process exited (`usize::MAX`: it has not),
    /// written before the state says so: a process that finds a step's
    /// owner dead knows whether the owner died running that very step
    /// (and reports it) or before it.
    exit_step: [AtomicUsize; MAX_PROCS],
    state: State,
    pids: [u64; MAX_PROCS],
    /// What the step being reported read: pagemap entries, or the regions
    /// of a `PAGEMAP_SCAN` (only the reporting process touches them).
    entries: [u64; MAX_SCAN_REGIONS as usize],
    regions: [[u64; 3]; MAX_SCAN_REGIONS as usize],
}

/// Offsets into Linux's `ucontext` (`uc_mcontext` at 40: RAX is word 13,
/// RIP word 16) and `siginfo` (`si_code` at 8).
const UC_RAX: usize = 40 + 13 * 8;
const UC_RIP: usize = 40 + 16 * 8;
const SI_CODE: usize = 8;

extern "C" fn on_fault(sig: i32, info: *mut u8, uc: *mut u8) {
    // SAFETY: the kernel passes its signal frame's siginfo and ucontext,
    // which live on this stack until the handler returns.
    unsafe {
        let rip = uc.add(UC_RIP).cast::<u64>().read_unaligned();
        let code = info.add(SI_CODE).cast::<i32>().read_unaligned();
        match probe::fixup(rip) {
            Some(resume) => {
                uc.add(UC_RIP).cast::<u64>().write_unaligned(resume);
                let r = (i64::from(sig) << 8) | i64::from(code);
                uc.add(UC_RAX).cast::<i64>().write_unaligned(r);
            }
            // Not a probe: a bug here; end with a recognisable status.
            None => exit(200 + sig),
        }
    }
}

/// Console output, flushed when full and after each step.
struct Out {
    buf: [u8; 4096],
    len: usize,
}

impl Out {
    fn flush(&mut self) {
        write(1, &self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

fn main(which: u64) -> i32 {
    if sigaction(SIGSEGV, on_fault, 0) != 0 || sigaction(SIGBUS, on_fault, 0) != 0 {
        return 2;
    }
    let mut out = Out {
        buf: [0; 4096],
        len: 0,
    };
    let table = if which == STDIN {
        match read_stdin() {
            Some(t) => t,
            None => {
                let _ = writeln!(
                    out,
                    "conform: standard input is not a table of at most {INPUT_MAX} bytes of UTF-8"
                );
                out.flush();
                return 2;
            }
        }
    } else {
        TABLE
    };
    let count = cases(table).count() as u64;
    if !matches!(which, LIGHT | STDIN) && which > count {
        let _ = writeln!(
            out,
            "conform: no case {which}; the table has {count} (arg=0: all)"
        );
        out.flush();
        return 2;
    }
    for (i, case) in cases(table).enumerate() {
        let wanted = match which {
            0 | STDIN => true,
            LIGHT => case.heavy.is_none(),
            n => n == i as u64 + 1,
        };
        if !wanted {
            continue;
        }
        // Every case starts as Linux boots: no hugetlb pool, no overcommit
        // (the harness empties the host's pool the same way).
        call6(SYS_HUGETLB_POOL, [HUGE_2M_LOG, 1, 0, 0, 0, 0]);
        call6(SYS_HUGETLB_POOL, [HUGE_2M_LOG, 0, 0, 0, 0, 0]);
        let _ = writeln!(out, "case {}", case.name);
        out.flush();
        let status = match fork() {
            0 => exit(run_case(&case)),
            pid if pid > 0 => {
                let mut status = 0;
                wait4(pid, &mut status);
                status
            }
            _ => -1,
        };
        if status != 0 {
            let _ = writeln!(out, "  aborted: status {status}");
        }
        let _ = writeln!(out, "end {}", case.name);
        out.flush();
    }
    0
}

/// All of standard input, in memory mapped for it that stays for the
/// program's life.
fn read_stdin() -> Option<&'static str> {
    let rw = PROT_READ | PROT_WRITE;
    if mmap(
        INPUT,
        INPUT_MAX,
        rw,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
    ) < 0
    {
        return None;
    }
    // Mapped just above, private and writable; nothing else here uses it.
    // SAFETY: the region is this program's and nothing aliases it.
    let buf = unsafe { core::slice::from_raw_parts_mut(INPUT as *mut u8, INPUT_MAX as usize) };
    let mut len = 0;
    loop {
        let n = call3(
            SYS_READ,
            0,
            buf[len..].as_ptr() as u64,
            (buf.len() - len) as u64,
        );
        match n {
            0 => break,
            1.. => len += n as usize,
            _ => return None,
        }
        if len == buf.len() {
            return None;
        }
    }
    core::str::from_utf8(&buf[..len]).ok()
}

/// Runs one case as its process 0; every process of the case returns here.
fn run_case(case: &Case<'_>) -> i32 {
    let mut steps: [Option<Step>; MAX_STEPS] = [None; MAX_STEPS];
    for (slot, s) in steps.iter_mut().zip(case.steps()) {
        match s {
            Ok(step) => *slot = Some(step),
            Err(_) => return 3,
        }
    }
    let pages = (core::mem::size_of::<Control>() as u64).div_ceil(PAGE) * PAGE;
    let rw = PROT_READ | PROT_WRITE;
    if mmap(CONTROL, pages, rw, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED) < 0 {
        return 4;
    }
    // SAFETY: the control page was just mapped, shared and writable, for
    // this case's processes only; all of them access it through atomics or
    // only while it is their turn.
    let ctrl = unsafe { &mut *(CONTROL as *mut Control) };
    ctrl.turn.store(0, Ordering::Release);
    for e in &ctrl.exit_step {
        e.store(usize::MAX, Ordering::Release);
    }
    ctrl.state = State::default();
    ctrl.pids = [0; MAX_PROCS];
    ctrl.pids[0] = getpid() as u64;
    let mut me = 0;
    // The result of this process's background write, once it ended.
    let mut bg: Option<Access> = None;
    let mut out = Out {
        buf: [0; 4096],
        len: 0,
    };
    for (k, step) in steps.iter().enumerate() {
        let Some(step) = step else { break };
        // The turn only moves forward; past `k`, another process ran it.
        while ctrl.turn.load(Ordering::Acquire) < k {
            sched_yield();
        }
        if ctrl.turn.load(Ordering::Acquire) > k {
            continue;
        }
        // A step of a process that does not live is process 0's to report,
        // unless that process is exiting in this very step.
        let exits_now = ctrl
            .exit_step
            .get(step.proc)
            .is_some_and(|e| e.load(Ordering::Acquire) == k);
        let owner = if ctrl.state.alive(step.proc) || exits_now {
            step.proc
        } else {
            0
        };
        if owner != me {
            continue;
        }
        let _ = write!(out, "{k}: {step} = ");
        let mut exiting = false;
        if let (Op::WriteBg { addr, val }, true) = (step.op, ctrl.state.alive(step.proc)) {
            // Reported as started, and the turn passed on, before the
            // write: it may wait for a handler that a later step is.
            ctrl.state.set_busy(me, true);
            let _ = writeln!(out, "started");
            print_state(&mut out, &ctrl.state, &ctrl.pids);
            out.flush();
            ctrl.turn.store(k + 1, Ordering::Release);
            // SAFETY: the probe's faults are caught by `on_fault`.
            let r = unsafe { probe::probe_write(ctrl.state.resolve(addr), val) };
            bg = Some(access(r, val));
            continue;
        }
        if !ctrl.state.alive(step.proc) && !exits_now {
            let _ = write!(out, "no such process");
        } else if step.op == Op::Join {
            ctrl.state.set_busy(me, false);
            // Its turn comes only after the write ended (this process ran it).
            let _ = match bg.take() {
                Some(a) => write!(out, "{}", AccessResult(a, true)),
                None => write!(out, "join without a background write"),
            };
        } else {
            let done = match run_step(ctrl, k, step, &mut me) {
                Ran::Child => {
                    // The parent reports the fork; drop its half-written line.
                    out.len = 0;
                    continue;
                }
                Ran::Done(done) => done,
            };
            exiting = matches!(done, Done::Exited);
            let _ = match done {
                Done::Call(r) if step.op.maps_len().is_some() && r >= 0 => {
                    write!(out, "{}", ctrl.state.show(step.proc, r as u64))
                }
                Done::Call(r) => write!(out, "{}", CallResult(r)),
                Done::Access(a, write) => write!(out, "{}", AccessResult(a, write)),
                Done::Forked(child) => write!(out, "p{child}"),
                Done::TooMany => write!(out, "too many processes"),
                Done::Exited => write!(out, "exited"),
                Done::Huge(c) => write!(out, "{}", HugeCountersText(c)),
                Done::Opened => write!(out, "fd"),
                Done::Uffd(req, r, a, b) => write!(out, "{}", UffdResultText { req, r, a, b }),
                Done::UffdMsg(r, msg) => write!(
                    out,
                    "{}",
                    UffdMsgText {
                        state: &ctrl.state,
                        proc: step.proc,
                        r,
                        msg,
                    }
                ),
                Done::Watch(result, n) => write!(
                    out,
                    "{}",
                    WatchText {
                        state: &ctrl.state,
                        proc: step.proc,
                        result,
                        addrs: &ctrl.entries[..n],
                    }
                ),
                Done::Pagemap(n) => write!(out, "{}", PagemapLine(&ctrl.entries[..n])),
                Done::Scan(r, walk_end, n) => write!(
                    out,
                    "{}",
                    ScanText {
                        state: &ctrl.state,
                        proc: step.proc,
                        r,
                        walk_end,
                        regions: &ctrl.regions[..n],
                    }
                ),
            };
        }
        let _ = writeln!(out);
        print_state(&mut out, &ctrl.state, &ctrl.pids);
        out.flush();
        ctrl.turn.store(k + 1, Ordering::Release);
        if exiting {
            exit(0);
        }
    }
    // Every process lives until the last step was reported (its layout is
    // part of every step's state), then reaps its children and leaves.
    let n = steps.iter().flatten().count();
    while ctrl.turn.load(Ordering::Acquire) < n {
        sched_yield();
    }
    let mut status = 0;
    while wait4(-1, &mut status) > 0 {}
    0
}

/// What running a step did to this process.
enum Ran {
    /// It ran, with this outcome.
    Done(Done),
    /// This is a fork's child: the parent reports the step.
    Child,
}

/// A step's outcome, for its result text.
enum Done {
    /// A call returned this.
    Call(i64),
    /// An access (a write if true).
    Access(Access, bool),
    /// A fork made this process number.
    Forked(usize),
    /// A fork had no process number left.
    TooMany,
    /// The process exits after reporting.
    Exited,
    /// The 2 MiB hugetlb pool's counters.
    Huge([u64; 4]),
    /// A file was opened (its number differs from Linux's: not shown).
    Opened,
    /// A userfaultfd ioctl: the request, its result and output words.
    Uffd(guest_user::script::UffdReq, i64, u64, u64),
    /// A userfaultfd read: its result, and the message's event, flags and
    /// address.
    UffdMsg(i64, [u64; 3]),
    /// A GetWriteWatch or ResetWriteWatch result (addresses in
    /// `Control::entries`).
    Watch(Result<(usize, u64), WatchError>, usize),
    /// Pagemap entries (the first `n` of `Control::entries`).
    Pagemap(usize),
    /// `PAGEMAP_SCAN`: result, `walk_end`, and the first `n` of
    /// `Control::regions`.
    Scan(i64, u64, usize),
}

/// `open("/proc/self/pagemap")`: this process's, also after a fork.
fn open_pagemap() -> i64 {
    call6(
        SYS_OPEN,
        [c"/proc/self/pagemap".as_ptr() as u64, 0, 0, 0, 0, 0],
    )
}

/// An access probe's result: 0, or `signal << 8 | si_code`.
fn access(r: u64, value: u8) -> Access {
    match r {
        0 => Access::Done(value),
        r if r >> 8 == SIGBUS => Access::Bus,
        r => Access::Segv((r & 0xff) as i32),
    }
}

fn run_step(ctrl: &mut Control, k: usize, step: &Step, me: &mut usize) -> Ran {
    let st = &ctrl.state;
    if let Some((nr, mut args)) = step.op.call(|a| st.resolve(a)) {
        if nr == SYS_MEMFD_CREATE {
            args[0] = MEMFD_NAME.as_ptr() as u64;
        }
        let mut path = [0u8; 32];
        if let Some(name) = step.op.path_name() {
            args[0] = name.path_in(&mut path).as_ptr() as u64;
        }
        let r = call6(nr, args);
        if let Some(len) = step.op.maps_len() {
            ctrl.state.mapped(k, *me, r, len);
        }
        if step.op.opens() {
            ctrl.state.opened(k, r);
            if r >= 0 {
                return Ran::Done(Done::Opened);
            }
        }
        return Ran::Done(Done::Call(r));
    }
    Ran::Done(match step.op {
        Op::Write { addr, val } => {
            // SAFETY: the probe's faults are caught by `on_fault`.
            let r = unsafe { probe::probe_write(ctrl.state.resolve(addr), val) };
            Done::Access(access(r, val), true)
        }
        Op::Read { addr } => {
            let mut b = 0u8;
            // SAFETY: as for the write.
            let r = unsafe { probe::probe_read(ctrl.state.resolve(addr), &mut b) };
            Done::Access(access(r, b), false)
        }
        Op::UffdRead { fd } => {
            let mut m = [0u8; 32];
            let fd = fd.value(&|a| ctrl.state.resolve(a));
            let r = call6(SYS_READ, [fd, m.as_mut_ptr() as u64, 32, 0, 0, 0]);
            let word = |o: usize| u64::from_le_bytes(m[o..o + 8].try_into().unwrap_or([0; 8]));
            Done::UffdMsg(r, [u64::from(m[0]), word(8), word(16)])
        }
        Op::Fork => {
            let Some(child) = ctrl.state.next_proc() else {
                return Ran::Done(Done::TooMany);
            };
            match fork() {
                0 => {
                    *me = child;
                    return Ran::Child;
                }
                pid if pid > 0 => {
                    ctrl.pids[child] = pid as u64;
                    ctrl.state.forked(*me);
                    Done::Forked(child)
                }
                e => Done::Call(e),
            }
        }
        Op::Exit => {
            ctrl.exit_step[*me].store(k, Ordering::Release);
            ctrl.state.exited(*me);
            Done::Exited
        }
        Op::HugeCounters => {
            let mut w = [0u64; 5];
            let args = [HUGE_2M_LOG, w.as_mut_ptr() as u64, 40, 0, 0, 0];
            let r = call6(SYS_HUGETLB_COUNTERS, args);
            if r < 0 {
                return Ran::Done(Done::Call(r));
            }
            Done::Huge([w[0], w[1], w[2], w[3]])
        }
        Op::Uffd { fd, req } => {
            let st = &ctrl.state;
            let fd = fd.value(&|a| st.resolve(a));
            let call = req.resolved(|a| st.resolve(a));
            let (cmd, mut w) = call.ioctl();
            let r = call6(SYS_IOCTL, [fd, cmd, w.as_mut_ptr() as u64, 0, 0, 0]);
            let (a, b) = call.outputs(&w);
            Done::Uffd(req, r, a, b)
        }
        Op::ClearRefs { ty } => {
            let fd = call6(
                SYS_OPEN,
                [c"/proc/self/clear_refs".as_ptr() as u64, 1, 0, 0, 0, 0],
            );
            if fd < 0 {
                return Ran::Done(Done::Call(fd));
            }
            // The type in decimal and a newline, as `echo N >` writes it.
            let mut b = guest_user::fmt::Buf::new();
            let _ = writeln!(b, "{ty}");
            let r = write(fd as u64, b.as_bytes());
            call6(SYS_CLOSE, [fd as u64, 0, 0, 0, 0, 0]);
            Done::Call(r)
        }
        Op::Pagemap { addr, pages } => {
            let e = &mut ctrl.entries;
            let pm = open_pagemap();
            let off = ctrl.state.resolve(addr) / PAGE * 8;
            let r = call6(
                SYS_PREAD64,
                [pm as u64, e.as_mut_ptr() as u64, pages * 8, off, 0, 0],
            );
            call6(SYS_CLOSE, [pm as u64, 0, 0, 0, 0, 0]);
            if r < 0 {
                return Ran::Done(Done::Call(r));
            }
            Done::Pagemap((r / 8) as usize)
        }
        Op::PagemapScan { addr, len, scan } => {
            let regions = &mut ctrl.regions;
            let start = ctrl.state.resolve(addr);
            let mut arg = scan.words(start, len, regions.as_mut_ptr() as u64);
            let pm = open_pagemap();
            let r = call6(
                SYS_IOCTL,
                [pm as u64, PAGEMAP_SCAN, arg.as_mut_ptr() as u64, 0, 0, 0],
            );
            call6(SYS_CLOSE, [pm as u64, 0, 0, 0, 0, 0]);
            let n = (r.max(0) as usize).min(regions.len());
            Done::Scan(r, arg[4], n)
        }
        Op::WwAlloc { addr, len } => {
            let a = ctrl.state.resolve(addr);
            let r = ctrl.state.watch[*me].alloc(&mut Syscalls, a, len);
            ctrl.state.mapped(k, *me, r, len.div_ceil(PAGE) * PAGE);
            Done::Call(r)
        }
        Op::GetWriteWatch {
            flags,
            addr,
            len,
            count,
        } => {
            let a = ctrl.state.resolve(addr);
            let out = &mut ctrl.entries[..count as usize];
            let result = ctrl.state.watch[*me].get(&mut Syscalls, flags, a, len, out);
            let n = result.map_or(0, |(n, _)| n);
            Done::Watch(result, n)
        }
        Op::ResetWriteWatch { addr, len } => {
            let a = ctrl.state.resolve(addr);
            let result = ctrl.state.watch[*me].reset(&mut Syscalls, a, len);
            Done::Watch(result.map(|()| (0, 0)), 0)
        }
        _ => unreachable!("calls are handled above"),
    })
}

/// The layout and resident pages of every live process.
fn print_state(out: &mut Out, state: &State, pids: &[u64; MAX_PROCS]) {
    let mut text = [0u8; 16384];
    for p in state.live() {
        if state.busy(p) {
            // Its background write may change its memory while we look.
            let _ = writeln!(out, "  p{p} busy");
            continue;
        }
        let n = mm_maps(pids[p], &mut text);
        let mut maps = [MapLine {
            start: 0,
            end: 0,
            perms: *b"----",
            offset: 0,
        }; MAX_VMAS];
        let mut count = 0;
        if n > 0 {
            let s = core::str::from_utf8(&text[..n as usize]).unwrap_or("");
            for line in s.lines().filter_map(MapLine::parse) {
                if count < MAX_VMAS {
                    maps[count] = line;
                    count += 1;
                }
            }
        }
        let _ = write!(out, "  p{p} maps: ");
        let mut first = true;
        for line in state.cut(p, &maps[..count]) {
            let _ = write!(
                out,
                "{}{}",
                if first { "" } else { "; " },
                MapsEntry {
                    state,
                    proc: p,
                    line
                }
            );
            first = false;
        }
        let _ = writeln!(out);
        let mut any = false;
        for line in state.cut(p, &maps[..count]) {
            print_pages(out, state, p, pids[p], line, &mut any);
        }
        if any {
            let _ = writeln!(out);
        }
    }
}

/// The present and swapped pages of one (cut) VMA, on the pages line.
fn print_pages(out: &mut Out, state: &State, p: usize, pid: u64, line: MapLine, any: &mut bool) {
    let mut buf = [0u8; PEEK_PAGES * PEEK_RECORD];
    let mut start = line.start;
    while start < line.end {
        let n = mm_peek(pid, start, line.end, &mut buf);
        if n <= 0 {
            return;
        }
        let mut at = 0;
        while at + 16 <= n as usize {
            let word = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap_or([0; 8]));
            let (va, kind) = (word(at), word(at + 8));
            let _ = if *any {
                write!(out, " ")
            } else {
                write!(out, "  p{p} pages: ")
            };
            *any = true;
            let _ = write!(out, "{}", state.show(p, va));
            if kind == 1 {
                let _ = write!(out, ":{}", Digest(&buf[at + 16..at + PEEK_RECORD]));
                at += PEEK_RECORD;
            } else {
                let _ = write!(out, ":swap");
                at += 16;
            }
            start = va + PAGE;
        }
    }
}
