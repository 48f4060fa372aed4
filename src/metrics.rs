//! Prometheus metrics, kept with the official client crate
//! `prometheus-client` and served at `/metrics` in the OpenMetrics text
//! format.
//!
//! Label values come from fixed sets (event names this server knows,
//! outcome and close-reason enums), so no label can grow without bound.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::payload::{INFERENCE_COMPLETE, SESSION_COMPLETE};
use crate::storage::MAX_BATCH;

/// The media type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What became of one webhook delivery.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and applied (200).
    Accepted,
    /// Already stored (200).
    Duplicate,
    /// Unknown event, stored and not applied (202).
    Ignored,
    /// Rejected for a bad key, header or body (4xx).
    Rejected,
    /// The database could not take it (503), or storing it failed (500).
    Unavailable,
}

impl Outcome {
    /// Returns the label value, in the lower case Prometheus labels use.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::Rejected => "rejected",
            Outcome::Unavailable => "unavailable",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.name())
    }
}

/// Labels of the webhook counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `INFERENCE_COMPLETE`, `SESSION_COMPLETE`, or `other` for any other
    /// or unreadable event.
    pub event: &'static str,
    pub outcome: Outcome,
}

impl WebhookLabels {
    /// Builds the labels of a delivery whose `event` field read `event`.
    pub fn new(event: Option<&str>, outcome: Outcome) -> Self {
        let event = match event {
            Some(INFERENCE_COMPLETE) => INFERENCE_COMPLETE,
            Some(SESSION_COMPLETE) => SESSION_COMPLETE,
            _ => "other",
        };
        Self { event, outcome }
    }
}

/// The reason the server closed a viewer WebSocket.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CloseReason {
    /// The client stopped reading and fell too far behind.
    Slow,
    /// No pong or other frame arrived within the dead-socket timeout.
    Dead,
    /// The viewer link expired.
    Expired,
    /// The client sent a frame the protocol does not allow.
    Protocol,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Returns the label value, in the lower case Prometheus labels use.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Slow => "slow",
            CloseReason::Dead => "dead",
            CloseReason::Expired => "expired",
            CloseReason::Protocol => "protocol",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

impl EncodeLabelValue for CloseReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.name())
    }
}

/// Labels of the closed-socket counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub reason: CloseReason,
}

/// Every metric the server keeps. Cheap to share: each metric is an `Arc`
/// inside, and updates are atomic.
pub struct Metrics {
    registry: Registry,
    /// Webhook deliveries by event and outcome.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// Seconds from a webhook request's arrival to its answer.
    pub webhook_seconds: Histogram,
    /// Seconds from queueing one delivery for the database writer to the
    /// commit or failure of the transaction that contains it.
    pub commit_seconds: Histogram,
    /// Deliveries per committed database transaction, observed once per
    /// transaction. Concurrent deliveries share a transaction and its commit.
    pub batch_size: Histogram,
    /// Open viewer WebSockets.
    pub ws_connections: Gauge,
    /// Rooms in memory: users with at least one viewer.
    pub rooms: Gauge,
    /// Snapshots sent to viewers that fell behind the broadcast.
    pub lag_snapshots: Counter,
    /// Viewer WebSockets the server closed, by reason.
    pub ws_closed: Family<CloseLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sleep_dashboard");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register("webhooks", "Webhook deliveries by event and outcome", webhooks.clone());
        // 0.5 ms to about 16 s in doublings.
        let webhook_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "webhook_seconds",
            "Seconds from a webhook request's arrival to its answer",
            webhook_seconds.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "database_commit_seconds",
            "Seconds a delivery waited for and spent in its database commit",
            commit_seconds.clone(),
        );
        // 1 delivery to the storage's batch limit in doublings.
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, MAX_BATCH.ilog2() as u16 + 1));
        registry.register(
            "database_batch_size",
            "Deliveries per committed database transaction",
            batch_size.clone(),
        );
        let ws_connections = Gauge::default();
        registry.register(
            "websocket_connections",
            "Open viewer WebSockets",
            ws_connections.clone(),
        );
        let rooms = Gauge::default();
        registry.register("rooms", "Users with at least one live viewer", rooms.clone());
        let lag_snapshots = Counter::default();
        registry.register(
            "lag_snapshots",
            "Snapshots sent to viewers that fell behind the broadcast",
            lag_snapshots.clone(),
        );
        let ws_closed = Family::<CloseLabels, Counter>::default();
        registry.register(
            "websocket_closed",
            "Viewer WebSockets closed by the server, by reason",
            ws_closed.clone(),
        );
        Self {
            registry,
            webhooks,
            webhook_seconds,
            commit_seconds,
            batch_size,
            ws_connections,
            rooms,
            lag_snapshots,
            ws_closed,
        }
    }

    /// Counts one webhook delivery.
    pub fn count_webhook(&self, event: Option<&str>, outcome: Outcome) {
        self.webhooks.get_or_create(&WebhookLabels::new(event, outcome)).inc();
    }

    /// Counts one WebSocket the server closed.
    pub fn count_closed(&self, reason: CloseReason) {
        self.ws_closed.get_or_create(&CloseLabels { reason }).inc();
    }

    /// Encodes every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_labels() {
        let metrics = Metrics::new();
        metrics.count_webhook(Some(SESSION_COMPLETE), Outcome::Accepted);
        metrics.count_webhook(Some("SOMETHING_NEW"), Outcome::Ignored);
        metrics.count_closed(CloseReason::Dead);
        let text = metrics.encode();
        assert!(
            text.contains(r#"sleep_dashboard_webhooks_total{event="SESSION_COMPLETE",outcome="accepted"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"sleep_dashboard_webhooks_total{event="other",outcome="ignored"} 1"#));
        assert!(text.contains(r#"sleep_dashboard_websocket_closed_total{reason="dead"} 1"#));
        assert!(text.contains("# TYPE sleep_dashboard_webhook_seconds histogram"));
        assert!(text.contains("# TYPE sleep_dashboard_database_batch_size histogram"));
        assert!(text.ends_with("# EOF\n"));
    }
}
