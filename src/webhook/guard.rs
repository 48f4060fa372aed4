//! Who may deliver: the failed-authentication limit per client address and
//! the optional allow-list of user ids.
//!
//! A client that fails the `x-api-key` check too often gets 429
//! before its key is even compared, so guessing keys costs it time, and its
//! failures cannot flood the log. A request with a correct key is never
//! counted, so Asleep's own deliveries are never limited unless they come
//! from an address that is failing at the same time.

use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::client_address::{ClientAddressSource, limiter_key};
use crate::warnings;

/// Default number of failed `x-api-key` checks one client address may make
/// per [`DEFAULT_AUTH_FAILURE_WINDOW`]. A sender with a stale key after a
/// rotation fails a few times a minute, a key-guessing client far more.
pub const DEFAULT_AUTH_FAILURE_LIMIT: u32 = 10;

/// Default window of [`DEFAULT_AUTH_FAILURE_LIMIT`].
pub const DEFAULT_AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Maximum number of client addresses whose failures are tracked at once,
/// so a client rotating through many addresses cannot grow memory without
/// bound.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Rules for who may deliver, set by the `serve` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPolicy {
    /// Failed `x-api-key` checks one client address may make per
    /// [`WebhookPolicy::auth_failure_window`] before it gets 429.
    pub auth_failure_limit: u32,
    /// Time in which [`WebhookPolicy::auth_failure_limit`] failures are
    /// allowed. The allowance refills evenly, one failure per window
    /// divided by the limit.
    pub auth_failure_window: Duration,
    /// Source of a request's client address.
    pub client_address: ClientAddressSource,
    /// User ids whose deliveries are accepted, or `None` for every user.
    pub allowed_users: Option<Arc<HashSet<String>>>,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        Self {
            auth_failure_limit: DEFAULT_AUTH_FAILURE_LIMIT,
            auth_failure_window: DEFAULT_AUTH_FAILURE_WINDOW,
            client_address: ClientAddressSource::Peer,
            allowed_users: None,
        }
    }
}

impl WebhookPolicy {
    /// Returns the quota of failed checks, or an error naming the flag with
    /// an unusable value.
    pub fn quota(&self) -> Result<Quota, String> {
        let limit = NonZeroU32::new(self.auth_failure_limit)
            .ok_or_else(|| "--auth-failure-limit must be above zero".to_string())?;
        if self.auth_failure_window.is_zero() {
            return Err("--auth-failure-window must be above zero".to_string());
        }
        Quota::with_period(self.auth_failure_window / limit.get())
            .map(|quota| quota.allow_burst(limit))
            .ok_or_else(|| "--auth-failure-window is too short for --auth-failure-limit".to_string())
    }

    /// Returns whether deliveries for `user_id` are accepted.
    pub fn allows_user(&self, user_id: &str) -> bool {
        self.allowed_users
            .as_ref()
            .is_none_or(|allowed| allowed.contains(user_id))
    }
}

/// The policy with the state it needs: failed checks per client address.
pub struct WebhookGuard<C: Clock = DefaultClock> {
    pub policy: WebhookPolicy,
    failures: FailedAuthLimiter<C>,
}

impl WebhookGuard {
    /// Creates the guard of a server, or names the flag that makes `policy`
    /// unusable.
    pub fn new(policy: WebhookPolicy) -> Result<Self, String> {
        let failures = FailedAuthLimiter::new(policy.quota()?, DefaultClock::default());
        Ok(Self { policy, failures })
    }
}

impl<C: Clock + Clone> WebhookGuard<C> {
    /// Returns the time `address` must wait before its next request is
    /// considered, or `None` when it may send one now.
    pub fn blocked_for(&self, address: IpAddr) -> Option<Duration> {
        self.failures.blocked_for(address)
    }

    /// Counts a failed `x-api-key` check from `address`.
    pub fn record_failure(&self, address: IpAddr) {
        self.failures.record_failure(address);
    }
}

type KeyedLimiter<C> = RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, StateInformationMiddleware>;

/// Failed authentication per client address, with the addresses that used
/// up their allowance and until when.
///
/// governor's limiter has no way to look at a key without taking a cell,
/// and a request with a correct key must take none. So a failure takes a
/// cell, and when it takes the last one the address is entered in
/// `blocked` until the next cell is due. A request first looks only at
/// `blocked`.
struct FailedAuthLimiter<C: Clock> {
    limiter: KeyedLimiter<C>,
    blocked: DashMap<IpAddr, C::Instant>,
    clock: C,
}

impl<C: Clock + Clone> FailedAuthLimiter<C> {
    fn new(quota: Quota, clock: C) -> Self {
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            blocked: DashMap::new(),
            clock,
        }
    }

    fn blocked_for(&self, address: IpAddr) -> Option<Duration> {
        let key = limiter_key(address);
        let until = *self.blocked.get(&key)?;
        let now = self.clock.now();
        if until > now {
            return Some(until.duration_since(now).into());
        }
        self.blocked.remove_if(&key, |_, until| *until <= now);
        None
    }

    fn record_failure(&self, address: IpAddr) {
        let key = limiter_key(address);
        if !self.has_room_for(&key) {
            if let Some(suppressed) = warnings::admit("failed-authentication tracking full", "") {
                tracing::warn!(
                    tracked = MAX_TRACKED_ADDRESSES,
                    suppressed,
                    "too many client addresses are failing authentication to track them all; \
                     failures from new addresses are not rate-limited until older ones expire"
                );
            }
            return;
        }

        let now = self.clock.now();
        let until = match self.limiter.check_key(&key) {
            Ok(snapshot) if snapshot.remaining_burst_capacity() > 0 => return,
            // The last cell was taken: the next is due one replenish
            // interval from now at the latest.
            Ok(snapshot) => now + Nanos::from(snapshot.quota().replenish_interval()),
            // A request that was already in flight when the address became
            // blocked failed too.
            Err(not_until) => not_until.earliest_possible(),
        };
        self.blocked.insert(key, until);
    }

    /// Returns whether `key` is tracked or can be, after expired entries are dropped
    /// when the maps are full.
    fn has_room_for(&self, key: &IpAddr) -> bool {
        if self.limiter.len() < MAX_TRACKED_ADDRESSES || self.blocked.contains_key(key) {
            return true;
        }
        // Addresses whose allowance has refilled behave like new ones, so
        // dropping them changes no decision.
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = self.clock.now();
        self.blocked.retain(|_, until| *until > now);
        self.limiter.len() < MAX_TRACKED_ADDRESSES
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(limit: u32, window: Duration) -> (FailedAuthLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let policy = WebhookPolicy {
            auth_failure_limit: limit,
            auth_failure_window: window,
            ..WebhookPolicy::default()
        };
        (FailedAuthLimiter::new(policy.quota().unwrap(), clock.clone()), clock)
    }

    #[test]
    fn address_is_blocked_after_limit() {
        let (limiter, clock) = limiter(3, Duration::from_secs(60));
        let address: IpAddr = "192.0.2.1".parse().unwrap();

        for failure in 1..=2 {
            limiter.record_failure(address);
            assert_eq!(limiter.blocked_for(address), None, "after failure {failure}");
        }
        limiter.record_failure(address);
        assert_eq!(limiter.blocked_for(address), Some(Duration::from_secs(20)));

        clock.advance(Duration::from_secs(19));
        assert_eq!(limiter.blocked_for(address), Some(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.blocked_for(address), None, "one failure refilled");

        limiter.record_failure(address);
        assert_eq!(
            limiter.blocked_for(address),
            Some(Duration::from_secs(20)),
            "the refilled allowance is one failure"
        );
    }

    #[test]
    fn addresses_are_counted_apart() {
        let (limiter, _clock) = limiter(1, Duration::from_secs(60));
        let first: IpAddr = "192.0.2.1".parse().unwrap();
        let second: IpAddr = "192.0.2.2".parse().unwrap();
        limiter.record_failure(first);
        assert!(limiter.blocked_for(first).is_some());
        assert_eq!(limiter.blocked_for(second), None);
    }

    #[test]
    fn ipv6_network_shares_one_allowance() {
        let (limiter, _clock) = limiter(2, Duration::from_secs(60));
        limiter.record_failure("2001:db8::1".parse().unwrap());
        limiter.record_failure("2001:db8::2".parse().unwrap());
        assert!(limiter.blocked_for("2001:db8::3".parse().unwrap()).is_some());
        assert_eq!(limiter.blocked_for("2001:db8:0:1::3".parse().unwrap()), None);
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let (limiter, clock) = limiter(5, Duration::from_secs(60));
        let address = |index: usize| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + index as u32));
        for index in 0..MAX_TRACKED_ADDRESSES + 100 {
            limiter.record_failure(address(index));
        }
        assert_eq!(limiter.limiter.len(), MAX_TRACKED_ADDRESSES);

        // Once their one failure has refilled, old addresses make room.
        clock.advance(Duration::from_secs(60));
        limiter.record_failure(address(MAX_TRACKED_ADDRESSES + 200));
        assert!(limiter.limiter.len() <= MAX_TRACKED_ADDRESSES);
    }

    #[test]
    fn unusable_quota_names_flag() {
        let zero_limit = WebhookPolicy {
            auth_failure_limit: 0,
            ..WebhookPolicy::default()
        };
        assert!(zero_limit.quota().unwrap_err().contains("--auth-failure-limit"));
        let zero_window = WebhookPolicy {
            auth_failure_window: Duration::ZERO,
            ..WebhookPolicy::default()
        };
        assert!(zero_window.quota().unwrap_err().contains("--auth-failure-window"));
    }

    #[test]
    fn allow_list_is_optional() {
        let open = WebhookPolicy::default();
        assert!(open.allows_user("anyone"));
        let closed = WebhookPolicy {
            allowed_users: Some(Arc::new(HashSet::from(["alice".to_string()]))),
            ..WebhookPolicy::default()
        };
        assert!(closed.allows_user("alice"));
        assert!(!closed.allows_user("bob"));
        assert!(!closed.allows_user("Alice"));
    }
}
