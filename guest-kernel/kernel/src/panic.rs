//! Kernel panics: print the message and location, end the VM with exit
//! code 3 (docs/GUEST_ABI.md).

use crate::exit::{ExitCode, exit};
use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    crate::arch::x86_64::cpu::disable_interrupts();
    crate::console::print_fatal(format_args!(
        "\nKERNEL PANIC on cpu {}: {}\n",
        crate::percpu::cpu_index_or_boot(),
        info
    ));
    exit(ExitCode::Panic)
}
