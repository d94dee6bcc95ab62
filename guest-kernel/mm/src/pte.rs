//! The page-table entry: one arch-neutral enum and its x86-64 encoding.
//!
//! Mirrors `include/linux/swapops.h` (swap entries, PTE markers as a special
//! swap type `SWP_PTE_MARKER`) and `arch/x86/include/asm/pgtable_types.h`
//! (`_PAGE_PROTNONE` sharing the bit of `_PAGE_GLOBAL`).
//!
//! # x86-64 encoding
//! ```text
//! present (P=1):  63 NX | 58 SOFT_DIRTY | 51..12 PFN | 10 UFFD_WP | 6 D |
//!                 5 A | 2 U/S | 1 R/W | 0 P=1
//! PROT_NONE map:  same as present but P=0 and bit 8 (_PAGE_PROTNONE) = 1;
//!                 the CPU faults on it, the MM still sees the mapping
//! software entry: P=0, bit 8 = 0, bit 9 (SWP_VALID) = 1,
//!                 bits 5..1 = type, bits 57..12 = offset, 10 UFFD_WP and
//!                 58 SOFT_DIRTY as in a present entry (swap entries only)
//!                   type 0..=30 : swap entry (device index, slot offset)
//!                   type 31     : PTE marker, offset = marker kind code
//! none:           all zero
//! ```
//! Bit 9 keeps `type 0, offset 0` distinct from none. Offsets are not
//! inverted (L1TF mitigation); the guest relies on the host for that.

/// Flags of a mapped (leaf) PTE, arch-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PteFlags(u8);

impl PteFlags {
    /// Writable.
    pub const WRITE: PteFlags = PteFlags(1 << 0);
    /// Accessible from ring 3.
    pub const USER: PteFlags = PteFlags(1 << 1);
    /// Executable (x86: NX clear).
    pub const EXEC: PteFlags = PteFlags(1 << 2);
    /// Accessed (hardware-set, "young").
    pub const ACCESSED: PteFlags = PteFlags(1 << 3);
    /// Dirty (hardware-set on write).
    pub const DIRTY: PteFlags = PteFlags(1 << 4);
    /// PROT_NONE: mapped for the MM, inaccessible to the CPU.
    pub const PROTNONE: PteFlags = PteFlags(1 << 5);
    /// userfaultfd write-protected (`_PAGE_UFFD_WP`): never with
    /// [`PteFlags::WRITE`]; a write faults so the MM can note it.
    pub const UFFD_WP: PteFlags = PteFlags(1 << 6);
    /// Soft-dirty (`_PAGE_SOFT_DIRTY`): written since the last
    /// `clear_refs` 4. Software-set with [`PteFlags::DIRTY`] (x86's
    /// `pte_mkdirty` sets both); the CPU sets only the dirty bit, which
    /// is why `clear_refs` write-protects the entries it cleans.
    pub const SOFT_DIRTY: PteFlags = PteFlags(1 << 7);

    /// No flags.
    pub const fn empty() -> Self {
        PteFlags(0)
    }
    /// Whether all of `other` is set.
    pub const fn contains(self, other: PteFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with `other` added.
    #[must_use]
    pub const fn with(self, other: PteFlags) -> Self {
        PteFlags(self.0 | other.0)
    }
    /// `self` with `other` removed.
    #[must_use]
    pub const fn without(self, other: PteFlags) -> Self {
        PteFlags(self.0 & !other.0)
    }
    /// `self` with `other` set or cleared.
    #[must_use]
    pub const fn set(self, other: PteFlags, on: bool) -> Self {
        if on {
            self.with(other)
        } else {
            self.without(other)
        }
    }
}

/// A swap entry: device (swap type) and slot offset (`swp_entry_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SwapEntry {
    /// Swap device index (`swp_type`), `0..MAX_SWAP_TYPES`.
    pub dev: u8,
    /// Slot on the device (`swp_offset`).
    pub offset: u64,
    /// The entry's uffd-wp bit (`pte_swp_uffd_wp`): a PTE's, not the
    /// slot's; shmem's page cache never sets it.
    pub uffd_wp: bool,
    /// The entry's soft-dirty bit (`pte_swp_soft_dirty`), carried from
    /// the PTE it replaced and back.
    pub soft_dirty: bool,
}

/// Number of swap device types the encoding leaves room for.
pub const MAX_SWAP_TYPES: u8 = 31;
const MARKER_TYPE: u64 = 31;
const OFFSET_BITS: u32 = 46;

/// What a PTE marker says about the missing page (`PTE_MARKER_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// The page is gone (swap-in I/O error, memory failure): access is SIGBUS.
    Poisoned,
    /// A guard region (`MADV_GUARD_INSTALL`, Linux 6.13): access is
    /// SIGSEGV; survives `MADV_DONTNEED`, `MADV_FREE` and hole punching,
    /// goes only with the mapping (`ZAP_FLAG_DROP_MARKER`).
    Guard,
    /// userfaultfd write-protect on a PTE with no page: the protection
    /// outlives the page (zap of file-backed memory, WP_UNPOPULATED). A
    /// fault on it is a fault on none, write-protected.
    UffdWp,
}

impl MarkerKind {
    fn code(self) -> u64 {
        match self {
            MarkerKind::Poisoned => 1,
            MarkerKind::Guard => 2,
            MarkerKind::UffdWp => 3,
        }
    }
    fn from_code(c: u64) -> Option<Self> {
        match c {
            1 => Some(MarkerKind::Poisoned),
            2 => Some(MarkerKind::Guard),
            3 => Some(MarkerKind::UffdWp),
            _ => None,
        }
    }
}

/// A page-table entry, arch-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pte {
    /// Nothing mapped.
    None,
    /// A non-present marker (see [`MarkerKind`]).
    Marker(MarkerKind),
    /// The page lives in swap.
    Swap(SwapEntry),
    /// Next-level table (upper levels only).
    Table(crate::hw::Pfn),
    /// A mapped page.
    Mapped {
        /// The frame.
        pfn: crate::hw::Pfn,
        /// Permission and status bits.
        flags: PteFlags,
    },
}

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const PROTNONE: u64 = 1 << 8;
const SWP_VALID: u64 = 1 << 9;
/// `_PAGE_UFFD_WP` (`_PAGE_BIT_SOFTW2`), in present entries.
const UFFD_WP: u64 = 1 << 10;
/// `_PAGE_SOFT_DIRTY` (`_PAGE_BIT_SOFTW3`): a bit the CPU ignores.
const SOFT_DIRTY: u64 = 1 << 58;
const NX: u64 = 1 << 63;
/// Physical-address bits of an entry (51..12).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Why a raw value is not a valid entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPte(pub u64);

impl Pte {
    /// Encodes for x86-64. `leaf` is true at level 1 (PTE level).
    pub fn encode(self) -> u64 {
        match self {
            Pte::None => 0,
            Pte::Table(pfn) => pfn.addr() | P | RW | US | A,
            Pte::Mapped { pfn, flags } => {
                let mut v = pfn.addr() & ADDR_MASK;
                v |= if flags.contains(PteFlags::PROTNONE) {
                    PROTNONE
                } else {
                    P
                };
                if flags.contains(PteFlags::WRITE) {
                    v |= RW;
                }
                if flags.contains(PteFlags::USER) {
                    v |= US;
                }
                if flags.contains(PteFlags::ACCESSED) {
                    v |= A;
                }
                if flags.contains(PteFlags::DIRTY) {
                    v |= D;
                }
                if flags.contains(PteFlags::UFFD_WP) {
                    v |= UFFD_WP;
                }
                if flags.contains(PteFlags::SOFT_DIRTY) {
                    v |= SOFT_DIRTY;
                }
                if !flags.contains(PteFlags::EXEC) {
                    v |= NX;
                }
                v
            }
            Pte::Swap(e) => {
                debug_assert!(e.dev < MAX_SWAP_TYPES && e.offset < (1 << OFFSET_BITS));
                let wp = if e.uffd_wp { UFFD_WP } else { 0 };
                let sd = if e.soft_dirty { SOFT_DIRTY } else { 0 };
                SWP_VALID | wp | sd | ((e.dev as u64) << 1) | (e.offset << 12)
            }
            Pte::Marker(k) => SWP_VALID | (MARKER_TYPE << 1) | (k.code() << 12),
        }
    }

    /// Encodes a huge leaf for a PMD (2 MiB) or PUD (1 GiB) slot: a mapped
    /// entry gets the page-size bit, so the CPU stops the walk there;
    /// markers and none encode as at the PTE level.
    pub fn encode_huge(self) -> u64 {
        match self {
            Pte::Mapped { .. } => self.encode() | PS,
            Pte::Table(_) => panic!("a table is not a huge leaf"),
            other => other.encode(),
        }
    }

    /// Decodes an x86-64 entry found at page-table `level` (1 = PTE, 4 = PML4).
    /// At levels 2 and 3 a present entry with the page-size bit (or a
    /// PROT_NONE one) is a huge leaf, returned as `Mapped`, and a
    /// software entry is a huge marker or swap entry.
    pub fn decode(raw: u64, level: u8) -> Result<Pte, BadPte> {
        if raw == 0 {
            return Ok(Pte::None);
        }
        let pfn = crate::hw::Pfn((raw & ADDR_MASK) >> 12);
        let huge_level = matches!(level, 2 | 3);
        if raw & P != 0 && level > 1 && !(huge_level && raw & PS != 0) {
            return Ok(Pte::Table(pfn));
        }
        if raw & (P | PROTNONE) != 0 {
            if level > 1 && !(huge_level && raw & PS != 0) {
                return Err(BadPte(raw));
            }
            let mut f = PteFlags::empty()
                .set(PteFlags::PROTNONE, raw & P == 0)
                .set(PteFlags::WRITE, raw & RW != 0)
                .set(PteFlags::USER, raw & US != 0)
                .set(PteFlags::ACCESSED, raw & A != 0)
                .set(PteFlags::DIRTY, raw & D != 0)
                .set(PteFlags::UFFD_WP, raw & UFFD_WP != 0)
                .set(PteFlags::SOFT_DIRTY, raw & SOFT_DIRTY != 0);
            if raw & NX == 0 {
                f = f.with(PteFlags::EXEC);
            }
            return Ok(Pte::Mapped { pfn, flags: f });
        }
        if raw & SWP_VALID == 0 || !(level == 1 || huge_level) {
            return Err(BadPte(raw));
        }
        let ty = (raw >> 1) & 0x1f;
        let off = (raw >> 12) & ((1 << OFFSET_BITS) - 1);
        if ty == MARKER_TYPE {
            MarkerKind::from_code(off)
                .map(Pte::Marker)
                .ok_or(BadPte(raw))
        } else {
            Ok(Pte::Swap(SwapEntry {
                dev: ty as u8,
                offset: off,
                uffd_wp: raw & UFFD_WP != 0,
                soft_dirty: raw & SOFT_DIRTY != 0,
            }))
        }
    }

    /// `pte_none_mostly`: nothing mapped and nothing swapped — none or
    /// a marker. Code that fills empty slots (faults, fault-around,
    /// `UFFDIO_COPY`) asks this; code that must not lose a marker asks
    /// `== Pte::None`.
    pub fn is_none_mostly(self) -> bool {
        matches!(self, Pte::None | Pte::Marker(_))
    }

    /// The frame of a mapped entry, or 0.
    pub fn pfn_or_zero(self) -> u64 {
        match self {
            Pte::Mapped { pfn, .. } | Pte::Table(pfn) => pfn.0,
            _ => 0,
        }
    }

    /// The marker kind, if this is a marker.
    pub fn marker(self) -> Option<MarkerKind> {
        match self {
            Pte::Marker(k) => Some(k),
            _ => None,
        }
    }

    /// Whether the CPU can use the entry (present, not PROT_NONE).
    pub fn is_present(self) -> bool {
        matches!(self, Pte::Table(_))
            || matches!(self, Pte::Mapped { flags, .. } if !flags.contains(PteFlags::PROTNONE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Pfn;

    #[test]
    fn roundtrip_all_variants() {
        let mut cases = alloc::vec![
            Pte::None,
            Pte::Marker(MarkerKind::Poisoned),
            Pte::Marker(MarkerKind::Guard),
            Pte::Marker(MarkerKind::UffdWp),
            Pte::Swap(SwapEntry {
                dev: 0,
                offset: 0,
                uffd_wp: false,
                soft_dirty: false,
            }),
            Pte::Swap(SwapEntry {
                dev: 30,
                offset: (1 << 46) - 1,
                uffd_wp: false,
                soft_dirty: true,
            }),
            Pte::Swap(SwapEntry {
                dev: 3,
                offset: 77,
                uffd_wp: true,
                soft_dirty: true,
            }),
        ];
        for bits in 0..=255u8 {
            cases.push(Pte::Mapped {
                pfn: Pfn(0x12345),
                flags: PteFlags(bits),
            });
        }
        for c in cases {
            assert_eq!(Pte::decode(c.encode(), 1), Ok(c), "{c:?}");
        }
        let t = Pte::Table(Pfn(77));
        assert_eq!(Pte::decode(t.encode(), 3), Ok(t));
        for level in [2, 3] {
            for huge in [
                Pte::Mapped {
                    pfn: Pfn(0x200),
                    flags: PteFlags::USER.with(PteFlags::WRITE),
                },
                Pte::Mapped {
                    pfn: Pfn(0x40000),
                    flags: PteFlags::USER.with(PteFlags::PROTNONE),
                },
                Pte::Marker(MarkerKind::UffdWp),
                Pte::None,
            ] {
                assert_eq!(Pte::decode(huge.encode_huge(), level), Ok(huge), "{huge:?}");
            }
        }
        assert_eq!(Pte::decode(t.encode(), 2), Ok(t), "no PS bit: a table");
    }

    #[test]
    fn hardware_bits() {
        let raw = Pte::Mapped {
            pfn: Pfn(5),
            flags: PteFlags::WRITE.with(PteFlags::USER),
        }
        .encode();
        assert_eq!(raw, 0x5000 | P | RW | US | NX);
        let none = Pte::Mapped {
            pfn: Pfn(5),
            flags: PteFlags::PROTNONE.with(PteFlags::USER),
        };
        assert_eq!(
            none.encode() & P,
            0,
            "PROT_NONE must not be present to the CPU"
        );
        assert!(!none.is_present());
        // Swap entries and markers are never present and never zero.
        let s = Pte::Swap(SwapEntry {
            dev: 0,
            offset: 0,
            uffd_wp: false,
            soft_dirty: false,
        })
        .encode();
        assert!(s != 0 && s & P == 0);
        assert_eq!(Pte::decode(0x80, 1), Err(BadPte(0x80)));
    }
}
