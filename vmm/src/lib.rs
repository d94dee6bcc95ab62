//! writewatch: a minimal KVM virtual machine monitor on the rust-vmm crates.
//!
//! `builder` turns a `VmConfig` into a machine (KVM state in `vstate`, RAM in
//! `memory`, the kernel via `loader`, port devices in `devices`); `runner`
//! runs it; `app` maps the CLI's subcommands onto both.

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
pub mod selftest;
pub mod signals;
pub mod vstate;
pub mod workload;
