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

/// One bar of the right-hand chart: a scenario's AWS calls for one column.
#[derive(Debug, Clone)]
pub struct Bar<'a> {
    /// The scenario (bars of one scenario stand side by side).
    pub group: &'a str,
    /// The column's index (its colour, as in the latency chart).
    pub column: usize,
    /// AWS calls.
    pub value: f64,
}

/// The columns' colours, in column order.
const COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

/// Draws the plot to `path`: left, each column's publish-latency CDF and the floor's p50 (log
/// time axis: the columns are orders of magnitude apart); right, AWS calls per scenario and
/// column (log axis).
pub fn draw(
    path: &Path,
    latencies: &[(&str, Vec<Duration>)],
    floor_p50: Duration,
    calls: &[Bar<'_>],
) -> anyhow::Result<()> {
    let text = register_font();
    let root = BitMapBackend::new(path, (1400, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let to_ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let all_ms = || {
        latencies
            .iter()
            .flat_map(|(_, s)| s.iter().map(to_ms))
            .chain([to_ms(&floor_p50)])
            .filter(|v| *v > 0.0)
    };
    let max_ms = all_ms().fold(1.0, f64::max) * 1.3;
    let min_ms = all_ms().fold(max_ms, f64::min) / 1.3;
    {
        let mut b = ChartBuilder::on(&left);
        b.margin(15).x_label_area_size(40).y_label_area_size(55);
        if text {
            b.caption(
                "Scenario 1: warm NodePublishVolume latency (CDF)",
                ("sans-serif", 20),
            );
        }
        let mut chart =
            b.build_cartesian_2d((min_ms.max(0.01)..max_ms).log_scale(), 0f64..100f64)?;
        if text {
            chart
                .configure_mesh()
                .x_desc("latency (ms, log scale)")
                .y_desc("percentile")
                .draw()?;
        }
        for (i, (name, samples)) in latencies.iter().enumerate() {
            let mut sorted: Vec<f64> = samples.iter().map(to_ms).collect();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len().max(1) as f64;
            let color = COLORS[i % COLORS.len()];
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
        let f = to_ms(&floor_p50).max(min_ms);
        let floor = chart.draw_series(LineSeries::new(
            [(f, 0.0), (f, 100.0)],
            BLACK.stroke_width(1),
        ))?;
        if text {
            floor
                .label("floor p50 (mount + 1 AWS call + 1 API write)")
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
        let max = calls.iter().map(|b| b.value).fold(1.0, f64::max) * 2.0;
        let mut b = ChartBuilder::on(&right);
        b.margin(15).x_label_area_size(40).y_label_area_size(60);
        if text {
            b.caption("AWS calls per scenario and column", ("sans-serif", 20));
        }
        let mut chart =
            b.build_cartesian_2d((0..calls.len()).into_segmented(), (0.5f64..max).log_scale())?;
        if text {
            // Label each scenario once, under its first bar.
            let names: Vec<String> = calls
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let first = i == 0 || calls[i - 1].group != b.group;
                    if first {
                        b.group.to_string()
                    } else {
                        String::new()
                    }
                })
                .collect();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(calls.len())
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .y_desc("calls (log scale)")
                .draw()?;
        }
        chart.draw_series(calls.iter().enumerate().map(|(i, bar)| {
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.5),
                    (SegmentValue::Exact(i + 1), bar.value.max(0.5)),
                ],
                COLORS[bar.column % COLORS.len()].mix(0.7).filled(),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}
