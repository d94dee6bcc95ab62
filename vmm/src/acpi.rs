//! The ACPI tables a PVH guest finds through `hvm_start_info.rsdp_paddr`:
//! RSDP, XSDT, FADT (hardware-reduced, with an empty DSDT) and a MADT with
//! one local APIC (or x2APIC) entry per vCPU and the IOAPIC, the way Cloud
//! Hypervisor describes its CPUs. A kernel learns its CPUs from the MADT,
//! as on any PC, with no command-line word.
//!
//! Built by hand: rust-vmm's `acpi_tables` crate models the MADT only for
//! RISC-V, and these five tables are a few fixed layouts (ACPI 6.5, 5.2).

use crate::layout::ACPI_START;

/// The IOAPIC KVM's in-kernel irqchip puts at its standard address.
const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APIC's MMIO base.
const LAPIC_ADDR: u32 = 0xfee0_0000;
const OEM_ID: [u8; 6] = *b"WWATCH";
const OEM_TABLE_ID: [u8; 8] = *b"WWVMM   ";
/// FADT flags: HW_REDUCED_ACPI (bit 20): no PM timer, no SCI, no legacy
/// fixed hardware.
const FADT_HW_REDUCED: u32 = 1 << 20;
/// The largest APIC ID a type-0 MADT entry can hold; beyond, x2APIC entries.
const XAPIC_MAX_ID: u32 = 254;

/// Every table, as `(guest-physical address, bytes)`, and the RSDP's
/// address (the first).
pub fn tables(vcpus: u32) -> Vec<(u64, Vec<u8>)> {
    let dsdt = sdt(*b"DSDT", 6, &[]);
    let madt = madt(vcpus);
    // The FADT body after the header: 276 bytes in all (ACPI 6.5).
    let mut fadt_body = vec![0u8; 276 - 36];
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut fadt_body, 112 - 36, FADT_HW_REDUCED);
    fadt_body[131 - 36] = 5; // minor revision (6.5)
    // Addresses, laid out one after another from ACPI_START.
    let rsdp_at = ACPI_START;
    let xsdt_at = rsdp_at + 64;
    let fadt_at = xsdt_at + 64;
    let dsdt_at = fadt_at + 320;
    let madt_at = dsdt_at + 64;
    // X_DSDT (offset 140).
    fadt_body[140 - 36..148 - 36].copy_from_slice(&dsdt_at.to_le_bytes());
    let fadt = sdt(*b"FACP", 6, &fadt_body);
    let mut entries = Vec::new();
    for at in [fadt_at, madt_at] {
        entries.extend_from_slice(&at.to_le_bytes());
    }
    let xsdt = sdt(*b"XSDT", 1, &entries);
    vec![
        (rsdp_at, rsdp(xsdt_at)),
        (xsdt_at, xsdt),
        (fadt_at, fadt),
        (dsdt_at, dsdt),
        (madt_at, madt),
    ]
}

/// One byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A system description table: the 36-byte header, then `body`.
fn sdt(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(&signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(&OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"WWVM"); // creator
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The ACPI 2.0+ RSDP pointing at the XSDT.
fn rsdp(xsdt_at: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision: ACPI 2.0+, so the XSDT counts
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt_at.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The MADT: the local APIC base, PC-AT compatibility (a PIC is present),
/// one enabled processor entry per vCPU (APIC ID = vCPU index, as
/// `vstate::vcpu` sets it), the IOAPIC at GSI 0.
fn madt(vcpus: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
    for id in 0..vcpus {
        if id <= XAPIC_MAX_ID {
            // Processor local APIC: type 0, length 8, UID, APIC ID, flags.
            body.extend_from_slice(&[0, 8, id as u8, id as u8]);
            body.extend_from_slice(&1u32.to_le_bytes()); // enabled
        } else {
            // Processor local x2APIC: type 9, length 16.
            body.extend_from_slice(&[9, 16, 0, 0]);
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&id.to_le_bytes()); // UID
        }
    }
    // I/O APIC: type 1, length 12, ID, reserved, address, GSI base.
    body.extend_from_slice(&[1, 12, 0, 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    sdt(*b"APIC", 5, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
    }

    #[test]
    fn every_table_checksums_and_the_pointers_lead_to_the_madt() {
        let tables = tables(3);
        let at = |addr: u64| {
            tables
                .iter()
                .find(|(a, _)| *a == addr)
                .map(|(_, t)| t.as_slice())
                .unwrap_or_else(|| panic!("no table at {addr:#x}"))
        };
        let (rsdp_at, rsdp) = &tables[0];
        assert_eq!(*rsdp_at, ACPI_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]) && sums_to_zero(rsdp));
        let xsdt = at(u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        let mut signatures = Vec::new();
        for entry in xsdt[36..].chunks(8) {
            let table = at(u64::from_le_bytes(entry.try_into().unwrap()));
            assert!(sums_to_zero(table));
            assert_eq!(
                u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize,
                table.len()
            );
            signatures.push(table[..4].to_vec());
        }
        assert_eq!(signatures, [b"FACP".to_vec(), b"APIC".to_vec()]);
        let fadt = at(tables[2].0);
        assert_eq!(fadt.len(), 276);
        let dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(&at(dsdt)[..4], b"DSDT");
        // Everything lies in the reserved area below 1 MiB.
        for (addr, t) in &tables {
            assert!(*addr >= ACPI_START && addr + t.len() as u64 <= 0x10_0000);
        }
        for pair in tables.windows(2) {
            assert!(
                pair[0].0 + pair[0].1.len() as u64 <= pair[1].0,
                "tables overlap"
            );
        }
    }

    #[test]
    fn the_madt_lists_each_vcpu_once_with_x2apic_entries_past_254() {
        for vcpus in [1u32, 4, 64, 300] {
            let madt = madt(vcpus);
            let (mut ids, mut at) = (Vec::new(), 44);
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                match kind {
                    0 => ids.push(u32::from(madt[at + 3])),
                    9 => ids.push(u32::from_le_bytes(madt[at + 4..at + 8].try_into().unwrap())),
                    _ => {}
                }
                at += len;
            }
            assert_eq!(ids, (0..vcpus).collect::<Vec<_>>());
        }
    }
}
