//! SVG charts of the results (plotters' SVG backend: text is written as SVG text, so
//! no font library is needed).
//!
//! Log scales are drawn as log10 of the value on a linear axis with the tick labels
//! written back as values, which keeps one code path for both kinds of axis.

use super::report::{bytes_label, Results, Table};
use crate::common::Which;
use plotters::prelude::*;
use plotters::style::text_anchor;
use std::error::Error;
use std::path::Path;

type Res = Result<(), Box<dyn Error>>;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 480;

fn color(which: Which) -> RGBColor {
    match which {
        Which::SpanHeap => RGBColor(0x1f, 0x77, 0xb4),
        Which::Uncached => RGBColor(0x9e, 0xc5, 0xe8),
        Which::Talc => RGBColor(0xd6, 0x27, 0x28),
        Which::Buddy => RGBColor(0x94, 0x67, 0xbd),
        Which::Lla => RGBColor(0x8c, 0x56, 0x4b),
        Which::System => RGBColor(0x7f, 0x7f, 0x7f),
        Which::Mimalloc => RGBColor(0x2c, 0xa0, 0x2c),
        Which::Jemalloc => RGBColor(0xff, 0x7f, 0x0e),
    }
}

/// A log10 tick label written back as a value.
fn pow10_label(v: f64) -> String {
    let x = 10f64.powf(v);
    if x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else if x >= 0.01 {
        format!("{x:.2}")
    } else {
        format!("{x:.0e}")
    }
}

/// One bar per allocator per group. `values[s][g]` is allocator `s`'s value in group
/// `g`; `log` draws the y axis in log10; `marks` are horizontal reference lines.
struct Bars<'a> {
    title: &'a str,
    y_desc: &'a str,
    groups: Vec<String>,
    series: Vec<(Which, Vec<Option<f64>>)>,
    log: bool,
    marks: Vec<f64>,
}

impl Bars<'_> {
    fn draw(&self, path: &Path) -> Res {
        let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let t = |v: f64| if self.log { v.max(1e-9).log10() } else { v };
        let all: Vec<f64> = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().flatten().copied())
            .chain(self.marks.iter().copied())
            .filter(|v| *v > 0.0)
            .collect();
        if all.is_empty() {
            return Ok(());
        }
        let (lo, hi) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| {
            (lo.min(t(v)), hi.max(t(v)))
        });
        // Headroom above the bars for the legend.
        let (y0, y1) = if self.log {
            (lo.floor(), hi.ceil().max(lo.floor() + 1.0) + 1.0)
        } else {
            (0.0, hi * 1.8)
        };
        let n = self.groups.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n, y0..y1)?;
        let log = self.log;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(self.y_desc)
            .y_label_formatter(&|v| {
                if log {
                    pow10_label(*v)
                } else {
                    format!("{v:.1}")
                }
            })
            .draw()?;
        let k = self.series.len() as f64;
        let width = 0.8 / k;
        for (s, (which, values)) in self.series.iter().enumerate() {
            let c = color(*which);
            let bars = values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?;
                let x = g as f64 + 0.1 + s as f64 * width;
                Some(Rectangle::new(
                    [(x, y0), (x + width * 0.9, t(v))],
                    c.filled(),
                ))
            });
            chart
                .draw_series(bars)?
                .label(which.name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        for &m in &self.marks {
            chart.draw_series(LineSeries::new(
                [(0.0, t(m)), (n, t(m))],
                BLACK.mix(0.6).stroke_width(1),
            ))?;
        }
        // Group names under the axis, centred on their group (one or two lines).
        let style = TextStyle::from(("sans-serif", 13).into_font()).pos(text_anchor::Pos::new(
            text_anchor::HPos::Center,
            text_anchor::VPos::Top,
        ));
        for (g, name) in self.groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, y0));
            for (i, line) in wrap(name, 22).iter().enumerate() {
                root.draw(&Text::new(
                    line.clone(),
                    (px, py + 6 + 15 * i as i32),
                    style.clone(),
                ))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// Splits `s` into lines of at most about `width` characters at spaces.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in s.split(' ') {
        let last = lines.last_mut().unwrap();
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// One line per allocator over a table's columns, both axes log: x is the log to
/// `base` of each column's parameter, and `x_label` writes a tick back as a label.
fn lines(
    path: &Path,
    title: &str,
    table: &Table,
    (x_desc, base): (&str, f64),
    x_label: fn(f64) -> String,
) -> Res {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let xs: Vec<f64> = table
        .columns
        .iter()
        .map(|c| (c.param as f64).log(base))
        .collect();
    let ys: Vec<f64> = table
        .rows
        .iter()
        .flat_map(|(_, cells)| cells.iter().flatten().map(|c| (c.value / 1e6).log10()))
        .collect();
    if ys.is_empty() || xs.is_empty() {
        return Ok(());
    }
    let (lo, hi) = ys
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (x0, x1) = (xs[0] - 0.3, xs[xs.len() - 1] + 0.3);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, lo.floor()..hi.ceil().max(lo.floor() + 1.0))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("million calls/s (log)")
        .x_labels(xs.len())
        .x_label_formatter(&|v| x_label(*v))
        .y_label_formatter(&|v| pow10_label(*v))
        .draw()?;
    for (which, cells) in &table.rows {
        let c = color(*which);
        let points: Vec<(f64, f64)> = cells
            .iter()
            .zip(&xs)
            .filter_map(|(cell, &x)| Some((x, (cell.as_ref()?.value / 1e6).log10())))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(which.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes every chart the results have data for; returns (file name, title) pairs.
pub(crate) fn write_all(results: &Results, dir: &Path) -> Vec<(String, String)> {
    let mut written = Vec::new();
    let mut emit = |file: &str, title: &str, r: Res| match r {
        Ok(()) if dir.join(file).exists() => written.push((file.to_string(), title.to_string())),
        Ok(()) => {}
        Err(e) => eprintln!("chart {file}: {e}"),
    };

    // Throughput relative to spanheap, one-thread headline figures.
    let heads: [(&str, &str, Option<&str>); 7] = [
        ("pairs", "pairs 8 B..64 KiB (geomean)", None),
        ("random-actions", "random actions (geomean)", None),
        ("glibc-simple", "glibc-simple (geomean)", None),
        ("growth", "growth, 1k live", Some("1k live")),
        ("growth", "growth, 100k live", Some("100k live")),
        ("larson-local", "larson, 1 thread", Some("1 thread")),
        (
            "larson-batch",
            "larson batch hand-off, 2 threads",
            Some("2 threads"),
        ),
    ];
    let present: Vec<_> = heads
        .iter()
        .filter(|h| results.table(h.0).is_some())
        .collect();
    if !present.is_empty() {
        let value = |id: &str, col: Option<&str>, w: Which| {
            let t = results.table(id)?;
            match col {
                None => t.geomean_one_thread(w),
                Some(c) => t.value(w, t.column_index(c)?),
            }
        };
        let series = Which::ALL
            .into_iter()
            .map(|w| {
                let v = present
                    .iter()
                    .map(|(id, _, col)| {
                        Some(value(id, *col, w)? / value(id, *col, Which::SpanHeap)?)
                    })
                    .collect();
                (w, v)
            })
            .filter(|(_, v): &(Which, Vec<Option<f64>>)| v.iter().any(Option::is_some))
            .collect();
        let bars = Bars {
            title: "Throughput relative to spanheap (1.0 = spanheap; higher is faster)",
            y_desc: "x spanheap (log)",
            groups: present.iter().map(|h| h.1.to_string()).collect(),
            series,
            log: true,
            marks: vec![1.0],
        };
        emit(
            "throughput.svg",
            "Throughput relative to spanheap",
            bars.draw(&dir.join("throughput.svg")),
        );
    }

    // Scaling: 2 threads / 1 thread.
    let scaling: Vec<&Table> = [
        "larson-local",
        "larson-ring",
        "larson-batch",
        "xmalloc",
        "cache-scratch",
    ]
    .iter()
    .filter_map(|id| results.table(id))
    .collect();
    if !scaling.is_empty() {
        let series = Which::ALL
            .into_iter()
            .map(|w| {
                let v = scaling
                    .iter()
                    .map(|t| {
                        let d = t.derived.iter().find(|d| d.label == "2 / 1")?;
                        t.derived_value(w, d)
                    })
                    .collect();
                (w, v)
            })
            .filter(|(_, v): &(Which, Vec<Option<f64>>)| v.iter().any(Option::is_some))
            .collect();
        let bars = Bars {
            title: "Scaling: 2 threads / 1 thread (2 cores; goal 1.8)",
            y_desc: "2-thread / 1-thread throughput",
            groups: scaling.iter().map(|t| t.id.to_string()).collect(),
            series,
            log: false,
            marks: vec![1.0, 1.8],
        };
        emit(
            "scaling.svg",
            "Scaling, 2 threads / 1 thread",
            bars.draw(&dir.join("scaling.svg")),
        );
    }

    if let Some(t) = results.table("pairs") {
        let r = lines(
            &dir.join("pairs.svg"),
            "alloc/free pairs per size class, 1000 live",
            t,
            ("object size", 2.0),
            |v| bytes_label(2f64.powf(v).round() as usize),
        );
        emit("pairs.svg", "Pairs per size class", r);
    }
    if let Some(t) = results.table("growth") {
        let r = lines(
            &dir.join("growth.svg"),
            "Throughput against the live set (16..512 B)",
            t,
            ("live objects", 10.0),
            |v| {
                let n = 10f64.powf(v).round() as usize;
                if n >= 1000 {
                    format!("{}k", n / 1000)
                } else {
                    n.to_string()
                }
            },
        );
        emit("growth.svg", "Cost growth with the live set", r);
    }
    if let Some(t) = results.table("efficiency") {
        let bars = Bars {
            title: "Heap efficiency: live bytes at the first failure / region bytes",
            y_desc: "efficiency (%)",
            groups: t.columns.iter().map(|c| c.label.clone()).collect(),
            series: t
                .rows
                .iter()
                .map(|(w, cells)| {
                    (
                        *w,
                        cells
                            .iter()
                            .map(|c| c.as_ref().map(|c| c.value * 100.0))
                            .collect(),
                    )
                })
                .collect(),
            log: false,
            marks: vec![85.0],
        };
        emit(
            "efficiency.svg",
            "Heap efficiency",
            bars.draw(&dir.join("efficiency.svg")),
        );
    }
    written
}
