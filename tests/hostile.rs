//! The VMM under a hostile guest (Firecracker's threat model): whatever the
//! guest does, the VMM does not crash, does not outlive `--timeout` by more
//! than a second, keeps its memory within a fixed allowance of a quiet
//! guest's, keeps its own stderr small, and says truthfully how the guest
//! ended. Every guest here is a small PVH kernel assembled in the test.
//!
//! The tests run one at a time: several flood the host's two cores, and the
//! time bounds are about the VMM, not about contention between tests.

mod common;

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use common::kvm_available;
use common::observe::{Observed, Reader, observe, observe_signalled};
use common::pvh_elf::{LOAD_ADDR, pvh_kernel};
use common::x86::{Asm, Reg, Width};

/// How much more memory (KiB) a hostile guest may make the VMM use than a
/// quiet guest of the same shape (docs/CLI.md states the same allowance).
const RSS_ALLOWANCE_KIB: u64 = 32 << 10;
/// How far past `--timeout` the VMM may run.
const TIMEOUT_SLACK: Duration = Duration::from_secs(1);
/// Stderr a hostile guest may cause: dumps and a bounded set of warnings.
const STDERR_LIMIT: usize = 64 << 10;
/// Where an application processor starts (SIPI vector 0x08).
const AP_START: u32 = 0x8000;
const RECORD_PORT: u32 = 0xf8;
const SERIAL: u32 = 0x3f8;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `code` as a PVH kernel to a temporary file.
fn kernel_file(code: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, &pvh_kernel(code)).unwrap();
    file
}

/// Boots `code` with `args` (after `run`/`selftest` and `--kernel`).
fn boot(command: &str, code: &[u8], args: &[&str], reader: Reader) -> Observed {
    let kernel = kernel_file(code);
    let mut all = vec![command, "--kernel", kernel.path().to_str().unwrap()];
    all.extend_from_slice(args);
    observe(&all, reader)
}

/// A guest record: the `u32` length, then the JSON text.
fn record_bytes(json: &str) -> Vec<u8> {
    let mut bytes = (json.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes
}

/// A valid record of exactly `len` bytes of JSON.
fn padded_record(kind: &str, len: usize) -> String {
    let head = format!(r#"{{"type":"{kind}","pad":""#);
    let pad = len - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// Starts every other vCPU in real mode at `AP_START` running `ap_code`:
/// copies it there, switches the LAPIC to x2APIC mode and sends INIT and
/// SIPI to all but itself, as a kernel's SMP bring-up does.
fn start_aps(asm: &mut Asm, ap_code: &[u8]) {
    asm.mov_addr(Reg::Esi, "ap_code")
        .mov(Reg::Edi, AP_START)
        .mov(Reg::Ecx, ap_code.len() as u32)
        .rep_movsb()
        .mov(Reg::Ecx, 0x1b) // IA32_APIC_BASE: enable, x2APIC
        .rdmsr()
        .or_eax(0xc00)
        .wrmsr()
        .mov(Reg::Ecx, 0x830) // x2APIC ICR
        .mov(Reg::Edx, 0)
        .mov(Reg::Eax, 0x000c_4500) // INIT, all excluding self
        .wrmsr()
        .mov(Reg::Eax, 0x000c_4600 | (AP_START >> 12)) // SIPI
        .wrmsr()
        .wrmsr();
}

/// Rings the record doorbell `times` times with the record at `record`.
fn ring_times(asm: &mut Asm, record: &str, times: u32) {
    let again = format!("ring_{record}_{}", asm.here());
    asm.mov(Reg::Edx, RECORD_PORT)
        .mov(Reg::Ecx, times)
        .label(&again)
        .mov_addr(Reg::Eax, record)
        .out(Width::Dword)
        .dec_ecx()
        .jnz(&again);
}

/// Real-mode code for an application processor: ring the record doorbell
/// with `record` forever.
fn ap_ring_forever(record: u32) -> Vec<u8> {
    let mut ap = Asm::real_mode(AP_START);
    ap.mov(Reg::Edx, RECORD_PORT)
        .label("again")
        .mov(Reg::Eax, record)
        .out(Width::Dword)
        .jmp("again");
    ap.finish()
}

/// A kernel whose every vCPU rings the doorbell with `record` forever.
fn doorbell_flood(vcpus: u32, record: &[u8]) -> Vec<u8> {
    let mut asm = Asm::new(LOAD_ADDR as u32);
    // The APs' code needs the record's address: lay the data out first.
    asm.jmp("start").align(16).label("record").bytes(record);
    let ap = ap_ring_forever(asm.address_of("record"));
    asm.label("ap_code").bytes(&ap).label("start");
    if vcpus > 1 {
        start_aps(&mut asm, &ap);
    }
    asm.mov(Reg::Edx, RECORD_PORT)
        .label("again")
        .mov_addr(Reg::Eax, "record")
        .out(Width::Dword)
        .jmp("again");
    asm.finish()
}

/// A kernel that does nothing, quietly, until stopped.
fn quiet() -> Vec<u8> {
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.print(b"quiet\n").halt_forever();
    asm.finish()
}

/// Peak RSS of the VMM running a quiet guest of `vcpus` vCPUs and `mem`,
/// measured once per shape in this run.
fn quiet_rss_kib(vcpus: &str, mem: &str) -> u64 {
    static SEEN: OnceLock<Mutex<Vec<(String, u64)>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| Mutex::new(Vec::new()));
    let key = format!("{vcpus}/{mem}");
    if let Some(&(_, kib)) = seen.lock().unwrap().iter().find(|(k, _)| *k == key) {
        return kib;
    }
    let out = boot(
        "run",
        &quiet(),
        &["--vcpus", vcpus, "--mem", mem, "--timeout", "1"],
        Reader::Reads,
    );
    assert_eq!(out.code(), 124, "quiet guest: {}", out.stderr);
    seen.lock().unwrap().push((key, out.peak_rss_kib));
    out.peak_rss_kib
}

/// The checks every hostile run must pass: the expected exit code, within
/// the timeout (when one is given), with bounded memory and stderr.
fn assert_contained(out: &Observed, code: i32, timeout_secs: Option<f64>, vcpus: &str, mem: &str) {
    let quiet = quiet_rss_kib(vcpus, mem);
    eprintln!(
        "exit {:?} after {:?}; peak RSS {} KiB (quiet guest: {quiet} KiB); stderr {} bytes",
        out.status.code(),
        out.elapsed,
        out.peak_rss_kib,
        out.stderr.len()
    );
    assert_eq!(out.code(), code, "stderr: {}", tail(&out.stderr));
    if let Some(secs) = timeout_secs {
        let limit = Duration::from_secs_f64(secs) + TIMEOUT_SLACK;
        assert!(
            out.elapsed <= limit,
            "ran {:?}, past --timeout {secs} + {TIMEOUT_SLACK:?}",
            out.elapsed
        );
    }
    assert!(
        out.peak_rss_kib <= quiet + RSS_ALLOWANCE_KIB,
        "peak RSS {} KiB, a quiet guest's {quiet} KiB: more than {RSS_ALLOWANCE_KIB} KiB over",
        out.peak_rss_kib
    );
    assert!(
        out.stderr.len() <= STDERR_LIMIT,
        "stderr is {} bytes: {}",
        out.stderr.len(),
        tail(&out.stderr)
    );
    for panic_text in ["panicked", "internal error", "RUST_BACKTRACE"] {
        assert!(!out.stderr.contains(panic_text), "{}", tail(&out.stderr));
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[start..]
}

#[test]
fn a_doorbell_flood_on_4_and_64_vcpus_is_held_within_memory_and_timeout() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let record = record_bytes(&padded_record("flood", 64 << 10));
    for (vcpus, records) in [
        ("4", None),
        ("4", Some("/dev/null")),
        ("64", Some("/dev/null")),
    ] {
        let code = doorbell_flood(vcpus.parse().unwrap(), &record);
        let mut args = vec!["--vcpus", vcpus, "--mem", "64M", "--timeout", "2"];
        if let Some(path) = records {
            args.extend(["--records", path]);
        }
        let out = boot("run", &code, &args, Reader::Reads);
        assert_contained(&out, 124, Some(2.0), vcpus, "64M");
        assert!(out.stderr.contains("--timeout"), "{}", tail(&out.stderr));
    }
}

#[test]
fn a_flood_of_test_records_with_huge_names_stays_small_in_memory_report_and_stderr() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    // `run` keeps nothing of `test` records; `selftest` keeps a bounded tally.
    for (command, tests, expected) in [("run", 10_000, 0), ("selftest", 1_000, 1)] {
        let out = boot(
            command,
            &failing_tests(tests, 65_000),
            &[
                "--mem",
                "64M",
                "--timeout",
                "120",
                "--report",
                report.to_str().unwrap(),
            ],
            Reader::Reads,
        );
        assert_contained(&out, expected, None, "1", "64M");
        let report_len = std::fs::metadata(&report).unwrap().len();
        assert!(
            report_len < 16 << 10,
            "{command}: report is {report_len} bytes"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(json["records"], tests + 1, "{json}");
        if command == "selftest" {
            assert_eq!(json["selftest"]["failed_count"], tests, "{json}");
            let verdict = out
                .stderr
                .lines()
                .find(|l| l.contains("selftest failed"))
                .unwrap();
            assert!(
                verdict.len() < 4000,
                "verdict line is {} bytes",
                verdict.len()
            );
            assert!(verdict.contains("1000 of 1000 tests failed"), "{verdict}");
        }
    }
}

/// A kernel announcing `tests` self-tests, then reporting each as failed
/// with a name of `name_len` bytes, then exiting 0.
fn failing_tests(tests: u32, name_len: usize) -> Vec<u8> {
    let name = "n".repeat(name_len);
    let test = record_bytes(&format!(
        r#"{{"type":"test","n":1,"name":"{name}","ok":false}}"#
    ));
    let plan = record_bytes(&format!(r#"{{"type":"plan","count":{tests}}}"#));
    let mut asm = Asm::new(LOAD_ADDR as u32);
    ring_times(&mut asm, "plan", 1);
    ring_times(&mut asm, "test", tests);
    asm.exit(0)
        .align(16)
        .label("plan")
        .bytes(&plan)
        .align(16)
        .label("test")
        .bytes(&test);
    asm.finish()
}

/// A kernel printing `x` forever, a page per exit (`rep outsb`).
fn console_flood() -> Vec<u8> {
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.jmp("start")
        .label("text")
        .bytes(&[b'x'; 4096])
        .label("start")
        .mov(Reg::Edx, SERIAL)
        .label("again")
        .mov_addr(Reg::Esi, "text")
        .mov(Reg::Ecx, 4096)
        .rep_outs(Width::Byte)
        .jmp("again");
    asm.finish()
}

#[test]
fn a_stalled_stdout_reader_does_not_defeat_the_timeout() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let out = boot(
        "run",
        &console_flood(),
        &["--mem", "64M", "--timeout", "2", "--report", "/dev/null"],
        Reader::Stalled,
    );
    assert_contained(&out, 124, Some(2.0), "1", "64M");
    assert!(
        out.stderr
            .contains("bytes of guest console output were lost"),
        "{}",
        tail(&out.stderr)
    );
}

#[test]
fn records_to_a_stalled_stdout_hold_the_guest_back_not_the_timeout() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let record = record_bytes(&padded_record("flood", 64 << 10));
    let out = boot(
        "run",
        &doorbell_flood(4, &record),
        &[
            "--vcpus",
            "4",
            "--mem",
            "64M",
            "--timeout",
            "2",
            "--records",
            "-",
        ],
        Reader::Stalled,
    );
    assert_contained(&out, 124, Some(2.0), "4", "64M");
    assert!(
        out.stderr.contains("not written"),
        "unwritten records must be reported: {}",
        tail(&out.stderr)
    );
}

#[test]
fn a_slow_but_live_reader_gets_every_record() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    // 2,000 records of 16 KiB through stdout (32 MiB, far more than any
    // queue holds) while the test reads at its own pace.
    let record = record_bytes(&padded_record("r", 16 << 10));
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.jmp("start")
        .align(16)
        .label("record")
        .bytes(&record)
        .label("start");
    ring_times(&mut asm, "record", 2000);
    asm.exit(0);
    let out = boot(
        "run",
        &asm.finish(),
        &["--mem", "64M", "--timeout", "120", "--records", "-"],
        Reader::Reads,
    );
    assert_contained(&out, 0, None, "1", "64M");
    let lines = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"{\"type\":\"r\""));
    assert_eq!(lines.count(), 2000);
}

#[test]
fn string_io_fills_and_sends_every_element() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let records = [
        r#"{"type":"one"}"#,
        r#"{"type":"two"}"#,
        r#"{"type":"three"}"#,
    ];
    let mut asm = Asm::new(LOAD_ADDR as u32);
    // Store the three record addresses for one `rep outsd` to the doorbell.
    for i in 0..3 {
        asm.mov_addr(Reg::Eax, &format!("rec{i}"))
            .store_eax(&format!("addr{i}"));
    }
    // rep insb x16 from LSR, rep insw x4 from MCR|LSR, rep insd x4 from an
    // unclaimed port; then print all 40 bytes with rep outsb.
    asm.mov(Reg::Edx, SERIAL + 5)
        .mov_addr(Reg::Edi, "buf")
        .mov(Reg::Ecx, 16)
        .rep_ins(Width::Byte)
        .mov(Reg::Edx, SERIAL + 4)
        .mov(Reg::Ecx, 4)
        .rep_ins(Width::Word)
        .mov(Reg::Edx, 0x80)
        .mov(Reg::Ecx, 4)
        .rep_ins(Width::Dword)
        .mov(Reg::Edx, SERIAL)
        .mov_addr(Reg::Esi, "buf")
        .mov(Reg::Ecx, 40)
        .rep_outs(Width::Byte)
        .mov(Reg::Edx, RECORD_PORT)
        .mov_addr(Reg::Esi, "addr0")
        .mov(Reg::Ecx, 3)
        .rep_outs(Width::Dword)
        // rep outsb to the exit port: the first element ends the VM.
        .mov(Reg::Edx, 0xf4)
        .mov_addr(Reg::Esi, "exits")
        .mov(Reg::Ecx, 2)
        .rep_outs(Width::Byte)
        .halt_forever();
    for (i, json) in records.iter().enumerate() {
        asm.align(4)
            .label(&format!("rec{i}"))
            .bytes(&record_bytes(json));
    }
    asm.align(4);
    for i in 0..3 {
        asm.label(&format!("addr{i}")).bytes(&[0; 4]);
    }
    asm.label("buf").bytes(&[0x55; 64]);
    asm.label("exits").bytes(&[7, 9]);
    let dir = tempfile::tempdir().unwrap();
    let records_path = dir.path().join("records.jsonl");
    let out = boot(
        "run",
        &asm.finish(),
        &[
            "--mem",
            "64M",
            "--timeout",
            "30",
            "--records",
            records_path.to_str().unwrap(),
        ],
        Reader::Reads,
    );
    assert_contained(&out, 7, None, "1", "64M");
    let lsr = 0x60; // transmitter empty, holding register empty
    let mcr = 0x08; // OUT2 after reset
    let mut expected = vec![lsr; 16];
    for _ in 0..4 {
        expected.extend([mcr, lsr]);
    }
    expected.extend([0xff; 16]);
    assert_eq!(out.stdout, expected);
    let written = std::fs::read_to_string(&records_path).unwrap();
    assert_eq!(written.lines().collect::<Vec<_>>(), records);
}

/// A kernel that writes `value` to the exit port with a 32-bit `out`.
fn exits_with(value: u32) -> Vec<u8> {
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.exit(value);
    asm.finish()
}

#[test]
fn a_guest_cannot_forge_success_or_a_vmm_condition_by_its_exit_value() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    for (value, code) in [
        (0, 0),
        (1, 1),
        (119, 119),
        (120, 120),
        (122, 120),
        (123, 120),
        (124, 120),
        (125, 120),
        (0x100, 120),
        (0x17c, 120),
        (u32::MAX, 120),
    ] {
        let out = boot(
            "run",
            &exits_with(value),
            &["--mem", "16M", "--timeout", "30", "--report", "-"],
            Reader::Reads,
        );
        assert_eq!(out.code(), code, "value {value:#x}: {}", out.stderr);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["guest_exit_code"], value, "{report}");
        assert_eq!(report["exit_code"], code);
        assert_eq!(report["stop_reason"], "guest-exit");
        assert_eq!(
            out.stderr.contains("outside 0..=119"),
            code == 120,
            "{}",
            out.stderr
        );
    }
}

#[test]
fn records_are_written_exactly_as_the_guest_sent_them() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let tricky = r#"{"z":1e2,"type":"t\u0041","a":[1,2.50],"a":"dup","s":"\"\\"}"#;
    let pretty = "{\n  \"type\": \"p\",\r\n  \"v\": 1\n}\n";
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.jmp("start")
        .align(4)
        .label("r1")
        .bytes(&record_bytes(tricky))
        .align(4)
        .label("r2")
        .bytes(&record_bytes(pretty))
        .label("start")
        .mov(Reg::Edx, RECORD_PORT)
        .mov_addr(Reg::Eax, "r1")
        .out(Width::Dword)
        .mov_addr(Reg::Eax, "r2")
        .out(Width::Dword)
        .exit(0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    let out = boot(
        "run",
        &asm.finish(),
        &[
            "--mem",
            "16M",
            "--timeout",
            "30",
            "--records",
            path.to_str().unwrap(),
        ],
        Reader::Reads,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let written = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines[0], tricky);
    assert_eq!(lines[1], "{   \"type\": \"p\",    \"v\": 1 }");
    assert_eq!(lines.len(), 2);
}

#[test]
fn one_vcpu_exiting_while_others_flood_ends_the_run_with_its_code() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let record = record_bytes(&padded_record("flood", 64 << 10));
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.jmp("start").align(16).label("record").bytes(&record);
    let ap = ap_ring_forever(asm.address_of("record"));
    asm.label("ap_code").bytes(&ap).label("start");
    start_aps(&mut asm, &ap);
    // Give the APs time to fill the channel, then exit.
    ring_times(&mut asm, "record", 2_000);
    asm.exit(42);
    let out = boot(
        "run",
        &asm.finish(),
        &[
            "--vcpus",
            "4",
            "--mem",
            "64M",
            "--timeout",
            "60",
            "--report",
            "/dev/null",
        ],
        Reader::Reads,
    );
    assert_contained(&out, 42, None, "4", "64M");
}

#[test]
fn a_triple_fault_amid_a_flood_is_reported_as_a_triple_fault() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let record = record_bytes(&padded_record("flood", 64 << 10));
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.jmp("start")
        .align(16)
        .label("record")
        .bytes(&record)
        .align(8)
        .label("empty_idt")
        .bytes(&[0; 8]);
    let ap = ap_ring_forever(asm.address_of("record"));
    asm.label("ap_code").bytes(&ap).label("start");
    start_aps(&mut asm, &ap);
    ring_times(&mut asm, "record", 500);
    // No IDT: the #UD becomes a double fault, then a triple fault.
    asm.lidt("empty_idt").ud2();
    let code = asm.finish();
    let out = boot(
        "run",
        &code,
        &["--vcpus", "2", "--mem", "64M", "--timeout", "60"],
        Reader::Reads,
    );
    assert_contained(&out, 123, None, "2", "64M");
    assert!(
        out.stderr.contains("triple-faulted"),
        "{}",
        tail(&out.stderr)
    );
}

#[test]
fn a_uart_register_storm_with_loopback_and_divisor_writes_is_absorbed() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    // Every UART register written with changing values (DLAB on and off,
    // loopback mode, all interrupt enables), reads in between, forever.
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.mov(Reg::Eax, 0).label("again");
    for (offset, value) in [
        (3, 0x80u32), // LCR: DLAB
        (0, 0x01),
        (1, 0x00),
        (3, 0x03), // LCR: 8N1
        (1, 0x0f), // IER: everything
        (4, 0x1f), // MCR: loopback
        (0, 0x41), // THR -> RBR in loopback
        (0, 0x42),
        (2, 0xc7), // FCR
        (7, 0x99), // SCR
        (4, 0x08), // MCR: out of loopback
        (0, 0x2e), // THR: a '.' on the console
    ] {
        asm.mov(Reg::Edx, SERIAL + offset)
            .mov(Reg::Eax, value)
            .out(Width::Byte);
        asm.mov(Reg::Edx, SERIAL + (offset + 5) % 8)
            .inp(Width::Dword);
    }
    asm.jmp("again");
    let out = boot(
        "run",
        &asm.finish(),
        &["--mem", "64M", "--timeout", "2"],
        Reader::Stalled,
    );
    assert_contained(&out, 124, Some(2.0), "1", "64M");
}

#[test]
fn a_record_rewritten_by_another_vcpu_while_it_is_read_never_hurts_the_vmm() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    // The record lives in low memory, where the real-mode AP can reach it
    // and flips one byte of it (`"type"` <-> `"tYpe"`) as fast as it can.
    const LOW_RECORD: u32 = 0x9000;
    let record = record_bytes(&padded_record("race", 32 << 10));
    let mut ap = Asm::real_mode(AP_START);
    ap.label("again")
        // xor byte [LOW_RECORD + 7], 0x20 (DS = 0 in real mode)
        .bytes(&[0x80, 0x36])
        .bytes(&((LOW_RECORD + 7) as u16).to_le_bytes())
        .bytes(&[0x20])
        .jmp("again");
    let ap = ap.finish();
    let mut asm = Asm::new(LOAD_ADDR as u32);
    asm.jmp("start")
        .label("record")
        .bytes(&record)
        .label("ap_code")
        .bytes(&ap)
        .label("start")
        .mov_addr(Reg::Esi, "record")
        .mov(Reg::Edi, LOW_RECORD)
        .mov(Reg::Ecx, record.len() as u32)
        .rep_movsb();
    start_aps(&mut asm, &ap);
    asm.mov(Reg::Ecx, 3_000)
        .mov(Reg::Edx, RECORD_PORT)
        .label("ring")
        .mov(Reg::Eax, LOW_RECORD)
        .out(Width::Dword)
        .dec_ecx()
        .jnz("ring")
        .exit(0);
    let out = boot(
        "run",
        &asm.finish(),
        &[
            "--vcpus",
            "2",
            "--mem",
            "64M",
            "--timeout",
            "60",
            "--report",
            "-",
        ],
        Reader::Reads,
    );
    assert_contained(&out, 0, None, "2", "64M");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (good, bad) = (
        report["records"].as_u64().unwrap(),
        report["bad_records"].as_u64().unwrap(),
    );
    assert_eq!(good + bad, 3_000, "{report}");
}

#[test]
fn sigterm_and_sigint_end_a_flooding_guest_with_a_stalled_reader_promptly() {
    if !kvm_available() {
        return;
    }
    let _one = serial();
    let record = record_bytes(&padded_record("flood", 64 << 10));
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let after = Duration::from_secs(1);
        let out = observe_signalled(
            &[
                "run",
                "--kernel",
                kernel_file(&doorbell_flood(4, &record))
                    .path()
                    .to_str()
                    .unwrap(),
                "--vcpus",
                "4",
                "--mem",
                "64M",
                "--records",
                "-",
                "--timeout",
                "60",
            ],
            Reader::Stalled,
            Some((after, signal)),
        );
        // Within a second of the signal, however the guest floods and
        // whoever does not read.
        assert_contained(&out, code, Some(after.as_secs_f64()), "4", "64M");
        assert!(
            out.stderr.contains("stopped by signal"),
            "{}",
            tail(&out.stderr)
        );
    }
}
