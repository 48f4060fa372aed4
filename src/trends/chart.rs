//! Trend charts: one figure of each night over a window of calendar days,
//! drawn as bars, with a line for its rolling mean.
//!
//! The chart is plain data (coordinates, labels and rows) that
//! `templates/history.html` turns into SVG, so every text is escaped by
//! the template engine and no style or script sits inside the markup.
//!
//! # Rolling mean
//!
//! The line is a trailing mean over nights, not days. At each night it is
//! the mean of that night's value and of up to [`ROLLING_NIGHTS`] − 1
//! earlier nights with a value, including nights before the window. With
//! fewer earlier nights it averages those there are. Days without a night
//! break both the bars and the line.

use chrono::{Duration, NaiveDate};

use super::Night;
use crate::report::{format_duration, format_percent};
use crate::statistics::SleepStatistics;

/// Nights in the rolling mean, the night itself included.
pub const ROLLING_NIGHTS: usize = 7;

/// Size of the drawing in user units; the SVG scales to its container.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
/// Room left of the plot for the value labels.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
/// Room below the plot for the date labels.
const BOTTOM: f64 = 32.0;
const PLOT_WIDTH: f64 = WIDTH - LEFT - RIGHT;
const PLOT_HEIGHT: f64 = HEIGHT - TOP - BOTTOM;
/// Share of a day's width its bars fill, so neighbouring days stay apart.
const BAR_FILL: f64 = 0.7;

/// A figure the history page charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    TotalSleep,
    SleepEfficiency,
    DeepShare,
    RemShare,
}

/// One night's contribution to a chart.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NightValue {
    /// The value in the chart's unit: hours or percent.
    Value(f64),
    /// A two-stage night, which has no deep or REM share.
    TwoStage,
    /// A night without sleep, which has no sleep period to take a share of.
    NoSleep,
    /// A report without epochs.
    NoStatistics,
}

impl Metric {
    /// The charts of the history page, in page order.
    pub const ALL: [Metric; 4] = [
        Metric::TotalSleep,
        Metric::SleepEfficiency,
        Metric::DeepShare,
        Metric::RemShare,
    ];

    /// Returns the name used in element ids and CSS classes.
    pub fn id(self) -> &'static str {
        match self {
            Metric::TotalSleep => "total-sleep",
            Metric::SleepEfficiency => "sleep-efficiency",
            Metric::DeepShare => "deep-share",
            Metric::RemShare => "rem-share",
        }
    }

    /// Returns the heading readers see.
    pub fn label(self) -> &'static str {
        match self {
            Metric::TotalSleep => "Total sleep time",
            Metric::SleepEfficiency => "Sleep efficiency",
            Metric::DeepShare => "Deep sleep share",
            Metric::RemShare => "REM sleep share",
        }
    }

    /// Returns the bars' fill, which `static/style.css` repeats by class so
    /// the chart reads without the style sheet too.
    pub fn colour(self) -> &'static str {
        match self {
            Metric::TotalSleep => "#72a9e0",
            Metric::SleepEfficiency => "#2e8540",
            Metric::DeepShare => "#1f3f8f",
            Metric::RemShare => "#8e5bd1",
        }
    }

    fn value(self, night: &Night) -> NightValue {
        let Ok(statistics) = &night.statistics else {
            return NightValue::NoStatistics;
        };
        match self {
            Metric::TotalSleep => NightValue::Value(statistics.time_in_sleep as f64 / 3600.0),
            Metric::SleepEfficiency => NightValue::Value(statistics.sleep_efficiency * 100.0),
            Metric::DeepShare => share(statistics, statistics.deep_ratio),
            Metric::RemShare => share(statistics, statistics.rem_ratio),
        }
    }

    /// Formats a value in the chart's unit for readers.
    fn format(self, value: f64) -> String {
        match self {
            Metric::TotalSleep => format_duration((value * 3600.0).round() as i64),
            _ => format_percent(value),
        }
    }

    /// Returns the top of the value axis and the step between grid lines.
    fn scale(self, largest: f64) -> (f64, f64) {
        match self {
            // At least 8 hours, then whole steps of 2 hours.
            Metric::TotalSleep => ((largest / 2.0).ceil().max(4.0) * 2.0, 2.0),
            Metric::SleepEfficiency => (100.0, 25.0),
            // Deep and REM shares are mostly below a half, where a full
            // 0 to 100% axis would flatten them.
            Metric::DeepShare | Metric::RemShare if largest <= 50.0 => (50.0, 10.0),
            Metric::DeepShare | Metric::RemShare => (100.0, 25.0),
        }
    }

    fn axis_label(self, value: f64) -> String {
        match self {
            Metric::TotalSleep => format!("{value:.0} h"),
            _ => format!("{value:.0}%"),
        }
    }

    /// Returns why a night has no value, for the data table.
    fn explain(self, value: NightValue) -> String {
        match value {
            NightValue::Value(value) => self.format(value),
            NightValue::TwoStage => "two-stage night, no stage share".to_string(),
            NightValue::NoSleep => "no sleep".to_string(),
            NightValue::NoStatistics => "no epochs".to_string(),
        }
    }
}

fn share(statistics: &SleepStatistics, ratio: Option<f64>) -> NightValue {
    if !statistics.slept() {
        return NightValue::NoSleep;
    }
    match ratio {
        Some(ratio) => NightValue::Value(ratio * 100.0),
        None => NightValue::TwoStage,
    }
}

/// One night's bar. Coordinates are SVG user units.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    /// Date and value, shown as the bar's tooltip.
    pub label: String,
}

/// A horizontal grid line with its value label.
#[derive(Debug, Clone, PartialEq)]
pub struct GridLine {
    pub y: f64,
    pub label: String,
}

/// A date label below the plot, centred on its day.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisLabel {
    pub x: f64,
    pub text: String,
}

/// One row of the data table: a night, or a day without one.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartRow {
    /// ISO 8601 date, such as `2026-11-01`.
    pub date: String,
    /// `None` for a day without a night.
    pub session_id: Option<String>,
    pub value: String,
    /// The rolling mean at this night; empty where the night has no value.
    pub rolling_mean: String,
}

/// A chart of one metric over the `days` calendar days ending at `last`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendChart {
    /// Element id, unique on the page, such as `trend-7-total-sleep`.
    pub id: String,
    pub metric: Metric,
    pub days: u32,
    pub title: String,
    /// A summary in words, the SVG's `<desc>`.
    pub description: String,
    pub width: f64,
    pub height: f64,
    /// Left and right ends of the plot, for the axis and grid lines.
    pub plot_left: f64,
    pub plot_right: f64,
    /// Bottom of the plot: the zero line.
    pub plot_bottom: f64,
    pub bars: Vec<Bar>,
    /// The rolling-mean line as SVG `points` lists, one per run of
    /// consecutive days with a value.
    pub mean_lines: Vec<String>,
    /// Rolling-mean points, drawn as dots so a lone night shows too.
    pub mean_points: Vec<(f64, f64)>,
    pub grid: Vec<GridLine>,
    pub date_labels: Vec<AxisLabel>,
    pub rows: Vec<ChartRow>,
    /// Two-stage nights in the window, which have no deep or REM share.
    pub two_stage_nights: usize,
}

impl TrendChart {
    /// Builds the chart of `metric` for the `days` days ending at `last`
    /// from a user's nights, oldest first.
    pub fn build(metric: Metric, nights: &[Night], last: NaiveDate, days: u32) -> Self {
        let first = last - Duration::days(i64::from(days) - 1);
        let values: Vec<NightValue> = nights.iter().map(|night| metric.value(night)).collect();
        let means = rolling_means(&values);
        let in_window: Vec<usize> = (0..nights.len())
            .filter(|index| (first..=last).contains(&nights[*index].date))
            .collect();

        let largest = in_window
            .iter()
            .filter_map(|index| plotted(values[*index]))
            .chain(in_window.iter().filter_map(|index| means[*index]))
            .fold(0.0, f64::max);
        let (top, step) = metric.scale(largest);
        let day_width = PLOT_WIDTH / f64::from(days);
        let y_of = |value: f64| round(TOP + PLOT_HEIGHT * (1.0 - value / top));

        let mut chart = Self {
            id: format!("trend-{days}-{}", metric.id()),
            metric,
            days,
            title: format!("{}, last {days} days", metric.label()),
            description: String::new(),
            width: WIDTH,
            height: HEIGHT,
            plot_left: LEFT,
            plot_right: LEFT + PLOT_WIDTH,
            plot_bottom: TOP + PLOT_HEIGHT,
            bars: Vec::new(),
            mean_lines: Vec::new(),
            mean_points: Vec::new(),
            grid: grid(metric, top, step, y_of),
            date_labels: date_labels(first, days, day_width),
            rows: Vec::new(),
            two_stage_nights: in_window
                .iter()
                .filter(|index| values[**index] == NightValue::TwoStage)
                .count(),
        };

        // Bars and the rolling-mean line, one day at a time.
        let mut line: Vec<String> = Vec::new();
        let mut previous_day: Option<i64> = None;
        for day in 0..i64::from(days) {
            let date = first + Duration::days(day);
            let today: Vec<usize> = in_window
                .iter()
                .copied()
                .filter(|index| nights[*index].date == date)
                .collect();
            if today.is_empty() {
                chart.rows.push(ChartRow {
                    date: date.to_string(),
                    session_id: None,
                    value: "no night".to_string(),
                    rolling_mean: String::new(),
                });
            }
            let bar_width = day_width * BAR_FILL / today.len().max(1) as f64;
            let slot_left = LEFT + day as f64 * day_width + day_width * (1.0 - BAR_FILL) / 2.0;
            for (position, index) in today.iter().enumerate() {
                let x = slot_left + position as f64 * bar_width;
                let value = values[*index];
                chart.rows.push(ChartRow {
                    date: date.to_string(),
                    session_id: Some(nights[*index].session_id.clone()),
                    value: metric.explain(value),
                    rolling_mean: means[*index].map(|mean| metric.format(mean)).unwrap_or_default(),
                });
                if let Some(value) = plotted(value) {
                    let y = y_of(value);
                    chart.bars.push(Bar {
                        x: round(x),
                        y,
                        width: round(bar_width),
                        height: round(chart.plot_bottom - y),
                        label: format!("{date}: {}", metric.format(value)),
                    });
                }
                let Some(mean) = means[*index] else {
                    continue;
                };
                // A day without a value between two points breaks the line.
                if previous_day.is_some_and(|previous| day - previous > 1) && !line.is_empty() {
                    chart.mean_lines.push(line.join(" "));
                    line.clear();
                }
                let point = (round(x + bar_width / 2.0), y_of(mean));
                line.push(format!("{},{}", point.0, point.1));
                chart.mean_points.push(point);
                previous_day = Some(day);
            }
        }
        if line.len() > 1 {
            chart.mean_lines.push(line.join(" "));
        }
        chart.mean_lines.retain(|points| points.contains(' '));
        chart.description = describe(metric, nights, &values, &in_window, first, last, chart.two_stage_nights);
        chart
    }

    /// Returns the id of the `<title>` element.
    pub fn title_id(&self) -> String {
        format!("{}-title", self.id)
    }

    /// Returns the id of the `<desc>` element.
    pub fn description_id(&self) -> String {
        format!("{}-desc", self.id)
    }

    /// Returns the `viewBox` attribute.
    pub fn view_box(&self) -> String {
        format!("0 0 {} {}", self.width, self.height)
    }

    /// Returns the x coordinate where grid labels end, right-aligned.
    pub fn label_right(&self) -> f64 {
        self.plot_left - 6.0
    }

    /// Returns the baseline of the date labels.
    pub fn date_baseline(&self) -> f64 {
        self.plot_bottom + 20.0
    }
}

fn plotted(value: NightValue) -> Option<f64> {
    match value {
        NightValue::Value(value) => Some(value),
        _ => None,
    }
}

/// Returns each night's rolling mean, as the module documentation defines
/// it; `None` for a night without a value.
fn rolling_means(values: &[NightValue]) -> Vec<Option<f64>> {
    let mut recent: Vec<f64> = Vec::new();
    values
        .iter()
        .map(|value| {
            let value = plotted(*value)?;
            recent.push(value);
            let window = &recent[recent.len().saturating_sub(ROLLING_NIGHTS)..];
            Some(window.iter().sum::<f64>() / window.len() as f64)
        })
        .collect()
}

fn grid(metric: Metric, top: f64, step: f64, y_of: impl Fn(f64) -> f64) -> Vec<GridLine> {
    let steps = (top / step).round() as i64;
    (0..=steps)
        .map(|index| {
            let value = index as f64 * step;
            GridLine {
                y: y_of(value),
                label: metric.axis_label(value),
            }
        })
        .collect()
}

/// Labels every day of a week-long chart, and every seventh day counted
/// back from the last day of a longer one.
fn date_labels(first: NaiveDate, days: u32, day_width: f64) -> Vec<AxisLabel> {
    let every = if days <= 7 { 1 } else { 7 };
    (0..days)
        .filter(|day| (days - 1 - day).is_multiple_of(every))
        .map(|day| {
            let date = first + Duration::days(i64::from(day));
            let format = if days <= 7 { "%a %-d" } else { "%-d %b" };
            AxisLabel {
                x: round(LEFT + (f64::from(day) + 0.5) * day_width),
                text: date.format(format).to_string(),
            }
        })
        .collect()
}

/// Summarizes a chart in words: the window, how many nights it shows, the
/// lowest, highest and latest values, the rolling mean, and what is left out.
fn describe(
    metric: Metric,
    nights: &[Night],
    values: &[NightValue],
    in_window: &[usize],
    first: NaiveDate,
    last: NaiveDate,
    two_stage_nights: usize,
) -> String {
    let window = format!("{} to {}", first.format("%-d %b %Y"), last.format("%-d %b %Y"));
    let plotted_values: Vec<f64> = in_window.iter().filter_map(|index| plotted(values[*index])).collect();
    let mut text = match plotted_values.as_slice() {
        [] if in_window.is_empty() => format!("No nights from {window}."),
        [] => format!("No night from {window} has a {}.", metric.label().to_lowercase()),
        _ => {
            let lowest = plotted_values.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = plotted_values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let latest = plotted_values[plotted_values.len() - 1];
            let plural = if plotted_values.len() == 1 { "night" } else { "nights" };
            format!(
                "{} of {} {plural} from {window}: lowest {}, highest {}, latest {}. \
                 The line is the mean of each night and up to {} nights before it.",
                metric.label(),
                plotted_values.len(),
                metric.format(lowest),
                metric.format(highest),
                metric.format(latest),
                ROLLING_NIGHTS - 1,
            )
        }
    };
    let days_with_nights = in_window
        .iter()
        .map(|index| nights[*index].date)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let empty_days = (last - first).num_days() + 1 - days_with_nights as i64;
    if empty_days > 0 && !in_window.is_empty() {
        let plural = if empty_days == 1 { "day has" } else { "days have" };
        text.push_str(&format!(" {empty_days} {plural} no night and show as a gap."));
    }
    if two_stage_nights > 0 {
        let plural = if two_stage_nights == 1 {
            "night is"
        } else {
            "nights are"
        };
        text.push_str(&format!(
            " {two_stage_nights} two-stage {plural} left out because two-stage data has no deep or REM share."
        ));
    }
    text
}

/// Rounds a coordinate to a tenth of a unit, which keeps the markup short.
fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::fixtures::final_report;
    use crate::statistics::StageModel;

    /// Builds nights from the bundled report, moved to the given dates, with
    /// the given number of sleep epochs out of 600 and the rest wake.
    fn nights(dates_and_sleep: &[(&str, usize)], model: StageModel) -> Vec<Night> {
        let template = final_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let reports: Vec<_> = dates_and_sleep
            .iter()
            .map(|(date, sleep)| {
                let mut report = template.clone();
                report.session_id = format!("s-{date}");
                report.timezone = "UTC".to_string();
                report.start_time = chrono::DateTime::parse_from_rfc3339(&format!("{date}T22:00:00+00:00")).unwrap();
                report.end_time = Some(report.start_time + Duration::seconds(600 * 30));
                let mut stages = vec![0i8; 600];
                for (index, stage) in stages.iter_mut().take(*sleep).enumerate() {
                    *stage = if index % 4 == 0 { 2 } else { 1 };
                }
                report.sleep_stages = stages;
                report.snoring_stages = vec![0; 600];
                report
            })
            .collect();
        super::super::nights(&reports, model)
    }

    #[test]
    fn rolling_mean_covers_earlier_nights() {
        let values: Vec<NightValue> = (1..=9).map(|value| NightValue::Value(f64::from(value))).collect();
        let means = rolling_means(&values);
        assert_eq!(means[0], Some(1.0));
        assert_eq!(means[1], Some(1.5));
        // Night 9: the mean of 3..=9.
        assert_eq!(means[8], Some(6.0));

        let with_gap = [NightValue::Value(2.0), NightValue::TwoStage, NightValue::Value(4.0)];
        assert_eq!(rolling_means(&with_gap), [Some(2.0), None, Some(3.0)]);
    }

    #[test]
    fn days_without_nights_are_gaps() {
        let nights = nights(
            &[("2026-11-01", 480), ("2026-11-02", 540), ("2026-11-05", 600)],
            StageModel::FourStage,
        );
        let last = NaiveDate::from_ymd_opt(2026, 11, 5).unwrap();
        let chart = TrendChart::build(Metric::TotalSleep, &nights, last, 7);

        assert_eq!(chart.bars.len(), 3);
        assert_eq!(chart.rows.len(), 7);
        let empty: Vec<&str> = chart
            .rows
            .iter()
            .filter(|row| row.session_id.is_none())
            .map(|row| row.date.as_str())
            .collect();
        assert_eq!(empty, ["2026-10-30", "2026-10-31", "2026-11-03", "2026-11-04"]);
        // The line breaks at the two empty days, leaving one segment of two
        // points and a lone point.
        assert_eq!(chart.mean_lines.len(), 1);
        assert_eq!(chart.mean_points.len(), 3);
        assert!(
            chart.description.contains("4 days have no night"),
            "{}",
            chart.description
        );
        // 480 epochs of sleep are 4 hours.
        assert_eq!(chart.rows[2].value, "4 h");
        assert_eq!(chart.rows[3].rolling_mean, "4 h 15 min");
    }

    #[test]
    fn two_stage_nights_have_no_share() {
        let nights = nights(&[("2026-11-01", 480), ("2026-11-02", 540)], StageModel::TwoStage);
        let last = NaiveDate::from_ymd_opt(2026, 11, 2).unwrap();
        let chart = TrendChart::build(Metric::DeepShare, &nights, last, 7);
        assert!(chart.bars.is_empty());
        assert_eq!(chart.two_stage_nights, 2);
        assert!(
            chart.description.contains("2 two-stage nights are left out"),
            "{}",
            chart.description
        );

        let efficiency = TrendChart::build(Metric::SleepEfficiency, &nights, last, 7);
        assert_eq!(efficiency.bars.len(), 2);
    }

    #[test]
    fn bars_stay_inside_plot() {
        let nights = nights(&[("2026-11-01", 600), ("2026-11-01", 10)], StageModel::FourStage);
        let last = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let chart = TrendChart::build(Metric::SleepEfficiency, &nights, last, 30);
        assert_eq!(chart.bars.len(), 2);
        for bar in &chart.bars {
            assert!(bar.x >= chart.plot_left, "{bar:?}");
            assert!(bar.x + bar.width <= chart.plot_right + 0.1, "{bar:?}");
            assert!(bar.y >= TOP, "{bar:?}");
            assert!(bar.y + bar.height <= chart.plot_bottom + 0.1, "{bar:?}");
        }
        // Two nights on one date split that day's slot.
        assert!(chart.bars[0].x + chart.bars[0].width <= chart.bars[1].x + 0.1);
        assert_eq!(chart.date_labels.last().unwrap().text, "30 Nov");
        assert_eq!(chart.date_labels.len(), 5);
    }
}
