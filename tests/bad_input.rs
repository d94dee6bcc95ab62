//! Every bad input named in the foundation issue gets one clear line on
//! stderr and a non-zero exit, never a panic.

mod common;

use common::{assert_one_line_error, huge_pages, kvm_available, run, writewatch};
use writewatch::exit_status;
use writewatch::guest_image::GUEST_KERNEL;

const VMM_ERROR: i32 = exit_status::VMM_ERROR as i32;
const USAGE: i32 = 2;

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    file
}

/// The built-in kernel with its PVH note's type changed, so no PVH entry
/// remains but everything else is a valid kernel.
fn kernel_without_pvh_note() -> Vec<u8> {
    let mut image = GUEST_KERNEL.to_vec();
    let mut found = 0;
    // An ELF note: namesz=4, descsz, type=18, "Xen\0".
    for at in 0..image.len().saturating_sub(16) {
        if image[at..at + 4] == 4u32.to_le_bytes()
            && image[at + 8..at + 12] == 18u32.to_le_bytes()
            && &image[at + 12..at + 16] == b"Xen\0"
        {
            image[at + 8..at + 12].copy_from_slice(&0x7777u32.to_le_bytes());
            found += 1;
        }
    }
    assert_eq!(
        found, 1,
        "the built-in kernel should have exactly one PVH note"
    );
    image
}

#[test]
fn missing_kernel_file() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--kernel", "/nonexistent/kernel.elf"]);
    assert_one_line_error(
        &out,
        VMM_ERROR,
        "cannot read kernel /nonexistent/kernel.elf",
    );
}

#[test]
fn unreadable_kernel_path_is_a_directory() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["run", "--kernel", dir.path().to_str().unwrap()]);
    assert_one_line_error(&out, VMM_ERROR, "cannot read kernel");
}

#[test]
fn kernel_that_is_not_an_elf() {
    if !kvm_available() {
        return;
    }
    let file = temp_file(b"#!/bin/sh\necho this is not a kernel\n");
    let out = run(&["run", "--kernel", file.path().to_str().unwrap()]);
    assert_one_line_error(&out, VMM_ERROR, "is not an ELF file");
}

#[test]
fn truncated_elf() {
    if !kvm_available() {
        return;
    }
    let file = temp_file(&GUEST_KERNEL[..200]);
    let out = run(&["run", "--kernel", file.path().to_str().unwrap()]);
    assert_one_line_error(&out, VMM_ERROR, "malformed ELF");
}

#[test]
fn elf_without_pvh_note() {
    if !kvm_available() {
        return;
    }
    let file = temp_file(&kernel_without_pvh_note());
    let out = run(&["run", "--kernel", file.path().to_str().unwrap()]);
    assert_one_line_error(&out, VMM_ERROR, "has no PVH entry point");
}

#[test]
fn mem_not_a_size() {
    let out = run(&["run", "--mem", "lots"]);
    assert_one_line_error(&out, USAGE, "is not a size");
}

#[test]
fn mem_too_small_for_any_guest() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--mem", "1M"]);
    assert_one_line_error(&out, VMM_ERROR, "too small");
}

#[test]
fn mem_too_small_for_the_kernel() {
    if !kvm_available() {
        return;
    }
    // A kernel with a 32 MiB .bss cannot fit in 32 MiB of RAM.
    let file = temp_file(&kernel_with_bss(32 << 20));
    let out = run(&[
        "run",
        "--mem",
        "32M",
        "--kernel",
        file.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&out, VMM_ERROR, "--mem is too small for");
}

/// The built-in kernel with its last PT_LOAD segment's memory size grown by
/// `extra` bytes, as a kernel with a large .bss would have.
fn kernel_with_bss(extra: u64) -> Vec<u8> {
    let mut image = GUEST_KERNEL.to_vec();
    let phoff = u64::from_le_bytes(image[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(image[56..58].try_into().unwrap()) as usize;
    let last_load = (0..phnum)
        .map(|i| phoff + i * 56)
        .filter(|&at| u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) == 1)
        .max_by_key(|&at| u64::from_le_bytes(image[at + 24..at + 32].try_into().unwrap()))
        .expect("a PT_LOAD segment");
    let memsz_at = last_load + 40;
    let memsz = u64::from_le_bytes(image[memsz_at..memsz_at + 8].try_into().unwrap());
    image[memsz_at..memsz_at + 8].copy_from_slice(&(memsz + extra).to_le_bytes());
    image
}

#[test]
fn mem_larger_than_the_host_can_map() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--mem", "200T"]);
    assert_one_line_error(&out, VMM_ERROR, "cannot map 200T");
}

#[test]
fn mem_beyond_guest_physical_address_space() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--mem", "100000T"]);
    assert_one_line_error(&out, VMM_ERROR, "guest-physical address space");
}

#[test]
fn zero_vcpus() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--vcpus", "0"]);
    assert_one_line_error(&out, VMM_ERROR, "--vcpus 0 is out of range");
}

#[test]
fn too_many_vcpus() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--vcpus", "65"]);
    assert_one_line_error(&out, VMM_ERROR, "--vcpus 65 is out of range");
    let out = run(&["run", "--vcpus", "99999999999"]);
    assert_one_line_error(&out, USAGE, "--vcpus");
}

#[test]
fn kvm_device_absent() {
    let out = writewatch()
        .args(["run"])
        .env("WRITEWATCH_KVM", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_one_line_error(&out, VMM_ERROR, "does not exist: this host has no KVM");
}

#[test]
fn kvm_device_not_kvm() {
    let out = writewatch()
        .args(["run"])
        .env("WRITEWATCH_KVM", "/dev/null")
        .output()
        .unwrap();
    assert_one_line_error(&out, VMM_ERROR, "is not a KVM device");
}

#[test]
fn kvm_device_not_permitted() {
    if !kvm_available() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // Drop to 'nobody' so /dev/kvm (0600 or 0660 root:kvm) is closed to us.
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_writewatch"))
            .arg("run")
            .output()
            .expect("setpriv (util-linux) runs");
        assert_one_line_error(&out, VMM_ERROR, "permission denied opening /dev/kvm");
    } else {
        // Not root: a device node we cannot open stands in for it.
        let out = writewatch()
            .args(["run"])
            .env("WRITEWATCH_KVM", "/dev/mem")
            .output()
            .unwrap();
        assert_one_line_error(&out, VMM_ERROR, "permission denied");
    }
}

#[test]
fn hugetlb_pool_too_small() {
    if !kvm_available() {
        return;
    }
    let (_, free) = huge_pages();
    let mem = format!("{}M", (free + 16) * 2);
    let out = run(&["run", "--backing", "hugetlb", "--mem", &mem]);
    assert_one_line_error(&out, VMM_ERROR, "/proc/sys/vm/nr_hugepages");
}

#[test]
fn unknown_option_and_bad_timeout() {
    let out = run(&["run", "--frobnicate"]);
    assert_one_line_error(&out, USAGE, "--frobnicate");
    let out = run(&["run", "--timeout", "abc"]);
    assert_one_line_error(&out, USAGE, "seconds");
}

#[test]
fn unwritable_report_path() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--report", "/nonexistent/dir/report.json"]);
    assert_one_line_error(
        &out,
        VMM_ERROR,
        "cannot create /nonexistent/dir/report.json",
    );
}
