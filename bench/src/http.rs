//! Webhook deliveries over kept-alive HTTP/1.1 connections, and the bodies
//! they carry.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use rand::rngs::SmallRng;
use tokio::net::TcpStream;

use crate::target::API_KEY;

/// Maximum wait for one response; a slower one counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Epochs in each delivery, as in the peers' own load script.
pub const EPOCHS_PER_DELIVERY: u32 = 10;

/// Deliveries per session before a connection starts a new one, which keeps
/// `seq_num` within the longest night a server accepts.
const DELIVERIES_PER_SESSION: u32 = 400;

/// One kept-alive connection to `/asleep-webhook`.
pub struct WebhookConnection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    port: u16,
}

impl WebhookConnection {
    pub async fn open(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: format!("127.0.0.1:{port}"),
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Posts one delivery for `user_id` and returns the status once the
    /// whole response has arrived.
    pub async fn post(&mut self, user_id: &str, body: String) -> Result<StatusCode> {
        let request = Request::post("/asleep-webhook")
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("x-api-key", API_KEY)
            .header("x-user-id", user_id)
            .body(Full::new(Bytes::from(body)))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            anyhow::Ok(status)
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .context("no response within 10 s")?
    }
}

/// Returns whether anything responds to HTTP on `port`: a rejected empty delivery is
/// enough to show the server is up.
pub async fn responds(port: u16) -> bool {
    let attempt = async {
        let mut connection = WebhookConnection::open(port).await?;
        connection.post("probe", String::new()).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Ok(_)))
}

/// Writes distinct `INFERENCE_COMPLETE` deliveries for one sender: each
/// has its own session id or `seq_num`, so no two bodies of a run are the
/// same and every one is stored.
pub struct DeliveryWriter {
    prefix: String,
    sent: u32,
    rng: SmallRng,
}

impl DeliveryWriter {
    /// `prefix` must differ between the writers of one run.
    pub fn new(prefix: String, seed: u64) -> Self {
        Self {
            prefix,
            sent: 0,
            rng: rand::SeedableRng::seed_from_u64(seed),
        }
    }

    /// Returns the next delivery for `user_id`.
    pub fn next(&mut self, user_id: &str) -> String {
        let session = self.sent / DELIVERIES_PER_SESSION;
        let seq_num = EPOCHS_PER_DELIVERY * (self.sent % DELIVERIES_PER_SESSION + 1) - 1;
        self.sent += 1;
        let session_id = format!("{}-{session}", self.prefix);
        self.body(user_id, &session_id, seq_num)
    }

    /// Returns a delivery of `user_id`'s session `session_id` ending at epoch
    /// `seq_num`, with a sleep-like stage walk and random snoring.
    pub fn body(&mut self, user_id: &str, session_id: &str, seq_num: u32) -> String {
        let mut stage: i32 = self.rng.random_range(0..4);
        let mut stages = Vec::with_capacity(EPOCHS_PER_DELIVERY as usize);
        let mut snoring = Vec::with_capacity(EPOCHS_PER_DELIVERY as usize);
        for _ in 0..EPOCHS_PER_DELIVERY {
            let step: f64 = self.rng.random();
            if step > 0.8 {
                stage = (stage + 1).min(3);
            } else if step > 0.6 {
                stage = (stage - 1).max(0);
            }
            stages.push(stage.to_string());
            snoring.push(if self.rng.random_bool(0.25) { "1" } else { "0" });
        }
        format!(
            concat!(
                r#"{{"event":"INFERENCE_COMPLETE","version":"V3","timestamp":"{timestamp}","#,
                r#""user_id":"{user_id}","session_id":"{session_id}","seq_num":{seq_num},"#,
                r#""inference_seq_num":{inference},"sleep_stages":[{stages}],"snoring_stages":[{snoring}]}}"#
            ),
            timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
            user_id = user_id,
            session_id = session_id,
            seq_num = seq_num,
            inference = seq_num / 10,
            stages = stages.join(","),
            snoring = snoring.join(","),
        )
    }
}
