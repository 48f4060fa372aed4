//! The live view over a real WebSocket: whole nights replayed in order,
//! shuffled and repeated, restarts, viewer authentication and room cleanup.

mod common;

use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use common::{
    Delivery, Hypnogram, NIGHTS, Night, TestServer, expired_token, inference_body, session_body, stages, viewer_token,
};
use reqwest::StatusCode;
use serde_json::Value;
use sleep_dashboard::statistics::{SleepStatistics, StageModel, Staging};
use tokio_tungstenite::tungstenite;

/// How long a test waits to be sure a message that should not exist does
/// not arrive. Messages that do exist arrive within milliseconds on loopback.
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn night_replayed_in_order_reaches_viewer() {
    for name in NIGHTS {
        let night = Night::load(name);
        let server = TestServer::start().await;
        let mut viewer = server.viewer(night.user_id()).await;
        assert_eq!(
            viewer.hypnogram,
            Hypnogram::default(),
            "{name}: a new user's snapshot is empty"
        );

        let mut expected = ExpectedTimeline::default();
        let mut final_message = Value::Null;
        for delivery in &night.deliveries {
            let answer = server.deliver(night.user_id(), &delivery.body).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{name} {}: {}",
                delivery.file,
                answer.body
            );
            assert_eq!(answer.body["status"], "accepted", "{name} {}", delivery.file);

            // In order, every result extends the night, so each delivery
            // produces exactly one message. The first one starts a new night,
            // which viewers receive as a whole snapshot.
            let new_night = viewer.hypnogram.session_id.is_none();
            let message = viewer.receive().await;
            if delivery.is_inference() {
                expected.apply(delivery);
                if new_night {
                    assert_eq!(message["type"], "snapshot", "{name} {}: {message}", delivery.file);
                    assert_eq!(message["session_id"], night.session_id());
                } else {
                    assert_eq!(message["type"], "update", "{name} {}: {message}", delivery.file);
                    assert_eq!(
                        message["seq_num"].as_u64(),
                        delivery.seq_num(),
                        "{name} {}",
                        delivery.file
                    );
                    assert_eq!(message["epoch_count"].as_u64(), delivery.seq_num().map(|seq| seq + 1));
                }
                assert_eq!(
                    viewer.hypnogram.sleep_stages, expected.sleep_stages,
                    "{name} {}",
                    delivery.file
                );
                assert_eq!(
                    viewer.hypnogram.snoring_stages, expected.snoring_stages,
                    "{name} {}",
                    delivery.file
                );
            } else {
                // Every result has arrived: the hypnogram so far ends at the
                // last result's epoch and contains its values.
                assert_last_result_shown(&night, &expected);
                final_message = message;
            }
        }

        assert_eq!(final_message["type"], "session_complete", "{name}: {final_message}");
        assert_eq!(
            final_message["report_url"].as_str(),
            Some(night.report_path().as_str()),
            "{name}"
        );
        assert_eq!(final_message["session_id"], night.session_id());
        assert_eq!(
            viewer.hypnogram.sleep_stages,
            night.sleep_stages(),
            "{name}: final sleep stages"
        );
        assert_eq!(
            viewer.hypnogram.snoring_stages,
            night.snoring_stages(),
            "{name}: final snoring stages"
        );
        assert!(viewer.hypnogram.complete);
        assert_eq!(
            final_message["start_time"].as_str().map(parse_time),
            night.truth["start_time"].as_str().map(parse_time),
            "{name}: the final report names the real start"
        );
        assert_eq!(final_message["start_time_estimated"], false, "{name}");
        assert_eq!(final_message["timezone"], night.truth["timezone"], "{name}");
        assert_headline_matches_stages(&final_message, &night);

        viewer.assert_silent(QUIET).await;
        viewer.close().await;
        server.stop().await;
    }
}

/// Checks the timeline assembled from every partial result: as long as the
/// last result reaches, and ending with that result's values.
fn assert_last_result_shown(night: &Night, expected: &ExpectedTimeline) {
    let last = night
        .deliveries
        .iter()
        .rev()
        .find(|delivery| delivery.is_inference())
        .expect("the night has partial results");
    let last_seq_num = last.seq_num().unwrap() as usize;
    assert_eq!(expected.sleep_stages.len(), last_seq_num + 1, "{}", night.name);

    let sleep = stages(last.fields(), "sleep_stages");
    let snoring = stages(last.fields(), "snoring_stages");
    let first = last_seq_num + 1 - sleep.len();
    assert_eq!(expected.sleep_stages[first..], sleep[..], "{}", night.name);
    assert_eq!(expected.snoring_stages[first..], snoring[..], "{}", night.name);
}

/// Checks the `headline` of a `session_complete` against the final stages.
fn assert_headline_matches_stages(message: &Value, night: &Night) {
    let sleep_epochs = night
        .sleep_stages()
        .iter()
        .filter(|stage| (1..=3).contains(*stage))
        .count() as i64;
    let headline = &message["headline"];
    assert_eq!(
        headline["total_sleep_seconds"].as_i64(),
        Some(sleep_epochs * 30),
        "{}",
        night.name
    );

    let start = parse_time(night.truth["start_time"].as_str().unwrap());
    let end = parse_time(night.truth["end_time"].as_str().unwrap());
    let in_bed = (end - start).num_seconds();
    assert_eq!(headline["time_in_bed_seconds"].as_i64(), Some(in_bed), "{}", night.name);
    // The percentage shows the sleep efficiency rounded to two decimals of
    // the ratio, as Asleep's calculator rounds it.
    let efficiency = headline["sleep_efficiency_percent"].as_f64().expect("sleep efficiency");
    let computed = (sleep_epochs as f64 * 30.0 / in_bed as f64 * 100.0).round();
    assert!(
        (efficiency - computed).abs() < 1e-6,
        "{}: {efficiency} vs {computed}",
        night.name
    );
}

fn parse_time(text: &str) -> DateTime<FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|error| panic!("{text:?} is not RFC 3339: {error}"))
}

/// The timeline the protocol promises, computed independently of the
/// server: each epoch contains the value of the highest `seq_num` that covered
/// it, and the final report replaces everything.
#[derive(Debug, Default)]
struct ExpectedTimeline {
    sleep_stages: Vec<i64>,
    snoring_stages: Vec<i64>,
    written_by: Vec<i64>,
    is_final: bool,
}

impl ExpectedTimeline {
    /// Applies a delivery and returns whether a viewer's hypnogram changed.
    fn apply(&mut self, delivery: &Delivery) -> bool {
        if !delivery.is_inference() {
            let report = &delivery.fields()["session"];
            self.sleep_stages = stages(report, "sleep_stages");
            self.snoring_stages = stages(report, "snoring_stages");
            self.is_final = true;
            return true;
        }
        if self.is_final {
            return false;
        }

        let seq_num = delivery.seq_num().unwrap() as i64;
        let sleep = stages(delivery.fields(), "sleep_stages");
        let snoring = stages(delivery.fields(), "snoring_stages");
        let first = (seq_num + 1) as usize - sleep.len();
        let end = (seq_num + 1) as usize;
        let mut changed = false;
        if end > self.sleep_stages.len() {
            self.sleep_stages.resize(end, -1);
            self.snoring_stages.resize(end, -1);
            self.written_by.resize(end, -1);
            changed = true;
        }
        for (offset, epoch) in (first..end).enumerate() {
            if self.written_by[epoch] > seq_num {
                continue;
            }
            self.written_by[epoch] = seq_num;
            if self.sleep_stages[epoch] != sleep[offset] || self.snoring_stages[epoch] != snoring[offset] {
                self.sleep_stages[epoch] = sleep[offset];
                self.snoring_stages[epoch] = snoring[offset];
                changed = true;
            }
        }
        changed
    }
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants): enough
/// to shuffle deterministically without another dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Shuffles `items` in place (Fisher-Yates).
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for last in (1..items.len()).rev() {
            let pick = (self.next() % (last as u64 + 1)) as usize;
            items.swap(last, pick);
        }
    }
}

#[tokio::test]
async fn shuffled_repeated_night_converges() {
    for (name, seed) in NIGHTS.into_iter().zip([7_u64, 2026]) {
        let night = Night::load(name);
        let mut order = night.deliveries.clone();
        Lcg(seed).shuffle(&mut order);
        assert_ne!(
            order.iter().map(|delivery| &delivery.file).collect::<Vec<_>>(),
            night
                .deliveries
                .iter()
                .map(|delivery| &delivery.file)
                .collect::<Vec<_>>(),
            "the shuffle must change the order"
        );

        let server = TestServer::start().await;
        let mut viewer = server.viewer(night.user_id()).await;
        let mut expected = ExpectedTimeline::default();
        for delivery in &order {
            let answer = server.deliver(night.user_id(), &delivery.body).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{name} {}: {}",
                delivery.file,
                answer.body
            );
            assert_eq!(answer.body["status"], "accepted", "{name} {}", delivery.file);

            // A delivery that changes the hypnogram produces one message and
            // one that does not produces none. A stray message would show up
            // as the next expected message or break the final silence check.
            // The first delivery of a night reaches viewers as a snapshot.
            if expected.apply(delivery) {
                let new_night = viewer.hypnogram.session_id.is_none();
                let message = viewer.receive().await;
                if new_night {
                    assert_eq!(message["type"], "snapshot", "{name} {}: {message}", delivery.file);
                } else if delivery.is_inference() {
                    assert_eq!(message["type"], "update", "{name} {}: {message}", delivery.file);
                    assert_eq!(
                        message["seq_num"].as_u64(),
                        delivery.seq_num(),
                        "{name} {}",
                        delivery.file
                    );
                } else {
                    assert_eq!(
                        message["type"], "session_complete",
                        "{name} {}: {message}",
                        delivery.file
                    );
                }
                assert_eq!(
                    viewer.hypnogram.sleep_stages, expected.sleep_stages,
                    "{name} {}",
                    delivery.file
                );
                assert_eq!(
                    viewer.hypnogram.snoring_stages, expected.snoring_stages,
                    "{name} {}",
                    delivery.file
                );
            }

            let repeat = server.deliver(night.user_id(), &delivery.body).await;
            assert_eq!(
                repeat.status,
                StatusCode::OK,
                "{name} {} repeated: {}",
                delivery.file,
                repeat.body
            );
            assert_eq!(repeat.body["status"], "duplicate", "{name} {} repeated", delivery.file);
        }
        viewer.assert_silent(QUIET).await;

        assert_eq!(viewer.hypnogram.sleep_stages, night.sleep_stages(), "{name}");
        assert_eq!(viewer.hypnogram.snoring_stages, night.snoring_stages(), "{name}");
        assert!(viewer.hypnogram.complete, "{name}");
        assert_eq!(
            server.event_count().await,
            night.deliveries.len() as i64,
            "{name}: repeats must not be stored"
        );
        viewer.close().await;

        // A viewer joining now loads the same night from the database.
        server.wait_for_rooms(0).await;
        let fresh = server.viewer(night.user_id()).await;
        assert_eq!(fresh.hypnogram.sleep_stages, night.sleep_stages(), "{name}");
        assert_eq!(fresh.hypnogram.snoring_stages, night.snoring_stages(), "{name}");
        assert_eq!(
            fresh.hypnogram.report_url.as_deref(),
            Some(night.report_path().as_str())
        );
        fresh.close().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn out_of_order_partials_match_in_order() {
    // Without the final report the partial results alone must converge to
    // the same timeline whatever their order.
    let night = Night::load("night-flat");
    let partials: Vec<Delivery> = night
        .deliveries
        .iter()
        .filter(|delivery| delivery.is_inference())
        .cloned()
        .collect();
    let mut reversed = partials.clone();
    reversed.reverse();

    let mut expected = ExpectedTimeline::default();
    for delivery in &partials {
        expected.apply(delivery);
    }

    let server = TestServer::start().await;
    for delivery in &reversed {
        let answer = server.deliver(night.user_id(), &delivery.body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}: {}", delivery.file, answer.body);
    }
    let viewer = server.viewer(night.user_id()).await;
    assert_eq!(viewer.hypnogram.sleep_stages, expected.sleep_stages);
    assert_eq!(viewer.hypnogram.snoring_stages, expected.snoring_stages);
    assert!(!viewer.hypnogram.complete);
    assert_eq!(viewer.hypnogram.report_url, None);
    viewer.close().await;
    server.stop().await;
}

/// Opens a viewer and returns its snapshot message as the server sent it.
async fn snapshot_of(server: &TestServer, user_id: &str) -> Value {
    let url = server.ws_url(user_id, Some(&viewer_token(user_id)));
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("opening the viewer WebSocket failed");
    let mut viewer = common::Viewer {
        socket,
        hypnogram: Hypnogram::default(),
    };
    let snapshot = viewer.next_message().await;
    assert_eq!(snapshot["type"], "snapshot");
    viewer.close().await;
    snapshot
}

#[tokio::test]
async fn restart_rebuilds_the_live_night() {
    // One complete night and one still in progress, for two users.
    let complete = Night::load("night-enveloped");
    let partial = Night::load("night-flat");
    let server = TestServer::start().await;
    complete.replay(&server).await;
    for delivery in partial
        .deliveries
        .iter()
        .filter(|delivery| delivery.is_inference())
        .take(30)
    {
        let answer = server.deliver(partial.user_id(), &delivery.body).await;
        assert_eq!(answer.status, StatusCode::OK);
    }

    let complete_before = snapshot_of(&server, complete.user_id()).await;
    let partial_before = snapshot_of(&server, partial.user_id()).await;
    assert_eq!(stages(&complete_before, "sleep_stages"), complete.sleep_stages());
    assert_eq!(complete_before["complete"], true);
    assert_eq!(partial_before["complete"], false);
    assert_eq!(stages(&partial_before, "sleep_stages").len(), 30 * 10 + 30);

    let server = server.restart().await;
    assert_eq!(
        server.server.state.rooms.len(),
        0,
        "a restarted server starts with no rooms"
    );
    assert_eq!(server.event_count().await, complete.deliveries.len() as i64 + 30);

    let complete_after = snapshot_of(&server, complete.user_id()).await;
    let partial_after = snapshot_of(&server, partial.user_id()).await;
    assert_eq!(complete_after, complete_before, "the complete night after the restart");
    assert_eq!(partial_after, partial_before, "the partial night after the restart");

    // The partial night keeps growing after the restart.
    let mut viewer = server.viewer(partial.user_id()).await;
    let next = partial
        .deliveries
        .iter()
        .filter(|delivery| delivery.is_inference())
        .nth(30)
        .unwrap();
    assert_eq!(
        server.deliver(partial.user_id(), &next.body).await.status,
        StatusCode::OK
    );
    let update = viewer.receive().await;
    assert_eq!(update["type"], "update");
    assert_eq!(viewer.hypnogram.sleep_stages.len() as u64, next.seq_num().unwrap() + 1);
    viewer.close().await;
    server.stop().await;
}

/// Returns the HTTP status and body of a rejected WebSocket handshake.
async fn rejected_handshake(url: String) -> (StatusCode, String) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("the WebSocket upgrade should have been rejected"),
        Err(tungstenite::Error::Http(response)) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            (status, body)
        }
        Err(other) => panic!("expected an HTTP error status, got {other}"),
    }
}

/// Returns the HTTP status of a rejected WebSocket handshake.
async fn rejected_status(url: String) -> StatusCode {
    rejected_handshake(url).await.0
}

#[tokio::test]
async fn viewer_socket_requires_valid_token() {
    let server = TestServer::start().await;
    let alice = "alice";
    let bob = "bob";
    let bob_body = inference_body(bob, "bob-night", 3, &[0, 1, 2, 3], &[0, 0, 0, 0]);
    assert_eq!(server.deliver(bob, &bob_body.to_string()).await.status, StatusCode::OK);

    assert_eq!(
        rejected_status(server.ws_url(bob, None)).await,
        StatusCode::UNAUTHORIZED,
        "no token"
    );
    assert_eq!(
        rejected_status(server.ws_url(bob, Some(&expired_token(bob)))).await,
        StatusCode::UNAUTHORIZED,
        "expired token"
    );
    let alice_on_bob = rejected_status(server.ws_url(bob, Some(&viewer_token(alice)))).await;
    assert!(
        alice_on_bob == StatusCode::UNAUTHORIZED || alice_on_bob == StatusCode::FORBIDDEN,
        "alice's token on bob's night: {alice_on_bob}"
    );
    assert_eq!(
        rejected_status(server.ws_url(bob, Some("v1.9999999999.forged"))).await,
        StatusCode::UNAUTHORIZED,
        "forged token"
    );
    assert_eq!(
        server.server.state.rooms.len(),
        0,
        "rejected viewers must not create rooms"
    );

    // The rejection is a JSON error that does not leak bob's night.
    let (_, body) = rejected_handshake(server.ws_url(bob, Some(&viewer_token(alice)))).await;
    let error: Value = serde_json::from_str(&body).unwrap_or_else(|error| panic!("not JSON ({error}): {body:?}"));
    assert!(
        error["error"].as_str().is_some_and(|message| !message.is_empty()),
        "{error}"
    );
    assert!(!body.contains("bob-night"), "the rejection leaks bob's session: {body}");

    // Alice's own token works, and shows only her (empty) night.
    let viewer = server.viewer(alice).await;
    assert_eq!(viewer.hypnogram.session_id, None);
    viewer.close().await;
    server.stop().await;
}

#[tokio::test]
async fn rooms_are_removed_when_viewers_leave() {
    const VIEWERS: usize = 5;
    let server = TestServer::start().await;
    let user = "room-user";

    let mut viewers = Vec::new();
    for _ in 0..VIEWERS {
        viewers.push(server.viewer(user).await);
    }
    assert_eq!(
        server.server.state.rooms.len(),
        1,
        "{VIEWERS} viewers of one user share one room"
    );

    // Every viewer receives the same broadcast.
    let body = inference_body(user, "room-night", 1, &[0, 1], &[0, 0]);
    assert_eq!(server.deliver(user, &body.to_string()).await.status, StatusCode::OK);
    for viewer in &mut viewers {
        let message = viewer.receive().await;
        assert_eq!(
            message["type"], "snapshot",
            "the first result of a new night is sent as a snapshot"
        );
        assert_eq!(viewer.hypnogram.sleep_stages, vec![0, 1]);
    }

    let other = server.viewer("other-user").await;
    assert_eq!(server.server.state.rooms.len(), 2);

    // Some viewers close cleanly, the others just drop the connection.
    let mut viewers = viewers.into_iter();
    for viewer in viewers.by_ref().take(VIEWERS / 2) {
        viewer.close().await;
    }
    assert_eq!(
        server.server.state.rooms.len(),
        2,
        "the room stays while viewers remain"
    );
    drop(viewers);
    server.wait_for_rooms(1).await;
    other.close().await;
    server.wait_for_rooms(0).await;

    // Deliveries for a user without viewers create no room.
    let next = inference_body(user, "room-night", 3, &[2, 2], &[0, 0]);
    assert_eq!(server.deliver(user, &next.to_string()).await.status, StatusCode::OK);
    assert_eq!(server.server.state.rooms.len(), 0);
    server.stop().await;
}

#[tokio::test]
async fn client_text_message_closes_socket() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("chatty").await;

    viewer.send_text("hello").await;

    let closed = close_code(&mut viewer.socket).await;
    assert_eq!(closed, Some(1003), "a client text message is an unsupported frame");
    server.wait_for_rooms(0).await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_viewers_with_going_away() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("sleeper").await;

    let shutdown = tokio::spawn(async move { server.stop().await });
    let code = close_code(&mut viewer.socket).await;
    assert_eq!(code, Some(1001));
    drop(viewer);
    shutdown.await.expect("shutting down failed");
}

/// Reads until the server closes the socket and returns the close code, or
/// `None` when the connection ended without a close frame.
async fn close_code<S>(socket: &mut S) -> Option<u16>
where
    S: futures_util::Stream<Item = Result<tungstenite::Message, tungstenite::Error>> + Unpin,
{
    use futures_util::StreamExt;

    tokio::time::timeout(common::WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    return frame.map(|frame| u16::from(frame.code));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the server did not close the socket")
}

#[tokio::test]
async fn socket_closes_when_link_expires() {
    let server = TestServer::start().await;
    let expires_at = chrono::Utc::now().timestamp() + 2;
    let token = sleep_dashboard::auth::ViewerKeys::new(common::SECRET).issue("brief", expires_at);
    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws_url("brief", Some(&token)))
        .await
        .expect("a token valid for two more seconds opens the socket");

    assert_eq!(
        close_code(&mut socket).await,
        Some(1008),
        "an expired link is a policy violation"
    );
    server.wait_for_rooms(0).await;
    server.stop().await;
}

#[tokio::test]
async fn socket_errors_are_json() {
    let server = TestServer::start().await;

    let no_user = server.get("/ws").await;
    assert_eq!(no_user.status(), StatusCode::BAD_REQUEST);
    let body: Value = no_user.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("user"), "{body}");

    let token = viewer_token("plain");
    let not_upgrade = server.get(&format!("/ws?user=plain&token={token}")).await;
    assert_eq!(not_upgrade.status(), StatusCode::BAD_REQUEST);
    let body: Value = not_upgrade.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn silent_client_is_closed_as_dead() {
    let heartbeat = sleep_dashboard::ws::Heartbeat {
        ping_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(400),
    };
    let server = TestServer::start_with(heartbeat).await;

    // A client that never reads never sends pongs, as if it vanished
    // without a close frame.
    let (socket, _) = tokio_tungstenite::connect_async(server.ws_url("vanished", Some(&viewer_token("vanished"))))
        .await
        .unwrap();
    server.wait_for_rooms(1).await;
    server.wait_for_rooms(0).await;
    drop(socket);
    server.stop().await;
}

/// Returns the `staging` value the protocol uses for a staging.
fn staging_name(staging: Staging) -> &'static str {
    match staging {
        Staging::TwoStage => "two_stage",
        Staging::FourStage => "four_stage",
    }
}

/// Converts stage values read from JSON to the codes the statistics take.
fn codes(values: &[i64]) -> Vec<i8> {
    values
        .iter()
        .map(|value| i8::try_from(*value).expect("stage values fit in i8"))
        .collect()
}

/// Checks a message's `staging` and `figures` against the statistics of
/// the given hypnogram, read with the staging `model` chooses, and its current stage
/// against a count done here: the run of equal stages at the end, with
/// every sleep code counted as sleep in a two-stage night.
fn assert_figures(
    message: &Value,
    sleep: &[i64],
    snoring: &[i64],
    end: Option<(DateTime<FixedOffset>, DateTime<FixedOffset>)>,
    model: StageModel,
    context: &str,
) {
    let sleep = codes(sleep);
    let snoring = codes(snoring);
    let staging = model.staging(&sleep);
    assert_eq!(message["staging"], staging_name(staging), "{context}: staging");

    // Without the final report any start gives the same durations.
    let (start, end) = match end {
        Some((start, end)) => (start, Some(end)),
        None => (parse_time("2026-01-01T00:00:00Z"), None),
    };
    let expected = SleepStatistics::compute(&sleep, &snoring, start, end, staging).expect("the night has epochs");
    let figures = &message["figures"];
    assert_eq!(
        figures["time_in_bed"].as_i64(),
        Some(expected.time_in_bed),
        "{context}: time_in_bed"
    );
    assert_eq!(
        figures["time_in_sleep"].as_i64(),
        Some(expected.time_in_sleep),
        "{context}: time_in_sleep"
    );
    assert_eq!(
        figures["sleep_efficiency"].as_f64(),
        Some(expected.sleep_efficiency),
        "{context}: sleep_efficiency"
    );
    assert_eq!(
        figures["time_in_wake"].as_i64(),
        Some(expected.time_in_wake),
        "{context}: time_in_wake"
    );
    assert_eq!(
        figures["time_in_light"].as_i64(),
        expected.time_in_light,
        "{context}: time_in_light"
    );
    assert_eq!(
        figures["time_in_deep"].as_i64(),
        expected.time_in_deep,
        "{context}: time_in_deep"
    );
    assert_eq!(
        figures["time_in_rem"].as_i64(),
        expected.time_in_rem,
        "{context}: time_in_rem"
    );

    let lane = |code: i8| match code {
        1..=3 if staging == Staging::TwoStage => 1,
        code => code,
    };
    let last = lane(*sleep.last().expect("the night has epochs"));
    let run = sleep.iter().rev().take_while(|code| lane(**code) == last).count();
    let current = &figures["current_stage"];
    assert_eq!(
        current["code"].as_i64(),
        Some(i64::from(last)),
        "{context}: current stage code"
    );
    assert_eq!(
        current["name"].as_str(),
        staging.name(last),
        "{context}: current stage name"
    );
    assert_eq!(current["epochs"].as_u64(), Some(run as u64), "{context}: current run");
    assert_eq!(
        current["seconds"].as_u64(),
        Some(run as u64 * 30),
        "{context}: current run"
    );
}

#[tokio::test]
async fn figures_follow_each_result() {
    for name in NIGHTS {
        let night = Night::load(name);
        let server = TestServer::start().await;
        let mut viewer = server.viewer(night.user_id()).await;
        let empty = snapshot_of(&server, night.user_id()).await;
        assert_eq!(empty["figures"], Value::Null, "{name}: a night without epochs");

        let session = (
            parse_time(night.truth["start_time"].as_str().unwrap()),
            parse_time(night.truth["end_time"].as_str().unwrap()),
        );
        let mut expected = ExpectedTimeline::default();
        let mut stagings = Vec::new();
        for (index, delivery) in night.deliveries.iter().enumerate() {
            let answer = server.deliver(night.user_id(), &delivery.body).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{name} {}: {}",
                delivery.file,
                answer.body
            );
            expected.apply(delivery);
            let message = viewer.receive().await;
            let context = format!("{name} {} ({})", delivery.file, message["type"]);
            let end = (!delivery.is_inference()).then_some(session);
            assert_figures(
                &message,
                &expected.sleep_stages,
                &expected.snoring_stages,
                end,
                StageModel::Automatic,
                &context,
            );
            stagings.push(message["staging"].as_str().unwrap().to_string());

            // A viewer joining mid-night gets the same figures in its snapshot.
            if index == 10 {
                let snapshot = snapshot_of(&server, night.user_id()).await;
                assert_eq!(snapshot["figures"], message["figures"], "{context}: snapshot");
                assert_eq!(snapshot["staging"], message["staging"], "{context}: snapshot");
            }
        }

        // Both nights begin with wake and light only, so automatic staging
        // reads them as two-stage until the first deep or REM epoch.
        assert_eq!(stagings.first().map(String::as_str), Some("two_stage"), "{name}");
        let switch = stagings
            .iter()
            .position(|staging| staging == "four_stage")
            .unwrap_or_else(|| panic!("{name}: staging never became four_stage"));
        assert!(
            stagings[switch..].iter().all(|staging| staging == "four_stage"),
            "{name}: staging went back to two_stage: {stagings:?}"
        );

        // The completed night's snapshot carries the final figures.
        let fresh = snapshot_of(&server, night.user_id()).await;
        assert_figures(
            &fresh,
            &night.sleep_stages(),
            &night.snoring_stages(),
            Some(session),
            StageModel::Automatic,
            &format!("{name} final snapshot"),
        );
        viewer.close().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn two_stage_server_sends_two_stage_staging() {
    let server = TestServer::start_configured(|config| config.stage_model = StageModel::TwoStage).await;
    let user = "basic-plan";
    let mut viewer = server.viewer(user).await;
    assert_eq!(snapshot_of(&server, user).await["staging"], "two_stage");

    // Deep and REM codes in a two-stage deployment count as sleep.
    let first_sleep = [0, 0, 1, 2, 3, 1];
    let first_snoring = [0, 0, 0, 1, 1, 0];
    let body = inference_body(user, "basic-night", 5, &first_sleep, &first_snoring);
    assert_eq!(server.deliver(user, &body.to_string()).await.status, StatusCode::OK);
    let snapshot = viewer.receive().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_figures(
        &snapshot,
        &first_sleep,
        &first_snoring,
        None,
        StageModel::TwoStage,
        "first result",
    );
    assert_eq!(snapshot["figures"]["time_in_sleep"], 120);
    assert_eq!(snapshot["figures"]["time_in_light"], Value::Null);
    assert_eq!(snapshot["figures"]["time_in_rem"], Value::Null);
    assert_eq!(snapshot["figures"]["current_stage"]["name"], "sleep");
    assert_eq!(snapshot["figures"]["current_stage"]["epochs"], 4);

    let body = inference_body(user, "basic-night", 7, &[0, 0], &[0, 0]);
    assert_eq!(server.deliver(user, &body.to_string()).await.status, StatusCode::OK);
    let update = viewer.receive().await;
    assert_eq!(update["type"], "update");
    assert_eq!(update["staging"], "two_stage");
    assert_eq!(update["figures"]["current_stage"]["name"], "wake");
    assert_eq!(update["figures"]["current_stage"]["epochs"], 2);
    assert_eq!(
        update["figures"]["time_in_wake"], 0,
        "wake after the last sleep epoch is no WASO"
    );

    let final_sleep = [0, 0, 1, 2, 3, 1, 0, 0];
    let final_snoring = [0; 8];
    let body = session_body(user, "basic-night", &final_sleep, &final_snoring);
    assert_eq!(server.deliver(user, &body.to_string()).await.status, StatusCode::OK);
    let complete = viewer.receive().await;
    assert_eq!(complete["type"], "session_complete");
    let start = parse_time("2026-11-20T23:00:00Z");
    assert_figures(
        &complete,
        &final_sleep,
        &final_snoring,
        Some((start, start + chrono::Duration::seconds(8 * 30))),
        StageModel::TwoStage,
        "final report",
    );
    viewer.close().await;
    server.stop().await;
}

#[tokio::test]
async fn current_stage_without_data() {
    let server = TestServer::start().await;
    let user = "gappy";
    let mut viewer = server.viewer(user).await;

    let body = inference_body(user, "gappy-night", 3, &[1, 1, -1, -1], &[0, 0, 0, 0]);
    assert_eq!(server.deliver(user, &body.to_string()).await.status, StatusCode::OK);
    let snapshot = viewer.receive().await;
    let current = &snapshot["figures"]["current_stage"];
    assert_eq!(current["code"], -1);
    assert_eq!(current["name"], Value::Null);
    assert_eq!(current["epochs"], 2);
    assert_eq!(
        snapshot["figures"]["sleep_efficiency"], 0.5,
        "unknown epochs lower the efficiency"
    );

    // A result after a gap: the epochs between are unknown, the last is REM.
    let body = inference_body(user, "gappy-night", 9, &[1, 3], &[0, 0]);
    assert_eq!(server.deliver(user, &body.to_string()).await.status, StatusCode::OK);
    let update = viewer.receive().await;
    assert_figures(
        &update,
        &viewer.hypnogram.sleep_stages,
        &viewer.hypnogram.snoring_stages,
        None,
        StageModel::Automatic,
        "after the gap",
    );
    assert_eq!(update["staging"], "four_stage");
    assert_eq!(update["figures"]["current_stage"]["name"], "rem");
    assert_eq!(update["figures"]["current_stage"]["epochs"], 1);
    viewer.close().await;
    server.stop().await;
}

/// Returns how many viewer sockets the server closed for `reason`.
fn closed_count(server: &TestServer, reason: sleep_dashboard::metrics::CloseReason) -> u64 {
    server
        .server
        .state
        .metrics
        .ws_closed
        .get_or_create(&sleep_dashboard::metrics::CloseLabels { reason })
        .get()
}

/// Polls `condition` until it holds, failing with `what` after [`common::WAIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn viewers_resync_after_restart() {
    let night = Night::load("night-flat");
    let server = TestServer::start().await;
    for delivery in night
        .deliveries
        .iter()
        .filter(|delivery| delivery.is_inference())
        .take(20)
    {
        assert_eq!(
            server.deliver(night.user_id(), &delivery.body).await.status,
            StatusCode::OK
        );
    }
    let before = snapshot_of(&server, night.user_id()).await;
    let mut viewers = Vec::new();
    for _ in 0..3 {
        viewers.push(server.viewer(night.user_id()).await);
    }

    let server = server.restart().await;

    for viewer in &mut viewers {
        assert_eq!(
            close_code(&mut viewer.socket).await,
            Some(1001),
            "a restart closes with going away"
        );
    }
    for (index, viewer) in viewers.iter_mut().enumerate() {
        let url = server.ws_url(night.user_id(), Some(&viewer_token(night.user_id())));
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("reconnecting failed");
        viewer.socket = socket;
        let first = viewer.next_message().await;
        assert_eq!(first, before, "viewer {index}: the first message after the restart");
    }
    for viewer in viewers {
        viewer.close().await;
    }
    server.stop().await;
}

/// Returns an `INFERENCE_COMPLETE` whose result covers epochs `0 ..= seq_num`,
/// all set to one stage, so every delivery rewrites the whole night and its
/// `update` message is as large as the night.
fn whole_night_result(user_id: &str, seq_num: i64) -> String {
    let stage = seq_num % 4;
    let length = seq_num as usize + 1;
    inference_body(user_id, "long-night", seq_num, &vec![stage; length], &vec![0; length]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_viewer_does_not_delay_others() {
    use sleep_dashboard::metrics::CloseReason;

    const DELIVERIES: i64 = 200;
    let send_timeout = Duration::from_secs(3);
    let server = TestServer::start_configured(|config| config.limits.ws_send_timeout = send_timeout).await;
    let user = "watched";

    // A client that completes the handshake and then never reads, with a
    // small receive buffer so the server's writes soon block.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.server.addr).await.unwrap();
    let (slow, _) = tokio_tungstenite::client_async(server.ws_url(user, Some(&viewer_token(user))), stream)
        .await
        .expect("the slow client's handshake failed");
    let reader = server.viewer(user).await;
    wait_until("both viewers are connected", || {
        server.server.state.metrics.ws_connections.get() == 2
    })
    .await;

    let reading = tokio::spawn(async move {
        let mut reader = reader;
        let mut types = Vec::new();
        while types.len() < DELIVERIES as usize {
            let message = reader.receive().await;
            types.push(message["type"].as_str().unwrap_or_default().to_string());
        }
        (reader, types)
    });

    // Each result is a whole night of about 5,000 epochs, so the updates
    // add up to megabytes, far more than the socket buffers hold.
    let mut slowest = Duration::ZERO;
    for index in 0..DELIVERIES {
        let body = whole_night_result(user, 5000 + index);
        let started = std::time::Instant::now();
        let answer = server.deliver(user, &body).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert!(
        slowest < send_timeout,
        "the slowest webhook took {slowest:?}, as long as a blocked send may last"
    );

    let (reader, types) = tokio::time::timeout(common::WAIT, reading)
        .await
        .expect("the reading viewer did not receive every message")
        .unwrap();
    let first_is_snapshot = types[0] == "snapshot";
    assert!(first_is_snapshot, "the first result of a new night is a snapshot");
    assert!(
        types[1..].iter().all(|kind| kind == "update"),
        "the reading viewer received every update, without resyncs: {types:?}"
    );
    let last = 5000 + DELIVERIES - 1;
    assert_eq!(reader.hypnogram.sleep_stages, vec![last % 4; last as usize + 1]);

    wait_until("the slow viewer is closed as slow", || {
        closed_count(&server, CloseReason::Slow) == 1
    })
    .await;
    wait_until("the connection gauge counts only the reader", || {
        server.server.state.metrics.ws_connections.get() == 1
    })
    .await;
    assert_eq!(server.server.state.rooms.len(), 1, "the reader keeps the room");
    let text = server.server.state.metrics.encode();
    assert!(
        text.contains(r#"sleep_dashboard_websocket_closed_total{reason="slow"} 1"#),
        "{text}"
    );
    drop(slow);
    reader.close().await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_client_frames_close_with_1009() {
    use sleep_dashboard::metrics::CloseReason;

    let server = TestServer::start().await;
    let limit = sleep_dashboard::ws::MAX_CLIENT_MESSAGE_BYTES;
    // Just over the limit, and far over what the WebSocket library buffers.
    let cases = [
        ("text", tungstenite::Message::text("t".repeat(limit + 1))),
        ("binary", tungstenite::Message::binary(vec![0u8; 1024 * 1024])),
    ];
    for (expected_closes, (kind, message)) in (1..).zip(cases) {
        let mut viewer = server.viewer("oversized").await;
        use futures_util::SinkExt;
        viewer.socket.send(message).await.unwrap();
        assert_eq!(
            close_code(&mut viewer.socket).await,
            Some(1009),
            "{kind} message over the limit"
        );
        wait_until("the close is counted as a protocol error", || {
            closed_count(&server, CloseReason::Protocol) == expected_closes
        })
        .await;
    }
    server.wait_for_rooms(0).await;
    server.stop().await;
}

#[tokio::test]
async fn client_binary_message_closes_with_1003() {
    use futures_util::SinkExt;
    use sleep_dashboard::metrics::CloseReason;

    let server = TestServer::start().await;
    let mut viewer = server.viewer("binary").await;
    viewer
        .socket
        .send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut viewer.socket).await, Some(1003));
    wait_until("the close is counted as a protocol error", || {
        closed_count(&server, CloseReason::Protocol) == 1
    })
    .await;
    server.stop().await;
}

/// Returns the resident set size of this process in bytes, from /proc.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm failed");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Linux on x86-64 and aarch64 uses 4 KiB pages unless configured otherwise.
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures the whole process's memory, so it must run alone; run by .ci/run"]
async fn vanished_clients_are_cleaned_up() {
    use sleep_dashboard::metrics::CloseReason;

    const CLIENTS: usize = 1000;
    const BATCH: usize = 100;
    const SILENT: usize = 50;
    /// Growth of the resident set allowed after all clients are gone: the
    /// allocator keeps some freed memory, but a leak of even 16 KiB per
    /// client would exceed it.
    const MEMORY_MARGIN: u64 = 16 * 1024 * 1024;

    let server = TestServer::start_configured(|config| {
        config.heartbeat = sleep_dashboard::ws::Heartbeat {
            ping_interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(400),
        };
        config.limits.ws_total = 2 * CLIENTS;
        config.limits.ws_per_user = 2 * CLIENTS;
    })
    .await;
    let runtime = tokio::runtime::Handle::current().metrics();
    let users: Vec<String> = (0..10).map(|index| format!("user-{index}")).collect();
    for user in &users {
        let body = inference_body(user, "night", 9, &[1; 10], &[0; 10]).to_string();
        assert_eq!(server.deliver(user, &body).await.status, StatusCode::OK);
    }

    // A first batch warms up the allocator, so the baseline includes the
    // memory it keeps after a batch of sockets is gone.
    let mut warm_up = Vec::new();
    for index in 0..BATCH {
        warm_up.push(server.viewer(&users[index % users.len()]).await);
    }
    for viewer in warm_up {
        viewer.close().await;
    }
    server.wait_for_rooms(0).await;
    let baseline_tasks = runtime.num_alive_tasks();
    let baseline_memory = resident_bytes();

    // Half the clients close cleanly, half drop the TCP stream without a
    // close frame.
    for batch in 0..CLIENTS / BATCH {
        let mut viewers = Vec::new();
        for index in 0..BATCH {
            viewers.push(server.viewer(&users[index % users.len()]).await);
        }
        assert_eq!(server.server.state.rooms.len(), users.len(), "batch {batch}");
        for (index, viewer) in viewers.into_iter().enumerate() {
            if index % 2 == 0 {
                viewer.close().await;
            } else {
                drop(viewer);
            }
        }
    }

    // Clients that keep the connection open but never answer a ping, as when
    // a phone loses its network, are found by the ping timeout.
    let mut silent = Vec::new();
    for index in 0..SILENT {
        let user = &users[index % users.len()];
        let (socket, _) = tokio_tungstenite::connect_async(server.ws_url(user, Some(&viewer_token(user))))
            .await
            .unwrap();
        silent.push(socket);
    }
    wait_until("the silent clients are closed as dead", || {
        closed_count(&server, CloseReason::Dead) >= SILENT as u64
    })
    .await;
    drop(silent);

    server.wait_for_rooms(0).await;
    wait_until("the connection gauge is back to 0", || {
        server.server.state.metrics.ws_connections.get() == 0
    })
    .await;
    assert_eq!(server.server.state.metrics.rooms.get(), 0, "the rooms gauge");
    wait_until("the runtime's tasks are back to the baseline", || {
        runtime.num_alive_tasks() <= baseline_tasks
    })
    .await;
    let memory = resident_bytes();
    eprintln!(
        "resident memory: {baseline_memory} bytes at the baseline, {memory} after {CLIENTS} clients; \
         tasks: {baseline_tasks} at the baseline, {} after",
        runtime.num_alive_tasks()
    );
    assert!(
        memory <= baseline_memory + MEMORY_MARGIN,
        "resident memory grew from {baseline_memory} to {memory} bytes"
    );
    server.stop().await;
}
