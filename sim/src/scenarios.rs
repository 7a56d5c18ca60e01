//! The built-in scenarios: the shipped synthetic traces and the real traces, each with the
//! workload shape and the declarations its users would write.

use std::path::{Path, PathBuf};

use crate::engine::Scenario;
use crate::trace::{Format, Trace, TraceError, parse_csv};

/// `sim/traces` of this crate.
pub fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces")
}

fn read(path: &Path, format: Format) -> Result<Trace, TraceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TraceError {
        file: file.clone(),
        line: 0,
        column: None,
        message: format!("cannot read: {e}"),
    })?;
    parse_csv(&text, &file, format)
}

/// Scales a trace so its mean offered load is `replicas` busy pods.
fn to_load(trace: Trace, service: f64, concurrency: u32, replicas: f64) -> Trace {
    let mean_rate = trace.total() / trace.duration();
    let factor = replicas * f64::from(concurrency) / (mean_rate * service).max(1e-9);
    trace.scaled(factor)
}

fn scenario(name: &str, trace: Trace, service: f64, concurrency: u32, max: u32) -> Scenario {
    Scenario {
        name: name.into(),
        trace,
        service_seconds: service,
        concurrency,
        max_replicas: max,
        schedule: None,
        timezone: None,
        declare_service_time: true,
        counters: false,
        warm_pool: None,
        keda_tuning: crate::tune::KedaTuning::default(),
        tuning_share: crate::tune::TUNING_SHARE,
        drain_seconds: 60.0,
        prewarm: crate::prewarm::PrewarmSettings::default(),
    }
}

/// The five shipped synthetic traces.
pub fn synthetic() -> Result<Vec<Scenario>, TraceError> {
    let dir = traces_dir();
    let mut out = Vec::new();

    let mut s = scenario(
        "business_hours",
        read(&dir.join("business_hours.csv"), Format::Counts)?,
        20.0,
        2,
        40,
    );
    s.schedule = Some("0 8 * * 1-5 for 10h = 6; 30 11 * * 1-5 for 90m = 14".into());
    s.timezone = Some("Europe/Berlin".into());
    out.push(s);

    let mut s = scenario(
        "flash_sale",
        read(&dir.join("flash_sale.csv"), Format::Counts)?,
        10.0,
        4,
        100,
    );
    s.schedule = Some("0 12 15 5 * for 30m = 80".into());
    s.counters = true;
    out.push(s);

    let mut s = scenario(
        "image_gen",
        read(&dir.join("image_gen.csv"), Format::Counts)?,
        20.0,
        1,
        60,
    );
    // Celery: depths only, service time learned from drains.
    s.declare_service_time = false;
    out.push(s);

    out.push(scenario(
        "poisson_spikes",
        read(&dir.join("poisson_spikes.csv"), Format::Counts)?,
        8.0,
        2,
        60,
    ));

    // One 60 s job at a time, gaps of 5-30 min: a single GPU worker, cold after each gap.
    out.push(scenario(
        "sparse",
        read(&dir.join("sparse.csv"), Format::Counts)?,
        60.0,
        1,
        4,
    ));
    Ok(out)
}

/// Cuts a trace to its first `days`.
fn first_days(mut t: Trace, days: f64) -> Trace {
    let n = ((days * 86_400.0) / t.bin).round() as usize;
    t.arrivals.truncate(n);
    if let Some(s) = &mut t.service {
        s.truncate(n);
    }
    t
}

/// BurstGPT's hourly file: `day,hour,conversation,api,all`; `column` 2 or 3.
pub fn burstgpt(path: &Path, column: usize) -> Result<Trace, TraceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TraceError {
        file: file.clone(),
        line: 0,
        column: None,
        message: format!("cannot read: {e}"),
    })?;
    let mut rows = String::from("unix_seconds,arrivals\n");
    for (i, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.trim().split(',').collect();
        let bad = |c: usize| TraceError {
            file: file.clone(),
            line: i + 1,
            column: Some(c + 1),
            message: format!("{:?} is not an integer", cols.get(c).unwrap_or(&"")),
        };
        let day: u64 = cols
            .first()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(0))?;
        let hour: u64 = cols
            .get(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(1))?;
        let v: u64 = cols
            .get(column)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(column))?;
        rows.push_str(&format!("{},{v}\n", day * 86_400 + hour * 3600));
    }
    parse_csv(&rows, &file, Format::Counts)
}

/// The real traces of `../shared/traces` (copied to `sim/traces/real`, see SOURCES.md there),
/// scaled to GPU job volumes: each request becomes a job, scaled so the mean load is a fleet of
/// about ten GPUs.
pub fn real() -> Result<Vec<Scenario>, TraceError> {
    let dir = traces_dir().join("real");
    let mut out = Vec::new();
    let t = read(
        &dir.join("invocations_ten_second_Conversation.csv"),
        Format::Counts,
    )?;
    let mut s = scenario("azure_conv_2024", to_load(t, 4.0, 8, 10.0), 4.0, 8, 100);
    s.counters = true;
    out.push(s);
    let t = read(
        &dir.join("invocations_ten_second_Coding.csv"),
        Format::Counts,
    )?;
    let mut s = scenario("azure_code_2024", to_load(t, 4.0, 8, 10.0), 4.0, 8, 100);
    s.counters = true;
    out.push(s);
    let t = read(
        &dir.join("AzureLLMInferenceTrace_conv.csv"),
        Format::Requests,
    )?;
    out.push(scenario(
        "azure_conv_2023_1h",
        to_load(t, 4.0, 4, 6.0),
        4.0,
        4,
        100,
    ));
    let t = read(
        &dir.join("AzureLLMInferenceTrace_code.csv"),
        Format::Requests,
    )?;
    out.push(scenario(
        "azure_code_2023_1h",
        to_load(t, 4.0, 4, 6.0),
        4.0,
        4,
        100,
    ));
    let t = first_days(burstgpt(&dir.join("burstgpt_hourly.csv"), 2)?, 28.0);
    out.push(scenario(
        "burstgpt_conv_28d",
        to_load(t, 20.0, 4, 8.0),
        20.0,
        4,
        100,
    ));
    let t = first_days(burstgpt(&dir.join("burstgpt_hourly.csv"), 3)?, 28.0);
    // Peak/mean 38: a 100-replica cap would make every policy wait hours.
    out.push(scenario(
        "burstgpt_api_28d",
        to_load(t, 20.0, 4, 8.0),
        20.0,
        4,
        400,
    ));
    let t = first_days(read(&dir.join("nyc_taxi.csv"), Format::Counts)?, 70.0);
    out.push(scenario(
        "nyc_taxi_70d",
        to_load(t, 20.0, 2, 10.0),
        20.0,
        2,
        100,
    ));
    Ok(out)
}

/// The real traces long enough to backtest a daily/weekly forecaster, whole and unscaled.
pub fn backtest_traces() -> Result<Vec<(String, Trace)>, TraceError> {
    let dir = traces_dir().join("real");
    Ok(vec![
        (
            "azure_conv_2024 (7 d, 10 s)".into(),
            read(
                &dir.join("invocations_ten_second_Conversation.csv"),
                Format::Counts,
            )?,
        ),
        (
            "azure_code_2024 (7 d, 10 s)".into(),
            read(
                &dir.join("invocations_ten_second_Coding.csv"),
                Format::Counts,
            )?,
        ),
        (
            "burstgpt_conversation (61 d, 1 h)".into(),
            burstgpt(&dir.join("burstgpt_hourly.csv"), 2)?,
        ),
        (
            "burstgpt_api (61 d, 1 h)".into(),
            burstgpt(&dir.join("burstgpt_hourly.csv"), 3)?,
        ),
        (
            "nyc_taxi (215 d, 30 min)".into(),
            read(&dir.join("nyc_taxi.csv"), Format::Counts)?,
        ),
    ])
}
