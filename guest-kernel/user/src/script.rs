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
/// `ioctl`.
pub const SYS_IOCTL: u64 = 16;
/// `UFFDIO_API`, `UFFDIO_REGISTER`, `UFFDIO_UNREGISTER`,
/// `UFFDIO_WRITEPROTECT` and `PAGEMAP_SCAN` (`_IOWR`/`_IOR` numbers).
pub const UFFDIO_API: u64 = 0xC018_AA3F;
/// See [`UFFDIO_API`].
pub const UFFDIO_REGISTER: u64 = 0xC020_AA00;
/// See [`UFFDIO_API`].
pub const UFFDIO_UNREGISTER: u64 = 0x8010_AA01;
/// See [`UFFDIO_API`].
pub const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;
/// See [`UFFDIO_API`].
pub const UFFDIO_WAKE: u64 = 0x8010_AA02;
/// See [`UFFDIO_API`].
pub const PAGEMAP_SCAN: u64 = 0xC060_6610;

impl UffdCall {
    /// The ioctl number and its structure's words (`uffdio_api`,
    /// `uffdio_register`, `uffdio_range`, `uffdio_writeprotect`).
    pub fn ioctl(self) -> (u64, [u64; 4]) {
        match self {
            UffdCall::Api { features } => (UFFDIO_API, [0xAA, features, 0, 0]),
            UffdCall::Register { start, len, mode } => (UFFDIO_REGISTER, [start, len, mode, 0]),
            UffdCall::Unregister { start, len } => (UFFDIO_UNREGISTER, [start, len, 0, 0]),
            UffdCall::Writeprotect { start, len, mode } => {
                (UFFDIO_WRITEPROTECT, [start, len, mode, 0])
            }
            UffdCall::Wake { start, len } => (UFFDIO_WAKE, [start, len, 0, 0]),
        }
    }

    /// The two words a transcript shows from the structure after the call.
    pub fn outputs(self, w: &[u64; 4]) -> (u64, u64) {
        match self {
            UffdCall::Api { .. } => (w[1], w[2]),
            UffdCall::Register { .. } => (w[3], 0),
            _ => (0, 0),
        }
    }
}

impl ScanArgs {
    /// The `struct pm_scan_arg` words for `[start, start + len)` with the
    /// region vector at `vec` (0 when `vec_len` is 0).
    pub fn words(&self, start: u64, len: u64, vec: u64) -> [u64; 12] {
        [
            96,
            self.flags,
            start,
            start.wrapping_add(len),
            0,
            if self.vec_len == 0 { 0 } else { vec },
            self.vec_len,
            self.max_pages,
            self.inverted,
            self.mask,
            self.anyof,
            self.ret,
        ]
    }
}

/// `userfaultfd`.
pub const SYS_USERFAULTFD: u64 = 323;
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
    pub fn value(self, resolve: &impl Fn(Addr) -> u64) -> u64 {
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
    /// A ring-3 one-byte write the process starts and the script does not
    /// wait for (`write ADDR VAL &`): it may wait for a userfaultfd
    /// handler, which later steps of other processes are. Until its
    /// `join`, the process runs no other step and its state is not shown.
    WriteBg { addr: Addr, val: u8 },
    /// The process's background write has ended: its result.
    Join,
    /// `read(fd, msg, 32)` of a userfaultfd: one `uffd_msg`.
    UffdRead { fd: FdArg },
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
    /// `userfaultfd(flags)`.
    Userfaultfd { flags: u64 },
    /// An ioctl of the userfaultfd `fd`.
    Uffd { fd: FdArg, req: UffdReq },
    /// Reads the pagemap entries of `pages` pages from `addr`.
    Pagemap { addr: Addr, pages: u64 },
    /// Writes `ty` and a newline to `/proc/self/clear_refs` (4: clear
    /// soft-dirty); the result of the write.
    ClearRefs { ty: u64 },
    /// `ioctl(pagemap, PAGEMAP_SCAN)` over `[addr, addr + len)`, with a
    /// vector of `scan.vec_len` regions (0: none).
    PagemapScan {
        addr: Addr,
        len: u64,
        scan: ScanArgs,
    },
    /// `VirtualAlloc(.., MEM_WRITE_WATCH)` of `len` bytes (at `addr`, or
    /// anywhere for 0): see `writewatch.rs`.
    WwAlloc { addr: Addr, len: u64 },
    /// `GetWriteWatch(flags, addr, len, .., count)`.
    GetWriteWatch {
        flags: u64,
        addr: Addr,
        len: u64,
        count: u64,
    },
    /// `ResetWriteWatch(addr, len)`.
    ResetWriteWatch { addr: Addr, len: u64 },
}

/// A userfaultfd ioctl of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdReq {
    /// `UFFDIO_API` with these features.
    Api { features: u64 },
    /// `UFFDIO_REGISTER`.
    Register { addr: Addr, len: u64, mode: u64 },
    /// `UFFDIO_UNREGISTER`.
    Unregister { addr: Addr, len: u64 },
    /// `UFFDIO_WRITEPROTECT`.
    Writeprotect { addr: Addr, len: u64, mode: u64 },
    /// `UFFDIO_WAKE`.
    Wake { addr: Addr, len: u64 },
}

/// A [`UffdReq`] with its addresses resolved, as a backend makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdCall {
    /// `UFFDIO_API`.
    Api { features: u64 },
    /// `UFFDIO_REGISTER`.
    Register { start: u64, len: u64, mode: u64 },
    /// `UFFDIO_UNREGISTER`.
    Unregister { start: u64, len: u64 },
    /// `UFFDIO_WRITEPROTECT`.
    Writeprotect { start: u64, len: u64, mode: u64 },
    /// `UFFDIO_WAKE`.
    Wake { start: u64, len: u64 },
}

impl UffdReq {
    /// The call with addresses resolved.
    pub fn resolved(self, resolve: impl Fn(Addr) -> u64) -> UffdCall {
        match self {
            UffdReq::Api { features } => UffdCall::Api { features },
            UffdReq::Register { addr, len, mode } => UffdCall::Register {
                start: resolve(addr),
                len,
                mode,
            },
            UffdReq::Unregister { addr, len } => UffdCall::Unregister {
                start: resolve(addr),
                len,
            },
            UffdReq::Writeprotect { addr, len, mode } => UffdCall::Writeprotect {
                start: resolve(addr),
                len,
                mode,
            },
            UffdReq::Wake { addr, len } => UffdCall::Wake {
                start: resolve(addr),
                len,
            },
        }
    }
}

/// `UFFD_EVENT_PAGEFAULT`.
const UFFD_EVENT_PAGEFAULT: u64 = 0x12;

/// What a `uffd_read` step read: `pagefault FLAGS ADDR` (FLAGS `write`,
/// `wp` joined by `|`, or `read`), another event by number, or the error.
pub struct UffdMsgText<'a> {
    pub state: &'a State,
    pub proc: usize,
    /// The read's result.
    pub r: i64,
    /// The message's event byte, `pagefault.flags` and `.address`.
    pub msg: [u64; 3],
}

impl fmt::Display for UffdMsgText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [event, flags, address] = self.msg;
        if self.r != 32 {
            return write!(f, "{}", CallResult(self.r));
        }
        if event != UFFD_EVENT_PAGEFAULT {
            return write!(f, "event {event:#x}");
        }
        let names: &[(u64, &str)] = &[(1, "write"), (2, "wp"), (4, "minor")];
        let mut first = true;
        write!(f, "pagefault ")?;
        for &(bit, name) in names {
            if flags & bit != 0 {
                write!(f, "{}{name}", if first { "" } else { "|" })?;
                first = false;
            }
        }
        if flags & !7 != 0 {
            write!(f, "{}{:#x}", if first { "" } else { "|" }, flags & !7)?;
            first = false;
        }
        if first {
            write!(f, "read")?;
        }
        write!(f, " {}", self.state.show(self.proc, address))
    }
}

/// Checks the background writes of a script: a process that started one
/// (`write ADDR VAL &`) runs nothing but its `join` until then, joins only
/// a write it started, and every write is joined before the end. The
/// error names the step.
pub fn check_background(steps: &[Step]) -> Result<(), (usize, &'static str)> {
    let mut busy = [false; MAX_PROCS];
    for (k, step) in steps.iter().enumerate() {
        let Some(b) = busy.get_mut(step.proc) else {
            continue;
        };
        match step.op {
            Op::Join if !*b => return Err((k, "join without a background write")),
            Op::Join => *b = false,
            _ if *b => {
                return Err((
                    k,
                    "a step of a process whose background write is not joined",
                ));
            }
            Op::WriteBg { .. } => *b = true,
            _ => {}
        }
    }
    match busy.iter().position(|&b| b) {
        Some(_) => Err((steps.len(), "a background write is never joined")),
        None => Ok(()),
    }
}

/// The `struct pm_scan_arg` fields of a `pagemap_scan` step other than
/// the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanArgs {
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// `category_mask`.
    pub mask: u64,
    /// `category_inverted`.
    pub inverted: u64,
    /// `category_anyof_mask`.
    pub anyof: u64,
    /// `return_mask`.
    pub ret: u64,
    /// `max_pages`.
    pub max_pages: u64,
    /// The vector's length in regions (0: no vector).
    pub vec_len: u64,
}

/// The features of `UFFDIO_API`'s answer a transcript shows: those the
/// guest implements (Linux offers more, docs/CONFORMANCE.md).
pub const SHOWN_UFFD_FEATURES: u64 =
    (1 << 1) | (1 << 5) | (1 << 7) | (1 << 12) | (1 << 13) | (1 << 15);
/// The ioctl bits a transcript shows: `_UFFDIO_REGISTER`,
/// `_UFFDIO_UNREGISTER`, `_UFFDIO_WRITEPROTECT` and `_UFFDIO_API`.
pub const SHOWN_UFFD_IOCTLS: u64 = 1 | 2 | (1 << 6) | (1 << 63);

/// A page's pagemap entry in a transcript: `P` present, `S` swapped or a
/// marker, `F` file or shared, `X` mapped once, `W` uffd-wp, `G` guard,
/// `D` soft-dirty; `-` for none of them.
pub struct PagemapText(pub u64);

impl fmt::Display for PagemapText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = [
            (63, 'P'),
            (62, 'S'),
            (61, 'F'),
            (56, 'X'),
            (57, 'W'),
            (58, 'G'),
            (55, 'D'),
        ];
        let mut any = false;
        for (b, c) in bits {
            if self.0 >> b & 1 != 0 {
                write!(f, "{c}")?;
                any = true;
            }
        }
        if !any {
            write!(f, "-")?;
        }
        Ok(())
    }
}

/// The result of a userfaultfd ioctl in a transcript: `UFFDIO_API`'s
/// features and ioctls (zeroed by Linux on an error), `UFFDIO_REGISTER`'s
/// ioctls on success, else the result alone.
pub struct UffdResultText {
    /// The request.
    pub req: UffdReq,
    /// The call's result.
    pub r: i64,
    /// First output word (features, or the range's ioctls).
    pub a: u64,
    /// Second output word (the API's ioctls).
    pub b: u64,
}

impl fmt::Display for UffdResultText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.req {
            UffdReq::Api { .. } => write!(
                f,
                "{} features={:#x} ioctls={:#x}",
                CallResult(self.r),
                self.a & SHOWN_UFFD_FEATURES,
                self.b & SHOWN_UFFD_IOCTLS
            ),
            UffdReq::Register { .. } if self.r == 0 => {
                write!(f, "0 ioctls={:#x}", self.a & SHOWN_UFFD_IOCTLS)
            }
            _ => write!(f, "{}", CallResult(self.r)),
        }
    }
}

/// Pagemap entries in a transcript, one [`PagemapText`] per page.
pub struct PagemapLine<'a>(pub &'a [u64]);

impl fmt::Display for PagemapLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &e) in self.0.iter().enumerate() {
            write!(f, "{}{}", if i == 0 { "" } else { " " }, PagemapText(e))?;
        }
        Ok(())
    }
}

/// The most regions a `pagemap_scan` step may ask for, and the most pages
/// a `pagemap` step shows.
pub const MAX_SCAN_REGIONS: u64 = 64;

/// A `PAGEMAP_SCAN` result in a transcript: the result, `walk_end` and
/// the regions, addresses shown as the state names them.
pub struct ScanText<'a> {
    /// The names of addresses.
    pub state: &'a State,
    /// The process that scanned.
    pub proc: usize,
    /// The call's result.
    pub r: i64,
    /// `walk_end`.
    pub walk_end: u64,
    /// The regions: start, end, categories.
    pub regions: &'a [[u64; 3]],
}

impl fmt::Display for ScanText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |a| self.state.show(self.proc, a);
        write!(f, "{} walk_end={}", CallResult(self.r), show(self.walk_end))?;
        for &[a, b, c] in self.regions {
            write!(f, " {}..{}:{}", show(a), show(b), CategoriesText(c))?;
        }
        Ok(())
    }
}

/// `PAGEMAP_SCAN` categories in a transcript, by name.
pub struct CategoriesText(pub u64);

const CATEGORIES: &[(&str, u64)] = &[
    ("wpallowed", 1 << 0),
    ("written", 1 << 1),
    ("file", 1 << 2),
    ("present", 1 << 3),
    ("swapped", 1 << 4),
    ("pfnzero", 1 << 5),
    ("huge", 1 << 6),
    ("soft_dirty", 1 << 7),
    ("guard", 1 << 8),
];

impl fmt::Display for CategoriesText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for &(n, b) in CATEGORIES {
            if self.0 & b != 0 {
                write!(f, "{}{n}", if first { "" } else { "|" })?;
                first = false;
            }
        }
        if first {
            write!(f, "0")?;
        }
        Ok(())
    }
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
            Op::Userfaultfd { flags } => (SYS_USERFAULTFD, [flags, 0, 0, 0, 0, 0]),
            Op::Write { .. }
            | Op::WriteBg { .. }
            | Op::Join
            | Op::UffdRead { .. }
            | Op::Read { .. }
            | Op::Fork
            | Op::Exit
            | Op::HugeCounters
            | Op::Uffd { .. }
            | Op::Pagemap { .. }
            | Op::ClearRefs { .. }
            | Op::PagemapScan { .. }
            | Op::WwAlloc { .. }
            | Op::GetWriteWatch { .. }
            | Op::ResetWriteWatch { .. } => {
                return None;
            }
        })
    }

    /// Whether the call returns a new descriptor (shown as `fd`: numbers
    /// differ between a guest and a Linux process; `@k` names it).
    pub fn opens(&self) -> bool {
        matches!(
            self,
            Op::Memfd { .. } | Op::Open { .. } | Op::Userfaultfd { .. }
        )
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
            Op::Mmap { len, .. } | Op::Mremap { new_len: len, .. } | Op::WwAlloc { len, .. } => {
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
const UFFD_OPEN: &[(&str, u64)] = &[
    ("user_mode_only", 1),
    ("nonblock", 0o4000),
    ("cloexec", 0o2000000),
];
const UFFD_FEATURES: &[(&str, u64)] = &[
    ("event_fork", 1 << 1),
    ("missing_hugetlbfs", 1 << 4),
    ("missing_shmem", 1 << 5),
    ("sigbus", 1 << 7),
    ("wp_hugetlbfs_shmem", 1 << 12),
    ("wp_unpopulated", 1 << 13),
    ("wp_async", 1 << 15),
];
const UFFD_MODES: &[(&str, u64)] = &[("missing", 1), ("wp", 2), ("minor", 4)];
const UFFD_WP_MODES: &[(&str, u64)] = &[("wp", 1), ("dontwake", 2)];
const SCAN_FLAGS: &[(&str, u64)] = &[("wp_matching", 1), ("check_wpasync", 2)];
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
    let mut w = [""; 11];
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
        "write" if opt(3) == Some("&") => Op::WriteBg {
            addr: addr(arg(1)?)?,
            val: num(arg(2)?)? as u8,
        },
        "write" => Op::Write {
            addr: addr(arg(1)?)?,
            val: num(arg(2)?)? as u8,
        },
        "join" => Op::Join,
        "uffd_read" => Op::UffdRead {
            fd: fd_arg(arg(1)?)?,
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
        "userfaultfd" => Op::Userfaultfd {
            flags: opt(1).map_or(Ok(0), |a| flags(a, UFFD_OPEN))?,
        },
        "uffd_api" => Op::Uffd {
            fd: fd_arg(arg(1)?)?,
            req: UffdReq::Api {
                features: opt(2).map_or(Ok(0), |a| flags(a, UFFD_FEATURES))?,
            },
        },
        "uffd_register" => Op::Uffd {
            fd: fd_arg(arg(1)?)?,
            req: UffdReq::Register {
                addr: addr(arg(2)?)?,
                len: num(arg(3)?)?,
                mode: flags(arg(4)?, UFFD_MODES)?,
            },
        },
        "uffd_unregister" => Op::Uffd {
            fd: fd_arg(arg(1)?)?,
            req: UffdReq::Unregister {
                addr: addr(arg(2)?)?,
                len: num(arg(3)?)?,
            },
        },
        "uffd_wake" => Op::Uffd {
            fd: fd_arg(arg(1)?)?,
            req: UffdReq::Wake {
                addr: addr(arg(2)?)?,
                len: num(arg(3)?)?,
            },
        },
        "uffd_wp" => Op::Uffd {
            fd: fd_arg(arg(1)?)?,
            req: UffdReq::Writeprotect {
                addr: addr(arg(2)?)?,
                len: num(arg(3)?)?,
                mode: flags(arg(4)?, UFFD_WP_MODES)?,
            },
        },
        "pagemap" => {
            let (addr, pages) = range()?;
            if pages > MAX_SCAN_REGIONS {
                return Err("too many pages");
            }
            Op::Pagemap { addr, pages }
        }
        "clear_refs" => Op::ClearRefs {
            ty: opt(1).map_or(Ok(4), num)?,
        },
        "pagemap_scan" => {
            let (addr, len) = range()?;
            let cats = |i: usize| opt(i).map_or(Ok(0), |a| flags(a, CATEGORIES));
            let op = Op::PagemapScan {
                addr,
                len,
                scan: ScanArgs {
                    flags: opt(3).map_or(Ok(0), |a| flags(a, SCAN_FLAGS))?,
                    mask: cats(4)?,
                    inverted: cats(5)?,
                    anyof: cats(6)?,
                    ret: cats(7)?,
                    max_pages: opt(8).map_or(Ok(0), num)?,
                    vec_len: opt(9).map_or(Ok(MAX_SCAN_REGIONS), num)?,
                },
            };
            if matches!(op, Op::PagemapScan { scan, .. } if scan.vec_len > MAX_SCAN_REGIONS) {
                return Err("too many regions");
            }
            op
        }
        "ww_alloc" => {
            let (addr, len) = range()?;
            Op::WwAlloc { addr, len }
        }
        "getwritewatch" => {
            let count = num(arg(4)?)?;
            if count > MAX_SCAN_REGIONS {
                return Err("too many addresses");
            }
            Op::GetWriteWatch {
                flags: flags(arg(1)?, &[("reset", 1)])?,
                addr: addr(arg(2)?)?,
                len: num(arg(3)?)?,
                count,
            }
        }
        "resetwritewatch" => {
            let (addr, len) = range()?;
            Op::ResetWriteWatch { addr, len }
        }
        _ => return Err("unknown operation"),
    };
    Ok(Step { proc, op })
}

/// One case of a case table, or one scenario (`resources/scenarios/`,
/// docs/SCENARIOS.md: the same language, plus what it requires and the
/// results its steps must give).
#[derive(Debug, Clone, Copy)]
pub struct Case<'a> {
    /// Its name (`case NAME` or `scenario NAME`).
    pub name: &'a str,
    /// Where it comes from (`source ...`).
    pub source: &'a str,
    /// Why it differs from Linux for now (`later ...`), if it does.
    pub later: Option<&'a str>,
    /// Why it is too slow for an emulated ring 0 (`heavy ...`), if it is:
    /// runs only where kernel work is native (the ring-3 kernel mode here).
    pub heavy: Option<&'a str>,
    /// What a run needs from the kernel beyond the basics (`requires
    /// WORD...`, e.g. `hugetlb`), space-separated; empty if nothing.
    pub requires: &'a str,
    /// The step lines, and the expected results (`= TEXT` lines, each
    /// after the step it is about).
    pub body: &'a str,
}

impl<'a> Case<'a> {
    /// The body's lines without comments, blank lines or the indentation.
    fn lines(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.body
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
    }

    /// The steps, in order.
    pub fn steps(&self) -> impl Iterator<Item = Result<Step, ParseError>> + 'a {
        self.lines().filter(|l| !l.starts_with('=')).map(parse_step)
    }

    /// The expected results: `(k, text)` says step `k` (from 0) must give
    /// `text`, as the transcript shows a result after ` = `. An `=` line
    /// before any step is `(usize::MAX, text)`, which no step matches.
    pub fn expected(&self) -> impl Iterator<Item = (usize, &'a str)> + 'a {
        let mut step = usize::MAX;
        self.lines().filter_map(move |l| match l.strip_prefix('=') {
            Some(text) => Some((step, text.trim())),
            None => {
                step = step.wrapping_add(1);
                None
            }
        })
    }
}

/// The cases of a table (`resources/conformance/cases.txt`): `case NAME`
/// (or `scenario NAME`), `source ...`, optionally `later ...`, `heavy ...`
/// and `requires ...`, then the steps, indented; lines starting with `#`
/// are comments.
pub fn cases(text: &str) -> impl Iterator<Item = Case<'_>> {
    let mut rest = text;
    core::iter::from_fn(move || {
        loop {
            let (line, tail) = rest.split_once('\n').unwrap_or((rest, ""));
            if line.is_empty() && tail.is_empty() {
                return None;
            }
            rest = tail;
            let Some(name) = line
                .strip_prefix("case ")
                .or_else(|| line.strip_prefix("scenario "))
            else {
                continue;
            };
            let mut case = Case {
                name: name.trim(),
                source: "",
                later: None,
                heavy: None,
                requires: "",
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
                } else if let Some(s) = l.strip_prefix("requires ") {
                    case.requires = s.split('#').next().unwrap_or("").trim();
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
            Op::WriteBg { addr, val } => write!(f, "write {addr} {val:#x} &"),
            Op::Join => write!(f, "join"),
            Op::UffdRead { fd } => write!(f, "uffd_read {fd}"),
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
            Op::Userfaultfd { flags } => write!(f, "userfaultfd {flags:#x}"),
            Op::Uffd { fd, req } => match req {
                UffdReq::Api { features } => write!(f, "uffd_api {fd} {features:#x}"),
                UffdReq::Register { addr, len, mode } => {
                    write!(f, "uffd_register {fd} {addr} {len:#x} {mode}")
                }
                UffdReq::Unregister { addr, len } => {
                    write!(f, "uffd_unregister {fd} {addr} {len:#x}")
                }
                UffdReq::Writeprotect { addr, len, mode } => {
                    write!(f, "uffd_wp {fd} {addr} {len:#x} {mode}")
                }
                UffdReq::Wake { addr, len } => write!(f, "uffd_wake {fd} {addr} {len:#x}"),
            },
            Op::Pagemap { addr, pages } => write!(f, "pagemap {addr} {pages}"),
            Op::ClearRefs { ty } => write!(f, "clear_refs {ty}"),
            Op::WwAlloc { addr, len } => write!(f, "ww_alloc {addr} {len:#x}"),
            Op::GetWriteWatch {
                flags,
                addr,
                len,
                count,
            } => write!(f, "getwritewatch {flags} {addr} {len:#x} {count}"),
            Op::ResetWriteWatch { addr, len } => write!(f, "resetwritewatch {addr} {len:#x}"),
            Op::PagemapScan { addr, len, scan: s } => write!(
                f,
                "pagemap_scan {addr} {len:#x} {} {:#x} {:#x} {:#x} {:#x} {} {}",
                s.flags, s.mask, s.inverted, s.anyof, s.ret, s.max_pages, s.vec_len
            ),
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
    /// Each process's write-watch allocations (GetWriteWatch steps).
    pub watch: [crate::writewatch::WriteWatch; MAX_PROCS],
    /// Which processes have a background write not joined yet.
    busy: [bool; MAX_PROCS],
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
            watch: Default::default(),
            busy: [false; MAX_PROCS],
        }
    }
}

impl State {
    /// Whether process `p` lives.
    pub fn alive(&self, p: usize) -> bool {
        p < self.procs && self.alive[p]
    }

    /// Whether process `p` has a background write not joined yet (its
    /// memory may change under a reader: its state is not shown).
    pub fn busy(&self, p: usize) -> bool {
        self.busy.get(p).copied().unwrap_or(false)
    }

    /// Process `p` started (`true`) or joined its background write.
    pub fn set_busy(&mut self, p: usize, busy: bool) {
        if let Some(b) = self.busy.get_mut(p) {
            *b = busy;
        }
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
        // The child has the parent's memory, the tables of its
        // allocations included (but not their registration).
        self.watch[child] = self.watch[proc];
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
