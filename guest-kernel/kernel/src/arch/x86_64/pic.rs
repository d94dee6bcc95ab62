//! The legacy 8259 PIC pair: remapped away from the exception vectors and
//! fully masked. This kernel uses only the LAPIC, but KVM resets the boot
//! CPU's LINT0 to ExtINT, so without this the PIT's IRQ 0 would arrive as
//! vector 8 (the PIC's reset base), indistinguishable from a double fault.

use super::port::outb;

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;
/// Vectors the PIC would use; it is masked and LINT0 is masked too
/// (`lapic::enable`), so none arrives.
const PIC_BASE: u8 = 0xe0;

/// Remaps both PICs to `PIC_BASE..PIC_BASE + 16` and masks every IRQ.
pub fn disable() {
    outb(MASTER_CMD, 0x11); // ICW1: init, expect ICW4
    outb(SLAVE_CMD, 0x11);
    outb(MASTER_DATA, PIC_BASE); // ICW2: vector base
    outb(SLAVE_DATA, PIC_BASE + 8);
    outb(MASTER_DATA, 4); // ICW3: slave on IRQ 2
    outb(SLAVE_DATA, 2);
    outb(MASTER_DATA, 1); // ICW4: 8086 mode
    outb(SLAVE_DATA, 1);
    outb(MASTER_DATA, 0xff); // mask all
    outb(SLAVE_DATA, 0xff);
}
