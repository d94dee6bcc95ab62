//! The writewatch guest kernel, built by `build.rs` for x86_64-unknown-none
//! and carried inside the binary so `writewatch run` needs no other file.

/// The PVH ELF image of the built-in guest kernel.
pub static GUEST_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-kernel.elf"));
