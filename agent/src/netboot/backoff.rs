//! When the agent calls the controller again.
//!
//! A controller that restarts finds every agent it served waiting for it,
//! and all of them lost it at the same instant: plain doubling would bring
//! them back together, in one burst, at every step. So each wait after a
//! failure is a random point in the upper half of its step (the step
//! doubles up to a ceiling), never shorter than what a busy controller
//! asked for with `Retry-After`; and the pace of periodic calls (progress,
//! heartbeats) slows when the controller is slow to answer and drifts by a
//! tenth, so agents booted together do not stay in step.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// The waits between failed calls to the controller.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
    rng: Rng,
}

impl Backoff {
    /// Steps from `first`, doubling up to `max`, seeded by the system.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff::seeded(first, max, RandomState::new().hash_one(std::process::id()))
    }

    /// As [`Backoff::new`], with a given seed (tests, simulations).
    pub fn seeded(first: Duration, max: Duration, seed: u64) -> Backoff {
        let first = first.min(max);
        Backoff { first, max, step: first, rng: Rng::new(seed) }
    }

    /// The wait after a failed call: somewhere in the upper half of the
    /// current step, at least `asked` (a busy controller's `Retry-After`,
    /// itself capped at the ceiling). The next step is twice as long.
    pub fn failed(&mut self, asked: Option<Duration>) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let wait = step / 2 + self.rng.below(step / 2);
        match asked {
            Some(asked) => {
                let asked = asked.min(self.max);
                wait.max(asked + self.rng.below(asked / 4))
            }
            None => wait,
        }
    }

    /// The controller answered: the next failure starts from the first step.
    pub fn reset(&mut self) {
        self.step = self.first;
    }

    /// The wait before the next periodic call: `tick`, or twice the time
    /// the last answer took when that is longer (a slow controller gets
    /// fewer calls), give or take a tenth.
    pub fn pace(&mut self, tick: Duration, answered_in: Duration) -> Duration {
        let base = tick.max(answered_in * 2).min(self.max);
        base - base / 10 + self.rng.below(base / 5)
    }
}

/// xorshift64*: enough to spread retries; nothing secret depends on it.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, limit)` at nanosecond grain; zero for a zero limit.
    fn below(&mut self, limit: Duration) -> Duration {
        let nanos = limit.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next() % nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn waits_grow_to_the_ceiling_within_the_upper_half_of_each_step() {
        let mut b = Backoff::seeded(S(1), S(30), 7);
        for step in [1, 2, 4, 8, 16, 30, 30, 30] {
            let w = b.failed(None);
            assert!(w >= S(step) / 2 && w < S(step), "step {step}s: waited {w:?}");
        }
        b.reset();
        assert!(b.failed(None) < S(1));
    }

    #[test]
    fn a_busy_controllers_retry_after_is_honoured_up_to_the_ceiling() {
        let mut b = Backoff::seeded(S(1), S(30), 7);
        let w = b.failed(Some(S(10)));
        assert!(w >= S(10) && w < S(10) + S(10) / 4, "{w:?}");
        let w = b.failed(Some(S(3600)));
        assert!(w >= S(30) && w < S(30) + S(30) / 4, "a hostile Retry-After is capped: {w:?}");
    }

    #[test]
    fn a_slow_controller_is_called_less_often() {
        let mut b = Backoff::seeded(S(1), S(30), 7);
        for _ in 0..100 {
            let quick = b.pace(S(1), Duration::from_millis(20));
            assert!(quick >= Duration::from_millis(900) && quick < Duration::from_millis(1100), "{quick:?}");
            let slow = b.pace(S(1), S(3));
            assert!(slow >= Duration::from_millis(5400) && slow < Duration::from_millis(6600), "{slow:?}");
        }
        assert!(b.pace(S(1), S(600)) < S(34), "paced at most at the ceiling");
    }

    /// A thousand agents lose their controller at the same instant; it is
    /// back 45 s later. Without jitter they would all call again within
    /// the same millisecond of every step; with it, no second sees more
    /// than a small share of them, before or after the controller returns.
    #[test]
    fn a_thousand_agents_do_not_come_back_together() {
        let back = S(45);
        let mut arrivals = Vec::new();
        let mut first_after_back = Vec::new();
        for agent in 0..1000u64 {
            let mut b = Backoff::seeded(S(1), S(30), agent.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut t = Duration::ZERO;
            loop {
                t += b.failed(None);
                arrivals.push(t);
                if t >= back {
                    first_after_back.push(t);
                    break;
                }
            }
        }
        let busiest = |times: &[Duration]| {
            let mut per_second = std::collections::HashMap::<u64, usize>::new();
            for t in times {
                *per_second.entry(t.as_secs()).or_default() += 1;
            }
            per_second.into_values().max().unwrap_or(0)
        };
        // The short first steps crowd the first seconds by nature; from
        // 30 s on (steps of 16 and 30 s) the spread is what matters. In
        // lockstep, every one of these seconds would hold all 1000.
        let late: Vec<Duration> = arrivals.iter().copied().filter(|t| *t >= S(30)).collect();
        assert!(busiest(&late) <= 120, "busiest second after 30 s: {} calls", busiest(&late));
        assert!(
            busiest(&first_after_back) <= 120,
            "busiest second once the controller is back: {} of 1000 agents",
            busiest(&first_after_back)
        );
        let spread = first_after_back.iter().max().unwrap().saturating_sub(*first_after_back.iter().min().unwrap());
        assert!(spread >= S(10), "returns spread over {spread:?}");
    }
}
