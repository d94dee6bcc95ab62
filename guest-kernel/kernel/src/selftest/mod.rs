//! In-kernel self-tests (`mode=selftest`): each test prints a TAP line and
//! sends a matching record (docs/GUEST_ABI.md); the VM exits 0 only when all
//! pass.

mod basic;
pub mod bench;
mod kctx;
mod mm;
mod smp;
mod timer;
mod traps;
mod user;

use crate::records::JsonStr;
use alloc::string::String;

/// Why a test failed (printed as a TAP diagnostic).
pub struct Failure(pub String);

/// A test result.
pub type TestResult = Result<(), Failure>;

/// Fails the test with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err($crate::selftest::Failure(alloc::format!($($msg)*)));
        }
    };
}
pub(crate) use ensure;

/// One self-test.
struct Test {
    name: &'static str,
    run: fn() -> TestResult,
}

/// Every self-test, in run order.
const TESTS: &[Test] = &[
    Test {
        name: "heap: alloc, grow, free",
        run: basic::heap,
    },
    Test {
        name: "memmap: sane PVH memory map",
        run: basic::memmap,
    },
    Test {
        name: "cmdline: parse words and flags",
        run: basic::cmdline,
    },
    Test {
        name: "acpi: CPUs from the MADT",
        run: basic::acpi,
    },
    Test {
        name: "frames: allocate, free, reuse",
        run: basic::frames,
    },
    Test {
        name: "traps: kernel #UD handled and resumed",
        run: traps::kernel_invalid_opcode,
    },
    Test {
        name: "traps: kernel #PF on unmapped address caught by fixup",
        run: traps::kernel_page_fault,
    },
    Test {
        name: "timer: LAPIC timer ticks arrive",
        run: timer::ticks_arrive,
    },
    Test {
        name: "smp: every cpu online",
        run: smp::all_online,
    },
    Test {
        name: "smp: every AP runs work sent by IPI",
        run: smp::call_every_ap,
    },
    Test {
        name: "smp: TLB shootdown reaches every cpu",
        run: smp::tlb_shootdown,
    },
    Test {
        name: "smp: timer ticks on every AP",
        run: smp::ap_timers,
    },
    Test {
        name: "kctx: a call runs in ring 3 (ring-3 mode) and keeps CR3",
        run: kctx::call_runs_in_ring3,
    },
    Test {
        name: "kctx: ticks and shootdown IPIs reach CPUs in the context",
        run: kctx::interrupts_reach_the_context,
    },
    Test {
        name: "user: init writes to console and exits 0",
        run: user::init_hello,
    },
    Test {
        name: "user: exit status 42 reaches kernel",
        run: user::exit_status,
    },
    Test {
        name: "user: getpid returns pid",
        run: user::getpid,
    },
    Test {
        name: "user: call ABI errors (EBADF, EFAULT, ENOSYS)",
        run: user::call_errors,
    },
    Test {
        name: "user: null write killed with SIGSEGV, kernel lives",
        run: user::null_write_killed,
    },
    Test {
        name: "user: kernel-memory read killed with SIGSEGV",
        run: user::kernel_read_killed,
    },
    Test {
        name: "user: writes to the kernel context's stack and PML4 killed",
        run: kctx::user_cannot_reach_the_context,
    },
    Test {
        name: "user: a forged context request (int3, jump into kernel code) is killed",
        run: kctx::user_cannot_forge_a_return,
    },
    Test {
        name: "user: ud2 killed with SIGILL",
        run: user::ud2_killed,
    },
    Test {
        name: "user: a syscall returning to TASK_SIZE is killed with SIGSEGV there",
        run: user::return_to_task_size_killed,
    },
    Test {
        name: "user: two processes have separate address spaces",
        run: user::separate_spaces,
    },
    Test {
        name: "user: process runs on an AP",
        run: smp::user_on_ap,
    },
    Test {
        name: "user: frames returned after exit",
        run: user::no_frame_leak,
    },
    Test {
        name: "mm: COW after fork, parent and children on every cpu",
        run: mm::cow_after_fork,
    },
    Test {
        name: "mm: MAP_FIXED_NOREPLACE fails with EEXIST on overlap",
        run: mm::fixed_noreplace,
    },
    Test {
        name: "mm: zero page on read, own page on write",
        run: mm::zero_page,
    },
    Test {
        name: "mm: swap round trip (MADV_PAGEOUT, read back, stats)",
        run: mm::swap_round_trip,
    },
    Test {
        name: "mm: unshare of a COW page by a read pin",
        run: mm::unshare,
    },
    Test {
        name: "mm: mprotect, munmap, mremap, madvise results and errors",
        run: mm::call_basics,
    },
    Test {
        name: "mm: invariant checker passes after the MM tests",
        run: mm::invariants,
    },
];

/// Runs all tests; true when all passed.
pub fn run_all() -> bool {
    crate::println!("1..{}", TESTS.len());
    crate::record!(r#"{{"type":"plan","count":{}}}"#, TESTS.len());
    let mut failed = 0;
    for (i, test) in TESTS.iter().enumerate() {
        let n = i + 1;
        let result = (test.run)();
        let ok = result.is_ok();
        match result {
            Ok(()) => crate::println!("ok {n} - {}", test.name),
            Err(Failure(why)) => {
                failed += 1;
                crate::println!("not ok {n} - {}\n# {why}", test.name);
            }
        }
        crate::record!(
            r#"{{"type":"test","n":{n},"name":{},"ok":{ok}}}"#,
            JsonStr(test.name)
        );
    }
    crate::println!("# {} passed, {failed} failed", TESTS.len() - failed);
    failed == 0
}
