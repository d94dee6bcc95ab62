//! Ring-3 user processes: load a built-in program into its own address space,
//! run it on the current CPU until it exits or is killed.
//!
//! There is no scheduler: [`Process::run`] enters user mode and returns when
//! the program calls `exit` or takes a fatal exception. The user/kernel call
//! is `int3` (docs/GUEST_ABI.md), because `syscall` and `int N` do not reach
//! the kernel on kvm_pvm while exceptions do on every KVM.

pub mod addr_space;
pub mod elf;
pub mod errno;
pub mod programs;
pub mod syscall;

use crate::arch::x86_64::gdt::{USER_CS, USER_DS};
use crate::arch::x86_64::paging::{self, PAGE_SIZE};
use crate::arch::x86_64::trap_entry::{self, TrapFrame};
use crate::arch::x86_64::{cpu, traps};
use crate::memory::kmap;
use crate::percpu;
use crate::records::JsonStr;
use addr_space::{AddressSpace, MapError};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use elf::ElfError;
use programs::Program;

/// Top of the user stack (exclusive).
const USER_STACK_TOP: u64 = 0x0000_7fff_ffff_0000;
/// Pages of user stack (mapped and zeroed at spawn: keep it small, every
/// zeroed page costs real time on kvm_pvm).
const USER_STACK_PAGES: u64 = 4;
/// RFLAGS for user mode: IF set (and the always-one bit 1).
const USER_RFLAGS: u64 = 0x202;

static NEXT_PID: AtomicU32 = AtomicU32::new(1);

/// Signals a program can be killed with (Linux numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Signal {
    /// Illegal instruction (#UD).
    Sigill = 4,
    /// Arithmetic error (#DE).
    Sigfpe = 8,
    /// Bad memory access (#PF, #GP and everything else).
    Sigsegv = 11,
}

/// How a run of a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It called `exit(status)`.
    Exited(i32),
    /// It took an exception and was killed.
    Killed {
        /// The signal.
        signal: Signal,
        /// The exception vector.
        vector: u64,
        /// Where.
        rip: u64,
        /// The faulting address (CR2) for page faults, else 0.
        addr: u64,
    },
}

impl Exit {
    /// Shell-style status: the exit status, or 128 + signal.
    pub fn status(self) -> i32 {
        match self {
            Exit::Exited(status) => status,
            Exit::Killed { signal, .. } => 128 + signal as i32,
        }
    }
}

/// Why a process could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// The image is bad.
    Elf(ElfError),
    /// Mapping the stack failed.
    Map(MapError),
}

/// A user process.
pub struct Process {
    pid: u32,
    name: &'static str,
    space: AddressSpace,
    entry: u64,
    /// Bytes the program wrote to fds 1 and 2.
    output: Vec<u8>,
    /// How the last run ended (set by the trap handler before leaving).
    exit: Option<Exit>,
}

impl Process {
    /// Loads `program` into a new address space.
    pub fn spawn(program: &Program) -> Result<Self, SpawnError> {
        let mut space = AddressSpace::new().map_err(SpawnError::Map)?;
        let entry = elf::load(&mut space, program.image).map_err(SpawnError::Elf)?;
        for page in 1..=USER_STACK_PAGES {
            space
                .map_or_get(USER_STACK_TOP - page * PAGE_SIZE, true)
                .map_err(SpawnError::Map)?;
        }
        let pid = NEXT_PID.fetch_add(1, Ordering::Relaxed);
        Ok(Process {
            pid,
            name: program.name,
            space,
            entry,
            output: Vec::new(),
            exit: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the program wrote to stdout/stderr so far.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// The address space (for tests that inspect it).
    pub fn space(&self) -> &AddressSpace {
        &self.space
    }

    /// Runs the program from its entry point with `arg` in `rdi` and a fresh
    /// stack, on this CPU, until it exits or is killed. Memory persists
    /// between runs.
    pub fn run(&mut self, arg: u64) -> Exit {
        let frame = TrapFrame {
            rip: self.entry,
            cs: u64::from(USER_CS),
            rflags: USER_RFLAGS,
            rsp: USER_STACK_TOP - 8,
            ss: u64::from(USER_DS),
            rdi: arg,
            ..TrapFrame::default()
        };
        let cpu = percpu::current();
        let interrupts = cpu::interrupts_enabled();
        self.exit = None;
        cpu.current.store(self, Ordering::Relaxed);
        // SAFETY: the address space copies the kernel half of the kernel
        // page table, so the kernel keeps running after the switch. The
        // saved-rsp slot and TSS.rsp0 belong to this CPU; `enter_user`
        // returns only through `leave_user` from `finish` below.
        unsafe {
            paging::write_cr3(self.space.root());
            let rsp0 = core::ptr::addr_of_mut!((*cpu.tss.get()).rsp).cast::<u64>();
            trap_entry::enter_user(&frame, cpu.user_return_rsp.get(), rsp0);
            paging::write_cr3(kmap::kernel_pml4());
        }
        cpu.current.store(core::ptr::null_mut(), Ordering::Relaxed);
        if interrupts {
            cpu::enable_interrupts();
        }
        self.exit.unwrap_or(Exit::Exited(-1))
    }

    /// Ends the current run with `exit` (called from trap context).
    fn finish(&mut self, exit: Exit) -> ! {
        self.exit = Some(exit);
        // SAFETY: we are in a trap taken from this process's user mode on this
        // CPU, so the saved stack pointer is that of the pending `enter_user`;
        // no locks are held here.
        unsafe { trap_entry::leave_user(*percpu::current().user_return_rsp.get(), 0) }
    }
}

/// Handles a trap from ring 3: `int3` is a user/kernel call; any other
/// exception kills the program.
pub fn user_trap(frame: &mut TrapFrame) {
    let cpu = percpu::current();
    // SAFETY: a trap from ring 3 only happens while `Process::run` on this
    // CPU has set `current` to its (exclusively borrowed) process.
    let process = unsafe { &mut *cpu.current.load(Ordering::Relaxed) };
    if frame.vector == traps::VEC_BREAKPOINT {
        if let Some(status) = syscall::dispatch(process, frame) {
            process.finish(Exit::Exited(status));
        }
        return;
    }
    let signal = match frame.vector {
        0 => Signal::Sigfpe,
        6 => Signal::Sigill,
        _ => Signal::Sigsegv,
    };
    let addr = if frame.vector == traps::VEC_PAGE_FAULT {
        traps::read_cr2()
    } else {
        0
    };
    crate::println!(
        "[pid {} {}] killed by signal {} ({:?}): {} at rip {:#x}, address {:#x}, error {:#x}",
        process.pid,
        process.name,
        signal as u8,
        signal,
        traps::vector_name(frame.vector),
        frame.rip,
        addr,
        frame.error_code
    );
    crate::record!(
        r#"{{"type":"user_fault","pid":{},"program":{},"signal":{},"vector":{},"rip":{},"addr":{},"error":{}}}"#,
        process.pid,
        JsonStr(process.name),
        signal as u8,
        frame.vector,
        frame.rip,
        addr,
        frame.error_code
    );
    process.finish(Exit::Killed {
        signal,
        vector: frame.vector,
        rip: frame.rip,
        addr,
    });
}
