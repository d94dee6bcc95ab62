//! Builds the guest kernel for x86_64-unknown-none and leaves its ELF in
//! OUT_DIR, where `guest_image.rs` embeds it. Installs the target through
//! rustup first when the toolchain lacks it, so a fresh machine needs no
//! manual step.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";

include!("../guest-kernel/build-support/scrubbed_env.rs");

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir.join("../guest-kernel");
    for watched in [
        "kernel",
        "user",
        "mm",
        "build-support",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            guest_dir.join(watched).display()
        );
    }
    // Guest programs embed files from outside the guest tree (`conform`
    // the conformance cases).
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../resources/conformance").display()
    );
    ensure_target_installed();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = guest_dir.join("target");
    let mut command = Command::new(cargo);
    command
        .current_dir(&guest_dir)
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TARGET,
            "-p",
            "guest-kernel",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for var in SCRUBBED_ENV {
        command.env_remove(var);
    }
    let output = command
        .output()
        .expect("running cargo for the guest kernel");
    if !output.status.success() {
        panic!(
            "building the guest kernel failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let elf = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("guest-kernel");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("guest-kernel.elf");
    std::fs::copy(&elf, &out).unwrap_or_else(|e| panic!("copying {}: {e}", elf.display()));
}

/// Adds the guest target through rustup when the active toolchain lacks it.
fn ensure_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |root: &Path| root.join("lib/rustlib").join(GUEST_TARGET).is_dir();
    if sysroot.as_deref().is_some_and(installed) {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", GUEST_TARGET])
        .status();
    match status {
        Ok(s) if s.success() => {}
        _ => panic!(
            "the {GUEST_TARGET} target is missing and `rustup target add {GUEST_TARGET}` failed"
        ),
    }
}
