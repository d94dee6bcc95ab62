//! Fuzzing the migration stream parser with proptest over real streams:
//! a snapshot of a real guest (taken once per run, with KVM), and a
//! migration stream recorded in flight by a relay, mutated (bits flipped,
//! bytes overwritten, cut short, frames duplicated, dropped or swapped)
//! and fed to exactly what a destination runs on what it reads: the header
//! checks, then every frame applied to guest memory, then (for a file) the
//! check that nothing follows the end frame. Whatever the bytes, the parser
//! returns (never panics, never writes outside guest RAM), and any change
//! to the bytes a destination reads is an error. A migration's destination
//! stops reading at the end frame, so bytes a mutation leaves after it are
//! never read. CI runs the default case counts; `PROPTEST_CASES=N` runs
//! longer.

mod common;

use std::sync::OnceLock;

use common::migration::{Damage, Relay, Side};
use common::{code, kvm_available, writewatch};
use proptest::prelude::*;
use writewatch::config::Backing;
use writewatch::memory::create_guest_memory;
use writewatch::migration::receive;
use writewatch::migration::stream::Reader;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Real streams: [a snapshot file, a migration as it crossed the socket,
/// up to its end frame].
const SNAPSHOT: usize = 0;
fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let source = Side::source("workload=uniform wss=1M rate=1", &["--mem", "32M"]);
        let file = dir.path().join("snapshot");
        let out = writewatch()
            .args(["snapshot", "--api-sock", source.sock.to_str().unwrap()])
            .args(["--to", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0);
        let snapshot = std::fs::read(&file).unwrap();
        let (dest, at) = Side::destination(&[]);
        let relay = Relay::start(&at, Damage::None).recording();
        let out = common::migration::migrate(&source, &relay.at, &[]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let migration = relay.recorded();
        dest.stop_workload();
        drop(dest);
        vec![snapshot, migration]
    })
}

/// What a destination does with what it reads, short of KVM: a restore
/// reads a file to its end, a migration's destination up to the end frame.
fn parse(bytes: &[u8], file: bool) -> Result<u64, String> {
    let (mut reader, header) = Reader::start(bytes).map_err(|e| e.to_string())?;
    receive::check_header(&header).map_err(|e| e.to_string())?;
    if header.mem_bytes > 256 << 20 {
        // A header claiming more passes the checks only if this host has
        // the RAM; the fuzz does not allocate it.
        return Err("bigger than the fuzz allocates".into());
    }
    let mem =
        create_guest_memory(header.mem_bytes, Backing::Anon, 46).map_err(|e| e.to_string())?;
    let applied =
        receive::apply(&mut reader, &mem, &header, true, &|_, _| {}).map_err(|e| e.to_string())?;
    if file {
        receive::expect_eof(&mut reader).map_err(|e| e.to_string())?;
    }
    Ok(applied.pages)
}

/// The frames of a stream as byte ranges (after the 8-byte magic).
fn frames(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 5 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        let end = (at + 9 + len).min(bytes.len());
        out.push(at..end);
        at = end;
    }
    out
}

/// Where a migration's destination stops reading: the end of the first
/// end frame (all of `bytes` if there is none).
fn read_end(bytes: &[u8]) -> usize {
    frames(bytes)
        .into_iter()
        .find(|f| bytes[f.start] == b'E')
        .map_or(bytes.len(), |f| f.end)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Overwrite { at: usize, bytes: Vec<u8> },
    Cut { len: usize },
    Duplicate { frame: usize },
    Drop { frame: usize },
    Swap { a: usize, b: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        any::<usize>().prop_map(|len| Mutation::Cut { len }),
        any::<usize>().prop_map(|frame| Mutation::Duplicate { frame }),
        any::<usize>().prop_map(|frame| Mutation::Drop { frame }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap { a, b }),
    ]
}

/// Applies `m`; true if the result must be refused (bytes the
/// destination reads changed in place: a checksum or a length no longer
/// holds). `read` is how many bytes the destination reads: all of a
/// file, a migration up to its end frame.
fn mutate(bytes: &[u8], m: &Mutation, read: usize) -> (Vec<u8>, bool) {
    let mut out = bytes.to_vec();
    let spans = frames(bytes);
    let pick = |i: usize| spans[i % spans.len()].clone();
    match m {
        Mutation::Flip { at, bit } => {
            let at = at % bytes.len();
            out[at] ^= 1 << bit;
            (out, at < read)
        }
        Mutation::Overwrite { at, bytes: new } => {
            let at = at % bytes.len();
            let end = (at + new.len()).min(out.len());
            out[at..end].copy_from_slice(&new[..end - at]);
            let changed = out[..read] != bytes[..read];
            (out, changed)
        }
        Mutation::Cut { len } => {
            let len = len % bytes.len();
            out.truncate(len);
            (out, len < read)
        }
        Mutation::Duplicate { frame } => {
            let span = pick(*frame);
            let copy = bytes[span.clone()].to_vec();
            out.splice(span.end..span.end, copy);
            (out, false)
        }
        Mutation::Drop { frame } => {
            out.drain(pick(*frame));
            (out, false)
        }
        Mutation::Swap { a, b } => {
            let (x, y) = (pick(*a), pick(*b));
            let (first, second) = if x.start <= y.start { (x, y) } else { (y, x) };
            if first == second {
                return (out, false);
            }
            let mut swapped = bytes[..first.start].to_vec();
            swapped.extend_from_slice(&bytes[second.clone()]);
            swapped.extend_from_slice(&bytes[first.end..second.start]);
            swapped.extend_from_slice(&bytes[first.clone()]);
            swapped.extend_from_slice(&bytes[second.end..]);
            (swapped, false)
        }
    }
}

#[test]
fn the_real_streams_parse_whole() {
    if !kvm_available() {
        return;
    }
    for (which, stream) in corpus().iter().enumerate() {
        let pages = parse(stream, which == SNAPSHOT).unwrap();
        assert!(pages > 0);
    }
}

#[test]
fn a_file_with_bytes_after_its_end_frame_is_refused() {
    if !kvm_available() {
        return;
    }
    let mut file = corpus()[SNAPSHOT].clone();
    let end = frames(&file).last().unwrap().clone();
    assert_eq!(file[end.start], b'E');
    file.push(0);
    let err = parse(&file, true).unwrap_err();
    assert!(err.contains("after the end frame"), "{err}");
    // The same stream over a socket: the destination stops at the end
    // frame and never reads the byte.
    assert!(parse(&file, false).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(400)))]

    #[test]
    fn mutated_streams_are_refused_or_parsed_never_a_panic(
        which in 0usize..2,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        if !kvm_available() {
            return Ok(());
        }
        let mut bytes = corpus()[which].clone();
        let mut must_fail = false;
        // Frames moved first, bytes changed after: a changed byte must be
        // caught wherever it ends up.
        let mut mutations = mutations;
        mutations.sort_by_key(|m| !matches!(m, Mutation::Duplicate { .. } | Mutation::Drop { .. } | Mutation::Swap { .. }));
        for m in &mutations {
            if bytes.is_empty() {
                break;
            }
            let read = if which == SNAPSHOT { bytes.len() } else { read_end(&bytes) };
            let (next, changed) = mutate(&bytes, m, read);
            must_fail |= changed;
            bytes = next;
        }
        let result = parse(&bytes, which == SNAPSHOT);
        if must_fail {
            prop_assert!(result.is_err(), "{mutations:?} was accepted");
        }
    }
}
