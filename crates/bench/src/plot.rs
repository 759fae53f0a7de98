//! The PNG next to `BENCHMARKS.md`: scenario 1's latency distribution (with the floor) and AWS
//! calls per scenario.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

/// Fonts tried for labels; plotters' `ab_glyph` backend needs one registered by hand.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a system font for labels; false when none is found (the plot is then drawn
/// without text).
fn register_font() -> bool {
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps the font for the whole process; leaking one file once is intended.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draws the plot to `path`: left, sorted publish latencies of each stack and the floor's p50;
/// right, AWS calls per scenario (bars, ours only when upstream is missing).
pub fn draw(
    path: &Path,
    latencies: &[(&str, Vec<Duration>)],
    floor_p50: Duration,
    calls: &[(&str, f64)],
) -> anyhow::Result<()> {
    let text = register_font();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(640);
    let to_ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let max_ms = latencies
        .iter()
        .flat_map(|(_, s)| s.iter().map(to_ms))
        .fold(to_ms(&floor_p50), f64::max)
        * 1.1;
    let colors = [BLUE, RED, GREEN];
    {
        let mut b = ChartBuilder::on(&left);
        b.margin(15).x_label_area_size(40).y_label_area_size(55);
        if text {
            b.caption(
                "Scenario 1: NodePublishVolume latency (CDF)",
                ("sans-serif", 20),
            );
        }
        let mut chart = b.build_cartesian_2d(0f64..max_ms.max(0.1), 0f64..100f64)?;
        if text {
            chart
                .configure_mesh()
                .x_desc("latency (ms)")
                .y_desc("percentile")
                .draw()?;
        }
        for (i, (name, samples)) in latencies.iter().enumerate() {
            let mut sorted: Vec<f64> = samples.iter().map(to_ms).collect();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len().max(1) as f64;
            let color = colors[i % colors.len()];
            let series = chart.draw_series(LineSeries::new(
                sorted
                    .iter()
                    .enumerate()
                    .map(|(k, v)| (*v, (k + 1) as f64 * 100.0 / n)),
                color.stroke_width(2),
            ))?;
            if text {
                series
                    .label(name.to_string())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            }
        }
        let f = to_ms(&floor_p50);
        let floor = chart.draw_series(LineSeries::new(
            [(f, 0.0), (f, 100.0)],
            BLACK.stroke_width(1),
        ))?;
        if text {
            floor
                .label("physical floor p50")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    {
        let max = calls.iter().map(|(_, v)| *v).fold(1.0, f64::max) * 1.15;
        let mut b = ChartBuilder::on(&right);
        b.margin(15).x_label_area_size(60).y_label_area_size(60);
        if text {
            b.caption("AWS calls per scenario (ours)", ("sans-serif", 20));
        }
        let mut chart = b.build_cartesian_2d((0..calls.len()).into_segmented(), 0f64..max)?;
        if text {
            let names: Vec<String> = calls.iter().map(|(n, _)| n.to_string()).collect();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(calls.len())
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .y_desc("calls")
                .draw()?;
        }
        chart.draw_series(calls.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                BLUE.mix(0.6).filled(),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}
