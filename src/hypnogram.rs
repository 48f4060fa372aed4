//! Server-side hypnogram: the SVG drawn on report and live pages, readable
//! without JavaScript.
//!
//! The picture has one lane per sleep stage (wake, REM, light, deep from top
//! to bottom, or wake and sleep for a two-stage night), a snoring lane below
//! them and a time axis. Each run of epochs in one lane is one rectangle;
//! unknown epochs (-1) are left out of the lanes and marked as gaps. A
//! report's drawing also marks sleep onset and the end of each sleep cycle
//! with dashed lines and shades every WASO episode. `static/live.js` draws
//! the live page's four-lane layout in the browser, so the constants below
//! have twins there.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Duration, DurationRound, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::payload::EPOCH_SECONDS;
use crate::report::{NightClock, format_duration};
use crate::statistics::{DEEP, LIGHT, REM, SleepStatistics, Staging, UNKNOWN, WAKE, is_sleep};

/// Width of the drawing in user units; the SVG scales to its container.
const WIDTH: f64 = 960.0;
/// Room left of the lanes for the lane labels.
const LEFT: f64 = 72.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 8.0;
/// Room above the lanes of a report's drawing for the labels of the
/// sleep-cycle boundaries.
const MARK_ROW_HEIGHT: f64 = 16.0;
const LANE_HEIGHT: f64 = 36.0;
/// Space above and below a stage block inside its lane.
const BLOCK_INSET: f64 = 4.0;
const SNORING_GAP: f64 = 10.0;
const SNORING_HEIGHT: f64 = 18.0;
const AXIS_HEIGHT: f64 = 30.0;

const PLOT_WIDTH: f64 = WIDTH - LEFT - RIGHT;

/// Hour ticks are searched on this grid. Every UTC offset in use today is a
/// multiple of 15 minutes, so every full local hour lies on it.
const TICK_SEARCH_STEP_MINUTES: i64 = 15;

/// SVG markup, already escaped. Askama writes it unescaped, which is why
/// every text this module embeds goes through [`escape`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svg(String);

impl Svg {
    /// Wraps markup whose embedded texts went through [`escape`].
    pub(crate) fn new(markup: String) -> Self {
        Svg(markup)
    }

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

/// A run of epochs drawn in one lane, or of epochs without data: one row of
/// the hypnogram's data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePeriod {
    pub start_epoch: usize,
    pub epochs: usize,
    /// The lane's stage code, which is 1 for any sleep in a two-stage
    /// night; -1 for epochs without data.
    pub code: i8,
}

/// Splits a hypnogram into the runs its lanes draw. In a two-stage night
/// every sleep code is drawn in the sleep lane, so light, deep and REM
/// epochs side by side make one period.
pub fn stage_periods(sleep_stages: &[i8], staging: Staging) -> Vec<StagePeriod> {
    let lanes: Vec<i8> = sleep_stages.iter().map(|code| lane_code(staging, *code)).collect();
    runs(&lanes)
        .map(|run| StagePeriod {
            start_epoch: run.start,
            epochs: run.length,
            code: run.value,
        })
        .collect()
}

/// Returns the lane a stage code is drawn in, as a stage code.
fn lane_code(staging: Staging, code: i8) -> i8 {
    match staging {
        Staging::TwoStage if is_sleep(code) => LIGHT,
        Staging::TwoStage if code == WAKE => WAKE,
        Staging::FourStage if (WAKE..=REM).contains(&code) => code,
        _ => UNKNOWN,
    }
}

/// Vertical positions of one drawing, which depend on its number of lanes
/// and on whether it has a row for cycle labels.
#[derive(Debug, Clone, Copy)]
struct Layout {
    top: f64,
    staging: Staging,
}

impl Layout {
    fn lanes_bottom(&self) -> f64 {
        self.top + LANE_HEIGHT * self.staging.lanes().len() as f64
    }

    fn snoring_top(&self) -> f64 {
        self.lanes_bottom() + SNORING_GAP
    }

    fn axis_top(&self) -> f64 {
        self.snoring_top() + SNORING_HEIGHT + 4.0
    }

    fn height(&self) -> f64 {
        self.axis_top() + AXIS_HEIGHT
    }

    /// Returns the top of a lane code's lane.
    fn lane_top(&self, code: i8) -> f64 {
        let index = self.staging.lanes().iter().position(|lane| *lane == code).unwrap_or(0);
        self.top + index as f64 * LANE_HEIGHT
    }
}

impl Hypnogram<'_> {
    /// Renders the live page's drawing: four lanes and no marks, the layout
    /// `static/live.js` redraws as results arrive.
    pub fn render(&self) -> Svg {
        self.render_report(Staging::FourStage, None)
    }

    /// Renders a report's drawing with the lanes of `staging`. With
    /// `statistics`, dashed lines mark sleep onset and the end of each sleep
    /// cycle, and shaded bands mark the WASO episodes.
    pub fn render_report(&self, staging: Staging, statistics: Option<&SleepStatistics>) -> Svg {
        let layout = Layout {
            top: if statistics.is_some() {
                TOP + MARK_ROW_HEIGHT
            } else {
                TOP
            },
            staging,
        };
        let epochs = self.sleep_stages.len();
        let periods = stage_periods(self.sleep_stages, staging);
        let mut svg = String::with_capacity(4096 + epochs * 8);
        let _ = write!(
            svg,
            r#"<svg id="hypnogram" class="hypnogram" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="hypnogram-title hypnogram-desc" data-epochs="{epochs}" data-epoch-seconds="{EPOCH_SECONDS}" data-staging="{staging}">"#,
            height = layout.height(),
            staging = staging_name(staging),
        );
        let _ = write!(
            svg,
            r#"<title id="hypnogram-title">{}</title><desc id="hypnogram-desc">{}</desc>"#,
            escape(&self.title),
            escape(&self.description(staging, statistics))
        );
        self.write_lanes(&mut svg, layout);
        if let Some(statistics) = statistics {
            self.write_waso(&mut svg, layout, statistics);
        }
        self.write_gaps(&mut svg, layout, &periods);
        self.write_stages(&mut svg, layout, &periods);
        if let Some(statistics) = statistics {
            self.write_cycle_boundaries(&mut svg, layout, statistics);
        }
        self.write_snoring(&mut svg, layout);
        self.write_axis(&mut svg, layout);
        svg.push_str("</svg>");
        Svg(svg)
    }

    /// Describes the picture in words for screen readers and text browsers.
    fn description(&self, staging: Staging, statistics: Option<&SleepStatistics>) -> String {
        let epochs = self.sleep_stages.len();
        if epochs == 0 {
            return "No epochs recorded yet.".to_string();
        }
        let length = format_duration(epochs as i64 * EPOCH_SECONDS);
        let mut text = match self.clock {
            Some((start, zone)) => {
                let clock = NightClock::new(zone, start, self.end(start));
                format!(
                    "From {} to {} ({}{}), {length} in {epochs} epochs of {EPOCH_SECONDS} seconds.",
                    clock.format(&start),
                    clock.format(&self.end(start)),
                    zone.name(),
                    if self.start_estimated { ", estimated" } else { "" },
                )
            }
            None => format!("{length} in {epochs} epochs of {EPOCH_SECONDS} seconds."),
        };
        let lanes: Vec<&str> = staging.lanes().iter().filter_map(|code| staging.label(*code)).collect();
        let _ = write!(text, " Lanes from top to bottom: {}, then Snoring.", lanes.join(", "));
        let unknown = self
            .sleep_stages
            .iter()
            .filter(|code| lane_code(staging, **code) == UNKNOWN)
            .count();
        match unknown {
            0 => {}
            1 => text.push_str(" 1 epoch has no data and is left as a gap."),
            _ => {
                let _ = write!(text, " {unknown} epochs have no data and are left as gaps.");
            }
        }
        if let Some(statistics) = statistics {
            if let Some(onset) = statistics.sleep_onset_epoch {
                let _ = write!(text, " A dashed line marks sleep onset at {}", self.time_label(onset));
                match statistics.cycle_end_epochs.len() {
                    0 => text.push('.'),
                    1 => text.push_str(", another the end of the one sleep cycle."),
                    cycles => {
                        let _ = write!(text, ", others the end of each of {cycles} sleep cycles.");
                    }
                }
            }
            match statistics.waso_episodes.len() {
                0 => {}
                1 => text.push_str(" A shaded band marks the one awakening after sleep onset (WASO)."),
                count => {
                    let _ = write!(text, " Shaded bands mark {count} awakenings after sleep onset (WASO).");
                }
            }
        }
        text
    }

    fn end(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        start + Duration::seconds(self.sleep_stages.len() as i64 * EPOCH_SECONDS)
    }

    /// Returns when an epoch starts: a clock time in the night's zone, or
    /// the time since the start when the start is unknown.
    fn time_label(&self, epoch: usize) -> String {
        let offset = Duration::seconds(epoch as i64 * EPOCH_SECONDS);
        match self.clock {
            Some((start, zone)) => NightClock::new(zone, start, self.end(start)).format(&(start + offset)),
            None => format!("{} after the start", format_duration(offset.num_seconds())),
        }
    }

    /// Returns the x coordinate of the start of `epoch`.
    fn x(&self, epoch: usize) -> f64 {
        LEFT + epoch as f64 * PLOT_WIDTH / self.sleep_stages.len().max(1) as f64
    }

    fn write_lanes(&self, svg: &mut String, layout: Layout) {
        svg.push_str(r#"<g class="lanes">"#);
        for (index, code) in layout.staging.lanes().iter().enumerate() {
            let top = layout.lane_top(*code);
            let fill = if index % 2 == 0 { "#f4f4f4" } else { "#fbfbfb" };
            let _ = write!(
                svg,
                r#"<rect class="lane lane-{name}" data-stage="{name}" x="{LEFT}" y="{top}" width="{PLOT_WIDTH}" height="{LANE_HEIGHT}" fill="{fill}"/><text class="lane-label" x="{label_x}" y="{label_y}" text-anchor="end" dominant-baseline="middle">{label}</text>"#,
                name = layout.staging.name(*code).unwrap_or("unknown"),
                label = layout.staging.label(*code).unwrap_or("No data"),
                label_x = LEFT - 8.0,
                label_y = top + LANE_HEIGHT / 2.0,
            );
        }
        let _ = write!(
            svg,
            r##"<rect class="lane lane-snoring" x="{LEFT}" y="{top}" width="{PLOT_WIDTH}" height="{SNORING_HEIGHT}" fill="#f4f4f4"/><text class="lane-label" x="{label_x}" y="{label_y}" text-anchor="end" dominant-baseline="middle">Snoring</text>"##,
            top = layout.snoring_top(),
            label_x = LEFT - 8.0,
            label_y = layout.snoring_top() + SNORING_HEIGHT / 2.0,
        );
        svg.push_str("</g>");
    }

    /// Shades each WASO episode across every lane, under the stage blocks.
    fn write_waso(&self, svg: &mut String, layout: Layout, statistics: &SleepStatistics) {
        svg.push_str(r#"<g class="waso-episodes">"#);
        for episode in &statistics.waso_episodes {
            let x = self.x(episode.start_epoch);
            let _ = write!(
                svg,
                r##"<rect class="waso" data-start="{start}" data-epochs="{length}" x="{x:.2}" y="{top}" width="{width:.2}" height="{height}" fill="#f2a541" fill-opacity="0.2"><title>Awake after sleep onset from {time} for {duration}</title></rect>"##,
                start = episode.start_epoch,
                length = episode.epochs,
                top = layout.top,
                width = self.x(episode.start_epoch + episode.epochs) - x,
                height = layout.lanes_bottom() - layout.top,
                time = escape(&self.time_label(episode.start_epoch)),
                duration = format_duration(episode.epochs as i64 * EPOCH_SECONDS),
            );
        }
        svg.push_str("</g>");
    }

    fn write_gaps(&self, svg: &mut String, layout: Layout, periods: &[StagePeriod]) {
        svg.push_str(r#"<g class="gaps">"#);
        for period in periods.iter().filter(|period| period.code == UNKNOWN) {
            let _ = write!(
                svg,
                r##"<rect class="gap" data-start="{start}" data-epochs="{length}" x="{x:.2}" y="{top}" width="{width:.2}" height="{height}" fill="#d0d0d0" fill-opacity="0.5"><title>{duration} without data</title></rect>"##,
                start = period.start_epoch,
                length = period.epochs,
                x = self.x(period.start_epoch),
                top = layout.top,
                width = self.x(period.start_epoch + period.epochs) - self.x(period.start_epoch),
                height = layout.lanes_bottom() - layout.top,
                duration = format_duration(period.epochs as i64 * EPOCH_SECONDS),
            );
        }
        svg.push_str("</g>");
    }

    fn write_stages(&self, svg: &mut String, layout: Layout, periods: &[StagePeriod]) {
        svg.push_str(r#"<g class="stages">"#);
        let mut transitions = String::new();
        let mut previous: Option<(i8, usize)> = None;
        for period in periods {
            let Some(name) = layout.staging.name(period.code) else {
                previous = None;
                continue;
            };
            let x = self.x(period.start_epoch);
            let _ = write!(
                svg,
                r#"<rect class="stage stage-{name}" data-stage="{name}" data-start="{start}" data-epochs="{length}" x="{x:.2}" y="{y}" width="{width:.2}" height="{height}" fill="{fill}"/>"#,
                start = period.start_epoch,
                length = period.epochs,
                y = layout.lane_top(period.code) + BLOCK_INSET,
                width = self.x(period.start_epoch + period.epochs) - x,
                height = LANE_HEIGHT - 2.0 * BLOCK_INSET,
                fill = stage_fill(layout.staging, period.code),
            );
            // A vertical line joins adjacent runs, so the picture reads as
            // the usual stepped hypnogram; a gap breaks the line.
            if let Some((before, end)) = previous.filter(|(_, end)| *end == period.start_epoch) {
                let _ = write!(
                    transitions,
                    "M{x:.2} {from}V{to}",
                    x = self.x(end),
                    from = layout.lane_top(before) + LANE_HEIGHT / 2.0,
                    to = layout.lane_top(period.code) + LANE_HEIGHT / 2.0,
                );
            }
            previous = Some((period.code, period.start_epoch + period.epochs));
        }
        if !transitions.is_empty() {
            let _ = write!(
                svg,
                r##"<path class="transitions" d="{transitions}" stroke="#555" stroke-width="1" fill="none"/>"##
            );
        }
        svg.push_str("</g>");
    }

    /// Draws a dashed line at sleep onset and at the end of each sleep
    /// cycle, where `sleep_cycle_time` puts them: at the start of the last
    /// REM epoch of the cycle's REM cluster.
    fn write_cycle_boundaries(&self, svg: &mut String, layout: Layout, statistics: &SleepStatistics) {
        let Some(onset) = statistics.sleep_onset_epoch else {
            return;
        };
        svg.push_str(r#"<g class="cycle-boundaries">"#);
        let boundaries = std::iter::once((onset, None)).chain(
            statistics
                .cycle_end_epochs
                .iter()
                .enumerate()
                .map(|(index, epoch)| (*epoch, Some(index + 1))),
        );
        for (epoch, cycle) in boundaries {
            let x = self.x(epoch);
            let (kind, label, title) = match cycle {
                None => (
                    "onset",
                    "onset".to_string(),
                    format!("Sleep onset at {}", self.time_label(epoch)),
                ),
                Some(number) => (
                    "cycle-end",
                    number.to_string(),
                    format!("End of sleep cycle {number} at {}", self.time_label(epoch)),
                ),
            };
            let cycle_attribute = cycle
                .map(|number| format!(r#" data-cycle="{number}""#))
                .unwrap_or_default();
            let _ = write!(
                svg,
                r##"<g class="cycle-boundary" data-boundary="{kind}" data-epoch="{epoch}"{cycle_attribute}><title>{title}</title><line x1="{x:.2}" y1="{line_top}" x2="{x:.2}" y2="{bottom}" stroke="#333" stroke-width="1" stroke-dasharray="4 3"/><text class="cycle-label" x="{x:.2}" y="{text_y}" text-anchor="middle">{label}</text></g>"##,
                title = escape(&title),
                line_top = layout.top - 2.0,
                bottom = layout.lanes_bottom(),
                text_y = layout.top - 4.0,
            );
        }
        svg.push_str("</g>");
    }

    fn write_snoring(&self, svg: &mut String, layout: Layout) {
        svg.push_str(r#"<g class="snoring">"#);
        let snoring = &self.snoring_stages[..self.snoring_stages.len().min(self.sleep_stages.len())];
        for run in runs(snoring).filter(|run| run.value == 1) {
            let x = self.x(run.start);
            let _ = write!(
                svg,
                r##"<rect class="snore" data-start="{start}" data-epochs="{length}" x="{x:.2}" y="{top}" width="{width:.2}" height="{SNORING_HEIGHT}" fill="#c8553d"/>"##,
                start = run.start,
                length = run.length,
                top = layout.snoring_top(),
                width = self.x(run.start + run.length) - x,
            );
        }
        svg.push_str("</g>");
    }

    fn write_axis(&self, svg: &mut String, layout: Layout) {
        let epochs = self.sleep_stages.len();
        let ticks = match self.clock {
            Some((start, zone)) => hour_ticks(start, self.end(start), zone),
            None => elapsed_ticks(epochs as i64 * EPOCH_SECONDS),
        };
        let axis_top = layout.axis_top();
        let _ = write!(
            svg,
            r##"<g class="axis"><line class="axis-line" x1="{LEFT}" y1="{axis_top}" x2="{right}" y2="{axis_top}" stroke="#555"/>"##,
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
                r##"<g class="tick" data-offset-seconds="{offset}"><line x1="{x:.2}" y1="{top}" x2="{x:.2}" y2="{tick_bottom}" stroke="#999" stroke-width="0.5" stroke-dasharray="2 3"/><text x="{x:.2}" y="{text_y}" text-anchor="{anchor}">{label}</text></g>"##,
                offset = tick.offset_seconds,
                top = layout.top,
                tick_bottom = axis_top + 5.0,
                text_y = axis_top + 20.0,
                label = escape(&tick.label),
            );
        }
        svg.push_str("</g>");
    }
}

/// Returns the staging's name in `data-staging`, as the JSON spells it.
fn staging_name(staging: Staging) -> &'static str {
    match staging {
        Staging::TwoStage => "two_stage",
        Staging::FourStage => "four_stage",
    }
}

/// Returns the colour of a lane code for a stylesheet-free rendering;
/// `static/style.css` sets the same by class.
pub fn stage_fill(staging: Staging, code: i8) -> &'static str {
    match (staging, code) {
        (_, WAKE) => "#f2a541",
        (Staging::TwoStage, _) => "#4a78c2",
        (_, REM) => "#8e5bd1",
        (_, LIGHT) => "#72a9e0",
        (_, DEEP) => "#1f3f8f",
        _ => "#d0d0d0",
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
    fn report_marks_cycles_and_waso() {
        // Sleep onset at epoch 2, one WASO episode of 3 epochs, and a REM
        // cluster of 20 epochs that ends a cycle at epoch 34.
        let mut stages = vec![0, 0, 1, 1, 0, 0, 0];
        stages.extend([2; 8]);
        stages.extend([3; 20]);
        stages.extend([1, 0]);
        let start = utc("2026-11-20T14:47:00Z");
        let statistics =
            SleepStatistics::compute(&stages, &[], start.fixed_offset(), None, Staging::FourStage).unwrap();
        let mut drawing = hypnogram(&stages, &[]);
        drawing.clock = Some((start, "Asia/Seoul".parse().unwrap()));
        let svg = drawing.render_report(Staging::FourStage, Some(&statistics));
        let svg = svg.as_str();
        assert!(svg.contains(r#"class="cycle-boundary" data-boundary="onset" data-epoch="2""#));
        assert!(svg.contains(r#"data-boundary="cycle-end" data-epoch="34" data-cycle="1""#));
        assert!(svg.contains("<title>End of sleep cycle 1 at 00:04</title>"));
        assert_eq!(svg.matches(r#"<rect class="waso""#).count(), 1);
        assert!(svg.contains(r#"<rect class="waso" data-start="4" data-epochs="3""#));
        assert!(svg.contains("Awake after sleep onset from 23:49 for 2 min"));
        assert!(svg.contains("A dashed line marks sleep onset at 23:48, another the end of the one sleep cycle."));
        assert!(svg.contains("A shaded band marks the one awakening after sleep onset (WASO)."));
        let lanes_top = attribute(svg, "lane-wake", "y");
        assert_eq!(
            lanes_top,
            TOP + MARK_ROW_HEIGHT,
            "room above the lanes for cycle labels"
        );
    }

    #[test]
    fn two_stage_night_draws_two_lanes() {
        let stages = [0, 1, 2, 3, 1, 0, -1, 1];
        let svg = hypnogram(&stages, &[]).render_report(Staging::TwoStage, None);
        let svg = svg.as_str();
        assert!(svg.contains(r#"data-staging="two_stage""#));
        assert!(svg.contains(">Wake<"));
        assert!(svg.contains(">Sleep<"));
        for word in ["Light", "Deep", "REM", "lane-rem", "lane-deep"] {
            assert!(!svg.contains(word), "{word} in a two-stage drawing");
        }
        // Codes 1, 2 and 3 share the sleep lane, so they make one block.
        assert!(svg.contains(r#"class="stage stage-sleep" data-stage="sleep" data-start="1" data-epochs="4""#));
        assert!(
            svg.contains(r#"viewBox="0 0 960 142""#),
            "two lanes make a shorter drawing: {svg}"
        );
        let periods = stage_periods(&stages, Staging::TwoStage);
        let codes: Vec<i8> = periods.iter().map(|period| period.code).collect();
        assert_eq!(codes, [0, 1, 0, -1, 1]);
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
