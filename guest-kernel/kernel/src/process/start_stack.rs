//! The stack a program starts on, laid out as Linux's `create_elf_tables`
//! (fs/binfmt_elf.c) does for a static executable: `argc`, `argv` (the
//! program's name), an empty `envp` and the auxiliary vector, with `rsp`
//! 16-byte aligned at `argc`. C runtimes (musl's `__init_libc` reads
//! `AT_PHDR`, `AT_PAGESZ` and `AT_RANDOM`) start from it; the built-in
//! programs ignore it.

use super::USER_STACK_TOP;
use super::elf::Loaded;
use crate::memory::mm;
use alloc::vec::Vec;
use guest_mm::{Errno, Pid};

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
/// Bytes of an ELF64 program header.
const PHENT: u64 = 56;

/// Writes the start-up stack of `image` (run as `name`) below the top of
/// `pid`'s stack; returns the initial `rsp`.
pub fn write(pid: Pid, name: &str, image: &Loaded) -> Result<u64, Errno> {
    // Strings at the top: the name, NUL-terminated, and AT_RANDOM's 16
    // bytes (from the TSC: unpredictable enough for a test kernel's canary).
    let mut strings = Vec::with_capacity(name.len() + 1 + 16);
    strings.extend_from_slice(name.as_bytes());
    strings.push(0);
    let seed = crate::arch::x86_64::msr::rdtsc();
    strings.extend_from_slice(&seed.to_le_bytes());
    strings.extend_from_slice(
        &seed
            .rotate_left(29)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .to_le_bytes(),
    );
    let strings_at = (USER_STACK_TOP - strings.len() as u64) & !15;
    let name_at = strings_at;
    let random_at = strings_at + name.len() as u64 + 1;

    let auxv = [
        (AT_PHDR, image.phdr),
        (AT_PHENT, PHENT),
        (AT_PHNUM, image.phnum),
        (AT_PAGESZ, 4096),
        (AT_ENTRY, image.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_SECURE, 0),
        (AT_RANDOM, random_at),
        (AT_NULL, 0),
    ];
    let mut words: Vec<u64> = Vec::with_capacity(4 + 2 * auxv.len());
    words.extend_from_slice(&[1, name_at, 0, 0]); // argc, argv[0], NULL, envp NULL
    for (key, value) in auxv {
        words.extend_from_slice(&[key, value]);
    }
    let rsp = (strings_at - 8 * words.len() as u64) & !15;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    mm::with(|s| {
        s.copy_to_user(pid, strings_at, &strings)?;
        s.copy_to_user(pid, rsp, &bytes)
    })?;
    Ok(rsp)
}
