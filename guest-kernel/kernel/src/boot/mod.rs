//! Boot: the PVH entry code and what the loader hands over.

pub mod acpi;
pub mod cmdline;
pub mod entry;
pub mod memmap;
pub mod phys;
pub mod start_info;

use spin::Once;
use start_info::BootInfo;

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Stores what the loader handed over (once, on the boot CPU).
pub fn set_info(info: BootInfo) -> &'static BootInfo {
    BOOT_INFO.call_once(|| info)
}

/// What the loader handed over.
pub fn info() -> &'static BootInfo {
    BOOT_INFO
        .get()
        .expect("boot info used before kernel_main stored it")
}
