//! The experiment's results as text: a table per migration, a summary of
//! a sweep, and the same as CSV.

use std::fmt::Write;

use super::Outcome;
use crate::cli::TrackingSource;

const MIB: f64 = (1u64 << 20) as f64;

fn source_name(s: TrackingSource) -> &'static str {
    match s {
        TrackingSource::Bitmap => "bitmap",
        TrackingSource::Ring => "ring",
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The migration of one case: each round, then the totals and verdict.
pub fn print_case(o: &Outcome) {
    let c = &o.case;
    println!(
        "\nmigrate {:?} at {} MiB/s, {} MiB RAM ({} MiB written), {} vCPU(s), {}{}{}",
        c.workload,
        c.rate_mib,
        c.mem_bytes >> 20,
        c.wss_bytes >> 20,
        c.vcpus,
        source_name(c.source),
        if c.auto_converge {
            ", auto-converge"
        } else {
            ""
        },
        if c.hugetlb { ", hugetlb" } else { "" }
    );
    let Some(s) = &o.status else {
        println!("  no migration: {}", o.error.as_deref().unwrap_or("?"));
        return;
    };
    println!(
        "  {:>5} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>11} {:>9} {:>8}",
        "round",
        "pages",
        "zero",
        "later",
        "MiB",
        "ms",
        "dirtied",
        "dirty MiB/s",
        "MiB/s",
        "throttle"
    );
    for r in &s.rounds {
        println!(
            "  {:>5} {:>8} {:>8} {:>8} {:>9.1} {:>8.1} {:>9} {:>11.1} {:>9.1} {:>7}%{}",
            r.round,
            r.pages,
            r.zero_pages,
            r.skipped_pages,
            r.bytes as f64 / MIB,
            r.ms,
            r.dirtied_pages,
            r.dirty_rate_mib_s,
            r.bandwidth_mib_s,
            r.throttle_percent,
            if r.paused { "  (paused)" } else { "" }
        );
    }
    println!(
        "  {:?}{}: total {:.0} ms, downtime {} ms (of it hashing RAM {} ms), sent {:.1} MiB = {:.3}x the lower bound",
        s.phase,
        match s.converged {
            Some(true) => ", converged",
            Some(false) => ", did not converge (stop-and-copy forced)",
            None => "",
        },
        s.elapsed_ms,
        opt(s.downtime_ms, 1),
        opt(s.hash_ms, 1),
        s.bytes_sent as f64 / MIB,
        s.bytes_sent as f64 / s.lower_bound_bytes.max(1) as f64
    );
    if let Some(e) = &s.error {
        println!("  note: {e}");
    }
    println!("  integrity: {}", o.integrity());
    if let Some(e) = &o.error {
        println!("  error: {e}");
    }
}

/// One line per case.
pub fn print_summary(outcomes: &[Outcome]) {
    println!(
        "\n{:>10} {:>7} {:>6} {:>6} {:>10} {:>12} {:>10} {:>9} {:>7}  integrity",
        "rate MiB/s",
        "source",
        "auto",
        "rounds",
        "total ms",
        "downtime ms",
        "converged",
        "sent MiB",
        "ratio"
    );
    for o in outcomes {
        let s = o.status.as_ref();
        println!(
            "{:>10} {:>7} {:>6} {:>6} {:>10} {:>12} {:>10} {:>9} {:>7}  {}",
            o.case.rate_mib,
            source_name(o.case.source),
            if o.case.auto_converge { "on" } else { "off" },
            s.map_or("-".into(), |s| s.rounds.len().to_string()),
            opt(s.map(|s| s.elapsed_ms), 0),
            opt(s.and_then(|s| s.downtime_ms), 1),
            s.and_then(|s| s.converged).map_or("-".into(), |c| if c {
                "yes".into()
            } else {
                "no".to_string()
            }),
            opt(s.map(|s| s.bytes_sent as f64 / MIB), 1),
            opt(
                s.map(|s| s.bytes_sent as f64 / s.lower_bound_bytes.max(1) as f64),
                3
            ),
            if o.ok {
                "ok".to_string()
            } else {
                o.integrity()
            }
        );
    }
}

pub fn rounds_csv(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "case,round,start_ms,ms,pages,zero_pages,skipped_pages,bytes,dirtied_pages,dirty_rate_mib_s,bandwidth_mib_s,throttle_percent,paused\n",
    );
    for o in outcomes {
        let Some(s) = &o.status else { continue };
        for r in &s.rounds {
            let _ = writeln!(
                out,
                "{},{},{:.3},{:.3},{},{},{},{},{},{:.3},{:.3},{},{}",
                o.case.name(),
                r.round,
                r.start_ms,
                r.ms,
                r.pages,
                r.zero_pages,
                r.skipped_pages,
                r.bytes,
                r.dirtied_pages,
                r.dirty_rate_mib_s,
                r.bandwidth_mib_s,
                r.throttle_percent,
                r.paused
            );
        }
    }
    out
}

pub fn summary_csv(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "case,workload,rate_mib,mem_bytes,vcpus,source,auto_converge,phase,rounds,total_ms,downtime_ms,hash_ms,converged,bytes_sent,lower_bound_bytes,guest_check_ok,host_hash\n",
    );
    for o in outcomes {
        let s = o.status.as_ref();
        let _ = writeln!(
            out,
            "{},{:?},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            o.case.name(),
            o.case.workload,
            o.case.rate_mib,
            o.case.mem_bytes,
            o.case.vcpus,
            source_name(o.case.source),
            o.case.auto_converge,
            s.map_or("none".into(), |s| format!("{:?}", s.phase)),
            s.map_or(0, |s| s.rounds.len()),
            opt(s.map(|s| s.elapsed_ms), 1),
            opt(s.and_then(|s| s.downtime_ms), 3),
            opt(s.and_then(|s| s.hash_ms), 3),
            s.and_then(|s| s.converged)
                .map_or("".into(), |c| c.to_string()),
            s.map_or(0, |s| s.bytes_sent),
            s.map_or(0, |s| s.lower_bound_bytes),
            o.ok,
            o.host_hash
        );
    }
    out
}
