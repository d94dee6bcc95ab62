//! Builds tiny PVH kernels from 32-bit machine code (see `x86.rs`), so tests
//! can boot kernels other than the built-in one (and misbehaving ones)
//! without committing binaries or needing an external assembler.

use super::x86::{Asm, Reg, Width};

/// Where the code is loaded and entered.
pub const LOAD_ADDR: u64 = 0x10_0000;

/// An ELF64 x86-64 image with one `PT_LOAD` of `code` at 1 MiB and a
/// `PT_NOTE` holding the PVH entry note pointing at its first byte.
pub fn pvh_kernel(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    for word in [4u32, 4, 18] {
        note.extend_from_slice(&word.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    let code_off = (note_off + note.len()).next_multiple_of(16);

    let mut elf = vec![0u8; code_off];
    elf[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let mut put = |at: usize, bytes: &[u8]| elf[at..at + bytes.len()].copy_from_slice(bytes);
    put(16, &2u16.to_le_bytes()); // ET_EXEC
    put(18, &62u16.to_le_bytes()); // EM_X86_64
    put(20, &1u32.to_le_bytes());
    put(24, &LOAD_ADDR.to_le_bytes());
    put(32, &(EHDR as u64).to_le_bytes());
    put(52, &(EHDR as u16).to_le_bytes());
    put(54, &(PHDR as u16).to_le_bytes());
    put(56, &2u16.to_le_bytes());
    let phdr = |p_type: u32, offset: usize, addr: u64, size: usize| {
        let mut h = Vec::with_capacity(PHDR);
        h.extend_from_slice(&p_type.to_le_bytes());
        h.extend_from_slice(&7u32.to_le_bytes());
        h.extend_from_slice(&(offset as u64).to_le_bytes());
        h.extend_from_slice(&addr.to_le_bytes());
        h.extend_from_slice(&addr.to_le_bytes());
        h.extend_from_slice(&(size as u64).to_le_bytes());
        h.extend_from_slice(&(size as u64).to_le_bytes());
        h.extend_from_slice(&16u64.to_le_bytes());
        h
    };
    put(EHDR, &phdr(1, code_off, LOAD_ADDR, code.len()));
    put(EHDR + PHDR, &phdr(4, note_off, 0, note.len()));
    put(note_off, &note);
    elf.extend_from_slice(code);
    elf
}

/// 32-bit code: print `text` on COM1, then write `code` to the exit port.
pub fn print_and_exit(text: &[u8], code: u8) -> Vec<u8> {
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.print(text).exit(u32::from(code));
    asm.finish()
}

/// 32-bit code that jumps into the MMIO hole, which KVM cannot fetch from.
pub fn jump_to_mmio() -> Vec<u8> {
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.mov(Reg::Eax, 0xd000_0000).bytes(&[0xff, 0xe0]); // jmp eax
    asm.finish()
}

/// 32-bit code that rings the record doorbell with garbage addresses and
/// lengths, then exits 0: a guest abusing the result channel.
pub fn abuse_record_doorbell() -> Vec<u8> {
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.mov(Reg::Edx, 0xf8);
    for addr in [0xffff_fff0u32, 0xd000_0000, 0x0, 0x10_0000] {
        asm.mov(Reg::Eax, addr).out(Width::Dword);
    }
    asm.out(Width::Byte) // wrong width
        .exit(0);
    asm.finish()
}
