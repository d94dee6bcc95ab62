//! The experiment's plots, as SVG through plotters: dirty pages per round,
//! transfer over time, and for a sweep the total time and downtime per
//! dirty rate.

use plotters::prelude::*;

use super::Outcome;
use crate::cli::TrackingSource;
use crate::migration::status::Status;

const SIZE: (u32, u32) = (720, 420);
const SWEEP_SIZE: (u32, u32) = (720, 900);
const MIB: f64 = (1u64 << 20) as f64;
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
];

/// Draws with `draw` into an SVG string; a failure leaves a note instead
/// (plotting is never worth failing an experiment for).
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> Result<(), String>,
) -> String {
    let mut out = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match result {
        Ok(()) => out,
        Err(e) => format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><text y=\"20\">plot failed: {e}</text></svg>"
        ),
    }
}

/// The series' labels, boxed, in the chart's corner.
fn legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Pages sent and pages dirtied meanwhile, per round.
pub fn dirty_per_round(name: &str, s: &Status) -> String {
    svg(SIZE, |root| {
        let rounds = s.rounds.len().max(1) as f64;
        let top = s
            .rounds
            .iter()
            .map(|r| r.pages.max(r.dirtied_pages))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{name}: pages per round"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5..rounds - 0.5, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("pages")
            .draw()
            .map_err(err)?;
        let sent: Vec<(f64, f64)> = s
            .rounds
            .iter()
            .map(|r| (f64::from(r.round), r.pages as f64))
            .collect();
        let dirtied: Vec<(f64, f64)> = s
            .rounds
            .iter()
            .filter(|r| !r.paused)
            .map(|r| (f64::from(r.round), r.dirtied_pages as f64))
            .collect();
        for (points, colour, label) in [
            (sent, COLOURS[0], "sent"),
            (dirtied, COLOURS[1], "dirtied meanwhile"),
        ] {
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, colour.filled())),
                )
                .map_err(err)?;
        }
        legend(&mut chart)
    })
}

/// MiB sent over time; the paused part shaded.
pub fn transfer(name: &str, s: &Status) -> String {
    svg(SIZE, |root| {
        let mut points = vec![(0.0, 0.0)];
        let mut total = 0.0;
        for r in &s.rounds {
            points.push((r.start_ms, total));
            total += r.bytes as f64 / MIB;
            points.push((r.start_ms + r.ms, total));
        }
        let end = points.last().map_or(1.0, |p| p.0).max(1.0) * 1.05;
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{name}: transfer over time"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..end, 0.0..(total * 1.1).max(1.0))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("ms since the migration began")
            .y_desc("MiB sent")
            .draw()
            .map_err(err)?;
        if let Some(paused) = s.rounds.iter().find(|r| r.paused) {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (paused.start_ms, 0.0),
                        (paused.start_ms + paused.ms, total * 1.1),
                    ],
                    COLOURS[1].mix(0.2).filled(),
                )))
                .map_err(err)?
                .label("guest paused")
                .legend(|(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], COLOURS[1].mix(0.2).filled())
                });
        }
        chart
            .draw_series(LineSeries::new(points, COLOURS[0].stroke_width(2)))
            .map_err(err)?
            .label("sent")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], COLOURS[0].stroke_width(2))
            });
        legend(&mut chart)
    })
}

/// What the sweep plot shows, one panel each.
type Metric = (&'static str, fn(&Status) -> Option<f64>);
const SWEEP_METRICS: [Metric; 3] = [
    ("total ms", |s| Some(s.elapsed_ms)),
    ("downtime ms", |s| s.downtime_ms),
    ("sent / lower bound", |s| {
        Some(s.bytes_sent as f64 / s.lower_bound_bytes.max(1) as f64)
    }),
];

/// Total time, downtime and the resending cost against the guest's write
/// rate, one line per source and auto-converge setting; a cross marks a
/// forced (not converged) end.
pub fn sweep(outcomes: &[Outcome]) -> String {
    svg(SWEEP_SIZE, |root| {
        let max_rate = outcomes
            .iter()
            .map(|o| o.case.rate_mib)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let panels = root.split_evenly((SWEEP_METRICS.len(), 1));
        let mut series: Vec<(TrackingSource, bool)> = outcomes
            .iter()
            .map(|o| (o.case.source, o.case.auto_converge))
            .collect();
        series.sort_by_key(|&(s, a)| (s == TrackingSource::Ring, a));
        series.dedup();
        for (area, &(what, metric)) in panels.iter().zip(&SWEEP_METRICS) {
            let top = outcomes
                .iter()
                .filter_map(|o| o.status.as_ref().and_then(metric))
                .fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{what} by write rate"), ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..max_rate * 1.1, 0.0..top * 1.1)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("guest write rate (--rate), MiB/s")
                .y_desc(what)
                .draw()
                .map_err(err)?;
            for (i, &(source, auto)) in series.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                let mut points: Vec<(f64, f64, bool)> = outcomes
                    .iter()
                    .filter(|o| o.case.source == source && o.case.auto_converge == auto)
                    .filter_map(|o| {
                        let s = o.status.as_ref()?;
                        Some((
                            o.case.rate_mib as f64,
                            metric(s)?,
                            s.converged == Some(true),
                        ))
                    })
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                let label = format!(
                    "{}{}",
                    if source == TrackingSource::Ring {
                        "ring"
                    } else {
                        "bitmap"
                    },
                    if auto { " + auto-converge" } else { "" }
                );
                chart
                    .draw_series(LineSeries::new(
                        points.iter().map(|p| (p.0, p.1)),
                        colour.stroke_width(2),
                    ))
                    .map_err(err)?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(
                        |&(x, y, converged)| -> DynElement<SVGBackend, (f64, f64)> {
                            if converged {
                                Circle::new((x, y), 3, colour.filled()).into_dyn()
                            } else {
                                Cross::new((x, y), 5, colour.stroke_width(2)).into_dyn()
                            }
                        },
                    ))
                    .map_err(err)?;
            }
            legend(&mut chart)?;
        }
        Ok(())
    })
}
