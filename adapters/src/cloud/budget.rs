//! One rate-limit budget per Hetzner Cloud project, shared by every job.
//!
//! Hetzner allows 3,600 requests per hour per project, as a token bucket
//! that refills one request per second. Every [`HcloudClient`] call takes a
//! token from the [`RateBudget`] of its project first, so concurrent jobs
//! against one project can never exceed the budget between them.
//!
//! A project is identified by a hash of its API token ([`project_key`]):
//! the token itself is never stored, logged or used as a map key.
//!
//! The local count is an estimate; the server's answer wins.
//! [`RateBudget::observe`] lowers the local count to `RateLimit-Remaining`
//! (other consumers, e.g. `tofu`, share the project budget). An empty
//! bucket is waited out one token at a time: a caller waits for the tokens
//! it lacks at the refill rate (one second for one request), never until
//! `RateLimit-Reset`, which is when the bucket would be *full* again (up to
//! an hour away).
//!
//! Waits are bounded: if a token would only be available after
//! [`BudgetConfig::max_wait`], [`RateBudget::acquire`] fails at once with
//! `Cause::RateLimited` (transient) and says why.
//!
//! [`HcloudClient`]: super::hcloud::HcloudClient

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cz_state::SecretString;
use tokio::time::Instant;

use cz_engine::{Cause, StepError, System};

/// Token bucket parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Bucket size (Hetzner: 3,600).
    pub capacity: u32,
    /// Tokens added per second (Hetzner: 1).
    pub refill_per_sec: f64,
    /// The longest a caller waits for a token before failing.
    pub max_wait: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig { capacity: 3_600, refill_per_sec: 1.0, max_wait: Duration::from_secs(120) }
    }
}

#[derive(Debug)]
struct State {
    /// May go negative: each waiter reserves its token up front, so waiters
    /// are served in order and never oversubscribe the bucket.
    tokens: f64,
    last: Instant,
}

/// The token bucket of one cloud project.
#[derive(Debug)]
pub struct RateBudget {
    key: String,
    cfg: BudgetConfig,
    state: Mutex<State>,
}

/// The project key of a token: the first 16 hex digits of its SHA-256.
pub fn project_key(token: &SecretString) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(token.expose().as_bytes());
    hex::encode(digest)[..16].to_owned()
}

impl RateBudget {
    /// A full bucket.
    pub fn new(key: impl Into<String>, cfg: BudgetConfig) -> RateBudget {
        RateBudget {
            key: key.into(),
            cfg,
            state: Mutex::new(State { tokens: f64::from(cfg.capacity), last: Instant::now() }),
        }
    }

    /// The project key (a hash of the token).
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn config(&self) -> BudgetConfig {
        self.cfg
    }

    fn refill(&self, st: &mut State, now: Instant) {
        let dt = now.saturating_duration_since(st.last).as_secs_f64();
        st.tokens = (st.tokens + dt * self.cfg.refill_per_sec).min(f64::from(self.cfg.capacity));
        st.last = now;
    }

    /// Tokens available now (after refill; negative while callers wait).
    pub fn available(&self) -> f64 {
        let mut st = self.state.lock().expect("budget lock");
        self.refill(&mut st, Instant::now());
        st.tokens
    }

    /// Takes one request from the budget, waiting for it if needed. Fails
    /// (without taking anything) if the wait would exceed `max_wait`.
    pub async fn acquire(&self) -> Result<(), StepError> {
        let wait = {
            let mut st = self.state.lock().expect("budget lock");
            let now = Instant::now();
            self.refill(&mut st, now);
            let after = st.tokens - 1.0;
            let wait = if after >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-after / self.cfg.refill_per_sec)
            };
            if wait > self.cfg.max_wait {
                let reason = format!(
                    "the project budget (capacity {}, refill {}/s) has {:.0} requests queued ahead",
                    self.cfg.capacity, self.cfg.refill_per_sec, -st.tokens
                );
                return Err(StepError::adapter(
                    System::Cloud,
                    "rate_budget",
                    Cause::RateLimited,
                    format!(
                        "rate_limit_exceeded: a request would wait {:.1}s, over the {}s bound: {reason} (project {})",
                        wait.as_secs_f64(),
                        self.cfg.max_wait.as_secs(),
                        self.key
                    ),
                ));
            }
            st.tokens = after;
            wait
        };
        if !wait.is_zero() {
            tracing::debug!(project = %self.key, wait_s = wait.as_secs_f64(), "waiting for the cloud rate budget");
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Applies the server's view, `RateLimit-Remaining`: lowers the local
    /// count to `remaining` (never raises it: requests reserved here may
    /// not have reached the server yet). At 0 the next caller waits for one
    /// token's refill, not for `RateLimit-Reset`.
    pub fn observe(&self, remaining: u32) {
        let mut st = self.state.lock().expect("budget lock");
        self.refill(&mut st, Instant::now());
        st.tokens = st.tokens.min(f64::from(remaining));
    }
}

/// Budgets by project key. One registry per process ([`BudgetRegistry::global`])
/// makes every client of a project share its budget.
#[derive(Debug, Default)]
pub struct BudgetRegistry {
    cfg: BudgetConfig,
    budgets: Mutex<HashMap<String, Arc<RateBudget>>>,
}

impl BudgetRegistry {
    pub fn new(cfg: BudgetConfig) -> BudgetRegistry {
        BudgetRegistry { cfg, budgets: Mutex::new(HashMap::new()) }
    }

    /// The process-wide registry with Hetzner's limits.
    pub fn global() -> Arc<BudgetRegistry> {
        static GLOBAL: OnceLock<Arc<BudgetRegistry>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(BudgetRegistry::new(BudgetConfig::default()))).clone()
    }

    pub fn config(&self) -> BudgetConfig {
        self.cfg
    }

    /// Requests left in each project's budget this registry has seen, by
    /// project key (a hash, never the token).
    pub fn remaining(&self) -> Vec<(String, f64)> {
        let budgets: Vec<Arc<RateBudget>> =
            self.budgets.lock().expect("registry lock").values().cloned().collect();
        budgets.iter().map(|b| (b.key().to_owned(), b.available())).collect()
    }

    /// Keeps `budget` under its own key, so [`remaining`](Self::remaining)
    /// reports it: the sim's project budget, which runs on the sim's clock
    /// and so has its own refill rate.
    pub fn adopt(&self, budget: Arc<RateBudget>) {
        self.budgets.lock().expect("registry lock").insert(budget.key().to_owned(), budget);
    }

    /// The budget of the project `token` belongs to (created full on first use).
    pub fn for_token(&self, token: &SecretString) -> Arc<RateBudget> {
        let key = project_key(token);
        self.budgets
            .lock()
            .expect("registry lock")
            .entry(key.clone())
            .or_insert_with(|| Arc::new(RateBudget::new(key, self.cfg)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(capacity: u32, refill: f64, max_wait_s: u64) -> BudgetConfig {
        BudgetConfig { capacity, refill_per_sec: refill, max_wait: Duration::from_secs(max_wait_s) }
    }

    /// What `/metrics` reports: each project by its key (never the token),
    /// with what is left of its budget.
    #[tokio::test(start_paused = true)]
    async fn the_registry_reports_what_each_project_has_left() {
        let reg = BudgetRegistry::new(cfg(10, 0.0, 60));
        let (a, b) = (SecretString::new("token-a"), SecretString::new("token-b"));
        for _ in 0..3 {
            reg.for_token(&a).acquire().await.unwrap();
        }
        reg.for_token(&b).acquire().await.unwrap();
        let mut left = reg.remaining();
        left.sort_by(|x, y| x.0.cmp(&y.0));
        let mut want = vec![(project_key(&a), 7.0), (project_key(&b), 9.0)];
        want.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(left.len(), 2);
        for ((k, l), (wk, wl)) in left.iter().zip(&want) {
            assert_eq!(k, wk);
            assert!((l - wl).abs() < 0.01, "{k}: {l} left, want {wl}");
            assert!(!k.contains("token"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_bucket_is_free_then_refills_one_per_second() {
        let b = RateBudget::new("k", cfg(3, 1.0, 60));
        let t0 = Instant::now();
        for _ in 0..3 {
            b.acquire().await.unwrap();
        }
        assert_eq!(Instant::now(), t0, "a full bucket does not wait");
        b.acquire().await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        b.acquire().await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_never_oversubscribe() {
        let b = Arc::new(RateBudget::new("k", cfg(5, 1.0, 600)));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..15)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.acquire().await.unwrap();
                    Instant::now() - t0
                })
            })
            .collect();
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.unwrap());
        }
        times.sort();
        // In any window of w seconds at most capacity + w requests pass.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().filter(|u| **u - *t < Duration::from_secs(1)).count();
            assert!(in_window <= 5 + 1, "window at {t:?} holds {in_window}");
        }
        assert_eq!(*times.last().unwrap(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_over_the_bound_fails_with_a_reason_and_takes_nothing() {
        let b = RateBudget::new("k", cfg(1, 0.1, 5));
        b.acquire().await.unwrap();
        let t0 = Instant::now();
        let err = b.acquire().await.unwrap_err();
        assert_eq!(Instant::now(), t0, "fails without waiting");
        match &err {
            StepError::Adapter { cause: Cause::RateLimited, message, .. } => {
                assert!(message.contains("over the 5s bound"), "{message}");
                assert!(message.contains("the project budget"), "{message}");
            }
            e => panic!("{e}"),
        }
        // Nothing was reserved: after 10s one token is there.
        tokio::time::advance(Duration::from_secs(10)).await;
        b.acquire().await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(10));
    }

    /// The rule: an empty bucket costs the tokens a caller lacks
    /// (one second per request at Hetzner's rate), not the wait until
    /// `RateLimit-Reset` (the bucket full again, up to an hour).
    #[tokio::test(start_paused = true)]
    async fn observe_lowers_the_count_and_zero_costs_only_the_deficit() {
        let b = RateBudget::new("k", cfg(3_600, 1.0, 60));
        b.observe(2);
        assert!(b.available() <= 2.0);
        let t0 = Instant::now();
        b.acquire().await.unwrap();
        b.acquire().await.unwrap();
        assert_eq!(Instant::now(), t0);
        // The server says nothing is left: the next request waits one
        // token (1 s), the one after another second.
        b.observe(0);
        b.acquire().await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        b.acquire().await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
        // A higher remaining never raises the local count.
        b.observe(1000);
        assert!(b.available() < 1.0);
        // Queued far past the bound: refused at once with the reason.
        let slow = RateBudget::new("k", cfg(3_600, 0.01, 60));
        slow.observe(0);
        let err = slow.acquire().await.unwrap_err();
        assert!(err.to_string().contains("over the 60s bound"), "{err}");
    }

    #[test]
    fn registry_shares_by_token_hash_and_never_keeps_the_token() {
        let reg = BudgetRegistry::new(BudgetConfig::default());
        let t1 = SecretString::new("secret-token-one");
        let a = reg.for_token(&t1);
        let b = reg.for_token(&SecretString::new("secret-token-one"));
        let c = reg.for_token(&SecretString::new("secret-token-two"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.key().len(), 16);
        assert!(!a.key().contains("secret"));
        assert!(!format!("{reg:?}").contains("secret-token"));
        assert_eq!(a.config().capacity, 3_600);
    }
}
