//! Guest-physical memory layout shared with the guest kernel.
//!
//! Only documented constants live here; `docs/GUEST_ABI.md` is the prose
//! version of the same contract.

/// Where `hvm_start_info` is written for a PVH boot.
pub const PVH_START_INFO: u64 = 0x6000;
/// Where the PVH memory map (an array of `hvm_memmap_table_entry`) follows it.
pub const PVH_MEMMAP: u64 = 0x6040;
/// Where the PVH module list (`hvm_modlist_entry`s: the `--init` program,
/// the `--stdin` bytes) is written, between the memory map and the guest's
/// SMP trampoline at 0x8000.
pub const PVH_MODLIST: u64 = 0x7000;
/// Largest `--init` program accepted.
pub const INIT_MAX_BYTES: u64 = 256 << 20;
/// Where the NUL-terminated kernel command line is written.
pub const CMDLINE_START: u64 = 0x2_0000;
/// The command line's capacity, including its terminating NUL.
pub const CMDLINE_CAPACITY: usize = 4096;

/// Where the ACPI tables start (the RSDP first), in the reserved area
/// between the EBDA and 1 MiB, where a PC's firmware keeps them.
pub const ACPI_START: u64 = 0xe_0000;

/// End of conventional low memory (the start of the EBDA on a PC).
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of RAM above the legacy BIOS area; kernels load here or above.
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; RAM that would overlap it moves above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// COM1, a 16550 UART.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// The UART's register window.
pub const SERIAL_PORT_LEN: u16 = 8;
/// COM1's legacy interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// Exit device, where QEMU's `isa-debug-exit` also sits.
pub const EXIT_PORT: u16 = 0xf4;
/// Result-channel doorbell: the guest writes a record's guest-physical address.
pub const RECORD_PORT: u16 = 0xf8;
/// Largest record body the doorbell accepts.
pub const RECORD_MAX_LEN: u32 = 64 * 1024;

/// Memory the writewatch kernel needs beyond its image (stacks, heap, page tables).
pub const KERNEL_MIN_WORKING_SET: u64 = 8 << 20;
