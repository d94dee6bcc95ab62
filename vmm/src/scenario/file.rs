//! Reading scenario files (docs/SCENARIOS.md) and holding each to the
//! format before anything runs: a mistake is one line naming the file
//! and line, never a scenario that silently runs other steps.

use std::path::PathBuf;

use crate::script::{self, MAX_STEPS};

/// Most bytes of scenario text one run takes (what the guest's `conform`
/// reads from standard input).
pub const MAX_TEXT: usize = 16 << 20;

/// What a scenario needs beyond what every kernel here has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// It sizes or reads the 2 MiB hugetlb pool (on the host: root, to
    /// write `/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`).
    Hugetlb,
    /// It tracks soft-dirty pages: the guest boots with `soft_dirty=on`;
    /// the host needs `CONFIG_MEM_SOFT_DIRTY`.
    SoftDirty,
    /// It needs writewatch's precise soft-dirty mode (`soft_dirty=precise`),
    /// which Linux does not have.
    SoftDirtyPrecise,
}

/// The words `requires` takes.
const KNOWN: &str = "hugetlb, soft_dirty, soft_dirty_precise";

impl Requirement {
    fn parse(word: &str) -> Option<Self> {
        match word {
            "hugetlb" => Some(Requirement::Hugetlb),
            "soft_dirty" => Some(Requirement::SoftDirty),
            "soft_dirty_precise" => Some(Requirement::SoftDirtyPrecise),
            _ => None,
        }
    }
}

impl Scenario {
    /// The guest's `soft_dirty=` for this scenario: `off` unless it asks
    /// for soft-dirty (the host here has none, and the transcripts of the
    /// others must match it).
    pub fn guest_soft_dirty(&self) -> &'static str {
        if self.requires.contains(&Requirement::SoftDirtyPrecise) {
            "precise"
        } else if self.requires.contains(&Requirement::SoftDirty) {
            "on"
        } else {
            "off"
        }
    }
}

/// One scenario, checked.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    /// `FILE:LINE` of its `scenario` line.
    pub origin: String,
    /// Where its behaviour is written down (`source ...`).
    pub source: String,
    pub requires: Vec<Requirement>,
    /// Its steps in canonical form, as transcripts show them.
    pub steps: Vec<String>,
    /// `(k, text)`: step `k` must give `text`.
    pub expected: Vec<(usize, String)>,
    /// Its text, as handed to the side that runs it.
    pub text: String,
}

/// Reads and checks `files`; the scenarios in order, or one line saying
/// what is wrong where.
pub fn load(files: &[PathBuf]) -> Result<Vec<Scenario>, String> {
    let mut all: Vec<Scenario> = Vec::new();
    let mut total = 0;
    for path in files {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                format!("{shown} is not UTF-8 text")
            } else {
                format!("cannot read {shown}: {e}")
            }
        })?;
        total += text.len() + 1;
        if total > MAX_TEXT {
            return Err(format!(
                "{shown}: the scenarios given exceed {} MiB in all",
                MAX_TEXT >> 20
            ));
        }
        let found = parse(&shown, &text)?;
        if found.is_empty() {
            return Err(format!("{shown}: no `scenario NAME` line"));
        }
        for s in found {
            if let Some(first) = all.iter().find(|o| o.name == s.name) {
                return Err(format!(
                    "{}: scenario {} is already defined at {}",
                    s.origin, s.name, first.origin
                ));
            }
            all.push(s);
        }
    }
    if all.is_empty() {
        return Err("no scenario files given".into());
    }
    Ok(all)
}

/// The scenarios of one file's `text`.
fn parse(file: &str, text: &str) -> Result<Vec<Scenario>, String> {
    let mut out: Vec<Scenario> = Vec::new();
    let mut current: Option<Scenario> = None;
    let mut in_header = false;
    for (i, raw) in text.lines().enumerate() {
        let at = format!("{file}:{}", i + 1);
        let line = raw.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            if let Some(s) = current.as_mut() {
                s.text.push_str(raw);
                s.text.push('\n');
            }
            continue;
        }
        if !raw.starts_with(' ') {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let rest = rest.trim();
            if word == "scenario" {
                if let Some(done) = current.take() {
                    out.push(finish(done)?);
                }
                let valid = !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !valid {
                    return Err(format!(
                        "{at}: a scenario name is letters, digits, `_` and `-`, not {rest:?}"
                    ));
                }
                current = Some(Scenario {
                    name: rest.to_string(),
                    origin: at,
                    source: String::new(),
                    requires: Vec::new(),
                    steps: Vec::new(),
                    expected: Vec::new(),
                    text: format!("{raw}\n"),
                });
                in_header = true;
                continue;
            }
            let Some(s) = current.as_mut().filter(|_| in_header) else {
                return Err(format!(
                    "{at}: expected `scenario NAME`, an indented step or `= RESULT`, or a comment, not {:?}",
                    raw.trim()
                ));
            };
            match word {
                "source" if !rest.is_empty() => s.source = raw["source ".len()..].trim().into(),
                "requires" => {
                    for w in rest.split_ascii_whitespace() {
                        let r = Requirement::parse(w).ok_or_else(|| {
                            format!("{at}: unknown requirement {w:?} (known: {KNOWN})")
                        })?;
                        s.requires.push(r);
                    }
                }
                _ => {
                    return Err(format!(
                        "{at}: expected `source TEXT`, `requires WORD...` or the indented steps, not {:?}",
                        raw.trim()
                    ));
                }
            }
            s.text.push_str(raw);
            s.text.push('\n');
            continue;
        }
        let Some(s) = current.as_mut() else {
            return Err(format!("{at}: a step before the first `scenario NAME`"));
        };
        in_header = false;
        let body = line.trim();
        if let Some(result) = body.strip_prefix('=') {
            if s.steps.is_empty() {
                return Err(format!("{at}: `= RESULT` before the scenario's first step"));
            }
            let result = result.trim();
            if result.is_empty() {
                return Err(format!("{at}: `=` without the result expected"));
            }
            s.expected.push((s.steps.len() - 1, result.to_string()));
        } else {
            let step =
                script::parse_step(body).map_err(|why| format!("{at}: step {body:?}: {why}"))?;
            if s.steps.len() == MAX_STEPS {
                return Err(format!(
                    "{at}: scenario {} has more than {MAX_STEPS} steps",
                    s.name
                ));
            }
            s.steps.push(step.to_string());
        }
        s.text.push_str(raw);
        s.text.push('\n');
    }
    if let Some(done) = current.take() {
        out.push(finish(done)?);
    }
    Ok(out)
}

/// A scenario whose lines have all been read, if it is complete.
fn finish(s: Scenario) -> Result<Scenario, String> {
    if s.source.is_empty() {
        return Err(format!(
            "{}: scenario {} has no `source` line saying where its behaviour is documented",
            s.origin, s.name
        ));
    }
    if s.steps.is_empty() {
        return Err(format!("{}: scenario {} has no steps", s.origin, s.name));
    }
    // The runners read the text back with the conformance table's parser:
    // it must see exactly these steps.
    let reread = script::cases(&s.text).next().map(|c| c.steps().count());
    if reread != Some(s.steps.len()) {
        return Err(format!(
            "{}: scenario {}'s steps are not all indented under it",
            s.origin, s.name
        ));
    }
    let steps: Vec<script::Step> = s
        .steps
        .iter()
        .filter_map(|t| script::parse_step(t).ok())
        .collect();
    if let Err((k, why)) = script::check_background(&steps) {
        let at = s
            .steps
            .get(k)
            .map_or("the end".to_string(), |t| format!("step {k} ({t})"));
        return Err(format!("{}: scenario {}, {at}: {why}", s.origin, s.name));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Vec<Scenario>, String> {
        parse("t.scn", text)
    }

    #[test]
    fn steps_and_expectations_are_numbered_in_order() {
        let s = one(
            "scenario a\nsource x\n  mmap W 1p rw private|anon|fixed\n  = W+0p\n  # note\n  write W 1\n  read W\n  = =0x1\n",
        )
        .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].steps.len(), 3);
        assert_eq!(
            s[0].expected,
            vec![(0, "W+0p".to_string()), (2, "=0x1".to_string())]
        );
        assert_eq!(s[0].steps[1], "write W+0p 0x1");
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            ("scenario a\nsource x\n  mmap W 1p rw bogus\n", "t.scn:3"),
            ("scenario a\nsource x\n  = ok\n  read W\n", "t.scn:3"),
            ("scenario a\n  read W\n", "t.scn:1"),
            ("scenaro a\nsource x\n  read W\n", "t.scn:1"),
            ("scenario a\nsource x\nrequires swap\n  read W\n", "t.scn:3"),
            ("scenario a b\nsource x\n  read W\n", "t.scn:1"),
            ("scenario a\nsource x\n  read W\nlater no\n", "t.scn:4"),
            ("  read W\n", "t.scn:1"),
        ];
        for (text, at) in cases {
            let e = one(text).unwrap_err();
            assert!(e.starts_with(at), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn background_writes_are_joined_and_nothing_runs_in_between() {
        let head = "scenario a\nsource x\n  mmap W 1p rw private|anon|fixed\n";
        let cases = [
            (
                "  write W 1 &\n",
                "the end: a background write is never joined",
            ),
            ("  join\n", "step 1 (join): join without"),
            (
                "  write W 1 &\n  read W\n  join\n",
                "step 2 (read W+0p): a step of a process",
            ),
        ];
        for (body, want) in cases {
            let e = one(&format!("{head}{body}")).unwrap_err();
            assert!(e.contains(want), "{body:?}: {e}");
        }
        let s = one(&format!(
            "{head}  fork\n  write W 1 &\n  p1 read W\n  join\n"
        ))
        .unwrap();
        assert_eq!(s[0].steps[2], "write W+0p 0x1 &");
    }

    #[test]
    fn too_many_steps_is_an_error_not_a_cut() {
        let mut text = String::from("scenario a\nsource x\n");
        for _ in 0..=MAX_STEPS {
            text += "  read W\n";
        }
        let e = one(&text).unwrap_err();
        assert!(e.contains("more than 64 steps"), "{e}");
    }

    #[test]
    fn the_text_handed_over_parses_to_the_same_scenarios() {
        let text = "# top\nscenario a\nsource x\nrequires hugetlb\n  read W\n  = SIGSEGV(MAPERR)\n\nscenario b\nsource y\n  write W 1\n";
        let s = one(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].requires, vec![Requirement::Hugetlb]);
        let joined: String = s.iter().map(|s| s.text.as_str()).collect();
        let names: Vec<_> = script::cases(&joined).map(|c| c.name).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
