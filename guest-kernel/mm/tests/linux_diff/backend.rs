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

use crate::script::{Addr, Op, PAGE, Step, TASK_SIZE, TOP_VIEW, WINDOW, WINDOW_LEN, show_addr};
use crate::script::{
    SYS_MADVISE, SYS_MLOCK, SYS_MLOCK2, SYS_MMAP, SYS_MPROTECT, SYS_MREMAP, SYS_MUNLOCK, SYS_MUNMAP,
};

/// The result of a ring-3 access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Done; the byte read (or written).
    Done(u8),
    /// SIGSEGV with this `si_code` (1 MAPERR, 2 ACCERR).
    Segv(i32),
    /// SIGBUS.
    Bus,
}

/// One VMA as the maps listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
}

/// One side of the comparison: guest-mm in a simulated machine, or the
/// host's Linux.
pub trait Backend {
    /// A system call of process `proc`; Linux's return convention.
    fn syscall(&mut self, proc: usize, nr: u64, args: [u64; 6]) -> i64;
    /// A ring-3 access of one byte (`Some(v)`: write `v`).
    fn access(&mut self, proc: usize, va: u64, write: Option<u8>) -> Access;
    /// `proc` forks; the child becomes process `child`.
    fn fork(&mut self, proc: usize, child: usize) -> Result<(), i64>;
    /// `proc` exits and its parent reaps it.
    fn exit(&mut self, proc: usize);
    /// Every VMA of `proc`.
    fn maps(&mut self, proc: usize) -> Vec<MapLine>;
    /// The pages of `[start, end)` that are present or swapped, with
    /// [`digest`]s, without touching them.
    fn pages(&mut self, proc: usize, start: u64, end: u64) -> Vec<(u64, String)>;
}

/// A page's contents in a transcript: its non-zero bytes (`{off=val,...}`,
/// at most 8), else a hash; `swap` for a swapped page.
pub fn digest(page: &[u8]) -> String {
    let nz: Vec<(usize, u8)> = page
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, b)| b != 0)
        .collect();
    if nz.len() <= 8 {
        let parts: Vec<String> = nz.iter().map(|(o, b)| format!("{o:x}={b:x}")).collect();
        format!("{{{}}}", parts.join(","))
    } else {
        let h = page.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        format!("#{h:016x}")
    }
}

/// Linux's name of an errno value.
pub fn errno_name(e: i64) -> String {
    let n = match e {
        1 => "EPERM",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        19 => "ENODEV",
        22 => "EINVAL",
        38 => "ENOSYS",
        75 => "EOVERFLOW",
        95 => "EOPNOTSUPP",
        524 => "ENOTSUPP",
        _ => return format!("-{e}"),
    };
    format!("-{n}")
}

/// A region a step created outside the shown areas, named by that step.
struct Named {
    step: usize,
    proc: usize,
    start: u64,
    len: u64,
}

/// Runs a script on one backend and renders its transcript.
pub struct Runner<B: Backend> {
    pub backend: B,
    results: Vec<Option<u64>>,
    alive: Vec<bool>,
    named: Vec<Named>,
}

impl<B: Backend> Runner<B> {
    pub fn new(backend: B) -> Self {
        Runner {
            backend,
            results: Vec::new(),
            alive: vec![true],
            named: Vec::new(),
        }
    }

    /// Process numbers that are alive.
    pub fn live(&self) -> Vec<usize> {
        (0..self.alive.len()).filter(|&p| self.alive[p]).collect()
    }

    fn resolve(&self, a: Addr) -> u64 {
        match a {
            Addr::Abs(v) => v,
            Addr::Result(k, off) => self
                .results
                .get(k)
                .copied()
                .flatten()
                .unwrap_or(0)
                .wrapping_add_signed(off),
        }
    }

    fn show(&self, proc: usize, a: u64) -> String {
        let s = show_addr(a);
        if s != "elsewhere" {
            return s;
        }
        for n in &self.named {
            if n.proc == proc && (n.start..n.start + n.len).contains(&a) {
                let off = a - n.start;
                return if off == 0 {
                    format!("@{}", n.step)
                } else {
                    format!("@{}+{}p", n.step, off / PAGE)
                };
            }
        }
        s
    }

    fn mapped_result(&mut self, k: usize, proc: usize, r: i64, len: u64) -> String {
        if (-4095..0).contains(&r) {
            return errno_name(-r);
        }
        let a = r as u64;
        self.results[k] = Some(a);
        if show_addr(a) == "elsewhere" {
            self.named
                .retain(|n| n.proc != proc || n.start + n.len <= a || a + len <= n.start);
            self.named.push(Named {
                step: k,
                proc,
                start: a,
                len: len.max(PAGE),
            });
        }
        self.show(proc, a)
    }

    fn plain(r: i64) -> String {
        if r < 0 { errno_name(-r) } else { r.to_string() }
    }

    fn access(r: Access, write: bool) -> String {
        match r {
            Access::Done(v) if write => {
                let _ = v;
                "ok".into()
            }
            Access::Done(v) => format!("={v:#x}"),
            Access::Segv(1) => "SIGSEGV(MAPERR)".into(),
            Access::Segv(2) => "SIGSEGV(ACCERR)".into(),
            Access::Segv(c) => format!("SIGSEGV({c})"),
            Access::Bus => "SIGBUS".into(),
        }
    }

    /// Runs step `k`; returns its result line.
    pub fn run_step(&mut self, k: usize, step: &Step) -> String {
        while self.results.len() <= k {
            self.results.push(None);
        }
        let p = step.proc;
        if !self.alive.get(p).copied().unwrap_or(false) {
            return "no such process".into();
        }
        match step.op {
            Op::Mmap {
                addr,
                len,
                prot,
                flags,
                fd,
                off,
            } => {
                let a = self.resolve(addr);
                let r = self
                    .backend
                    .syscall(p, SYS_MMAP, [a, len, prot, flags, fd as u64, off]);
                let len = len.div_ceil(PAGE).saturating_mul(PAGE);
                self.mapped_result(k, p, r, len)
            }
            Op::Munmap { addr, len } => {
                let a = self.resolve(addr);
                Self::plain(self.backend.syscall(p, SYS_MUNMAP, [a, len, 0, 0, 0, 0]))
            }
            Op::Mprotect { addr, len, prot } => {
                let a = self.resolve(addr);
                Self::plain(
                    self.backend
                        .syscall(p, SYS_MPROTECT, [a, len, prot, 0, 0, 0]),
                )
            }
            Op::Madvise { addr, len, advice } => {
                let a = self.resolve(addr);
                Self::plain(
                    self.backend
                        .syscall(p, SYS_MADVISE, [a, len, advice, 0, 0, 0]),
                )
            }
            Op::Mlock { addr, len } => {
                let a = self.resolve(addr);
                Self::plain(self.backend.syscall(p, SYS_MLOCK, [a, len, 0, 0, 0, 0]))
            }
            Op::Mlock2 { addr, len, flags } => {
                let a = self.resolve(addr);
                Self::plain(
                    self.backend
                        .syscall(p, SYS_MLOCK2, [a, len, flags, 0, 0, 0]),
                )
            }
            Op::Munlock { addr, len } => {
                let a = self.resolve(addr);
                Self::plain(self.backend.syscall(p, SYS_MUNLOCK, [a, len, 0, 0, 0, 0]))
            }
            Op::Mremap {
                old,
                old_len,
                new_len,
                flags,
                new_addr,
            } => {
                let (o, n) = (self.resolve(old), self.resolve(new_addr));
                let r = self
                    .backend
                    .syscall(p, SYS_MREMAP, [o, old_len, new_len, flags, n, 0]);
                let len = new_len.div_ceil(PAGE).saturating_mul(PAGE);
                self.mapped_result(k, p, r, len)
            }
            Op::Write { addr, val } => {
                let a = self.resolve(addr);
                Self::access(self.backend.access(p, a, Some(val)), true)
            }
            Op::Read { addr } => {
                let a = self.resolve(addr);
                Self::access(self.backend.access(p, a, None), false)
            }
            Op::Fork => {
                let child = self.alive.len();
                match self.backend.fork(p, child) {
                    Ok(()) => {
                        self.alive.push(true);
                        let inherited: Vec<Named> = self
                            .named
                            .iter()
                            .filter(|n| n.proc == p)
                            .map(|n| Named {
                                step: n.step,
                                proc: child,
                                start: n.start,
                                len: n.len,
                            })
                            .collect();
                        self.named.extend(inherited);
                        format!("p{child}")
                    }
                    Err(e) => errno_name(-e),
                }
            }
            Op::Exit => {
                self.backend.exit(p);
                self.alive[p] = false;
                "exited".into()
            }
        }
    }

    /// The shown areas of `proc`: window, top, first MiB, named regions.
    fn areas(&self, proc: usize) -> Vec<(u64, u64)> {
        let mut v = vec![
            (0, 0x10_0000),
            (WINDOW, WINDOW + WINDOW_LEN),
            (TOP_VIEW, TASK_SIZE + PAGE),
        ];
        v.extend(
            self.named
                .iter()
                .filter(|n| n.proc == proc)
                .map(|n| (n.start, n.start + n.len)),
        );
        v
    }

    /// The layout and resident pages of every live process.
    pub fn state(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.live() {
            let maps = self.backend.maps(p);
            let mut lines = Vec::new();
            let mut pages = Vec::new();
            for (lo, hi) in self.areas(p) {
                for m in maps.iter().filter(|m| m.start < hi && lo < m.end) {
                    let (s, e) = (m.start.max(lo), m.end.min(hi));
                    let off = if m.perms.ends_with('s') {
                        format!(" {:x}", m.offset)
                    } else {
                        String::new()
                    };
                    lines.push(format!(
                        "{}..{} {}{off}",
                        self.show(p, s),
                        self.show(p, e - PAGE),
                        m.perms
                    ));
                    for (va, d) in self.backend.pages(p, s, e) {
                        pages.push(format!("{}:{d}", self.show(p, va)));
                    }
                }
            }
            out.push(format!("  p{p} maps: {}", lines.join("; ")));
            if !pages.is_empty() {
                out.push(format!("  p{p} pages: {}", pages.join(" ")));
            }
        }
        out
    }
}
