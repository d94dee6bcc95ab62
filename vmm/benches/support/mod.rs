//! Helpers shared by the benchmarks.

// Each benchmark uses some of these.
#![allow(dead_code)]

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// One `bench` record of a guest run: its name, operations (or pages) and
/// the time they took, converted from TSC cycles with the run report's
/// `tsc_khz`.
pub struct GuestRecord {
    pub name: String,
    pub ops: u64,
    pub ns: f64,
}

/// Boots `writewatch run ARGS` with `--records` and `--report` in a
/// scratch directory and returns its `bench` records.
pub fn guest_bench_records(args: &[&str]) -> Vec<GuestRecord> {
    let scratch = tempfile::tempdir().expect("creating a scratch directory");
    let (records, report) = (
        scratch.path().join("records"),
        scratch.path().join("report"),
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_writewatch"))
        .arg("run")
        .args(args)
        .arg("--records")
        .arg(&records)
        .arg("--report")
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running writewatch");
    assert!(status.success(), "the guest benchmark failed: {status}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report"))
            .expect("report JSON");
    let khz = report["tsc_khz"]
        .as_f64()
        .expect("the report has no tsc_khz");
    let mut out = Vec::new();
    for line in std::fs::read_to_string(&records).expect("records").lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("record JSON");
        if record["type"] != "bench" {
            continue;
        }
        let (Some(name), Some(ops), Some(cycles)) = (
            record["name"].as_str(),
            record["ops"].as_u64(),
            record["cycles"].as_f64(),
        ) else {
            panic!("malformed bench record: {line}");
        };
        out.push(GuestRecord {
            name: name.to_string(),
            ops,
            ns: cycles * 1e6 / khz,
        });
    }
    out
}
