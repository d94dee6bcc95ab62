//! The writewatch guest kernel.
//!
//! Boots through PVH (`boot::entry`), sets up its own descriptor tables,
//! per-CPU data, heap, LAPIC timer and APs, sends the `ready` record, builds
//! the MM core, and then does what `mode=` on the command line asks
//! (docs/GUEST_ABI.md): run the `init` user program, run the self-tests or
//! the MM benchmarks, or exercise one of the failure paths (panic,
//! unexpected fault, hang, triple fault).

#![no_std]
#![no_main]

extern crate alloc;

mod arch;
/// Per-CPU data lives with the arch code (GDT, TSS, GS base); the rest of
/// the kernel knows it by this name.
use arch::x86_64::percpu;
mod boot;
mod console;
mod exit;
mod memory;
mod modes;
mod panic;
mod process;
mod records;
mod selftest;
mod timer;
mod workload;

use arch::x86_64::hooks::{self, Hooks};
use arch::x86_64::kctx::{self, KernelMode};
use arch::x86_64::paging::{KERNEL_VMA, virt_to_phys};
use arch::x86_64::platform::{self, Platform};
use arch::x86_64::{cpu, idt, lapic, pic, smp};
use boot::cmdline::Mode;
use core::ops::RangeInclusive;
use core::sync::atomic::Ordering;

unsafe extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_end: u8;
}

/// The physical range `[start, end)` of the kernel image.
pub fn kernel_image() -> (u64, u64) {
    let start = &raw const __kernel_phys_start as u64;
    (start, virt_to_phys(&raw const __kernel_end as u64))
}

/// The ports the ring-3 kernel context may write: the console, the exit
/// device, the record doorbell.
static CONTEXT_PORTS: [RangeInclusive<u16>; 3] = [
    console::COM1_PORTS,
    exit::EXIT_PORT..=exit::EXIT_PORT,
    records::RECORD_PORT..=records::RECORD_PORT,
];

/// What the arch layer calls upward.
fn register_arch_hooks() {
    hooks::register(Hooks {
        alloc_frames: memory::frames::alloc_contiguous,
        kernel_root: memory::kmap::kernel_pml4,
        map_mmio: |virt, phys| memory::kmap::map_vmap_mmio(virt, phys).is_ok(),
        timer_start: timer::start,
        timer_tick: timer::tick,
        user_trap: process::trap::user_trap,
        has_work: process::sched::has_work,
        run_work: process::sched::run_queued,
        fatal: fatal_exception,
        context_ports: &CONTEXT_PORTS,
    });
}

/// An unexpected kernel exception: its report, then exit code 4.
fn fatal_exception(report: core::fmt::Arguments) -> ! {
    console::print_fatal(report);
    exit::exit(exit::ExitCode::Exception)
}

/// Called by `boot::entry` on the boot CPU, in long mode on the boot stack.
#[unsafe(no_mangle)]
extern "C" fn kernel_main(start_info: u64) -> ! {
    timer::mark_boot();
    register_arch_hooks();
    let info = match boot::start_info::parse(start_info) {
        Ok(info) => boot::set_info(info),
        Err(e) => panic!("bad PVH start info at {start_info:#x}: {e:?}"),
    };
    let (kernel_start, kernel_end) = kernel_image();
    debug_assert!(kernel_end < KERNEL_VMA);
    memory::frames::init(
        &info.memmap,
        kernel_start,
        kernel_end,
        [info.init_module, info.input_module],
    );
    if let Err(e) = memory::kmap::init(&info.memmap) {
        panic!("mapping RAM: {e:?}");
    }
    if let Err(e) = memory::heap::init(info.memmap.ram_bytes()) {
        panic!("heap: {e:?}");
    }
    idt::init();
    pic::disable();
    if let Err(e) = lapic::choose_mode() {
        panic!("local APIC: {e:?}");
    }
    if let Err(e) = cpu::init(0) {
        panic!("boot cpu: {e:?}");
    }
    percpu::cpu(0).online.store(true, Ordering::Release);
    cpu::enable_interrupts();
    // Where kernel work is cheap decides where it runs (PLATFORM.md):
    // kvm_pvm emulates ring 0 and runs ring 3 natively.
    let platform = platform::detect();
    let mode = match info.cmdline.kernel_mode {
        Some(word) => KernelMode::parse(word)
            .unwrap_or_else(|| panic!("unknown kernel_mode={word} (ring0 or ring3)")),
        None if platform == Platform::KvmPvm => KernelMode::Ring3,
        None => KernelMode::Ring0,
    };
    if mode == KernelMode::Ring3 {
        kctx::init(memory::kmap::kernel_pml4());
        process::trap::register();
    }
    let cpus = info.cpus() as usize;
    if let Err(e) = smp::start_aps(cpus) {
        panic!("starting {cpus} cpus: {e:?}");
    }
    let (platform, mode) = (platform.name(), mode.name());
    println!(
        "writewatch guest kernel: {} cpus, {} MiB RAM, platform {platform}, kernel mode {mode}, cmdline \"{}\"",
        percpu::online_count(),
        info.memmap.ram_bytes() >> 20,
        info.cmdline.raw
    );
    record!(r#"{{"type":"ready","platform":"{platform}","kernel_mode":"{mode}"}}"#);
    if info.cmdline.mode == Ok(Mode::Workload) {
        // The write workload takes the RAM the MM core would manage.
        workload::run(info);
    }
    // After `ready`: building the MM core costs milliseconds of emulated
    // ring 0 (see `memory::mm`), and only the workload needs it.
    let mm_cfg = memory::mm::Settings {
        mm_check: info.cmdline.mm_check,
        swap_frames: info.cmdline.swap_frames.unwrap_or(memory::mm::SWAP_FRAMES),
        mmap_min_addr: info.cmdline.mmap_min_addr,
        hugetlb_free_vmemmap: info.cmdline.hugetlb_free_vmemmap,
        soft_dirty: info.cmdline.soft_dirty,
    };
    if let Err(e) = memory::mm::init(mm_cfg) {
        panic!("MM core: {e:?}");
    }
    memory::mm::on_woken(process::task::uffd_wake);
    memory::mm::boot_hugepages(info.cmdline.hugepages);
    match info.cmdline.mode {
        Ok(Mode::Run) => modes::run_init(),
        Ok(Mode::Selftest) => modes::selftest(),
        Ok(Mode::Bench) => modes::bench(),
        Ok(Mode::Panic) => panic!("mode=panic requested"),
        Ok(Mode::Fault) => modes::fault(),
        Ok(Mode::Hang) => modes::hang(),
        Ok(Mode::Triple) => modes::triple(),
        Ok(Mode::Workload) => unreachable!("handled before the MM core is built"),
        Err(unknown) => panic!("unknown mode={}", unknown.0),
    }
}
