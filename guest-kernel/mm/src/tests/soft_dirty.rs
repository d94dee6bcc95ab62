//! Soft-dirty tracking held to the exact set of pages a workload wrote
//! since the last `clear_refs` 4: every written page has pagemap bit 55
//! (nothing missed) and, with no mapping made or grown since, no other
//! page has it; Linux's imprecision when a new mapping merges into a
//! cleaned VMA, and precise mode without it.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::workload::{A, Effect, PAGES, PG, Step, apply, step};
use super::*;
use crate::SoftDirty;
use crate::madvise::MADV_PAGEOUT;
use crate::mmap::MAP_FIXED;
use crate::pagemap::PM_SOFT_DIRTY;
use crate::tmpfs::AT_FDCWD;

/// A page outside the region for paths and buffers.
const SCRATCH: u64 = A + 0x10_0000;

fn system(mode: SoftDirty) -> (Sys, Pid) {
    let (mut s, p) = setup_with(Config {
        swap_frames: 64,
        soft_dirty: mode,
        ..Config::default()
    });
    mmap(&mut s, p, SCRATCH, PG, RW, PRIV | MAP_FIXED).unwrap();
    (s, p)
}

/// Writes `text` to `/proc/self/clear_refs`, as a process does; the
/// result of the write.
fn clear_refs_text(s: &mut Sys, p: Pid, text: &[u8]) -> Result<u64, Errno> {
    write(s, p, SCRATCH, b"/proc/self/clear_refs\0");
    write(s, p, SCRATCH + 64, text);
    let fd = s.openat(p, AT_FDCWD, SCRATCH, crate::file::O_WRONLY, 0)?;
    let r = s.file_write(p, fd, SCRATCH + 64, text.len() as u64, None);
    s.close(p, fd).unwrap();
    r
}

fn clear_refs(s: &mut Sys, p: Pid) {
    assert_eq!(clear_refs_text(s, p, b"4\n"), Ok(2));
    ok(s);
}

/// The pages of the region whose pagemap entry has bit 55.
fn soft_dirty(s: &Sys, p: Pid) -> BTreeSet<u64> {
    let e = s.pagemap(p, A, PAGES).unwrap();
    (0..PAGES)
        .filter(|&i| e[i as usize] & PM_SOFT_DIRTY != 0)
        .collect()
}

fn run(mode: SoftDirty, shared: bool, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let (mut s, p) = system(mode);
    let flags = if shared { SHARED } else { PRIV } | MAP_FIXED;
    mmap(&mut s, p, A, PAGES * PG, RW, flags).unwrap();
    write(&mut s, p, SCRATCH, b"t\0");
    let file = s.memfd_create(p, SCRATCH, 0).unwrap();
    s.ftruncate(p, file, PG).unwrap();
    // A new VMA is soft-dirty as a whole until the first clear.
    prop_assert_eq!(soft_dirty(&s, p).len() as u64, PAGES);
    clear_refs(&mut s, p);
    let mut written = BTreeSet::new();
    for st in steps.into_iter().chain([Step::Check]) {
        if !matches!(st, Step::Check) {
            match apply(&mut s, p, file, &st) {
                Effect::Written(i) => {
                    written.insert(i);
                }
                // The page and its bit are gone; what was written there
                // is too.
                Effect::Dropped(i) => {
                    written.remove(&i);
                }
                // Linux's gap: reclaim unmaps a shared-memory page
                // without a trace in the PTE (try_to_unmap_one keeps
                // soft-dirty only in anonymous swap entries), so its bit
                // is lost; uffd-wp keeps a marker instead.
                Effect::PagedOut(i) if shared => {
                    written.remove(&i);
                }
                Effect::PagedOut(_) | Effect::Nothing => {}
            }
            ok(&s);
            continue;
        }
        let got = soft_dirty(&s, p);
        let missed: Vec<_> = written.difference(&got).collect();
        prop_assert!(
            missed.is_empty(),
            "written pages not soft-dirty: {:?}",
            missed
        );
        let extra: Vec<_> = got.difference(&written).collect();
        prop_assert!(
            extra.is_empty(),
            "soft-dirty pages not written: {:?}",
            extra
        );
        clear_refs(&mut s, p);
        prop_assert!(soft_dirty(&s, p).is_empty());
        written.clear();
        ok(&s);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: super::cases(64), ..ProptestConfig::default() })]

    #[test]
    fn soft_dirty_reports_exactly_the_written_pages(
        steps in proptest::collection::vec(step(), 1..60),
        shared in any::<bool>(),
        precise in any::<bool>(),
    ) {
        let mode = if precise { SoftDirty::Precise } else { SoftDirty::On };
        run(mode, shared, steps)?;
    }
}

/// The VMAs of the region, as (first page, pages).
fn vmas(s: &Sys, p: Pid) -> Vec<(u64, u64)> {
    s.maps(p)
        .unwrap()
        .iter()
        .filter(|m| (A..A + PAGES * PG).contains(&m.start))
        .map(|m| ((m.start - A) / PG, (m.end - m.start) / PG))
        .collect()
}

#[test]
fn a_new_mapping_merged_into_a_cleaned_one_makes_it_all_soft_dirty_except_in_precise_mode() {
    for mode in [SoftDirty::On, SoftDirty::Precise] {
        let (mut s, p) = system(mode);
        mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
        write(&mut s, p, A, &[1]);
        clear_refs(&mut s, p);
        write(&mut s, p, A + PG, &[2]);
        // The next four pages, mapped where they meet the first four.
        mmap(&mut s, p, A + 4 * PG, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
        ok(&s);
        let got = soft_dirty(&s, p);
        match mode {
            // is_mergeable_vma ignores VM_SOFTDIRTY; the merged VMA is
            // soft-dirty, so pages 0, 2 and 3 are reported unwritten.
            SoftDirty::On => {
                assert_eq!(vmas(&s, p), [(0, 8)]);
                assert_eq!(got, (0..8).collect());
            }
            SoftDirty::Precise => {
                assert_eq!(vmas(&s, p), [(0, 4), (4, 4)]);
                assert_eq!(got, [1, 4, 5, 6, 7].into_iter().collect());
            }
            SoftDirty::Off => unreachable!(),
        }
        // A clear makes them equal again: precise mode merges them.
        clear_refs(&mut s, p);
        assert_eq!(vmas(&s, p), [(0, 8)], "{mode:?}");
        assert!(soft_dirty(&s, p).is_empty());
    }
}

#[test]
fn without_soft_dirty_nothing_is_ever_soft_dirty() {
    let (mut s, p) = system(SoftDirty::Off);
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, &[1]);
    assert!(soft_dirty(&s, p).is_empty());
    // clear_refs 4 is accepted and changes nothing, as in Linux without
    // CONFIG_MEM_SOFT_DIRTY.
    clear_refs(&mut s, p);
    write(&mut s, p, A + PG, &[1]);
    assert!(soft_dirty(&s, p).is_empty());
}

#[test]
fn clear_refs_takes_types_one_to_five_and_only_for_writing() {
    let (mut s, p) = system(SoftDirty::On);
    for (text, want) in [
        (&b"1"[..], Ok(1)),
        (b" 5 \n", Ok(4)),
        (b"0", Err(Errno::EINVAL)),
        (b"6", Err(Errno::EINVAL)),
        (b"4x", Err(Errno::EINVAL)),
        (b"", Err(Errno::EINVAL)),
    ] {
        assert_eq!(clear_refs_text(&mut s, p, text), want, "{text:?}");
    }
    write(&mut s, p, SCRATCH, b"/proc/self/clear_refs\0");
    for flags in [0, crate::file::O_RDWR] {
        assert_eq!(s.openat(p, AT_FDCWD, SCRATCH, flags, 0), Err(Errno::EACCES));
    }
}

#[test]
fn swap_and_mremap_keep_the_bit_and_mark_moved_pages() {
    let (mut s, p) = system(SoftDirty::On);
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, &[1]);
    write(&mut s, p, A + PG, &[2]);
    clear_refs(&mut s, p);
    write(&mut s, p, A + PG, &[3]);
    // Page 1 (written) and page 0 (clean) go to swap and come back.
    s.madvise(p, A, 2 * PG, MADV_PAGEOUT).unwrap();
    assert_eq!(soft_dirty(&s, p), [1].into_iter().collect());
    assert_eq!(read(&mut s, p, A, 1), [1]);
    assert_eq!(soft_dirty(&s, p), [1].into_iter().collect());
    ok(&s);
    // move_soft_dirty_pte: what mremap moves is soft-dirty where it lands.
    let to = A + 16 * PG;
    let r = s.mremap(p, A, 2 * PG, 2 * PG, 3u64, to).unwrap();
    assert_eq!(r, to);
    let e = s.pagemap(p, to, 2).unwrap();
    assert!(e.iter().all(|e| e & PM_SOFT_DIRTY != 0), "{e:x?}");
    ok(&s);
}
