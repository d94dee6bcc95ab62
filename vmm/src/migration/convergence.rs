//! When pre-copy stops copying and pauses the guest, and how hard it
//! throttles a guest that dirties memory faster than it can be sent: the
//! decisions QEMU and Cloud Hypervisor users know, as plain logic.
//!
//! - Stop and copy once the pages still dirty would take no longer than the
//!   downtime target to send at the bandwidth the last round measured.
//! - Give up after `max_rounds` or the timeout: cancel (the guest keeps
//!   running on the source) or stop and copy anyway, as chosen.
//! - Auto-converge, as QEMU's: when a round dirtied more than half of what
//!   it sent, twice, throttle the vCPUs by 20 %, then 10 % more each time
//!   it happens again, up to 99 %.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do when pre-copy does not converge in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Give up: the guest keeps running on the source.
    Cancel,
    /// Pause and copy what is left, however long that takes.
    Force,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub downtime: Duration,
    pub max_rounds: u32,
    pub timeout: Option<Duration>,
    pub on_timeout: OnTimeout,
    pub auto_converge: bool,
    pub throttle_initial: u8,
    pub throttle_increment: u8,
    pub throttle_max: u8,
    /// Percent of a round's sent bytes that, dirtied again, counts as not
    /// converging (QEMU's throttle-trigger-threshold).
    pub trigger_percent: u8,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            downtime: Duration::from_millis(300),
            max_rounds: 30,
            timeout: None,
            on_timeout: OnTimeout::Force,
            auto_converge: false,
            throttle_initial: 20,
            throttle_increment: 10,
            throttle_max: 99,
            trigger_percent: 50,
        }
    }
}

/// What one pre-copy round did and found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Round {
    /// Bytes sent in the round.
    pub bytes: u64,
    pub duration: Duration,
    /// Pages the guest dirtied while the round was sent (what the next
    /// round must send).
    pub dirtied_pages: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send another round; throttle the vCPUs to this percent.
    Continue { throttle: u8 },
    /// Pause, send the rest. `converged` is false when forced.
    StopAndCopy { converged: bool },
    /// Give up; the reason is for the user.
    Cancel(&'static str),
}

/// The state of the decisions across rounds.
pub struct Planner {
    policy: Policy,
    rounds: u32,
    throttle: u8,
    high_rounds: u32,
    /// Bytes per second of the last round with anything sent.
    bandwidth: Option<f64>,
}

impl Planner {
    pub fn new(policy: Policy) -> Self {
        Planner {
            policy,
            rounds: 0,
            throttle: 0,
            high_rounds: 0,
            bandwidth: None,
        }
    }

    pub fn throttle(&self) -> u8 {
        self.throttle
    }

    /// Bytes per second, as last measured.
    pub fn bandwidth(&self) -> Option<f64> {
        self.bandwidth
    }

    /// How long sending `pages` would take at the measured bandwidth.
    pub fn expected_downtime(&self, pages: u64) -> Option<Duration> {
        let bw = self.bandwidth?;
        Some(Duration::from_secs_f64(
            (pages * crate::migration::stream::PAGE as u64) as f64 / bw,
        ))
    }

    /// After each round, with how long the whole migration has run.
    pub fn after_round(&mut self, round: Round, elapsed: Duration) -> Decision {
        self.rounds += 1;
        if round.bytes > 0 && !round.duration.is_zero() {
            self.bandwidth = Some(round.bytes as f64 / round.duration.as_secs_f64());
        }
        if self
            .expected_downtime(round.dirtied_pages)
            .is_some_and(|d| d <= self.policy.downtime)
        {
            return Decision::StopAndCopy { converged: true };
        }
        let out_of_time = self.policy.timeout.is_some_and(|t| elapsed >= t);
        if self.rounds >= self.policy.max_rounds || out_of_time {
            return match self.policy.on_timeout {
                OnTimeout::Force => Decision::StopAndCopy { converged: false },
                OnTimeout::Cancel if out_of_time => {
                    Decision::Cancel("the migration did not converge within its timeout")
                }
                OnTimeout::Cancel => {
                    Decision::Cancel("the migration did not converge within its rounds")
                }
            };
        }
        if self.policy.auto_converge {
            let dirtied = round.dirtied_pages * crate::migration::stream::PAGE as u64;
            if dirtied * 100 > round.bytes * u64::from(self.policy.trigger_percent) {
                self.high_rounds += 1;
                if self.high_rounds >= 2 {
                    self.high_rounds = 0;
                    self.throttle = if self.throttle == 0 {
                        self.policy.throttle_initial
                    } else {
                        self.throttle.saturating_add(self.policy.throttle_increment)
                    }
                    .min(self.policy.throttle_max);
                }
            }
        }
        Decision::Continue {
            throttle: self.throttle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn round(bytes: u64, ms: u64, dirtied_pages: u64) -> Round {
        Round {
            bytes,
            duration: Duration::from_millis(ms),
            dirtied_pages,
        }
    }

    #[test]
    fn stops_once_the_rest_fits_the_downtime_at_the_measured_bandwidth() {
        let mut p = Planner::new(Policy::default());
        // 100 MiB/s: 300 ms is 30 MiB = 7680 pages.
        let d = p.after_round(round(100 * MIB, 1000, 7681), Duration::from_secs(1));
        assert_eq!(d, Decision::Continue { throttle: 0 });
        let d = p.after_round(round(100 * MIB, 1000, 7680), Duration::from_secs(2));
        assert_eq!(d, Decision::StopAndCopy { converged: true });
        assert_eq!(p.bandwidth(), Some(100.0 * MIB as f64));
    }

    #[test]
    fn gives_up_as_chosen_after_max_rounds_or_the_timeout() {
        let policy = Policy {
            max_rounds: 3,
            on_timeout: OnTimeout::Cancel,
            ..Policy::default()
        };
        let mut p = Planner::new(policy.clone());
        let busy = round(10 * MIB, 1000, 1 << 20);
        assert!(matches!(
            p.after_round(busy, Duration::ZERO),
            Decision::Continue { .. }
        ));
        assert!(matches!(
            p.after_round(busy, Duration::ZERO),
            Decision::Continue { .. }
        ));
        assert!(matches!(
            p.after_round(busy, Duration::ZERO),
            Decision::Cancel(_)
        ));
        let mut p = Planner::new(Policy {
            on_timeout: OnTimeout::Force,
            timeout: Some(Duration::from_secs(5)),
            ..policy
        });
        assert_eq!(
            p.after_round(busy, Duration::from_secs(5)),
            Decision::StopAndCopy { converged: false }
        );
    }

    #[test]
    fn auto_converge_throttles_after_two_high_rounds_and_steps_up_to_the_cap() {
        let mut p = Planner::new(Policy {
            auto_converge: true,
            max_rounds: 1000,
            ..Policy::default()
        });
        // Each round dirties 60 % of what it sent, and never fits 300 ms.
        let high = round(1000 * MIB, 1000, 600 * MIB / 4096);
        let low = round(1000 * MIB, 1000, 400 * MIB / 4096);
        let mut throttles = Vec::new();
        for r in [high, low, high, high, high, high, high, high] {
            match p.after_round(r, Duration::ZERO) {
                Decision::Continue { throttle } => throttles.push(throttle),
                other => panic!("{other:?}"),
            }
        }
        // A low round does not reset the count (QEMU's neither).
        assert_eq!(throttles, [0, 0, 20, 20, 30, 30, 40, 40]);
        for _ in 0..40 {
            p.after_round(high, Duration::ZERO);
        }
        assert_eq!(p.throttle(), 99);
        let mut off = Planner::new(Policy::default());
        for _ in 0..5 {
            off.after_round(high, Duration::ZERO);
        }
        assert_eq!(off.throttle(), 0, "no auto-converge unless asked");
    }
}
