//! Output of the experiments: CSV files, plots (SVG and PNG through
//! plotters) and progress lines.
//!
//! The PNG backend draws text with ab_glyph and the DejaVu Sans font
//! embedded by the `dejavu` crate, so no system fonts are needed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{LabError, Written};

/// A CSV table built row by row; values are written as given (no quoting
/// needed: the lab's cells hold numbers and simple words).
pub struct Csv {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn new(header: &[&'static str]) -> Self {
        Csv {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn write(&self, path: &Path) -> Result<(), LabError> {
        let mut out = self.header.join(",");
        out.push('\n');
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| c.replace(',', ";")).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        write_file(path, &out)
    }
}

pub fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|reason| LabError::Write {
        path: path.to_path_buf(),
        reason,
    })
}

/// One data series of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Joined by a line (a model or bound curve); otherwise marked points.
    pub line: bool,
    pub color: RGBColor,
}

/// A chart with linear axes.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Names for integer x positions (categories), if any.
    pub x_names: Option<Vec<String>>,
}

pub const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Writes an experiment's files in `dir`: `stem.csv`, the chart as
/// `stem.svg` and `stem.png`, and the summary as `stem.md`.
pub fn write_all(
    dir: &Path,
    stem: &str,
    csv: &Csv,
    chart: &Chart,
    summary: &str,
) -> Result<Written, LabError> {
    let csv_path = dir.join(format!("{stem}.csv"));
    csv.write(&csv_path)?;
    let (svg, png) = render(chart, &dir.join(stem))?;
    let summary_path = dir.join(format!("{stem}.md"));
    write_file(&summary_path, summary)?;
    Ok(Written {
        csv: csv_path,
        svg,
        png,
        summary: summary_path,
    })
}

/// Writes `stem.svg` and `stem.png`; returns their paths.
pub fn render(chart: &Chart, stem: &Path) -> Result<(PathBuf, PathBuf), LabError> {
    register_font();
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| LabError::Plot { path, message }
    };
    {
        let root = SVGBackend::new(&svg, (900, 600)).into_drawing_area();
        draw(root, chart).map_err(err(&svg))?;
    }
    {
        let root = BitMapBackend::new(&png, (900, 600)).into_drawing_area();
        draw(root, chart).map_err(err(&png))?;
    }
    Ok((svg, png))
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| format!("{x:?}");
    root.fill(&WHITE).map_err(e)?;
    let all = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for (x, y) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    let pad = ((x1 - x0) * 0.05).max(0.5);
    let (x0, x1) = (x0 - pad, x1 + pad);
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(e)?;
    let names = chart.x_names.clone();
    let x_fmt = move |x: &f64| match &names {
        Some(n) if (x - x.round()).abs() < 1e-9 && x.round() >= 0.0 => {
            n.get(x.round() as usize).cloned().unwrap_or_default()
        }
        Some(_) => String::new(),
        None => format!("{x}"),
    };
    let mut mesh = ctx.configure_mesh();
    mesh.x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&x_fmt);
    if let Some(n) = &chart.x_names {
        mesh.x_labels(n.len() * 2 + 1);
    }
    mesh.draw().map_err(e)?;
    for s in &chart.series {
        let color = s.color;
        if s.line {
            ctx.draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        } else {
            ctx.draw_series(s.points.iter().map(|p| Circle::new(*p, 5, color.filled())))
                .map_err(e)?
                .label(&s.name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// A progress line on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// A markdown table from a header and rows.
pub fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(
        s,
        "|{}|",
        header.iter().map(|_| " --- ").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// Percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
