//! Token-bucket rate limiting, sliding-window failure limits and per-IP connection caps. All
//! use the monotonic clock ([`Instant`]), so a wall-clock step changes nothing.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets a [`RateLimiter`] keeps unless told otherwise ([`RateLimiter::bounded`]).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Token buckets keyed by `K`: `burst` tokens, refilled at `per_sec`.
///
/// Memory is bounded: at most `max_keys` buckets. When a new key arrives at the cap, full
/// buckets are forgotten first (a forgotten bucket comes back full, so that changes nothing);
/// if that frees less than a tenth of the cap, the fullest tenth is forgotten, so a key that
/// was drained (an attacker's) is the last to be forgotten and the sweep runs at most once per
/// `max_keys / 10` new keys.
pub struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter allowing `burst` at once and `per_sec` sustained, over at most
    /// [`DEFAULT_MAX_KEYS`] keys.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self::bounded(per_sec, burst, DEFAULT_MAX_KEYS)
    }

    /// [`RateLimiter::new`] keeping at most `max_keys` buckets (at least 10).
    pub fn bounded(per_sec: f64, burst: f64, max_keys: usize) -> Self {
        RateLimiter {
            per_sec: per_sec.max(0.0),
            burst: burst.max(1.0),
            max_keys: max_keys.max(10),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Buckets held right now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (f64, Instant)>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens of a bucket at `now`.
    fn level(&self, tokens: f64, at: Instant, now: Instant) -> f64 {
        (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_sec).min(self.burst)
    }

    /// Frees room for new keys (see the type's doc).
    fn sweep(&self, b: &mut HashMap<K, (f64, Instant)>, now: Instant) {
        b.retain(|_, (tokens, at)| self.level(*tokens, *at, now) < self.burst);
        let target = self.max_keys - self.max_keys / 10;
        if b.len() <= target {
            return;
        }
        let mut levels: Vec<f64> = b
            .values()
            .map(|(tokens, at)| self.level(*tokens, *at, now))
            .collect();
        let k = b.len() - target;
        // The k-th fullest level: buckets at or above it go (ties may take a few more).
        let (_, cut, _) = levels.select_nth_unstable_by(k - 1, |x, y| y.total_cmp(x));
        let cut = *cut;
        b.retain(|_, (tokens, at)| self.level(*tokens, *at, now) < cut);
    }

    /// Takes one token at `now`; `Err(wait)` says how long until one is available.
    pub fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut b = self.lock();
        if b.len() >= self.max_keys && !b.contains_key(key) {
            self.sweep(&mut b, now);
        }
        let (tokens, at) = b.entry(key.clone()).or_insert((self.burst, now));
        *tokens = self.level(*tokens, *at, now);
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

    /// Gives one token back to `key`'s bucket (never above the burst): an attempt that turned
    /// out honest (a login that succeeded) stops counting.
    pub fn refund(&self, key: &K) {
        if let Some((tokens, _)) = self.lock().get_mut(key) {
            *tokens = (*tokens + 1.0).min(self.burst);
        }
    }

    /// Forgets every bucket whose key matches (its row is gone, so nothing may inherit it).
    pub fn forget(&self, matches: impl Fn(&K) -> bool) {
        self.lock().retain(|k, _| !matches(k));
    }

    /// Takes `cost` tokens at `now` when the bucket holds at least `min(cost, burst)` (a cost
    /// above the burst is allowed from a full bucket and leaves it in debt); `Err(wait)` says
    /// how long until it would.
    pub fn take_at(&self, key: &K, cost: f64, now: Instant) -> Result<(), Duration> {
        let mut b = self.lock();
        if b.len() >= self.max_keys && !b.contains_key(key) {
            self.sweep(&mut b, now);
        }
        let (tokens, at) = b.entry(key.clone()).or_insert((self.burst, now));
        *tokens = self.level(*tokens, *at, now);
        *at = (*at).max(now);
        let need = cost.max(0.0).min(self.burst);
        if *tokens >= need {
            *tokens -= cost.max(0.0);
            Ok(())
        } else if self.per_sec <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64((need - *tokens) / self.per_sec))
        }
    }

    /// Takes `cost` tokens now (see [`RateLimiter::take_at`]).
    pub fn take(&self, key: &K, cost: f64) -> Result<(), Duration> {
        self.take_at(key, cost, Instant::now())
    }

    /// Takes `cost` tokens at `now` without checking: the bucket may go into debt, which
    /// later calls pay back before they pass. For costs known only after the work is done
    /// (the recipients an Enqueue fanned out to).
    pub fn charge_at(&self, key: &K, cost: f64, now: Instant) {
        let mut b = self.lock();
        if b.len() >= self.max_keys && !b.contains_key(key) {
            self.sweep(&mut b, now);
        }
        let (tokens, at) = b.entry(key.clone()).or_insert((self.burst, now));
        *tokens = self.level(*tokens, *at, now) - cost.max(0.0);
        *at = (*at).max(now);
    }

    /// [`RateLimiter::charge_at`] now.
    pub fn charge(&self, key: &K, cost: f64) {
        self.charge_at(key, cost, Instant::now())
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

    /// Checks and records in one step (under one lock): `Ok` means the event was recorded and
    /// was within the limit; `Err(wait)` records nothing. Concurrent callers can never pass
    /// together past the limit, which a separate check and record allow.
    pub fn try_record_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        if self.max == 0 {
            return Ok(());
        }
        let mut log = self.lock();
        if log.len() > 100_000 {
            let window = self.window;
            log.retain(|_, e| {
                e.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
        }
        let events = log.entry(key).or_default();
        while events
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            events.pop_front();
        }
        if events.len() >= self.max {
            let oldest = *events.front().expect("len >= max >= 1");
            return Err((oldest + self.window).saturating_duration_since(now));
        }
        events.push_back(now);
        Ok(())
    }

    /// [`FailureWindow::try_record_at`] now.
    pub fn try_record(&self, key: K) -> Result<(), Duration> {
        self.try_record_at(key, Instant::now())
    }

    /// Removes the most recent event of `key` (the attempt it counted succeeded).
    pub fn unrecord(&self, key: &K) {
        let mut log = self.lock();
        if let Some(events) = log.get_mut(key) {
            events.pop_back();
            if events.is_empty() {
                log.remove(key);
            }
        }
    }

    /// Events of `key` recorded within the window at `now`.
    pub fn count_at(&self, key: &K, now: Instant) -> usize {
        self.lock().get(key).map_or(0, |e| {
            e.iter()
                .filter(|t| now.saturating_duration_since(**t) < self.window)
                .count()
        })
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

    /// Slots the address holds right now.
    pub fn held(&self, ip: IpAddr) -> usize {
        let m = match self.open.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.get(&ip).copied().unwrap_or(0)
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
    fn buckets_stay_bounded_and_drained_ones_are_forgotten_last() {
        let l = RateLimiter::bounded(1.0 / 600.0, 6.0, 100);
        let t0 = Instant::now();
        // Key 0 is drained (an attacker's pair); keys 1.. each take one token.
        for _ in 0..6 {
            assert!(l.check_at(&0u32, t0).is_ok());
        }
        assert!(l.check_at(&0u32, t0).is_err());
        for k in 1..10_000u32 {
            let _ = l.check_at(&k, t0);
            assert!(l.len() <= 100, "at most max_keys buckets");
        }
        assert!(
            l.check_at(&0u32, t0).is_err(),
            "the drained bucket survived every sweep"
        );
        // An hour later the old buckets are full again: the next sweep forgets them.
        let later = t0 + Duration::from_secs(3600);
        let mut k = 20_000u32;
        while l.len() < 100 {
            let _ = l.check_at(&k, later);
            k += 1;
        }
        let fresh = (k - 20_000) as usize;
        assert!(l.check_at(&k, later).is_ok());
        assert!(l.len() <= fresh + 1, "every refilled bucket was forgotten");
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

    #[test]
    fn try_record_never_passes_the_limit_and_unrecord_gives_back() {
        let w = FailureWindow::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let ok = (0..10).filter(|_| w.try_record_at(1u8, t0).is_ok()).count();
        assert_eq!(ok, 3);
        assert_eq!(w.count_at(&1u8, t0), 3);
        w.unrecord(&1u8);
        assert!(w.try_record_at(1u8, t0).is_ok());
        assert!(w.try_record_at(1u8, t0).is_err());
        assert!(w.try_record_at(1u8, t0 + Duration::from_secs(60)).is_ok());
        let l = RateLimiter::new(0.0, 2.0);
        assert!(l.check_at(&1u8, t0).is_ok() && l.check_at(&1u8, t0).is_ok());
        assert!(l.check_at(&1u8, t0).is_err());
        l.refund(&1u8);
        assert!(l.check_at(&1u8, t0).is_ok());
        l.forget(|k| *k == 1u8);
        assert!(l.is_empty());
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
    fn take_and_charge_spend_many_tokens_and_debt_is_paid_back() {
        let l = RateLimiter::new(10.0, 100.0);
        let t0 = Instant::now();
        assert!(l.take_at(&1u8, 60.0, t0).is_ok());
        assert!(l.take_at(&1u8, 60.0, t0).is_err(), "40 left, 60 needed");
        l.charge_at(&1u8, 100.0, t0);
        // -60 now: a single token needs 6.1 s of refill.
        let wait = l.take_at(&1u8, 1.0, t0).expect_err("in debt");
        assert_eq!(wait, Duration::from_millis(6100));
        assert!(l
            .take_at(&1u8, 1.0, t0 + Duration::from_millis(6100))
            .is_ok());
        // A cost above the burst passes from a full bucket only.
        assert!(l.take_at(&2u8, 500.0, t0).is_ok());
        assert!(l.take_at(&2u8, 1.0, t0 + Duration::from_secs(10)).is_err());
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
