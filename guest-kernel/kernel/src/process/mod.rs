//! Ring-3 user processes over the `guest-mm` core: loading a built-in
//! program into a new address space, running it, and the traps it takes.
//!
//! A [`Process`] is the kernel's handle on a spawned program (the MM core
//! holds its address space). [`Process::run`] enters user mode on the
//! current CPU and returns when the program exits or is killed; memory
//! persists between runs until the handle is dropped. Children it forks are
//! ordinary tasks: `exit` tears their address space down and the parent
//! reaps them with `wait4` (`sched` runs them, possibly on other CPUs). The
//! system call is `syscall` with Linux's convention (docs/GUEST_ABI.md); on
//! kvm_pvm it reaches the kernel as the page fault of its fetch at LSTAR.

pub mod elf;
pub mod programs;
pub mod report;
pub mod sched;
pub mod signal;
mod start_stack;
mod stdin;
pub mod syscall;
pub mod task;
pub mod trap;

use crate::arch::x86_64::gdt::{USER_CS, USER_DS};
use crate::arch::x86_64::kctx;
use crate::arch::x86_64::trap_entry::{self, TrapFrame};
use crate::memory::{kmap, mm};
use crate::percpu;
use alloc::vec::Vec;
use elf::ElfError;
use guest_mm::Errno;
use guest_mm::mmap::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use guest_mm::{Pid, ProcState};
use programs::Program;
use task::{TASKS, Task, TaskState};

/// Top of the user stack (exclusive).
const USER_STACK_TOP: u64 = 0x0000_7fff_ffff_0000;
/// Bytes of user stack, Linux's default `RLIMIT_STACK` (demand-faulted:
/// unused pages cost nothing).
const USER_STACK_BYTES: u64 = 8 << 20;
/// RFLAGS for user mode: IF set (and the always-one bit 1).
const USER_RFLAGS: u64 = 0x202;

/// Signals a program can be killed with (Linux numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Signal {
    /// Illegal instruction (#UD).
    Sigill = 4,
    /// Breakpoint (`int3`).
    Sigtrap = 5,
    /// `abort()` (a program's `kill` of itself).
    Sigabrt = 6,
    /// Bus error (a lost page, e.g. a swap-in error).
    Sigbus = 7,
    /// Arithmetic error (#DE).
    Sigfpe = 8,
    /// Killed (out of memory while resolving a fault).
    Sigkill = 9,
    /// Bad memory access (#PF, #GP and everything else).
    Sigsegv = 11,
    /// Termination request (a program's `kill` of itself).
    Sigterm = 15,
}

impl Signal {
    /// The signal with Linux number `n` (SIGSEGV for unknown numbers).
    pub fn from_number(n: i32) -> Self {
        match n {
            4 => Signal::Sigill,
            5 => Signal::Sigtrap,
            6 => Signal::Sigabrt,
            7 => Signal::Sigbus,
            8 => Signal::Sigfpe,
            9 => Signal::Sigkill,
            15 => Signal::Sigterm,
            _ => Signal::Sigsegv,
        }
    }
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
    /// The MM core refused (no memory for the address space or stack).
    Mm(Errno),
}

/// A spawned user program (owns its MM-core process until dropped).
pub struct Process {
    pid: Pid,
    image: elf::Loaded,
}

impl Process {
    /// Loads `program` into a new address space.
    pub fn spawn(program: &Program) -> Result<Self, SpawnError> {
        let pid = mm::with(|s| s.spawn(0)).map_err(SpawnError::Mm)?;
        // From here on, dropping `p` releases the MM-core process.
        let mut p = Process {
            pid,
            image: elf::Loaded {
                entry: 0,
                phdr: 0,
                phnum: 0,
                end: 0,
            },
        };
        TASKS.lock().insert(
            pid,
            Task {
                name: program.name,
                frame: TrapFrame::default(),
                state: TaskState::Stopped(None),
                cpu: percpu::index(),
                owned: true,
                parent: 0,
                child_exits: 0,
                output: Vec::new(),
                brk: (0, 0),
                fs_base: 0,
                signals: signal::SignalState::default(),
                uffd_woken: false,
            },
        );
        p.image = elf::load(pid, program.image).map_err(SpawnError::Elf)?;
        if let Some(t) = TASKS.lock().get_mut(&pid) {
            t.brk = (p.image.end, p.image.end);
        }
        mm::with(|s| {
            s.mmap(
                pid,
                USER_STACK_TOP - USER_STACK_BYTES,
                USER_STACK_BYTES,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                0,
            )
        })
        .map_err(SpawnError::Mm)?;
        report::created(pid, program.name);
        Ok(p)
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Everything the program wrote to stdout/stderr so far.
    pub fn output(&self) -> Vec<u8> {
        TASKS
            .lock()
            .get(&self.pid)
            .map(|t| t.output.clone())
            .unwrap_or_default()
    }

    /// Physical address of its PML4 (for tests that compare address spaces).
    pub fn root(&self) -> Option<u64> {
        mm::with(|s| s.activate(self.pid, percpu::index() as u32))
            .ok()
            .map(|r| r.addr())
    }

    /// Runs the program from its entry point with `arg` in `rdi` and a fresh
    /// stack that starts as Linux's does (`argc`, `argv`, `envp`, the
    /// auxiliary vector), on this CPU, until it exits or is killed (running
    /// any of its children that `sched` placed on this CPU meanwhile).
    /// Memory persists between runs.
    pub fn run(&mut self, arg: u64) -> Exit {
        let me = percpu::index();
        let name = TASKS.lock().get(&self.pid).map_or("?", |t| t.name);
        let Ok(rsp) = start_stack::write(self.pid, name, &self.image) else {
            return Exit::Exited(-1);
        };
        {
            let mut tasks = TASKS.lock();
            let Some(t) = tasks.get_mut(&self.pid) else {
                return Exit::Exited(-1);
            };
            t.frame = TrapFrame {
                rip: self.image.entry,
                cs: u64::from(USER_CS),
                rflags: USER_RFLAGS,
                rsp,
                ss: u64::from(USER_DS),
                rdi: arg,
                ..TrapFrame::default()
            };
            t.cpu = me;
            sched::make_runnable(t);
        }
        let pid = self.pid;
        sched::run_until(&|tasks| {
            tasks
                .get(&pid)
                .is_none_or(|t| matches!(t.state, TaskState::Stopped(_)))
        });
        match TASKS.lock().get(&pid).map(|t| t.state) {
            Some(TaskState::Stopped(Some(exit))) => exit,
            _ => Exit::Exited(-1),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        TASKS.lock().remove(&self.pid);
        mm::with(|s| {
            if s.proc_state(self.pid) == Some(ProcState::Running) {
                // Never the current CR3: `run` switched back already.
                let _ = s.exit(self.pid, 0);
            }
            let _ = s.wait(0, i64::from(self.pid));
        });
        report::exited(self.pid);
    }
}

/// Ends the current task's run on this CPU: saves `frame` and `state` in
/// the task table (or removes the task when `state` is `None`) and returns
/// to the scheduler. Called from trap context with no lock held.
pub fn stop(frame: &TrapFrame, state: Option<TaskState>) -> ! {
    let pid = task::current_pid();
    {
        let mut tasks = TASKS.lock();
        match state {
            Some(state) => {
                if let Some(t) = tasks.get_mut(&pid) {
                    t.frame = *frame;
                    t.state = state;
                }
            }
            None => {
                if let Some(t) = tasks.remove(&pid) {
                    task::child_exited(&mut tasks, t.parent);
                }
            }
        }
    }
    leave()
}

/// Abandons the current trap and returns to the scheduler (the task's
/// state must already be saved). No lock may be held.
fn leave() -> ! {
    // From the ring-3 kernel context, via ring 0 (where the saved stack is).
    kctx::escape(|| {
        // SAFETY: we are in a trap taken from this task's user mode on this
        // CPU, so the saved stack pointer is that of the pending
        // `enter_user` in `sched::run_one`; no locks are held here.
        unsafe { trap_entry::leave_user(*percpu::current().user_return_rsp.get(), 0) }
    })
}

/// Switches this CPU to the kernel page table (before the current task's
/// page tables are freed).
pub fn leave_address_space() {
    // SAFETY: the kernel PML4 maps the kernel half like every address space.
    unsafe { crate::arch::x86_64::paging::write_cr3(kmap::kernel_pml4()) };
}
