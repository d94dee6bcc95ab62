//! The command line: clap parses it into plain values, `into_config` turns
//! those into a `VmConfig`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::api::request::Format;
use crate::api::request::MigrateRequest;
use crate::config::{Backing, DEFAULT_MEM, KernelSource, VmConfig, parse_size};
use crate::dirty::Source;
use crate::migration::convergence::OnTimeout;
use crate::migration::transport::Address;
use crate::workload::{Kind, Mapping};

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
    Run(RunArgs),
    /// Boot the built-in kernel in self-test mode; exit 0 only if every test passes.
    Selftest(VmArgs),
    /// Boot a guest write workload and stream, per interval, what the host write watch saw
    /// (JSON lines); with --verify, check it against what the workload wrote.
    Watch(WatchArgs),
    /// Boot a guest write workload and measure its dirty rate, like QEMU's calc-dirty-rate.
    DirtyRate(DirtyRateArgs),
    /// Drive a VM started with `run --api-sock` (like Cloud Hypervisor's ch-remote).
    Ctl(CtlArgs),
    /// Live-migrate the guest of `run --api-sock PATH` to a `run --incoming ADDR`,
    /// showing progress; exit 0 once it runs there.
    Migrate(MigrateArgs),
    /// Write a snapshot of the guest of `run --api-sock PATH` to a file (full, or --diff).
    Snapshot(SnapshotArgs),
    /// Run experiments on this machine and report what they measured.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Run scenario files (docs/SCENARIOS.md) in a guest process, or with --host as Linux
    /// processes on this machine's kernel; check the results they expect.
    Scenario(ScenarioArgs),
}

/// The guest kernel mode a scenario run asks for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ScenarioMode {
    /// Kernel work in a ring-3 context (the fast one on kvm_pvm).
    Ring3,
    /// Kernel work in ring 0 (as on hardware KVM).
    Ring0,
}

#[derive(Clone, Debug, Args)]
pub struct ScenarioArgs {
    /// Scenario files (e.g. resources/scenarios/*.scn).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Run them as Linux processes on the host kernel instead of in the guest.
    #[arg(long)]
    pub host: bool,
    /// Print every scenario's transcript on stdout (the verdicts go to stderr).
    #[arg(long)]
    pub transcript: bool,
    /// The guest kernel's mode (default: the one it picks for this machine).
    #[arg(long, value_enum, conflicts_with = "host")]
    pub mode: Option<ScenarioMode>,
    /// Stop the guest after SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, conflicts_with = "host")]
    pub timeout: Option<f64>,
}

/// How a migration converges (every option has QEMU's or Cloud Hypervisor's default).
#[derive(Clone, Debug, Args)]
pub struct MigrationOptions {
    /// Longest pause the guest should see, in ms: pre-copy stops when the rest fits it at
    /// the bandwidth measured.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    pub downtime_ms: u64,
    /// Bandwidth cap for pre-copy, MiB/s (default: none).
    #[arg(long, value_name = "MIB")]
    pub max_bandwidth: Option<u64>,
    /// Pre-copy rounds before --on-timeout applies.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub max_rounds: u32,
    /// Seconds pre-copy may take before --on-timeout applies (default: no limit).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub migrate_timeout: Option<f64>,
    /// At max rounds or the timeout: cancel (the guest stays here) or force (pause and copy).
    #[arg(long, value_enum, default_value_t = OnTimeout::Force)]
    pub on_timeout: OnTimeout,
    /// Throttle the vCPUs (20 %, then +10 % up to 99 %) when rounds stop shrinking.
    #[arg(long)]
    pub auto_converge: bool,
    /// Skip hashing guest RAM at both ends (it adds to the downtime).
    #[arg(long)]
    pub no_verify_ram: bool,
}

impl MigrationOptions {
    pub fn request(&self, to: &Address) -> MigrateRequest {
        MigrateRequest {
            to: to.to_string(),
            downtime_ms: self.downtime_ms,
            max_bandwidth_mib: self.max_bandwidth,
            max_rounds: self.max_rounds,
            timeout_s: self.migrate_timeout,
            on_timeout: self.on_timeout,
            auto_converge: self.auto_converge,
            verify_ram: !self.no_verify_ram,
        }
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The API socket of the VM to send.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Where the destination waits: tcp:HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    pub to: Address,
    #[command(flatten)]
    pub options: MigrationOptions,
    /// Print the final statistics as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The API socket of the VM.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// The file to write (it must not exist).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Only the pages written since the last snapshot of this VM.
    #[arg(long)]
    pub diff: bool,
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Migrate a guest workload between two writewatch processes on this machine and
    /// tabulate the rounds, bandwidth, downtime and integrity.
    Migrate(ExperimentArgs),
}

/// Where pre-copy takes dirty pages from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackingSource {
    Bitmap,
    Ring,
}

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// What the guest writes.
    #[arg(long, value_enum, default_value_t = Kind::Uniform)]
    pub workload: Kind,
    /// Write rate of the whole guest in MiB/s; a comma-separated list runs a sweep.
    #[arg(long, default_value = "8", value_delimiter = ',', value_name = "MIB")]
    pub rate: Vec<u64>,
    /// Guest RAM.
    #[arg(long, default_value = "256M", value_parser = parse_size, value_name = "SIZE")]
    pub mem: u64,
    /// Working-set size (default: half of --mem).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub wss: Option<u64>,
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub vcpus: u32,
    /// The dirty-log source; a comma-separated list runs each.
    #[arg(long, value_enum, default_value = "bitmap", value_delimiter = ',')]
    pub source: Vec<TrackingSource>,
    /// Run each case both without and with auto-converge (--auto-converge alone: only with).
    #[arg(long)]
    pub compare_auto_converge: bool,
    /// Back guest RAM with hugetlb pages on both sides.
    #[arg(long)]
    pub hugetlb: bool,
    /// Seconds the workload runs before the migration starts.
    #[arg(long, default_value_t = 1.0, value_parser = parse_timeout, value_name = "SECS")]
    pub warmup: f64,
    #[command(flatten)]
    pub options: MigrationOptions,
    /// Write results.json, rounds.csv, summary.csv and SVG plots here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// A guest write workload (`mode=workload`, docs/GUEST_ABI.md).
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// What the guest writes.
    #[arg(long, value_enum, default_value_t = Kind::Uniform)]
    pub workload: Kind,
    /// Target write rate of the whole guest in MiB/s (0: as fast as it can).
    #[arg(long, default_value_t = 0, value_name = "MIB")]
    pub rate: u64,
    /// Working-set size: how much of guest RAM the workload writes.
    #[arg(long, default_value = "64M", value_parser = parse_size, value_name = "SIZE")]
    pub wss: u64,
    /// How the guest maps its working set.
    #[arg(long, value_enum, default_value_t = Mapping::Huge)]
    pub map: Mapping,
    /// Place the working set in the first RAM at or above this guest-physical address
    /// (e.g. 3G to cross the MMIO hole into RAM above 4 GiB).
    #[arg(long, default_value = "0", value_parser = parse_address, value_name = "ADDR")]
    pub arena_from: u64,
}

/// Where `watch` gets dirty pages from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchSource {
    Bitmap,
    Ring,
    /// No tracking: the workload's own write rate, for comparison.
    Off,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// The dirty-log source (ring gives each vCPU a dirty ring, see --dirty-ring-size).
    #[arg(long, value_enum, default_value_t = WatchSource::Bitmap)]
    pub source: WatchSource,
    /// Seconds per interval.
    #[arg(long, default_value_t = 1.0, value_parser = parse_timeout, value_name = "SECS")]
    pub interval: f64,
    /// Intervals to run before stopping the guest.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub intervals: u64,
    /// Pause the guest at each interval's end and compare the result with the pages the
    /// workload wrote; exit 1 if any interval missed a page.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Args)]
pub struct DirtyRateArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// The dirty-log source: bitmap (the whole guest) or ring (also per vCPU).
    #[arg(long, value_enum, default_value_t = Source::Bitmap)]
    pub source: Source,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = parse_timeout, value_name = "SECS")]
    pub period: f64,
    /// Seconds to let the workload run before measuring.
    #[arg(long, default_value_t = 0.5, value_parser = parse_timeout, value_name = "SECS")]
    pub warmup: f64,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The API socket of a running `writewatch run --api-sock PATH`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Print the raw JSON response instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// An address or length: decimal, 0x hexadecimal, or a size like 4K/256M.
fn parse_address(text: &str) -> Result<u64, String> {
    crate::api::request::parse_number(text)
        .map(Ok)
        .unwrap_or_else(|| parse_size(text))
}

/// Whose virtual memory: `--pid` or `--cr3`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// A guest process id (see `ctl processes`).
    #[arg(long)]
    pub pid: Option<u64>,
    /// A guest page-table root (CR3).
    #[arg(long, value_parser = parse_address)]
    pub cr3: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RangeArgs {
    /// Start address (page-aligned).
    #[arg(long, value_parser = parse_address)]
    pub start: u64,
    /// Length in bytes (whole pages).
    #[arg(long, value_parser = parse_address)]
    pub len: u64,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    /// Reset the pages returned (GetWriteWatch's WRITE_WATCH_FLAG_RESET).
    #[arg(long)]
    pub reset: bool,
    /// Return at most N pages (the rest stay marked).
    #[arg(long, value_name = "N")]
    pub max_count: Option<usize>,
    /// List pages, runs of pages, or the count only.
    #[arg(long, value_enum, default_value_t = Format::Addresses)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// The VM's state, shape and write-watch source.
    Info,
    /// VM exits, records and write-watch statistics.
    Stats,
    /// The guest processes the guest reported (pid, page table).
    Processes,
    /// Pause every vCPU.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Start tracking guest writes.
    Start {
        /// The source (default: what the VM was started for).
        #[arg(long, value_enum)]
        source: Option<Source>,
        /// Start with every page written (migration's first pass) instead of clean.
        #[arg(long)]
        dirty: bool,
    },
    /// Stop tracking guest writes.
    Stop,
    /// GetWriteWatch over a guest-physical range.
    Get(GetArgs),
    /// ResetWriteWatch over a guest-physical range.
    Reset(RangeArgs),
    /// Start watching a guest process's virtual range (clean from now).
    VaWatch {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// GetWriteWatch over a watched virtual range.
    VaGet {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        get: GetArgs,
    },
    /// ResetWriteWatch over a watched virtual range.
    VaReset {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Measure the guest's dirty rate (tracking must be on).
    DirtyRate {
        /// Seconds to measure.
        #[arg(long, default_value_t = 1.0, value_parser = parse_timeout)]
        period: f64,
    },
    /// Start a live migration (returns at once; see `migration`, or use `writewatch migrate`).
    Migrate {
        /// Where the destination waits: tcp:HOST:PORT or unix:PATH.
        #[arg(long, value_name = "ADDR")]
        to: Address,
        #[command(flatten)]
        options: MigrationOptions,
    },
    /// The current or last migration's progress and statistics.
    Migration,
    /// Cancel the running migration (the guest stays here).
    CancelMigration,
    /// Write a snapshot to a file.
    Snapshot {
        /// The file to write (it must not exist).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Only the pages written since the last snapshot.
        #[arg(long)]
        diff: bool,
    },
    /// The guest's workload (what it announced, writes so far).
    Workload {
        /// Tell the workload to stop (a checking workload then verifies its memory and exits).
        #[arg(long)]
        stop: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Serve the control API (HTTP/1.1 + JSON, docs/api.yaml) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Wait for a live migration at tcp:HOST:PORT or unix:PATH and run the guest that
    /// arrives (its vCPUs and RAM come with it; --mem and --vcpus are ignored).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["restore", "kernel"])]
    pub incoming: Option<Address>,
    /// Restore a snapshot and run it: a full snapshot, then the diffs that follow it in
    /// order.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "kernel")]
    pub restore: Vec<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct VmArgs {
    /// A PVH ELF kernel to boot instead of the built-in one.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// A static x86-64 ELF program (musl-gcc -static, or -nostdlib) that the guest
    /// runs as its first process instead of the built-in init (docs/GUEST_ABI.md).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// A file whose bytes the guest's processes read from standard input (docs/GUEST_ABI.md).
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,
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
    /// Give each vCPU a KVM dirty ring of N entries (a power of two), making the ring the
    /// write-watch source; without it the dirty bitmap is.
    #[arg(long, value_name = "N")]
    pub dirty_ring_size: Option<u32>,
}

impl VmArgs {
    /// The VM this invocation describes.
    pub fn to_config(&self) -> VmConfig {
        VmConfig {
            kernel: self
                .kernel
                .clone()
                .map_or(KernelSource::BuiltIn, KernelSource::File),
            init: self.init.clone(),
            stdin: self.stdin.clone(),
            vcpus: self.vcpus,
            mem_bytes: self.mem,
            backing: self.backing,
            cmdline: self.cmdline.trim().to_string(),
            timeout_secs: self.timeout,
            dirty_ring_entries: self.dirty_ring_size,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
