//! The hand-written edge cases, from Linux's selftests
//! (tools/testing/selftests/mm: map_fixed_noreplace.c, mremap_test.c,
//! mremap_dontunmap.c, mlock2-tests.c, madv_populate.c, merge.c) and the
//! man pages. Each must agree with the host's Linux, except the few listed
//! as out of scope with their reason; one of those that starts agreeing is
//! reported too, so the list stays true.

use crate::script::parse_script;
use crate::{Divergence, compare};

pub struct Case {
    pub name: &'static str,
    /// Where the case comes from.
    pub source: &'static str,
    pub script: &'static str,
    /// `Some(reason)`: known to differ from Linux, on purpose.
    pub out_of_scope: Option<&'static str>,
}

const fn case(name: &'static str, source: &'static str, script: &'static str) -> Case {
    Case {
        name,
        source,
        script,
        out_of_scope: None,
    }
}

/// A case that differs from Linux on purpose, until `reason` is built.
const fn later(
    name: &'static str,
    source: &'static str,
    script: &'static str,
    reason: &'static str,
) -> Case {
    Case {
        name,
        source,
        script,
        out_of_scope: Some(reason),
    }
}

pub fn all() -> Vec<Case> {
    vec![
        // mmap: argument checks in Linux's order (sys_mmap, ksys_mmap_pgoff, do_mmap, __get_unmapped_area)
        case(
            "mmap_zero_len",
            "man mmap: EINVAL for length 0",
            "mmap W 0 rw private|anon|fixed",
        ),
        case(
            "mmap_len_rounds_to_zero",
            "do_mmap: PAGE_ALIGN(len) == 0 is ENOMEM",
            "mmap W 0xfffffffffffff001 rw private|anon|fixed",
        ),
        case(
            "mmap_len_beyond_task_size",
            "__get_unmapped_area: len > TASK_SIZE",
            "mmap W 0x800000000000 rw private|anon",
        ),
        case(
            "mmap_offset_unaligned_first",
            "sys_mmap checks the offset before anything",
            "mmap W 0 rw fixed -1 0x123",
        ),
        case(
            "mmap_no_anon_no_file",
            "ksys_mmap_pgoff: fget(-1) fails: EBADF before the length check",
            "mmap W 0 rw private|fixed
mmap W 1p rw 0x0f|fixed",
        ),
        case(
            "mmap_shared_validate_anon",
            "do_mmap: anonymous MAP_SHARED_VALIDATE is not a type",
            "mmap W 1p rw shared_validate|anon|fixed",
        ),
        case(
            "mmap_bad_type",
            "do_mmap: MAP_TYPE 0 and 0x0f are EINVAL",
            "mmap W 1p rw anon|fixed
mmap W 1p rw 0x0f|anon|fixed",
        ),
        case(
            "mmap_bad_type_noreplace_over_mapping",
            "do_mmap: the EEXIST check comes before the type check",
            "mmap W 2p rw private|anon|fixed
mmap W 1p rw shared_validate|anon|fixed_noreplace
mmap W 1p rw anon|fixed_noreplace",
        ),
        case(
            "mmap_unknown_prot_bits_ignored",
            "do_mmap does not validate prot",
            "mmap W 1p rw|0x10|0x80 private|anon|fixed
mmap W+1p 1p sem private|anon|fixed
mmap W+2p 1p growsdown|r private|anon|fixed",
        ),
        case(
            "mmap_ignored_flags",
            "MAP_DENYWRITE, MAP_EXECUTABLE, MAP_NONBLOCK and unknown bits are ignored",
            "mmap W 1p rw private|anon|fixed|denywrite|executable
mmap W+1p 1p rw private|anon|fixed|nonblock|0x400",
        ),
        case(
            "mmap_fixed_unaligned",
            "__get_unmapped_area: offset_in_page(addr)",
            "mmap W+0x10 1p rw private|anon|fixed",
        ),
        case(
            "mmap_fixed_unaligned_beyond_task_size",
            "__get_unmapped_area: the TASK_SIZE check comes first",
            "mmap 0x800000000010 1p rw private|anon|fixed
mmap 0x7ffffffff010 1p rw private|anon|fixed",
        ),
        case(
            "mmap_top_page",
            "x86-64 TASK_SIZE is one page below 1 << 47",
            "mmap 0x7ffffffff000 1p rw private|anon|fixed
mmap 0x7ffffffff000 1p rw private|anon|fixed_noreplace
mmap 0x7fffffffe000 1p rw private|anon|fixed
write 0x7fffffffe000 1
mmap 0x7fffffffe000 2p rw private|anon|fixed
munmap 0x7ffffffff000 1p
munmap 0x7fffffffe000 1p",
        ),
        case(
            "mmap_hint_top_page",
            "arch_get_unmapped_area_topdown: a hint past TASK_SIZE - len is no hint",
            "mmap 0x7ffffffff000 1p rw private|anon",
        ),
        case(
            "mmap_below_min_addr",
            "security_mmap_addr: EPERM below vm.mmap_min_addr",
            "mmap 0 1p rw private|anon|fixed",
        ),
        case(
            "mmap_hint_below_min_addr",
            "round_hint_to_min",
            "mmap 0x800 1p rw private|anon",
        ),
        case(
            "mmap_hint_used",
            "a free hint is used",
            "mmap W+8p 2p rw private|anon
mmap W+0x5123 1p rw private|anon",
        ),
        case(
            "mmap_hint_occupied",
            "an occupied hint falls back to the top-down search",
            "mmap W 4p rw private|anon|fixed
mmap W+2p 1p rw private|anon
write @1 5
munmap @1 1p",
        ),
        case(
            "mmap_fixed_replaces",
            "MAP_FIXED unmaps what was there",
            "mmap W 4p rw private|anon|fixed
write W+1p 1
write W+2p 2
mmap W+1p 1p r private|anon|fixed
read W+1p
read W+2p",
        ),
        case(
            "mmap_fixed_noreplace_selftest",
            "map_fixed_noreplace.c: every overlap shape is EEXIST, adjacent ranges map",
            "mmap W+2p 5p rw private|anon|fixed_noreplace
mmap W+2p 5p rw private|anon|fixed_noreplace
mmap W+4p 1p rw private|anon|fixed_noreplace
mmap W+1p 2p rw private|anon|fixed_noreplace
mmap W+6p 3p rw private|anon|fixed_noreplace
mmap W 9p rw private|anon|fixed_noreplace
mmap W 2p rw private|anon|fixed_noreplace
mmap W+7p 2p rw private|anon|fixed_noreplace",
        ),
        case(
            "mmap_noreplace_unaligned",
            "fixed_noreplace implies MAP_FIXED's alignment check",
            "mmap W+0x10 1p rw private|anon|fixed_noreplace",
        ),
        case(
            "mmap_merge_neighbours",
            "vma_merge_new_range: compatible neighbours merge",
            "mmap W 2p rw private|anon|fixed
mmap W+4p 2p rw private|anon|fixed
mmap W+2p 2p rw private|anon|fixed
mmap W+6p 2p r private|anon|fixed",
        ),
        case(
            "mmap_merge_after_fault",
            "a faulted VMA still merges with a new empty neighbour",
            "mmap W 2p rw private|anon|fixed
write W 1
mmap W+2p 2p rw private|anon|fixed
write W+3p 2",
        ),
        case(
            "mmap_populate",
            "MAP_POPULATE faults every page in",
            "mmap W 3p rw private|anon|fixed|populate
mmap W+4p 2p r private|anon|fixed|populate
mmap W+8p 2p none private|anon|fixed|populate
mmap W+12p 2p rw shared|anon|fixed|populate",
        ),
        case(
            "mmap_shared_anon",
            "a shared anonymous mapping is shmem",
            "mmap W 2p rw shared|anon|fixed
write W+1p 9
fork
p1 read W+1p
p1 write W 3
read W",
        ),
        case(
            "mmap_locked",
            "MAP_LOCKED populates; DONTNEED is refused on locked memory",
            "mmap W 3p rw private|anon|fixed|locked
madvise W 1p dontneed
madvise W 1p dontneed_locked
read W+1p",
        ),
        case(
            "mmap_locked_merge",
            "VM_LOCKED keeps a locked mapping apart from unlocked neighbours",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p rw private|anon|fixed|locked
mmap W+4p 2p rw private|anon|fixed|locked",
        ),
        case(
            "mmap_stack",
            "MAP_STACK sets VM_NOHUGEPAGE: its own VMA",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p rw private|anon|fixed|stack
mmap W+4p 2p rw private|anon|fixed|stack",
        ),
        case(
            "mmap_growsdown",
            "MAP_GROWSDOWN: the stack grows on a fault below it",
            "mmap W+300p 2p rw private|anon|fixed|growsdown
write W+299p 1
write W+290p 2
read W+290p",
        ),
        case(
            "mmap_growsdown_guard_gap",
            "expand_downwards keeps stack_guard_gap from the VMA below",
            "mmap W 2p rw private|anon|fixed
mmap W+100p 2p rw private|anon|fixed|growsdown
write W+99p 1
write W+300p 2",
        ),
        case(
            "mmap_growsdown_shared",
            "do_mmap: a shared mapping cannot grow down",
            "mmap W 2p rw shared|anon|fixed|growsdown",
        ),
        case(
            "mmap_droppable",
            "MAP_DROPPABLE (6.11): private-like, wiped on fork",
            "mmap W 2p rw droppable|anon|fixed
write W 5
fork
p1 read W
read W
mmap W+4p 1p rw droppable|anon|fixed|locked",
        ),
        case(
            "mmap_hugetlb_no_pool",
            "ksys_mmap_pgoff: MAP_HUGETLB with an empty pool cannot reserve",
            "mmap W 512p rw private|anon|hugetlb
mmap W 512p rw private|anon|hugetlb|huge_2mb
mmap W 1p rw private|anon|hugetlb|0x1c000000",
        ),
        case(
            "mmap_max_pages_ok",
            "a mapping of most of the window, never touched",
            "mmap W 0x3ffff000 rw private|anon|fixed
munmap W+1p 1p",
        ),
        // munmap
        case(
            "munmap_checks",
            "do_vmi_munmap: alignment, zero length, TASK_SIZE",
            "munmap W+0x10 1p
munmap W 0
munmap 0x800000000000 1p
munmap W 0xfffffffffffff000
munmap W 1p",
        ),
        case(
            "munmap_split",
            "unmapping the middle splits",
            "mmap W 6p rw private|anon|fixed
write W+1p 1
write W+4p 4
munmap W+2p 2p
read W+4p",
        ),
        case(
            "munmap_unaligned_len",
            "the length rounds up",
            "mmap W 4p rw private|anon|fixed
munmap W 0x1001",
        ),
        case(
            "munmap_across_holes",
            "one call over several VMAs and holes",
            "mmap W 2p rw private|anon|fixed
mmap W+3p 2p r private|anon|fixed
mmap W+6p 2p rw shared|anon|fixed
munmap W+1p 6p",
        ),
        // mprotect
        case(
            "mprotect_len_zero_first",
            "do_mprotect_pkey: length 0 returns 0 before prot is checked",
            "mprotect W 0 0x10
mprotect W 0 growsdown|growsup
mprotect W+0x10 0 r",
        ),
        case(
            "mprotect_prot_sem",
            "arch_validate_prot accepts PROT_SEM",
            "mmap W 2p rw private|anon|fixed
mprotect W 1p r|sem
mprotect W 1p 0x10",
        ),
        case(
            "mprotect_overflow",
            "end <= start is ENOMEM",
            "mprotect W 0xfffffffffffff000 r",
        ),
        case(
            "mprotect_holes",
            "a hole at the start changes nothing; a later hole stops with ENOMEM",
            "mmap W+1p 2p rw private|anon|fixed
mmap W+4p 2p rw private|anon|fixed
mprotect W 3p r
mprotect W+1p 5p r
mprotect W+4p 1p none",
        ),
        case(
            "mprotect_unmapped",
            "nothing there: ENOMEM",
            "mprotect W 1p r
mprotect 0x7ffffffff000 1p r",
        ),
        case(
            "mprotect_growsdown_flags",
            "PROT_GROWSDOWN on a normal VMA is EINVAL, both bits always",
            "mmap W 2p rw private|anon|fixed
mprotect W 1p r|growsdown
mprotect W 1p r|growsdown|growsup
mprotect W+4p 1p r|growsdown",
        ),
        case(
            "mprotect_growsdown_vma",
            "PROT_GROWSDOWN extends the change to the VMA's start",
            "mmap W+300p 4p rw private|anon|fixed|growsdown
mprotect W+302p 1p r|growsdown",
        ),
        case(
            "mprotect_eacces",
            "asking beyond VM_MAY* is EACCES (a shared mapping of a read-only object is the classic case; anonymous memory may everything)",
            "mmap W 2p none private|anon|fixed
mprotect W 2p rwx",
        ),
        case(
            "mprotect_split_merge",
            "splits and merges back",
            "mmap W 4p rw private|anon|fixed
write W+1p 1
mprotect W+1p 2p r
write W+1p 2
read W+1p
mprotect W+1p 2p rw
write W+1p 3",
        ),
        case(
            "mprotect_cow_after_fork",
            "write permission comes back only for exclusive pages",
            "mmap W 2p rw private|anon|fixed
write W 1
fork
mprotect W 2p r
mprotect W 2p rw
write W 2
p1 read W",
        ),
        case(
            "mprotect_prot_none_pages_kept",
            "PROT_NONE keeps pages; reading them faults",
            "mmap W 2p rw private|anon|fixed
write W 7
mprotect W 2p none
read W
mprotect W 2p r
read W",
        ),
        // madvise
        case(
            "madvise_checks",
            "do_madvise / is_valid_madvise",
            "madvise W 1p 999
madvise W+0x10 1p dontneed
madvise W 0 dontneed
madvise W 0xffffffffffffffff dontneed
madvise W 1p dontneed
madvise W 0 999",
        ),
        case(
            "madvise_hole_after_work",
            "madvise_walk_vmas: the work is done, then ENOMEM",
            "mmap W 2p rw private|anon|fixed
write W 1
madvise W 4p dontneed
read W",
        ),
        case(
            "madvise_dontneed",
            "private memory reads as zeroes again; shared keeps its data",
            "mmap W 2p rw private|anon|fixed
mmap W+4p 2p rw shared|anon|fixed
write W 1
write W+4p 2
madvise W 6p dontneed
read W
read W+4p",
        ),
        case(
            "madvise_free",
            "MADV_FREE: the data stays until reclaim, which drops clean pages",
            "mmap W 4p rw private|anon|fixed
write W 1
write W+1p 2
write W+2p 3
madvise W 3p free
read W
write W+1p 5
madvise W 3p pageout
read W
read W+1p
read W+2p",
        ),
        case(
            "madvise_free_shared",
            "MADV_FREE is for private anonymous memory only",
            "mmap W 2p rw shared|anon|fixed
madvise W 2p free",
        ),
        case(
            "madvise_free_after_fork",
            "a page mapped by two processes is not lazily freed",
            "mmap W 2p rw private|anon|fixed
write W 1
fork
madvise W 2p free
madvise W 2p pageout
read W
p1 read W",
        ),
        case(
            "madvise_pageout_without_swap",
            "no swap: anonymous pages stay",
            "mmap W 2p rw private|anon|fixed
write W 1
madvise W 2p pageout
madvise W 2p cold
read W",
        ),
        case(
            "madvise_dontfork",
            "MADV_DONTFORK: the child does not get the range; DOFORK undoes it",
            "mmap W 4p rw private|anon|fixed
write W+1p 1
madvise W+1p 2p dontfork
fork
p1 read W+1p
madvise W+1p 2p dofork",
        ),
        case(
            "madvise_wipeonfork",
            "MADV_WIPEONFORK: the child sees zeroes; not for shared memory",
            "mmap W 2p rw private|anon|fixed
mmap W+4p 1p rw shared|anon|fixed
write W 1
madvise W 1p wipeonfork
madvise W+4p 1p wipeonfork
fork
p1 read W
read W
madvise W 1p keeponfork",
        ),
        case(
            "madvise_populate",
            "MADV_POPULATE_READ / WRITE",
            "mmap W 4p rw private|anon|fixed
madvise W 2p populate_read
madvise W+2p 2p populate_write
mmap W+8p 2p r private|anon|fixed
madvise W+8p 2p populate_write
mmap W+12p 2p none private|anon|fixed
madvise W+12p 2p populate_read
madvise W+16p 2p populate_read",
        ),
        case(
            "madvise_populate_cow",
            "POPULATE_WRITE breaks COW, POPULATE_READ does not",
            "mmap W 2p rw private|anon|fixed
write W 1
write W+1p 2
fork
p1 madvise W 1p populate_read
p1 madvise W+1p 1p populate_write
p1 write W+1p 3
read W+1p",
        ),
        case(
            "madvise_access_pattern",
            "RANDOM / SEQUENTIAL / NORMAL live on the VMA and split it",
            "mmap W 4p rw private|anon|fixed
madvise W+1p 1p random
madvise W+2p 1p sequential
madvise W+1p 2p normal",
        ),
        case(
            "madvise_flags_split",
            "DONTDUMP, HUGEPAGE, MERGEABLE are VMA flags too",
            "mmap W 6p rw private|anon|fixed
madvise W 1p dontdump
madvise W 1p dodump
madvise W+2p 1p hugepage
madvise W+2p 1p nohugepage
madvise W+4p 1p mergeable
madvise W+4p 1p unmergeable",
        ),
        case(
            "madvise_no_effect_hints",
            "WILLNEED and COLD change nothing visible",
            "mmap W 2p rw private|anon|fixed
write W 1
madvise W 2p willneed
madvise W 2p cold",
        ),
        case(
            "madvise_remove",
            "MADV_REMOVE punches shared memory; private memory has no file",
            "mmap W 2p rw shared|anon|fixed
write W 1
write W+1p 2
fork
madvise W 1p remove
p1 read W
p1 read W+1p
mmap W+4p 1p rw private|anon|fixed
madvise W+4p 1p remove",
        ),
        case(
            "madvise_remove_readonly",
            "MADV_REMOVE needs a writable shared mapping",
            "mmap W 2p r shared|anon|fixed
madvise W 1p remove",
        ),
        case(
            "madvise_memory_failure",
            "HWPOISON / SOFT_OFFLINE need CAP_SYS_ADMIN",
            "mmap W 1p rw private|anon|fixed
madvise W 1p 100
madvise W 1p 101",
        ),
        case(
            "madvise_dontneed_locked_range",
            "DONTNEED_LOCKED works on unlocked memory too",
            "mmap W 2p rw private|anon|fixed
write W 1
madvise W 2p dontneed_locked
read W",
        ),
        // mlock
        case(
            "mlock_basic",
            "mlock populates and splits; munlock merges back",
            "mmap W 4p rw private|anon|fixed
mlock W+1p 2p
madvise W+1p 1p dontneed
munlock W+1p 2p
madvise W+1p 1p dontneed",
        ),
        case(
            "mlock_unaligned",
            "mlock rounds the start down and the length up",
            "mmap W 4p rw private|anon|fixed
mlock W+0x1800 0x1000",
        ),
        case(
            "mlock_hole",
            "a hole is ENOMEM",
            "mmap W 2p rw private|anon|fixed
mlock W 4p
munlock W 4p",
        ),
        case(
            "mlock_prot_none",
            "mlock of PROT_NONE memory locks without populating",
            "mmap W 2p none private|anon|fixed
mlock W 2p",
        ),
        case(
            "mlock_over_limit",
            "RLIMIT_MEMLOCK (8 MiB here) without CAP_IPC_LOCK",
            "mmap W 4096p rw private|anon|fixed
mlock W 4096p",
        ),
        // mremap
        case(
            "mremap_flag_checks",
            "mremap's argument checks",
            "mmap W 4p rw private|anon|fixed
mremap W 4p 4p 8
mremap W 4p 4p fixed W+16p
mremap W 4p 4p dontunmap W+16p
mremap W+0x10 1p 1p 0
mremap W 4p 0 0
mremap W 4p 2p maymove|dontunmap W+16p
mremap W 4p 4p maymove|fixed W+0x10010",
        ),
        case(
            "mremap_old_len_zero_private",
            "old_len 0 duplicates only shared mappings",
            "mmap W 2p rw private|anon|fixed
mremap W 0 2p maymove",
        ),
        case(
            "mremap_old_len_zero_shared",
            "old_len 0 of a shared mapping makes a second mapping of the same pages",
            "mmap W 2p rw shared|anon|fixed
write W 4
mremap W 0 2p maymove|fixed W+8p
read W+8p
write W+9p 5
read W+1p",
        ),
        case(
            "mremap_old_len_zero_fixed_over_source",
            "a failing call must not destroy the source",
            "mmap W 4p rw shared|anon|fixed
write W 1
mremap W 0 2p maymove|fixed W
mremap W 0 2p maymove|fixed W+1p
read W",
        ),
        case(
            "mremap_fixed_overlap",
            "MREMAP_FIXED onto the source range is EINVAL",
            "mmap W 4p rw private|anon|fixed
mremap W 4p 4p maymove|fixed W+2p
mremap W+2p 2p 2p maymove|fixed W",
        ),
        case(
            "mremap_shrink",
            "shrinking unmaps the tail",
            "mmap W 4p rw private|anon|fixed
write W+3p 1
mremap W 4p 2p 0
read W+3p",
        ),
        case(
            "mremap_shrink_across_vmas",
            "shrinking across VMAs and holes unmaps the tail (no VMA check)",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p r private|anon|fixed
mremap W 4p 1p 0
mmap W+8p 2p rw private|anon|fixed
mremap W+8p 4p 1p 0",
        ),
        case(
            "mremap_same_size_across_vmas",
            "a same-size call across VMAs is a no-op that succeeds",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p r private|anon|fixed
mremap W 4p 4p 0
mremap W 4p 4p maymove",
        ),
        case(
            "mremap_grow_across_vmas",
            "growing a range that spans VMAs is EFAULT",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p r private|anon|fixed
mremap W 4p 6p maymove",
        ),
        case(
            "mremap_unmapped",
            "nothing at the old address: EFAULT",
            "mremap W 1p 2p maymove",
        ),
        case(
            "mremap_grow_in_place",
            "growing in place when the space is free",
            "mmap W 2p rw private|anon|fixed
write W+1p 1
mremap W 2p 4p 0
write W+3p 2",
        ),
        case(
            "mremap_grow_blocked",
            "no room and no MAYMOVE: ENOMEM; with it the mapping moves with its data",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 1p r private|anon|fixed
write W+1p 6
mremap W 2p 4p 0
mremap W 2p 4p maymove
read @4+1p
write @4+3p 1",
        ),
        case(
            "mremap_fixed_move",
            "MREMAP_FIXED moves (and replaces what was there)",
            "mmap W 2p rw private|anon|fixed
mmap W+8p 4p rw private|anon|fixed
write W 1
write W+9p 9
mremap W 2p 3p maymove|fixed W+8p
read W+8p
read W+10p
read W+11p",
        ),
        case(
            "mremap_fixed_shrink_move",
            "moving with a smaller size keeps the front",
            "mmap W 4p rw private|anon|fixed
write W 1
write W+3p 3
mremap W 4p 2p maymove|fixed W+16p
read W+16p",
        ),
        case(
            "mremap_fixed_multi_vma",
            "6.17+: a fixed same-size move may span several VMAs",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p r private|anon|fixed
write W 1
mremap W 4p 4p maymove|fixed W+16p
read W+16p",
        ),
        case(
            "mremap_fixed_multi_vma_gap",
            "a fixed same-size move across a hole",
            "mmap W 1p rw private|anon|fixed
mmap W+2p 1p rw private|anon|fixed
write W+2p 2
mremap W 3p 3p maymove|fixed W+16p
read W+18p",
        ),
        case(
            "mremap_fixed_multi_vma_grow",
            "a move that grows must stay in one VMA",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p r private|anon|fixed
mremap W 4p 6p maymove|fixed W+16p",
        ),
        case(
            "mremap_dontunmap",
            "MREMAP_DONTUNMAP: pages move, the old VMA stays empty",
            "mmap W 2p rw private|anon|fixed
write W 1
mremap W 2p 2p maymove|dontunmap|fixed W+8p
read W+8p
read W",
        ),
        case(
            "mremap_dontunmap_hint",
            "without FIXED, new_addr is a hint",
            "mmap W 2p rw private|anon|fixed
write W 1
mremap W 2p 2p maymove|dontunmap W+8p
read W+8p
mremap W 2p 2p maymove|dontunmap W+0x9010
mremap W 2p 2p maymove|dontunmap W+1p",
        ),
        case(
            "mremap_dontunmap_shared",
            "MREMAP_DONTUNMAP of shared memory",
            "mmap W 2p rw shared|anon|fixed
write W 1
mremap W 2p 2p maymove|dontunmap|fixed W+8p
read W+8p
read W",
        ),
        case(
            "mremap_hint_ignored_without_fixed",
            "a plain MAYMOVE ignores new_addr",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 1p r private|anon|fixed
mremap W 2p 4p maymove W+16p",
        ),
        case(
            "mremap_moved_vma_merges",
            "copy_vma: a never-faulted VMA takes the new address as its page offset",
            "mmap W 2p rw private|anon|fixed
mmap W+16p 2p rw private|anon|fixed
mremap W 2p 2p maymove|fixed W+18p
mmap W+32p 2p rw private|anon|fixed
write W+32p 1
mremap W+32p 2p 2p maymove|fixed W+14p",
        ),
        case(
            "mremap_moved_faulted_vma_back",
            "a faulted VMA moved back next to its old neighbour merges again",
            "mmap W 4p rw private|anon|fixed
write W 1
write W+2p 2
mremap W+2p 2p 2p maymove|fixed W+16p
mremap W+16p 2p 2p maymove|fixed W+2p
read W+2p",
        ),
        case(
            "mremap_top",
            "moving or growing to TASK_SIZE",
            "mmap W 2p rw private|anon|fixed
mremap W 2p 2p maymove|fixed 0x7ffffffff000
mremap W 2p 2p maymove|fixed 0x7fffffffe000
mremap W 1p 1p maymove|fixed 0x7fffffffe000
mremap 0x7fffffffe000 1p 2p 0",
        ),
        case(
            "mremap_fixed_below_min_addr",
            "the destination is checked like a fixed mmap",
            "mmap W 2p rw private|anon|fixed
mremap W 1p 1p maymove|fixed 0
mremap W 1p 1p maymove|fixed 0x800000000000",
        ),
        // fork and merging
        case(
            "fork_cow",
            "a private page is copied on the first write after fork",
            "mmap W 2p rw private|anon|fixed
write W 1
fork
write W 2
p1 read W
p1 write W+1p 3
read W+1p
p1 exit",
        ),
        case(
            "fork_grandchild",
            "a chain of forks shares the first page until written",
            "mmap W 1p rw private|anon|fixed
write W 1
fork
p1 fork
p2 write W 2
p1 read W
read W
p2 exit
p1 exit",
        ),
        case(
            "fork_no_merge_uncowed_parents",
            "vma_had_uncowed_parents: a child's inherited VMA does not merge with a new neighbour",
            "mmap W 2p rw private|anon|fixed
write W 1
fork
p1 mmap W+2p 2p rw private|anon|fixed
p1 write W+2p 2
mmap W+2p 2p rw private|anon|fixed
mmap W+8p 2p rw private|anon|fixed
p1 mmap W+10p 2p rw private|anon|fixed",
        ),
        case(
            "fork_unfaulted_vma_merges",
            "a VMA never faulted has no anon_vma to keep apart",
            "mmap W 2p rw private|anon|fixed
fork
p1 mmap W+2p 2p rw private|anon|fixed",
        ),
        case(
            "fork_child_munmap",
            "the child's unmap leaves the parent alone",
            "mmap W 4p rw private|anon|fixed
write W+2p 2
fork
p1 munmap W+1p 2p
read W+2p
p1 read W+2p",
        ),
        // more: hints, growth, locks, moves
        case(
            "mremap_old_len_zero_fixed_containing_source",
            "the destination contains the source: EINVAL, the source is kept (Linux 6.18 itself destroys it when the destination starts at the source: mremap_old_len_zero_fixed_over_source)",
            "mmap W+1p 2p rw shared|anon|fixed
write W+1p 3
mremap W+1p 0 4p maymove|fixed W
read W+1p",
        ),
        case(
            "mremap_multi_vma_overlap",
            "a multi-VMA fixed move is checked VMA by VMA",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p r private|anon|fixed
write W 1
mremap W 4p 4p maymove|fixed W+3p
mremap W 4p 4p maymove|fixed W+1p",
        ),
        case(
            "mremap_multi_vma_start_hole",
            "a multi-VMA move may not start in a hole",
            "mmap W+1p 2p rw private|anon|fixed
mremap W 3p 3p maymove|fixed W+16p
mremap W+8p 3p 3p maymove|fixed W+16p",
        ),
        case(
            "mremap_multi_vma_dontunmap",
            "DONTUNMAP moves every VMA of a fixed range too",
            "mmap W 2p rw private|anon|fixed
mmap W+2p 2p r private|anon|fixed
write W+1p 1
mremap W 4p 4p maymove|fixed|dontunmap W+16p
read W+17p
read W+1p",
        ),
        case(
            "mremap_dontunmap_part_of_vma",
            "DONTUNMAP of part of a VMA keeps the VMA whole",
            "mmap W 4p rw private|anon|fixed
write W+1p 1
write W+3p 3
mremap W+1p 1p 1p maymove|fixed|dontunmap W+16p
read W+16p
read W+1p
read W+3p
mmap W+4p 2p rw private|anon|fixed",
        ),
        case(
            "mremap_locked_grow",
            "growing a locked mapping populates the new part",
            "mmap W 2p rw private|anon|fixed|locked
mremap W 2p 4p 0
mremap W 4p 8p maymove|fixed W+16p",
        ),
        case(
            "mremap_shared_grow_past_object",
            "a grown shared mapping has no pages past its object: SIGBUS",
            "mmap W 2p rw shared|anon|fixed
mremap W 2p 4p 0
write W+1p 1
write W+3p 1
read W+2p",
        ),
        case(
            "mremap_shared_shrink_regrow",
            "shrinking a shared mapping keeps the object",
            "mmap W 4p rw shared|anon|fixed
write W+3p 3
mremap W 4p 1p 0
mremap W 1p 4p 0
read W+3p",
        ),
        case(
            "mremap_hint_dontunmap_occupied",
            "an occupied DONTUNMAP hint falls back to a free range",
            "mmap W 2p rw private|anon|fixed
mmap W+8p 2p rw private|anon|fixed
write W 1
mremap W 2p 2p maymove|dontunmap W+8p
read @3",
        ),
        case(
            "mremap_wipeonfork_moved",
            "VMA flags travel with a move",
            "mmap W 2p rw private|anon|fixed
write W 1
madvise W 2p wipeonfork
mremap W 2p 2p maymove|fixed W+16p
fork
p1 read W+16p",
        ),
        case(
            "mmap_hint_next_to_growsdown",
            "a hint inside a stack's guard gap is not used",
            "mmap W+300p 2p rw private|anon|fixed|growsdown
mmap W+290p 1p rw private|anon
mmap W+20p 1p rw private|anon",
        ),
        case(
            "mmap_growsdown_limit",
            "RLIMIT_STACK (8 MiB) caps growth",
            "mmap W+4096p 2p rw private|anon|fixed|growsdown
write W+2049p 1
write W+2047p 1",
        ),
        case(
            "mmap_growsdown_locked",
            "a locked stack grows locked",
            "mmap W+300p 2p rw private|anon|fixed|growsdown|locked
write W+299p 1
madvise W+299p 1p dontneed",
        ),
        case(
            "mprotect_locked_becomes_writable",
            "mprotect_fixup populates a locked private mapping made writable",
            "mmap W 2p r private|anon|fixed|locked
fork
mprotect W 2p rw
p1 mprotect W 2p rw",
        ),
        case(
            "mprotect_keeps_account",
            "VM_ACCOUNT stays after write permission goes: no merge with a never-writable neighbour",
            "mmap W 1p rw private|anon|fixed
mprotect W 1p r
mmap W+1p 1p r private|anon|fixed
mmap W+3p 1p r private|anon|fixed
mmap W+2p 1p r private|anon|fixed",
        ),
        case(
            "mmap_noreserve_merge",
            "VM_NORESERVE keeps MAP_NORESERVE memory apart",
            "mmap W 1p rw private|anon|fixed
mmap W+1p 1p rw private|anon|fixed|noreserve
mmap W+2p 1p rw private|anon|fixed|noreserve",
        ),
        case(
            "mmap_over_locked_part",
            "MAP_FIXED over part of a locked mapping",
            "mmap W 4p rw private|anon|fixed|locked
mmap W+1p 2p rw private|anon|fixed
madvise W+1p 1p dontneed
madvise W 1p dontneed",
        ),
        case(
            "mlock2_onfault",
            "MLOCK_ONFAULT locks without populating",
            "mmap W 4p rw private|anon|fixed
mlock2 W 2p 1
write W+1p 1
mlock2 W 4p 2
munlock W 4p",
        ),
        case(
            "mlock_twice_counts_once",
            "already locked pages do not count twice against the limit",
            "mmap W 2048p rw private|anon|fixed
mlock W 1024p
mlock W 2048p
mmap W+4096p 1p rw private|anon|fixed
mlock W+4096p 1p",
        ),
        case(
            "fork_locked_not_inherited",
            "mlock is not inherited: the child can DONTNEED",
            "mmap W 2p rw private|anon|fixed|locked
fork
p1 madvise W 2p dontneed
madvise W 2p dontneed",
        ),
        case(
            "fork_read_only_private_not_copied",
            "never-written private memory is faulted in again by the child",
            "mmap W 2p rw private|anon|fixed
read W
fork
p1 read W+1p",
        ),
        case(
            "fork_dontfork_partial_then_child_maps",
            "the child can map where a DONTFORK range was",
            "mmap W 4p rw private|anon|fixed
madvise W+1p 1p dontfork
fork
p1 mmap W+1p 1p rw private|anon|fixed_noreplace
p1 write W+1p 2",
        ),
        case(
            "madvise_free_write_again",
            "a page written after MADV_FREE survives reclaim",
            "mmap W 1p rw private|anon|fixed
write W 1
madvise W 1p free
write W+0x10 2
madvise W 1p pageout
read W",
        ),
        case(
            "madvise_free_locked",
            "MADV_FREE is refused on locked memory",
            "mmap W 1p rw private|anon|fixed|locked
madvise W 1p free",
        ),
        case(
            "madvise_pageout_locked",
            "PAGEOUT and COLD are refused on locked memory",
            "mmap W 1p rw private|anon|fixed|locked
madvise W 1p pageout
madvise W 1p cold",
        ),
        case(
            "madvise_dodump_droppable",
            "droppable memory cannot be dumped or kept on fork",
            "mmap W 1p rw droppable|anon|fixed
madvise W 1p dodump
madvise W 1p keeponfork
madvise W 1p dontdump",
        ),
        case(
            "madvise_mergeable_shared_ignored",
            "KSM ignores shared memory",
            "mmap W 2p rw shared|anon|fixed
madvise W 1p mergeable",
        ),
        case(
            "madvise_collapse_small",
            "MADV_COLLAPSE on a range without a huge-page-aligned extent",
            "mmap W 4p rw private|anon|fixed
madvise W 4p collapse",
        ),
        later(
            "madvise_guard",
            "MADV_GUARD_INSTALL (6.13): touching the range is SIGSEGV",
            "mmap W 4p rw private|anon|fixed
madvise W+1p 1p guard_install
read W+1p
madvise W+1p 1p guard_remove
read W+1p",
            "guard markers arrive with issue 11 (PTE markers): MADV_GUARD_INSTALL is EINVAL until then",
        ),
        later(
            "mmap_hugetlb_noreserve",
            "with MAP_NORESERVE Linux maps hugetlb memory that has no pool",
            "mmap W 512p rw private|anon|hugetlb|noreserve",
            "the hugetlb pool arrives with issue 11: MAP_HUGETLB is ENOMEM until then, even with MAP_NORESERVE",
        ),
        case(
            "mmap_32bit",
            "MAP_32BIT places the mapping in the first 2 GiB",
            "mmap 0 1p rw private|anon|0x40",
        ),
        case(
            "madvise_dontneed_shared_fork",
            "DONTNEED of shared memory keeps the data for everyone",
            "mmap W 1p rw shared|anon|fixed
write W 5
fork
madvise W 1p dontneed
p1 read W
read W",
        ),
        case(
            "munmap_shared_partial",
            "a partly unmapped shared mapping keeps the rest of the object",
            "mmap W 4p rw shared|anon|fixed
write W+3p 3
munmap W 2p
read W+3p",
        ),
        case(
            "mprotect_keeps_account_written",
            "VM_ACCOUNT stays on written memory made read-only: no merge with a never-writable neighbour",
            "mmap W 1p rw private|anon|fixed
write W 1
mprotect W 1p r
mmap W+1p 1p r private|anon|fixed",
        ),
        case(
            "mremap_dontunmap_whole_then_map",
            "after a whole-VMA DONTUNMAP the old VMA merges like a new one",
            "mmap W 2p rw private|anon|fixed
write W 1
mremap W 2p 2p maymove|fixed|dontunmap W+16p
mmap W+2p 2p rw private|anon|fixed",
        ),
        case(
            "mremap_dontunmap_locked_partial",
            "DONTUNMAP of part of a locked VMA",
            "mmap W 4p rw private|anon|fixed|locked
mremap W+1p 1p 1p maymove|fixed|dontunmap W+16p
madvise W+3p 1p dontneed
madvise W+16p 1p dontneed",
        ),
        case(
            "mremap_dontunmap_locked_whole",
            "DONTUNMAP of a whole locked VMA",
            "mmap W 2p rw private|anon|fixed|locked
mremap W 2p 2p maymove|fixed|dontunmap W+16p
madvise W 1p dontneed
madvise W+16p 1p dontneed",
        ),
        case(
            "mremap_fixed_overlap_no_vma",
            "which comes first: the overlap or the missing VMA",
            "mremap W 1p 1p maymove|fixed W
mremap W 2p 2p maymove|fixed W+1p
mremap W 1p 2p maymove|fixed W+1p",
        ),
        case(
            "mremap_fixed_task_size_no_vma",
            "which comes first: TASK_SIZE or the missing VMA",
            "mremap W 1p 1p maymove|fixed 0x7ffffffff000
mremap W 1p 2p maymove|fixed 0x7ffffffff000",
        ),
    ]
}

/// Runs every case; prints a line per case and a summary. False if any
/// case differs unexpectedly (or agrees while listed out of scope).
pub fn run_all() -> bool {
    let cases = all();
    let mut ok = true;
    let (mut agree, mut documented) = (0, 0);
    for c in &cases {
        let steps = parse_script(c.script).unwrap_or_else(|e| panic!("case {}: {e}", c.name));
        let r: Result<Vec<String>, Divergence> = compare(&steps);
        match (&r, c.out_of_scope) {
            (Ok(_), None) => agree += 1,
            (Err(d), Some(why)) => {
                documented += 1;
                println!("out of scope: {} ({why}), step {}", c.name, d.step);
            }
            (Ok(_), Some(_)) => {
                ok = false;
                println!(
                    "FAIL {}: agrees with Linux but is listed as out of scope",
                    c.name
                );
            }
            (Err(d), None) => {
                ok = false;
                println!("FAIL {} ({}):\n{}", c.name, c.source, d.render());
            }
        }
    }
    println!(
        "linux_diff cases: {} of {} agree with Linux {}, {} out of scope",
        agree,
        cases.len(),
        host_kernel(),
        documented
    );
    ok
}

/// The host kernel's release, recorded with every comparison.
pub fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("?".into(), |s| s.trim().to_string())
}
