//! Rate-limited warnings: the same warning is logged at most once per
//! [`WARNING_INTERVAL`], and the next one logged carries the number of
//! repeats left out since the last.
//!
//! "The same warning" is a kind (the log message) plus one detail that
//! tells repeats apart: a field name, an error kind or an event name. A
//! detail never contains a secret or a payload.
//!
//! ```
//! use sleep_dashboard::warnings;
//!
//! let field = "data.seq_num";
//! if let Some(suppressed) = warnings::admit("delivery rejected", field) {
//!     tracing::warn!(field, suppressed, "delivery rejected");
//! }
//! ```

use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// Shortest time between two logs of the same warning. Ten seconds keeps a
/// flood of identical rejections to a few lines a minute, and a warning that
/// starts is still seen at once.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Maximum number of distinct warnings tracked at once. Details come from
/// bounded sets (field names, error kinds), except event names, which an
/// authenticated sender chooses; this limit bounds the memory either way.
pub const MAX_TRACKED: usize = 1024;

/// The detail under which repeats are counted once [`MAX_TRACKED`] distinct
/// warnings already have suppressed repeats.
const OVERFLOW_DETAIL: &str = "(other)";

/// Maximum length of a detail, in bytes, so an unusual event name cannot make a key
/// large.
const MAX_DETAIL_BYTES: usize = 128;

/// The identity of a warning: its kind and one detail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WarningKey {
    kind: &'static str,
    detail: String,
}

/// A keyed rate limiter for warnings with a count of the repeats it
/// suppressed. The process-wide one is behind [`admit`]; tests build their
/// own with a fake clock.
pub struct WarningLimiter<C: Clock = DefaultClock> {
    /// One token per key, refilled every [`WARNING_INTERVAL`].
    limiter: RateLimiter<WarningKey, DashMapStateStore<WarningKey>, C, NoOpMiddleware<C::Instant>>,
    /// Repeats suppressed since the key was last logged. An entry is removed
    /// when its warning is logged again, so the count reaches the log only if
    /// the warning recurs after its interval.
    suppressed: DashMap<WarningKey, u64>,
}

impl WarningLimiter {
    /// Creates a limiter on the system's monotonic clock.
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for WarningLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> WarningLimiter<C> {
    /// Creates a limiter that reads time from `clock`.
    pub fn with_clock(clock: C) -> Self {
        let quota = Quota::with_period(WARNING_INTERVAL)
            .expect("the warning interval is not zero")
            .allow_burst(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock),
            suppressed: DashMap::new(),
        }
    }

    /// Decides whether a warning of `kind` about `detail` is logged now.
    ///
    /// Returns the number of repeats suppressed since it was last logged, which
    /// the caller logs with it. Returns `None` when this one must be left out,
    /// and counts it towards the next.
    pub fn admit(&self, kind: &'static str, detail: &str) -> Option<u64> {
        let key = WarningKey {
            kind,
            detail: truncate(detail, MAX_DETAIL_BYTES).to_string(),
        };

        if self.limiter.check_key(&key).is_ok() {
            let suppressed = self.suppressed.remove(&key).map_or(0, |(_, count)| count);
            // Keys whose interval has passed behave like new ones, so dropping
            // them changes no decision and keeps the map small.
            if self.limiter.len() > MAX_TRACKED {
                self.limiter.retain_recent();
            }
            return Some(suppressed);
        }

        let key = if self.suppressed.len() >= MAX_TRACKED && !self.suppressed.contains_key(&key) {
            WarningKey {
                kind,
                detail: OVERFLOW_DETAIL.to_string(),
            }
        } else {
            key
        };
        *self.suppressed.entry(key).or_insert(0) += 1;
        None
    }
}

/// The limiter every log line of the server goes through. It is global
/// rather than part of the server's state because the log it protects is
/// global too.
static WARNINGS: LazyLock<WarningLimiter> = LazyLock::new(WarningLimiter::new);

/// Decides whether a warning of `kind` about `detail` is logged now; see
/// [`WarningLimiter::admit`].
pub fn admit(kind: &'static str, detail: &str) -> Option<u64> {
    WARNINGS.admit(kind, detail)
}

/// Cuts `text` to at most `max_bytes`, at a character boundary.
fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn identical_warnings_log_once_per_interval() {
        let clock = FakeRelativeClock::default();
        let warnings = WarningLimiter::with_clock(clock.clone());

        assert_eq!(warnings.admit("delivery rejected", "data.seq_num"), Some(0));
        for _ in 0..4 {
            assert_eq!(warnings.admit("delivery rejected", "data.seq_num"), None);
        }
        clock.advance(WARNING_INTERVAL / 2);
        assert_eq!(warnings.admit("delivery rejected", "data.seq_num"), None);

        clock.advance(WARNING_INTERVAL / 2);
        assert_eq!(
            warnings.admit("delivery rejected", "data.seq_num"),
            Some(5),
            "the first warning after the interval reports the five left out"
        );
        assert_eq!(warnings.admit("delivery rejected", "data.seq_num"), None);
    }

    #[test]
    fn suppressed_count_restarts_after_report() {
        let clock = FakeRelativeClock::default();
        let warnings = WarningLimiter::with_clock(clock.clone());

        assert_eq!(warnings.admit("delivery rejected", "body"), Some(0));
        assert_eq!(warnings.admit("delivery rejected", "body"), None);
        clock.advance(WARNING_INTERVAL);
        assert_eq!(warnings.admit("delivery rejected", "body"), Some(1));
        clock.advance(WARNING_INTERVAL);
        assert_eq!(warnings.admit("delivery rejected", "body"), Some(0));
    }

    #[test]
    fn different_keys_are_independent() {
        let warnings = WarningLimiter::with_clock(FakeRelativeClock::default());

        assert_eq!(warnings.admit("delivery rejected", "data.seq_num"), Some(0));
        assert_eq!(warnings.admit("delivery rejected", "data.session_id"), Some(0));
        assert_eq!(warnings.admit("delivery not stored", "data.seq_num"), Some(0));

        assert_eq!(warnings.admit("delivery rejected", "data.seq_num"), None);
        assert_eq!(warnings.admit("delivery rejected", "data.session_id"), None);
        assert_eq!(warnings.admit("delivery not stored", "data.seq_num"), None);
    }

    #[test]
    fn distinct_details_beyond_limit_share_one_count() {
        let clock = FakeRelativeClock::default();
        let warnings = WarningLimiter::with_clock(clock.clone());

        // Each key is logged once and then repeated once, which leaves one
        // suppressed entry per key.
        for index in 0..MAX_TRACKED + 10 {
            let detail = format!("EVENT_{index}");
            assert_eq!(warnings.admit("unknown event", &detail), Some(0), "{detail}");
            assert_eq!(warnings.admit("unknown event", &detail), None, "{detail}");
        }
        assert_eq!(warnings.suppressed.len(), MAX_TRACKED + 1);

        clock.advance(WARNING_INTERVAL);
        assert_eq!(warnings.admit("unknown event", OVERFLOW_DETAIL), Some(10));
        assert_eq!(warnings.admit("unknown event", "EVENT_0"), Some(1));
    }

    #[test]
    fn long_details_are_cut_at_a_character_boundary() {
        let detail = "é".repeat(MAX_DETAIL_BYTES);
        let cut = truncate(&detail, MAX_DETAIL_BYTES);
        assert_eq!(cut.len(), MAX_DETAIL_BYTES);
        assert_eq!(truncate("é", 1), "");
        assert_eq!(truncate("short", MAX_DETAIL_BYTES), "short");
    }
}
