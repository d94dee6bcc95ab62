//! Snapshots of a running guest to files, full and as diffs of the pages
//! written since the one before (the write-watch layer's), restored into a
//! new VMM as a chain; proven as migrations are (the guest's own check of
//! its memory after resuming, the host's RAM hash before it). With RAM in
//! two slots around the MMIO hole (the upper one written), and on hugetlb.
//! Then chains that are wrong, files that are damaged, and a page changed
//! behind the host hash's back, which the guest's check must catch.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::migration::Side;
use common::{HugePagePool, assert_one_line_error, code, kvm_available, run, stderr, writewatch};
use serde_json::{Value, json};
use writewatch::migration::stream::{End, Kind, Reader, Writer};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const LIMIT: Duration = Duration::from_secs(180);

/// `writewatch snapshot` of `side` to `dir/name`; its JSON answer.
fn snapshot(side: &Side, dir: &Path, name: &str, diff: bool) -> (PathBuf, Value) {
    let path = dir.join(name);
    let mut args = vec![
        "snapshot".to_string(),
        "--api-sock".into(),
        side.sock.display().to_string(),
        "--to".into(),
        path.display().to_string(),
    ];
    if diff {
        args.push("--diff".into());
    }
    let out = writewatch().args(&args).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    (path, answer)
}

/// Restores `files` (with `extra` options), lets the guest check itself.
fn restore_and_check(files: &[&Path], extra: &[&str]) {
    let mut args: Vec<String> = vec!["--restore".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let restored = Side::spawn_with(&args);
    restored.stop_workload();
    let ended = restored.wait(LIMIT);
    ended.assert_intact();
    let report = &ended.report["migration"]["restored"];
    assert_eq!(
        report["files"].as_array().unwrap().len(),
        files.len(),
        "{report}"
    );
}

/// Takes a full snapshot and two diffs of a running checking workload,
/// then restores the full one alone, with the first diff, and with both.
fn chain_of_three(workload: &str, src: &[&str], restore: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let source = Side::source(workload, src);
    let (full, answer) = snapshot(&source, dir.path(), "full", false);
    assert_eq!(answer["base"], Value::Null);
    std::thread::sleep(Duration::from_millis(400));
    let (d1, a1) = snapshot(&source, dir.path(), "d1", true);
    assert_eq!(a1["base"], answer["id"]);
    assert!(
        a1["pages"].as_u64().unwrap() > 0,
        "the workload wrote meanwhile: {a1}"
    );
    std::thread::sleep(Duration::from_millis(400));
    let (d2, a2) = snapshot(&source, dir.path(), "d2", true);
    assert_eq!(a2["base"], a1["id"]);
    // A diff holds what was written, not the whole guest.
    assert!(
        a2["bytes"].as_u64() < answer["bytes"].as_u64(),
        "{a2} vs {answer}"
    );
    // The guest ran on after each snapshot.
    source.stop_workload();
    source.wait(LIMIT).assert_intact();
    restore_and_check(&[&full], restore);
    restore_and_check(&[&full, &d1], restore);
    restore_and_check(&[&full, &d1, &d2], restore);
}

#[test]
fn a_full_snapshot_and_two_diffs_restore_as_a_chain() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    chain_of_three("workload=zipf wss=32M rate=16", &["--vcpus", "2"], &[]);
}

#[test]
fn diffs_of_a_five_gib_guest_writing_above_4_gib() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    chain_of_three(
        "workload=uniform wss=128M rate=16 first=4294967296",
        &["--mem", "5G", "--vcpus", "2"],
        &[],
    );
}

#[test]
fn diffs_of_a_guest_on_hugetlb_backed_ram() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let _pool = HugePagePool::grow_by(2 * 128);
    let huge = ["--backing", "hugetlb"];
    chain_of_three(
        "workload=uniform wss=32M rate=16",
        &["--backing", "hugetlb", "--vcpus", "2"],
        &huge,
    );
}

#[test]
fn chains_that_do_not_fit_and_damaged_files_get_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let source = Side::source("workload=uniform wss=8M rate=4", &[]);
    // No diff before a full snapshot; no overwriting.
    let out = run(&[
        "snapshot",
        "--api-sock",
        source.sock.to_str().unwrap(),
        "--to",
        dir.path().join("early").to_str().unwrap(),
        "--diff",
    ]);
    assert_one_line_error(&out, 1, "take a full one first");
    let (full, _) = snapshot(&source, dir.path(), "full", false);
    let out = run(&[
        "snapshot",
        "--api-sock",
        source.sock.to_str().unwrap(),
        "--to",
        full.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, 1, "exists");
    let (d1, _) = snapshot(&source, dir.path(), "d1", true);
    let (d2, _) = snapshot(&source, dir.path(), "d2", true);
    let (other, _) = snapshot(&source, dir.path(), "other-full", false);
    drop(source);
    let bytes = std::fs::read(&full).unwrap();
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let flipped = dir.path().join("flipped");
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 3] ^= 1;
    std::fs::write(&flipped, &damaged).unwrap();
    let missing = dir.path().join("missing");
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![p(&d1)], "give its full snapshot first"),
        (vec![p(&full), p(&d2)], "but the file before it is snapshot"),
        (vec![p(&full), p(&d1), p(&other)], "only diffs may follow"),
        (vec![p(&truncated)], "ended early"),
        (vec![p(&flipped)], "checksum mismatch"),
        (vec![p(&missing)], "No such file"),
    ];
    for (files, why) in cases {
        let mut args = vec!["run".to_string(), "--restore".into()];
        args.extend(files);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_error(&run(&args), 125, why);
    }
}

/// Rewrites a snapshot, applying `change` to each pages frame's payload,
/// and with `drop_hash` leaving the end frame without a RAM hash.
fn rewrite(from: &Path, to: &Path, drop_hash: bool, mut change: impl FnMut(&mut Vec<u8>)) {
    let input = std::fs::read(from).unwrap();
    let (mut reader, header) = Reader::start(&input[..]).unwrap();
    let mut out = Writer::start(Vec::new(), &header).unwrap();
    loop {
        let mut frame = reader.frame().unwrap();
        match frame.kind {
            Kind::Pages => change(&mut frame.payload),
            Kind::End if drop_hash => {
                let mut end: End = frame.json().unwrap();
                end.ram_hash = None;
                frame.payload = serde_json::to_vec(&end).unwrap();
            }
            _ => {}
        }
        out.frame(frame.kind, &[&frame.payload]).unwrap();
        if frame.kind == Kind::End {
            break;
        }
    }
    std::fs::write(to, out.into_inner()).unwrap();
}

#[test]
fn a_page_changed_behind_the_host_hash_is_caught_by_the_guest_check() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let source = Side::source("workload=uniform wss=8M rate=4", &[]);
    let (_, workload) = source.call("GET", "/workload", None);
    let arena = workload["workload"]["arena"][0].clone();
    let (arena_start, arena_len) = (arena[0].as_u64().unwrap(), arena[1].as_u64().unwrap());
    let (full, _) = snapshot(&source, dir.path(), "full", false);
    drop(source);
    // Change the check value of one arena page (bytes 8..16), with every
    // frame checksum made right again.
    let mut changed = false;
    let mut change = |payload: &mut Vec<u8>| {
        let gpa = u64::from_le_bytes(payload[..8].try_into().unwrap());
        let count = u32::from_le_bytes(payload[8..12].try_into().unwrap()) as u64;
        let page = arena_start + arena_len / 2;
        if !changed && (gpa..gpa + count * 4096).contains(&page) {
            let at = 12 + (page - gpa) as usize + 8;
            payload[at] ^= 0x80;
            changed = true;
        }
    };
    let no_hash = dir.path().join("no-hash");
    rewrite(&full, &no_hash, true, &mut change);
    assert!(changed, "the arena page is in the snapshot");
    let restored = Side::spawn_with(&["--restore", no_hash.to_str().unwrap()]);
    restored.stop_workload();
    let ended = restored.wait(LIMIT);
    assert_eq!(ended.code, 5, "the guest check must fail: {}", ended.stderr);
    assert_eq!(ended.check()["mismatches"], 1, "{}", ended.check());
    let page = arena_start + arena_len / 2;
    assert_eq!(ended.check()["first_bad"], json!(page));
    // With the hash left in, the host refuses the file before any guest runs.
    changed = false;
    let mut change = |payload: &mut Vec<u8>| {
        let gpa = u64::from_le_bytes(payload[..8].try_into().unwrap());
        let count = u32::from_le_bytes(payload[8..12].try_into().unwrap()) as u64;
        if !changed && (gpa..gpa + count * 4096).contains(&page) {
            payload[12 + (page - gpa) as usize + 8] ^= 0x80;
            changed = true;
        }
    };
    let hashed = dir.path().join("hashed");
    rewrite(&full, &hashed, false, &mut change);
    assert_one_line_error(
        &run(&["run", "--restore", hashed.to_str().unwrap()]),
        125,
        "RAM differs",
    );
}
