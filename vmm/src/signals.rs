//! SIGINT and SIGTERM end a run cleanly: the VM is stopped as by any other
//! stop reason (vCPUs kicked out, tracking stopped, report and records
//! written, the API socket removed) and the process exits 128 + the signal.
//!
//! The signals are blocked in every thread from the start (threads inherit
//! the mask) and taken by one thread with `sigwait`, so no signal handler
//! runs in a random thread in the middle of a write. A second signal while
//! the first is being handled ends the process at once.

use std::thread;

use crate::runner::{StopReason, VmHandle};

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a plain C set that
    // lives on our stack; the signal numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread, and so in every thread
/// it starts later. Call before starting any thread.
pub fn block_termination_signals() {
    let set = signal_set();
    // SAFETY: pthread_sigmask with a valid set and no old-set pointer only
    // changes this thread's signal mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Takes a SIGINT or SIGTERM that arrived (blocked) since the last look,
/// without waiting: how a phase without a VM yet (waiting for a migration)
/// notices it should end.
pub fn take_pending() -> Option<i32> {
    let set = signal_set();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` is a valid, initialised signal set, `zero` a valid
    // timeout, and a null siginfo pointer is allowed; the signals are
    // blocked, so this only dequeues one if pending.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
    (sig > 0).then_some(sig)
}

/// Starts the thread that turns SIGINT/SIGTERM into a stop of `vm`.
pub fn forward_to(vm: VmHandle) {
    let _ = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = signal_set();
            let mut first = true;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid, initialised signal set and `sig`
                // a valid out-pointer; sigwait only writes `sig`.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if first {
                    first = false;
                    vm.stop(StopReason::Signal(sig));
                } else {
                    std::process::exit(128 + sig);
                }
            }
        });
}

/// The process exit code for a run ended by `sig`.
pub fn exit_code(sig: i32) -> u8 {
    (128 + sig).clamp(0, 255) as u8
}
