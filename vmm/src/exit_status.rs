//! The process exit codes of `writewatch run` and `selftest`, and how a
//! guest's exit value becomes one.
//!
//! A guest must not be able to pass for something it is not by its exit code
//! alone: neither a failure for success (a guest writing 0x100 must not exit
//! 0, as `value & 0xff` would), nor a guest ending for a VMM condition (a
//! guest writing 124 must not look like a timeout). So the codes are split in
//! two bands: guest values 0..=119 pass through unchanged, and everything
//! from 120 up belongs to the VMM. A guest value of 120 or more exits
//! [`GUEST_OUT_OF_RANGE`]; the report keeps the full 32-bit value. (QEMU's
//! `isa-debug-exit` solves the same problem by exiting `(value << 1) | 1`,
//! which makes every guest code odd and success impossible to spell as 0.)

/// Guest exit values below this pass through as the process exit code.
pub const GUEST_CODE_LIMIT: u32 = 120;
/// The guest wrote an exit value of 120 or more.
pub const GUEST_OUT_OF_RANGE: u8 = 120;
/// The guest ended, but an output (`--records`, `--report`) was not written
/// completely.
pub const OUTPUT_FAILED: u8 = 121;
/// KVM failed to run the guest.
pub const KVM_FAILURE: u8 = 122;
/// The guest triple-faulted.
pub const TRIPLE_FAULT: u8 = 123;
/// `--timeout` expired.
pub const TIMEOUT: u8 = 124;
/// The VMM itself cannot start or run the guest.
pub const VMM_ERROR: u8 = 125;
/// `selftest`: tests failed or did not all run (a guest-band code, as the
/// verdict is about the guest).
pub const SELFTEST_FAILED: u8 = 1;
/// A command-line usage error.
pub const USAGE: u8 = 2;

/// The process exit code for a guest that wrote `value` to the exit port.
pub fn for_guest_value(value: u32) -> u8 {
    if value < GUEST_CODE_LIMIT {
        value as u8
    } else {
        GUEST_OUT_OF_RANGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_codes_pass_through_below_the_vmm_band() {
        for v in 0..GUEST_CODE_LIMIT {
            assert_eq!(u32::from(for_guest_value(v)), v);
        }
    }

    #[test]
    fn no_guest_value_forges_success_or_a_vmm_condition() {
        for v in [
            0x100,
            0x200,
            0x1_0000,
            120,
            121,
            122,
            123,
            124,
            125,
            255,
            u32::MAX,
        ] {
            assert_eq!(for_guest_value(v), GUEST_OUT_OF_RANGE, "{v:#x}");
        }
        for v in (0..=u32::MAX).step_by(65_521) {
            let code = for_guest_value(v);
            assert!(code != 0 || v == 0, "{v:#x} exits 0");
            assert!(
                ![OUTPUT_FAILED, KVM_FAILURE, TRIPLE_FAULT, TIMEOUT, VMM_ERROR].contains(&code),
                "{v:#x} exits {code}"
            );
        }
    }
}
