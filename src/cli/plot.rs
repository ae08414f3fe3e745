//! `dino-stream plot`: a training run's curves as PNG, from RUN/metrics.jsonl.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;

use crate::train::LogLine;

/// Draw a run's curves from RUN/metrics.jsonl as PNGs in RUN/plots (or --out).
///
/// One file per curve, against the optimizer step: loss.png, lr.png, weight_decay.png,
/// momentum.png, teacher_temp.png, images_per_sec.png, data_wait.png (share of the step
/// time spent waiting for data) and teacher_entropy.png (per sample and of the batch mean,
/// the collapse indicators); overview.png holds all of them.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The run folder (holds metrics.jsonl)
    #[arg(value_name = "RUN")]
    run: PathBuf,
    /// Output folder [default: RUN/plots]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// One panel: a title and its series (label, values per log line).
struct Panel {
    file: &'static str,
    title: &'static str,
    series: Vec<(&'static str, Vec<f64>)>,
}

const WIDTH: u32 = 800;
const HEIGHT: u32 = 500;
const FONT: &str = "sans-serif";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = args.run.join("metrics.jsonl");
    let lines = read_metrics(&path)?;
    if lines.len() < 2 {
        anyhow::bail!(
            "{}: {} line(s); a curve needs at least 2 (the run logs every run.log_every steps)",
            path.display(),
            lines.len()
        );
    }
    let out = args.out.unwrap_or_else(|| args.run.join("plots"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // The font is compiled in: plots look the same on every machine, with no system fonts.
    register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("the embedded DejaVu Sans font did not load"))?;
    let steps: Vec<f64> = lines.iter().map(|l| l.step as f64).collect();
    let column = |f: fn(&LogLine) -> f64| lines.iter().map(f).collect::<Vec<_>>();
    let panels = [
        Panel {
            file: "loss.png",
            title: "loss",
            series: vec![("loss", column(|l| l.loss))],
        },
        Panel {
            file: "lr.png",
            title: "learning rate",
            series: vec![("lr", column(|l| l.lr))],
        },
        Panel {
            file: "weight_decay.png",
            title: "weight decay",
            series: vec![("weight decay", column(|l| l.wd))],
        },
        Panel {
            file: "momentum.png",
            title: "teacher momentum",
            series: vec![("momentum", column(|l| l.momentum))],
        },
        Panel {
            file: "teacher_temp.png",
            title: "teacher temperature",
            series: vec![("teacher temp", column(|l| l.teacher_temp))],
        },
        Panel {
            file: "images_per_sec.png",
            title: "images/s",
            series: vec![("images/s", column(|l| l.images_per_sec))],
        },
        Panel {
            file: "data_wait.png",
            title: "data wait (% of step time)",
            series: vec![("data wait %", column(|l| 100.0 * l.data_wait_fraction))],
        },
        Panel {
            file: "teacher_entropy.png",
            title: "teacher entropy (nats)",
            series: vec![
                ("per sample", column(|l| l.teacher_entropy)),
                ("of the batch mean", column(|l| l.teacher_marginal_entropy)),
            ],
        },
    ];
    let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    for panel in &panels {
        {
            let area = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
            draw(&area, panel, &steps)?;
            area.present().map_err(plot_error)?;
        }
        save(&out.join(panel.file), &buffer, WIDTH, HEIGHT)?;
    }
    let (cols, rows) = (4u32, 2u32);
    let (w, h) = (cols * WIDTH / 2, rows * HEIGHT / 2);
    let mut overview = vec![0u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut overview, (w, h)).into_drawing_area();
        for (cell, panel) in area
            .split_evenly((rows as usize, cols as usize))
            .iter()
            .zip(&panels)
        {
            draw(cell, panel, &steps)?;
        }
        area.present().map_err(plot_error)?;
    }
    save(&out.join("overview.png"), &overview, w, h)?;
    println!(
        "{} curves over {} log lines (steps {}..{}) -> {}",
        panels.len(),
        lines.len(),
        steps[0],
        steps[steps.len() - 1],
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_metrics(path: &Path) -> anyhow::Result<Vec<LogLine>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (is this a run folder of `dino-stream train`?)",
            path.display()
        )
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a metrics line", path.display(), i + 1))
        })
        .collect()
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing failed: {e}")
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    steps: &[f64],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(plot_error)?;
    let values = panel.series.iter().flat_map(|(_, v)| v.iter().copied());
    let (lo, hi) = values
        .filter(|&v| plottable(v))
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        // nothing to draw: an empty chart, not a range of (MAX, MIN)
        return Ok(());
    }
    // A constant curve (e.g. a fixed teacher temperature) still gets a visible band.
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        lo.abs().max(1e-12) * 0.05
    };
    let (x0, x1) = (steps[0], steps[steps.len() - 1]);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (lo - pad)..(hi + pad))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .label_style((FONT, 12))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format_value(*v))
        .draw()
        .map_err(plot_error)?;
    let colors = [BLUE, RED];
    for ((label, values), color) in panel.series.iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(
                steps
                    .iter()
                    .copied()
                    .zip(values.iter().copied())
                    .filter(|&(_, v)| plottable(v)),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if panel.series.len() > 1 {
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

/// A value the chart can hold: finite and within f32's range, which every figure the trainer
/// logs comes from. Beyond it the axis span itself overflows to infinity, and the axis
/// ticks are never found.
fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= f64::from(f32::MAX)
}

/// Axis labels: up to 4 decimals without trailing zeros, scientific for lr-sized values.
fn format_value(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e5).contains(&a) {
        format!("{v:.2e}")
    } else {
        let text = format!("{v:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn save(path: &Path, rgb: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
    image::save_buffer(path, rgb, width, height, image::ColorType::Rgb8)
        .with_context(|| format!("writing {}", path.display()))
}
