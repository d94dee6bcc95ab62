//! The hand-written edge cases, from Linux's selftests
//! (tools/testing/selftests/mm: map_fixed_noreplace.c, mremap_test.c,
//! mremap_dontunmap.c, mlock2-tests.c, madv_populate.c, merge.c) and the
//! man pages. Each must agree with the host's Linux, except the few listed
//! as out of scope with their reason; one of those that starts agreeing is
//! reported too, so the list stays true.

use crate::script::{Case, Step, cases};
use crate::{Divergence, compare};

/// The table, shared with the guest's `conform` program.
pub const TABLE: &str = include_str!("../../../../resources/conformance/cases.txt");

/// Every case of the table.
pub fn all() -> Vec<Case<'static>> {
    cases(TABLE).collect()
}

/// The steps of `c`; a case that does not parse is a bug in the table.
pub fn steps(c: &Case<'_>) -> Vec<Step> {
    c.steps()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("case {}: {e}", c.name))
}

/// Runs every case; prints a line per case and a summary. False if any
/// case differs unexpectedly (or agrees while listed out of scope).
pub fn run_all() -> bool {
    let cases = all();
    let mut ok = true;
    let (mut agree, mut documented) = (0, 0);
    for c in &cases {
        let r: Result<Vec<String>, Divergence> = compare(&steps(c));
        match (&r, c.later) {
            (Ok(_), None) => agree += 1,
            (Err(d), Some(why)) => {
                documented += 1;
                println!("out of scope: {} ({why}), step {}", c.name, d.step);
            }
            (Ok(_), Some(_)) => {
                ok = false;
                println!(
                    "FAIL {}: agrees with Linux but is listed as out of scope",
                    c.name
                );
            }
            (Err(d), None) => {
                ok = false;
                println!("FAIL {} ({}):\n{}", c.name, c.source, d.render());
            }
        }
    }
    println!(
        "linux_diff cases: {} of {} agree with Linux {}, {} out of scope",
        agree,
        cases.len(),
        crate::oracle::host_kernel(),
        documented
    );
    ok
}
