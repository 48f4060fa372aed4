//! Formatting of durations, percentages and clock times for readers.

use chrono::{DateTime, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;

/// Formats seconds as hours and minutes, such as `7 h 5 min`, and a
/// duration under a minute as seconds, such as `30 s`.
pub fn format_duration(seconds: i64) -> String {
    if seconds == 0 {
        return "0 min".to_string();
    }
    if seconds.abs() < 60 {
        return format!("{seconds} s");
    }
    let minutes = (seconds as f64 / 60.0).round() as i64;
    let (hours, minutes) = (minutes / 60, minutes % 60);
    match (hours, minutes) {
        (0, minutes) => format!("{minutes} min"),
        (hours, 0) => format!("{hours} h"),
        (hours, minutes) => format!("{hours} h {minutes} min"),
    }
}

/// Formats a percentage with at most one decimal, such as `92%` or `90.3%`.
pub fn format_percent(percent: f64) -> String {
    let rounded = (percent * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}%")
    } else {
        format!("{rounded:.1}%")
    }
}

/// Formats a ratio 0..1 as a percentage.
pub fn format_ratio(ratio: f64) -> String {
    format_percent(ratio * 100.0)
}

/// Formats the clock time of `time` in `zone`, such as `23:47`.
pub fn format_clock<Z: TimeZone>(time: &DateTime<Z>, zone: Tz) -> String {
    time.with_timezone(&zone).format("%H:%M").to_string()
}

/// Formats date, time and zone abbreviation, such as `Fri 20 Nov 2026, 23:47 KST`.
pub fn format_date_time<Z: TimeZone>(time: &DateTime<Z>, zone: Tz) -> String {
    time.with_timezone(&zone).format("%a %-d %b %Y, %H:%M %Z").to_string()
}

/// Formats the date of `time` in `zone`, such as `Fri 20 Nov 2026`.
pub fn format_date<Z: TimeZone>(time: &DateTime<Z>, zone: Tz) -> String {
    time.with_timezone(&zone).format("%a %-d %b %Y").to_string()
}

/// Clock times of one night in its zone. When the zone's UTC offset changes
/// during the night, every time carries the zone's abbreviation, so the hour
/// repeated when daylight saving time ends reads `01:30 EDT`, then
/// `01:30 EST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NightClock {
    pub zone: Tz,
    /// Whether the offset at the night's end differs from the one at its start.
    offset_changes: bool,
}

impl NightClock {
    /// Builds the clock of a night from `start` to `end` in `zone`.
    pub fn new<Z: TimeZone>(zone: Tz, start: DateTime<Z>, end: DateTime<Z>) -> Self {
        let offset = |time: &DateTime<Z>| zone.offset_from_utc_datetime(&time.naive_utc()).fix();
        Self {
            zone,
            offset_changes: offset(&start) != offset(&end),
        }
    }

    /// Formats a clock time, such as `23:47`, or `01:30 EST` in a night
    /// whose offset changes.
    pub fn format<Z: TimeZone>(&self, time: &DateTime<Z>) -> String {
        let format = if self.offset_changes { "%H:%M %Z" } else { "%H:%M" };
        time.with_timezone(&self.zone).format(format).to_string()
    }

    /// Formats a time as RFC 3339 with the zone's offset at that instant, for
    /// a `<time datetime>` attribute, such as `2026-11-01T01:30:00-05:00`.
    pub fn datetime<Z: TimeZone>(&self, time: &DateTime<Z>) -> String {
        time.with_timezone(&self.zone)
            .to_rfc3339_opts(SecondsFormat::Secs, false)
    }

    /// Returns a time with the zone's offset at that instant, such as
    /// `-05:00` after New York's clocks fell back.
    pub fn localize(&self, time: DateTime<chrono::FixedOffset>) -> DateTime<chrono::FixedOffset> {
        time.with_timezone(&self.zone).fixed_offset()
    }

    /// Returns the clock of a night whose start is known only in UTC.
    pub fn utc() -> Self {
        Self::new(Tz::UTC, DateTime::<Utc>::UNIX_EPOCH, DateTime::<Utc>::UNIX_EPOCH)
    }
}

/// Parses a stored zone name. Names are validated when a report arrives, so
/// UTC is used only for a name this build's time-zone database lacks, such
/// as one stored by a build with a newer database.
pub fn parse_zone(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_percentages_format() {
        assert_eq!(format_duration(0), "0 min");
        assert_eq!(format_duration(30), "30 s");
        assert_eq!(format_duration(1080), "18 min");
        assert_eq!(format_duration(27_000), "7 h 30 min");
        assert_eq!(format_duration(7 * 3600 + 20), "7 h");
        assert_eq!(format_duration(3600 + 5 * 60), "1 h 5 min");
        assert_eq!(format_percent(92.0), "92%");
        assert_eq!(format_percent(90.26), "90.3%");
        assert_eq!(format_ratio(0.19), "19%");
    }

    #[test]
    fn clock_times_use_the_zone() {
        let time = chrono::DateTime::parse_from_rfc3339("2026-11-20T14:47:07+00:00").unwrap();
        let seoul: Tz = "Asia/Seoul".parse().unwrap();
        assert_eq!(format_clock(&time, seoul), "23:47");
        assert_eq!(format_date_time(&time, seoul), "Fri 20 Nov 2026, 23:47 KST");
        assert_eq!(format_date(&time, Tz::UTC), "Fri 20 Nov 2026");
        assert_eq!(parse_zone("Mars/Base"), Tz::UTC);
    }

    #[test]
    fn night_clock_names_repeated_hour() {
        let new_york: Tz = "America/New_York".parse().unwrap();
        let start = chrono::DateTime::parse_from_rfc3339("2026-10-31T22:00:00-04:00").unwrap();
        let end = chrono::DateTime::parse_from_rfc3339("2026-11-01T06:00:00-05:00").unwrap();
        let clock = NightClock::new(new_york, start, end);
        let first = chrono::DateTime::parse_from_rfc3339("2026-11-01T01:30:00-04:00").unwrap();
        let second = chrono::DateTime::parse_from_rfc3339("2026-11-01T01:30:00-05:00").unwrap();
        assert_eq!(clock.format(&first), "01:30 EDT");
        assert_eq!(clock.format(&second), "01:30 EST");
        assert_eq!(clock.datetime(&second), "2026-11-01T01:30:00-05:00");
        assert_eq!(
            clock.localize(second.with_timezone(&Utc).fixed_offset()).to_rfc3339(),
            "2026-11-01T01:30:00-05:00"
        );

        let seoul: Tz = "Asia/Seoul".parse().unwrap();
        let clock = NightClock::new(seoul, start, end);
        assert_eq!(
            clock.format(&second),
            "15:30",
            "no abbreviation without an offset change"
        );
    }
}
