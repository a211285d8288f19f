//! The suite's results as tables: per workload a table of allocators x columns
//! (medians, ratios to spanheap, latency), a summary for the README, and the goals
//! of issue 5 checked against the figures.

use super::memory::Metadata;
use super::Scale;
use crate::common::probe::Latency;
use crate::common::Which;
use std::fmt::Write;
use std::time::Duration;

/// One column of a table: a size, a live-set size, a thread count...
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub(crate) label: String,
    /// Worker threads.
    pub(crate) threads: usize,
    /// The workload's parameter (size in bytes, live objects, maximum size).
    pub(crate) param: usize,
}

impl Column {
    pub(crate) fn new(label: impl Into<String>, param: usize) -> Self {
        Column {
            label: label.into(),
            threads: 1,
            param,
        }
    }

    /// A thread-count column; "(oversubscribed)" when there are more threads than
    /// cores.
    pub(crate) fn threads(threads: usize, cores: usize) -> Self {
        let label = match threads {
            1 => "1 thread".to_string(),
            t if t > cores => format!("{t} threads (oversubscribed)"),
            t => format!("{t} threads"),
        };
        Column {
            label,
            threads,
            param: threads,
        }
    }
}

/// A size in bytes as a column label.
pub(crate) fn bytes_label(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Unit {
    /// Allocator calls per second (higher is better).
    OpsPerSec,
    /// A fraction shown as a percentage (higher is better).
    Percent,
}

/// A column computed from two others: `value(num) / value(den)`.
#[derive(Clone, Debug)]
pub(crate) struct Derived {
    pub(crate) label: String,
    pub(crate) num: usize,
    pub(crate) den: usize,
}

/// Medians of one cell.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    pub(crate) value: f64,
    /// Smallest and largest run.
    pub(crate) spread: (f64, f64),
    pub(crate) latency: Option<Latency>,
    pub(crate) cross: Option<f64>,
}

pub(crate) struct Table {
    pub(crate) id: &'static str,
    pub(crate) title: String,
    /// What a step does, in a paragraph.
    pub(crate) about: String,
    pub(crate) unit: Unit,
    pub(crate) columns: Vec<Column>,
    pub(crate) derived: Vec<Derived>,
    /// Runs per cell.
    pub(crate) runs: usize,
    /// What `Cell::cross` means in this table.
    pub(crate) cross_label: &'static str,
    pub(crate) rows: Vec<(Which, Vec<Option<Cell>>)>,
}

impl Table {
    pub(crate) fn new(id: &'static str, title: &str, about: &str, unit: Unit) -> Self {
        Table {
            id,
            title: title.into(),
            about: about.into(),
            unit,
            columns: Vec::new(),
            derived: Vec::new(),
            runs: 0,
            cross_label: "Share of frees that hit another thread's object",
            rows: Vec::new(),
        }
    }

    pub(crate) fn with_cross_label(mut self, label: &'static str) -> Self {
        self.cross_label = label;
        self
    }

    pub(crate) fn columns(mut self, columns: Vec<Column>) -> Self {
        self.columns = columns;
        self
    }

    /// Adds "T threads / 1 thread" columns for every thread count above one.
    pub(crate) fn with_scaling(mut self) -> Self {
        let one = self.columns.iter().position(|c| c.threads == 1);
        if let Some(one) = one {
            for (i, c) in self.columns.iter().enumerate() {
                if c.threads > 1 {
                    self.derived.push(Derived {
                        label: format!("{} / 1", c.threads),
                        num: i,
                        den: one,
                    });
                }
            }
        }
        self
    }

    pub(crate) fn with_derived(mut self, label: &str, num: usize, den: usize) -> Self {
        self.derived.push(Derived {
            label: label.into(),
            num,
            den,
        });
        self
    }

    pub(crate) fn cell(&self, which: Which, column: usize) -> Option<&Cell> {
        let (_, cells) = self.rows.iter().find(|(w, _)| *w == which)?;
        cells.get(column)?.as_ref()
    }

    pub(crate) fn value(&self, which: Which, column: usize) -> Option<f64> {
        self.cell(which, column).map(|c| c.value)
    }

    pub(crate) fn derived_value(&self, which: Which, d: &Derived) -> Option<f64> {
        Some(self.value(which, d.num)? / self.value(which, d.den)?)
    }

    pub(crate) fn column_index(&self, label: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.label == label)
    }

    /// Geometric mean over the one-thread columns.
    pub(crate) fn geomean_one_thread(&self, which: Which) -> Option<f64> {
        let v: Vec<f64> = (0..self.columns.len())
            .filter(|&i| self.columns[i].threads == 1)
            .map(|i| self.value(which, i))
            .collect::<Option<_>>()?;
        (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
    }

    fn format_value(&self, v: f64) -> String {
        match self.unit {
            Unit::OpsPerSec => format_ops(v),
            Unit::Percent => format!("{:.1}%", v * 100.0),
        }
    }

    fn unit_line(&self) -> String {
        let runs = self.runs;
        match self.unit {
            Unit::OpsPerSec => format!(
                "Million allocator calls per second, median of {runs} run(s); in brackets the ratio to spanheap's figure (below 1: slower than spanheap)."
            ),
            Unit::Percent => format!("Live bytes at the first failed request / region bytes (higher is better), median of {runs} seed(s); in brackets the ratio to spanheap's figure."),
        }
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "### `{}`: {}\n", self.id, self.title);
        let _ = writeln!(out, "{}\n", self.about);
        let _ = writeln!(out, "{}\n", self.unit_line());
        let mut head = "| allocator |".to_string();
        let mut rule = "|---|".to_string();
        for c in &self.columns {
            let _ = write!(head, " {} |", c.label);
            rule.push_str("---:|");
        }
        for d in &self.derived {
            let _ = write!(head, " {} |", d.label);
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for (which, cells) in &self.rows {
            let mut line = format!("| {} |", which.name());
            for (i, cell) in cells.iter().enumerate() {
                let text = match cell {
                    None => "-".to_string(),
                    Some(c) => {
                        let base = self.value(Which::SpanHeap, i);
                        match base {
                            Some(b) if *which != Which::SpanHeap => format!(
                                "{} ({})",
                                self.format_value(c.value),
                                format_ratio(c.value / b)
                            ),
                            _ => self.format_value(c.value),
                        }
                    }
                };
                let _ = write!(line, " {text} |");
            }
            for d in &self.derived {
                let text = self
                    .derived_value(*which, d)
                    .map_or("-".into(), |v| format!("{v:.2}x"));
                let _ = write!(line, " {text} |");
            }
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
        self.cross_markdown(out);
        self.latency_markdown(out);
    }

    fn cross_markdown(&self, out: &mut String) {
        let multi: Vec<usize> = (0..self.columns.len())
            .filter(|&i| self.columns[i].threads > 1)
            .collect();
        let any = self.rows.iter().any(|(_, cells)| {
            multi
                .iter()
                .any(|&i| cells[i].as_ref().is_some_and(|c| c.cross.is_some()))
        });
        if !any {
            return;
        }
        let _ = write!(out, "{}:", self.cross_label);
        for &i in &multi {
            let parts: Vec<String> = self
                .rows
                .iter()
                .filter_map(|(w, cells)| {
                    let c = cells[i].as_ref()?.cross?;
                    Some(format!("{} {:.0}%", w.name(), c * 100.0))
                })
                .collect();
            let _ = write!(out, " {}: {};", self.columns[i].label, parts.join(", "));
        }
        out.push_str("\n\n");
    }

    fn latency_markdown(&self, out: &mut String) {
        let any = self
            .rows
            .iter()
            .any(|(_, cells)| cells.iter().flatten().any(|c| c.latency.is_some()));
        if !any {
            return;
        }
        let _ = writeln!(
            out,
            "Latency of single calls in ns, p50 / p99 of alloc; p50 / p99 of free (every 64th call timed \
             with the TSC, less the cost of an empty probe; resolution about {:.0} ns, the TSC read's own \
             cost here, so 0 means below that):\n",
            crate::common::probe::resolution_ns()
        );
        let mut head = "| allocator |".to_string();
        let mut rule = "|---|".to_string();
        for c in &self.columns {
            let _ = write!(head, " {} |", c.label);
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for (which, cells) in &self.rows {
            let mut line = format!("| {} |", which.name());
            for cell in cells {
                let text = match cell.as_ref().and_then(|c| c.latency) {
                    None => "-".to_string(),
                    Some(l) => format!(
                        "{:.0} / {:.0}; {:.0} / {:.0}",
                        l.alloc_p50, l.alloc_p99, l.free_p50, l.free_p99
                    ),
                };
                let _ = write!(line, " {text} |");
            }
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
    }
}

pub(crate) fn format_ops(v: f64) -> String {
    let m = v / 1e6;
    if m >= 100.0 {
        format!("{m:.0}")
    } else if m >= 10.0 {
        format!("{m:.1}")
    } else if m >= 0.1 {
        format!("{m:.2}")
    } else {
        format!("{m:.4}")
    }
}

pub(crate) fn format_ratio(r: f64) -> String {
    if r >= 0.1 {
        format!("{r:.2}x")
    } else {
        format!("{r:.3}x")
    }
}

// ---------------------------------------------------------------------------------
// The run as a whole

/// The machine and the run.
pub(crate) struct Header {
    pub(crate) date: String,
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) load_start: String,
    pub(crate) load_end: String,
    pub(crate) commit: String,
    pub(crate) quick: bool,
    pub(crate) runs: usize,
    pub(crate) time: Duration,
    pub(crate) elapsed: Duration,
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Header {
    pub(crate) fn now(scale: &Scale) -> Self {
        let commit = command_line("git", &["rev-parse", "--short", "HEAD"]).unwrap_or("?".into());
        let dirty = command_line("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty());
        Header {
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or("?".into()),
            cpu: crate::common::cpu_model(),
            cores: crate::common::cores(),
            load_start: crate::common::loadavg(),
            load_end: String::new(),
            commit: if dirty {
                format!("{commit} + uncommitted changes")
            } else {
                commit
            },
            quick: scale.quick,
            runs: scale.runs,
            time: scale.time,
            elapsed: Duration::ZERO,
        }
    }

    pub(crate) fn finish(mut self, elapsed: Duration) -> Self {
        self.load_end = crate::common::loadavg();
        self.elapsed = elapsed;
        self
    }

    pub(crate) fn machine_line(&self) -> String {
        format!(
            "{}, nproc {}, {}, loadavg {}",
            self.cpu, self.cores, self.date, self.load_start
        )
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Machine: {} (`nproc` = {}), {}. Commit {}. Load average (1, 5, 15 min) {} at the start, {} at the end.\n",
            self.cpu, self.cores, self.date, self.commit, self.load_start, self.load_end
        );
        let _ = writeln!(
            out,
            "Mode: {}; {} run(s) per cell, {} ms per measurement; {:.0} s in all.{}\n",
            if self.quick {
                "quick (smoke test, numbers not meaningful)"
            } else {
                "full"
            },
            self.runs,
            self.time.as_millis(),
            self.elapsed.as_secs_f64(),
            if self.quick {
                ""
            } else {
                " The machine is shared with other builds: quote ratios from one run, not absolute figures across runs."
            }
        );
    }
}

pub(crate) struct Results {
    pub(crate) header: Header,
    pub(crate) tables: Vec<Table>,
    pub(crate) metadata: Option<Metadata>,
}

/// What a summary line shows per allocator.
enum Show {
    /// spanheap's figure, the others as ratios to it.
    Ratio,
    /// Every allocator's own figure (scaling factors, percentages).
    Own,
}

enum Pick {
    Column(&'static str),
    GeomeanOneThread,
    Derived(&'static str),
}

impl Results {
    pub(crate) fn table(&self, id: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.id == id)
    }

    fn subjects(&self) -> Vec<Which> {
        let mut all: Vec<Which> = Vec::new();
        for t in &self.tables {
            for (w, _) in &t.rows {
                if !all.contains(w) {
                    all.push(*w);
                }
            }
        }
        Which::ALL.into_iter().filter(|w| all.contains(w)).collect()
    }

    fn pick(&self, id: &str, pick: &Pick, which: Which) -> Option<f64> {
        let t = self.table(id)?;
        match pick {
            Pick::Column(label) => t.value(which, t.column_index(label)?),
            Pick::GeomeanOneThread => t.geomean_one_thread(which),
            Pick::Derived(label) => {
                let d = t.derived.iter().find(|d| d.label == *label)?;
                t.derived_value(which, d)
            }
        }
    }

    /// The README table: one line per headline figure, one column per allocator.
    pub(crate) fn summary_markdown(&self) -> String {
        let lines: [(&str, &str, Pick, Show); 15] = [
            (
                "pairs",
                "pairs, 64 B, 1000 live: M calls/s",
                Pick::Column("64 B"),
                Show::Ratio,
            ),
            (
                "pairs",
                "pairs, 4 KiB, 1000 live: M calls/s",
                Pick::Column("4 KiB"),
                Show::Ratio,
            ),
            (
                "pairs",
                "pairs, geomean of 8 B..64 KiB",
                Pick::GeomeanOneThread,
                Show::Ratio,
            ),
            (
                "random-actions",
                "random actions, geomean of max 200 B..30 KB",
                Pick::GeomeanOneThread,
                Show::Ratio,
            ),
            (
                "glibc-simple",
                "glibc-simple, geomean of 16 B..4 KiB",
                Pick::GeomeanOneThread,
                Show::Ratio,
            ),
            (
                "growth",
                "growth, 1k live",
                Pick::Column("1k live"),
                Show::Ratio,
            ),
            (
                "growth",
                "growth, 100k live",
                Pick::Column("100k live"),
                Show::Ratio,
            ),
            (
                "growth",
                "growth: cost at 100k / cost at 1k",
                Pick::Derived("cost 100k / 1k"),
                Show::Own,
            ),
            (
                "larson-local",
                "larson, no hand-off, 1 thread",
                Pick::Column("1 thread"),
                Show::Ratio,
            ),
            (
                "larson-local",
                "larson, no hand-off: 2 threads / 1",
                Pick::Derived("2 / 1"),
                Show::Own,
            ),
            (
                "larson-ring",
                "larson, ring hand-off: 2 threads / 1",
                Pick::Derived("2 / 1"),
                Show::Own,
            ),
            (
                "larson-batch",
                "larson, batch hand-off, 2 threads",
                Pick::Column("2 threads"),
                Show::Ratio,
            ),
            (
                "larson-batch",
                "larson, batch hand-off: 2 threads / 1",
                Pick::Derived("2 / 1"),
                Show::Own,
            ),
            (
                "xmalloc",
                "xmalloc producer/consumer: 2 threads / 1",
                Pick::Derived("2 / 1"),
                Show::Own,
            ),
            (
                "cache-scratch",
                "cache-scratch: 2 threads / 1",
                Pick::Derived("2 / 1"),
                Show::Own,
            ),
        ];
        let subjects = self.subjects();
        let mut out = String::new();
        let mut head = "| workload |".to_string();
        let mut rule = "|---|".to_string();
        for w in &subjects {
            let _ = write!(head, " {} |", w.name());
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for (id, label, pick, show) in &lines {
            if self.table(id).is_none() {
                continue;
            }
            let base = self.pick(id, pick, Which::SpanHeap);
            let mut line = format!("| {label} |");
            for &w in &subjects {
                let v = self.pick(id, pick, w);
                let text = match (show, v, base) {
                    (_, None, _) => "-".to_string(),
                    (Show::Own, Some(v), _) => format!("{v:.2}x"),
                    (Show::Ratio, Some(v), _) if w == Which::SpanHeap => format_ops(v),
                    (Show::Ratio, Some(v), Some(b)) => format_ratio(v / b),
                    (Show::Ratio, Some(v), None) => format_ops(v),
                };
                let _ = write!(line, " {text} |");
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(t) = self.table("efficiency") {
            let mut line = "| heap efficiency, mean of max 200 B..30 KB |".to_string();
            for &w in &subjects {
                let text = mean_row(t, w).map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
                let _ = write!(line, " {text} |");
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(m) = &self.metadata {
            let mut line = format!(
                "| metadata of a {} heap |",
                super::report::bytes_label(m.managed)
            );
            for &w in &subjects {
                let text = if w == Which::SpanHeap {
                    format!("{:.2}%", m.worst_fraction() * 100.0)
                } else {
                    "-".into()
                };
                let _ = write!(line, " {text} |");
            }
            let _ = writeln!(out, "{line}");
        }
        out.push_str(
            "\nThroughput lines: spanheap's million allocator calls per second, the others as a ratio to it (below 1: slower). \
             Lines ending in \"/ 1\": each allocator's own 2-thread / 1-thread throughput (2 cores). \
             system, mimalloc and jemalloc take their memory from the OS (references for time only).\n",
        );
        out
    }

    /// The goals of issue 5, checked against this run.
    fn goals_markdown(&self, out: &mut String) {
        let _ = writeln!(out, "## Goals of issue 5 in this run\n");
        let _ = writeln!(out, "| goal | measured | met |\n|---|---|---|");
        let mut row = |goal: &str, measured: String, met: Option<bool>| {
            let m = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(out, "| {goal} | {measured} | {m} |");
        };

        // Faster than talc on every single-thread cell.
        let (mut cells, mut slower) = (0, Vec::new());
        for t in self.tables.iter().filter(|t| t.unit == Unit::OpsPerSec) {
            for (i, c) in t.columns.iter().enumerate() {
                if c.threads != 1 {
                    continue;
                }
                if let (Some(s), Some(k)) = (t.value(Which::SpanHeap, i), t.value(Which::Talc, i)) {
                    cells += 1;
                    if s <= k {
                        slower.push(format!("{} {} ({:.2}x talc)", t.id, c.label, s / k));
                    }
                }
            }
        }
        row(
            "faster than talc on every single-thread workload",
            if slower.is_empty() {
                format!("faster in all {cells} one-thread cells")
            } else {
                format!(
                    "slower in {} of {cells} one-thread cells: {}",
                    slower.len(),
                    slower.join(", ")
                )
            },
            (cells > 0).then_some(slower.is_empty()),
        );

        // At least 10x linked_list_allocator on random actions.
        if let Some(t) = self.table("random-actions") {
            let r: Option<Vec<f64>> = (0..t.columns.len())
                .map(|i| Some(t.value(Which::SpanHeap, i)? / t.value(Which::Lla, i)?))
                .collect();
            if let Some(r) = r.filter(|r| !r.is_empty()) {
                let min = r.iter().cloned().fold(f64::MAX, f64::min);
                let list: Vec<String> = r.iter().map(|x| format!("{x:.0}x")).collect();
                row(
                    "at least 10x linked_list_allocator on random actions",
                    format!("spanheap / lla = {}", list.join(", ")),
                    Some(min >= 10.0),
                );
            }
        }

        // Two threads at least 1.8x one thread where the global-lock peers slow down.
        for id in [
            "larson-batch",
            "larson-ring",
            "larson-local",
            "xmalloc",
            "cache-scratch",
        ] {
            let Some(t) = self.table(id) else { continue };
            let Some(d) = t.derived.iter().find(|d| d.label == "2 / 1") else {
                continue;
            };
            let get = |w| {
                t.derived_value(w, d)
                    .map_or("-".into(), |v| format!("{v:.2}x"))
            };
            let s = t.derived_value(Which::SpanHeap, d);
            row(
                &format!("2 threads >= 1.8x one thread: `{id}`"),
                format!(
                    "spanheap {}; talc {}, lla {}, buddy {}",
                    get(Which::SpanHeap),
                    get(Which::Talc),
                    get(Which::Lla),
                    get(Which::Buddy)
                ),
                s.map(|s| s >= 1.8),
            );
        }

        if let Some(t) = self.table("efficiency") {
            let mean = mean_row(t, Which::SpanHeap);
            let others: Vec<String> = [Which::Talc, Which::Buddy, Which::Lla]
                .into_iter()
                .filter_map(|w| Some(format!("{} {:.1}%", w.name(), mean_row(t, w)? * 100.0)))
                .collect();
            row(
                "heap efficiency at least 85% (talc's method)",
                format!(
                    "spanheap {}; {}",
                    mean.map_or("-".into(), |m| format!("{:.1}%", m * 100.0)),
                    others.join(", ")
                ),
                mean.map(|m| m >= 0.85),
            );
        }
        if let Some(m) = &self.metadata {
            row(
                "metadata at most 1% of a 512 MiB heap",
                format!(
                    "{:.3}% ({} KiB of {} MiB, largest state)",
                    m.worst_fraction() * 100.0,
                    m.worst_bytes() >> 10,
                    m.managed >> 20
                ),
                Some(m.worst_fraction() <= 0.01),
            );
        }
        if let Some(t) = self.table("growth") {
            if let Some(d) = t.derived.first() {
                let get = |w| t.derived_value(w, d);
                let fmt = |w| get(w).map_or("-".into(), |v: f64| format!("{v:.2}x"));
                row(
                    "cost per operation flat (within 1.5x) from 1k to 100k live",
                    format!(
                        "spanheap {}; lla {}, talc {}, mimalloc {}",
                        fmt(Which::SpanHeap),
                        fmt(Which::Lla),
                        fmt(Which::Talc),
                        fmt(Which::Mimalloc)
                    ),
                    get(Which::SpanHeap).map(|v| v <= 1.5),
                );
            }
        }
        out.push('\n');
    }

    pub(crate) fn markdown(&self, charts: &[(String, String)]) -> String {
        let mut out = String::from("# spanheap host benchmark suite\n\n");
        self.header.markdown(&mut out);
        let _ = writeln!(out, "Allocators:\n");
        for w in self.subjects() {
            let _ = writeln!(out, "- `{}`: {}", w.name(), w.label());
        }
        out.push('\n');
        let _ = writeln!(out, "## Summary\n");
        out.push_str(&self.summary_markdown());
        out.push('\n');
        self.goals_markdown(&mut out);
        if !charts.is_empty() {
            let _ = writeln!(out, "## Charts\n");
            for (file, title) in charts {
                let _ = writeln!(out, "![{title}]({file})\n");
            }
        }
        let _ = writeln!(out, "## Workloads\n");
        for t in &self.tables {
            t.markdown(&mut out);
        }
        if let Some(m) = &self.metadata {
            m.markdown(&mut out);
        }
        out
    }
}

impl Results {
    /// Every cell as one CSV line: table, column, allocator, median, min, max runs,
    /// latency percentiles, cross-thread share.
    pub(crate) fn csv(&self) -> String {
        let mut out = String::from(
            "table,column,allocator,median,min,max,alloc_p50_ns,alloc_p99_ns,free_p50_ns,free_p99_ns,cross\n",
        );
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
        for t in &self.tables {
            for (w, cells) in &t.rows {
                for (c, cell) in t.columns.iter().zip(cells) {
                    let Some(cell) = cell else { continue };
                    let l = cell.latency;
                    let _ = writeln!(
                        out,
                        "{},{},{},{:.3},{:.3},{:.3},{},{},{},{},{}",
                        t.id,
                        c.label,
                        w.name(),
                        cell.value,
                        cell.spread.0,
                        cell.spread.1,
                        opt(l.map(|l| l.alloc_p50)),
                        opt(l.map(|l| l.alloc_p99)),
                        opt(l.map(|l| l.free_p50)),
                        opt(l.map(|l| l.free_p99)),
                        opt(cell.cross),
                    );
                }
            }
        }
        out
    }
}

/// Mean over a table's columns (efficiency).
pub(crate) fn mean_row(t: &Table, which: Which) -> Option<f64> {
    let v: Vec<f64> = (0..t.columns.len())
        .filter_map(|i| t.value(which, i))
        .collect();
    (v.len() == t.columns.len() && !v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}
