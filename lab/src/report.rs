//! Output of the experiments: CSV files, plots (SVG and PNG through
//! plotters) and progress lines.
//!
//! The PNG backend draws text with ab_glyph and the DejaVu Sans font
//! embedded by the `dejavu` crate, so no system fonts are needed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
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
    /// Joined by a line (a model or bound curve).
    pub line: bool,
    /// Each point marked with a dot (measured values).
    pub marks: bool,
    /// Min-max bars: (x, min, max) for each measured point that has a spread.
    pub bars: Vec<(f64, f64, f64)>,
    pub color: RGBColor,
}

impl Series {
    /// A curve (a model or a bound).
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Series {
            name: name.into(),
            points,
            line: true,
            marks: false,
            bars: Vec::new(),
            color,
        }
    }

    /// Measured points, unjoined.
    pub fn points(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Series {
            name: name.into(),
            points,
            line: false,
            marks: true,
            bars: Vec::new(),
            color,
        }
    }

    /// Measured points joined by a line.
    pub fn joined(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Series {
            line: true,
            ..Series::points(name, points, color)
        }
    }

    /// The same series with min-max bars.
    pub fn with_bars(mut self, bars: Vec<(f64, f64, f64)>) -> Self {
        self.bars = bars;
        self
    }
}

/// One panel of a figure: axes, series and notes.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Names for integer x positions (categories), if any.
    pub x_names: Option<Vec<String>>,
    /// Logarithmic x axis (values must be positive).
    pub x_log: bool,
    /// Logarithmic y axis (values must be positive).
    pub y_log: bool,
    /// Fixed y range instead of one fitted to the data.
    pub y_range: Option<(f64, f64)>,
    /// Lines of text written inside the plot (formulas, settings).
    pub notes: Vec<String>,
}

impl Chart {
    /// A panel with linear axes and no notes.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
        series: Vec<Series>,
    ) -> Self {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series,
            x_names: None,
            x_log: false,
            y_log: false,
            y_range: None,
            notes: Vec::new(),
        }
    }
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

/// Writes an experiment's files in `dir`: `stem.csv`, the figure (one
/// panel per chart) as `stem.svg` and `stem.png`, and the summary as
/// `stem.md`.
pub fn write_all(
    dir: &Path,
    stem: &str,
    csv: &Csv,
    panels: &[Chart],
    summary: &str,
) -> Result<Written, LabError> {
    let csv_path = dir.join(format!("{stem}.csv"));
    csv.write(&csv_path)?;
    let (svg, png) = render(panels, &dir.join(stem))?;
    let summary_path = dir.join(format!("{stem}.md"));
    write_file(&summary_path, summary)?;
    Ok(Written {
        csv: csv_path,
        svg,
        png,
        summary: summary_path,
    })
}

/// Size of a figure of `panels` panels, big enough to project.
fn figure_size(panels: usize) -> (u32, u32) {
    match panels {
        0 | 1 => (1100, 750),
        2 => (1600, 720),
        _ => (1600, 1300),
    }
}

/// Writes `stem.svg` and `stem.png`; returns their paths.
pub fn render(panels: &[Chart], stem: &Path) -> Result<(PathBuf, PathBuf), LabError> {
    register_font();
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| LabError::Plot { path, message }
    };
    let size = figure_size(panels.len());
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw_figure(root, panels).map_err(err(&svg))?;
    }
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw_figure(root, panels).map_err(err(&png))?;
    }
    Ok((svg, png))
}

/// One panel: the whole figure. Two: side by side. Three or more: the
/// first across the top, the others side by side below it.
fn draw_figure<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Chart],
) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| format!("{x:?}");
    root.fill(&WHITE).map_err(e)?;
    match panels.len() {
        0 => {}
        1 => draw_panel(&root, &panels[0])?,
        2 => {
            let (a, b) = root.split_horizontally(root.dim_in_pixel().0 / 2);
            draw_panel(&a, &panels[0])?;
            draw_panel(&b, &panels[1])?;
        }
        k => {
            let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 * 55 / 100);
            draw_panel(&top, &panels[0])?;
            let cells = bottom.split_evenly((1, k - 1));
            for (cell, chart) in cells.iter().zip(&panels[1..]) {
                draw_panel(cell, chart)?;
            }
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

/// The data's range on one axis, padded; for a log axis only positive
/// values count and the padding is a factor.
fn axis_range(values: impl Iterator<Item = f64>, log: bool, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return if log { (0.1, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let lo = if from_zero { lo.min(0.0) } else { lo };
        let pad = ((hi - lo) * 0.05).max(if from_zero { 0.0 } else { 0.5 });
        let hi = if hi <= lo { lo + 1.0 } else { hi };
        (
            if from_zero { lo } else { lo - pad },
            hi + pad.max((hi - lo) * 0.08),
        )
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<(), String> {
    // Notes go in a strip above the plot, where they hide no data.
    if !chart.notes.is_empty() {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| format!("{x:?}");
        let line = 22;
        let height = (line * chart.notes.len() as u32 + 14).min(area.dim_in_pixel().1 / 3);
        let (top, rest) = area.split_vertically(height);
        let font: TextStyle = ("sans-serif", 17).into_font().into();
        for (k, note) in chart.notes.iter().enumerate() {
            top.draw(&Text::new(
                note.clone(),
                (90, 8 + line as i32 * k as i32),
                font.clone(),
            ))
            .map_err(e)?;
        }
        return draw_plot(&rest, chart);
    }
    draw_plot(area, chart)
}

/// Draws `chart`'s axes and series (not its notes).
fn draw_plot<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<(), String> {
    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = chart.series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.bars.iter().flat_map(|b| [b.1, b.2]))
    });
    let (mut x0, x1) = axis_range(xs, chart.x_log, false);
    // A time or size axis whose data start at 0 starts there too
    // (categories keep their padding).
    if !chart.x_log && chart.x_names.is_none() && x0 < 0.0 {
        let data_min = chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(f64::MAX, f64::min);
        if data_min >= 0.0 {
            x0 = 0.0;
        }
    }
    let (y0, y1) = chart
        .y_range
        .unwrap_or_else(|| axis_range(ys, chart.y_log, true));
    match (chart.x_log, chart.y_log) {
        (false, false) => draw_in(area, chart, x0..x1, y0..y1),
        (true, false) => draw_in(area, chart, (x0..x1).log_scale(), y0..y1),
        (false, true) => draw_in(area, chart, x0..x1, (y0..y1).log_scale()),
        (true, true) => draw_in(area, chart, (x0..x1).log_scale(), (y0..y1).log_scale()),
    }
}

/// Axis labels: whole numbers without decimals, others with up to three
/// significant digits.
fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if (v - v.round()).abs() < 1e-9 && v.abs() < 1e9 {
        format!("{}", v.round() as i64)
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn draw_in<DB, XS, YS>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    x: XS,
    y: YS,
) -> Result<(), String>
where
    DB: DrawingBackend,
    XS: AsRangedCoord<Value = f64>,
    YS: AsRangedCoord<Value = f64>,
    XS::CoordDescType: ValueFormatter<f64>,
    YS::CoordDescType: ValueFormatter<f64>,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| format!("{x:?}");
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(55)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    let names = chart.x_names.clone();
    let x_fmt = move |x: &f64| match &names {
        Some(n) if (x - x.round()).abs() < 1e-9 && x.round() >= 0.0 => {
            n.get(x.round() as usize).cloned().unwrap_or_default()
        }
        Some(_) => String::new(),
        None => tick(*x),
    };
    let y_fmt = |y: &f64| tick(*y);
    let mut mesh = ctx.configure_mesh();
    mesh.x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .axis_desc_style(("sans-serif", 20))
        .label_style(("sans-serif", 17))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt);
    if let Some(n) = &chart.x_names {
        mesh.x_labels(n.len() * 2 + 1);
    }
    mesh.draw().map_err(e)?;
    for s in &chart.series {
        let color = s.color;
        let bar_style = color.stroke_width(2);
        for &(x, lo, hi) in &s.bars {
            ctx.draw_series(std::iter::once(PathElement::new(
                vec![(x, lo), (x, hi)],
                bar_style,
            )))
            .map_err(e)?;
            for end in [lo, hi] {
                ctx.draw_series(std::iter::once(
                    EmptyElement::at((x, end)) + PathElement::new(vec![(-6, 0), (6, 0)], bar_style),
                ))
                .map_err(e)?;
            }
        }
        if s.line {
            let drawn = ctx
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(3),
                ))
                .map_err(e)?;
            if !s.marks {
                drawn.label(&s.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            }
        }
        if s.marks {
            ctx.draw_series(s.points.iter().map(|p| Circle::new(*p, 6, color.filled())))
                .map_err(e)?
                .label(&s.name)
                .legend(move |(x, y)| Circle::new((x + 12, y), 6, color.filled()));
        }
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 17))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Median and range of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many samples.
    pub count: usize,
}

impl Spread {
    /// The median (the mean of the two middle values for an even count),
    /// min and max of `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let k = s.len();
        let median = if k % 2 == 1 {
            s[k / 2]
        } else {
            (s[k / 2 - 1] + s[k / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: s[0],
            max: s[k - 1],
            count: k,
        })
    }

    /// `1.23 [1.10–1.40]`-style text with `digits` decimals (no range for
    /// one sample).
    pub fn text(&self, digits: usize) -> String {
        if self.count <= 1 {
            format!("{:.*}", digits, self.median)
        } else {
            format!(
                "{:.*} [{:.*}–{:.*}]",
                digits, self.median, digits, self.min, digits, self.max
            )
        }
    }
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
