//! The steps a differential case is made of, their text form, and the
//! parser for the hand-written cases.
//!
//! A step is one line: an optional process (`p1`), an operation and its
//! arguments. Addresses are `W+<n>p` (the window all cases work in),
//! absolute numbers, or `@<k>+<n>p` (what step `k` returned, for mappings
//! Linux and guest-mm place themselves). Lengths take a `p` suffix for
//! pages. Flag words join names with `|` (`private|anon|fixed`) or are
//! numbers.

use std::fmt;

pub const PAGE: u64 = 4096;
/// Where every case maps: far from what a Linux test process has mapped
/// (its binary, heap, libraries and stack) and inside guest-mm's user half.
pub const WINDOW: u64 = 0x10_0000_0000;
/// Size of the window the layout and page views cover.
pub const WINDOW_LEN: u64 = 1 << 30;
/// x86-64 TASK_SIZE: the top user page is never mappable.
pub const TASK_SIZE: u64 = (1 << 47) - PAGE;
/// Addresses from here to TASK_SIZE are shown absolute (top-of-space cases).
pub const TOP_VIEW: u64 = TASK_SIZE - (64 * PAGE);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    Abs(u64),
    /// What step `k` returned, plus a byte offset.
    Result(usize, i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Mmap {
        addr: Addr,
        len: u64,
        prot: u64,
        flags: u64,
        fd: i64,
        off: u64,
    },
    Munmap {
        addr: Addr,
        len: u64,
    },
    Mprotect {
        addr: Addr,
        len: u64,
        prot: u64,
    },
    Madvise {
        addr: Addr,
        len: u64,
        advice: u64,
    },
    Mremap {
        old: Addr,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: Addr,
    },
    Mlock {
        addr: Addr,
        len: u64,
    },
    Mlock2 {
        addr: Addr,
        len: u64,
        flags: u64,
    },
    Munlock {
        addr: Addr,
        len: u64,
    },
    /// A ring-3 one-byte write.
    Write {
        addr: Addr,
        val: u8,
    },
    /// A ring-3 one-byte read.
    Read {
        addr: Addr,
    },
    /// The process forks; the child is the next process number.
    Fork,
    /// The process exits (it must have no live children) and is reaped.
    Exit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub proc: usize,
    pub op: Op,
}

pub const SYS_MMAP: u64 = 9;
pub const SYS_MPROTECT: u64 = 10;
pub const SYS_MUNMAP: u64 = 11;
pub const SYS_MREMAP: u64 = 25;
pub const SYS_MADVISE: u64 = 28;
pub const SYS_MLOCK: u64 = 149;
pub const SYS_MUNLOCK: u64 = 150;
pub const SYS_MLOCK2: u64 = 325;

const PROT: &[(&str, u64)] = &[
    ("none", 0),
    ("r", 1),
    ("w", 2),
    ("x", 4),
    ("sem", 8),
    ("growsdown", 0x0100_0000),
    ("growsup", 0x0200_0000),
];
const MAP: &[(&str, u64)] = &[
    ("shared", 0x01),
    ("private", 0x02),
    ("shared_validate", 0x03),
    ("droppable", 0x08),
    ("fixed", 0x10),
    ("anon", 0x20),
    ("growsdown", 0x100),
    ("denywrite", 0x800),
    ("executable", 0x1000),
    ("locked", 0x2000),
    ("noreserve", 0x4000),
    ("populate", 0x8000),
    ("nonblock", 0x1_0000),
    ("stack", 0x2_0000),
    ("hugetlb", 0x4_0000),
    ("sync", 0x8_0000),
    ("fixed_noreplace", 0x10_0000),
    ("huge_2mb", 21 << 26),
    ("huge_1gb", 30 << 26),
];
const MREMAP: &[(&str, u64)] = &[("maymove", 1), ("fixed", 2), ("dontunmap", 4)];
const MADV: &[(&str, u64)] = &[
    ("normal", 0),
    ("random", 1),
    ("sequential", 2),
    ("willneed", 3),
    ("dontneed", 4),
    ("free", 8),
    ("remove", 9),
    ("dontfork", 10),
    ("dofork", 11),
    ("mergeable", 12),
    ("unmergeable", 13),
    ("hugepage", 14),
    ("nohugepage", 15),
    ("dontdump", 16),
    ("dodump", 17),
    ("wipeonfork", 18),
    ("keeponfork", 19),
    ("cold", 20),
    ("pageout", 21),
    ("populate_read", 22),
    ("populate_write", 23),
    ("dontneed_locked", 24),
    ("collapse", 25),
    ("guard_install", 102),
    ("guard_remove", 103),
];

fn num(s: &str) -> Result<u64, String> {
    let (digits, pages) = match s.strip_suffix('p') {
        Some(d) => (d, true),
        None => (s, false),
    };
    let v = if let Some(h) = digits.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        digits.parse()
    }
    .map_err(|_| format!("bad number {s:?}"))?;
    Ok(if pages { v * PAGE } else { v })
}

fn signed(s: &str) -> Result<i64, String> {
    match s.strip_prefix('-') {
        Some(r) => Ok(-(num(r)? as i64)),
        None => Ok(num(s.strip_prefix('+').unwrap_or(s))? as i64),
    }
}

fn addr(s: &str) -> Result<Addr, String> {
    let split = |body: &str| -> Result<(String, i64), String> {
        match body.find(['+', '-']) {
            Some(i) => Ok((body[..i].to_string(), signed(&body[i..])?)),
            None => Ok((body.to_string(), 0)),
        }
    };
    if let Some(rest) = s.strip_prefix('@') {
        let (k, off) = split(rest)?;
        let k = k.parse().map_err(|_| format!("bad step reference {s:?}"))?;
        return Ok(Addr::Result(k, off));
    }
    if let Some(rest) = s.strip_prefix('W') {
        let (_, off) = split(rest)?;
        return Ok(Addr::Abs(WINDOW.wrapping_add_signed(off)));
    }
    Ok(Addr::Abs(num(s)?))
}

fn flags(s: &str, table: &[(&str, u64)]) -> Result<u64, String> {
    if s == "0" {
        return Ok(0);
    }
    let mut v = 0;
    for w in s.split('|') {
        v |= match table.iter().find(|(n, _)| *n == w) {
            Some(&(_, bits)) => bits,
            None => num(w).map_err(|_| format!("unknown flag {w:?}"))?,
        };
    }
    Ok(v)
}

/// `rw`, `rwx`, `none`, or `|`-joined names, `rwx` words and numbers.
fn prot(s: &str) -> Result<u64, String> {
    let mut v = 0;
    for w in s.split('|') {
        v |= if !w.is_empty() && w.chars().all(|c| "rwx".contains(c)) {
            w.chars()
                .map(|c| flags(&c.to_string(), PROT))
                .sum::<Result<u64, String>>()?
        } else {
            flags(w, PROT)?
        };
    }
    Ok(v)
}

/// Parses one step line.
pub fn parse_step(line: &str) -> Result<Step, String> {
    let mut w: Vec<&str> = line.split_whitespace().collect();
    let mut proc = 0;
    if let Some(p) = w.first().and_then(|s| s.strip_prefix('p')) {
        if let Ok(n) = p.parse() {
            proc = n;
            w.remove(0);
        }
    }
    let arg = |i: usize| {
        w.get(i)
            .copied()
            .ok_or(format!("{line:?}: missing argument {i}"))
    };
    let op = match arg(0)? {
        "mmap" => Op::Mmap {
            addr: addr(arg(1)?)?,
            len: num(arg(2)?)?,
            prot: prot(arg(3)?)?,
            flags: flags(arg(4)?, MAP)?,
            fd: w.get(5).map_or(Ok(-1), |s| signed(s))?,
            off: w.get(6).map_or(Ok(0), |s| num(s))?,
        },
        "munmap" => Op::Munmap {
            addr: addr(arg(1)?)?,
            len: num(arg(2)?)?,
        },
        "mprotect" => Op::Mprotect {
            addr: addr(arg(1)?)?,
            len: num(arg(2)?)?,
            prot: prot(arg(3)?)?,
        },
        "madvise" => Op::Madvise {
            addr: addr(arg(1)?)?,
            len: num(arg(2)?)?,
            advice: flags(arg(3)?, MADV)?,
        },
        "mremap" => Op::Mremap {
            old: addr(arg(1)?)?,
            old_len: num(arg(2)?)?,
            new_len: num(arg(3)?)?,
            flags: flags(arg(4)?, MREMAP)?,
            new_addr: w.get(5).map_or(Ok(Addr::Abs(0)), |s| addr(s))?,
        },
        "mlock" => Op::Mlock {
            addr: addr(arg(1)?)?,
            len: num(arg(2)?)?,
        },
        "mlock2" => Op::Mlock2 {
            addr: addr(arg(1)?)?,
            len: num(arg(2)?)?,
            flags: num(arg(3)?)?,
        },
        "munlock" => Op::Munlock {
            addr: addr(arg(1)?)?,
            len: num(arg(2)?)?,
        },
        "write" => Op::Write {
            addr: addr(arg(1)?)?,
            val: num(arg(2)?)? as u8,
        },
        "read" => Op::Read {
            addr: addr(arg(1)?)?,
        },
        "fork" => Op::Fork,
        "exit" => Op::Exit,
        other => return Err(format!("{line:?}: unknown operation {other:?}")),
    };
    Ok(Step { proc, op })
}

/// Parses a case body: one step per non-empty line, `#` comments.
pub fn parse_script(text: &str) -> Result<Vec<Step>, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(parse_step)
        .collect()
}

/// How an address is shown in a transcript: window-relative, absolute
/// near the top of the user space or below 1 MiB, else `elsewhere` (where
/// Linux's randomised top-down placement and guest-mm's fixed one differ).
pub fn show_addr(a: u64) -> String {
    if (WINDOW..WINDOW + WINDOW_LEN).contains(&a) {
        let off = a - WINDOW;
        if off % PAGE == 0 {
            format!("W+{}p", off / PAGE)
        } else {
            format!("W+{off:#x}")
        }
    } else if !(0x10_0000..TOP_VIEW).contains(&a) {
        format!("{a:#x}")
    } else {
        "elsewhere".into()
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Addr::Abs(a) => write!(f, "{}", show_addr(a)),
            Addr::Result(k, 0) => write!(f, "@{k}"),
            Addr::Result(k, o) => write!(f, "@{k}{o:+#x}"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proc != 0 {
            write!(f, "p{} ", self.proc)?;
        }
        match &self.op {
            Op::Mmap {
                addr,
                len,
                prot,
                flags,
                fd,
                off,
            } => {
                write!(f, "mmap {addr} {len:#x} {prot:#x} {flags:#x} {fd} {off:#x}")
            }
            Op::Munmap { addr, len } => write!(f, "munmap {addr} {len:#x}"),
            Op::Mprotect { addr, len, prot } => write!(f, "mprotect {addr} {len:#x} {prot:#x}"),
            Op::Madvise { addr, len, advice } => write!(f, "madvise {addr} {len:#x} {advice}"),
            Op::Mremap {
                old,
                old_len,
                new_len,
                flags,
                new_addr,
            } => {
                write!(
                    f,
                    "mremap {old} {old_len:#x} {new_len:#x} {flags} {new_addr}"
                )
            }
            Op::Mlock { addr, len } => write!(f, "mlock {addr} {len:#x}"),
            Op::Mlock2 { addr, len, flags } => write!(f, "mlock2 {addr} {len:#x} {flags}"),
            Op::Munlock { addr, len } => write!(f, "munlock {addr} {len:#x}"),
            Op::Write { addr, val } => write!(f, "write {addr} {val:#x}"),
            Op::Read { addr } => write!(f, "read {addr}"),
            Op::Fork => write!(f, "fork"),
            Op::Exit => write!(f, "exit"),
        }
    }
}
