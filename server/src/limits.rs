//! Token-bucket rate limiting, sliding-window failure limits and per-IP connection caps. All
//! use the monotonic clock ([`Instant`]), so a wall-clock step changes nothing.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token buckets keyed by `K`: `burst` tokens, refilled at `per_sec`.
pub struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter allowing `burst` at once and `per_sec` sustained.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter {
            per_sec: per_sec.max(0.0),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token at `now`; `Err(wait)` says how long until one is available.
    pub fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut b = match self.buckets.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        if b.len() > 100_000 {
            // Forget full buckets so the map stays bounded.
            let (burst, rate) = (self.burst, self.per_sec);
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = b.entry(key.clone()).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.burst);
        *at = (*at).max(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else if self.per_sec <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_sec))
        }
    }

    /// Takes one token now.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }
}

/// Counts events (failed logins, registrations) per key in a sliding window: at most `max`
/// within any `window`. Unlike a token bucket this never allows more than `max` per window,
/// which is what "5 failed logins per 15 minutes" promises.
pub struct FailureWindow<K> {
    max: usize,
    window: Duration,
    log: Mutex<HashMap<K, VecDeque<Instant>>>,
}

impl<K: Hash + Eq + Clone> FailureWindow<K> {
    /// At most `max` events per `window`; `max == 0` means no limit.
    pub fn new(max: u32, window: Duration) -> Self {
        FailureWindow {
            max: max as usize,
            window,
            log: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, VecDeque<Instant>>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether another attempt is allowed at `now`; `Err(wait)` says how long until the oldest
    /// event leaves the window.
    pub fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.max == 0 {
            return Ok(());
        }
        let mut log = self.lock();
        let Some(events) = log.get_mut(key) else {
            return Ok(());
        };
        while events
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            events.pop_front();
        }
        match events.front() {
            Some(oldest) if events.len() >= self.max => {
                Err((*oldest + self.window).saturating_duration_since(now))
            }
            _ => Ok(()),
        }
    }

    /// Records one event for `key` at `now`.
    pub fn record_at(&self, key: K, now: Instant) {
        if self.max == 0 {
            return;
        }
        let mut log = self.lock();
        if log.len() > 100_000 {
            // Forget keys whose events all left the window, so the map stays bounded.
            let window = self.window;
            log.retain(|_, e| {
                e.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
        }
        let events = log.entry(key).or_default();
        events.push_back(now);
        while events.len() > self.max {
            events.pop_front();
        }
    }

    /// Forgets the events of `key` (a successful login clears its failures).
    pub fn clear(&self, key: &K) {
        self.lock().remove(key);
    }

    /// [`FailureWindow::check_at`] now.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// [`FailureWindow::record_at`] now.
    pub fn record(&self, key: K) {
        self.record_at(key, Instant::now())
    }
}

/// Counts open connections per IP address.
pub struct ConnectionCap {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionCap {
    /// At most `max` concurrent connections per address.
    pub fn new(max: usize) -> Self {
        ConnectionCap {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Reserves a slot; false when the address is at its cap.
    pub fn acquire(&self, ip: IpAddr) -> bool {
        let mut m = match self.open.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Frees a slot taken by [`ConnectionCap::acquire`].
    pub fn release(&self, ip: IpAddr) {
        let mut m = match self.open.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let l = RateLimiter::new(10.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(&1u8, t0).is_ok());
        }
        let wait = l.check_at(&1u8, t0).expect_err("empty");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(l.check_at(&2u8, t0).is_ok(), "other keys are independent");
        assert!(l.check_at(&1u8, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn failure_window_allows_max_per_window_then_waits_for_the_oldest() {
        let w = FailureWindow::new(5, Duration::from_secs(900));
        let t0 = Instant::now();
        for i in 0..5u64 {
            assert!(w.check_at(&"alice", t0).is_ok());
            w.record_at("alice", t0 + Duration::from_secs(i));
        }
        let wait = w
            .check_at(&"alice", t0 + Duration::from_secs(10))
            .expect_err("full");
        assert_eq!(
            wait,
            Duration::from_secs(890),
            "until the first failure is 15 min old"
        );
        assert!(w.check_at(&"bob", t0).is_ok(), "other keys are independent");
        assert!(w.check_at(&"alice", t0 + Duration::from_secs(900)).is_ok());
        w.clear(&"alice");
        assert!(w.check_at(&"alice", t0 + Duration::from_secs(10)).is_ok());
        let off = FailureWindow::new(0, Duration::from_secs(1));
        off.record_at("x", t0);
        assert!(off.check_at(&"x", t0).is_ok(), "0 means no limit");
    }

    /// T-3 (unit level): limiters take [`Instant`], the monotonic clock; permits come only from
    /// monotonic elapsed time, so a wall-clock step (NTP) can neither add permits nor drain them.
    #[test]
    fn t3_limiters_run_on_the_monotonic_clock_only() {
        let l = RateLimiter::new(1.0, 2.0);
        let t0 = Instant::now();
        assert!(l.check_at(&1u8, t0).is_ok() && l.check_at(&1u8, t0).is_ok());
        // However often it is asked at the same monotonic instant, no extra permit appears.
        for _ in 0..1000 {
            assert!(l.check_at(&1u8, t0).is_err());
        }
        // An earlier instant (what a backwards wall-clock step would look like if it were
        // used) neither refills nor panics.
        assert!(l.check_at(&1u8, t0 - Duration::from_millis(1)).is_err());
        assert!(l.check_at(&1u8, t0 + Duration::from_secs(1)).is_ok());
        let w = FailureWindow::new(1, Duration::from_secs(60));
        w.record_at(1u8, t0);
        assert!(w.check_at(&1u8, t0 - Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn cap_counts_per_address() {
        let c = ConnectionCap::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(c.acquire(a) && c.acquire(a) && !c.acquire(a));
        assert!(c.acquire(b));
        c.release(a);
        assert!(c.acquire(a));
    }
}
