//! The VM configuration the CLI parses into, and the parsing of sizes.
//!
//! Everything here is plain data so the builder can be driven from tests
//! without going through the command line.

use std::path::PathBuf;

/// The most vCPUs a VM may have, whatever KVM allows.
pub const MAX_VCPUS: u32 = 64;
/// Default guest memory size.
pub const DEFAULT_MEM: u64 = 256 << 20;

/// How guest RAM is backed on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backing {
    /// Anonymous private memory with 4 KiB host pages.
    Anon,
    /// A hugetlb memfd with 2 MiB host pages.
    Hugetlb,
}

/// Where the kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSource {
    /// The writewatch guest kernel built into this binary.
    BuiltIn,
    /// A PVH ELF file on the host.
    File(PathBuf),
}

/// Everything needed to build and run one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: KernelSource,
    /// A static x86-64 ELF program the guest runs as its first process
    /// (`--init`), handed over as a PVH module.
    pub init: Option<PathBuf>,
    /// A file whose bytes the guest's processes read from standard input
    /// (`--stdin`), handed over as a PVH module.
    pub stdin: Option<PathBuf>,
    pub vcpus: u32,
    pub mem_bytes: u64,
    pub backing: Backing,
    pub cmdline: String,
    pub timeout_secs: Option<f64>,
    /// Dirty-ring entries per vCPU (`--dirty-ring-size`); `None`: no ring,
    /// so the dirty bitmap is the write-watch source.
    pub dirty_ring_entries: Option<u32>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: KernelSource::BuiltIn,
            init: None,
            stdin: None,
            vcpus: 1,
            mem_bytes: DEFAULT_MEM,
            backing: Backing::Anon,
            cmdline: String::new(),
            timeout_secs: None,
            dirty_ring_entries: None,
        }
    }
}

/// Parses a memory size: a whole number of bytes with an optional binary
/// suffix `K`, `M`, `G` or `T` (also `KiB`, `MB`, ...; case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let not_a_size = || format!("'{text}' is not a size (try 256M, 4G or a number of bytes)");
    if digits.is_empty() {
        return Err(not_a_size());
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(not_a_size()),
    };
    let value: u64 = digits.parse().map_err(|_| not_a_size())?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{text}' is too large to be a size"))
}

/// Formats a byte count the way `parse_size` reads it back, e.g. `256M`.
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4gib"), Ok(4 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for bad in ["", "M", "12Q", "-1G", "1.5G", "abc", "0x100"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
        assert!(
            parse_size("99999999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn format_round_trips() {
        for bytes in [256 << 20, 4 << 30, 3 << 10, 12345, 1 << 40] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
