//! Live migration between two real writewatch processes over a real
//! socket, proven two ways every time: the guest workload keeps a shadow
//! of what it wrote and verifies all of it after resuming on the
//! destination (its `workload_check` record, exit 5 on any difference),
//! and both VMMs hash all guest RAM (at the pause on the source, before
//! resume on the destination, which refuses the guest on a mismatch).
//! Then the failures: either side dying mid-stream, a corrupted page, a
//! truncated state section, and streams that are wrong from the start.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::migration::{Damage, Relay, Side, migrate, status_of};
use common::{HugePagePool, code, kvm_available, stderr};
use serde_json::Value;

/// Two VMMs per test on a two-core machine: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const LIMIT: Duration = Duration::from_secs(180);

/// Migrates a checking `workload` from a source with `src` options to a
/// destination with `dst` options; checks both ends; returns the status.
fn migrate_and_check(workload: &str, src: &[&str], dst: &[&str], how: &[&str]) -> Value {
    let (dest, at) = Side::destination(dst);
    let source = Side::source(workload, src);
    // Let the workload dirty memory for a while first.
    std::thread::sleep(Duration::from_millis(500));
    let out = migrate(&source, &at, how);
    assert_eq!(code(&out), 0, "migrate: {}", stderr(&out));
    let status = status_of(&out);
    assert_eq!(status["phase"], "completed", "{status}");
    let source = source.wait(LIMIT);
    assert_eq!(source.code, 0, "source: {}", source.stderr);
    assert_eq!(source.report["stop_reason"], "migrated");
    assert!(source.stderr.contains("migrated to"), "{}", source.stderr);
    dest.stop_workload();
    let dest = dest.wait(LIMIT);
    dest.assert_intact();
    // The console goes on where the guest runs: the check it prints after
    // the move is on the destination's, the boot banner on the source's.
    assert!(
        dest.console.contains("workload check:") && !source.console.contains("workload check:"),
        "source console:\n{}\ndestination console:\n{}",
        source.console,
        dest.console
    );
    assert!(!source.console.is_empty() && !dest.console.contains("writewatch guest kernel"));
    let incoming = &dest.report["migration"]["incoming"];
    assert!(incoming["pages"].as_u64().unwrap() > 0, "{incoming}");
    // The host hash was compared (the destination refuses otherwise).
    assert!(
        status["ram_hash"].as_str().is_some_and(|h| h.len() == 32),
        "{status}"
    );
    assert!(incoming["hash_ms"].as_f64().unwrap() > 0.0, "{incoming}");
    // Nothing was left unsent: the last round is the paused one.
    let rounds = status["rounds"].as_array().unwrap();
    assert!(
        rounds.last().unwrap()["paused"].as_bool().unwrap(),
        "{status}"
    );
    assert_eq!(status["remaining_pages"], 0);
    eprintln!(
        "{} rounds, {} bytes ({:.3}x the lower bound), downtime {} ms",
        rounds.len(),
        status["bytes_sent"],
        status["bytes_sent"].as_f64().unwrap() / status["lower_bound_bytes"].as_f64().unwrap(),
        status["downtime_ms"]
    );
    status
}

#[test]
fn an_idle_guest_on_one_vcpu_with_the_bitmap() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let status = migrate_and_check("workload=idle wss=64M", &[], &[], &[]);
    assert_eq!(status["source"], "bitmap");
}

#[test]
fn a_hot_cold_guest_on_four_vcpus_with_the_ring() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let ring = ["--vcpus", "4", "--dirty-ring-size", "4096"];
    let status = migrate_and_check(
        "workload=zipf wss=64M rate=16",
        &ring,
        &["--dirty-ring-size", "4096"],
        &[],
    );
    assert_eq!(status["source"], "ring");
}

#[test]
fn a_uniform_guest_on_four_vcpus_with_the_bitmap() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    migrate_and_check(
        "workload=uniform wss=64M rate=16",
        &["--vcpus", "4"],
        &[],
        &[],
    );
}

#[test]
fn a_uniform_guest_on_one_vcpu_with_the_ring() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let status = migrate_and_check(
        "workload=uniform wss=64M rate=16",
        &["--dirty-ring-size", "4096"],
        &[],
        &[],
    );
    assert_eq!(status["source"], "ring");
}

#[test]
fn a_guest_on_hugetlb_backed_ram() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    // Two 256 MiB guests of 2 MiB pages.
    let _pool = HugePagePool::grow_by(2 * 128);
    let huge = ["--backing", "hugetlb", "--vcpus", "2"];
    migrate_and_check(
        "workload=uniform wss=64M rate=16",
        &huge,
        &["--backing", "hugetlb"],
        &[],
    );
}

#[test]
fn a_five_gib_guest_writing_above_4_gib() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    // RAM in two slots around the MMIO hole; the workload writes the upper one.
    let status = migrate_and_check(
        "workload=uniform wss=256M rate=16 first=4294967296",
        &["--mem", "5G", "--vcpus", "2"],
        &[],
        &[],
    );
    assert_eq!(status["ram_pages"], 5 * 262144);
}

#[test]
fn auto_converge_throttles_a_guest_that_would_not_converge() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    // Sending at 32 MiB/s from a guest dirtying 64 MiB/s never fits a
    // 50 ms downtime. Without auto-converge, cancel after 4 rounds.
    let workload = "workload=uniform wss=16M rate=64";
    let (dest, at) = Side::destination(&[]);
    let mut source = Side::source(workload, &["--vcpus", "2"]);
    let slow = ["--max-bandwidth", "32", "--downtime-ms", "50"];
    let mut cancel = slow.to_vec();
    cancel.extend(["--max-rounds", "4", "--on-timeout", "cancel"]);
    let out = migrate(&source, &at, &cancel);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let status = status_of(&out);
    assert_eq!(status["phase"], "cancelled", "{status}");
    assert!(
        status["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["throttle_percent"] == 0)
    );
    assert!(
        source.running(),
        "a cancelled migration leaves the guest running"
    );
    assert_eq!(dest.wait(LIMIT).code, 125, "the first destination gave up");
    let (dest, at) = Side::destination(&[]);
    // With it, the throttle starts after two rounds that dirtied more than
    // half of what they sent, and grows until the rest fits.
    let mut auto = slow.to_vec();
    auto.extend(["--auto-converge", "--max-rounds", "200"]);
    let out = migrate(&source, &at, &auto);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let status = status_of(&out);
    assert_eq!(status["converged"], true, "{status}");
    let throttles: Vec<u64> = status["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["throttle_percent"].as_u64().unwrap())
        .collect();
    eprintln!("throttle by round: {throttles:?}");
    assert_eq!(throttles[0], 0);
    assert!(throttles.iter().any(|&t| t >= 20), "{throttles:?}");
    assert!(
        throttles.windows(2).all(|w| w[1] >= w[0] || w[1] == 0),
        "{throttles:?}"
    );
    assert_eq!(source.wait(LIMIT).code, 0);
    dest.stop_workload();
    dest.wait(LIMIT).assert_intact();
}

#[test]
fn a_destination_that_dies_mid_stream_leaves_the_source_running_to_migrate_again() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let (mut dead, at) = Side::destination(&[]);
    let mut source = Side::source("workload=uniform wss=64M rate=8", &[]);
    // A slow migration, killed in its first round.
    let sock = source.sock.clone();
    let killer = std::thread::spawn(move || {
        common::migration::wait_for(
            || {
                writewatch::api::client::call(&sock, "GET", "/migration", None, None)
                    .is_ok_and(|r| r.body["bytes_sent"].as_u64().unwrap_or(0) > 1 << 20)
            },
            "the migration to send 1 MiB",
        );
    });
    let slow = ["--max-bandwidth", "2"];
    let migration = std::thread::spawn({
        let sock = source.sock.clone();
        let at = at.clone();
        move || {
            common::writewatch()
                .args([
                    "migrate",
                    "--api-sock",
                    sock.to_str().unwrap(),
                    "--to",
                    &at,
                    "--json",
                ])
                .args(slow)
                .output()
                .unwrap()
        }
    });
    killer.join().unwrap();
    dead.kill();
    let out = migration.join().unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let status = status_of(&out);
    assert_eq!(status["phase"], "failed", "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("destination"),
        "{status}"
    );
    assert!(source.running(), "the source guest must run on");
    // It runs on unharmed, and a second migration succeeds.
    std::thread::sleep(Duration::from_millis(300));
    migrates_again_intact(source);
}

#[test]
fn a_source_that_dies_mid_stream_leaves_the_destination_with_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let (dest, at) = Side::destination(&[]);
    let mut source = Side::source("workload=uniform wss=64M rate=8", &[]);
    let sock = source.sock.clone();
    let migration = std::thread::spawn({
        let at = at.clone();
        move || {
            common::writewatch()
                .args(["migrate", "--api-sock", sock.to_str().unwrap(), "--to", &at])
                .args(["--max-bandwidth", "2"])
                .output()
                .unwrap()
        }
    });
    let sock = source.sock.clone();
    common::migration::wait_for(
        || {
            writewatch::api::client::call(&sock, "GET", "/migration", None, None)
                .is_ok_and(|r| r.body["bytes_sent"].as_u64().unwrap_or(0) > 1 << 20)
        },
        "the migration to send 1 MiB",
    );
    source.kill();
    let _ = migration.join();
    let dest = dest.wait(LIMIT);
    assert_eq!(dest.code, 125, "{}", dest.stderr);
    let last = dest.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("the incoming migration failed") && last.contains("ended early"),
        "{}",
        dest.stderr
    );
    assert!(!dest.stderr.contains("panicked"));
    assert!(
        dest.records.is_empty(),
        "the guest must not run on the destination"
    );
}

/// A source whose migration failed migrates to a fresh destination, and
/// the guest arrives intact.
fn migrates_again_intact(source: Side) {
    let (dest, at) = Side::destination(&[]);
    let out = migrate(&source, &at, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(source.wait(LIMIT).code, 0);
    dest.stop_workload();
    dest.wait(LIMIT).assert_intact();
}

/// Sends through a relay doing `damage`; the destination must refuse with
/// `why`, and the source must run on and migrate again.
fn refused_then_again(damage: Damage, why: &str) {
    let (dest, at) = Side::destination(&[]);
    let mut source = Side::source("workload=zipf wss=32M rate=8", &["--vcpus", "2"]);
    let relay = Relay::start(&at, damage);
    let out = migrate(&source, &relay.at, &[]);
    drop(relay);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let status = status_of(&out);
    assert_eq!(status["phase"], "failed", "{status}");
    let dest = dest.wait(LIMIT);
    assert_eq!(dest.code, 125, "{}", dest.stderr);
    let last = dest.stderr.lines().last().unwrap_or_default();
    assert!(last.contains(why), "want {why:?} in {}", dest.stderr);
    assert!(
        dest.records.is_empty(),
        "the guest must not run on the destination"
    );
    assert!(source.running(), "the source guest must run on");
    migrates_again_intact(source);
}

#[test]
fn a_corrupted_page_is_refused_and_the_source_runs_on() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    refused_then_again(Damage::Flip { kind: b'P', nth: 3 }, "checksum mismatch");
}

#[test]
fn a_truncated_state_section_is_refused_and_the_source_runs_on() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    refused_then_again(Damage::Cut { kind: b'S' }, "inside its");
}

/// A hand-made stream: the magic, then frames as (kind, payload).
fn stream(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"WWSTREAM".to_vec();
    for (kind, payload) in frames {
        let len = (payload.len() as u32).to_le_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(&[*kind]);
        h.update(&len);
        h.update(payload);
        out.push(*kind);
        out.extend_from_slice(&len);
        out.extend_from_slice(payload);
        out.extend_from_slice(&h.finalize().to_le_bytes());
    }
    out
}

fn header(version: u32, mem: u64, ram: Value) -> (u8, Vec<u8>) {
    let h = serde_json::json!({
        "version": version, "purpose": "migration", "vcpus": 1,
        "mem_bytes": mem, "ram": ram, "writer": "test"
    });
    (b'H', h.to_string().into_bytes())
}

#[test]
fn streams_wrong_from_the_start_get_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let mb = 1u64 << 20;
    let good = header(1, 64 * mb, serde_json::json!([[0, 64 * mb]]));
    let mut page = 0x10_0000u64.to_le_bytes().to_vec();
    page.extend_from_slice(&1u32.to_le_bytes());
    page.extend_from_slice(&[7u8; 4096]);
    let mut outside = (64 * mb).to_le_bytes().to_vec();
    outside.extend_from_slice(&1u32.to_le_bytes());
    outside.extend_from_slice(&[7u8; 4096]);
    let full = stream(&[good.clone(), (b'P', page.clone())]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"NOTASTREAMATALL".to_vec(), "bad magic"),
        (
            stream(&[header(2, 64 * mb, serde_json::json!([[0, 64 * mb]]))]),
            "version 2",
        ),
        (
            stream(&[header(1, 64 * mb, serde_json::json!([[0, 32 * mb]]))]),
            "RAM layout",
        ),
        (
            stream(&[header(
                1,
                1 << 50,
                serde_json::json!([[0, 3u64 << 30], [1u64 << 32, (1u64 << 50) - (3u64 << 30)]]),
            )]),
            "more than this host",
        ),
        (
            stream(&[good.clone(), (b'P', outside)]),
            "outside guest RAM",
        ),
        (stream(&[good.clone(), (b'Q', vec![])]), "unknown kind"),
        (full[..full.len() - 100].to_vec(), "ended early"),
        (
            stream(&[
                good.clone(),
                (b'P', page),
                (b'E', b"{\"pages_sent\":1,\"rounds\":1}".to_vec()),
            ]),
            "without the machine state",
        ),
        (stream(&[good, (b'S', b"{\"vcpus\":[]}".to_vec())]), "state"),
    ];
    for (bytes, why) in cases {
        let (dest, at) = Side::destination(&[]);
        let mut conn = UnixStream::connect(common::migration::path_of(&at)).unwrap();
        let _ = conn.write_all(&bytes);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let dest = dest.wait(Duration::from_secs(60));
        assert_eq!(dest.code, 125, "{why}: {}", dest.stderr);
        let lines: Vec<&str> = dest
            .stderr
            .lines()
            .filter(|l| !l.contains("waiting for a migration"))
            .collect();
        assert_eq!(lines.len(), 1, "{why}: {}", dest.stderr);
        assert!(lines[0].contains(why), "want {why:?} in {:?}", lines[0]);
    }
}

#[test]
fn migration_requests_that_cannot_be_served_get_4xx_and_the_guest_runs_on() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let mut source = Side::source("workload=uniform wss=16M rate=4", &[]);
    assert_eq!(source.call("GET", "/migration", None).0, 404);
    assert_eq!(source.call("DELETE", "/migration", None).0, 409);
    let (status, body) = source.call(
        "PUT",
        "/migration",
        Some(serde_json::json!({"to": "tcp:nowhere"})),
    );
    assert_eq!(status, 400, "{body}");
    // Nobody listens there: the migration fails, the guest runs on.
    let gone = source.dir.path().join("nobody.sock");
    let out = migrate(&source, &format!("unix:{}", gone.display()), &[]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        status_of(&out)["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect")
    );
    // One at a time; a running one can be cancelled.
    let (dest, at) = Side::destination(&[]);
    let body = serde_json::json!({"to": at, "max_bandwidth_mib": 1});
    assert_eq!(source.call("PUT", "/migration", Some(body.clone())).0, 200);
    assert_eq!(source.call("PUT", "/migration", Some(body)).0, 409);
    let (status, _) = source.call(
        "PUT",
        "/snapshot",
        Some(serde_json::json!({"to": "/tmp/x"})),
    );
    assert_eq!(status, 409);
    assert_eq!(source.call("DELETE", "/migration", None).0, 200);
    common::migration::wait_for(
        || source.call("GET", "/migration", None).1["phase"] == "cancelled",
        "the cancellation",
    );
    assert!(source.running());
    drop(dest);
    source.stop_workload();
    source.wait(LIMIT).assert_intact();
}
