//! A circuit breaker for one connector account, as a pure state machine.
//!
//! A connector that keeps failing should stop receiving payments for a while (they fail over to
//! the next candidate instead of waiting on timeouts), and should be probed with a single trial
//! call before it gets traffic again. The caller owns the clock and passes `now` in, so every
//! transition is a function of values and is tested without sleeping.
//!
//! Closed → (`failures_to_open` consecutive failures) → Open → (cool-down passed, one call
//! allowed) → HalfOpen → success → Closed, or failure → Open again with a new cool-down.

use crate::time::{Timestamp, MICROS_PER_SECOND};

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open a closed breaker (0 behaves as 1).
    pub failures_to_open: u32,
    /// How long an open breaker refuses calls before it lets one trial through.
    pub cool_down_micros: i64,
}

impl Default for BreakerPolicy {
    /// Five consecutive failures open the breaker for thirty seconds.
    fn default() -> Self {
        BreakerPolicy {
            failures_to_open: 5,
            cool_down_micros: 30 * MICROS_PER_SECOND,
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures in a row so far.
    Closed { consecutive_failures: u32 },
    /// Calls are refused before `until`.
    Open { until: Timestamp },
    /// The cool-down has passed; one trial call decides.
    HalfOpen { trial_in_flight: bool },
}

impl Default for BreakerState {
    fn default() -> Self {
        BreakerState::Closed {
            consecutive_failures: 0,
        }
    }
}

/// One connector account's breaker. Starts closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
}

impl Breaker {
    pub fn new() -> Breaker {
        Breaker::default()
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// `"closed"`, `"open"` or `"half_open"`.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }

    /// Whether a call may go through now. Once the cool-down of an open breaker has passed,
    /// the first caller gets the single trial (and the breaker becomes half-open); everyone
    /// else is refused until that trial is recorded.
    pub fn allow(&mut self, _policy: &BreakerPolicy, now: Timestamp) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now < until => false,
            BreakerState::Open { .. } | BreakerState::HalfOpen { trial_in_flight: false } => {
                self.state = BreakerState::HalfOpen { trial_in_flight: true };
                true
            }
            BreakerState::HalfOpen { trial_in_flight: true } => false,
        }
    }

    /// A call succeeded: closed, with no failures counted.
    pub fn record_success(&mut self) {
        self.state = BreakerState::default();
    }

    /// A call failed. Closed: one more in a row, opening at the threshold. Half-open: the trial
    /// failed, open again for a new cool-down. Open: a straggler from before it opened; ignored.
    pub fn record_failure(&mut self, policy: &BreakerPolicy, now: Timestamp) {
        self.state = match self.state {
            BreakerState::Closed { consecutive_failures } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= policy.failures_to_open.max(1) {
                    open_until(policy, now)
                } else {
                    BreakerState::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            BreakerState::HalfOpen { .. } => open_until(policy, now),
            open @ BreakerState::Open { .. } => open,
        };
    }
}

fn open_until(policy: &BreakerPolicy, now: Timestamp) -> BreakerState {
    BreakerState::Open {
        until: Timestamp(now.0.saturating_add(policy.cool_down_micros.max(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures_to_open: 3,
        cool_down_micros: 1_000,
    };

    fn opened_at(now: i64) -> Breaker {
        let mut b = Breaker::new();
        for _ in 0..POLICY.failures_to_open {
            b.record_failure(&POLICY, Timestamp(now));
        }
        b
    }

    #[test]
    fn default_policy() {
        let p = BreakerPolicy::default();
        assert_eq!((p.failures_to_open, p.cool_down_micros), (5, 30_000_000));
    }

    #[test]
    fn closed_allows_and_counts_consecutive_failures() {
        let mut b = Breaker::new();
        assert_eq!(b.state_name(), "closed");
        assert!(b.allow(&POLICY, Timestamp(0)));
        b.record_failure(&POLICY, Timestamp(0));
        b.record_failure(&POLICY, Timestamp(0));
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        assert!(b.allow(&POLICY, Timestamp(0)));
        b.record_success();
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        b.record_failure(&POLICY, Timestamp(0));
        b.record_failure(&POLICY, Timestamp(0));
        assert_eq!(b.state_name(), "closed");
    }

    #[test]
    fn opens_at_the_threshold_and_refuses_during_the_cool_down() {
        let mut b = opened_at(10);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Timestamp(1_010)
            }
        );
        assert_eq!(b.state_name(), "open");
        assert!(!b.allow(&POLICY, Timestamp(10)));
        assert!(!b.allow(&POLICY, Timestamp(1_009)));
        assert_eq!(b.state_name(), "open");
    }

    #[test]
    fn after_the_cool_down_exactly_one_trial_goes_through() {
        let mut b = opened_at(10);
        assert!(b.allow(&POLICY, Timestamp(1_010)));
        assert_eq!(b.state(), BreakerState::HalfOpen { trial_in_flight: true });
        assert_eq!(b.state_name(), "half_open");
        assert!(!b.allow(&POLICY, Timestamp(1_011)));
        assert!(!b.allow(&POLICY, Timestamp(999_999)));
    }

    #[test]
    fn a_successful_trial_closes() {
        let mut b = opened_at(10);
        assert!(b.allow(&POLICY, Timestamp(2_000)));
        b.record_success();
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        assert!(b.allow(&POLICY, Timestamp(2_001)));
    }

    #[test]
    fn a_failed_trial_reopens_with_a_new_cool_down() {
        let mut b = opened_at(10);
        assert!(b.allow(&POLICY, Timestamp(2_000)));
        b.record_failure(&POLICY, Timestamp(2_500));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Timestamp(3_500)
            }
        );
        assert!(!b.allow(&POLICY, Timestamp(3_499)));
        assert!(b.allow(&POLICY, Timestamp(3_500)));
    }

    #[test]
    fn failures_while_open_do_not_extend_the_cool_down() {
        let mut b = opened_at(10);
        b.record_failure(&POLICY, Timestamp(500));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Timestamp(1_010)
            }
        );
    }

    #[test]
    fn a_zero_threshold_opens_on_the_first_failure_and_times_saturate() {
        let policy = BreakerPolicy {
            failures_to_open: 0,
            cool_down_micros: i64::MAX,
        };
        let mut b = Breaker::new();
        b.record_failure(&policy, Timestamp(5));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Timestamp(i64::MAX)
            }
        );
    }
}
