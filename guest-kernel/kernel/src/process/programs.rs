//! The user programs built into the kernel image (the `guest-user` crate,
//! compiled by `build.rs`).

/// A built-in program.
pub struct Program {
    /// Its name (the `guest-user` binary name).
    pub name: &'static str,
    /// The ELF image.
    pub image: &'static [u8],
}

macro_rules! program {
    ($name:literal) => {
        Program {
            name: $name,
            image: include_bytes!(concat!(env!("OUT_DIR"), "/user/", $name)),
        }
    };
}

/// Prints "hello from ring 3" and exits 0 (what `mode=run` runs).
pub static INIT: Program = program!("init");
/// Exits with status 42.
pub static EXIT42: Program = program!("exit42");
/// Exits with its own pid.
pub static GETPID: Program = program!("getpid");
/// Touches memory it may not (argument selects how) and gets killed.
pub static BADACCESS: Program = program!("badaccess");
/// Swaps its argument into a global and exits with the old value.
pub static MEMSLOT: Program = program!("memslot");
/// Checks the error returns of the user/kernel call ABI.
pub static SYSABI: Program = program!("sysabi");
/// Copy-on-write after fork with children on several CPUs.
pub static COWFORK: Program = program!("cowfork");
/// Checks of the MM calls (argument: the group).
pub static MMTEST: Program = program!("mmtest");
/// The MM benchmarks of `mode=bench`.
pub static MMBENCH: Program = program!("mmbench");
/// The write-tracking benchmarks (vmm/benches/tracking.rs).
pub static TRACKBENCH: Program = program!("trackbench");
/// Checks the host write watch's view of a process (tests/write_watch_va.rs).
pub static WWPROBE: Program = program!("wwprobe");

/// Runs the conformance edge cases (`resources/conformance/cases.txt`)
/// and prints their transcripts (tests/guest_conformance.rs).
pub static CONFORM: Program = program!("conform");

/// The programs `mode=run program=NAME` may name.
static ALL: [&Program; 13] = [
    &INIT,
    &EXIT42,
    &GETPID,
    &BADACCESS,
    &MEMSLOT,
    &SYSABI,
    &COWFORK,
    &MMTEST,
    &MMBENCH,
    &WWPROBE,
    &FORKWORK,
    &CONFORM,
    &TRACKBENCH,
];

/// Copy-on-write churn for write-watch experiments (`--workload fork`).
pub static FORKWORK: Program = program!("forkwork");

/// The built-in program called `name`.
pub fn by_name(name: &str) -> Option<&'static Program> {
    ALL.iter().copied().find(|p| p.name == name)
}
