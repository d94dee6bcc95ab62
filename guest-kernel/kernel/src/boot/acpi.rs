//! CPUs from the ACPI MADT, found through `hvm_start_info.rsdp_paddr`: the
//! standard way, so any PVH VMM that writes ACPI tables (QEMU, Cloud
//! Hypervisor, writewatch) needs no command-line word. Only what SMP
//! bring-up needs is read: enabled processor entries. Every read is
//! checked to lie in the boot direct map and every length bounded, so bad
//! tables mean "no answer", never a fault. Ring-0 code is slow on kvm_pvm,
//! so the walk is short: the RSDP's checksum is checked, the other tables'
//! signatures and lengths.

use super::phys::{read, readable};

/// Longest table walked (a MADT of 4096 x2APIC entries is 64 KiB).
const TABLE_MAX: u32 = 64 << 10;
/// Most CPUs counted.
const CPUS_MAX: u32 = 1024;

/// The enabled CPUs the MADT lists, if their APIC IDs are exactly 0..n
/// (how this kernel addresses them); `None` without usable tables.
pub fn cpus(rsdp: u64) -> Option<u32> {
    let madt = find_madt(rsdp)?;
    let len: u32 = read(madt + 4);
    let (mut at, end) = (madt + 44, madt + u64::from(len));
    let (mut count, mut max_id) = (0u32, 0u32);
    while at + 2 <= end {
        let kind: u8 = read(at);
        let entry_len = u64::from(read::<u8>(at + 1));
        if entry_len < 2 || at + entry_len > end {
            return None;
        }
        // Processor local APIC (0) and local x2APIC (9): ID and flags.
        let cpu = match (kind, entry_len) {
            (0, 8..) => Some((u32::from(read::<u8>(at + 3)), read::<u32>(at + 4))),
            (9, 16..) => Some((read::<u32>(at + 4), read::<u32>(at + 8))),
            _ => None,
        };
        // Flags bit 0: enabled.
        if let Some((id, _)) = cpu.filter(|&(_, flags)| flags & 1 != 0) {
            count += 1;
            max_id = max_id.max(id);
            if count > CPUS_MAX {
                return None;
            }
        }
        at += entry_len;
    }
    (count > 0 && max_id + 1 == count).then_some(count)
}

/// The MADT's address, through the RSDP and the XSDT (or, for ACPI 1.0,
/// the RSDT).
fn find_madt(rsdp: u64) -> Option<u64> {
    if rsdp == 0 || !readable(rsdp, 36) || read::<[u8; 8]>(rsdp) != *b"RSD PTR " {
        return None;
    }
    let head: [u8; 20] = read(rsdp);
    if head.iter().fold(0u8, |a, &b| a.wrapping_add(b)) != 0 {
        return None;
    }
    let (root, entry_size) = if head[15] >= 2 {
        (read::<u64>(rsdp + 24), 8)
    } else {
        (u64::from(read::<u32>(rsdp + 16)), 4)
    };
    let root_len = table(root, if entry_size == 8 { b"XSDT" } else { b"RSDT" })?;
    let entries = (u64::from(root_len) - 36) / entry_size;
    (0..entries).find_map(|i| {
        let at = root + 36 + i * entry_size;
        let addr = if entry_size == 8 {
            read::<u64>(at)
        } else {
            u64::from(read::<u32>(at))
        };
        table(addr, b"APIC").map(|_| addr)
    })
}

/// The length of the table at `addr` if it is readable, has `signature`
/// and a sane length.
fn table(addr: u64, signature: &[u8; 4]) -> Option<u32> {
    if !readable(addr, 36) || read::<[u8; 4]>(addr) != *signature {
        return None;
    }
    let len: u32 = read(addr + 4);
    (36..=TABLE_MAX)
        .contains(&len)
        .then_some(len)
        .filter(|&len| readable(addr, u64::from(len)))
}
