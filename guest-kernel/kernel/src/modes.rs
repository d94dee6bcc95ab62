//! What the kernel does after boot, per `mode=` (docs/GUEST_ABI.md).

use crate::arch::x86_64::{cpu, idt};
use crate::exit::{ExitCode, exit, exit_raw};
use crate::process::programs::{self, Program};
use crate::process::{Exit, Process};

/// `mode=run`: runs the init module (`writewatch run --init FILE`), else
/// `init` (or `program=NAME`), with `arg=N`, and exits with its status.
pub fn run_init() -> ! {
    let info = crate::boot::info();
    let cmdline = &info.cmdline;
    let module;
    let program = match (info.init_module, cmdline.program) {
        (Some(m), _) => {
            module = Program {
                name: "init",
                image: crate::boot::start_info::module_bytes(m),
            };
            &module
        }
        (None, None) => &programs::INIT,
        (None, Some(name)) => {
            programs::by_name(name).unwrap_or_else(|| panic!("no program={name}"))
        }
    };
    let mut init = match Process::spawn(program) {
        Ok(p) => p,
        Err(e) => {
            crate::println!("init: cannot load the program: {e:?}");
            exit_raw(127)
        }
    };
    let status = match init.run(cmdline.arg) {
        Exit::Exited(status) => status,
        // The kernel already reported the kill on the console.
        killed => killed.status(),
    };
    exit_raw(status as u8)
}

/// `mode=selftest`: exit 0 when every self-test passes, 1 otherwise.
pub fn selftest() -> ! {
    if crate::selftest::run_all() {
        exit(ExitCode::Success)
    } else {
        exit(ExitCode::TestsFailed)
    }
}

/// `mode=bench`: the MM benchmarks (`selftest::bench`), exit 0 when all
/// ran.
pub fn bench() -> ! {
    if crate::selftest::bench::run_all() {
        exit(ExitCode::Success)
    } else {
        exit(ExitCode::TestsFailed)
    }
}

/// `mode=fault`: an unexpected kernel page fault (reported, exit 4).
pub fn fault() -> ! {
    /// Not mapped by anything (below the direct map, above user space).
    const UNMAPPED: u64 = 0xffff_8000_dead_0000;
    // SAFETY: deliberately faults; the #PF handler ends the VM.
    unsafe { core::ptr::write_volatile(UNMAPPED as *mut u64, 0xbad) };
    panic!("write to unmapped {UNMAPPED:#x} did not fault");
}

/// `mode=hang`: spins with interrupts off until the VMM's timeout.
pub fn hang() -> ! {
    cpu::disable_interrupts();
    loop {
        core::hint::spin_loop();
    }
}

/// `mode=triple`: an exception with an empty IDT escalates to a triple fault.
pub fn triple() -> ! {
    cpu::disable_interrupts();
    idt::load_empty();
    // SAFETY: deliberately raises #UD with no IDT: the CPU shuts down.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    panic!("ud2 with an empty IDT did not triple-fault");
}
