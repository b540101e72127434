//! Charts as inline SVG, drawn on the server: no script, no `style` attribute (colours come
//! from classes in the stylesheet), a `<title>` and `<desc>` for screen readers, and a
//! `viewBox` so they shrink with narrow screens.

use std::fmt::Write as _;

use super::html::Esc;

const W: f64 = 640.0;
const H: f64 = 180.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// One line of a chart: its legend label, its CSS class and its points (x in ms, y).
#[derive(Debug)]
pub(crate) struct Series<'a> {
    pub label: &'a str,
    pub class: &'a str,
    pub points: Vec<(u64, f64)>,
}

/// A round number at or above `v` (1, 2 or 5 times a power of ten).
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn number(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn clock(ms: u64) -> String {
    let t = super::html::time(ms);
    t.get(11..16).unwrap_or("-").to_owned()
}

fn x_axis(out: &mut String, from_ms: u64, to_ms: u64) {
    let y = H - BOTTOM;
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
        W - RIGHT
    );
    let mid = from_ms + (to_ms.saturating_sub(from_ms)) / 2;
    for (ms, x, anchor) in [
        (from_ms, LEFT, "start"),
        (mid, LEFT + (W - LEFT - RIGHT) / 2.0, "middle"),
        (to_ms, W - RIGHT, "end"),
    ] {
        let _ = write!(
            out,
            "<text class=\"tick\" x=\"{x:.0}\" y=\"{:.0}\" text-anchor=\"{anchor}\">{} UTC</text>",
            H - 6.0,
            clock(ms)
        );
    }
}

fn open(out: &mut String, id: &str, title: &str, desc: &str, height: f64) {
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {height}\" role=\"img\" \
         aria-labelledby=\"{id}-t {id}-d\" preserveAspectRatio=\"xMidYMid meet\">\
         <title id=\"{id}-t\">{}</title><desc id=\"{id}-d\">{}</desc>",
        Esc(title),
        Esc(desc)
    );
}

/// A line chart of `series` over [`from_ms`, `to_ms`], y from 0 to a round maximum.
pub(crate) fn lines(
    id: &str,
    title: &str,
    desc: &str,
    series: &[Series<'_>],
    from_ms: u64,
    to_ms: u64,
) -> String {
    let mut out = String::with_capacity(8192);
    open(&mut out, id, title, desc, H);
    let max = nice_ceiling(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let span = to_ms.saturating_sub(from_ms).max(1) as f64;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    for (frac, label) in [(0.0, 0.0), (0.5, max / 2.0), (1.0, max)] {
        let y = TOP + plot_h * (1.0 - frac);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\"/>\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            number(label)
        );
    }
    x_axis(&mut out, from_ms, to_ms);
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<polyline class=\"series {}\" fill=\"none\" points=\"",
            Esc(s.class)
        );
        for (x, y) in &s.points {
            let px = LEFT + plot_w * (x.saturating_sub(from_ms) as f64 / span).min(1.0);
            let py = TOP + plot_h * (1.0 - (y / max).clamp(0.0, 1.0));
            let _ = write!(out, "{px:.1},{py:.1} ");
        }
        out.push_str("\"/>");
    }
    out.push_str("</svg><ul class=\"legend\">");
    for s in series {
        let _ = write!(
            out,
            "<li><span class=\"swatch {}\" aria-hidden=\"true\"></span>{}</li>",
            Esc(s.class),
            Esc(s.label)
        );
    }
    out.push_str("</ul>");
    out
}

/// A band over [`from_ms`, `to_ms`], filled where the device was online, with a mark at
/// each connection event. `changes` are (at_ms, online) oldest first; `online_now` closes
/// the last interval.
pub(crate) fn timeline(
    id: &str,
    title: &str,
    desc: &str,
    changes: &[(u64, bool)],
    online_now: bool,
    from_ms: u64,
    to_ms: u64,
) -> String {
    const BAND_H: f64 = 40.0;
    let height = TOP + BAND_H + BOTTOM + 10.0;
    let mut out = String::with_capacity(2048);
    open(&mut out, id, title, desc, height);
    let span = to_ms.saturating_sub(from_ms).max(1) as f64;
    let plot_w = W - LEFT - RIGHT;
    let x = |ms: u64| LEFT + plot_w * (ms.clamp(from_ms, to_ms) - from_ms) as f64 / span;
    let _ = write!(
        out,
        "<rect class=\"band\" x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{BAND_H}\"/>\
         <text class=\"tick\" x=\"{}\" y=\"{:.0}\" text-anchor=\"end\">online</text>",
        LEFT - 6.0,
        TOP + BAND_H / 2.0 + 4.0
    );
    // Before the first remembered event the state was the opposite of that event.
    let mut since = changes.first().map(|c| (from_ms, !c.1));
    for &(at, online) in changes {
        if let Some((start, true)) = since
            && at > from_ms
        {
            let (a, b) = (x(start), x(at));
            let _ = write!(
                out,
                "<rect class=\"on\" x=\"{a:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{BAND_H}\"/>",
                (b - a).max(1.0)
            );
        }
        since = Some((at, online));
    }
    if let Some((start, true)) = since.or(online_now.then_some((from_ms, true)))
        && online_now
    {
        let (a, b) = (x(start), x(to_ms));
        let _ = write!(
            out,
            "<rect class=\"on\" x=\"{a:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{BAND_H}\"/>",
            (b - a).max(1.0)
        );
    }
    for &(at, online) in changes.iter().filter(|c| c.0 >= from_ms) {
        let px = x(at);
        let class = if online { "up" } else { "down" };
        let _ = write!(
            out,
            "<line class=\"mark {class}\" x1=\"{px:.1}\" y1=\"{}\" x2=\"{px:.1}\" y2=\"{}\"/>",
            TOP - 4.0,
            TOP + BAND_H + 4.0
        );
    }
    let y = TOP + BAND_H + 6.0;
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
        W - RIGHT
    );
    let mid = from_ms + (to_ms - from_ms.min(to_ms)) / 2;
    for (ms, px, anchor) in [
        (from_ms, LEFT, "start"),
        (mid, LEFT + plot_w / 2.0, "middle"),
        (to_ms, W - RIGHT, "end"),
    ] {
        let _ = write!(
            out,
            "<text class=\"tick\" x=\"{px:.0}\" y=\"{:.0}\" text-anchor=\"{anchor}\">{} UTC</text>",
            height - 6.0,
            clock(ms)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_maxima() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(17.0), 20.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
    }

    #[test]
    fn charts_have_no_style_attribute_or_script() {
        let l = lines(
            "c",
            "t<",
            "d",
            &[Series {
                label: "in",
                class: "a",
                points: vec![(0, 1.0), (1000, 3.0)],
            }],
            0,
            1000,
        );
        let t = timeline("d", "t", "d", &[(10, true), (500, false)], true, 0, 1000);
        for svg in [l, t] {
            assert!(!svg.contains("style="), "{svg}");
            assert!(!svg.contains("<script"), "{svg}");
            assert!(svg.contains("<title"), "{svg}");
        }
    }
}
