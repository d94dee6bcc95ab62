//! Symmetric multiprocessing: starting the APs with INIT/SIPI/SIPI, running
//! a function on another CPU, and TLB shootdown IPIs.
//!
//! APs are started all at once (each finds its stack by APIC ID in the
//! trampoline); a second SIPI goes only to those that have not checked in
//! after a short wait. After `cpu::init` an AP idles in `hlt` and runs
//! cross-CPU calls and the user tasks queued for it (`process::sched`) in its
//! idle loop (thread context, interrupts enabled);
//! shootdowns run in the IPI handler itself so they never wait for a busy
//! CPU to go idle.

use super::hooks;
use super::lapic::{self, Ipi};
use super::paging::{self, PAGE_SIZE, phys_to_virt};
use super::percpu::{self, MAX_CPUS};
use super::trampoline::{self, TRAMPOLINE_PHYS};
use super::{cpu, msr, traps};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

/// Pages per AP kernel stack.
const AP_STACK_PAGES: u64 = 8;
/// TSC cycles to wait for APs before the second SIPI (about 1-10 ms).
const SECOND_SIPI_CYCLES: u64 = 10_000_000;
/// TSC cycles to wait for all APs in total, or for a cross-CPU request to
/// be taken (about one second at typical TSC rates; every AP is a host
/// thread, so even 64 APs on two host cores check in well within that).
const WAIT_CYCLES: u64 = 3_000_000_000;
/// TSC cycles to wait for a cross-CPU call to finish (about ten seconds):
/// a call may run a whole user program, which in ring-0 mode on kvm_pvm
/// (emulated ring 0) on a loaded host takes more than a second.
const CALL_WAIT_CYCLES: u64 = 25_000_000_000;

/// Stack tops of the APs, indexed by APIC ID (read by the trampoline).
static AP_STACKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Why SMP bring-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmpError {
    /// `cpus=N` asks for more CPUs than supported.
    TooManyCpus(usize),
    /// No frames for AP stacks.
    OutOfFrames,
    /// These APs (bit mask of CPU numbers) never checked in.
    NoCheckIn(u64),
}

/// Why a cross-CPU operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The target CPU is not online.
    Offline(usize),
    /// The target did not answer in time.
    Timeout(usize),
    /// The target still has an unfinished earlier call.
    Busy(usize),
}

/// Starts CPUs `1..count` and waits for them to come online.
pub fn start_aps(count: usize) -> Result<(), SmpError> {
    if count > MAX_CPUS {
        return Err(SmpError::TooManyCpus(count));
    }
    if count <= 1 {
        return Ok(());
    }
    for slot in AP_STACKS.iter().take(count).skip(1) {
        let stack = (hooks::get().alloc_frames)(AP_STACK_PAGES).ok_or(SmpError::OutOfFrames)?;
        slot.store(
            phys_to_virt(stack) + AP_STACK_PAGES * PAGE_SIZE,
            Ordering::Relaxed,
        );
    }
    // SAFETY: no AP runs yet, and the page at 0x8000 is reserved for the
    // trampoline (frames below 1 MiB are never allocated).
    unsafe {
        trampoline::install(
            (hooks::get().kernel_root)(),
            ap_main,
            AP_STACKS.as_ptr().cast(),
        )
    };
    let sipi = Ipi::Startup((TRAMPOLINE_PHYS / PAGE_SIZE) as u8);
    for cpu in 1..count {
        lapic::send_ipi(cpu as u32, Ipi::Init);
    }
    for cpu in 1..count {
        lapic::send_ipi(cpu as u32, sipi);
    }
    let missing = || {
        (1..count)
            .filter(|&c| !percpu::cpu(c).online.load(Ordering::Acquire))
            .fold(0u64, |m, c| m | 1 << c)
    };
    let start = msr::rdtsc();
    let mut resent = false;
    loop {
        let mask = missing();
        if mask == 0 {
            return Ok(());
        }
        let waited = msr::rdtsc().wrapping_sub(start);
        if !resent && waited > SECOND_SIPI_CYCLES {
            for cpu in (1..count).filter(|c| mask & (1 << c) != 0) {
                lapic::send_ipi(cpu as u32, sipi);
            }
            resent = true;
        }
        if waited > WAIT_CYCLES {
            return Err(SmpError::NoCheckIn(mask));
        }
        core::hint::spin_loop();
    }
}

/// Entry of an AP, called by the trampoline on its own stack.
extern "C" fn ap_main(apic_id: u64) -> ! {
    let index = apic_id as usize;
    if let Err(e) = cpu::init(index) {
        panic!("cpu {index}: initialisation failed: {e:?}");
    }
    percpu::cpu(index).online.store(true, Ordering::Release);
    idle_loop(index)
}

/// Runs cross-CPU calls addressed to this CPU; halts in between.
fn idle_loop(index: usize) -> ! {
    let me = percpu::cpu(index);
    loop {
        cpu::disable_interrupts();
        let f = me.call_fn.load(Ordering::Acquire);
        if f == 0 {
            if (hooks::get().has_work)(index) {
                cpu::enable_interrupts();
                (hooks::get().run_work)();
            } else {
                cpu::enable_and_halt();
            }
            continue;
        }
        cpu::enable_interrupts();
        let arg = me.call_arg.load(Ordering::Relaxed);
        // SAFETY: `call_fn` is only ever set by `call_on` from a `fn(usize)`.
        let func: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(f) };
        func(arg);
        me.call_fn.store(0, Ordering::Release);
        me.calls_done.fetch_add(1, Ordering::AcqRel);
    }
}

/// Serialises cross-CPU calls (one mailbox per target CPU).
static CALL_LOCK: Mutex<()> = Mutex::new(());

/// Runs `func(arg)` on CPU `target` (not the calling one) and waits for it.
pub fn call_on(target: usize, func: fn(usize), arg: usize) -> Result<(), CallError> {
    let before = post_call(target, func, arg)?;
    let slot = percpu::cpu(target);
    wait_for(CALL_WAIT_CYCLES, || {
        slot.calls_done.load(Ordering::Acquire) != before
    })
    .map_err(|_| CallError::Timeout(target))
}

/// Starts `func(arg)` on CPU `target` (not the calling one) and returns at
/// once; the call may run for as long as it likes (a workload does).
pub fn spawn_on(target: usize, func: fn(usize), arg: usize) -> Result<(), CallError> {
    post_call(target, func, arg).map(|_| ())
}

/// Puts `func(arg)` in `target`'s mailbox and interrupts it; returns the
/// target's count of finished calls from before.
fn post_call(target: usize, func: fn(usize), arg: usize) -> Result<u64, CallError> {
    if target >= MAX_CPUS
        || !percpu::cpu(target).online.load(Ordering::Acquire)
        || target == percpu::index()
    {
        return Err(CallError::Offline(target));
    }
    let _guard = CALL_LOCK.lock();
    let slot = percpu::cpu(target);
    if slot.call_fn.load(Ordering::Acquire) != 0 {
        // An earlier call timed out (or runs for good) and is still there.
        return Err(CallError::Busy(target));
    }
    let before = slot.calls_done.load(Ordering::Acquire);
    slot.call_arg.store(arg, Ordering::Relaxed);
    slot.call_fn.store(func as usize, Ordering::Release);
    lapic::send_ipi(target as u32, Ipi::Fixed(traps::VEC_CALL as u8));
    Ok(before)
}

/// Serialises shootdowns; holds the address being invalidated.
static SHOOTDOWN: Mutex<()> = Mutex::new(());
static SHOOTDOWN_ADDR: AtomicU64 = AtomicU64::new(0);

/// Invalidates the kernel translation of `virt` on every online CPU and
/// waits until all have done it.
pub fn tlb_shootdown(virt: u64) -> Result<(), CallError> {
    let _guard = SHOOTDOWN.lock();
    SHOOTDOWN_ADDR.store(virt, Ordering::Release);
    paging::invlpg(virt);
    let me = percpu::index();
    for target in
        (0..MAX_CPUS).filter(|&c| c != me && percpu::cpu(c).online.load(Ordering::Acquire))
    {
        let slot = percpu::cpu(target);
        let before = slot.shootdowns_done.load(Ordering::Acquire);
        lapic::send_ipi(target as u32, Ipi::Fixed(traps::VEC_SHOOTDOWN as u8));
        wait_for(WAIT_CYCLES, || {
            slot.shootdowns_done.load(Ordering::Acquire) != before
        })
        .map_err(|_| CallError::Timeout(target))?;
    }
    Ok(())
}

/// Shootdown IPI handler body.
pub fn handle_shootdown() {
    paging::invlpg(SHOOTDOWN_ADDR.load(Ordering::Acquire));
    percpu::current()
        .shootdowns_done
        .fetch_add(1, Ordering::AcqRel);
}

/// Serialises user-TLB flushes; the request is in the atomics below.
static USER_FLUSH: Mutex<()> = Mutex::new(());
static USER_FLUSH_ROOT: AtomicU64 = AtomicU64::new(0);
static USER_FLUSH_START: AtomicU64 = AtomicU64::new(0);
static USER_FLUSH_END: AtomicU64 = AtomicU64::new(0);

/// Pages up to which a range flush uses `invlpg`; larger ranges reload CR3.
const INVLPG_MAX_PAGES: u64 = 32;

/// Invalidates user translations `[start, end)` (`end == 0`: all of them)
/// of the address space whose PML4 is at `root`, on every CPU in the bit
/// mask `cpus`, and waits until all have done it (`flush_tlb_mm_range`).
/// Only CPUs whose CR3 is `root` can hold such translations (no PCIDs, user
/// pages are not global), so each CPU checks that itself.
///
/// Callers must keep interrupts enabled while they wait for locks that a
/// flushing CPU may hold, or the flush IPI cannot be taken.
pub fn flush_user_tlb(root: u64, cpus: u64, start: u64, end: u64) -> Result<(), CallError> {
    let _guard = USER_FLUSH.lock();
    USER_FLUSH_ROOT.store(root, Ordering::Relaxed);
    USER_FLUSH_START.store(start, Ordering::Relaxed);
    USER_FLUSH_END.store(end, Ordering::Release);
    let me = percpu::index();
    if cpus & (1 << me) != 0 {
        flush_user_local(root, start, end);
    }
    for target in (0..MAX_CPUS).filter(|&c| {
        c != me && cpus & (1 << c) != 0 && percpu::cpu(c).online.load(Ordering::Acquire)
    }) {
        let slot = percpu::cpu(target);
        let before = slot.user_flushes_done.load(Ordering::Acquire);
        lapic::send_ipi(target as u32, Ipi::Fixed(traps::VEC_USER_FLUSH as u8));
        wait_for(WAIT_CYCLES, || {
            slot.user_flushes_done.load(Ordering::Acquire) != before
        })
        .map_err(|_| CallError::Timeout(target))?;
    }
    Ok(())
}

/// User-TLB flush IPI handler body.
pub fn handle_user_flush() {
    flush_user_local(
        USER_FLUSH_ROOT.load(Ordering::Relaxed),
        USER_FLUSH_START.load(Ordering::Relaxed),
        USER_FLUSH_END.load(Ordering::Acquire),
    );
    percpu::current()
        .user_flushes_done
        .fetch_add(1, Ordering::AcqRel);
}

fn flush_user_local(root: u64, start: u64, end: u64) {
    if super::kctx::in_context() {
        // The context runs on its own CR3; the user CR3 that ring 0 loads
        // when the call ends flushes this CPU's user translations anyway.
        return;
    }
    let cr3 = paging::read_cr3();
    if cr3 != root {
        return;
    }
    if end > start && (end - start) / PAGE_SIZE <= INVLPG_MAX_PAGES {
        for page in (start..end).step_by(PAGE_SIZE as usize) {
            paging::invlpg(page);
        }
    } else {
        // SAFETY: reloading the active CR3 only drops non-global
        // translations.
        unsafe { paging::write_cr3(cr3) };
    }
}

/// Wakes CPU `target` from `hlt` (its idle loop or scheduler then looks
/// for work).
pub fn wake(target: usize) {
    if target < MAX_CPUS && target != percpu::index() {
        lapic::send_ipi(target as u32, Ipi::Fixed(traps::VEC_CALL as u8));
    }
}

/// A wait that ran out of time.
struct TimedOut;

/// Spins until `done()` or about `cycles` TSC cycles passed.
fn wait_for(cycles: u64, done: impl Fn() -> bool) -> Result<(), TimedOut> {
    let start = msr::rdtsc();
    while !done() {
        if msr::rdtsc().wrapping_sub(start) > cycles {
            return Err(TimedOut);
        }
        core::hint::spin_loop();
    }
    Ok(())
}
