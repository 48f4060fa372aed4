//! Server-side hypnogram: the SVG drawn on report pages, readable without
//! JavaScript.
//!
//! The picture has one lane per sleep stage (wake, REM, light, deep from top
//! to bottom), a snoring lane below them and a time axis. Each run of equal
//! epochs is one rectangle; unknown epochs (-1) are left out of the lanes and
//! marked as gaps. `static/live.js` draws the same layout in the browser, so
//! the constants below have twins there.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Duration, DurationRound, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::payload::EPOCH_SECONDS;
use crate::report::{Stage, format_clock, format_duration};

/// Width of the drawing in user units; the SVG scales to its container.
const WIDTH: f64 = 960.0;
/// Room left of the lanes for the lane labels.
const LEFT: f64 = 72.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 8.0;
const LANE_HEIGHT: f64 = 36.0;
/// Space above and below a stage block inside its lane.
const BLOCK_INSET: f64 = 4.0;
const SNORING_GAP: f64 = 10.0;
const SNORING_HEIGHT: f64 = 18.0;
const AXIS_HEIGHT: f64 = 30.0;

const PLOT_WIDTH: f64 = WIDTH - LEFT - RIGHT;
const LANES_BOTTOM: f64 = TOP + LANE_HEIGHT * Stage::LANES.len() as f64;
const SNORING_TOP: f64 = LANES_BOTTOM + SNORING_GAP;
const AXIS_TOP: f64 = SNORING_TOP + SNORING_HEIGHT + 4.0;
const HEIGHT: f64 = AXIS_TOP + AXIS_HEIGHT;

/// Hour ticks are searched on this grid. Every UTC offset in use today is a
/// multiple of 15 minutes, so every full local hour lies on it.
const TICK_SEARCH_STEP_MINUTES: i64 = 15;

/// SVG markup, already escaped. Askama writes it unescaped, which is why
/// every text this module embeds goes through [`escape`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svg(String);

impl Svg {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Svg {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl askama::filters::HtmlSafe for Svg {}

/// The input of one drawing.
#[derive(Debug, Clone)]
pub struct Hypnogram<'a> {
    /// One value per epoch: -1 unknown, 0 wake, 1 light, 2 deep, 3 REM.
    pub sleep_stages: &'a [i8],
    /// One value per epoch: -1 unknown, 0 none, 1 snoring. May be shorter
    /// than `sleep_stages`; missing values count as unknown.
    pub snoring_stages: &'a [i8],
    /// Start of epoch 0 and the zone the axis shows clock times in. Without
    /// it the axis counts hours from the start.
    pub clock: Option<(DateTime<Utc>, Tz)>,
    /// Whether the start is estimated from arrival times, which the
    /// description then mentions.
    pub start_estimated: bool,
    /// The SVG's `<title>`.
    pub title: String,
}

/// One labelled mark on the time axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// Seconds from the start of epoch 0.
    pub offset_seconds: i64,
    pub label: String,
}

impl Hypnogram<'_> {
    /// Renders the hypnogram as an `<svg id="hypnogram">` element.
    pub fn render(&self) -> Svg {
        let epochs = self.sleep_stages.len();
        let mut svg = String::with_capacity(4096 + epochs * 8);
        let _ = write!(
            svg,
            r#"<svg id="hypnogram" class="hypnogram" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="hypnogram-title hypnogram-desc" data-epochs="{epochs}" data-epoch-seconds="{EPOCH_SECONDS}">"#
        );
        let _ = write!(
            svg,
            r#"<title id="hypnogram-title">{}</title><desc id="hypnogram-desc">{}</desc>"#,
            escape(&self.title),
            escape(&self.description())
        );
        self.write_lanes(&mut svg);
        self.write_gaps(&mut svg);
        self.write_stages(&mut svg);
        self.write_snoring(&mut svg);
        self.write_axis(&mut svg);
        svg.push_str("</svg>");
        Svg(svg)
    }

    /// Describes the picture in words for screen readers and text browsers.
    fn description(&self) -> String {
        let epochs = self.sleep_stages.len();
        if epochs == 0 {
            return "No epochs recorded yet.".to_string();
        }
        let length = format_duration(epochs as i64 * EPOCH_SECONDS);
        let mut text = match self.clock {
            Some((start, zone)) => format!(
                "From {} to {} ({}{}), {length} in {epochs} epochs of {EPOCH_SECONDS} seconds.",
                format_clock(&start, zone),
                format_clock(&self.end(start), zone),
                zone.name(),
                if self.start_estimated { ", estimated" } else { "" },
            ),
            None => format!("{length} in {epochs} epochs of {EPOCH_SECONDS} seconds."),
        };
        text.push_str(" Lanes from top to bottom: wake, REM, light sleep, deep sleep, then snoring.");
        let unknown = self
            .sleep_stages
            .iter()
            .filter(|stage| Stage::from_code(**stage).is_none())
            .count();
        if unknown > 0 {
            let _ = write!(text, " {unknown} epochs have no data and are left as gaps.");
        }
        text
    }

    fn end(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        start + Duration::seconds(self.sleep_stages.len() as i64 * EPOCH_SECONDS)
    }

    /// Returns the x coordinate of the start of `epoch`.
    fn x(&self, epoch: usize) -> f64 {
        LEFT + epoch as f64 * PLOT_WIDTH / self.sleep_stages.len().max(1) as f64
    }

    fn write_lanes(&self, svg: &mut String) {
        svg.push_str(r#"<g class="lanes">"#);
        for (index, stage) in Stage::LANES.iter().enumerate() {
            let top = lane_top(*stage);
            let fill = if index % 2 == 0 { "#f4f4f4" } else { "#fbfbfb" };
            let _ = write!(
                svg,
                r#"<rect class="lane lane-{name}" data-stage="{name}" x="{LEFT}" y="{top}" width="{PLOT_WIDTH}" height="{LANE_HEIGHT}" fill="{fill}"/><text class="lane-label" x="{label_x}" y="{label_y}" text-anchor="end" dominant-baseline="middle">{label}</text>"#,
                name = stage.name(),
                label = stage.label(),
                label_x = LEFT - 8.0,
                label_y = top + LANE_HEIGHT / 2.0,
            );
        }
        let _ = write!(
            svg,
            r##"<rect class="lane lane-snoring" x="{LEFT}" y="{SNORING_TOP}" width="{PLOT_WIDTH}" height="{SNORING_HEIGHT}" fill="#f4f4f4"/><text class="lane-label" x="{label_x}" y="{label_y}" text-anchor="end" dominant-baseline="middle">Snoring</text>"##,
            label_x = LEFT - 8.0,
            label_y = SNORING_TOP + SNORING_HEIGHT / 2.0,
        );
        svg.push_str("</g>");
    }

    fn write_gaps(&self, svg: &mut String) {
        svg.push_str(r#"<g class="gaps">"#);
        for run in runs(self.sleep_stages).filter(|run| Stage::from_code(run.value).is_none()) {
            let _ = write!(
                svg,
                r##"<rect class="gap" data-start="{start}" data-epochs="{length}" x="{x:.2}" y="{TOP}" width="{width:.2}" height="{height}" fill="#d0d0d0" fill-opacity="0.5"><title>{duration} without data</title></rect>"##,
                start = run.start,
                length = run.length,
                x = self.x(run.start),
                width = self.x(run.start + run.length) - self.x(run.start),
                height = LANES_BOTTOM - TOP,
                duration = format_duration(run.length as i64 * EPOCH_SECONDS),
            );
        }
        svg.push_str("</g>");
    }

    fn write_stages(&self, svg: &mut String) {
        svg.push_str(r#"<g class="stages">"#);
        let mut transitions = String::new();
        let mut previous: Option<(Stage, usize)> = None;
        for run in runs(self.sleep_stages) {
            let Some(stage) = Stage::from_code(run.value) else {
                previous = None;
                continue;
            };
            let x = self.x(run.start);
            let _ = write!(
                svg,
                r#"<rect class="stage stage-{name}" data-stage="{name}" data-start="{start}" data-epochs="{length}" x="{x:.2}" y="{y}" width="{width:.2}" height="{height}" fill="{fill}"/>"#,
                name = stage.name(),
                start = run.start,
                length = run.length,
                y = lane_top(stage) + BLOCK_INSET,
                width = self.x(run.start + run.length) - x,
                height = LANE_HEIGHT - 2.0 * BLOCK_INSET,
                fill = stage_fill(stage),
            );
            // A vertical line joins adjacent runs, so the picture reads as
            // the usual stepped hypnogram; a gap breaks the line.
            if let Some((before, end)) = previous.filter(|(_, end)| *end == run.start) {
                let _ = write!(
                    transitions,
                    "M{x:.2} {from}V{to}",
                    x = self.x(end),
                    from = lane_top(before) + LANE_HEIGHT / 2.0,
                    to = lane_top(stage) + LANE_HEIGHT / 2.0,
                );
            }
            previous = Some((stage, run.start + run.length));
        }
        if !transitions.is_empty() {
            let _ = write!(
                svg,
                r##"<path class="transitions" d="{transitions}" stroke="#555" stroke-width="1" fill="none"/>"##
            );
        }
        svg.push_str("</g>");
    }

    fn write_snoring(&self, svg: &mut String) {
        svg.push_str(r#"<g class="snoring">"#);
        let snoring = &self.snoring_stages[..self.snoring_stages.len().min(self.sleep_stages.len())];
        for run in runs(snoring).filter(|run| run.value == 1) {
            let x = self.x(run.start);
            let _ = write!(
                svg,
                r##"<rect class="snore" data-start="{start}" data-epochs="{length}" x="{x:.2}" y="{SNORING_TOP}" width="{width:.2}" height="{SNORING_HEIGHT}" fill="#c8553d"/>"##,
                start = run.start,
                length = run.length,
                width = self.x(run.start + run.length) - x,
            );
        }
        svg.push_str("</g>");
    }

    fn write_axis(&self, svg: &mut String) {
        let epochs = self.sleep_stages.len();
        let ticks = match self.clock {
            Some((start, zone)) => hour_ticks(start, self.end(start), zone),
            None => elapsed_ticks(epochs as i64 * EPOCH_SECONDS),
        };
        let _ = write!(
            svg,
            r##"<g class="axis"><line class="axis-line" x1="{LEFT}" y1="{AXIS_TOP}" x2="{right}" y2="{AXIS_TOP}" stroke="#555"/>"##,
            right = LEFT + PLOT_WIDTH,
        );
        let total_seconds = (epochs as i64 * EPOCH_SECONDS).max(1) as f64;
        for tick in ticks {
            let x = LEFT + tick.offset_seconds as f64 / total_seconds * PLOT_WIDTH;
            // Labels at the ends are anchored inward so they stay inside.
            let anchor = if x < LEFT + 24.0 {
                "start"
            } else if x > LEFT + PLOT_WIDTH - 24.0 {
                "end"
            } else {
                "middle"
            };
            let _ = write!(
                svg,
                r##"<g class="tick" data-offset-seconds="{offset}"><line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{tick_bottom}" stroke="#999" stroke-width="0.5" stroke-dasharray="2 3"/><text x="{x:.2}" y="{text_y}" text-anchor="{anchor}">{label}</text></g>"##,
                offset = tick.offset_seconds,
                tick_bottom = AXIS_TOP + 5.0,
                text_y = AXIS_TOP + 20.0,
                label = escape(&tick.label),
            );
        }
        svg.push_str("</g>");
    }
}

fn lane_top(stage: Stage) -> f64 {
    let index = Stage::LANES.iter().position(|lane| *lane == stage).unwrap_or(0);
    TOP + index as f64 * LANE_HEIGHT
}

/// Colours for a stylesheet-free rendering; `static/style.css` sets the same.
fn stage_fill(stage: Stage) -> &'static str {
    match stage {
        Stage::Wake => "#f2a541",
        Stage::Rem => "#8e5bd1",
        Stage::Light => "#72a9e0",
        Stage::Deep => "#1f3f8f",
    }
}

/// Returns hours between hour ticks, so a long night keeps its labels apart.
fn tick_step_hours(duration_seconds: i64) -> u32 {
    const HOUR: i64 = 3600;
    if duration_seconds <= 12 * HOUR {
        1
    } else if duration_seconds <= 24 * HOUR {
        2
    } else if duration_seconds <= 36 * HOUR {
        3
    } else {
        4
    }
}

/// Returns a tick at every full local hour in `zone` from `start` to `end`,
/// both included, every second or more hours for long nights.
///
/// Ticks are found by walking UTC instants rather than local times, so a
/// local hour that occurs twice when daylight saving time ends gets two
/// ticks and a skipped one gets none. When the night crosses an offset
/// change, every label carries the zone abbreviation (`01:00 EDT`,
/// `01:00 EST`) to tell the repeated hours apart.
pub fn hour_ticks(start: DateTime<Utc>, end: DateTime<Utc>, zone: Tz) -> Vec<Tick> {
    let step_hours = tick_step_hours((end - start).num_seconds());
    let offset_changes = zone.offset_from_utc_datetime(&start.naive_utc()).fix()
        != zone.offset_from_utc_datetime(&end.naive_utc()).fix();
    let search_step = Duration::minutes(TICK_SEARCH_STEP_MINUTES);
    let Ok(floor) = start.duration_trunc(search_step) else {
        return Vec::new();
    };
    let mut instant = if floor < start { floor + search_step } else { floor };

    let mut ticks = Vec::new();
    while instant <= end {
        let local = instant.with_timezone(&zone);
        if local.minute() == 0 && local.hour() % step_hours == 0 {
            let format = if offset_changes { "%H:%M %Z" } else { "%H:%M" };
            ticks.push(Tick {
                offset_seconds: (instant - start).num_seconds(),
                label: local.format(format).to_string(),
            });
        }
        instant += search_step;
    }
    ticks
}

/// Returns ticks counting hours from the start, for a night whose start is
/// unknown.
fn elapsed_ticks(duration_seconds: i64) -> Vec<Tick> {
    let step = i64::from(tick_step_hours(duration_seconds));
    (0..=duration_seconds / 3600)
        .filter(|hour| hour % step == 0)
        .map(|hour| Tick {
            offset_seconds: hour * 3600,
            label: format!("{hour} h"),
        })
        .collect()
}

/// A run of equal values.
struct Run {
    start: usize,
    length: usize,
    value: i8,
}

fn runs(values: &[i8]) -> impl Iterator<Item = Run> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let value = *values.get(start)?;
        let length = values[start..].iter().take_while(|other| **other == value).count();
        let run = Run { start, length, value };
        start += length;
        Some(run)
    })
}

/// Escapes text for SVG element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn labels(ticks: &[Tick]) -> Vec<&str> {
        ticks.iter().map(|tick| tick.label.as_str()).collect()
    }

    fn hypnogram<'a>(sleep_stages: &'a [i8], snoring_stages: &'a [i8]) -> Hypnogram<'a> {
        Hypnogram {
            sleep_stages,
            snoring_stages,
            clock: None,
            start_estimated: false,
            title: "Hypnogram".to_string(),
        }
    }

    /// Returns the value of `attribute` in the first element that contains `marker`.
    fn attribute(svg: &str, marker: &str, attribute: &str) -> f64 {
        let element_start = svg[..svg.find(marker).unwrap()].rfind('<').unwrap();
        let element = &svg[element_start..element_start + svg[element_start..].find('>').unwrap()];
        let value_start = element.find(&format!(" {attribute}=\"")).unwrap() + attribute.len() + 3;
        element[value_start..value_start + element[value_start..].find('"').unwrap()]
            .parse()
            .unwrap()
    }

    #[test]
    fn lanes_run_top_to_bottom() {
        let svg = hypnogram(&[0, 1, 2, 3], &[0, 0, 1, 0]).render();
        let svg = svg.as_str();
        let tops: Vec<f64> = ["lane-wake", "lane-rem", "lane-light", "lane-deep", "lane-snoring"]
            .iter()
            .map(|lane| attribute(svg, lane, "y"))
            .collect();
        assert!(
            tops.windows(2).all(|pair| pair[0] < pair[1]),
            "lanes out of order: {tops:?}"
        );
        for label in [">Wake<", ">REM<", ">Light<", ">Deep<", ">Snoring<"] {
            assert!(svg.contains(label), "missing lane label {label}");
        }
        for stage in ["wake", "rem", "light", "deep"] {
            assert_eq!(
                svg.matches(&format!("class=\"stage stage-{stage}\"")).count(),
                1,
                "{stage}"
            );
        }
        assert_eq!(svg.matches("class=\"snore\"").count(), 1);
        assert!(svg.contains(r#"data-epochs="4""#));
    }

    #[test]
    fn unknown_epochs_are_gaps() {
        let svg = hypnogram(&[0, 0, -1, -1, -1, 1, 1], &[0, 0, -1, -1, -1, 1, 0]).render();
        let svg = svg.as_str();
        assert_eq!(svg.matches("class=\"gap\"").count(), 1);
        assert!(svg.contains(r#"class="gap" data-start="2" data-epochs="3""#));
        assert!(svg.contains(r#"data-stage="wake" data-start="0" data-epochs="2""#));
        assert!(svg.contains(r#"data-stage="light" data-start="5" data-epochs="2""#));
        assert_eq!(
            svg.matches("class=\"stage ").count(),
            2,
            "no stage block covers the gap"
        );
        assert!(!svg.contains("<path"), "a gap breaks the transition line");
        assert!(svg.contains("3 epochs have no data"));
    }

    #[test]
    fn adjacent_runs_are_joined() {
        let svg = hypnogram(&[0, 1, 1, 2], &[]).render();
        let path_start = svg.as_str().find(r#"class="transitions" d=""#).unwrap() + 23;
        let path = &svg.as_str()[path_start..path_start + svg.as_str()[path_start..].find('"').unwrap()];
        assert_eq!(path.matches('M').count(), 2, "{path}");
    }

    #[test]
    fn empty_night_renders_lanes_only() {
        let svg = hypnogram(&[], &[]).render();
        let svg = svg.as_str();
        assert!(svg.contains(r#"data-epochs="0""#));
        assert!(svg.contains("No epochs recorded yet."));
        assert!(!svg.contains("class=\"stage "));
        assert!(svg.contains("lane-deep"));
    }

    #[test]
    fn seoul_night_crosses_midnight() {
        // 23:47:07 to 07:17:07 KST, the enveloped fixture's night.
        let start = utc("2026-11-20T14:47:07Z");
        let ticks = hour_ticks(start, utc("2026-11-20T22:17:07Z"), "Asia/Seoul".parse().unwrap());
        assert_eq!(
            labels(&ticks),
            ["00:00", "01:00", "02:00", "03:00", "04:00", "05:00", "06:00", "07:00"]
        );
        assert_eq!(ticks[0].offset_seconds, 13 * 60 - 7);
        assert_eq!(ticks[7].offset_seconds, 13 * 60 - 7 + 7 * 3600);
    }

    #[test]
    fn dst_end_repeats_an_hour() {
        // 22:00 EDT on 31 October 2026 to 07:00 EST on 1 November: clocks
        // fall back from 02:00 EDT to 01:00 EST in between.
        let start = utc("2026-11-01T02:00:00Z");
        let ticks = hour_ticks(start, utc("2026-11-01T12:00:00Z"), "America/New_York".parse().unwrap());
        assert_eq!(
            labels(&ticks),
            [
                "22:00 EDT",
                "23:00 EDT",
                "00:00 EDT",
                "01:00 EDT",
                "01:00 EST",
                "02:00 EST",
                "03:00 EST",
                "04:00 EST",
                "05:00 EST",
                "06:00 EST",
                "07:00 EST",
            ]
        );
        let offsets: Vec<i64> = ticks.iter().map(|tick| tick.offset_seconds).collect();
        assert!(offsets.windows(2).all(|pair| pair[1] - pair[0] == 3600), "{offsets:?}");
    }

    #[test]
    fn zone_with_half_hour_offset_gets_local_hours() {
        let start = utc("2026-03-01T18:10:00Z");
        let ticks = hour_ticks(start, utc("2026-03-01T21:00:00Z"), "Asia/Kolkata".parse().unwrap());
        assert_eq!(labels(&ticks), ["00:00", "01:00", "02:00"]);
        assert_eq!(ticks[0].offset_seconds, 20 * 60);
    }

    #[test]
    fn long_night_spaces_ticks() {
        let start = utc("2026-03-01T00:00:00Z");
        let ticks = hour_ticks(start, utc("2026-03-01T20:00:00Z"), Tz::UTC);
        assert_eq!(ticks.len(), 11);
        assert_eq!(ticks[1].label, "02:00");
    }

    #[test]
    fn axis_shows_clock_times_in_the_zone() {
        let stages = vec![1; 8 * 120];
        let mut drawing = hypnogram(&stages, &[]);
        drawing.clock = Some((utc("2026-11-20T14:47:07Z"), "Asia/Seoul".parse().unwrap()));
        drawing.start_estimated = true;
        let svg = drawing.render();
        assert!(svg.as_str().contains(">00:00</text>"));
        assert!(svg.as_str().contains("From 23:47 to 07:47 (Asia/Seoul, estimated)"));
    }

    #[test]
    fn embedded_text_is_escaped() {
        let mut drawing = hypnogram(&[0], &[0]);
        drawing.title = "Night of <script>alert(1)</script> & \"friends\"".to_string();
        let svg = drawing.render();
        assert!(!svg.as_str().contains("<script>"));
        assert!(
            svg.as_str()
                .contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;friends&quot;")
        );
    }
}
