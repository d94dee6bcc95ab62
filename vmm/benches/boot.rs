//! Boot-time benchmark: boots the built-in guest N times (256M, 1 vCPU by
//! default) with `--report` and prints the median, min and max time from
//! process start to the first console byte and to the guest's `ready`.
//!
//! `cargo bench -p writewatch --bench boot` (20 boots), or
//! `cargo bench -p writewatch --bench boot -- --boots 50 --vcpus 4 --mem 1G`.

mod support;

use support::median;

use std::process::Command;

struct Options {
    boots: usize,
    vcpus: String,
    mem: String,
}

fn parse_options() -> Options {
    let mut options = Options {
        boots: 20,
        vcpus: "1".into(),
        mem: "256M".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--boots" => options.boots = args.next().and_then(|v| v.parse().ok()).unwrap_or(20),
            "--vcpus" => options.vcpus = args.next().unwrap_or(options.vcpus),
            "--mem" => options.mem = args.next().unwrap_or(options.mem),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

fn main() {
    let options = parse_options();
    let scratch = tempfile::tempdir().expect("creating a scratch directory");
    let dir = scratch.path();
    let report_path = dir.join("report.json");
    let (mut first, mut ready, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..options.boots {
        let status = Command::new(env!("CARGO_BIN_EXE_writewatch"))
            .args([
                "run",
                "--vcpus",
                &options.vcpus,
                "--mem",
                &options.mem,
                "--timeout",
                "60",
                "--report",
            ])
            .arg(&report_path)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("running writewatch");
        assert!(status.success(), "a boot failed: {status}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&report_path).expect("reading the report"),
        )
        .expect("parsing the report");
        let field = |name: &str| {
            report[name]
                .as_f64()
                .unwrap_or_else(|| panic!("report lacks {name}"))
        };
        first.push(field("first_output_ms"));
        ready.push(field("ready_ms"));
        wall.push(field("wall_ms"));
    }
    println!(
        "boot: {} boots, --mem {} --vcpus {} (ms from process start)",
        options.boots, options.mem, options.vcpus
    );
    for (name, values) in [
        ("first_output_ms", &mut first),
        ("ready_ms", &mut ready),
        ("wall_ms", &mut wall),
    ] {
        let (min, max) = (
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "  {name:<16} median {:7.2}  min {min:7.2}  max {max:7.2}",
            median(values)
        );
    }
}
