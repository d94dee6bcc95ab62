//! Build script of the user programs: link them as plain static executables
//! (the kernel's ELF loader applies no relocations, so no static PIE).

fn main() {
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-znoexecstack");
}
