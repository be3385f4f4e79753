//! A small Prometheus registry: counters and histograms keyed by label values, rendered in the
//! text exposition format. Enough for our handful of series without another dependency tree.

use std::{collections::BTreeMap, fmt::Write, sync::Mutex};

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, bound) in buckets.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

#[derive(Default)]
struct Series {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    transfers_committed: u64,
    commit_batch_transfers: Histogram,
    commit_batch_requests: Histogram,
    jobs: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Metrics(Mutex<Series>);

impl Metrics {
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        if let Ok(mut s) = self.0.lock() {
            *s.requests
                .entry((route.to_owned(), method.to_owned(), status))
                .or_default() += 1;
            s.latency
                .entry(route.to_owned())
                .or_default()
                .observe(LATENCY_BUCKETS_SECONDS, seconds);
        }
    }

    pub fn ledger_commit(&self, requests: usize, transfers: usize) {
        if let Ok(mut s) = self.0.lock() {
            s.transfers_committed += u64::try_from(transfers).unwrap_or(0);
            s.commit_batch_transfers.observe(BATCH_BUCKETS, transfers as f64);
            s.commit_batch_requests.observe(BATCH_BUCKETS, requests as f64);
        }
    }

    pub fn job_changes(&self, job: &str, changed: u64) {
        if let Ok(mut s) = self.0.lock() {
            *s.jobs.entry(job.to_owned()).or_default() += changed;
        }
    }

    pub fn render(&self, connections_in_use: u32) -> String {
        let Ok(s) = self.0.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE settle_http_requests_total counter");
        for ((route, method, status), n) in &s.requests {
            let _ = writeln!(
                out,
                "settle_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# TYPE settle_http_request_duration_seconds histogram");
        for (route, h) in &s.latency {
            write_histogram(
                &mut out,
                "settle_http_request_duration_seconds",
                &format!("route=\"{route}\""),
                LATENCY_BUCKETS_SECONDS,
                h,
            );
        }
        let _ = writeln!(out, "# TYPE settle_ledger_transfers_committed_total counter");
        let _ = writeln!(out, "settle_ledger_transfers_committed_total {}", s.transfers_committed);
        let _ = writeln!(out, "# TYPE settle_ledger_commit_batch_transfers histogram");
        write_histogram(
            &mut out,
            "settle_ledger_commit_batch_transfers",
            "",
            BATCH_BUCKETS,
            &s.commit_batch_transfers,
        );
        let _ = writeln!(out, "# TYPE settle_ledger_commit_batch_requests histogram");
        write_histogram(
            &mut out,
            "settle_ledger_commit_batch_requests",
            "",
            BATCH_BUCKETS,
            &s.commit_batch_requests,
        );
        let _ = writeln!(out, "# TYPE settle_job_changes_total counter");
        for (job, n) in &s.jobs {
            let _ = writeln!(out, "settle_job_changes_total{{job=\"{job}\"}} {n}");
        }
        let _ = writeln!(out, "# TYPE settle_db_connections_in_use gauge");
        let _ = writeln!(out, "settle_db_connections_in_use {connections_in_use}");
        out
    }
}

fn write_histogram(out: &mut String, name: &str, labels: &str, buckets: &[f64], h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (i, bound) in buckets.iter().enumerate() {
        let n = h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}
