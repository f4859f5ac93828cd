//! Request counts and latencies per route, feed length and waiting
//! long-polls, in Prometheus' text format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: past a long-poll's
/// longest wait (60 s), so waiting polls do not all land in `+Inf`.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 120.0,
];

#[derive(Default)]
struct RouteStats {
    count: u64,
    seconds: f64,
    /// Cumulative counts per bucket.
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default)]
pub struct Metrics {
    /// By route, then status.
    routes: Mutex<BTreeMap<String, BTreeMap<u16, RouteStats>>>,
    /// Pulls waiting for news right now.
    pub long_polls: AtomicI64,
}

impl Metrics {
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        // The route's name is copied once, not on every request.
        let by_status = match routes.get_mut(route) {
            Some(s) => s,
            None => routes.entry(route.to_owned()).or_default(),
        };
        let s = by_status.entry(status).or_default();
        let secs = elapsed.as_secs_f64();
        s.count += 1;
        s.seconds += secs;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    /// `feed` = (changes in every team's feed, feed commits, changes
    /// committed); `wal_bytes`: the database's write-ahead log on disk.
    pub fn render(&self, feed: (u64, u64, u64), wal_bytes: u64) -> String {
        let (feed_length, commits, committed) = feed;
        let mut out = String::new();
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# TYPE handoff_requests_total counter");
        for (route, by_status) in routes.iter() {
            for (status, s) in by_status {
                let _ = writeln!(
                    out,
                    "handoff_requests_total{{route=\"{route}\",status=\"{status}\"}} {}",
                    s.count
                );
            }
        }
        let _ = writeln!(out, "# TYPE handoff_request_duration_seconds histogram");
        let mut per_route: BTreeMap<&str, RouteStats> = BTreeMap::new();
        for (route, s) in routes
            .iter()
            .flat_map(|(r, by)| by.values().map(move |s| (r, s)))
        {
            let r = per_route.entry(route.as_str()).or_default();
            r.count += s.count;
            r.seconds += s.seconds;
            for (a, b) in r.buckets.iter_mut().zip(s.buckets) {
                *a += b;
            }
        }
        for (route, s) in per_route {
            for (le, n) in BUCKETS.iter().zip(s.buckets) {
                let _ = writeln!(
                    out,
                    "handoff_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "handoff_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "handoff_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                s.seconds
            );
            let _ = writeln!(
                out,
                "handoff_request_duration_seconds_count{{route=\"{route}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(out, "# TYPE handoff_feed_length gauge");
        let _ = writeln!(out, "handoff_feed_length {feed_length}");
        let _ = writeln!(out, "# TYPE handoff_feed_commits_total counter");
        let _ = writeln!(out, "handoff_feed_commits_total {commits}");
        let _ = writeln!(out, "# TYPE handoff_feed_changes_committed_total counter");
        let _ = writeln!(out, "handoff_feed_changes_committed_total {committed}");
        let _ = writeln!(out, "# TYPE handoff_wal_bytes gauge");
        let _ = writeln!(out, "handoff_wal_bytes {wal_bytes}");
        let _ = writeln!(out, "# TYPE handoff_long_polls gauge");
        let _ = writeln!(
            out,
            "handoff_long_polls {}",
            self.long_polls.load(Ordering::Relaxed)
        );
        out
    }
}
