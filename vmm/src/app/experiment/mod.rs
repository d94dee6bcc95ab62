//! `writewatch experiment migrate`: runs a source and a destination VMM
//! on this machine (this same binary, as child processes, talking over a
//! Unix socket and their API sockets), migrates a checking guest workload
//! between them, and reports what happened: per round and in total, with
//! the integrity verdict of both checks. Several rates, sources or
//! auto-converge settings make a sweep, one migration per case.

mod plots;
mod table;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::AppError;
use crate::api::client;
use crate::cli::{ExperimentArgs, TrackingSource};
use crate::config::format_size;
use crate::migration::status::{Phase, Status};
use crate::workload::Kind;

/// How long a side may take to come up, or to finish its check.
const SIDE_LIMIT: Duration = Duration::from_secs(300);
/// Ring entries per vCPU when the ring is the source: the largest KVM
/// allows here (1 MiB), since kvm_pvm can overrun smaller rings (then every
/// page counts as written, and rounds resend the whole guest).
const RING_ENTRIES: &str = "65536";

/// The SIGINT or SIGTERM that ended the experiment (0: none).
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// Err once SIGINT or SIGTERM has arrived: every wait of a case asks.
fn interrupted() -> Result<(), String> {
    if let Some(sig) = crate::signals::take_pending() {
        INTERRUPTED.store(sig, Ordering::Relaxed);
    }
    match INTERRUPTED.load(Ordering::Relaxed) {
        0 => Ok(()),
        sig => Err(format!("interrupted by signal {sig}")),
    }
}

/// Sleeps `total`, in steps that look for a signal.
fn pause(total: Duration) -> Result<(), String> {
    let began = Instant::now();
    while began.elapsed() < total {
        interrupted()?;
        std::thread::sleep((total - began.elapsed()).min(Duration::from_millis(20)));
    }
    Ok(())
}

/// One migration of the experiment.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub workload: Kind,
    pub rate_mib: u64,
    pub mem_bytes: u64,
    pub wss_bytes: u64,
    pub vcpus: u32,
    pub source: TrackingSource,
    pub auto_converge: bool,
    pub hugetlb: bool,
}

impl Case {
    pub fn name(&self) -> String {
        format!(
            "{}-{}mib-{}-{}{}",
            format!("{:?}", self.workload).to_lowercase(),
            self.rate_mib,
            match self.source {
                TrackingSource::Bitmap => "bitmap",
                TrackingSource::Ring => "ring",
            },
            if self.auto_converge { "auto" } else { "plain" },
            if self.hugetlb { "-hugetlb" } else { "" }
        )
    }
}

/// What one migration did.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub case: Case,
    /// The source's final migration status (rounds, bytes, downtime...).
    pub status: Option<Status>,
    /// The destination's arrival report.
    pub arrival: Option<Value>,
    /// The guest's own check, wherever it ran last.
    pub guest_check: Option<Value>,
    /// Where the guest ran its check: "destination" or "source".
    pub checked_on: String,
    /// The host RAM hash: "equal", "not compared", or why it failed.
    pub host_hash: String,
    pub ok: bool,
    pub error: Option<String>,
}

impl Outcome {
    pub fn integrity(&self) -> String {
        let guest = match &self.guest_check {
            Some(c) if c["mismatches"] == 0 && c["checked"] == c["pages"] => {
                format!(
                    "guest check ok ({} pages, on the {})",
                    c["pages"], self.checked_on
                )
            }
            Some(c) => format!("GUEST CHECK FAILED ({} pages differ)", c["mismatches"]),
            None => "no guest check".into(),
        };
        format!("{guest}; host RAM hash {}", self.host_hash)
    }
}

pub fn migrate(args: &ExperimentArgs) -> Result<u8, AppError> {
    // Source and destination each hold the guest's RAM, and the checking
    // workload writes its working set before anything moves.
    if let Some(host) = crate::migration::receive::host_ram_bytes()
        .filter(|&host| args.mem.saturating_mul(2) > host)
    {
        return Err(AppError::Usage(format!(
            "--mem {}: the source and the destination each hold the guest's RAM, twice that is more than this host's {} MiB",
            format_size(args.mem),
            host >> 20
        )));
    }
    // SIGINT/SIGTERM end the sweep between polls: the sides are stopped
    // (their drop kills them) and what finished is still reported.
    crate::signals::block_termination_signals();
    let cases = cases(args);
    let exe = std::env::current_exe()
        .map_err(|e| AppError::Arrival(format!("cannot find this writewatch binary: {e}")))?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| AppError::Usage(format!("--out {}: {e}", dir.display())))?;
    }
    let mut outcomes = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        eprintln!(
            "writewatch: experiment {}/{}: {}",
            i + 1,
            cases.len(),
            case.name()
        );
        let outcome = run_case(&exe, case, args);
        if interrupted().is_err() {
            break;
        }
        if !args.json {
            table::print_case(&outcome);
        }
        outcomes.push(outcome);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcomes).unwrap_or_default()
        );
    } else if outcomes.len() > 1 {
        table::print_summary(&outcomes);
    }
    if let Some(dir) = &args.out {
        write_out(dir, &outcomes)
            .map_err(|e| AppError::Usage(format!("--out {}: {e}", dir.display())))?;
        eprintln!("writewatch: results, CSV and plots in {}", dir.display());
    }
    let sig = INTERRUPTED.load(Ordering::Relaxed);
    if sig != 0 {
        eprintln!(
            "writewatch: experiment stopped by signal {sig}; its VMMs were stopped, {} of {} case(s) finished",
            outcomes.len(),
            cases.len()
        );
        return Ok(crate::signals::exit_code(sig));
    }
    let all_ok = outcomes.iter().all(|o| o.ok);
    Ok(if all_ok { 0 } else { 1 })
}

fn cases(args: &ExperimentArgs) -> Vec<Case> {
    let autos: &[bool] = match (args.compare_auto_converge, args.options.auto_converge) {
        (true, _) => &[false, true],
        (false, true) => &[true],
        (false, false) => &[false],
    };
    let wss = args.wss.unwrap_or(args.mem / 2);
    let mut out = Vec::new();
    for &source in &args.source {
        for &auto_converge in autos {
            for &rate in &args.rate {
                out.push(Case {
                    workload: args.workload,
                    rate_mib: rate,
                    mem_bytes: args.mem,
                    wss_bytes: wss,
                    vcpus: args.vcpus,
                    source,
                    auto_converge,
                    hugetlb: args.hugetlb,
                });
            }
        }
    }
    out
}

/// A child VMM with its files.
struct Side {
    child: Child,
    sock: PathBuf,
    report: PathBuf,
    records: PathBuf,
}

impl Side {
    fn spawn(exe: &Path, dir: &Path, name: &str, args: &[String]) -> Result<Side, String> {
        let sock = dir.join(format!("{name}.sock"));
        let report = dir.join(format!("{name}.json"));
        let records = dir.join(format!("{name}.records"));
        let log =
            std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let console = std::fs::File::create(dir.join(format!("{name}.console")))
            .map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("run")
            .args(["--api-sock", &sock.display().to_string()])
            .args(["--report", &report.display().to_string()])
            .args(["--records", &records.display().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Side {
            child,
            sock,
            report,
            records,
        })
    }

    fn call(&self, method: &str, url: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        client::call(
            &self.sock,
            method,
            url,
            body.as_ref(),
            Some(Duration::from_secs(60)),
        )
        .map(|r| (r.status, r.body))
        .map_err(|e| e.to_string())
    }

    /// Waits until `ready` holds, the process ends, or the limit passes.
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut(&Side) -> bool) -> Result<(), String> {
        let began = Instant::now();
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{what}: the VMM ended first ({status})"));
            }
            if began.elapsed() > SIDE_LIMIT {
                return Err(format!("{what}: not within {SIDE_LIMIT:?}"));
            }
            pause(Duration::from_millis(20))?;
        }
    }

    /// Waits for the process to end; its exit code.
    fn finish(&mut self) -> Option<i32> {
        let began = Instant::now();
        while began.elapsed() < SIDE_LIMIT && interrupted().is_ok() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }

    fn record(&self, kind: &str) -> Option<Value> {
        std::fs::read_to_string(&self.records)
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["type"] == kind)
    }

    fn report(&self) -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(&self.report).ok()?).ok()
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_case(exe: &Path, case: &Case, args: &ExperimentArgs) -> Outcome {
    let mut outcome = Outcome {
        case: case.clone(),
        status: None,
        arrival: None,
        guest_check: None,
        checked_on: String::new(),
        host_hash: "not compared".into(),
        ok: false,
        error: None,
    };
    if let Err(e) = try_case(exe, case, args, &mut outcome) {
        outcome.error = Some(e);
    }
    outcome
}

fn try_case(
    exe: &Path,
    case: &Case,
    args: &ExperimentArgs,
    outcome: &mut Outcome,
) -> Result<(), String> {
    // Sockets in a short temporary path (Unix socket paths are short);
    // logs, reports and records copied to --out afterwards.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let work = dir.path().to_path_buf();
    let result = drive(exe, case, args, outcome, &work);
    if let Some(out) = &args.out {
        let keep = out.join("runs").join(case.name());
        std::fs::create_dir_all(&keep).map_err(|e| e.to_string())?;
        for entry in std::fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e != "sock") {
                let _ = std::fs::copy(&path, keep.join(entry.file_name()));
            }
        }
    }
    result
}

fn drive(
    exe: &Path,
    case: &Case,
    args: &ExperimentArgs,
    outcome: &mut Outcome,
    work: &Path,
) -> Result<(), String> {
    let at = format!("unix:{}", work.join("incoming.sock").display());
    let mut common: Vec<String> = Vec::new();
    if case.hugetlb {
        common.extend(["--backing".into(), "hugetlb".into()]);
    }
    let mut dst_args = vec![
        "--incoming".to_string(),
        at.clone(),
        "--timeout".into(),
        "900".into(),
    ];
    dst_args.extend(common.clone());
    let mut dest = Side::spawn(exe, work, "destination", &dst_args)?;
    let workload = format!(
        "mode=workload workload={} wss={} rate={} check",
        format!("{:?}", case.workload).to_lowercase(),
        case.wss_bytes,
        case.rate_mib
    );
    let mut src_args = vec![
        "--vcpus".to_string(),
        case.vcpus.to_string(),
        "--mem".into(),
        format_size(case.mem_bytes),
        "--cmdline".into(),
        workload,
        "--timeout".into(),
        "900".into(),
    ];
    if case.source == TrackingSource::Ring {
        src_args.extend(["--dirty-ring-size".into(), RING_ENTRIES.into()]);
    }
    src_args.extend(common);
    let mut source = Side::spawn(exe, work, "source", &src_args)?;
    source.wait_for("the source's workload", |s| {
        s.call("GET", "/workload", None)
            .is_ok_and(|(code, _)| code == 200)
    })?;
    dest.wait_for("the destination", |_| work.join("incoming.sock").exists())?;
    pause(Duration::from_secs_f64(args.warmup))?;
    let mut request = args.options.request(&at.parse().map_err(|e: String| e)?);
    request.auto_converge = case.auto_converge;
    let (code, body) = source.call("PUT", "/migration", Some(json!(request)))?;
    if code != 200 {
        return Err(format!("the migration did not start: {body}"));
    }
    let status = loop {
        pause(Duration::from_millis(100))?;
        let (_, body) = source.call("GET", "/migration", None)?;
        let status: Status = serde_json::from_value(body).map_err(|e| e.to_string())?;
        if !status.phase.is_active() {
            break status;
        }
    };
    let completed = status.phase == Phase::Completed;
    outcome.status = Some(status);
    // The guest checks itself wherever it runs now.
    let (side, name) = if completed {
        (&mut dest, "destination")
    } else {
        (&mut source, "source")
    };
    side.wait_for("the guest's API", |s| s.sock.exists())?;
    side.call("PATCH", "/workload", Some(json!({"stop": true})))?;
    let code = side.finish();
    outcome.checked_on = name.into();
    outcome.guest_check = side.record("workload_check");
    if completed {
        outcome.arrival = dest.report().map(|r| r["migration"]["incoming"].clone());
        outcome.host_hash = if request.verify_ram {
            "equal".into()
        } else {
            "not compared (--no-verify-ram)".into()
        };
    }
    let _ = source.finish();
    let guest_ok = outcome
        .guest_check
        .as_ref()
        .is_some_and(|c| c["mismatches"] == 0 && c["checked"] == c["pages"]);
    outcome.ok = guest_ok && code == Some(0);
    if code != Some(0) {
        outcome.error = Some(format!("the guest exited {code:?} on the {name}"));
    }
    Ok(())
}

fn write_out(dir: &Path, outcomes: &[Outcome]) -> std::io::Result<()> {
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(outcomes).unwrap_or_default(),
    )?;
    std::fs::write(dir.join("rounds.csv"), table::rounds_csv(outcomes))?;
    std::fs::write(dir.join("summary.csv"), table::summary_csv(outcomes))?;
    for o in outcomes {
        if let Some(status) = &o.status {
            let name = o.case.name();
            std::fs::write(
                dir.join(format!("dirty-{name}.svg")),
                plots::dirty_per_round(&name, status),
            )?;
            std::fs::write(
                dir.join(format!("transfer-{name}.svg")),
                plots::transfer(&name, status),
            )?;
        }
    }
    if outcomes.len() > 1 {
        std::fs::write(dir.join("sweep.svg"), plots::sweep(outcomes))?;
    }
    Ok(())
}
