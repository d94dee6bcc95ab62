//! The differential-test script language (docs/CONFORMANCE.md): the steps
//! an edge case is made of, their parser, their canonical text, and the
//! shared pieces of the transcript (addresses, results, page digests).
//!
//! Used by three runners that must print the same text: guest-mm on the
//! host and a Linux process (`guest-kernel/mm/tests/linux_diff`), and a
//! guest process (`conform`). It needs neither `std` nor an allocator.
//!
//! A step is one line: an optional process (`p1`), an operation and its
//! arguments. Addresses are `W+<n>p` (the window all cases work in),
//! absolute numbers, or `@<k>+<n>p` (what step `k` returned, for mappings
//! Linux and guest-mm place themselves). Lengths take a `p` suffix for
//! pages. Flag words join names with `|` (`private|anon|fixed`) or are
//! numbers.

use core::fmt;

/// Page size.
pub const PAGE: u64 = 4096;
/// Where every case maps: far from what a Linux test process has mapped
/// (its binary, heap, libraries and stack) and from a guest program's own
/// image and stack.
pub const WINDOW: u64 = 0x10_0000_0000;
/// Size of the window the layout and page views cover.
pub const WINDOW_LEN: u64 = 1 << 30;
/// x86-64 TASK_SIZE: the top user page is never mappable.
pub const TASK_SIZE: u64 = (1 << 47) - PAGE;
/// Addresses from here to TASK_SIZE are shown absolute (top-of-space
/// cases); a guest program's stack ends 15 pages below.
pub const TOP_VIEW: u64 = TASK_SIZE - (8 * PAGE);
/// Most processes one case may create.
pub const MAX_PROCS: usize = 8;
/// Most steps one case may have.
pub const MAX_STEPS: usize = 64;

/// `mmap`.
pub const SYS_MMAP: u64 = 9;
/// `mprotect`.
pub const SYS_MPROTECT: u64 = 10;
/// `munmap`.
pub const SYS_MUNMAP: u64 = 11;
/// `mremap`.
pub const SYS_MREMAP: u64 = 25;
/// `madvise`.
pub const SYS_MADVISE: u64 = 28;
/// `mlock`.
pub const SYS_MLOCK: u64 = 149;
/// `munlock`.
pub const SYS_MUNLOCK: u64 = 150;
/// `mlock2`.
pub const SYS_MLOCK2: u64 = 325;
/// `close`.
pub const SYS_CLOSE: u64 = 3;
/// `read`.
pub const SYS_READ: u64 = 0;
/// `write`.
pub const SYS_WRITE: u64 = 1;
/// `open`; its first argument is each side's own path buffer.
pub const SYS_OPEN: u64 = 2;
/// `lseek`.
pub const SYS_LSEEK: u64 = 8;
/// `pread64`.
pub const SYS_PREAD64: u64 = 17;
/// `pwrite64`.
pub const SYS_PWRITE64: u64 = 18;
/// `fcntl`.
pub const SYS_FCNTL: u64 = 72;
/// `unlink`; its argument is each side's own path buffer.
pub const SYS_UNLINK: u64 = 87;
/// Where each side keeps the tmpfs files a case names (Linux: a prefix
/// of its own inside it, so that runs never meet).
pub const TMPFS_DIR: &str = "/dev/shm/";
/// `ftruncate`.
pub const SYS_FTRUNCATE: u64 = 77;
/// `fallocate`.
pub const SYS_FALLOCATE: u64 = 285;
/// `memfd_create`; its first argument is each side's own name buffer.
pub const SYS_MEMFD_CREATE: u64 = 319;
/// writewatch: `hugetlb_pool(size_log, knob, value)` (Linux: writing
/// `/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages` or
/// `nr_overcommit_hugepages`).
pub const SYS_HUGETLB_POOL: u64 = 1006;
/// writewatch: `hugetlb_counters(size_log, *buf, len)`.
pub const SYS_HUGETLB_COUNTERS: u64 = 1007;
/// The 2 MiB pool's size log, the one the scripts use.
pub const HUGE_2M_LOG: u64 = 21;

/// An address argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// This address.
    Abs(u64),
    /// What step `k` returned, plus a byte offset.
    Result(usize, i64),
}

/// A file descriptor argument: a number, or what a `memfd` step returned
/// (`@k`; descriptor numbers differ between a guest and a Linux process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdArg {
    /// This number.
    Num(i64),
    /// What step `k` returned.
    Step(usize),
}

impl FdArg {
    fn value(self, resolve: &impl Fn(Addr) -> u64) -> u64 {
        match self {
            FdArg::Num(n) => n as u64,
            // A step that opened nothing gives -1 (EBADF), never one of
            // the descriptors each side already has (0 to 2).
            FdArg::Step(k) => match resolve(Addr::Result(k, 0)) {
                fd @ 3.. => fd,
                _ => u64::MAX,
            },
        }
    }
}

impl fmt::Display for FdArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdArg::Num(n) => write!(f, "{n}"),
            FdArg::Step(k) => write!(f, "@{k}"),
        }
    }
}

/// A tmpfs file name of a case: 1 to 12 letters, digits, `_` or `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileName {
    bytes: [u8; 12],
    len: u8,
}

impl FileName {
    fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        if s.is_empty() || s.len() > 12 || !s.bytes().all(ok) {
            return Err("bad file name");
        }
        let mut bytes = [0; 12];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(FileName {
            bytes,
            len: s.len() as u8,
        })
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// `TMPFS_DIR` + the name + NUL, in `buf`; returns the used part.
    pub fn path_in<'a>(&self, buf: &'a mut [u8; 32]) -> &'a [u8] {
        let dir = TMPFS_DIR.as_bytes();
        let n = dir.len() + self.as_bytes().len();
        buf[..dir.len()].copy_from_slice(dir);
        buf[dir.len()..n].copy_from_slice(self.as_bytes());
        buf[n] = 0;
        &buf[..=n]
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parsing allowed only ASCII.
        f.write_str(core::str::from_utf8(self.as_bytes()).unwrap_or("?"))
    }
}

/// One operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `mmap(addr, len, prot, flags, fd, off)`.
    Mmap {
        addr: Addr,
        len: u64,
        prot: u64,
        flags: u64,
        fd: FdArg,
        off: u64,
    },
    /// `munmap(addr, len)`.
    Munmap { addr: Addr, len: u64 },
    /// `mprotect(addr, len, prot)`.
    Mprotect { addr: Addr, len: u64, prot: u64 },
    /// `madvise(addr, len, advice)`.
    Madvise { addr: Addr, len: u64, advice: u64 },
    /// `mremap(old, old_len, new_len, flags, new_addr)`.
    Mremap {
        old: Addr,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: Addr,
    },
    /// `mlock(addr, len)`.
    Mlock { addr: Addr, len: u64 },
    /// `mlock2(addr, len, flags)`.
    Mlock2 { addr: Addr, len: u64, flags: u64 },
    /// `munlock(addr, len)`.
    Munlock { addr: Addr, len: u64 },
    /// A ring-3 one-byte write.
    Write { addr: Addr, val: u8 },
    /// A ring-3 one-byte read.
    Read { addr: Addr },
    /// The process forks; the child is the next process number.
    Fork,
    /// The process exits (it must have no live children) and is reaped.
    Exit,
    /// `memfd_create(name, flags)` (each side passes a name of its own).
    Memfd { flags: u64 },
    /// `ftruncate(fd, len)`.
    Ftruncate { fd: FdArg, len: u64 },
    /// `fallocate(fd, mode, off, len)`.
    Fallocate {
        fd: FdArg,
        mode: u64,
        off: u64,
        len: u64,
    },
    /// `close(fd)`.
    Close { fd: FdArg },
    /// `open(path, flags, mode)` of a tmpfs file (each side passes a path
    /// of its own for `name`).
    Open {
        name: FileName,
        flags: u64,
        mode: u64,
    },
    /// `unlink(path)` of a tmpfs file.
    Unlink { name: FileName },
    /// `read(fd, buf, len)` (`at` is `None`) or `pread64(fd, buf, len,
    /// at)` into the process's memory.
    FileRead {
        fd: FdArg,
        buf: Addr,
        len: u64,
        at: Option<u64>,
    },
    /// `write(fd, buf, len)` or `pwrite64(fd, buf, len, at)` from the
    /// process's memory.
    FileWrite {
        fd: FdArg,
        buf: Addr,
        len: u64,
        at: Option<u64>,
    },
    /// `lseek(fd, off, whence)`.
    Lseek { fd: FdArg, off: u64, whence: u64 },
    /// `fcntl(fd, cmd, arg)`.
    Fcntl { fd: FdArg, cmd: u64, arg: u64 },
    /// Sets a knob of the 2 MiB hugetlb pool (`hugepages N`: 0,
    /// `nr_hugepages`; `overcommit N`: 1, `nr_overcommit_hugepages`).
    HugePool { knob: u64, value: u64 },
    /// Shows the 2 MiB pool's counters (`hugecounters`).
    HugeCounters,
}

/// An operation of process `proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Which process (0 is the first; forks number the others in order).
    pub proc: usize,
    /// What it does.
    pub op: Op,
}

impl Op {
    /// The system call and its arguments, for the calls; `None` for
    /// accesses, fork and exit. `resolve` turns an [`Addr`] into a number.
    pub fn call(&self, resolve: impl Fn(Addr) -> u64) -> Option<(u64, [u64; 6])> {
        Some(match *self {
            Op::Mmap {
                addr,
                len,
                prot,
                flags,
                fd,
                off,
            } => (
                SYS_MMAP,
                [resolve(addr), len, prot, flags, fd.value(&resolve), off],
            ),
            Op::Memfd { flags } => (SYS_MEMFD_CREATE, [0, flags, 0, 0, 0, 0]),
            Op::Ftruncate { fd, len } => (SYS_FTRUNCATE, [fd.value(&resolve), len, 0, 0, 0, 0]),
            Op::Fallocate { fd, mode, off, len } => {
                (SYS_FALLOCATE, [fd.value(&resolve), mode, off, len, 0, 0])
            }
            Op::Close { fd } => (SYS_CLOSE, [fd.value(&resolve), 0, 0, 0, 0, 0]),
            Op::Open { flags, mode, .. } => (SYS_OPEN, [0, flags, mode, 0, 0, 0]),
            Op::Unlink { .. } => (SYS_UNLINK, [0; 6]),
            Op::FileRead { fd, buf, len, at } => {
                let (nr, pos) = at.map_or((SYS_READ, 0), |p| (SYS_PREAD64, p));
                (nr, [fd.value(&resolve), resolve(buf), len, pos, 0, 0])
            }
            Op::FileWrite { fd, buf, len, at } => {
                let (nr, pos) = at.map_or((SYS_WRITE, 0), |p| (SYS_PWRITE64, p));
                (nr, [fd.value(&resolve), resolve(buf), len, pos, 0, 0])
            }
            Op::Lseek { fd, off, whence } => {
                (SYS_LSEEK, [fd.value(&resolve), off, whence, 0, 0, 0])
            }
            Op::Fcntl { fd, cmd, arg } => (SYS_FCNTL, [fd.value(&resolve), cmd, arg, 0, 0, 0]),
            Op::Munmap { addr, len } => (SYS_MUNMAP, [resolve(addr), len, 0, 0, 0, 0]),
            Op::Mprotect { addr, len, prot } => (SYS_MPROTECT, [resolve(addr), len, prot, 0, 0, 0]),
            Op::Madvise { addr, len, advice } => {
                (SYS_MADVISE, [resolve(addr), len, advice, 0, 0, 0])
            }
            Op::Mremap {
                old,
                old_len,
                new_len,
                flags,
                new_addr,
            } => (
                SYS_MREMAP,
                [resolve(old), old_len, new_len, flags, resolve(new_addr), 0],
            ),
            Op::Mlock { addr, len } => (SYS_MLOCK, [resolve(addr), len, 0, 0, 0, 0]),
            Op::Mlock2 { addr, len, flags } => (SYS_MLOCK2, [resolve(addr), len, flags, 0, 0, 0]),
            Op::Munlock { addr, len } => (SYS_MUNLOCK, [resolve(addr), len, 0, 0, 0, 0]),
            Op::HugePool { knob, value } => (SYS_HUGETLB_POOL, [HUGE_2M_LOG, knob, value, 0, 0, 0]),
            Op::Write { .. } | Op::Read { .. } | Op::Fork | Op::Exit | Op::HugeCounters => {
                return None;
            }
        })
    }

    /// Whether the call returns a new descriptor (shown as `fd`: numbers
    /// differ between a guest and a Linux process; `@k` names it).
    pub fn opens(&self) -> bool {
        matches!(self, Op::Memfd { .. } | Op::Open { .. })
    }

    /// For calls of a tmpfs path: the file name (each side passes its own
    /// path for it as the first argument).
    pub fn path_name(&self) -> Option<FileName> {
        match *self {
            Op::Open { name, .. } | Op::Unlink { name } => Some(name),
            _ => None,
        }
    }

    /// For calls that create a mapping: its length in bytes, rounded up.
    pub fn maps_len(&self) -> Option<u64> {
        match *self {
            Op::Mmap { len, .. } | Op::Mremap { new_len: len, .. } => {
                Some(len.div_ceil(PAGE).saturating_mul(PAGE))
            }
            _ => None,
        }
    }
}

const PROT: &[(&str, u64)] = &[
    ("none", 0),
    ("r", 1),
    ("w", 2),
    ("x", 4),
    ("sem", 8),
    ("growsdown", 0x0100_0000),
    ("growsup", 0x0200_0000),
];
const MAP: &[(&str, u64)] = &[
    ("shared", 0x01),
    ("private", 0x02),
    ("shared_validate", 0x03),
    ("droppable", 0x08),
    ("fixed", 0x10),
    ("anon", 0x20),
    ("growsdown", 0x100),
    ("denywrite", 0x800),
    ("executable", 0x1000),
    ("locked", 0x2000),
    ("noreserve", 0x4000),
    ("populate", 0x8000),
    ("nonblock", 0x1_0000),
    ("stack", 0x2_0000),
    ("hugetlb", 0x4_0000),
    ("sync", 0x8_0000),
    ("fixed_noreplace", 0x10_0000),
    ("huge_2mb", 21 << 26),
    ("huge_1gb", 30 << 26),
];
const OPEN: &[(&str, u64)] = &[
    ("rdonly", 0),
    ("wronly", 0o1),
    ("rdwr", 0o2),
    ("creat", 0o100),
    ("excl", 0o200),
    ("trunc", 0o1000),
    ("append", 0o2000),
    ("directory", 0o200000),
];
const WHENCE: &[(&str, u64)] = &[("set", 0), ("cur", 1), ("end", 2), ("data", 3), ("hole", 4)];
const FCNTL: &[(&str, u64)] = &[("add_seals", 1033), ("get_seals", 1034)];
const SEALS: &[(&str, u64)] = &[
    ("seal", 0x1),
    ("shrink", 0x2),
    ("grow", 0x4),
    ("write", 0x8),
    ("future_write", 0x10),
    ("exec", 0x20),
];
const MREMAP: &[(&str, u64)] = &[("maymove", 1), ("fixed", 2), ("dontunmap", 4)];
const MADV: &[(&str, u64)] = &[
    ("normal", 0),
    ("random", 1),
    ("sequential", 2),
    ("willneed", 3),
    ("dontneed", 4),
    ("free", 8),
    ("remove", 9),
    ("dontfork", 10),
    ("dofork", 11),
    ("mergeable", 12),
    ("unmergeable", 13),
    ("hugepage", 14),
    ("nohugepage", 15),
    ("dontdump", 16),
    ("dodump", 17),
    ("wipeonfork", 18),
    ("keeponfork", 19),
    ("cold", 20),
    ("pageout", 21),
    ("populate_read", 22),
    ("populate_write", 23),
    ("dontneed_locked", 24),
    ("collapse", 25),
    ("guard_install", 102),
    ("guard_remove", 103),
];

/// Why a line does not parse.
pub type ParseError = &'static str;

fn num(s: &str) -> Result<u64, ParseError> {
    let (digits, pages) = match s.strip_suffix('p') {
        Some(d) => (d, true),
        None => (s, false),
    };
    let v = if let Some(h) = digits.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else if let Some(o) = digits.strip_prefix("0o") {
        u64::from_str_radix(o, 8)
    } else {
        digits.parse()
    }
    .map_err(|_| "bad number")?;
    Ok(if pages { v.wrapping_mul(PAGE) } else { v })
}

fn signed(s: &str) -> Result<i64, ParseError> {
    match s.strip_prefix('-') {
        Some(r) => Ok((num(r)? as i64).wrapping_neg()),
        None => Ok(num(s.strip_prefix('+').unwrap_or(s))? as i64),
    }
}

fn split_offset(body: &str) -> Result<(&str, i64), ParseError> {
    match body.find(['+', '-']) {
        Some(i) => Ok((&body[..i], signed(&body[i..])?)),
        None => Ok((body, 0)),
    }
}

fn addr(s: &str) -> Result<Addr, ParseError> {
    if let Some(rest) = s.strip_prefix('@') {
        let (k, off) = split_offset(rest)?;
        let k = k.parse().map_err(|_| "bad step reference")?;
        return Ok(Addr::Result(k, off));
    }
    if let Some(rest) = s.strip_prefix('W') {
        let (_, off) = split_offset(rest)?;
        return Ok(Addr::Abs(WINDOW.wrapping_add_signed(off)));
    }
    Ok(Addr::Abs(num(s)?))
}

fn fd_arg(s: &str) -> Result<FdArg, ParseError> {
    match s.strip_prefix('@') {
        Some(k) => Ok(FdArg::Step(k.parse().map_err(|_| "bad step reference")?)),
        None => Ok(FdArg::Num(signed(s)?)),
    }
}

fn flags(s: &str, table: &[(&str, u64)]) -> Result<u64, ParseError> {
    let mut v = 0;
    for w in s.split('|') {
        v |= match table.iter().find(|(n, _)| *n == w) {
            Some(&(_, bits)) => bits,
            None => num(w).map_err(|_| "unknown flag")?,
        };
    }
    Ok(v)
}

/// `rw`, `rwx`, `none`, or `|`-joined names, `rwx` words and numbers.
fn prot(s: &str) -> Result<u64, ParseError> {
    let mut v = 0;
    for w in s.split('|') {
        if !w.is_empty() && w.chars().all(|c| "rwx".contains(c)) {
            for c in w.chars() {
                v |= match c {
                    'r' => 1,
                    'w' => 2,
                    _ => 4,
                };
            }
        } else {
            v |= flags(w, PROT)?;
        }
    }
    Ok(v)
}

/// Parses one step line.
pub fn parse_step(line: &str) -> Result<Step, ParseError> {
    let mut words = line.split_whitespace().peekable();
    let mut proc = 0;
    if let Some(Ok(n)) = words
        .peek()
        .and_then(|s| s.strip_prefix('p'))
        .map(str::parse::<usize>)
    {
        proc = n;
        words.next();
    }
    let mut w = [""; 8];
    let mut n = 0;
    for word in words {
        if n == w.len() {
            return Err("too many arguments");
        }
        w[n] = word;
        n += 1;
    }
    let arg = |i: usize| {
        if i < n {
            Ok(w[i])
        } else {
            Err("missing argument")
        }
    };
    let opt = |i: usize| (i < n).then(|| w[i]);
    // Most operations start with an address and a length.
    let range = || -> Result<(Addr, u64), ParseError> { Ok((addr(arg(1)?)?, num(arg(2)?)?)) };
    let op = match arg(0)? {
        "mmap" => {
            let (addr, len) = range()?;
            Op::Mmap {
                addr,
                len,
                prot: prot(arg(3)?)?,
                flags: flags(arg(4)?, MAP)?,
                fd: opt(5).map_or(Ok(FdArg::Num(-1)), fd_arg)?,
                off: opt(6).map_or(Ok(0), num)?,
            }
        }
        "munmap" => {
            let (addr, len) = range()?;
            Op::Munmap { addr, len }
        }
        "mprotect" => {
            let (addr, len) = range()?;
            Op::Mprotect {
                addr,
                len,
                prot: prot(arg(3)?)?,
            }
        }
        "madvise" => {
            let (addr, len) = range()?;
            Op::Madvise {
                addr,
                len,
                advice: flags(arg(3)?, MADV)?,
            }
        }
        "mremap" => {
            let (old, old_len) = range()?;
            Op::Mremap {
                old,
                old_len,
                new_len: num(arg(3)?)?,
                flags: flags(arg(4)?, MREMAP)?,
                new_addr: opt(5).map_or(Ok(Addr::Abs(0)), addr)?,
            }
        }
        "mlock" => {
            let (addr, len) = range()?;
            Op::Mlock { addr, len }
        }
        "mlock2" => {
            let (addr, len) = range()?;
            Op::Mlock2 {
                addr,
                len,
                flags: num(arg(3)?)?,
            }
        }
        "munlock" => {
            let (addr, len) = range()?;
            Op::Munlock { addr, len }
        }
        "write" => Op::Write {
            addr: addr(arg(1)?)?,
            val: num(arg(2)?)? as u8,
        },
        "read" => Op::Read {
            addr: addr(arg(1)?)?,
        },
        "fork" => Op::Fork,
        "exit" => Op::Exit,
        "memfd" => Op::Memfd {
            flags: opt(1).map_or(Ok(0), num)?,
        },
        "ftruncate" => Op::Ftruncate {
            fd: fd_arg(arg(1)?)?,
            len: signed(arg(2)?)? as u64,
        },
        "fallocate" => Op::Fallocate {
            fd: fd_arg(arg(1)?)?,
            mode: num(arg(2)?)?,
            off: signed(arg(3)?)? as u64,
            len: signed(arg(4)?)? as u64,
        },
        "close" => Op::Close {
            fd: fd_arg(arg(1)?)?,
        },
        "open" => Op::Open {
            name: FileName::parse(arg(1)?)?,
            flags: flags(arg(2)?, OPEN)?,
            mode: opt(3).map_or(Ok(0o600), num)?,
        },
        "unlink" => Op::Unlink {
            name: FileName::parse(arg(1)?)?,
        },
        "fread" | "pread" => Op::FileRead {
            fd: fd_arg(arg(1)?)?,
            buf: addr(arg(2)?)?,
            len: num(arg(3)?)?,
            at: match arg(0)? {
                "pread" => Some(signed(arg(4)?)? as u64),
                _ => None,
            },
        },
        "fwrite" | "pwrite" => Op::FileWrite {
            fd: fd_arg(arg(1)?)?,
            buf: addr(arg(2)?)?,
            len: num(arg(3)?)?,
            at: match arg(0)? {
                "pwrite" => Some(signed(arg(4)?)? as u64),
                _ => None,
            },
        },
        "lseek" => Op::Lseek {
            fd: fd_arg(arg(1)?)?,
            off: signed(arg(2)?)? as u64,
            whence: flags(arg(3)?, WHENCE)?,
        },
        "fcntl" => Op::Fcntl {
            fd: fd_arg(arg(1)?)?,
            cmd: flags(arg(2)?, FCNTL)?,
            arg: opt(3).map_or(Ok(0), |a| flags(a, SEALS))?,
        },
        "hugepages" => Op::HugePool {
            knob: 0,
            value: num(arg(1)?)?,
        },
        "overcommit" => Op::HugePool {
            knob: 1,
            value: num(arg(1)?)?,
        },
        "hugecounters" => Op::HugeCounters,
        _ => return Err("unknown operation"),
    };
    Ok(Step { proc, op })
}

/// One case of a case table.
#[derive(Debug, Clone, Copy)]
pub struct Case<'a> {
    /// Its name (`case NAME`).
    pub name: &'a str,
    /// Where it comes from (`source ...`).
    pub source: &'a str,
    /// Why it differs from Linux for now (`later ...`), if it does.
    pub later: Option<&'a str>,
    /// Why it is too slow for an emulated ring 0 (`heavy ...`), if it is:
    /// runs only where kernel work is native (the ring-3 kernel mode here).
    pub heavy: Option<&'a str>,
    /// The step lines.
    pub body: &'a str,
}

impl<'a> Case<'a> {
    /// The steps, in order.
    pub fn steps(&self) -> impl Iterator<Item = Result<Step, ParseError>> + 'a {
        self.body
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(parse_step)
    }
}

/// The cases of a table (`resources/conformance/cases.txt`): `case NAME`,
/// `source ...`, optionally `later ...`, then the steps, indented; lines
/// starting with `#` are comments.
pub fn cases(text: &str) -> impl Iterator<Item = Case<'_>> {
    let mut rest = text;
    core::iter::from_fn(move || {
        loop {
            let (line, tail) = rest.split_once('\n').unwrap_or((rest, ""));
            if line.is_empty() && tail.is_empty() {
                return None;
            }
            rest = tail;
            let Some(name) = line.strip_prefix("case ") else {
                continue;
            };
            let mut case = Case {
                name: name.trim(),
                source: "",
                later: None,
                heavy: None,
                body: "",
            };
            let body_start;
            loop {
                let (l, t) = rest.split_once('\n').unwrap_or((rest, ""));
                if let Some(s) = l.strip_prefix("source ") {
                    case.source = s.trim();
                } else if let Some(s) = l.strip_prefix("later ") {
                    case.later = Some(s.trim());
                } else if let Some(s) = l.strip_prefix("heavy ") {
                    case.heavy = Some(s.trim());
                } else {
                    body_start = rest;
                    break;
                }
                rest = t;
            }
            let mut len = 0;
            for l in body_start.split_inclusive('\n') {
                if !l.starts_with(' ') {
                    break;
                }
                len += l.len();
            }
            case.body = &body_start[..len];
            rest = &body_start[len..];
            return Some(case);
        }
    })
}

/// An address as a transcript shows it: window-relative, absolute near the
/// top of the user space or below 1 MiB, else `elsewhere` (where Linux's
/// randomised top-down placement and guest-mm's fixed one differ).
pub struct Shown(pub u64);

impl Shown {
    /// Whether the address is `elsewhere`.
    pub fn elsewhere(&self) -> bool {
        let a = self.0;
        !(WINDOW..WINDOW + WINDOW_LEN).contains(&a) && (0x10_0000..TOP_VIEW).contains(&a)
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        if (WINDOW..WINDOW + WINDOW_LEN).contains(&a) {
            let off = a - WINDOW;
            if off & (PAGE - 1) == 0 {
                write!(f, "W+{}p", off / PAGE)
            } else {
                write!(f, "W+{off:#x}")
            }
        } else if self.elsewhere() {
            write!(f, "elsewhere")
        } else {
            write!(f, "{a:#x}")
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Addr::Abs(a) => write!(f, "{}", Shown(a)),
            Addr::Result(k, 0) => write!(f, "@{k}"),
            Addr::Result(k, o) => write!(f, "@{k}{o:+#x}"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proc != 0 {
            write!(f, "p{} ", self.proc)?;
        }
        match &self.op {
            Op::Mmap {
                addr,
                len,
                prot,
                flags,
                fd,
                off,
            } => {
                write!(f, "mmap {addr} {len:#x} {prot:#x} {flags:#x} {fd} {off:#x}")
            }
            Op::Munmap { addr, len } => write!(f, "munmap {addr} {len:#x}"),
            Op::Mprotect { addr, len, prot } => write!(f, "mprotect {addr} {len:#x} {prot:#x}"),
            Op::Madvise { addr, len, advice } => write!(f, "madvise {addr} {len:#x} {advice}"),
            Op::Mremap {
                old,
                old_len,
                new_len,
                flags,
                new_addr,
            } => {
                write!(
                    f,
                    "mremap {old} {old_len:#x} {new_len:#x} {flags} {new_addr}"
                )
            }
            Op::Mlock { addr, len } => write!(f, "mlock {addr} {len:#x}"),
            Op::Mlock2 { addr, len, flags } => write!(f, "mlock2 {addr} {len:#x} {flags}"),
            Op::Munlock { addr, len } => write!(f, "munlock {addr} {len:#x}"),
            Op::Write { addr, val } => write!(f, "write {addr} {val:#x}"),
            Op::Read { addr } => write!(f, "read {addr}"),
            Op::Fork => write!(f, "fork"),
            Op::Exit => write!(f, "exit"),
            Op::Memfd { flags } => write!(f, "memfd {flags:#x}"),
            Op::Ftruncate { fd, len } => write!(f, "ftruncate {fd} {len:#x}"),
            Op::Fallocate { fd, mode, off, len } => {
                write!(f, "fallocate {fd} {mode} {off:#x} {len:#x}")
            }
            Op::Close { fd } => write!(f, "close {fd}"),
            Op::Open { name, flags, mode } => write!(f, "open {name} {flags:#o} {mode:#o}"),
            Op::Unlink { name } => write!(f, "unlink {name}"),
            Op::FileRead { fd, buf, len, at } => match at {
                Some(p) => write!(f, "pread {fd} {buf} {len:#x} {p:#x}"),
                None => write!(f, "fread {fd} {buf} {len:#x}"),
            },
            Op::FileWrite { fd, buf, len, at } => match at {
                Some(p) => write!(f, "pwrite {fd} {buf} {len:#x} {p:#x}"),
                None => write!(f, "fwrite {fd} {buf} {len:#x}"),
            },
            Op::Lseek { fd, off, whence } => write!(f, "lseek {fd} {off:#x} {whence}"),
            Op::Fcntl { fd, cmd, arg } => write!(f, "fcntl {fd} {cmd} {arg:#x}"),
            Op::HugePool { knob: 0, value } => write!(f, "hugepages {value}"),
            Op::HugePool { value, .. } => write!(f, "overcommit {value}"),
            Op::HugeCounters => write!(f, "hugecounters"),
        }
    }
}

/// A page's contents in a transcript: its non-zero bytes (`{off=val,...}`,
/// at most 8), else a hash.
pub struct Digest<'a>(pub &'a [u8]);

impl fmt::Display for Digest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nonzero = self.0.iter().filter(|&&b| b != 0).count();
        if nonzero <= 8 {
            write!(f, "{{")?;
            let mut first = true;
            for (o, &b) in self.0.iter().enumerate().filter(|&(_, &b)| b != 0) {
                if !first {
                    write!(f, ",")?;
                }
                first = false;
                write!(f, "{o:x}={b:x}")?;
            }
            write!(f, "}}")
        } else {
            let h = self.0.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            write!(f, "#{h:016x}")
        }
    }
}

/// A system call's result: `-NAME` for an errno, else the number.
pub struct CallResult(pub i64);

/// The 2 MiB pool's counters as a transcript shows them: `HugePages_Total`,
/// `_Free`, `_Rsvd`, `_Surp`.
pub struct HugeCountersText(pub [u64; 4]);

impl fmt::Display for HugeCountersText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [t, fr, r, s] = self.0;
        write!(f, "huge total {t} free {fr} rsvd {r} surp {s}")
    }
}

impl fmt::Display for CallResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if !(-4095..0).contains(&r) {
            return write!(f, "{r}");
        }
        let name = match -r {
            1 => "EPERM",
            2 => "ENOENT",
            5 => "EIO",
            6 => "ENXIO",
            9 => "EBADF",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            19 => "ENODEV",
            20 => "ENOTDIR",
            21 => "EISDIR",
            22 => "EINVAL",
            27 => "EFBIG",
            28 => "ENOSPC",
            36 => "ENAMETOOLONG",
            38 => "ENOSYS",
            75 => "EOVERFLOW",
            95 => "EOPNOTSUPP",
            524 => "ENOTSUPP",
            e => return write!(f, "-{e}"),
        };
        write!(f, "-{name}")
    }
}

/// The result of a ring-3 access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Done; the byte read (or written).
    Done(u8),
    /// SIGSEGV with this `si_code` (1 MAPERR, 2 ACCERR).
    Segv(i32),
    /// SIGBUS.
    Bus,
}

/// How an access is shown: `ok` for a write, `=0xNN` for a read.
pub struct AccessResult(pub Access, pub bool);

impl fmt::Display for AccessResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Access::Done(_) if self.1 => write!(f, "ok"),
            Access::Done(v) => write!(f, "={v:#x}"),
            Access::Segv(1) => write!(f, "SIGSEGV(MAPERR)"),
            Access::Segv(2) => write!(f, "SIGSEGV(ACCERR)"),
            Access::Segv(c) => write!(f, "SIGSEGV({c})"),
            Access::Bus => write!(f, "SIGBUS"),
        }
    }
}

/// A region a step created outside the shown areas, named by that step.
#[derive(Debug, Clone, Copy)]
struct Named {
    step: usize,
    proc: usize,
    start: u64,
    len: u64,
}

/// What a runner keeps between steps: each step's address result, which
/// processes live, and the regions named after the steps that made them.
/// Fixed-size, so a guest program can keep it in a shared page.
#[derive(Debug, Clone, Copy)]
pub struct State {
    results: [Option<u64>; MAX_STEPS],
    alive: [bool; MAX_PROCS],
    procs: usize,
    named: [Option<Named>; 16],
}

impl Default for State {
    fn default() -> Self {
        let mut alive = [false; MAX_PROCS];
        alive[0] = true;
        State {
            results: [None; MAX_STEPS],
            alive,
            procs: 1,
            named: [None; 16],
        }
    }
}

impl State {
    /// Whether process `p` lives.
    pub fn alive(&self, p: usize) -> bool {
        p < self.procs && self.alive[p]
    }

    /// The live processes, in order.
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.procs).filter(|&p| self.alive[p])
    }

    /// The number a fork's child gets, if there is room for it.
    pub fn next_proc(&self) -> Option<usize> {
        (self.procs < MAX_PROCS).then_some(self.procs)
    }

    /// `proc` forked: its child is the next process and inherits its
    /// named regions.
    pub fn forked(&mut self, proc: usize) -> usize {
        let child = self.procs;
        self.procs += 1;
        self.alive[child] = true;
        let mut inherited = [None; 16];
        for (slot, n) in inherited.iter_mut().zip(self.named.iter().flatten()) {
            if n.proc == proc {
                *slot = Some(Named { proc: child, ..*n });
            }
        }
        for n in inherited.into_iter().flatten() {
            self.name(n);
        }
        child
    }

    /// `proc` exited.
    pub fn exited(&mut self, proc: usize) {
        self.alive[proc] = false;
    }

    /// A number for `a`, from the results so far.
    pub fn resolve(&self, a: Addr) -> u64 {
        match a {
            Addr::Abs(v) => v,
            Addr::Result(k, off) => {
                let base = self.results.get(k).copied().flatten().unwrap_or(0);
                base.wrapping_add_signed(off)
            }
        }
    }

    fn name(&mut self, n: Named) {
        if let Some(slot) = self.named.iter_mut().find(|s| s.is_none()) {
            *slot = Some(n);
        }
    }

    /// Records the descriptor a `memfd` step `k` returned, for `@k`.
    pub fn opened(&mut self, k: usize, r: i64) {
        if r >= 0 && k < MAX_STEPS {
            self.results[k] = Some(r as u64);
        }
    }

    /// Records what step `k` of `proc` returned when it maps `len` bytes;
    /// a mapping outside the shown areas is named after the step.
    pub fn mapped(&mut self, k: usize, proc: usize, r: i64, len: u64) {
        if (-4095..0).contains(&r) || k >= MAX_STEPS {
            return;
        }
        let a = r as u64;
        self.results[k] = Some(a);
        if Shown(a).elsewhere() {
            for slot in self.named.iter_mut() {
                if slot.is_some_and(|n| {
                    n.proc == proc && n.start < a + len.max(PAGE) && a < n.start + n.len
                }) {
                    *slot = None;
                }
            }
            self.name(Named {
                step: k,
                proc,
                start: a,
                len: len.max(PAGE),
            });
        }
    }

    /// `a` as `proc`'s transcript shows it.
    pub fn show(&self, proc: usize, a: u64) -> ShownIn<'_> {
        ShownIn {
            state: self,
            proc,
            addr: a,
        }
    }

    /// The areas of `proc` a transcript shows: the first MiB, the window,
    /// the top of the user space and the named regions.
    pub fn areas(&self, proc: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
        [
            (0, 0x10_0000),
            (WINDOW, WINDOW + WINDOW_LEN),
            (TOP_VIEW, TASK_SIZE + PAGE),
        ]
        .into_iter()
        .chain(
            self.named
                .iter()
                .flatten()
                .filter(move |n| n.proc == proc)
                .map(|n| (n.start, n.start + n.len)),
        )
    }
}

impl State {
    /// The VMAs of `proc` cut to the areas its transcript shows, area by
    /// area, in address order within each.
    pub fn cut<'a>(
        &'a self,
        proc: usize,
        maps: &'a [MapLine],
    ) -> impl Iterator<Item = MapLine> + 'a {
        self.areas(proc).flat_map(move |(lo, hi)| {
            maps.iter()
                .filter(move |m| m.start < hi && lo < m.end)
                .map(move |m| MapLine {
                    start: m.start.max(lo),
                    end: m.end.min(hi),
                    ..*m
                })
        })
    }
}

/// An address as one process's transcript shows it (named regions by the
/// step that made them).
pub struct ShownIn<'a> {
    state: &'a State,
    proc: usize,
    addr: u64,
}

impl fmt::Display for ShownIn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.addr;
        if Shown(a).elsewhere() {
            for n in self.state.named.iter().flatten() {
                if n.proc == self.proc && (n.start..n.start + n.len).contains(&a) {
                    let off = (a - n.start) / PAGE;
                    return if off == 0 {
                        write!(f, "@{}", n.step)
                    } else {
                        write!(f, "@{}+{off}p", n.step)
                    };
                }
            }
        }
        write!(f, "{}", Shown(a))
    }
}

/// One VMA as the maps listing shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLine {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The `rwxp` column.
    pub perms: [u8; 4],
    /// The offset column.
    pub offset: u64,
}

impl MapLine {
    /// Parses a `/proc/pid/maps` line (`start-end perms offset ...`).
    pub fn parse(line: &str) -> Option<MapLine> {
        let mut f = line.split_whitespace();
        let (range, perms, off) = (f.next()?, f.next()?, f.next()?);
        let (s, e) = range.split_once('-')?;
        let hex = |t: &str| u64::from_str_radix(t, 16).ok();
        Some(MapLine {
            start: hex(s)?,
            end: hex(e)?,
            perms: perms.as_bytes().try_into().ok()?,
            offset: hex(off)?,
        })
    }
}

/// One line of a process's maps, cut to a shown area: `FIRST..LAST perms`
/// (first and last page), and for shared mappings the file offset in hex.
pub struct MapsEntry<'a> {
    /// The state that names addresses.
    pub state: &'a State,
    /// Whose maps.
    pub proc: usize,
    /// The (cut) VMA.
    pub line: MapLine,
}

impl fmt::Display for MapsEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.line;
        let perms = core::str::from_utf8(&l.perms).unwrap_or("????");
        let (first, last) = (
            self.state.show(self.proc, l.start),
            self.state.show(self.proc, l.end - PAGE),
        );
        write!(f, "{first}..{last} {perms}")?;
        if l.perms[3] == b's' {
            write!(f, " {:x}", l.offset)?;
        }
        Ok(())
    }
}
