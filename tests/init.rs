//! `writewatch run --init FILE`: a user's own static x86-64 Linux program,
//! handed to the guest as a PVH module, runs as the first process with
//! Linux's `syscall` ABI. The examples in `resources/init/` (C without a C
//! library, an ordinary C program built with `musl-gcc -static`, Rust
//! without std) are built here, run on the host's Linux (the same binaries,
//! so the ABI is Linux's), in both guest kernel modes under KVM, and under
//! QEMU, which passes `-initrd` as the PVH module. Bad files get one-line
//! errors. Under CI=true `musl-gcc` must be installed (.ci/run installs
//! it); elsewhere its test skips when it is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{QEMU, assert_one_line_error, code, kvm_available, qemu_available, run, stdout};
use writewatch::guest_image::GUEST_KERNEL;

include!("../guest-kernel/build-support/scrubbed_env.rs");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the vmm crate sits in the repository")
}

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("init-examples");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles C `source` (a file, or text with `-x c -`) into a static
/// executable named `name` with `flags`.
fn cc(name: &str, flags: &[&str], source: &[u8]) -> PathBuf {
    let out = scratch().join(name);
    let mut child = Command::new("cc")
        .args(flags)
        .args(["-o"])
        .arg(&out)
        .args(["-x", "c", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("running cc");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), source).unwrap();
    assert!(child.wait().unwrap().success(), "cc failed for {name}");
    out
}

/// The flags of `resources/init/hello.c`'s build line.
const STATIC_NOLIBC: &[&str] = &[
    "-static",
    "-nostdlib",
    "-ffreestanding",
    "-fno-pie",
    "-no-pie",
    "-fno-stack-protector",
    "-O2",
];

fn hello_c() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = std::fs::read(repo().join("resources/init/hello.c")).unwrap();
        cc("hello-c", STATIC_NOLIBC, &source)
    })
}

fn hello_rs() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target_dir = scratch().join("hello-rs-target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // From its own directory: its .cargo/config.toml sets the target.
        build
            .current_dir(repo().join("resources/init/hello-rs"))
            .args(["build", "--release", "--quiet", "--target-dir"])
            .arg(&target_dir);
        for var in SCRUBBED_ENV {
            build.env_remove(var);
        }
        assert!(
            build.status().expect("running cargo").success(),
            "building resources/init/hello-rs failed"
        );
        target_dir.join("x86_64-unknown-none/release/hello-rs")
    })
}

fn musl_available() -> bool {
    common::tool_available("musl-gcc", "musl-tools")
}

fn run_init(program: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "run",
        "--timeout",
        "60",
        "--init",
        program.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    (code(&out), stdout(&out))
}

fn assert_all_checks_passed(program: &Path, greeting: &str, extra: &[&str]) {
    let (status, console) = run_init(program, extra);
    assert_eq!(
        status, 0,
        "{extra:?}: the failed-check mask is the status\n{console}"
    );
    assert!(console.contains(greeting), "{console}");
    assert!(console.contains("all checks passed"), "{console}");
}

#[test]
fn the_examples_are_linux_programs() {
    for (program, greeting) in [
        (hello_c(), "hello from C on writewatch"),
        (hello_rs(), "hello from Rust on writewatch"),
    ] {
        let out = Command::new(program).output().expect("running on the host");
        let console = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "on Linux:\n{console}");
        assert!(console.contains(greeting), "{console}");
    }
}

#[test]
fn the_c_example_runs_as_init_in_the_default_mode() {
    if kvm_available() {
        let greeting = "hello from C on writewatch";
        assert_all_checks_passed(hello_c(), greeting, &[]);
        let (_, console) = run_init(hello_c(), &[]);
        assert!(console.contains("writev works"), "{console}");
    }
}

#[test]
fn the_c_example_runs_as_init_in_ring0_mode_on_two_vcpus() {
    if kvm_available() {
        let extra = ["--vcpus", "2", "--cmdline", "kernel_mode=ring0"];
        assert_all_checks_passed(hello_c(), "hello from C on writewatch", &extra);
    }
}

#[test]
fn the_rust_example_runs_as_init_in_both_modes() {
    if kvm_available() {
        let greeting = "hello from Rust on writewatch";
        assert_all_checks_passed(hello_rs(), greeting, &["--vcpus", "2"]);
        assert_all_checks_passed(hello_rs(), greeting, &["--cmdline", "kernel_mode=ring0"]);
    }
}

/// An ordinary C program (stdio, malloc, fork, waitpid) built against musl
/// runs unchanged, on Linux and as init.
#[test]
fn a_musl_program_runs_unchanged() {
    if !musl_available() || !kvm_available() {
        return;
    }
    let out = scratch().join("hello-musl");
    let built = Command::new("musl-gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(repo().join("resources/init/hello-musl.c"))
        .status()
        .expect("running musl-gcc");
    assert!(built.success(), "musl-gcc failed");
    let on_linux = Command::new(&out).output().unwrap();
    assert_eq!(on_linux.status.code(), Some(0), "{on_linux:?}");
    let greeting = "hello from musl: malloc gave small and 1 MiB blocks";
    assert_all_checks_passed(&out, greeting, &["--vcpus", "2"]);
    let (_, console) = run_init(&out, &[]);
    assert!(console.contains("child 2 of 1"), "{console}");

    // abort() raises SIGABRT on itself: the program ends with 128 + 6.
    let source = scratch().join("abort.c");
    std::fs::write(
        &source,
        "#include <stdlib.h>\nint main(void) { abort(); }\n",
    )
    .unwrap();
    let aborts = scratch().join("abort");
    let built = Command::new("musl-gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&aborts)
        .arg(&source)
        .status()
        .expect("running musl-gcc");
    assert!(built.success(), "musl-gcc failed");
    let out = run(&["run", "--init", aborts.to_str().unwrap(), "--report", "-"]);
    let console = stdout(&out);
    assert!(console.contains("killed by signal 6"), "{console}");
    assert!(console.contains(r#""guest_exit_code": 134"#), "{console}");
}

/// The lines a program prints that start with `prefix`.
fn lines_with(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// tmpfs files, file I/O and seals from a musl program: the guest prints
/// what Linux prints.
#[test]
fn a_musl_program_uses_tmpfs_files_as_on_linux() {
    if !musl_available() || !kvm_available() {
        return;
    }
    let out = scratch().join("files-musl");
    let built = Command::new("musl-gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(repo().join("resources/init/files-musl.c"))
        .status()
        .expect("running musl-gcc");
    assert!(built.success(), "musl-gcc failed");
    let on_linux = Command::new(&out).output().unwrap();
    assert_eq!(on_linux.status.code(), Some(0), "{on_linux:?}");
    let linux = lines_with(&String::from_utf8_lossy(&on_linux.stdout), "files:");
    assert_eq!(linux.len(), 7, "{linux:?}");
    let (status, console) = run_init(&out, &[]);
    assert_eq!(status, 0, "{console}");
    assert_eq!(lines_with(&console, "files:"), linux, "{console}");
}

/// A program that crashes is reported and its status is 128 + the signal;
/// the VMM is fine.
#[test]
fn a_crashing_init_is_killed_with_sigsegv() {
    if kvm_available() {
        let crash = cc(
            "crash",
            STATIC_NOLIBC,
            b"void _start(void) { *(volatile int *)8 = 1; for (;;); }",
        );
        let out = run(&["run", "--init", crash.to_str().unwrap(), "--report", "-"]);
        let console = stdout(&out);
        // 139 is in the VMM's band of exit codes (exit_status.rs): the
        // process exits 120 and the report keeps the guest's value.
        assert_eq!(code(&out), 120, "{console}");
        assert!(console.contains("killed by signal 11"), "{console}");
        assert!(console.contains(r#""guest_exit_code": 139"#), "{console}");
    }
}

/// QEMU hands `-initrd` to a PVH kernel as its first module, and `syscall`
/// enters ring 0 there (the kernel's real `syscall` entry, not kvm_pvm's
/// page fault).
#[test]
fn qemu_runs_the_c_example_from_initrd() {
    if !qemu_available() {
        return;
    }
    let kernel = scratch().join("guest-kernel.elf");
    std::fs::write(&kernel, GUEST_KERNEL).unwrap();
    let out = Command::new("timeout")
        .args([
            "300", QEMU, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256M",
        ])
        .args(["-smp", "2", "-nodefaults", "-display", "none", "-no-reboot"])
        .args([
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(hello_c())
        .output()
        .expect("running qemu");
    let console = String::from_utf8_lossy(&out.stdout);
    // isa-debug-exit turns the guest's code v into (v << 1) | 1.
    assert_eq!(out.status.code(), Some(1), "under QEMU:\n{console}");
    assert!(console.contains("all checks passed"), "{console}");
}

#[test]
fn bad_init_files_get_one_line_errors() {
    if !kvm_available() {
        return;
    }
    let text = scratch().join("not-elf.txt");
    std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
    let dynamic = cc("dynamic", &["-no-pie"], b"int main(void) { return 0; }");
    let pie = cc("pie", &["-fpie", "-pie"], b"int main(void) { return 0; }");
    let truncated = scratch().join("truncated");
    let image = std::fs::read(hello_c()).unwrap();
    std::fs::write(&truncated, &image[..image.len() / 2]).unwrap();
    let missing = scratch().join("no-such-program");
    let mut bad_entry = image.clone();
    bad_entry[24..32].copy_from_slice(&0u64.to_le_bytes());
    let outside = scratch().join("entry-zero");
    std::fs::write(&outside, &bad_entry).unwrap();
    for (file, needle) in [
        (missing.as_path(), "cannot read the --init program"),
        (text.as_path(), "is not an ELF file"),
        (dynamic.as_path(), "is dynamically linked"),
        (pie.as_path(), "is a position-independent executable"),
        (truncated.as_path(), "past the end of the file"),
        (outside.as_path(), "entry point outside its segments"),
    ] {
        let out = run(&["run", "--init", file.to_str().unwrap()]);
        assert_one_line_error(&out, 125, needle);
    }
    // The program runs in mode=run only; selftest must not drop it silently.
    let out = run(&["selftest", "--init", hello_c().to_str().unwrap()]);
    assert_one_line_error(&out, 125, "mode=run");
}

/// `cat` without a C library: standard input to standard output in
/// 1000-byte reads; exits 0 at the end of its input.
const CAT_C: &[u8] = br#"
typedef unsigned long u64; typedef long i64;
static i64 sys3(u64 nr, u64 a, u64 b, u64 c) {
	i64 r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return r;
}
static char buf[1000];
void _start(void) {
	i64 n;
	while ((n = sys3(0, 0, (u64)buf, sizeof buf)) > 0)
		if (sys3(1, 1, (u64)buf, n) != n)
			sys3(231, 1, 0, 0);
	sys3(231, n < 0 ? 2 : 0, 0, 0);
}
"#;

#[test]
fn stdin_hands_a_file_to_the_guest_processes() {
    if !kvm_available() {
        return;
    }
    let cat = cc("cat-c", STATIC_NOLIBC, CAT_C);
    // More than one read's worth, in lines a console keeps whole.
    let text: String = (0..400)
        .map(|i| format!("line {i} of the input\n"))
        .collect();
    let input = scratch().join("cat-input.txt");
    std::fs::write(&input, &text).unwrap();
    let (status, console) = run_init(&cat, &["--stdin", input.to_str().unwrap()]);
    assert_eq!(status, 0, "{console}");
    assert!(
        console.contains(&text),
        "the guest's cat printed:\n{console}"
    );
    // Without --stdin, standard input is at its end at once.
    let (status, console) = run_init(&cat, &[]);
    assert_eq!(status, 0, "{console}");
    assert!(!console.contains("line 0"), "{console}");
}

#[test]
fn bad_stdin_files_are_one_line_errors() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--stdin", "/nonexistent/input"]);
    assert_one_line_error(&out, 125, "cannot read the --stdin file /nonexistent/input");
    let huge = scratch().join("huge-input");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(300 << 20).unwrap();
    let out = run(&["run", "--stdin", huge.to_str().unwrap()]);
    assert_one_line_error(&out, 125, "--stdin takes at most");
    let _ = std::fs::remove_file(&huge);
}
