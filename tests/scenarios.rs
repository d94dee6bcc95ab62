//! `writewatch scenario`: every scenario of `resources/scenarios/` runs in
//! a guest process (both kernel modes) and as Linux processes on the host
//! kernel; each side must meet every result the files expect, and the two
//! transcripts must be the same line for line wherever both ran
//! (docs/SCENARIOS.md). Scenarios the host cannot run (say, the hugetlb
//! ones without root) are checked in the guest against their expectations
//! alone, and the test says so.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../resources/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("resources/scenarios")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "scn"))
        .collect();
    files.sort();
    files
}

/// Runs `writewatch scenario --transcript` with `extra` before the files;
/// the transcripts by scenario, the verdict lines and the exit code.
fn transcripts(extra: &[&str], files: &[PathBuf]) -> (BTreeMap<String, Vec<String>>, String, i32) {
    let mut args = vec!["scenario", "--transcript"];
    args.extend_from_slice(extra);
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let out = common::run(&args);
    let mut all = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in common::stdout(&out).lines() {
        if let Some(name) = line.strip_prefix("scenario ") {
            current = Some((name.to_string(), Vec::new()));
        } else if let Some(name) = line.strip_prefix("end ") {
            let (n, lines) = current.take().expect("end without scenario");
            assert_eq!(n, name, "interleaved transcripts");
            all.insert(n, lines);
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line.to_string());
        }
    }
    (all, common::stderr(&out), common::code(&out))
}

#[test]
fn every_scenario_agrees_with_linux_and_meets_its_expectations() {
    if !common::kvm_available() {
        return;
    }
    let files = scenario_files();
    let (linux, linux_verdicts, code) = transcripts(&["--host"], &files);
    assert_eq!(code, 0, "on the host:\n{linux_verdicts}");
    let summary = linux_verdicts.lines().last().unwrap_or("");
    println!("{summary}");
    for line in linux_verdicts.lines().filter(|l| l.starts_with("not run")) {
        println!("host: {line}; checked in the guest against its expectations only");
    }
    for mode in ["ring3", "ring0"] {
        // A guest that hangs (a waiter nothing wakes) fails instead of
        // stalling CI; a run here takes well under a minute.
        let (guest, verdicts, code) = transcripts(&["--mode", mode, "--timeout", "600"], &files);
        assert_eq!(code, 0, "in the guest ({mode}):\n{verdicts}");
        assert!(
            verdicts.lines().all(|l| !l.starts_with("not run")),
            "the guest ({mode}) must run every scenario:\n{verdicts}"
        );
        for (name, g) in &guest {
            let Some(l) = linux.get(name) else { continue };
            if let Some(at) = l.iter().zip(g).position(|(a, b)| a != b) {
                panic!(
                    "{name} ({mode}) differs from {summary} at line {at}:\n  linux: {}\n  guest: {}",
                    l[at], g[at]
                );
            }
            assert_eq!(
                l.len(),
                g.len(),
                "{name} ({mode}): transcripts of different length"
            );
        }
        println!(
            "{mode}: {} scenarios, {} compared line for line with Linux",
            guest.len(),
            guest.keys().filter(|n| linux.contains_key(*n)).count()
        );
    }
}

#[test]
fn an_unmet_expectation_fails_the_run_on_both_sides() {
    if !common::kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("wrong.scn");
    std::fs::write(
        &path,
        "scenario wrong\nsource a read of an unmapped page is SIGSEGV(MAPERR), not ok\n  read W\n  = ok\n",
    )
    .expect("write the scenario");
    let file = path.display().to_string();
    for side in [&["scenario"][..], &["scenario", "--host"][..]] {
        let mut args = side.to_vec();
        args.push(&file);
        let out = common::run(&args);
        assert_eq!(common::code(&out), 1, "{side:?}: {}", common::stderr(&out));
        let text = common::stdout(&out);
        assert!(
            text.contains("FAIL wrong") && text.contains("gave `SIGSEGV(MAPERR)`, expected `ok`"),
            "{side:?}: {text}"
        );
    }
}

#[test]
fn bad_scenario_files_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let typo = write(
        "typo.scn",
        "scenario a\nsource x\n  mmap W 1p rw privat|anon|fixed\n",
    );
    let no_source = write("nosource.scn", "scenario a\n  read W\n");
    let twice = write(
        "twice.scn",
        "scenario a\nsource x\n  read W\nscenario a\nsource x\n  read W\n",
    );
    let empty = write("empty.scn", "# nothing here\n");
    let cases: [(&[&str], &str); 5] = [
        (
            &["scenario", "/nonexistent/x.scn"],
            "cannot read /nonexistent/x.scn",
        ),
        (&["scenario", &typo], "typo.scn:3: step"),
        (
            &["scenario", "--host", &no_source],
            "nosource.scn:1: scenario a has no `source` line",
        ),
        (
            &["scenario", &twice],
            "twice.scn:4: scenario a is already defined at",
        ),
        (&["scenario", &empty], "empty.scn: no `scenario NAME` line"),
    ];
    for (args, needle) in cases {
        let out = common::run(args);
        common::assert_one_line_error(&out, 2, needle);
    }
}
