//! What both sides of the comparison offer, and the runner that turns a
//! script into the canonical transcript compared line by line.
//!
//! Normalisations (docs/CONFORMANCE.md): only the window, the top of the
//! user space, the first MiB and the mappings the script created elsewhere
//! are shown (a Linux process has its own binary, libraries and stack);
//! mappings placed without a usable hint are named by the step that
//! created them, not by address, because Linux places them top-down from
//! a randomised base; the device and inode columns of the maps are left
//! out; pages are shown by their non-zero bytes, only where a page is
//! present or swapped.

pub use crate::script::MapLine;
use crate::script::{
    Access, AccessResult, CallResult, FileName, HugeCountersText, MapsEntry, Op, PagemapLine,
    ScanArgs, ScanText, State, Step, UffdCall, UffdMsgText, UffdResultText,
};
use crate::writewatch::{Tracking, WatchText};

/// What a `PAGEMAP_SCAN` returned: the call's result, the regions
/// (`start`, `end`, `categories`) and `walk_end`.
pub type ScanOut = (i64, Vec<[u64; 3]>, u64);

/// One side of the comparison: guest-mm in a simulated machine, or the
/// host's Linux.
pub trait Backend {
    /// A system call of process `proc`; Linux's return convention.
    fn syscall(&mut self, proc: usize, nr: u64, args: [u64; 6]) -> i64;
    /// A system call whose first argument is the path of tmpfs file
    /// `name`, which each side puts where it keeps its files.
    fn path_call(&mut self, proc: usize, nr: u64, args: [u64; 6], name: &FileName) -> i64;
    /// A ring-3 access of one byte (`Some(v)`: write `v`).
    fn access(&mut self, proc: usize, va: u64, write: Option<u8>) -> Access;
    /// `proc` forks; the child becomes process `child`.
    fn fork(&mut self, proc: usize, child: usize) -> Result<(), i64>;
    /// `proc` exits and its parent reaps it.
    fn exit(&mut self, proc: usize);
    /// Every VMA of `proc`.
    fn maps(&mut self, proc: usize) -> Vec<MapLine>;
    /// The pages of `[start, end)` that are present or swapped, with
    /// their digests (`script::Digest`, or `swap`), without touching them.
    fn pages(&mut self, proc: usize, start: u64, end: u64) -> Vec<(u64, String)>;
    /// The 2 MiB hugetlb pool's total, free, reserved and surplus pages.
    fn huge_counters(&mut self) -> [u64; 4];
    /// A userfaultfd ioctl on descriptor `fd`: its result and the two
    /// words it hands back (`UFFDIO_API`: features and ioctls;
    /// `UFFDIO_REGISTER`: the ioctls).
    fn uffd(&mut self, proc: usize, fd: u64, call: UffdCall) -> (i64, u64, u64);
    /// The pagemap entries of `n` pages from `va`.
    fn pagemap(&mut self, proc: usize, va: u64, n: u64) -> Vec<u64>;
    /// Writes `ty` and a newline to `/proc/self/clear_refs`: the write's
    /// result (or the open's error).
    fn clear_refs(&mut self, proc: usize, ty: u64) -> i64;
    /// `PAGEMAP_SCAN` of `[start, start + len)`.
    fn pagemap_scan(&mut self, proc: usize, start: u64, len: u64, scan: ScanArgs) -> ScanOut;
    /// Starts a one-byte write of `proc` that may wait for a userfaultfd
    /// handler (`write ADDR VAL &`); the next call for `proc` is
    /// [`Backend::join`].
    fn write_bg(&mut self, proc: usize, va: u64, val: u8);
    /// Waits for `proc`'s background write: its result, or `None` if it
    /// can never end (it waits for a fault no step resolved).
    fn join(&mut self, proc: usize) -> Option<Access>;
    /// `read(fd, msg, 32)` of a userfaultfd: the result, and the message's
    /// event, `pagefault.flags` and `.address`. [`UFFD_READ_BLOCKED`]
    /// when the read could never return.
    fn uffd_read(&mut self, proc: usize, fd: u64) -> (i64, [u64; 3]);
}

/// What [`Backend::uffd_read`] gives for a read that would wait forever.
pub const UFFD_READ_BLOCKED: i64 = i64::MIN;

/// [`Tracking`] through a backend, for process `proc`: GetWriteWatch
/// emulated the same way on both sides.
struct Through<'a, B: Backend> {
    b: &'a mut B,
    proc: usize,
}

impl<B: Backend> Tracking for Through<'_, B> {
    fn mmap_anon(&mut self, addr: u64, len: u64) -> i64 {
        let flags = crate::writewatch::alloc_flags(addr);
        self.b.syscall(
            self.proc,
            crate::script::SYS_MMAP,
            [addr, len, 3, flags, u64::MAX, 0],
        )
    }
    fn userfaultfd(&mut self) -> i64 {
        self.b.syscall(
            self.proc,
            crate::script::SYS_USERFAULTFD,
            [1, 0, 0, 0, 0, 0],
        )
    }
    fn uffd(&mut self, fd: u64, call: UffdCall) -> i64 {
        self.b.uffd(self.proc, fd, call).0
    }
    fn scan(&mut self, start: u64, len: u64, args: ScanArgs, out: &mut [[u64; 3]]) -> (i64, u64) {
        let (r, regions, walk_end) = self.b.pagemap_scan(self.proc, start, len, args);
        for (slot, g) in out.iter_mut().zip(regions) {
            *slot = g;
        }
        (r, walk_end)
    }
}

/// Runs a script on one backend and renders its transcript.
pub struct Runner<B: Backend> {
    pub backend: B,
    state: State,
}

impl<B: Backend> Runner<B> {
    pub fn new(backend: B) -> Self {
        Runner {
            backend,
            state: State::default(),
        }
    }

    /// Runs step `k`; returns its result.
    pub fn run_step(&mut self, k: usize, step: &Step) -> String {
        let p = step.proc;
        if !self.state.alive(p) {
            return "no such process".into();
        }
        let st = &self.state;
        if let Some((nr, args)) = step.op.call(|a| st.resolve(a)) {
            let r = match step.op.path_name() {
                Some(name) => self.backend.path_call(p, nr, args, &name),
                None => self.backend.syscall(p, nr, args),
            };
            if step.op.opens() {
                // Descriptor numbers differ between the sides: `@k` names it.
                self.state.opened(k, r);
                if r >= 0 {
                    return "fd".into();
                }
            }
            if let Some(len) = step.op.maps_len() {
                self.state.mapped(k, p, r, len);
                if r >= 0 {
                    return self.state.show(p, r as u64).to_string();
                }
            }
            return CallResult(r).to_string();
        }
        match step.op {
            Op::Write { addr, val } => {
                let a = self.state.resolve(addr);
                AccessResult(self.backend.access(p, a, Some(val)), true).to_string()
            }
            Op::Read { addr } => {
                let a = self.state.resolve(addr);
                AccessResult(self.backend.access(p, a, None), false).to_string()
            }
            Op::WriteBg { addr, val } => {
                let a = self.state.resolve(addr);
                self.backend.write_bg(p, a, val);
                self.state.set_busy(p, true);
                "started".into()
            }
            Op::Join => {
                self.state.set_busy(p, false);
                match self.backend.join(p) {
                    Some(a) => AccessResult(a, true).to_string(),
                    None => "blocked".into(),
                }
            }
            Op::UffdRead { fd } => {
                let st = &self.state;
                let fd = fd.value(&|a| st.resolve(a));
                match self.backend.uffd_read(p, fd) {
                    (UFFD_READ_BLOCKED, _) => "blocked".into(),
                    (r, msg) => UffdMsgText {
                        state: &self.state,
                        proc: p,
                        r,
                        msg,
                    }
                    .to_string(),
                }
            }
            Op::Fork => {
                let Some(child) = self.state.next_proc() else {
                    return "too many processes".into();
                };
                match self.backend.fork(p, child) {
                    Ok(()) => format!("p{}", self.state.forked(p)),
                    Err(e) => CallResult(e).to_string(),
                }
            }
            Op::Exit => {
                self.backend.exit(p);
                self.state.exited(p);
                "exited".into()
            }
            Op::HugeCounters => HugeCountersText(self.backend.huge_counters()).to_string(),
            Op::Uffd { fd, req } => {
                let st = &self.state;
                let fd = fd.value(&|a| st.resolve(a));
                let call = req.resolved(|a| st.resolve(a));
                let (r, a, b) = self.backend.uffd(p, fd, call);
                UffdResultText { req, r, a, b }.to_string()
            }
            Op::Pagemap { addr, pages } => {
                let va = self.state.resolve(addr);
                PagemapLine(&self.backend.pagemap(p, va, pages)).to_string()
            }
            Op::ClearRefs { ty } => CallResult(self.backend.clear_refs(p, ty)).to_string(),
            Op::PagemapScan { addr, len, scan } => {
                let va = self.state.resolve(addr);
                let (r, regions, walk_end) = self.backend.pagemap_scan(p, va, len, scan);
                ScanText {
                    state: &self.state,
                    proc: p,
                    r,
                    walk_end,
                    regions: &regions,
                }
                .to_string()
            }
            Op::WwAlloc { addr, len } => {
                let a = self.state.resolve(addr);
                let r = self.with_watch(p, |ww, t| ww.alloc(t, a, len));
                let rounded = step.op.maps_len().expect("an allocation maps");
                self.state.mapped(k, p, r, rounded);
                if r >= 0 {
                    self.state.show(p, r as u64).to_string()
                } else {
                    CallResult(r).to_string()
                }
            }
            Op::GetWriteWatch {
                flags,
                addr,
                len,
                count,
            } => {
                let a = self.state.resolve(addr);
                let mut out = [0u64; 64];
                let result = self.with_watch(p, |ww, t| {
                    ww.get(t, flags, a, len, &mut out[..count as usize])
                });
                WatchText {
                    state: &self.state,
                    proc: p,
                    result,
                    addrs: &out,
                }
                .to_string()
            }
            Op::ResetWriteWatch { addr, len } => {
                let a = self.state.resolve(addr);
                let result = self.with_watch(p, |ww, t| ww.reset(t, a, len).map(|()| (0, 0)));
                WatchText {
                    state: &self.state,
                    proc: p,
                    result,
                    addrs: &[],
                }
                .to_string()
            }
            _ => unreachable!("calls are handled above"),
        }
    }

    /// Runs `f` on process `p`'s write-watch state, through this backend.
    fn with_watch<R>(
        &mut self,
        p: usize,
        f: impl FnOnce(&mut crate::writewatch::WriteWatch, &mut Through<'_, B>) -> R,
    ) -> R {
        let mut t = Through {
            b: &mut self.backend,
            proc: p,
        };
        f(&mut self.state.watch[p], &mut t)
    }

    /// Runs step `k` and renders its transcript lines: the result, then
    /// the layout and resident pages of every live process.
    pub fn step_lines(&mut self, k: usize, step: &Step) -> Vec<String> {
        let res = self.run_step(k, step);
        let mut out = vec![format!("{k}: {step} = {res}")];
        out.extend(self.state());
        out
    }

    /// The layout and resident pages of process `p` (only the shown
    /// areas).
    pub fn state_of(&mut self, p: usize) -> Vec<String> {
        if self.state.busy(p) {
            return vec![format!("  p{p} busy")];
        }
        let maps = self.backend.maps(p);
        let cut: Vec<MapLine> = self.state.cut(p, &maps).collect();
        let mut lines = Vec::new();
        let mut pages = Vec::new();
        for line in cut {
            lines.push(
                MapsEntry {
                    state: &self.state,
                    proc: p,
                    line,
                }
                .to_string(),
            );
            for (va, d) in self.backend.pages(p, line.start, line.end) {
                pages.push(format!("{}:{d}", self.state.show(p, va)));
            }
        }
        let mut out = vec![format!("  p{p} maps: {}", lines.join("; "))];
        if !pages.is_empty() {
            out.push(format!("  p{p} pages: {}", pages.join(" ")));
        }
        out
    }

    /// The layout and resident pages of every live process.
    pub fn state(&mut self) -> Vec<String> {
        let live: Vec<usize> = self.state.live().collect();
        live.into_iter().flat_map(|p| self.state_of(p)).collect()
    }
}

/// Reads a page digest for a transcript.
pub fn digest(page: &[u8]) -> String {
    crate::script::Digest(page).to_string()
}
