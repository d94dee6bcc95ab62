//! The host's side: real Linux processes doing the same steps with real
//! system calls. The harness starts this test binary again with
//! `--oracle`; that process (process 0) reads one command per line and
//! answers one line. A `fork` command forks a real child that serves its
//! own pipes; commands for it are routed through its ancestors (a route
//! is the chain of process numbers below the receiver).
//!
//! A ring-3 access that faults is caught the way a signal handler in a
//! real program would: the access is one instruction of a probe whose
//! SIGSEGV/SIGBUS handler moves RIP past it and reports `si_code`. Pages
//! are looked at through `/proc/self/pagemap` and read through
//! `/proc/self/mem` only where present, so looking changes nothing. Run
//! as root, the oracle drops to `nobody` first: root's CAP_SYS_RAWIO
//! would let it map below `mmap_min_addr`, which an ordinary process (and
//! a guest process) cannot. It keeps the host's 2 MiB hugetlb pool knobs
//! open from before, so that cases can size the pool; the harness empties
//! the pool around every case.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::backend::{Backend, MapLine, ScanOut, digest};
use crate::script::{FileName, ScanArgs, UffdCall};

/// The host's 2 MiB hugetlb pool in sysfs.
const HUGE_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// The pool knobs, opened for writing while the oracle is still root (sysfs
/// checks permission at open): knob 0 `nr_hugepages`, 1
/// `nr_overcommit_hugepages`. Forked children inherit them.
static POOL_KNOBS: std::sync::OnceLock<[Option<File>; 2]> = std::sync::OnceLock::new();

fn open_pool_knobs() {
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("{HUGE_SYSFS}/{name}"))
            .ok()
    };
    let _ = POOL_KNOBS.set([open("nr_hugepages"), open("nr_overcommit_hugepages")]);
}

/// Writes a pool knob; 0 or `-errno`.
fn set_pool_knob(knob: usize, value: u64) -> i64 {
    let Some(Some(f)) = POOL_KNOBS.get().map(|k| &k[knob.min(1)]) else {
        // Not root: the pool cannot be set, as for an unprivileged writer.
        return -i64::from(libc::EACCES);
    };
    match f.write_at(value.to_string().as_bytes(), 0) {
        Ok(_) => 0,
        Err(e) => -i64::from(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// The pool's total, free, reserved and surplus pages.
pub fn pool_counters() -> [u64; 4] {
    let read = |name: &str| -> u64 {
        std::fs::read_to_string(format!("{HUGE_SYSFS}/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    [
        read("nr_hugepages"),
        read("free_hugepages"),
        read("resv_hugepages"),
        read("surplus_hugepages"),
    ]
}

/// The pool settings the host had before the first case.
static ORIGINAL_POOL: std::sync::OnceLock<(Option<String>, Option<String>)> =
    std::sync::OnceLock::new();

/// Reservations the pool keeps after [`reset_pool`] because Linux leaked
/// them (docs/CONFORMANCE.md): held until reboot, by as many free pages
/// as the pool had left when it was shrunk. `u64::MAX` until a reset has
/// seen the pool settle.
static LEAKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// The reservations a pool just set to no persistent pages holds when
/// nothing uses it: every page left free and surplus, and no more of them
/// than the reservations that keep them (a leak can leave fewer pages than
/// reservations, when surplus pages were freed while it was held). `None`
/// when a page is in use or kept for another reason: another user.
fn leaked_reservations(c: [u64; 4]) -> Option<u64> {
    let [total, free, rsvd, surplus] = c;
    (total == free && surplus == total && total <= rsvd).then_some(rsvd)
}

/// Writes the host's own pool settings back, with nothing but `open`,
/// `write` and `close` (it runs in a signal handler too).
extern "C" fn restore_pool() {
    let Some((nr, over)) = ORIGINAL_POOL.get() else {
        return;
    };
    let knobs = [
        (
            c"/sys/kernel/mm/hugepages/hugepages-2048kB/nr_overcommit_hugepages",
            over,
        ),
        (
            c"/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            nr,
        ),
    ];
    for (path, v) in knobs {
        let Some(v) = v else { continue };
        let v = v.trim().as_bytes();
        // SAFETY: a NUL-terminated path; `v` lives for the call.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, v.as_ptr().cast(), v.len());
                libc::close(fd);
            }
        }
    }
}

extern "C" fn restore_pool_and_die(sig: libc::c_int) {
    restore_pool();
    // SAFETY: back to the default action, which ends the process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Empties the host's 2 MiB pool (as root; otherwise it stays as it is)
/// and waits until the pages of finished cases are back: each case starts
/// with Linux's boot state, no pool and no overcommit. The host's own
/// settings are restored when the process exits. Returns the pages left
/// that only leaked reservations hold, or `None` when the pool holds
/// anything else.
pub fn reset_pool() -> Option<u64> {
    // The host's own settings come back when the test ends, also when it
    // is interrupted (Ctrl-C, SIGTERM, SIGHUP).
    static SAVED: std::sync::Once = std::sync::Once::new();
    SAVED.call_once(|| {
        let read = |name: &str| std::fs::read_to_string(format!("{HUGE_SYSFS}/{name}")).ok();
        let saved = (read("nr_hugepages"), read("nr_overcommit_hugepages"));
        let _ = ORIGINAL_POOL.set(saved);
        // The handler runs `restore_pool`, then dies of the signal as it
        // would have.
        // SAFETY: `restore_pool` only makes async-signal-safe calls.
        unsafe {
            libc::atexit(restore_pool);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(sig, restore_pool_and_die as *const () as libc::sighandler_t);
            }
        }
    });
    for name in ["nr_overcommit_hugepages", "nr_hugepages"] {
        let _ = std::fs::write(format!("{HUGE_SYSFS}/{name}"), "0");
    }
    // Exiting processes give their pages back within milliseconds; a pool
    // that has not moved for half a second will not (a leaked reservation).
    // Once that residue is known, reaching it again is enough.
    use std::sync::atomic::Ordering::Relaxed;
    let settled = |c| leaked_reservations(c) == Some(LEAKED.load(Relaxed));
    let (mut last, mut still) = (pool_counters(), 0);
    while last[0] != 0 && !settled(last) && still < 50 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let now = pool_counters();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    let leaked = leaked_reservations(last)?;
    if leaked != 0 {
        // As persistent pages, one per leaked reservation, they stay out
        // of the way of a case's overcommit and leave it an empty pool.
        let _ = std::fs::write(format!("{HUGE_SYSFS}/nr_hugepages"), leaked.to_string());
        if pool_counters() != [leaked, leaked, leaked, 0] {
            return None;
        }
    }
    LEAKED.store(leaked, Relaxed);
    Some(leaked)
}

/// Panics unless the host's pool held nothing (or only leaked
/// reservations, which the oracle counts around) when the case started,
/// as every case that sizes or reads it needs.
fn require_usable_pool_at_start(leaked: Option<u64>) -> u64 {
    leaked.unwrap_or_else(|| {
        let [total, free, rsvd, surplus] = pool_counters();
        panic!(
            "the host's 2 MiB hugetlb pool could not be emptied before this case: {total} pages, \
             {free} free, {rsvd} reserved, {surplus} surplus; another user of the pool holds them"
        )
    })
}
use crate::probe;
use crate::script::{Access, PAGE};

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext_t and siginfo_t to an
    // SA_SIGINFO handler; both live for the handler's duration.
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        let gregs = &mut (*uc).uc_mcontext.gregs;
        let rip = gregs[libc::REG_RIP as usize] as u64;
        match probe::fixup(rip) {
            Some(resume) => {
                gregs[libc::REG_RIP as usize] = resume as i64;
                gregs[libc::REG_RAX as usize] = i64::from(sig << 8 | (*info).si_code);
            }
            None => {
                // Not a probe: die of it, as without a handler.
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// A userfaultfd ioctl on `fd` (`api`, `reg`, `unreg`, `wp`) with up to
/// three arguments; answers the result and two output words.
fn uffd_ioctl(fd: i32, kind: &str, a: u64, b: u64, c: u64) -> String {
    let call = match kind {
        "api" => UffdCall::Api { features: a },
        "reg" => UffdCall::Register {
            start: a,
            len: b,
            mode: c,
        },
        "unreg" => UffdCall::Unregister { start: a, len: b },
        "wake" => UffdCall::Wake { start: a, len: b },
        "wp" => UffdCall::Writeprotect {
            start: a,
            len: b,
            mode: c,
        },
        other => panic!("oracle: no uffd ioctl {other}"),
    };
    let (req, mut buf) = call.ioctl();
    // SAFETY: the structures of these ioctls fit in `buf`.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, buf.as_mut_ptr()) };
    let r = if r == -1 { -errno() } else { i64::from(r) };
    let (o1, o2) = call.outputs(&buf);
    format!("{r} {o1} {o2}")
}

/// One Linux process of the oracle and the children it forked.
struct Proc {
    maps: File,
    pagemap: File,
    mem: File,
    children: BTreeMap<usize, (File, BufReader<File>, libc::pid_t)>,
    /// The thread making this process's background write (`write_bg`):
    /// it may wait for a userfaultfd handler while this thread goes on
    /// serving commands (to the handler's process among others).
    bg: Option<std::thread::JoinHandle<String>>,
}

fn open_self() -> (File, File, File) {
    let open = |p: &str| File::open(p).unwrap_or_else(|e| panic!("oracle: {p}: {e}"));
    (
        open("/proc/self/maps"),
        open("/proc/self/pagemap"),
        open("/proc/self/mem"),
    )
}

fn errno() -> i64 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(0)
        .into()
}

/// Makes this process the Linux a guest process is compared with: an
/// unprivileged user, on one CPU, with Linux's usual limits.
fn prepare_process() {
    // SAFETY: plain syscalls on this single-threaded process.
    unsafe {
        // One CPU for the oracle and its children: Linux's reclaim sees
        // only pages on the LRU, and new or lazily freed pages wait in
        // per-CPU batches that only their CPU drains (MADV_PAGEOUT drains
        // its own), so what MADV_PAGEOUT finds would depend on where the
        // earlier calls ran.
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0,
            "affinity"
        );
        // The limits guest-mm assumes (Linux's usual defaults), whatever
        // the harness was started with.
        for res in [libc::RLIMIT_MEMLOCK, libc::RLIMIT_STACK] {
            let lim = libc::rlimit {
                rlim_cur: 8 << 20,
                rlim_max: 8 << 20,
            };
            assert_eq!(libc::setrlimit(res, &lim), 0, "setrlimit");
        }
        if libc::getuid() == 0 {
            let nobody = 65534;
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
            assert_eq!(libc::setgid(nobody), 0, "setgid");
            assert_eq!(libc::setuid(nobody), 0, "setuid");
        }
        // A credential change makes the process undumpable, which would
        // leave its /proc files to root.
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
    }
}

fn install_handlers() {
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches the
        // context the kernel gives it.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        }
    }
}

/// This oracle's own prefix for the tmpfs files of its cases.
fn tmpfs_prefix(oracle: u32) -> String {
    format!("{}ww{oracle}-", crate::script::TMPFS_DIR)
}

/// The first oracle process's pid, which names its tmpfs files (forked
/// children inherit it).
static ORACLE_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The path of case file `name`.
fn tmpfs_path(name: &str) -> std::ffi::CString {
    let pid = *ORACLE_PID.get().expect("set when the oracle starts");
    std::ffi::CString::new(format!("{}{name}", tmpfs_prefix(pid))).expect("no NUL in a name")
}

/// Removes the case files of the oracles `whose` picks by pid.
fn remove_tmpfs_files(whose: impl Fn(u32) -> bool) {
    let Ok(dir) = std::fs::read_dir(crate::script::TMPFS_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("ww"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse().ok());
        if pid.is_some_and(&whose) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The oracle's `main`.
pub fn serve_stdio() -> ! {
    let _ = ORACLE_PID.set(std::process::id());
    open_pool_knobs();
    prepare_process();
    install_handlers();
    let (maps, pagemap, mem) = open_self();
    let mut p = Proc {
        maps,
        pagemap,
        mem,
        children: BTreeMap::new(),
        bg: None,
    };
    // SAFETY: fds 0 and 1 are this process's stdin and stdout pipes.
    let (input, output) = unsafe { (File::from_raw_fd(0), File::from_raw_fd(1)) };
    p.serve(BufReader::new(input), output)
}

impl Proc {
    fn serve(&mut self, mut input: BufReader<File>, mut output: File) -> ! {
        let mut line = String::new();
        loop {
            line.clear();
            if input.read_line(&mut line).unwrap_or(0) == 0 {
                std::process::exit(0);
            }
            let (route, cmd) = line.trim_end().split_once(' ').unwrap_or(("-", ""));
            let answer = if route == "-" {
                if cmd == "exit" {
                    let _ = output.write_all(b"exited\n");
                    // SAFETY: ends this process; nothing to clean up.
                    unsafe { libc::_exit(0) };
                }
                self.execute(cmd)
            } else {
                self.forward(route, cmd)
            };
            output
                .write_all(answer.as_bytes())
                .and_then(|()| output.write_all(b"\n"))
                .expect("oracle reply");
        }
    }

    fn forward(&mut self, route: &str, cmd: &str) -> String {
        let (hop, rest) = route.split_once('.').unwrap_or((route, "-"));
        let hop: usize = hop.parse().expect("route hop");
        let (w, r, pid) = self.children.get_mut(&hop).expect("routed to a live child");
        writeln!(w, "{rest} {cmd}").expect("to child");
        let mut answer = String::new();
        r.read_line(&mut answer).expect("from child");
        if rest == "-" && cmd == "exit" {
            let pid = *pid;
            let mut status = 0;
            // SAFETY: reaps our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            self.children.remove(&hop);
        }
        answer.trim_end().to_string()
    }

    fn execute(&mut self, cmd: &str) -> String {
        let w: Vec<&str> = cmd.split_whitespace().collect();
        let n = |i: usize| -> u64 { w[i].parse::<u64>().expect("number") };
        match w[0] {
            "sys" => {
                let a: Vec<u64> = (2..8).map(n).collect();
                // SAFETY: memory-management calls on this process's own
                // address space; the window is reserved for them.
                let r = unsafe {
                    libc::syscall(n(1) as libc::c_long, a[0], a[1], a[2], a[3], a[4], a[5])
                };
                let r = if r == -1 { -errno() } else { r };
                r.to_string()
            }
            "read" => {
                let mut b = 0u8;
                // SAFETY: the probe catches any fault on this address.
                let r = unsafe { probe::probe_read(n(1), &mut b) };
                probe_answer(r, b)
            }
            "write" => {
                // SAFETY: as for read.
                let r = unsafe { probe::probe_write(n(1), n(2) as u8) };
                probe_answer(r, n(2) as u8)
            }
            "write_bg" => {
                let (va, val) = (n(1), n(2) as u8);
                self.bg = Some(std::thread::spawn(move || {
                    // The fault handler is the process's; a fault goes to
                    // the thread that took it.
                    // SAFETY: as for write.
                    let r = unsafe { probe::probe_write(va, val) };
                    probe_answer(r, val)
                }));
                "started".into()
            }
            "join" => self
                .bg
                .take()
                .expect("a background write")
                .join()
                .expect("background write thread"),
            "uffd_read" => {
                let mut m = [0u8; 32];
                // SAFETY: reads at most 32 bytes into `m`.
                let r = unsafe { libc::read(n(1) as i32, m.as_mut_ptr().cast(), 32) };
                let r = if r < 0 { -errno() } else { r as i64 };
                let word = |o: usize| u64::from_le_bytes(m[o..o + 8].try_into().expect("8 bytes"));
                format!("{r} {} {} {}", m[0], word(8), word(16))
            }
            "fork" => {
                assert!(self.bg.is_none(), "fork with a background write running");
                self.fork(n(1) as usize)
            }
            "maps" => {
                let mut text = String::new();
                self.maps.read_to_string(&mut text).expect("maps");
                let _ = std::io::Seek::rewind(&mut self.maps);
                // One answer line: the maps lines joined with ';'.
                text.lines().collect::<Vec<_>>().join(";")
            }
            "pages" => self.pages(n(1), n(2)),
            "hugepool" => set_pool_knob(n(1) as usize, n(2)).to_string(),
            "memfd" => {
                // SAFETY: a NUL-terminated name; flags as the script gives.
                let r = unsafe { libc::syscall(libc::SYS_memfd_create, c"t".as_ptr(), n(1)) };
                if r == -1 { -errno() } else { r }.to_string()
            }
            "open" => {
                let path = tmpfs_path(w[1]);
                // SAFETY: a NUL-terminated path; flags and mode as given.
                let r = unsafe { libc::open(path.as_ptr(), n(2) as i32, n(3) as libc::c_uint) };
                if r == -1 { -errno() } else { i64::from(r) }.to_string()
            }
            "unlink" => {
                let path = tmpfs_path(w[1]);
                // SAFETY: a NUL-terminated path.
                let r = unsafe { libc::unlink(path.as_ptr()) };
                if r == -1 { -errno() } else { 0 }.to_string()
            }
            "hugecounters" => {
                let c = pool_counters();
                format!("{} {} {} {}", c[0], c[1], c[2], c[3])
            }
            "uffd" => uffd_ioctl(n(1) as i32, w[2], n(3), n(4), n(5)),
            "clear_refs" => {
                let line = format!("{}\n", n(1));
                // SAFETY: a NUL-terminated path.
                let fd = unsafe { libc::open(c"/proc/self/clear_refs".as_ptr(), libc::O_WRONLY) };
                if fd < 0 {
                    (-errno()).to_string()
                } else {
                    // SAFETY: `line` is live for the call.
                    let r = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
                    let r = if r < 0 { -errno() } else { r as i64 };
                    // SAFETY: the descriptor was opened just above.
                    unsafe { libc::close(fd) };
                    r.to_string()
                }
            }
            "pagemap" => {
                let mut raw = vec![0u8; n(2) as usize * 8];
                let r = self.pagemap.read_at(&mut raw, n(1) / PAGE * 8);
                assert_eq!(r.ok(), Some(raw.len()), "pagemap read");
                raw.chunks(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("entry")).to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            "scan" => {
                let a: Vec<u64> = (1..10).map(n).collect();
                let scan = ScanArgs {
                    flags: a[2],
                    mask: a[3],
                    inverted: a[4],
                    anyof: a[5],
                    ret: a[6],
                    max_pages: a[7],
                    vec_len: a[8],
                };
                let mut vec = vec![[0u64; 3]; a[8] as usize];
                let mut arg = scan.words(a[0], a[1], vec.as_mut_ptr() as u64);
                // Our own pagemap, a vector of `vec_len` regions.
                // SAFETY: `arg` is the 96-byte pm_scan_arg, `vec` as long as it says.
                let r = unsafe {
                    libc::ioctl(
                        std::os::fd::AsRawFd::as_raw_fd(&self.pagemap),
                        crate::script::PAGEMAP_SCAN as libc::c_ulong,
                        arg.as_mut_ptr(),
                    )
                };
                let r = if r == -1 { -errno() } else { i64::from(r) };
                let n_out = r.max(0) as usize;
                let regions: Vec<String> = vec[..n_out.min(vec.len())]
                    .iter()
                    .map(|[s, e, c]| format!("{s} {e} {c}"))
                    .collect();
                format!("{r} {};{}", arg[4], regions.join(";"))
            }
            other => panic!("oracle: unknown command {other:?}"),
        }
    }

    fn pages(&mut self, start: u64, end: u64) -> String {
        let count = ((end - start) / PAGE) as usize;
        let mut raw = vec![0u8; count * 8];
        self.pagemap
            .read_exact_at(&mut raw, start / PAGE * 8)
            .expect("pagemap");
        let mut out = Vec::new();
        let mut page = vec![0u8; PAGE as usize];
        for (i, e) in raw.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            let va = start + i as u64 * PAGE;
            if e >> 63 & 1 == 1 {
                self.mem.read_exact_at(&mut page, va).expect("mem");
                out.push(format!("{va}={}", digest(&page)));
            } else if e >> 62 & 1 == 1 {
                out.push(format!("{va}=swap"));
            }
        }
        out.join(";")
    }

    fn fork(&mut self, child: usize) -> String {
        let mut to_child = [0; 2];
        let mut from_child = [0; 2];
        // SAFETY: pipe writes two fds into the arrays.
        unsafe {
            assert_eq!(libc::pipe(to_child.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(from_child.as_mut_ptr()), 0);
        }
        // SAFETY: this process is single-threaded, so the child may go on
        // running Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return (-errno()).to_string();
        }
        let file = |fd: RawFd| {
            // SAFETY: a pipe end we own and hand to exactly one File.
            unsafe { File::from_raw_fd(fd) }
        };
        let close = |fd: RawFd| {
            // SAFETY: closing a pipe end this side does not use.
            unsafe { libc::close(fd) };
        };
        if pid == 0 {
            // Dies with its parent: a case's processes must all be gone
            // before the next case finds the host's hugetlb pool empty.
            // SAFETY: a plain prctl on this process.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            close(to_child[1]);
            close(from_child[0]);
            // The parent's pipes to its other children stay with it.
            self.children.clear();
            let (maps, pagemap, mem) = open_self();
            let mut me = Proc {
                maps,
                pagemap,
                mem,
                children: BTreeMap::new(),
                bg: None,
            };
            me.serve(BufReader::new(file(to_child[0])), file(from_child[1]));
        }
        close(to_child[0]);
        close(from_child[1]);
        self.children.insert(
            child,
            (file(to_child[1]), BufReader::new(file(from_child[0])), pid),
        );
        "0".into()
    }
}

/// The host kernel's release, recorded with every comparison.
pub fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("?".into(), |s| s.trim().to_string())
}

/// The harness's handle on the oracle.
pub struct Oracle {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    parents: Vec<usize>,
    /// The host pool's leaked pages when the case started (`None`: the
    /// pool held pages in use). The oracle adds them to `nr_hugepages`
    /// and takes them off the counters, so a case sees an empty pool.
    pool_leaked: Option<u64>,
}

impl Oracle {
    pub fn start() -> Self {
        // An interrupted run's oracles could not remove their files.
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| {
            remove_tmpfs_files(|pid| {
                // SAFETY: signal 0 only asks whether the process exists.
                let r = unsafe { libc::kill(pid as i32, 0) };
                r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            });
        });
        let pool_leaked = reset_pool();
        let exe = std::env::current_exe().expect("own executable");
        let mut child = Command::new(exe)
            .arg("--oracle")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Linux oracle");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        Oracle {
            child,
            input,
            output,
            parents: vec![0],
            pool_leaked,
        }
    }

    fn route(&self, proc: usize) -> String {
        let mut chain = Vec::new();
        let mut p = proc;
        while p != 0 {
            chain.push(p.to_string());
            p = self.parents[p];
        }
        chain.reverse();
        if chain.is_empty() {
            "-".into()
        } else {
            chain.join(".")
        }
    }

    fn ask(&mut self, proc: usize, cmd: &str) -> String {
        let route = self.route(proc);
        writeln!(self.input, "{route} {cmd}").expect("oracle gone");
        let mut answer = String::new();
        self.output.read_line(&mut answer).expect("oracle gone");
        assert!(!answer.is_empty(), "the oracle died on {cmd:?}");
        answer.trim_end().to_string()
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The files its case left behind.
        let me = self.child.id();
        remove_tmpfs_files(|pid| pid == me);
        reset_pool();
    }
}

impl Backend for Oracle {
    fn syscall(&mut self, proc: usize, nr: u64, a: [u64; 6]) -> i64 {
        if nr == crate::script::SYS_MEMFD_CREATE {
            return self
                .ask(proc, &format!("memfd {}", a[1]))
                .parse()
                .expect("fd");
        }
        if nr == crate::script::SYS_HUGETLB_POOL {
            let leaked = require_usable_pool_at_start(self.pool_leaked);
            // Linux never frees reserved pages: nr_hugepages = N + leaked
            // leaves N usable ones.
            let value = match a[1] {
                0 => a[2].checked_add(leaked).unwrap_or(a[2]),
                _ => a[2],
            };
            let cmd = format!("hugepool {} {value}", a[1]);
            return self.ask(proc, &cmd).parse().expect("pool result");
        }
        let cmd = format!(
            "sys {nr} {} {} {} {} {} {}",
            a[0], a[1], a[2], a[3], a[4], a[5]
        );
        self.ask(proc, &cmd).parse().expect("syscall result")
    }

    fn path_call(&mut self, proc: usize, nr: u64, a: [u64; 6], name: &FileName) -> i64 {
        let cmd = match nr {
            crate::script::SYS_OPEN => format!("open {name} {} {}", a[1], a[2]),
            crate::script::SYS_UNLINK => format!("unlink {name}"),
            _ => panic!("no path call {nr}"),
        };
        self.ask(proc, &cmd).parse().expect("path call result")
    }

    fn access(&mut self, proc: usize, va: u64, write: Option<u8>) -> Access {
        let cmd = match write {
            Some(v) => format!("write {va} {v}"),
            None => format!("read {va}"),
        };
        let answer = self.ask(proc, &cmd);
        access_answer(&answer)
    }

    fn fork(&mut self, proc: usize, child: usize) -> Result<(), i64> {
        let r: i64 = self
            .ask(proc, &format!("fork {child}"))
            .parse()
            .expect("fork result");
        if r < 0 {
            return Err(r);
        }
        assert_eq!(child, self.parents.len());
        self.parents.push(proc);
        Ok(())
    }

    fn exit(&mut self, proc: usize) {
        assert_eq!(self.ask(proc, "exit"), "exited");
    }

    fn maps(&mut self, proc: usize) -> Vec<MapLine> {
        let answer = self.ask(proc, "maps");
        answer.split(';').filter_map(MapLine::parse).collect()
    }

    fn huge_counters(&mut self) -> [u64; 4] {
        let leaked = require_usable_pool_at_start(self.pool_leaked);
        let answer = self.ask(0, "hugecounters");
        let mut c = [0u64; 4];
        for (slot, w) in c.iter_mut().zip(answer.split_whitespace()) {
            *slot = w.parse().expect("counter");
        }
        // Total, free and reserved each carry the leaked pages; surplus
        // does not. Wrapping, as Linux's unsigned `resv` does.
        for slot in &mut c[..3] {
            *slot = (*slot).wrapping_sub(leaked);
        }
        c
    }

    fn pages(&mut self, proc: usize, start: u64, end: u64) -> Vec<(u64, String)> {
        let answer = self.ask(proc, &format!("pages {start} {end}"));
        answer
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|e| {
                let (va, d) = e.split_once('=').expect("page entry");
                (va.parse().expect("va"), d.to_string())
            })
            .collect()
    }

    fn uffd(&mut self, proc: usize, fd: u64, call: UffdCall) -> (i64, u64, u64) {
        let cmd = match call {
            UffdCall::Api { features } => format!("uffd {fd} api {features} 0 0"),
            UffdCall::Register { start, len, mode } => {
                format!("uffd {fd} reg {start} {len} {mode}")
            }
            UffdCall::Unregister { start, len } => format!("uffd {fd} unreg {start} {len} 0"),
            UffdCall::Wake { start, len } => format!("uffd {fd} wake {start} {len} 0"),
            UffdCall::Writeprotect { start, len, mode } => {
                format!("uffd {fd} wp {start} {len} {mode}")
            }
        };
        let answer = self.ask(proc, &cmd);
        let w: Vec<i64> = answer
            .split_whitespace()
            .map(|x| x.parse::<i128>().expect("uffd answer") as i64)
            .collect();
        (w[0], w[1] as u64, w[2] as u64)
    }

    fn clear_refs(&mut self, proc: usize, ty: u64) -> i64 {
        self.ask(proc, &format!("clear_refs {ty}"))
            .parse()
            .expect("clear_refs answer")
    }

    fn pagemap(&mut self, proc: usize, va: u64, n: u64) -> Vec<u64> {
        self.ask(proc, &format!("pagemap {va} {n}"))
            .split_whitespace()
            .map(|x| x.parse().expect("pagemap entry"))
            .collect()
    }

    fn pagemap_scan(&mut self, proc: usize, start: u64, len: u64, s: ScanArgs) -> ScanOut {
        let cmd = format!(
            "scan {start} {len} {} {} {} {} {} {} {}",
            s.flags, s.mask, s.inverted, s.anyof, s.ret, s.max_pages, s.vec_len
        );
        let answer = self.ask(proc, &cmd);
        let (head, rest) = answer.split_once(';').expect("scan answer");
        let (r, walk_end) = head.split_once(' ').expect("scan head");
        let regions = rest
            .split(';')
            .filter(|x| !x.is_empty())
            .map(|x| {
                let v: Vec<u64> = x
                    .split_whitespace()
                    .map(|y| y.parse().expect("region"))
                    .collect();
                [v[0], v[1], v[2]]
            })
            .collect();
        (
            r.parse().expect("scan result"),
            regions,
            walk_end.parse().expect("walk_end"),
        )
    }

    fn write_bg(&mut self, proc: usize, va: u64, val: u8) {
        assert_eq!(self.ask(proc, &format!("write_bg {va} {val}")), "started");
    }

    fn join(&mut self, proc: usize) -> Option<Access> {
        Some(access_answer(&self.ask(proc, "join")))
    }

    fn uffd_read(&mut self, proc: usize, fd: u64) -> (i64, [u64; 3]) {
        let answer = self.ask(proc, &format!("uffd_read {fd}"));
        let w: Vec<i64> = answer
            .split_whitespace()
            .map(|x| x.parse::<i128>().expect("uffd_read answer") as i64)
            .collect();
        (w[0], [w[1] as u64, w[2] as u64, w[3] as u64])
    }
}

/// A probe's result as an access's answer: `ok V`, or `fault R` with the
/// probe's `signal << 8 | si_code`.
fn probe_answer(r: u64, value: u8) -> String {
    if r == 0 {
        format!("ok {value}")
    } else {
        format!("fault {r}")
    }
}

/// An access's answer (`ok V` or `fault R`) as a result.
fn access_answer(answer: &str) -> Access {
    let (kind, v) = answer.split_once(' ').expect("access answer");
    let v: i64 = v.parse().expect("access value");
    match kind {
        "ok" => Access::Done(v as u8),
        _ if v >> 8 == i64::from(libc::SIGBUS) => Access::Bus,
        _ => Access::Segv((v & 0xff) as i32),
    }
}
