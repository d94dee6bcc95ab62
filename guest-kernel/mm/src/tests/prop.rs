//! Property test: random sequences of mmap / munmap / mprotect / madvise /
//! mremap / fork / exit / user reads and writes on two CPUs / reclaim,
//! checked after every step against the invariant checker, the TLB-ordering
//! detector, and a reference model of what every page must contain.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::madvise::{MADV_DONTNEED, MADV_PAGEOUT};
use crate::mmap::MAP_FIXED;
use crate::mremap::{MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE};
use crate::testing::user::{user_read, user_write};

const BASE: u64 = 0x4000_0000;
const PG: u64 = 4096;
const SLOT_PAGES: u64 = 16;
const SLOTS: u64 = 6;
const MAX_PROCS: usize = 4;
/// Positions per page the model tracks (8 bytes each, 512 bytes apart).
const POS: usize = 8;
type Bytes = [u8; POS];

#[derive(Debug, Clone)]
enum Op {
    Mmap {
        slot: u64,
        off: u64,
        pages: u64,
        shared: bool,
        prot: u32,
    },
    Munmap {
        slot: u64,
        off: u64,
        pages: u64,
    },
    Mprotect {
        slot: u64,
        off: u64,
        pages: u64,
        prot: u32,
    },
    DontNeed {
        slot: u64,
        off: u64,
        pages: u64,
    },
    PageOut {
        slot: u64,
    },
    /// Move `[from/off, +pages)` to slot `to`: growing by a page, or with
    /// `MREMAP_DONTUNMAP` at the same size.
    Mremap {
        from: u64,
        off: u64,
        pages: u64,
        to: u64,
        dontunmap: bool,
    },
    /// `wild`: any address of the arena; otherwise one of the pages the
    /// model has mapped (so that processes live long enough to matter).
    /// Writes `[val; 8]` at byte `pos * 512` of the page.
    Write {
        page: u64,
        pos: usize,
        val: u8,
        cpu: u32,
        wild: bool,
    },
    Read {
        page: u64,
        cpu: u32,
        wild: bool,
    },
    /// A `FAULT_FLAG_UNSHARE` fault (as a read-only pin would take).
    Unshare {
        page: u64,
    },
    Fork,
    Exit,
    Reclaim {
        n: usize,
    },
}

fn prot() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(RW), 1 => Just(crate::mmap::PROT_READ), 1 => Just(0)]
}

fn op() -> impl Strategy<Value = (usize, Op)> {
    let slot = 0..SLOTS;
    let off = 0..SLOT_PAGES;
    let pages = 1..SLOT_PAGES / 2;
    let o = prop_oneof![
        // Coarse placement so that new mappings often abut old ones.
        3 => (slot.clone(), (0..4u64).prop_map(|o| o * 4), prop_oneof![Just(2u64), Just(4), Just(8)], any::<bool>(), prot())
            .prop_map(|(slot, off, pages, shared, prot)| Op::Mmap { slot, off, pages, shared, prot }),
        1 => (slot.clone(), off.clone(), pages.clone()).prop_map(|(slot, off, pages)| Op::Munmap { slot, off, pages }),
        2 => (slot.clone(), off.clone(), pages.clone(), prot())
            .prop_map(|(slot, off, pages, prot)| Op::Mprotect { slot, off, pages, prot }),
        1 => (slot.clone(), off.clone(), pages.clone()).prop_map(|(slot, off, pages)| Op::DontNeed { slot, off, pages }),
        1 => slot.clone().prop_map(|slot| Op::PageOut { slot }),
        1 => (slot.clone(), off.clone(), pages.clone(), slot.clone(), any::<bool>())
            .prop_map(|(from, off, pages, to, dontunmap)| Op::Mremap { from, off, pages, to, dontunmap }),
        8 => (0..SLOTS * SLOT_PAGES, 0..POS, any::<u8>(), 0..2u32, proptest::bool::weighted(0.05))
            .prop_map(|(page, pos, val, cpu, wild)| Op::Write { page, pos, val, cpu, wild }),
        5 => (0..SLOTS * SLOT_PAGES, 0..2u32, proptest::bool::weighted(0.05))
            .prop_map(|(page, cpu, wild)| Op::Read { page, cpu, wild }),
        1 => (0..SLOTS * SLOT_PAGES).prop_map(|page| Op::Unshare { page }),
        1 => Just(Op::Fork),
        1 => Just(Op::Exit),
        1 => (1..8usize).prop_map(|n| Op::Reclaim { n }),
    ];
    (0..MAX_PROCS, o)
}

/// What a page holds in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Private(Bytes),
    Shared(usize, u64),
}

#[derive(Debug, Clone, Default)]
struct Proc {
    pages: BTreeMap<u64, (u32, Content)>,
}

struct Model {
    procs: BTreeMap<crate::ids::Pid, Proc>,
    /// Shared objects: size in pages and written values.
    objs: Vec<(u64, BTreeMap<u64, Bytes>)>,
}

impl Model {
    fn value(&self, c: Content) -> Bytes {
        match c {
            Content::Private(v) => v,
            Content::Shared(o, i) => self.objs[o].1.get(&i).copied().unwrap_or([0; POS]),
        }
    }
}

/// The address a read or write targets.
/// The page a read/write/unshare aims at: anywhere if `wild`, else one of
/// the mapped pages whose protection includes `need` (so that processes
/// live long enough to build up state). `None` if there is none.
fn target(m: &Model, pid: crate::ids::Pid, page: u64, wild: bool, need: u32) -> Option<u64> {
    if wild {
        return Some(BASE + page * PG);
    }
    let ok: Vec<u64> = m.procs[&pid]
        .pages
        .iter()
        .filter(|(_, (prot, _))| prot & need == need && *prot != 0)
        .map(|(&a, _)| a)
        .collect();
    ok.get(page as usize % ok.len().max(1)).copied()
}

/// Reads every tracked position of the page at `a`; each must hold 8 equal
/// bytes (one write), whose value goes to `out`.
fn read_positions(
    s: &mut Sys,
    pid: crate::ids::Pid,
    cpu: u32,
    a: u64,
    out: &mut Bytes,
) -> Result<(), crate::SigReport> {
    for (k, o) in out.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        user_read(s, pid, cpu, a + k as u64 * 512, &mut b)?;
        assert!(
            b.iter().all(|&x| x == b[0]),
            "torn write at {:#x}: {b:?}",
            a + k as u64 * 512
        );
        *o = b[0];
    }
    Ok(())
}

fn addr(slot: u64, off: u64) -> u64 {
    BASE + (slot * SLOT_PAGES + off) * PG
}

fn run(ops: Vec<(usize, Op)>, folio_order: u8) -> Result<(), TestCaseError> {
    let mut s = crate::testing::user::sim_system(
        16,
        2,
        crate::Config {
            swap_frames: 48,
            anon_folio_order: folio_order,
            ..Default::default()
        },
    );
    let baseline = s.free_frames();
    let first = s.spawn(0).unwrap();
    let mut m = Model {
        procs: BTreeMap::new(),
        objs: Vec::new(),
    };
    m.procs.insert(first, Proc::default());
    for (i, (who, op)) in ops.into_iter().enumerate() {
        if m.procs.is_empty() {
            let p = s.spawn(0).unwrap();
            m.procs.insert(p, Proc::default());
        }
        let pids: Vec<_> = m.procs.keys().copied().collect();
        let pid = pids[who % pids.len()];
        let step = alloc::format!("step {i}: pid {pid} {op:?}");
        match op {
            Op::Mmap {
                slot,
                off,
                pages,
                shared,
                prot,
            } => {
                let a = addr(slot, off);
                let flags = if shared { SHARED } else { PRIV } | MAP_FIXED;
                match s.mmap(pid, a, pages * PG, prot, flags, 0) {
                    Ok(r) => prop_assert_eq!(r, a, "{}", step),
                    // Out of frames for page tables is legitimate; nothing changes.
                    Err(Errno::ENOMEM) => continue,
                    Err(e) => prop_assert!(false, "{}: {:?}", step, e),
                }
                let obj = m.objs.len();
                if shared {
                    m.objs.push((pages, BTreeMap::new()));
                }
                let p = m.procs.get_mut(&pid).unwrap();
                for k in 0..pages {
                    let c = if shared {
                        Content::Shared(obj, k)
                    } else {
                        Content::Private([0; POS])
                    };
                    p.pages.insert(a + k * PG, (prot, c));
                }
            }
            Op::Munmap { slot, off, pages } => {
                let a = addr(slot, off);
                prop_assert_eq!(s.munmap(pid, a, pages * PG), Ok(()), "{}", step);
                let p = m.procs.get_mut(&pid).unwrap();
                for k in 0..pages {
                    p.pages.remove(&(a + k * PG));
                }
            }
            Op::Mprotect {
                slot,
                off,
                pages,
                prot,
            } => {
                let a = addr(slot, off);
                let p = m.procs.get_mut(&pid).unwrap();
                let mut hole = false;
                for k in 0..pages {
                    match p.pages.get_mut(&(a + k * PG)) {
                        Some(e) if !hole => e.0 = prot,
                        _ => hole = true,
                    }
                }
                let want = if hole { Err(Errno::ENOMEM) } else { Ok(()) };
                prop_assert_eq!(s.mprotect(pid, a, pages * PG, prot), want, "{}", step);
            }
            Op::DontNeed { slot, off, pages } => {
                let a = addr(slot, off);
                let p = m.procs.get_mut(&pid).unwrap();
                let mut hole = false;
                for k in 0..pages {
                    match p.pages.get_mut(&(a + k * PG)) {
                        Some((_, c @ Content::Private(_))) => *c = Content::Private([0; POS]),
                        Some(_) => {}
                        None => hole = true,
                    }
                }
                let want = if hole { Err(Errno::ENOMEM) } else { Ok(()) };
                prop_assert_eq!(
                    s.madvise(pid, a, pages * PG, MADV_DONTNEED),
                    want,
                    "{}",
                    step
                );
            }
            Op::PageOut { slot } => {
                let _ = s.madvise(pid, addr(slot, 0), SLOT_PAGES * PG, MADV_PAGEOUT);
            }
            Op::Mremap {
                from,
                off,
                pages,
                to,
                dontunmap: true,
            } => {
                if from == to {
                    // Source and destination in one slot: a multi-VMA move
                    // can stop part way (per-VMA overlap check); the
                    // differential test covers those against Linux.
                    continue;
                }
                let (a, b) = (addr(from, off), addr(to, 0));
                let f = MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP;
                let first_mapped = m.procs[&pid].pages.contains_key(&a);
                match s.mremap(pid, a, pages * PG, pages * PG, f, b) {
                    Ok(n) => {
                        prop_assert!(first_mapped, "{}: moved from a hole", step);
                        prop_assert_eq!(n, b, "{}", step);
                        // A fixed same-size move takes every VMA of the range
                        // (Linux 6.17+); destination pages under source holes
                        // stay as they were.
                        let p = m.procs.get_mut(&pid).unwrap();
                        for k in 0..pages {
                            let Some((prot, c)) = p.pages.get(&(a + k * PG)).copied() else {
                                continue;
                            };
                            p.pages.insert(b + k * PG, (prot, c));
                            // The old range stays mapped: private pages are
                            // gone, shared ones refault from the object.
                            if let Content::Private(_) = c {
                                p.pages
                                    .insert(a + k * PG, (prot, Content::Private([0; POS])));
                            }
                        }
                    }
                    Err(Errno::EFAULT) if !first_mapped => {}
                    Err(Errno::EINVAL) | Err(Errno::ENOMEM) => {}
                    Err(e) => prop_assert!(false, "{}: {:?}", step, e),
                }
            }
            Op::Mremap {
                from,
                off,
                pages,
                to,
                dontunmap: false,
            } => {
                if from == to {
                    continue;
                }
                let (a, b) = (addr(from, off), addr(to, 0));
                let r = s.mremap(
                    pid,
                    a,
                    pages * PG,
                    (pages + 1) * PG,
                    MREMAP_MAYMOVE | MREMAP_FIXED,
                    b,
                );
                match r {
                    Ok(n) => {
                        prop_assert_eq!(n, b, "{}", step);
                        let p = m.procs.get_mut(&pid).unwrap();
                        let moved: Vec<_> =
                            (0..pages).map(|k| p.pages.remove(&(a + k * PG))).collect();
                        for k in 0..=pages {
                            p.pages.remove(&(b + k * PG));
                        }
                        for (k, e) in moved.into_iter().enumerate() {
                            p.pages
                                .insert(b + k as u64 * PG, e.expect("moved page was mapped"));
                        }
                        // The grown tail: same kind as the source mapping.
                        let (prot, c) = p.pages[&b];
                        let tail = match c {
                            Content::Private(_) => Content::Private([0; POS]),
                            Content::Shared(o, i) => Content::Shared(o, i + pages),
                        };
                        p.pages.insert(b + pages * PG, (prot, tail));
                    }
                    Err(Errno::EFAULT) | Err(Errno::EINVAL) | Err(Errno::ENOMEM) => {}
                    Err(e) => prop_assert!(false, "{}: {:?}", step, e),
                }
            }
            Op::Write {
                page,
                pos,
                val,
                cpu,
                wild,
            } => {
                let Some(a) = target(&m, pid, page, wild, crate::mmap::PROT_WRITE) else {
                    continue;
                };
                let p = &m.procs[&pid];
                let r = user_write(&mut s, pid, cpu, a + pos as u64 * 512, &[val; 8]);
                match p.pages.get(&a).copied() {
                    Some((prot, c)) if prot & crate::mmap::PROT_WRITE != 0 => {
                        if let Content::Shared(o, i) = c {
                            // Writes past the object's size are SIGBUS (grown shmem).
                            if i >= m.objs[o].0 {
                                prop_assert_eq!(r.unwrap_err().signal, crate::SIGBUS, "{}", step);
                                m.procs.remove(&pid);
                                continue;
                            }
                            prop_assert!(r.is_ok(), "{}: {:?}", step, r);
                            m.objs[o].1.entry(i).or_insert([0; POS])[pos] = val;
                        } else {
                            prop_assert!(r.is_ok(), "{}: {:?}", step, r);
                            let mut v = m.value(c);
                            v[pos] = val;
                            m.procs
                                .get_mut(&pid)
                                .unwrap()
                                .pages
                                .insert(a, (prot, Content::Private(v)));
                        }
                    }
                    _ => {
                        prop_assert_eq!(r.map_err(|e| e.signal), Err(crate::SIGSEGV), "{}", step);
                        m.procs.remove(&pid);
                    }
                }
            }
            Op::Read { page, cpu, wild } => {
                let Some(a) = target(&m, pid, page, wild, 0) else {
                    continue;
                };
                let mut b = [0u8; POS];
                let r = read_positions(&mut s, pid, cpu, a, &mut b);
                match m.procs[&pid].pages.get(&a).copied() {
                    Some((prot, c)) if prot != 0 => {
                        if matches!(c, Content::Shared(o, i) if i >= m.objs[o].0) {
                            prop_assert_eq!(r.unwrap_err().signal, crate::SIGBUS, "{}", step);
                            m.procs.remove(&pid);
                            continue;
                        }
                        prop_assert!(r.is_ok(), "{}: {:?}", step, r);
                        prop_assert_eq!(b, m.value(c), "{}", step);
                    }
                    _ => {
                        prop_assert_eq!(r.map_err(|e| e.signal), Err(crate::SIGSEGV), "{}", step);
                        m.procs.remove(&pid);
                    }
                }
            }
            Op::Unshare { page } => {
                let Some(a) = target(&m, pid, page, page % 4 == 0, 0) else {
                    continue;
                };
                let mm = s.procs[&pid].mm.unwrap();
                let ff = crate::fault::FaultFlags {
                    unshare: true,
                    ..Default::default()
                };
                let r = s.handle_mm_fault(mm, a, ff);
                match m.procs[&pid].pages.get(&a) {
                    Some((prot, Content::Private(_))) if *prot != 0 => {
                        prop_assert_eq!(r, Ok(()), "{}", step)
                    }
                    _ => prop_assert!(r.is_err(), "{}: {:?}", step, r),
                }
            }
            Op::Fork => {
                if m.procs.len() < MAX_PROCS {
                    match s.fork(pid) {
                        Ok(c) => {
                            let p = m.procs[&pid].clone();
                            m.procs.insert(c, p);
                        }
                        Err(e) => prop_assert_eq!(e, Errno::ENOMEM, "{}", step),
                    }
                }
            }
            Op::Exit => {
                s.exit(pid, 0).unwrap();
                m.procs.remove(&pid);
            }
            Op::Reclaim { n } => {
                s.reclaim(n);
            }
        }
        if let Err(e) = s.check() {
            prop_assert!(false, "{}: invariants:\n{}", step, e.violations.join("\n"));
        }
        prop_assert!(
            s.hw.violations.is_empty(),
            "{}: TLB ordering {:?}",
            step,
            s.hw.violations
        );
    }
    // Every page of every live process still reads back as the model says.
    let pids: Vec<_> = m.procs.keys().copied().collect();
    for pid in pids {
        let pages: Vec<_> = m.procs[&pid].pages.iter().map(|(&a, &e)| (a, e)).collect();
        for (a, (prot, c)) in pages {
            if prot == 0 {
                continue;
            }
            let mut b = [0u8; POS];
            if matches!(c, Content::Shared(o, i) if i >= m.objs[o].0) {
                continue;
            }
            prop_assert!(
                read_positions(&mut s, pid, 0, a, &mut b).is_ok(),
                "final read of {:#x}",
                a
            );
            prop_assert_eq!(b, m.value(c), "final read of {:#x}", a);
        }
        let _ = s.exit(pid, 0);
    }
    while s.procs.keys().next().is_some() {
        let z: Vec<_> = s.procs.keys().copied().collect();
        for p in z {
            s.procs.remove(&p);
        }
    }
    prop_assert!(s.check().is_ok());
    prop_assert_eq!(
        s.free_frames(),
        baseline,
        "frames leaked after every process exited"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: super::cases(96), ..ProptestConfig::default() })]

    #[test]
    fn random_mm_sequences(ops in proptest::collection::vec(op(), 10..100), large in any::<bool>()) {
        run(ops, if large { 2 } else { 0 })?;
    }
}
