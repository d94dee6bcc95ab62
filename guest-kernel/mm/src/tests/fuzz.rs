//! Syscall robustness: arbitrary arguments to every MM call must give an
//! errno or a result, never a panic, and leave the invariants intact.

use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::FaultStop;
use crate::hw::PhysMem;
use crate::syscall::*;
use crate::testing::user::user_try_wait;

fn arg() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        1 => 1u64..5,
        1 => Just(u64::MAX),
        1 => Just(1u64 << 62),
        1 => Just(0x4000_0000),
        1 => Just(0x7fff_ffff_f000),
        1 => Just(0x8000_0000_0000),
        1 => Just(0xffff_8000_0000_0000),
        3 => (0u64..64).prop_map(|p| 0x4000_0000 + p * 4096),
        3 => (1u64..64).prop_map(|p| p * 4096),
        1 => (0u64..0x40).prop_map(|f| f | 0x20),
        1 => any::<u64>(),
    ]
}

fn nr() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(SYS_WRITE),
        Just(SYS_MMAP),
        Just(SYS_MMAP),
        Just(SYS_MPROTECT),
        Just(SYS_MUNMAP),
        Just(SYS_MREMAP),
        Just(SYS_MADVISE),
        Just(SYS_GETPID),
        Just(SYS_FORK),
        Just(SYS_WAIT4),
        Just(SYS_MM_STATS),
        Just(77u64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: super::cases(256), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_syscalls_never_panic(calls in proptest::collection::vec((nr(), proptest::array::uniform6(arg()), any::<u8>()), 1..40)) {
        let (mut s, first) = setup();
        let mut live: Vec<crate::ids::Pid> = alloc::vec![first];
        for (n, args, who) in calls {
            let Some(&pid) = live.get(who as usize % live.len().max(1)) else { break };
            match s.syscall(pid, n, args, &mut |_| ()) {
                Outcome::Forked { child } if live.len() < 4 => live.push(child),
                Outcome::Forked { child } => {
                    s.exit(child, 0).unwrap();
                }
                Outcome::Exited => live.retain(|&p| p != pid),
                Outcome::Return(_) | Outcome::Block | Outcome::WaitUffd => {}
            }
            // Touch memory at an argument address, as a program would; a
            // fatal fault kills it, one that waits for a userfaultfd
            // handler leaves it as it is.
            if live.contains(&pid) {
                let va = args[0] & 0x7fff_ffff_ffff;
                match user_try_wait(&mut s, pid, (who % 2) as u32, va, crate::testing::Access::Write) {
                    Ok(pa) => s.hw.write_bytes(pa, &[who]),
                    Err(FaultStop::Signal(r)) => {
                        let _ = s.exit(pid, r.signal);
                        live.retain(|&p| p != pid);
                    }
                    Err(FaultStop::Userfault) => {}
                }
            }
            if let Err(e) = s.check() {
                prop_assert!(false, "after {n} {args:x?}: {}", e.violations.join("\n"));
            }
            prop_assert!(s.hw.violations.is_empty());
        }
    }
}
