//! Process plumbing that `headroom-scaler` and `headroom-provisioner` share: how durations are
//! written on flags and in resources, logging set-up, the shutdown signal, and the one rustls
//! crypto provider. Nothing here knows about queues or capacity.

use std::time::Duration;

/// Exit code for bad configuration (BSD `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Parses a duration as operators write it: one or more `<number><unit>` terms summed, units
/// `ms`, `s`, `m`, `h`, numbers possibly fractional (`500ms`, `2s`, `1.5m`, `1h30m`), or a bare
/// number of seconds (`10`). `None` for anything else, negative or overflowing.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return seconds(s.parse().ok()?);
    }
    let mut rest = s;
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += value * unit;
    }
    seconds(total)
}

/// Writes a duration as [`parse_duration`] reads it, to the second: `33m`, `1h0m5s`, `0s`
/// (under a second: `250ms`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return if d.subsec_millis() > 0 {
            format!("{}ms", d.subsec_millis())
        } else {
            "0s".into()
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 || (h > 0 && s > 0) {
        out += &format!("{m}m");
    }
    if s > 0 {
        out += &format!("{s}s");
    }
    out
}

fn seconds(secs: f64) -> Option<Duration> {
    if secs.is_finite() && secs >= 0.0 {
        Duration::try_from_secs_f64(secs).ok()
    } else {
        None
    }
}

/// Parses the command line; on `--help`/`--version` or an error, prints what clap says and gives
/// the exit code to return (0, or [`EXIT_CONFIG`] for bad flags).
pub fn parse_cli<C: clap::Parser>() -> Result<C, std::process::ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            std::process::ExitCode::from(EXIT_CONFIG)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}

/// How often [`spawn_metrics_upkeep`] drains the recorder.
pub const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the Prometheus recorder's upkeep every [`METRICS_UPKEEP`] for as long as the runtime
/// lives. The recorder keeps every histogram sample until it is drained; a render (a scrape)
/// drains them, so without this a scaler nobody scrapes grows by every RPC's latency sample
/// (measured: about 1 MiB per 20 s at KEDA's rate for 1 000 triggers, without end).
pub fn spawn_metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// The HTTP endpoints both programs serve: `/metrics` (`metrics` rendered, or an empty page
/// when `None`), `/healthz` (the process answers), and `/readyz`, which is 200 `ready` while
/// `ready()` is `Ok` and 503 with its reason otherwise.
pub fn health_router(
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ready: impl Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = metrics.clone();
                async move { handle.map(|h| h.render()).unwrap_or_default() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match ready() {
                    Ok(()) => (StatusCode::OK, "ready"),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber for `filter` (tracing `EnvFilter` syntax). Logs go to
/// standard error, so that output meant for standard output stays clean.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log: {filter:?} is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Resolves on Ctrl-C or SIGTERM (the signal Kubernetes stops a pod with).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Makes ring the process-wide rustls crypto provider, once, before any TLS connection.
///
/// The AWS SDK enables aws-lc-rs next to the ring that redis, tonic and kube use; with both
/// linked, rustls refuses to pick a default (it panics on the first TLS connection that relies
/// on it). Harmless if a provider is already installed.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is already installed: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_they_are_read() {
        let f = |secs| format_duration(Duration::from_secs(secs));
        assert_eq!(f(0), "0s");
        assert_eq!(f(1980), "33m");
        assert_eq!(f(3605), "1h0m5s");
        assert_eq!(f(7200), "2h");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        for secs in [0, 1, 59, 60, 61, 3599, 3600, 3661, 86_400, 90_061] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{secs}");
        }
    }

    #[test]
    fn durations_parse_in_the_forms_operators_write() {
        let d = |s| parse_duration(s);
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("2s"), Some(Duration::from_secs(2)));
        assert_eq!(d("1m"), Some(Duration::from_secs(60)));
        assert_eq!(d("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d(" 10 "), Some(Duration::from_secs(10)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        for bad in [
            "", "-1s", "1d", "s", "1x", "abc", "1e3", "inf", "1 s", "1..2s",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }
}
