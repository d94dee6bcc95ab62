//! Self-tests of boot-time services: heap, memory map, command line, frames.

use super::{TestResult, ensure};
use crate::arch::x86_64::paging::{KERNEL_VMA, phys_to_virt};
use crate::boot::{self, cmdline::Cmdline, cmdline::Mode, memmap::RegionKind};
use crate::memory::{frames, heap};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Size of the large heap allocation (several pages; kept small because
/// ring-0 code is emulated on kvm_pvm at about a microsecond per
/// instruction, so every byte touched costs real time).
const BIG: usize = 64 << 10;

pub fn heap() -> TestResult {
    let before = heap::used();
    let mut v: Vec<u64> = Vec::new();
    for i in 0..1000u64 {
        v.push(i * 3);
    }
    ensure!(
        v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3),
        "vector contents wrong"
    );
    let big = alloc::vec![0xa5u8; BIG];
    ensure!(
        big.iter().step_by(509).all(|&b| b == 0xa5) && big[BIG - 1] == 0xa5,
        "large allocation contents wrong"
    );
    let boxed = Box::new([7u32; 64]);
    ensure!(boxed.iter().sum::<u32>() == 7 * 64, "boxed array wrong");
    ensure!(
        heap::used() >= before + BIG,
        "heap accounting missed the large block"
    );
    drop((v, big, boxed));
    ensure!(
        heap::used() == before,
        "heap leaked: {} bytes before, {} after",
        before,
        heap::used()
    );
    Ok(())
}

pub fn memmap() -> TestResult {
    let map = &boot::info().memmap;
    ensure!(!map.is_empty(), "the memory map is empty");
    ensure!(
        map.ram().count() >= 2,
        "expected RAM below and above 1 MiB, got {} RAM regions",
        map.ram().count()
    );
    let mut regions: Vec<_> = map.regions().collect();
    regions.sort_by_key(|r| r.start);
    for pair in regions.windows(2) {
        ensure!(
            pair[0].end() <= pair[1].start,
            "regions overlap: {:x?} {:x?}",
            pair[0],
            pair[1]
        );
    }
    ensure!(
        regions
            .iter()
            .any(|r| r.kind == RegionKind::Ram && r.start == 0),
        "no RAM region at address 0"
    );
    let kernel = crate::arch::x86_64::paging::virt_to_phys(basic_marker as *const () as u64);
    ensure!(
        map.ram().any(|r| (r.start..r.end()).contains(&kernel)),
        "kernel text at {kernel:#x} is not in RAM"
    );
    ensure!(
        map.ram_bytes() >= 8 << 20,
        "only {} bytes of RAM",
        map.ram_bytes()
    );
    // The top of RAM is direct-mapped and readable.
    let top = map.ram().map(|r| r.end()).max().unwrap_or(0);
    let last = crate::arch::x86_64::extable::probe_read_u64(phys_to_virt(top - 8));
    ensure!(
        last.is_ok(),
        "last RAM word at {:#x} not direct-mapped",
        top - 8
    );
    ensure!(
        (basic_marker as *const () as u64) >= KERNEL_VMA,
        "kernel not in the higher half"
    );
    Ok(())
}

/// A function whose address locates the kernel text.
fn basic_marker() {}

pub fn cmdline() -> TestResult {
    let c = Cmdline::parse("cpus=4 foo mode=selftest mm_check x=y mode=panic");
    ensure!(c.cpus == Some(4), "cpus = {:?}", c.cpus);
    ensure!(
        c.mode == Ok(Mode::Panic),
        "later mode= must win, got {:?}",
        c.mode
    );
    ensure!(c.mm_check, "mm_check flag missed");
    let d = Cmdline::parse("");
    ensure!(
        d.cpus.is_none() && d.mode == Ok(Mode::Run) && !d.mm_check,
        "defaults wrong: {d:?}"
    );
    ensure!(
        Cmdline::parse("mode=bogus").mode.is_err(),
        "unknown mode accepted"
    );
    let real = boot::info().cmdline;
    ensure!(
        real.mode == Ok(Mode::Selftest),
        "real cmdline {:?} not parsed as selftest",
        real.raw
    );
    Ok(())
}

pub fn acpi() -> TestResult {
    let info = boot::info();
    ensure!(
        info.acpi_cpus.is_some(),
        "no CPUs from the ACPI MADT (rsdp_paddr missing, or tables unusable)"
    );
    ensure!(
        info.cmdline.cpus.is_none() || info.cmdline.cpus == info.acpi_cpus,
        "cpus= says {:?}, the MADT {:?}",
        info.cmdline.cpus,
        info.acpi_cpus
    );
    Ok(())
}

pub fn frames() -> TestResult {
    let before = frames::in_use();
    let a = frames::alloc_zeroed();
    let b = frames::alloc_zeroed();
    let (Some(a), Some(b)) = (a, b) else {
        return Err(super::Failure("out of frames".into()));
    };
    ensure!(
        a != b && a % 4096 == 0 && b % 4096 == 0,
        "bad frames {a:#x} {b:#x}"
    );
    ensure!(a >= 1 << 20, "frame {a:#x} below 1 MiB");
    // SAFETY: both frames were just allocated and are direct-mapped.
    let zero = unsafe {
        (*(phys_to_virt(a) as *const [u64; 512]))
            .iter()
            .all(|&w| w == 0)
    };
    ensure!(zero, "alloc_zeroed frame not zero");
    ensure!(frames::in_use() == before + 2, "in-use count off");
    // SAFETY: the frames are ours and unused.
    unsafe {
        frames::free(a);
        frames::free(b);
    }
    ensure!(frames::in_use() == before, "free did not return frames");
    let c = frames::alloc();
    ensure!(
        c == Some(b),
        "freed frame not reused first: {c:x?} vs {b:#x}"
    );
    if let Some(c) = c {
        // SAFETY: as above.
        unsafe { frames::free(c) };
    }
    Ok(())
}
