//! guest-mm's side: the MM core on the simulated machine, driven through
//! its syscall dispatcher like the kernel drives it.

use guest_mm::mmap::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use guest_mm::testing::user::{sim_system, user_try, user_try_wait};
use guest_mm::testing::{Access as Kind, SimMachine};
use guest_mm::{Config, FaultStop, MemSystem, Outcome, PageView, PhysMem, Pid, SIGBUS, SIGSEGV};

use guest_mm::pagemap::PmScanArg;

use crate::backend::{Backend, MapLine, ScanOut, UFFD_READ_BLOCKED, digest};
use crate::script::{Access, FileName, ScanArgs, UffdCall};

/// Where the simulated process keeps the names it gives `memfd_create`,
/// `open` and `unlink`.
const NAME: u64 = 0x2000_0000_0000;

pub struct Sim {
    pub sys: MemSystem<SimMachine>,
    pids: Vec<Pid>,
    parents: Vec<usize>,
    /// Each process's background write: its address and byte, and its
    /// result once it has one (`None`: it waits for a handler).
    bg: Vec<Option<(u64, u8, Option<Access>)>>,
}

impl Sim {
    /// A 64 MiB machine (room for a small hugetlb pool) whose `mmap_min_addr` is the host's, checked after
    /// every call.
    pub fn new(mmap_min_addr: u64) -> Self {
        // The invariant checker runs after every call (LINUX_DIFF_NO_CHECK
        // turns it off, to see a transcript past a broken invariant): a
        // divergence from Linux is one failure, a broken invariant on the
        // way is another.
        let cfg = Config {
            mmap_min_addr,
            check_every_op: std::env::var_os("LINUX_DIFF_NO_CHECK").is_none(),
            // HVO changes nothing a process sees, so it is on here: every
            // case then also proves that no path writes the metadata of a
            // pooled huge page.
            hugetlb_vmemmap_optimize: true,
            ..Config::default()
        };
        let mut sys = sim_system(64, 1, cfg);
        let pid = sys.spawn(0).expect("first process");
        // A page for memfd names, where no transcript looks.
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
        sys.mmap(pid, NAME, 4096, PROT_READ | PROT_WRITE, flags, 0)
            .expect("name page");
        guest_mm::testing::user::user_write(&mut sys, pid, 0, NAME, b"t\0").expect("name");
        Sim {
            sys,
            pids: vec![pid],
            parents: vec![0],
            bg: vec![None],
        }
    }
}

impl Backend for Sim {
    fn huge_counters(&mut self) -> [u64; 4] {
        let c = self.sys.hugetlb_counters(guest_mm::hugetlb::HSTATE_2M);
        [c.total, c.free, c.rsvd, c.surp]
    }

    fn syscall(&mut self, proc: usize, nr: u64, mut args: [u64; 6]) -> i64 {
        if nr == crate::script::SYS_MEMFD_CREATE {
            args[0] = NAME;
        }
        let out = self.sys.syscall(self.pids[proc], nr, args, &mut |_| {});
        self.settle();
        match out {
            Outcome::Return(v) => v,
            other => panic!("syscall {nr} gave {other:?}"),
        }
    }

    fn path_call(&mut self, proc: usize, nr: u64, mut args: [u64; 6], name: &FileName) -> i64 {
        let mut buf = [0u8; 32];
        let path = name.path_in(&mut buf);
        guest_mm::testing::user::user_write(&mut self.sys, self.pids[proc], 0, NAME, path)
            .expect("path");
        args[0] = NAME;
        self.syscall(proc, nr, args)
    }

    fn access(&mut self, proc: usize, va: u64, write: Option<u8>) -> Access {
        let kind = if write.is_some() {
            Kind::Write
        } else {
            Kind::Read
        };
        match user_try(&mut self.sys, self.pids[proc], 0, va, kind) {
            Ok(pa) => {
                let mut b = [write.unwrap_or(0)];
                if write.is_some() {
                    self.sys.hw.write_bytes(pa, &b);
                } else {
                    self.sys.hw.read_bytes(pa, &mut b);
                }
                Access::Done(b[0])
            }
            Err(r) => signalled(r),
        }
    }

    fn fork(&mut self, proc: usize, child: usize) -> Result<(), i64> {
        assert_eq!(child, self.pids.len());
        let c = self.sys.fork(self.pids[proc]).map_err(|e| e.to_ret())?;
        self.pids.push(c);
        self.parents.push(proc);
        self.bg.push(None);
        Ok(())
    }

    fn write_bg(&mut self, proc: usize, va: u64, val: u8) {
        let done = self.try_write(proc, va, val);
        self.bg[proc] = Some((va, val, done));
    }

    fn join(&mut self, proc: usize) -> Option<Access> {
        // Still waiting if it has no result: no step woke it, and nothing
        // else ever will.
        self.bg[proc].take().expect("a background write").2
    }

    fn uffd_read(&mut self, proc: usize, fd: u64) -> (i64, [u64; 3]) {
        let (pid, buf) = (self.pids[proc], NAME + 256);
        let out = self.sys.syscall(
            pid,
            crate::script::SYS_READ,
            [fd, buf, 32, 0, 0, 0],
            &mut |_| {},
        );
        self.settle();
        let r = match out {
            Outcome::Return(r) => r,
            // Nothing else runs while it would wait.
            Outcome::WaitUffd => return (UFFD_READ_BLOCKED, [0; 3]),
            other => panic!("uffd read gave {other:?}"),
        };
        let mut m = [0u8; 32];
        if r == 32 {
            self.sys.copy_from_user(pid, buf, &mut m).expect("message");
        }
        let word = |o: usize| u64::from_le_bytes(m[o..o + 8].try_into().expect("8 bytes"));
        (r, [u64::from(m[0]), word(8), word(16)])
    }

    fn exit(&mut self, proc: usize) {
        let pid = self.pids[proc];
        self.sys.exit(pid, 0).expect("exit");
        let parent = self.pids[self.parents[proc]];
        self.sys.wait(parent, i64::from(pid)).expect("reap");
    }

    fn maps(&mut self, proc: usize) -> Vec<MapLine> {
        let maps = self.sys.maps(self.pids[proc]).expect("maps");
        maps.into_iter()
            .map(|e| MapLine {
                start: e.start,
                end: e.end,
                perms: e.perms(),
                offset: e.offset,
            })
            .collect()
    }

    fn pages(&mut self, proc: usize, start: u64, end: u64) -> Vec<(u64, String)> {
        let pages = self
            .sys
            .peek_range(self.pids[proc], start, end)
            .expect("peek");
        pages
            .into_iter()
            .map(|(va, v)| {
                let d = match v {
                    PageView::Present(page) => digest(&page[..]),
                    // Linux's pagemap reports a marker as a swap entry.
                    PageView::Swapped | PageView::Marker => "swap".into(),
                    PageView::NotPresent => unreachable!(),
                };
                (va, d)
            })
            .collect()
    }

    fn uffd(&mut self, proc: usize, fd: u64, call: UffdCall) -> (i64, u64, u64) {
        let pid = self.pids[proc];
        let r = match call {
            UffdCall::Api { features } => {
                self.sys
                    .uffdio_api(pid, fd, guest_mm::userfaultfd::UFFD_API, features)
            }
            UffdCall::Register { start, len, mode } => self
                .sys
                .uffdio_register(pid, fd, start, len, mode)
                .map(|io| (io, 0)),
            UffdCall::Unregister { start, len } => self
                .sys
                .uffdio_unregister(pid, fd, start, len)
                .map(|()| (0, 0)),
            UffdCall::Writeprotect { start, len, mode } => self
                .sys
                .uffdio_writeprotect(pid, fd, start, len, mode)
                .map(|()| (0, 0)),
            UffdCall::Wake { start, len } => {
                self.sys.uffdio_wake(pid, fd, start, len).map(|()| (0, 0))
            }
        };
        self.settle();
        self.checked();
        match r {
            Ok((a, b)) => (0, a, b),
            Err(e) => (e.to_ret(), 0, 0),
        }
    }

    fn clear_refs(&mut self, proc: usize, ty: u64) -> i64 {
        use guest_mm::testing::user::user_write;
        let (pid, path, text) = (self.pids[proc], NAME + 128, NAME + 192);
        user_write(&mut self.sys, pid, 0, path, b"/proc/self/clear_refs\0").expect("path");
        let line = format!("{ty}\n");
        user_write(&mut self.sys, pid, 0, text, line.as_bytes()).expect("text");
        let fd = self.syscall(proc, crate::script::SYS_OPEN, [path, 1, 0, 0, 0, 0]);
        if fd < 0 {
            return fd;
        }
        let len = line.len() as u64;
        let r = self.syscall(
            proc,
            crate::script::SYS_WRITE,
            [fd as u64, text, len, 0, 0, 0],
        );
        self.syscall(proc, crate::script::SYS_CLOSE, [fd as u64, 0, 0, 0, 0, 0]);
        r
    }

    fn pagemap(&mut self, proc: usize, va: u64, n: u64) -> Vec<u64> {
        self.sys.pagemap(self.pids[proc], va, n).expect("pagemap")
    }

    fn pagemap_scan(&mut self, proc: usize, start: u64, len: u64, scan: ScanArgs) -> ScanOut {
        let arg = PmScanArg {
            size: guest_mm::pagemap::PM_SCAN_ARG_SIZE,
            flags: scan.flags,
            start,
            end: start.wrapping_add(len),
            walk_end: 0,
            // Any user address: the regions come back as a value here.
            vec: if scan.vec_len == 0 { 0 } else { NAME },
            vec_len: scan.vec_len,
            max_pages: scan.max_pages,
            category_inverted: scan.inverted,
            category_mask: scan.mask,
            category_anyof_mask: scan.anyof,
            return_mask: scan.ret,
        };
        let r = self.sys.pagemap_scan(self.pids[proc], arg);
        self.checked();
        match r {
            Ok(s) => {
                let regions: Vec<[u64; 3]> = s
                    .regions
                    .iter()
                    .map(|r| [r.start, r.end, r.categories])
                    .collect();
                let ret = s.error.map_or(regions.len() as i64, |e| e.to_ret());
                (ret, regions, s.walk_end)
            }
            Err(e) => (e.to_ret(), Vec::new(), 0),
        }
    }
}

/// The access a handler of SIGBUS and SIGSEGV sees for a fatal fault.
fn signalled(r: guest_mm::SigReport) -> Access {
    match r.signal {
        SIGBUS => Access::Bus,
        SIGSEGV => Access::Segv(r.code.map_or(0, |c| c as i32)),
        _ => panic!("access at {:#x}: {r:?}", r.addr),
    }
}

impl Sim {
    /// What a woken task does at once: every background write that no
    /// longer waits is tried again (and may wait again).
    fn settle(&mut self) {
        self.sys.take_woken();
        for proc in 0..self.bg.len() {
            if let Some((va, val, None)) = self.bg[proc] {
                if !self.sys.uffd_waiting(self.pids[proc]) {
                    let done = self.try_write(proc, va, val);
                    self.bg[proc] = Some((va, val, done));
                }
            }
        }
    }

    /// One try of a write that may wait for a userfaultfd handler:
    /// `None` if it waits.
    fn try_write(&mut self, proc: usize, va: u64, val: u8) -> Option<Access> {
        let r = user_try_wait(&mut self.sys, self.pids[proc], 0, va, Kind::Write);
        // Nothing here sleeps: who was woken is seen in `uffd_waiting`.
        self.sys.take_woken();
        match r {
            Ok(pa) => {
                self.sys.hw.write_bytes(pa, &[val]);
                Some(Access::Done(val))
            }
            Err(FaultStop::Userfault) => None,
            Err(FaultStop::Signal(r)) => Some(signalled(r)),
        }
    }

    /// The invariant checker after a call made without `syscall`.
    fn checked(&self) {
        if let Err(e) = self.sys.check() {
            panic!("mm_check: {:?}", e.violations);
        }
    }
}
