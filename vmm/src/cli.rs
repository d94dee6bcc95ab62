//! The command line: clap parses it into plain values, `into_config` turns
//! those into a `VmConfig`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Backing, DEFAULT_MEM, KernelSource, VmConfig, parse_size};

#[derive(Debug, Parser)]
#[command(
    name = "writewatch",
    version,
    about = "A minimal KVM VMM that boots the writewatch guest kernel and tracks guest page writes",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest (the built-in kernel unless --kernel is given) and exit with its code.
    Run(VmArgs),
    /// Boot the built-in kernel in self-test mode; exit 0 only if every test passes.
    Selftest(VmArgs),
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// A PVH ELF kernel to boot instead of the built-in one.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Number of vCPUs (1..=64, and no more than KVM allows).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub vcpus: u32,
    /// Guest RAM, e.g. 256M or 4G.
    #[arg(long, default_value_t = DEFAULT_MEM, value_parser = parse_size, value_name = "SIZE", hide_default_value = true)]
    pub mem: u64,
    /// How guest RAM is backed on the host.
    #[arg(long, value_enum, default_value_t = Backing::Anon)]
    pub backing: Backing,
    /// Extra words for the guest's command line.
    #[arg(long, default_value = "", value_name = "STR")]
    pub cmdline: String,
    /// Stop the guest after SECS seconds (exit code 124, register dump on stderr).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
    /// Write a JSON run report to PATH ('-' for stdout).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Write every record the guest sends, one JSON object per line, to PATH ('-' for stdout).
    #[arg(long, value_name = "PATH")]
    pub records: Option<PathBuf>,
}

impl VmArgs {
    /// The VM this invocation describes; `mode` is prepended to the guest
    /// command line when the subcommand implies one.
    pub fn to_config(&self, mode: Option<&str>) -> VmConfig {
        let cmdline = match mode {
            Some(mode) => format!("mode={mode} {}", self.cmdline),
            None => self.cmdline.clone(),
        };
        VmConfig {
            kernel: self
                .kernel
                .clone()
                .map_or(KernelSource::BuiltIn, KernelSource::File),
            vcpus: self.vcpus,
            mem_bytes: self.mem,
            backing: self.backing,
            cmdline: cmdline.trim().to_string(),
            timeout_secs: self.timeout,
        }
    }
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 1e9 => Ok(secs),
        _ => Err(format!(
            "'{text}' is not a number of seconds greater than 0"
        )),
    }
}
