//! The stage-share bar: one horizontal bar stacked by each stage's share of
//! the sleep period, drawn as SVG on the server.

use std::fmt::Write as _;

use crate::hypnogram::{Svg, escape, stage_fill};
use crate::statistics::Staging;

/// Width of the drawing in user units; the SVG scales to its container.
const WIDTH: f64 = 960.0;
const BAR_HEIGHT: f64 = 36.0;
/// A segment narrower than this carries no label inside; its share is
/// still in its `<title>`, the description and the stage table.
const MIN_LABELLED_WIDTH: f64 = 56.0;

/// One stage's part of the bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// Stage code of the lane, 1 for sleep in a two-stage night.
    pub code: i8,
    /// Share of the sleep period, 0..1.
    pub ratio: f64,
}

/// Renders the bar, stages left to right in the order given. The segments
/// are laid out by the shares as given, which Asleep's rounding makes sum to
/// exactly 1.
pub fn render(shares: &[Share], staging: Staging) -> Svg {
    let mut svg = String::with_capacity(2048);
    let label = |share: &Share| staging.label(share.code).unwrap_or("No data");
    let description = shares
        .iter()
        .map(|share| format!("{} {}", label(share), percent(share.ratio)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        svg,
        r#"<svg id="stage-share" class="share-bar" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {BAR_HEIGHT}" role="img" aria-labelledby="stage-share-title stage-share-desc"><title id="stage-share-title">Share of each stage in the sleep period</title><desc id="stage-share-desc">{}.</desc>"#,
        escape(&description)
    );
    let mut x = 0.0;
    for share in shares {
        let width = share.ratio * WIDTH;
        let name = staging.name(share.code).unwrap_or("unknown");
        let _ = write!(
            svg,
            r#"<g class="share" data-stage="{name}" data-ratio="{ratio}"><title>{label}: {percent}</title><rect class="stage-{name}" x="{x:.2}" y="0" width="{width:.2}" height="{BAR_HEIGHT}" fill="{fill}"/>"#,
            ratio = share.ratio,
            label = escape(label(share)),
            percent = percent(share.ratio),
            fill = stage_fill(staging, share.code),
        );
        if width >= MIN_LABELLED_WIDTH {
            let _ = write!(
                svg,
                r##"<text class="share-label" x="{center:.2}" y="{middle}" text-anchor="middle" dominant-baseline="middle" fill="#ffffff">{label} {percent}</text>"##,
                center = x + width / 2.0,
                middle = BAR_HEIGHT / 2.0,
                label = escape(label(share)),
                percent = percent(share.ratio),
            );
        }
        svg.push_str("</g>");
        x += width;
    }
    svg.push_str("</svg>");
    Svg::new(svg)
}

fn percent(ratio: f64) -> String {
    format!("{:.0}%", ratio * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statistics::{DEEP, LIGHT, REM, WAKE};

    #[test]
    fn segments_stack_to_full_width() {
        let shares = [
            Share {
                code: WAKE,
                ratio: 0.02,
            },
            Share { code: REM, ratio: 0.17 },
            Share {
                code: LIGHT,
                ratio: 0.71,
            },
            Share {
                code: DEEP,
                ratio: 0.10,
            },
        ];
        let svg = render(&shares, Staging::FourStage);
        let svg = svg.as_str();
        assert!(svg.contains(r#"role="img" aria-labelledby="stage-share-title stage-share-desc""#));
        assert!(svg.contains("<desc id=\"stage-share-desc\">Wake 2%, REM 17%, Light 71%, Deep 10%.</desc>"));
        assert_eq!(svg.matches(r#"<g class="share""#).count(), 4);
        assert!(
            svg.contains(r#"x="864.00" y="0" width="96.00""#),
            "deep ends at the right edge: {svg}"
        );
        assert!(!svg.contains(">Wake 2%</text>"), "a narrow segment has no inner label");
        assert!(svg.contains(">Light 71%</text>"));
    }

    #[test]
    fn two_stage_bar_says_sleep() {
        let shares = [
            Share { code: WAKE, ratio: 0.1 },
            Share {
                code: LIGHT,
                ratio: 0.9,
            },
        ];
        let svg = render(&shares, Staging::TwoStage);
        assert!(svg.as_str().contains("Wake 10%, Sleep 90%"));
        assert!(!svg.as_str().contains("Light"));
    }
}
