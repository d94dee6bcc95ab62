//! writewatch: a minimal KVM virtual machine monitor on the rust-vmm crates.
//!
//! `builder` turns a `VmConfig` into a machine (KVM state in `vstate`, RAM in
//! `memory`, the kernel via `loader`, port devices in `devices`); `runner`
//! runs it; `app` maps the CLI's subcommands onto both; `scenario` runs
//! scenario files in the guest or on the host's Linux.

pub mod acpi;
pub mod api;
pub mod app;
pub mod builder;
pub mod cli;
pub mod config;
pub mod devices;
pub mod dirty;
pub mod exit_status;
pub mod guest_image;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod migration;
pub mod output;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod selftest;
pub mod signals;
pub mod vstate;
pub mod workload;

// The conformance harness's shared sources: the step language and the
// GetWriteWatch emulation (also built into the guest's `conform`), and the
// Linux oracle with the runner that renders transcripts (also in guest-mm's
// `linux_diff`). They find each other at the crate root.
#[path = "../../guest-kernel/mm/tests/linux_diff/backend.rs"]
#[allow(dead_code)]
mod backend;
#[path = "../../guest-kernel/mm/tests/linux_diff/oracle.rs"]
mod oracle;
#[path = "../../guest-kernel/user/src/probe.rs"]
mod probe;
#[path = "../../guest-kernel/user/src/script.rs"]
#[allow(dead_code)]
mod script;
#[path = "../../guest-kernel/user/src/writewatch.rs"]
#[allow(dead_code)]
mod writewatch;
