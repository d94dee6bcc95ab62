//! Build script of the guest kernel.
//!
//! Two jobs:
//! 1. Link the kernel with `kernel.ld` (higher-half image with an identity
//!    mapped 32-bit PVH entry) as a plain static executable: PVH loaders put
//!    the segments at their physical addresses and apply no relocations, so
//!    the image must not be a static PIE.
//! 2. Build the ring-3 programs of `../user` with a nested cargo (its own
//!    target dir under `OUT_DIR`, because the outer build holds the lock on
//!    `guest-kernel/target`) and copy the ELF files to `OUT_DIR/user/` where
//!    `src/process/programs.rs` embeds them with `include_bytes!`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user programs the kernel embeds (binaries of the `guest-user` package).
const USER_PROGRAMS: &[&str] = &[
    "init",
    "exit42",
    "getpid",
    "badaccess",
    "memslot",
    "sysabi",
    "cowfork",
    "mmtest",
    "mmbench",
    "wwprobe",
    "forkwork",
    "conform",
    "trackbench",
];

include!("../build-support/scrubbed_env.rs");

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));

    let script = manifest_dir.join("kernel.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-znoexecstack");

    build_user_programs(&manifest_dir, &out_dir);
}

/// Runs the nested `cargo build` of `guest-user` and copies its binaries.
fn build_user_programs(manifest_dir: &Path, out_dir: &Path) {
    let workspace = manifest_dir.parent().expect("kernel/ has a parent");
    let user_dir = workspace.join("user");
    println!("cargo:rerun-if-changed={}", user_dir.display());
    // The case table `conform` embeds.
    let cases = workspace.join("../resources/conformance/cases.txt");
    println!("cargo:rerun-if-changed={}", cases.display());
    println!("cargo:rerun-if-changed=../build-support/scrubbed_env.rs");

    let target_dir = out_dir.join("user-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--target", "x86_64-unknown-none"])
        .args(["-p", "guest-user", "--target-dir"])
        .arg(&target_dir);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    // Per-package variables cargo sets for this build script.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("DEP_")
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .expect("running the nested cargo build of guest-user");
    assert!(
        status.success(),
        "building the guest user programs failed: {status}"
    );

    let bin_dir = target_dir.join("x86_64-unknown-none").join("release");
    let dest = out_dir.join("user");
    std::fs::create_dir_all(&dest).expect("creating OUT_DIR/user");
    for name in USER_PROGRAMS {
        std::fs::copy(bin_dir.join(name), dest.join(name))
            .unwrap_or_else(|e| panic!("copying user program {name}: {e}"));
    }
}
