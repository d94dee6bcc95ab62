//! In-guest write-tracking figures for docs/PERFORMANCE.md: PAGEMAP_SCAN
//! throughput (mostly clean and mostly written 4 KiB pages, sparse and
//! full 2 MiB hugetlb pages), the WP_ASYNC write-fault cost and the cost
//! of a GetWriteWatch call per 1,000 pages, in a guest process and in a
//! Linux process on the host in the same run, with the guest/host ratio.
//!
//! Both sides run the same code (`guest-kernel/user/src/trackbench.rs`,
//! with the GetWriteWatch emulation of `writewatch.rs` over the system
//! calls of `watch.rs`): the guest as its `trackbench` program, the host
//! here, where the `syscall` wrapper below stands in for the guest
//! runtime's. The hugetlb rows need root on the host (it sizes the 2 MiB
//! pool, and restores it after).
//!
//! `cargo bench -p writewatch --bench tracking` (one guest boot, five host
//! rounds: about 30 s here), `-- --rounds N --guest-rounds N`, and
//! `--kernel-mode ring0` for the guest kernel's ring-0 mode.

#[path = "../../guest-kernel/user/src/script.rs"]
#[allow(dead_code)]
mod script;
mod support;
#[path = "../../guest-kernel/user/src/trackbench.rs"]
mod trackbench;
#[path = "../../guest-kernel/user/src/watch.rs"]
mod watch;
#[path = "../../guest-kernel/user/src/writewatch.rs"]
#[allow(dead_code)]
mod writewatch;

use std::collections::BTreeMap;
use std::time::Instant;

use support::median;
use trackbench::{Platform, Sample};

/// Linux's `syscall(nr, args...)`, as the guest runtime's `call6`.
fn call6(nr: u64, a: [u64; 6]) -> i64 {
    // SAFETY: the benchmark's calls pass buffers it owns, as in the guest.
    let r = unsafe { libc::syscall(nr as libc::c_long, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r == -1 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        r
    }
}

const HUGE_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

fn huge_knob(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("{HUGE_SYSFS}/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct Host {
    start: Instant,
    /// `nr_hugepages` before the benchmark, restored after.
    saved_pool: Option<u64>,
}

impl Platform for Host {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn hugetlb_pool(&mut self, pages: u64) -> bool {
        let Some(before) = huge_knob("nr_hugepages") else {
            return false;
        };
        let saved = *self.saved_pool.get_or_insert(before);
        if pages == 0 {
            return std::fs::write(format!("{HUGE_SYSFS}/nr_hugepages"), saved.to_string()).is_ok();
        }
        // Pages others reserved stay theirs: `pages` on top of those.
        let held = huge_knob("resv_hugepages").unwrap_or(0);
        let want = before.max(held + pages);
        std::fs::write(format!("{HUGE_SYSFS}/nr_hugepages"), want.to_string()).is_ok()
            && huge_knob("free_hugepages").is_some_and(|f| f >= pages + held)
    }
}

/// ns per page, by operation, from one host round.
fn host_round() -> BTreeMap<&'static str, f64> {
    let mut host = Host {
        start: Instant::now(),
        saved_pool: None,
    };
    let mut out = BTreeMap::new();
    let failed = trackbench::run(&mut host, &mut |s: Sample| {
        out.insert(s.name, s.ticks as f64 / s.pages as f64);
    });
    assert_eq!(failed, 0, "the host side failed (mask {failed:#x})");
    out
}

/// ns per page, by operation, from `rounds` guest boots.
fn guest_rounds(rounds: usize, kernel_mode: Option<&str>) -> BTreeMap<String, Vec<f64>> {
    let cmdline = match kernel_mode {
        Some(m) => format!("mode=run program=trackbench kernel_mode={m}"),
        None => "mode=run program=trackbench".into(),
    };
    let run = ["--mem", "512M", "--timeout", "1200", "--cmdline", &cmdline];
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in (0..rounds).flat_map(|_| support::guest_bench_records(&run)) {
        out.entry(r.name).or_default().push(r.ns / r.ops as f64);
    }
    out
}

/// A table row: the operation, how its ns per page is shown, the unit.
type Row = (&'static str, fn(f64) -> f64, &'static str);

/// `v` with three significant digits (figures here span eight decades).
fn significant(v: f64) -> String {
    let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.digits$}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let number =
        |name: &str, default: usize| option(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rounds, guest_boots) = (number("--rounds", 5), number("--guest-rounds", 1));
    let kernel_mode = option("--kernel-mode").map(String::as_str);
    let guest = guest_rounds(guest_boots, kernel_mode);
    let hosts: Vec<_> = (0..rounds).map(|_| host_round()).collect();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "tracking: {} pages (64 MiB) per operation; guest {guest_boots} boot(s){}, host Linux {} {rounds} rounds; medians",
        trackbench::PAGES,
        kernel_mode.map(|m| format!(" ({m})")).unwrap_or_default(),
        release.trim()
    );
    println!(
        "  {:<24} {:>12} {:>12} {:>12}  unit",
        "operation", "guest", "host", "time ratio"
    );
    // How each row is shown, from ns per page: scans as pages scanned per
    // second, the fault per fault, GetWriteWatch per 1,000 pages.
    let per_second = |ns: f64| 1e3 / ns;
    let micros = |ns: f64| ns / 1e3;
    let rows: [Row; 7] = [
        ("scan_mostly_clean_4k", per_second, "Mpages/s"),
        ("scan_mostly_written_4k", per_second, "Mpages/s"),
        ("scan_sparse_2m", per_second, "Mpages/s (4 KiB pages)"),
        ("scan_full_2m", per_second, "Mpages/s (4 KiB pages)"),
        ("wp_async_write_fault", micros, "us per fault"),
        ("getwritewatch", |ns| ns, "us per 1,000 pages"),
        ("getwritewatch_reset", |ns| ns, "us per 1,000 pages"),
    ];
    for (name, show, unit) in rows {
        let g = guest.get(name).map(|v| median(&mut v.clone()));
        let mut h: Vec<f64> = hosts.iter().filter_map(|r| r.get(name).copied()).collect();
        let h = (!h.is_empty()).then(|| median(&mut h));
        let cell = |v: Option<f64>| v.map_or("missing".into(), |v| significant(show(v)));
        // How many times as long the guest takes.
        let ratio = match (g, h) {
            (Some(g), Some(h)) => format!("{:.1}x", g / h),
            _ => "-".into(),
        };
        println!(
            "  {name:<24} {:>12} {:>12} {ratio:>12}  {unit}",
            cell(g),
            cell(h)
        );
    }
}
