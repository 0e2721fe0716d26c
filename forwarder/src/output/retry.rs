//! Retry policy with jittered exponential backoff, shared by the stream and HTTP outputs.
//!
//! Delays grow from `initial` by `multiplier` up to `max`; each delay is drawn uniformly from
//! its upper half ("equal jitter") so that many connections do not reconnect in lock step.
//! A success resets the sequence.

use std::time::Duration;

use rand::Rng;

/// How often and how patiently an output retries a failed write or connect.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth factor per failure.
    pub multiplier: f64,
    /// Attempts per batch before giving up; `None` retries until success (the forwarder's
    /// default: consumption pauses while Devo is down and nothing is committed).
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

/// The running state of one backoff sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    current: Duration,
    attempts: u32,
}

impl Backoff {
    /// A fresh sequence for `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Backoff {
            current: policy.initial,
            policy,
            attempts: 0,
        }
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Records a failure; returns the delay to wait, or `None` when attempts are exhausted.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.attempts += 1;
        if let Some(max) = self.policy.max_attempts
            && self.attempts >= max
        {
            return None;
        }
        let base = self.current.min(self.policy.max);
        let half = base / 2;
        let jitter = if half.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=half)
        };
        self.current = base
            .mul_f64(self.policy.multiplier.max(1.0))
            .min(self.policy.max);
        Some(half + jitter)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.current = self.policy.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves delays stay within [base/2, base], grow, cap at max, and attempts are bounded.
    #[test]
    fn backoff_grows_caps_and_stops() {
        let mut b = Backoff::new(RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            multiplier: 2.0,
            max_attempts: Some(5),
        });
        let bases = [100u64, 200, 400, 400];
        for base in bases {
            let d = b.next_delay().expect("within attempts");
            assert!(d >= Duration::from_millis(base / 2) && d <= Duration::from_millis(base));
        }
        assert_eq!(b.next_delay(), None);
        b.reset();
        assert!(b.next_delay().expect("reset") <= Duration::from_millis(100));
    }
}
