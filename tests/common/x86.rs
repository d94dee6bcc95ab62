//! Just enough of an x86 assembler to write small guest programs inside a
//! test: 32-bit protected mode (where a PVH kernel starts) and 16-bit real
//! mode (where an application processor starts after SIPI). Each method
//! emits one instruction; labels resolve jumps and absolute addresses when
//! `finish` is called.

use std::collections::HashMap;

/// The registers the programs use, numbered as in the instruction encoding.
#[derive(Clone, Copy, Debug)]
pub enum Reg {
    Eax = 0,
    Ecx = 1,
    Edx = 2,
    Ebx = 3,
    Esi = 6,
    Edi = 7,
}

/// Operand width of a port access or string instruction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Width {
    Byte,
    Word,
    Dword,
}

enum Fixup {
    Rel8 { at: usize, label: String },
    Rel32 { at: usize, label: String },
    Abs32 { at: usize, label: String },
}

pub struct Asm {
    code: Vec<u8>,
    base: u32,
    real_mode: bool,
    labels: HashMap<String, usize>,
    fixups: Vec<Fixup>,
}

impl Asm {
    /// 32-bit code that will be loaded at guest-physical `base`.
    pub fn new(base: u32) -> Self {
        Asm {
            code: Vec::new(),
            base,
            real_mode: false,
            labels: HashMap::new(),
            fixups: Vec::new(),
        }
    }

    /// 16-bit real-mode code that will run at `base` (with CS = base >> 4).
    pub fn real_mode(base: u32) -> Self {
        Asm {
            real_mode: true,
            ..Asm::new(base)
        }
    }

    /// The guest-physical address of the next byte.
    pub fn here(&self) -> u32 {
        self.base + self.code.len() as u32
    }

    /// The guest-physical address of a label already defined.
    pub fn address_of(&self, label: &str) -> u32 {
        self.base + self.labels[label] as u32
    }

    pub fn label(&mut self, name: &str) -> &mut Self {
        let previous = self.labels.insert(name.to_string(), self.code.len());
        assert!(previous.is_none(), "label {name} defined twice");
        self
    }

    /// Raw bytes (data, or an instruction this assembler lacks).
    pub fn bytes(&mut self, raw: &[u8]) -> &mut Self {
        self.code.extend_from_slice(raw);
        self
    }

    pub fn align(&mut self, to: usize) -> &mut Self {
        while self.code.len() % to != 0 {
            self.code.push(0x90);
        }
        self
    }

    /// The operand-size prefix a 32-bit operation needs in real mode.
    fn op32(&mut self) {
        if self.real_mode {
            self.code.push(0x66);
        }
    }

    fn imm32(&mut self, value: u32) {
        self.code.extend_from_slice(&value.to_le_bytes());
    }

    fn abs32(&mut self, label: &str) {
        let at = self.code.len();
        self.fixups.push(Fixup::Abs32 {
            at,
            label: label.to_string(),
        });
        self.imm32(0);
    }

    /// `mov reg, imm32`
    pub fn mov(&mut self, reg: Reg, value: u32) -> &mut Self {
        self.op32();
        self.code.push(0xb8 + reg as u8);
        self.imm32(value);
        self
    }

    /// `mov reg, <address of label>`
    pub fn mov_addr(&mut self, reg: Reg, label: &str) -> &mut Self {
        self.op32();
        self.code.push(0xb8 + reg as u8);
        self.abs32(label);
        self
    }

    /// `out dx, al|ax|eax`
    pub fn out(&mut self, width: Width) -> &mut Self {
        self.sized(width, 0xee, 0xef)
    }

    /// `in al|ax|eax, dx`
    pub fn inp(&mut self, width: Width) -> &mut Self {
        self.sized(width, 0xec, 0xed)
    }

    /// `rep insb|insw|insd`: ECX elements from port DX to [EDI].
    pub fn rep_ins(&mut self, width: Width) -> &mut Self {
        self.code.push(0xf3);
        self.sized(width, 0x6c, 0x6d)
    }

    /// `rep outsb|outsw|outsd`: ECX elements from [ESI] to port DX.
    pub fn rep_outs(&mut self, width: Width) -> &mut Self {
        self.code.push(0xf3);
        self.sized(width, 0x6e, 0x6f)
    }

    /// `rep movsb`: ECX bytes from [ESI] to [EDI].
    pub fn rep_movsb(&mut self) -> &mut Self {
        self.bytes(&[0xf3, 0xa4])
    }

    /// A one-byte-opcode instruction in its byte form (`byte_op`) or its
    /// word/dword form (`wide_op`, with the operand-size prefix as needed).
    fn sized(&mut self, width: Width, byte_op: u8, wide_op: u8) -> &mut Self {
        match (width, self.real_mode) {
            (Width::Byte, _) => self.code.push(byte_op),
            (Width::Word, false) | (Width::Dword, true) => self.code.extend([0x66, wide_op]),
            (Width::Word, true) | (Width::Dword, false) => self.code.push(wide_op),
        }
        self
    }

    /// `mov dword [label], imm32`
    pub fn store(&mut self, label: &str, value: u32) -> &mut Self {
        self.op32();
        self.code.extend([0xc7, 0x05]);
        self.abs32(label);
        self.imm32(value);
        self
    }

    /// `mov [label], eax`
    pub fn store_eax(&mut self, label: &str) -> &mut Self {
        self.op32();
        self.code.push(0xa3);
        self.abs32(label);
        self
    }

    /// `lidt [label]` (32-bit mode only).
    pub fn lidt(&mut self, label: &str) -> &mut Self {
        assert!(!self.real_mode);
        self.code.extend([0x0f, 0x01, 0x1d]);
        self.abs32(label);
        self
    }

    pub fn ud2(&mut self) -> &mut Self {
        self.bytes(&[0x0f, 0x0b])
    }

    /// `xor byte [label], imm8`
    pub fn xor_byte(&mut self, label: &str, value: u8) -> &mut Self {
        self.code.extend([0x80, 0x35]);
        self.abs32(label);
        self.code.push(value);
        self
    }

    /// `or eax, imm32`
    pub fn or_eax(&mut self, value: u32) -> &mut Self {
        self.op32();
        self.code.push(0x0d);
        self.imm32(value);
        self
    }

    pub fn rdmsr(&mut self) -> &mut Self {
        self.bytes(&[0x0f, 0x32])
    }

    pub fn wrmsr(&mut self) -> &mut Self {
        self.bytes(&[0x0f, 0x30])
    }

    pub fn cli(&mut self) -> &mut Self {
        self.bytes(&[0xfa])
    }

    pub fn hlt(&mut self) -> &mut Self {
        self.bytes(&[0xf4])
    }

    /// `dec ecx` (32-bit mode only).
    pub fn dec_ecx(&mut self) -> &mut Self {
        assert!(!self.real_mode);
        self.bytes(&[0x49])
    }

    /// `jmp label`
    pub fn jmp(&mut self, label: &str) -> &mut Self {
        if self.real_mode {
            self.code.push(0xeb);
            self.rel8(label)
        } else {
            self.code.push(0xe9);
            self.rel32(label)
        }
    }

    /// `jnz label` (32-bit mode only).
    pub fn jnz(&mut self, label: &str) -> &mut Self {
        assert!(!self.real_mode);
        self.code.extend([0x0f, 0x85]);
        self.rel32(label)
    }

    fn rel8(&mut self, label: &str) -> &mut Self {
        let at = self.code.len();
        self.fixups.push(Fixup::Rel8 {
            at,
            label: label.to_string(),
        });
        self.code.push(0);
        self
    }

    fn rel32(&mut self, label: &str) -> &mut Self {
        let at = self.code.len();
        self.fixups.push(Fixup::Rel32 {
            at,
            label: label.to_string(),
        });
        self.imm32(0);
        self
    }

    /// Halts forever with interrupts off.
    pub fn halt_forever(&mut self) -> &mut Self {
        let name = format!("halt_{}", self.code.len());
        self.cli().label(&name).hlt().jmp(&name)
    }

    /// Writes `value` to the exit port with a 32-bit `out`.
    pub fn exit(&mut self, value: u32) -> &mut Self {
        self.mov(Reg::Edx, 0xf4)
            .mov(Reg::Eax, value)
            .out(Width::Dword)
            .halt_forever()
    }

    /// Prints `text` on COM1, one `out` per byte.
    pub fn print(&mut self, text: &[u8]) -> &mut Self {
        self.mov(Reg::Edx, 0x3f8);
        for &byte in text {
            self.mov(Reg::Eax, u32::from(byte)).out(Width::Byte);
        }
        self
    }

    /// The machine code with every label resolved.
    pub fn finish(&self) -> Vec<u8> {
        let mut code = self.code.clone();
        let find = |label: &str| {
            *self
                .labels
                .get(label)
                .unwrap_or_else(|| panic!("undefined label {label}"))
        };
        for fixup in &self.fixups {
            match fixup {
                Fixup::Rel8 { at, label } => {
                    let rel = find(label) as i64 - (*at as i64 + 1);
                    code[*at] = i8::try_from(rel).expect("short jump out of range") as u8;
                }
                Fixup::Rel32 { at, label } => {
                    let rel = find(label) as i64 - (*at as i64 + 4);
                    code[*at..*at + 4].copy_from_slice(&(rel as i32).to_le_bytes());
                }
                Fixup::Abs32 { at, label } => {
                    let addr = self.base + find(label) as u32;
                    code[*at..*at + 4].copy_from_slice(&addr.to_le_bytes());
                }
            }
        }
        code
    }
}
