//! The guest command line (docs/GUEST_ABI.md, "Guest command line"):
//! space-separated `key=value` words and bare flags; unknown words are
//! ignored.

/// What the kernel does after booting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run the `init` user program and exit with its status (default).
    Run,
    /// Run the in-kernel self-tests.
    Selftest,
    /// Run the MM benchmarks and send `bench` records.
    Bench,
    /// Panic (exit code 3).
    Panic,
    /// Take an unexpected kernel page fault (exit code 4).
    Fault,
    /// Spin forever with interrupts off.
    Hang,
    /// Triple-fault.
    Triple,
    /// Write workload for the host's write watch (`workload::run`).
    Workload,
}

/// A `mode=` value that is not one of the known modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownMode<'a>(pub &'a str);

/// The parsed command line.
#[derive(Debug, Clone, Copy)]
pub struct Cmdline {
    /// The raw text.
    pub raw: &'static str,
    /// `cpus=N` (the number of vCPUs), if given and numeric.
    pub cpus: Option<u32>,
    /// `mode=`; `Err` holds an unrecognised value.
    pub mode: Result<Mode, UnknownMode<'static>>,
    /// `mm_check`: run the MM invariant checker after every MM operation.
    pub mm_check: bool,
    /// `program=NAME`: the built-in program `mode=run` runs (default `init`).
    pub program: Option<&'static str>,
    /// `kernel_mode=`: where kernel work runs (`ring0` or `ring3`; the
    /// default follows the platform, see `arch::x86_64::kctx`).
    pub kernel_mode: Option<&'static str>,
    /// `arg=N`: its argument (in `rdi`).
    pub arg: u64,
    /// `tsc_khz=N`: the TSC frequency (the writewatch VMM passes it).
    pub tsc_khz: Option<u64>,
    /// `swap=N`: frames of the swap region (0: no swap, as on a machine
    /// without a swap device).
    pub swap_frames: Option<u64>,
    /// `mmap_min_addr=N`: the lowest address a process may map
    /// (`vm.mmap_min_addr`).
    pub mmap_min_addr: Option<u64>,
    /// `hugepages=N`: huge pages to put in a hugetlb pool at boot, as on
    /// Linux's command line: the 2 MiB pool, or the 1 GiB one after
    /// `hugepagesz=1G` (index 0: 2 MiB, 1: 1 GiB).
    pub hugepages: [Option<u64>; 2],
    /// `hugetlb_free_vmemmap=on`: HVO, the metadata of pooled huge pages
    /// given back (Linux's word).
    pub hugetlb_free_vmemmap: bool,
    /// `soft_dirty=off|on|precise`: soft-dirty tracking (default off, as
    /// on a kernel without `CONFIG_MEM_SOFT_DIRTY`; `precise` keeps VMAs
    /// that differ in `VM_SOFTDIRTY` apart).
    pub soft_dirty: guest_mm::SoftDirty,
}

impl Cmdline {
    /// Parses `raw`. Later words override earlier ones.
    pub fn parse(raw: &'static str) -> Self {
        let mut cmdline = Cmdline {
            raw,
            cpus: None,
            mode: Ok(Mode::Run),
            mm_check: false,
            program: None,
            kernel_mode: None,
            arg: 0,
            tsc_khz: None,
            swap_frames: None,
            mmap_min_addr: None,
            hugepages: [None; 2],
            hugetlb_free_vmemmap: false,
            soft_dirty: guest_mm::SoftDirty::Off,
        };
        let mut huge_size = 0;
        for word in raw.split_ascii_whitespace() {
            match word.split_once('=') {
                Some(("cpus", n)) => cmdline.cpus = n.parse().ok(),
                Some(("mode", m)) => cmdline.mode = parse_mode(m),
                Some(("program", p)) => cmdline.program = Some(p),
                Some(("kernel_mode", m)) => cmdline.kernel_mode = Some(m),
                Some(("arg", a)) => cmdline.arg = a.parse().unwrap_or(0),
                Some(("swap", n)) => cmdline.swap_frames = n.parse().ok(),
                Some(("mmap_min_addr", n)) => cmdline.mmap_min_addr = n.parse().ok(),
                Some(("hugepagesz", "1G" | "1g")) => huge_size = 1,
                Some(("hugepagesz", _)) => huge_size = 0,
                Some(("hugepages", n)) => cmdline.hugepages[huge_size] = n.parse().ok(),
                Some(("hugetlb_free_vmemmap", v)) => cmdline.hugetlb_free_vmemmap = v == "on",
                Some(("soft_dirty", v)) => {
                    cmdline.soft_dirty = match v {
                        "on" => guest_mm::SoftDirty::On,
                        "precise" => guest_mm::SoftDirty::Precise,
                        _ => guest_mm::SoftDirty::Off,
                    }
                }
                Some(("tsc_khz", k)) => cmdline.tsc_khz = k.parse().ok().filter(|&k| k > 0),
                None if word == "mm_check" => cmdline.mm_check = true,
                _ => {}
            }
        }
        cmdline
    }
}

fn parse_mode(value: &'static str) -> Result<Mode, UnknownMode<'static>> {
    Ok(match value {
        "run" => Mode::Run,
        "selftest" => Mode::Selftest,
        "bench" => Mode::Bench,
        "panic" => Mode::Panic,
        "fault" => Mode::Fault,
        "hang" => Mode::Hang,
        "triple" => Mode::Triple,
        "workload" => Mode::Workload,
        other => return Err(UnknownMode(other)),
    })
}
