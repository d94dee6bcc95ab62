//! userfaultfd fault delivery: a fault that a handler must resolve becomes
//! a `uffd_msg` on its context and the faulting task waits; the handler
//! reads the message and resolves the fault, and `UFFDIO_WRITEPROTECT`
//! (unprotecting), `UFFDIO_WAKE`, `UFFDIO_UNREGISTER` of a missing-mode
//! range, or the context's release wakes the task, which then retries its
//! access.
//!
//! Mirrors `fs/userfaultfd.c`: `handle_userfault` (the message and the
//! `fault_pending_wqh` queue, moved to `fault_wqh` once read),
//! `userfaultfd_ctx_read` / `userfaultfd_read_iter` (oldest first, as many
//! whole messages as fit, only the first read may block), and
//! `__wake_userfault` / `userfaultfd_wake_function` (a range wakes the
//! waiters whose page is inside it, read or not).
//!
//! The MM core does not schedule. It records who waits, and hands the
//! kernel the tasks to wake in [`MemSystem::take_woken`]; a woken task
//! retries what blocked it (the access, or the `read`). The fault and the
//! message are made under one MM lock, so `userfaultfd_must_wait`'s
//! recheck is not needed: nothing can resolve the fault in between.

use crate::errno::{Errno, Fault};
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::{Pid, UffdId};
use crate::system::{FileObj, MemSystem};
use crate::userfaultfd::FEATURE_SIGBUS;
use crate::vma::Vma;

/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const PAGEFAULT_FLAG_WRITE: u64 = 1;
/// `UFFD_PAGEFAULT_FLAG_WP`.
pub const PAGEFAULT_FLAG_WP: u64 = 2;
/// `sizeof(struct uffd_msg)`.
pub const MSG_BYTES: u64 = 32;
/// `O_NONBLOCK`.
const O_NONBLOCK: u32 = 0o4000;

/// A fault that waits for a handler: the `pagefault` member of its
/// `uffd_msg`, and the context it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultMsg {
    pub(crate) ctx: UffdId,
    /// The page (`UFFD_FEATURE_EXACT_ADDRESS` is not offered).
    pub address: u64,
    /// `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
}

impl FaultMsg {
    /// The 32 bytes of its `struct uffd_msg`.
    fn encode(&self) -> [u8; MSG_BYTES as usize] {
        let mut m = [0u8; MSG_BYTES as usize];
        m[0] = EVENT_PAGEFAULT;
        m[8..16].copy_from_slice(&self.flags.to_le_bytes());
        m[16..24].copy_from_slice(&self.address.to_le_bytes());
        m
    }
}

/// A task waiting on a fault.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiter {
    pid: Pid,
    msg: FaultMsg,
    /// Its message was read (it moved to `fault_wqh`): not read again.
    read: bool,
}

/// What a context's waiting tasks and readers are.
#[derive(Debug, Clone, Default)]
pub(crate) struct WaitQueues {
    /// Faulting tasks, oldest first.
    faults: alloc::vec::Vec<Waiter>,
    /// Tasks blocked in `read` until a message comes.
    readers: alloc::vec::Vec<Pid>,
}

impl<H: Hw> MemSystem<H> {
    /// `handle_userfault` for a fault at `va` of `v` (registered with a
    /// context): SIGBUS with `UFFD_FEATURE_SIGBUS`, else a fault that
    /// waits for a handler.
    pub(crate) fn handle_userfault(&self, v: &Vma, va: u64, write: bool, wp: bool) -> Fault {
        let Some(ctx) = v.uffd else {
            return Fault::Bus;
        };
        let features = self.uffds.get(&ctx).and_then(|u| u.features).unwrap_or(0);
        if features & FEATURE_SIGBUS != 0 {
            return Fault::Bus;
        }
        let mut flags = 0;
        if write {
            flags |= PAGEFAULT_FLAG_WRITE;
        }
        if wp {
            flags |= PAGEFAULT_FLAG_WP;
        }
        Fault::Userfault(FaultMsg {
            ctx,
            address: va & !(PAGE_SIZE - 1),
            flags,
        })
    }

    /// Task `pid` waits on `msg`: its message is queued and the context's
    /// readers are woken.
    pub(crate) fn uffd_wait_fault(&mut self, pid: Pid, msg: FaultMsg) {
        let Some(u) = self.uffds.get_mut(&msg.ctx) else {
            return;
        };
        u.queues.faults.push(Waiter {
            pid,
            msg,
            read: false,
        });
        self.woken.append(&mut u.queues.readers);
    }

    /// Whether `fd` of `pid` is a userfaultfd.
    pub(crate) fn is_uffd(&self, pid: Pid, fd: u64) -> bool {
        self.open_file(pid, fd)
            .is_ok_and(|f| matches!(self.files[&f].obj, FileObj::Uffd(_)))
    }

    /// `read(fd, buf, count)` of a userfaultfd: the unread messages, oldest
    /// first, as many as fit; `Ok(None)` when there are none and the
    /// descriptor blocks (the caller sleeps and reads again when woken).
    pub(crate) fn uffd_read(
        &mut self,
        pid: Pid,
        fd: u64,
        buf: u64,
        count: u64,
    ) -> Result<Option<u64>, Errno> {
        // Before UFFDIO_API it is EINVAL, as for the ioctls.
        let (ctx, _) = self.uffd_ready(pid, fd)?;
        let nonblock = self.files[&self.open_file(pid, fd)?].flags & O_NONBLOCK != 0;
        if count < MSG_BYTES {
            return Err(Errno::EINVAL);
        }
        let u = &self.uffds[&ctx];
        let fits = (count / MSG_BYTES) as usize;
        let picked: alloc::vec::Vec<usize> = (0..u.queues.faults.len())
            .filter(|&i| !u.queues.faults[i].read)
            .take(fits)
            .collect();
        if picked.is_empty() {
            if nonblock {
                return Err(Errno::EAGAIN);
            }
            let readers = &mut self.uffds.get_mut(&ctx).expect("live").queues.readers;
            if !readers.contains(&pid) {
                readers.push(pid);
            }
            return Ok(None);
        }
        let bytes: alloc::vec::Vec<u8> = picked
            .iter()
            .flat_map(|&i| u.queues.faults[i].msg.encode())
            .collect();
        // Copied before the messages count as read, so a bad buffer loses
        // none (Linux loses the message it dequeued).
        self.copy_to_user(pid, buf, &bytes)?;
        let faults = &mut self.uffds.get_mut(&ctx).expect("live").queues.faults;
        for i in picked {
            faults[i].read = true;
        }
        Ok(Some(bytes.len() as u64))
    }

    /// `__wake_userfault`: wakes the tasks waiting on `ctx` for a page in
    /// `[start, start + len)` (every one when `len` is 0).
    pub(crate) fn uffd_wake(&mut self, ctx: UffdId, start: u64, len: u64) {
        let Some(u) = self.uffds.get_mut(&ctx) else {
            return;
        };
        let woken = &mut self.woken;
        u.queues.faults.retain(|w| {
            let a = w.msg.address;
            let hit = len == 0 || (a >= start && a - start < len);
            if hit {
                woken.push(w.pid);
            }
            !hit
        });
    }

    /// The context is going away: everyone waiting on it is woken.
    pub(crate) fn uffd_wake_all(&mut self, ctx: UffdId) {
        self.uffd_wake(ctx, 0, 0);
        if let Some(u) = self.uffds.get_mut(&ctx) {
            self.woken.append(&mut u.queues.readers);
        }
    }

    /// `pid` is exiting: it waits on nothing any more.
    pub(crate) fn uffd_forget(&mut self, pid: Pid) {
        for u in self.uffds.values_mut() {
            u.queues.faults.retain(|w| w.pid != pid);
            u.queues.readers.retain(|&r| r != pid);
        }
    }

    /// Whether `pid` waits on a fault of some context.
    pub fn uffd_waiting(&self, pid: Pid) -> bool {
        self.uffds
            .values()
            .any(|u| u.queues.faults.iter().any(|w| w.pid == pid))
    }

    /// The tasks woken since the last call: the kernel makes them
    /// runnable, and each retries its access or its `read`.
    pub fn take_woken(&mut self) -> alloc::vec::Vec<Pid> {
        core::mem::take(&mut self.woken)
    }
}
