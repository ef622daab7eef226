//! Figures, ratios against baselines, and the Markdown + JSON report.

use std::path::Path;

use serde_json::json;

/// Latency samples in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// Quantile `q` in 0..=1 (nearest rank).
    pub fn q(&self, q: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    /// Median.
    pub fn p50(&self) -> f64 {
        self.q(0.5)
    }

    /// 99th percentile.
    pub fn p99(&self) -> f64 {
        self.q(0.99)
    }

    /// True when the spread says the machine was busy: p90 over 3x the median.
    pub fn noisy(&self) -> bool {
        self.q(0.9) > 3.0 * self.p50()
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario id (S1, C2, ...).
    pub id: String,
    /// What is measured.
    pub scenario: String,
    /// Unit of the two figures.
    pub unit: &'static str,
    /// qpq's figure (median for latencies).
    pub qpq: f64,
    /// The baseline's figure.
    pub baseline: f64,
    /// qpq p99 (latencies only).
    pub qpq_p99: Option<f64>,
    /// Baseline p99 (latencies only).
    pub base_p99: Option<f64>,
    /// Goal as text, e.g. "≤ 1.5×".
    pub goal: String,
    /// Largest (for costs) or smallest (for rates) acceptable ratio.
    pub limit: f64,
    /// True when higher is better (throughput): ratio = qpq / baseline ≥ limit.
    pub higher_is_better: bool,
    /// Notes: sample counts, noise, what the baseline is.
    pub note: String,
}

impl Row {
    /// A latency row from two sample sets.
    pub fn latency(
        id: &str,
        scenario: &str,
        qpq: &Samples,
        base: &Samples,
        limit: f64,
        note: &str,
    ) -> Row {
        let noisy = if qpq.noisy() || base.noisy() {
            "; noisy (p90 > 3× p50)"
        } else {
            ""
        };
        Row {
            id: id.into(),
            scenario: scenario.into(),
            unit: "µs",
            qpq: qpq.p50(),
            baseline: base.p50(),
            qpq_p99: Some(qpq.p99()),
            base_p99: Some(base.p99()),
            goal: format!("p50 ≤ {limit}×"),
            limit,
            higher_is_better: false,
            note: format!("n = {} + {}; {note}{noisy}", qpq.0.len(), base.0.len()),
        }
    }

    /// A tail-latency row: the p99s are the figures (and the ratio), the medians go to the
    /// note. For isolation scenarios, where the question is how much worse the slowest calls
    /// get under attack.
    pub fn tail(
        id: &str,
        scenario: &str,
        qpq: &Samples,
        base: &Samples,
        limit: f64,
        note: &str,
    ) -> Row {
        let mut row = Row::latency(id, scenario, qpq, base, limit, note);
        row.qpq = qpq.p99();
        row.baseline = base.p99();
        row.qpq_p99 = Some(qpq.p99());
        row.base_p99 = Some(base.p99());
        row.goal = format!("p99 ≤ {limit}×");
        row.note = format!(
            "{}; p50 {:.0} µs vs {:.0} µs",
            row.note,
            qpq.p50(),
            base.p50()
        );
        row
    }

    /// qpq / baseline.
    pub fn ratio(&self) -> f64 {
        self.qpq / self.baseline
    }

    /// Whether the goal is met.
    pub fn pass(&self) -> bool {
        if self.higher_is_better {
            self.ratio() >= self.limit
        } else {
            self.ratio() <= self.limit
        }
    }
}

/// Everything one run measured.
pub struct Results {
    /// The table.
    pub rows: Vec<Row>,
    /// Extra figures (growth curves, sizes) as (name, value, unit).
    pub extra: Vec<(String, f64, String)>,
    /// Scenarios not run, with the reason.
    pub skipped: Vec<(String, String)>,
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": crate::bare::cpus(),
        "kernel": kernel.trim(),
        "memory": mem.trim(),
        "loadavg_at_end": load.trim(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn fmt(v: f64, unit: &str) -> String {
    if v.is_nan() {
        return "—".into();
    }
    match unit {
        "µs" => format!("{v:.0} µs"),
        "B" => format!("{v:.0} B"),
        "p" => format!("{v:.3}"),
        _ => format!("{v:.0} {unit}"),
    }
}

/// Where the SDK benchmarks' section of `BENCHMARKS.md` starts.
const SDK_MARKER: &str =
    "<!-- SDK benchmarks: written by each SDK's B1 benchmark, kept by qpq-bench -->";

/// Writes `BENCHMARKS.md` and `bench/results.json` under `out`; returns the Markdown path.
pub fn write(r: &Results, out: &Path, smoke: bool) -> Result<String, String> {
    std::fs::create_dir_all(out.join("bench")).map_err(|e| e.to_string())?;
    let m = machine();
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Generated by `cargo run --release -p qpq-bench -- run` (do not edit by hand). Every qpq figure \
         is measured in the same run as its baseline, interleaved round by round; ratios are qpq ÷ baseline \
         (for throughput, qpq ÷ baseline too, where higher is better). The machines are shared and noisy: \
         read the ratios and medians, not lone absolute times. Servers run as child processes pinned to \
         CPU 1, the client on CPU 0.\n\n",
    );
    if smoke {
        md.push_str("**Smoke run: a few iterations only; the figures below mean nothing.**\n\n");
    }
    md.push_str(&format!(
        "Machine: {} · {} CPUs · {} · {} build · load average at the end {}\n\n",
        m["cpu"].as_str().unwrap_or(""),
        m["cpus"],
        m["kernel"].as_str().unwrap_or(""),
        m["profile"].as_str().unwrap_or(""),
        m["loadavg_at_end"].as_str().unwrap_or("")
    ));
    md.push_str("| id | scenario | qpq | baseline | ratio | goal | pass | qpq p99 | baseline p99 | notes |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for row in &r.rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2}× | {} | {} | {} | {} | {} |\n",
            row.id,
            row.scenario,
            fmt(row.qpq, row.unit),
            fmt(row.baseline, row.unit),
            row.ratio(),
            row.goal,
            if row.pass() { "pass" } else { "**miss**" },
            row.qpq_p99.map_or("—".into(), |v| fmt(v, row.unit)),
            row.base_p99.map_or("—".into(), |v| fmt(v, row.unit)),
            row.note
        ));
    }
    if !r.extra.is_empty() {
        md.push_str("\n## Growth and sizes\n\n| figure | value |\n|---|---|\n");
        for (name, v, unit) in &r.extra {
            md.push_str(&format!("| {name} | {} |\n", fmt(*v, unit)));
        }
    }
    if !r.skipped.is_empty() {
        md.push_str("\n## Not measured\n\n");
        for (id, why) in &r.skipped {
            md.push_str(&format!("- **{id}**: {why}\n"));
        }
    }
    let path = out.join(if smoke {
        "BENCHMARKS.smoke.md"
    } else {
        "BENCHMARKS.md"
    });
    // The SDK benchmarks (B1, e.g. `sdks/go/bench.sh`) write their rows after this marker;
    // a rerun of this harness keeps them.
    if let Ok(old) = std::fs::read_to_string(&path) {
        if let Some(i) = old.find(SDK_MARKER) {
            md.push('\n');
            md.push_str(&old[i..]);
        }
    }
    std::fs::write(&path, md).map_err(|e| e.to_string())?;
    let rows: Vec<_> = r
        .rows
        .iter()
        .map(|x| {
            json!({"id": x.id, "scenario": x.scenario, "unit": x.unit, "qpq": x.qpq, "baseline": x.baseline,
                   "ratio": x.ratio(), "goal": x.goal, "pass": x.pass(), "qpq_p99": x.qpq_p99,
                   "baseline_p99": x.base_p99, "note": x.note})
        })
        .collect();
    let extra: Vec<_> = r
        .extra
        .iter()
        .map(|(n, v, u)| json!({"name": n, "value": v, "unit": u}))
        .collect();
    let skipped: Vec<_> = r
        .skipped
        .iter()
        .map(|(i, w)| json!({"id": i, "why": w}))
        .collect();
    let doc =
        json!({"machine": m, "smoke": smoke, "rows": rows, "extra": extra, "skipped": skipped});
    let jpath = out.join("bench").join(if smoke {
        "results.smoke.json"
    } else {
        "results.json"
    });
    std::fs::write(
        &jpath,
        serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(path.display().to_string())
}
