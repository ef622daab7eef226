//! Token-bucket rate limiting and per-IP connection caps. Both use the monotonic clock, so a
//! wall-clock step changes nothing.

use std::collections::HashMap;
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
        *at = now;
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
