//! `headroom-sim`: runs every policy on the shipped and real traces (no arguments), on your own
//! trace (`--trace my.csv`), backtests the forecaster (`backtest`), or regenerates the shipped
//! traces (`generate`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use headroom_policy::forecast::{BacktestReport, DEFAULT_BIN_SECONDS, backtest};
use headroom_policy::schedule::Schedule;
use headroom_sim::cluster::ClusterConfig;
use headroom_sim::engine::{PolicyKind, Scenario};
use headroom_sim::prewarm::PrewarmSettings;
use headroom_sim::report;
use headroom_sim::scenarios;
use headroom_sim::trace::{Format, Trace, parse_csv};
use headroom_sim::workload::{ArrivalModel, DEFAULT_SERVICE_CV, ServiceSpread};

#[derive(Parser, Debug)]
#[command(name = "headroom-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The forecaster's error at the lead time against seasonal-naive (same time yesterday /
    /// last week), on `--trace` or on every real trace.
    Backtest(BacktestArgs),
    /// The forecaster against persistence and seasonal-naive on what the planner uses (the
    /// largest rate over the lead window) at leads of 1, 5 and 10 minutes, on the held-out part
    /// of every scenario (or of `--trace`, as `headroom-sim --trace` would run it).
    ForecastEval {
        #[command(flatten)]
        input: TraceArgs,
        /// Multiply the trace's arrivals by this.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Regenerates the shipped synthetic traces from their seed.
    Generate {
        #[arg(long, default_value_os_t = scenarios::traces_dir())]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
struct TraceArgs {
    /// A trace CSV: `time,arrivals[,service_seconds]` rows, or one row per request.
    #[arg(long)]
    trace: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
}

#[derive(Args, Debug)]
struct BacktestArgs {
    #[command(flatten)]
    input: TraceArgs,
    /// Lead time in seconds (the forecast horizon scored).
    #[arg(long, default_value_t = 300.0)]
    lead: f64,
    /// Forecast bin in seconds (divides a day); at least the trace's own resolution.
    #[arg(long, default_value_t = DEFAULT_BIN_SECONDS)]
    bin: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    input: TraceArgs,
    /// Mean service seconds per job (when the trace has no service column).
    #[arg(long, default_value_t = 10.0)]
    service_seconds: f64,
    /// Jobs one pod runs at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    #[arg(long, default_value_t = 100)]
    max_replicas: u32,
    /// Declared windows (Headroom `schedule` and the CronHPA policy).
    #[arg(long)]
    schedule: Option<String>,
    #[arg(long)]
    timezone: Option<String>,
    /// Headroom's `drainSeconds`: a backlog should be gone within this long.
    #[arg(long, default_value_t = 60.0)]
    drain_seconds: f64,
    /// Pause pods in the fixed warm pool policy (default: the seed's rule, 15 % of the tuning
    /// part's peak delta).
    #[arg(long)]
    warm_pool: Option<u32>,
    /// The share of each trace, from its start, that tunes the baselines (keda-tuned's grid,
    /// the warm pool's size); only the rest is reported. 0: no split, nothing tuned.
    #[arg(long, default_value_t = headroom_sim::tune::TUNING_SHARE)]
    tuning_share: f64,
    /// Multiply the trace's arrivals by this.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Node boot seconds, uniform between min and max.
    #[arg(long, default_value_t = 80.0)]
    boot_min: f64,
    #[arg(long, default_value_t = 120.0)]
    boot_max: f64,
    /// Image pull seconds on a new node, uniform between min and max.
    #[arg(long, default_value_t = 240.0)]
    pull_min: f64,
    #[arg(long, default_value_t = 360.0)]
    pull_max: f64,
    /// A pre-pull DaemonSet on the GPU nodes: every node pulls the workload image at Ready, so
    /// pause-pod and prewarmed nodes are image-warm (default: off; the first real pod on a node
    /// pays the pull).
    #[arg(long)]
    prepull: bool,
    /// Container start + model load seconds.
    #[arg(long, default_value_t = 20.0)]
    pod_start: f64,
    #[arg(long, default_value_t = 1)]
    gpus_per_node: u32,
    #[arg(long, default_value_t = 30.0)]
    consolidate_after: f64,
    /// $ per node-hour.
    #[arg(long, default_value_t = 1.006)]
    on_demand_price: f64,
    #[arg(long, default_value_t = 0.40)]
    spot_price: f64,
    /// Share of nodes launched as spot, 0-1.
    #[arg(long, default_value_t = 0.0)]
    spot_share: f64,
    /// The first seed (arrivals within bins, node boot and pull times).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seeds per row: `--seed`, `--seed`+1, …; each row is the mean and 95 % interval
    /// across them.
    #[arg(long, default_value_t = 5)]
    seeds: u32,
    /// Where a trace bin's jobs fall within it: `poisson` (uniform times given the count,
    /// seeded) or `even` (a fluid spread evenly, the first model).
    #[arg(long, value_enum, default_value_t = ArrivalModel::Poisson)]
    arrivals: ArrivalModel,
    /// Service-time spread around each bin's mean: `lognormal` (CV `--service-cv`),
    /// `uniform` (U(0.5 S, 1.5 S), the first model) or `fixed`.
    #[arg(long, value_enum, default_value_t = SpreadKind::Lognormal)]
    service_dist: SpreadKind,
    /// The lognormal's coefficient of variation.
    #[arg(long, default_value_t = DEFAULT_SERVICE_CV)]
    service_cv: f64,
    /// `headroom+prewarm`'s PrewarmPolicy: `scaleDownAfter` in seconds (idle capacity the
    /// provisioner created goes after this long unneeded).
    #[arg(long, default_value_t = 600.0)]
    scale_down_after: f64,
    /// `headroom+prewarm`: `fixed` keeps idle capacity `--scale-down-after`; `auto` is
    /// `scaleDownAfter: auto`, the keep-alive learned from idle gaps (`--scale-down-after` its
    /// fallback while it has too few).
    #[arg(long, value_enum, default_value_t = KeepAliveArg::Fixed)]
    keep_alive: KeepAliveArg,
    /// `headroom+prewarm`: `minWarmGpus`, idle GPUs kept on top of the forecast.
    #[arg(long, default_value_t = 0)]
    min_warm_gpus: u32,
    /// `headroom+prewarm`: `limits.maxNodes` (default: what `--max-replicas` pods need).
    #[arg(long)]
    max_nodes: Option<u32>,
    /// `headroom+prewarm`: `limits.maxGpus` (default: what `--max-replicas` pods need).
    #[arg(long)]
    max_gpus: Option<u32>,
    /// `headroom+prewarm`: `limits.maxHourlyCost` in $/hour (priced at `--on-demand-price`).
    #[arg(long)]
    max_hourly_cost: Option<f64>,
    /// Comma-separated subset of policies.
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Only the shipped synthetic traces (skip the real ones).
    #[arg(long)]
    synthetic_only: bool,
    /// Results table as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Where the CSV and SVG files go.
    #[arg(long, default_value = "target/headroom-sim")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KeepAliveArg {
    Fixed,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SpreadKind {
    Lognormal,
    Uniform,
    Fixed,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("headroom-sim: {msg}");
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Generate { out }) => generate(&out),
        Some(Command::Backtest(b)) => run_backtest(&b),
        Some(Command::ForecastEval { input, scale, json }) => forecast_eval(&input, scale, json),
        None => run(&cli.run),
    }
}

fn generate(out: &std::path::Path) -> ExitCode {
    for t in headroom_sim::generate::all(headroom_sim::generate::SEED) {
        let path = out.join(format!("{}.csv", t.name));
        if let Err(e) = std::fs::write(&path, t.to_csv()) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
        println!(
            "{} ({} bins, {:.0} arrivals)",
            path.display(),
            t.arrivals.len(),
            t.total()
        );
    }
    ExitCode::SUCCESS
}

fn load(input: &TraceArgs) -> Result<Option<Trace>, String> {
    let Some(path) = &input.trace else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut t =
        parse_csv(&text, &path.display().to_string(), input.format).map_err(|e| e.to_string())?;
    t.name = path
        .file_stem()
        .map_or_else(|| "trace".into(), |s| s.to_string_lossy().into_owned());
    Ok(Some(t))
}

fn print_backtest(name: &str, r: &BacktestReport) {
    let f = |s: &headroom_policy::forecast::Score| {
        format!(
            "MAPE {:>6.1}%  WAPE {:>6.1}%  under {:>5.1}%",
            s.mape * 100.0,
            s.wape * 100.0,
            s.under_share * 100.0
        )
    };
    println!(
        "{name}  (bin {} s, horizon {} bins)",
        r.bin_seconds, r.horizon_bins
    );
    println!(
        "  seasonal forecast  {}   ({} bins)",
        f(&r.model),
        r.model.bins
    );
    println!("  naive (yesterday)  {}", f(&r.naive_day));
    if let (Some(m), Some(n)) = (&r.model_week_bins, &r.naive_week) {
        println!(
            "  seasonal forecast  {}   (bins with a week of history: {})",
            f(m),
            m.bins
        );
        println!("  naive (last week)  {}", f(n));
    }
}

fn run_backtest(b: &BacktestArgs) -> ExitCode {
    let mut traces: Vec<(String, Trace)> = Vec::new();
    match load(&b.input) {
        Err(e) => return fail(e),
        Ok(Some(t)) => traces.push((t.name.clone(), t)),
        Ok(None) => match headroom_sim::scenarios::backtest_traces() {
            Ok(v) => traces = v,
            Err(e) => return fail(e),
        },
    }
    let mut out = Vec::new();
    for (name, t) in &traces {
        let bin = b.bin.max(t.bin.ceil() as u32);
        if 86_400 % bin != 0 {
            return fail(format!(
                "--bin {bin}: must divide 86400 (and be at least the trace's {} s)",
                t.bin
            ));
        }
        match backtest(t.samples(), bin, b.lead.max(f64::from(bin))) {
            Some(r) => {
                if !b.json {
                    print_backtest(name, &r);
                }
                out.push(serde_json::json!({"trace": name, "report": r}));
            }
            None => eprintln!("{name}: shorter than two days, nothing to score"),
        }
    }
    if b.json {
        println!("{}", serde_json::Value::Array(out));
    }
    ExitCode::SUCCESS
}

fn forecast_eval(input: &TraceArgs, scale: f64, json: bool) -> ExitCode {
    let scenarios = match load(input) {
        Err(e) => return fail(e),
        Ok(Some(t)) => {
            let name = t.name.clone();
            let mut v = match scenarios::synthetic() {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            // Any scenario's shape will do: only the trace and the split matter here.
            let Some(mut sc) = v.pop() else {
                return fail("no scenario");
            };
            sc.name = name;
            sc.trace = t.scaled(scale);
            vec![sc]
        }
        Ok(None) => {
            let mut v = match scenarios::synthetic() {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            match scenarios::real() {
                Ok(r) => v.extend(r),
                Err(e) => return fail(e),
            }
            v
        }
    };
    let mut out = Vec::new();
    for sc in &scenarios {
        for lead in headroom_sim::forecast_eval::LEADS {
            match headroom_sim::forecast_eval::evaluate(sc, lead) {
                Some(r) => out.push(r),
                None => eprintln!(
                    "{}: no held-out window after a day of history at lead {lead} s",
                    sc.name
                ),
            }
        }
    }
    if json {
        return match serde_json::to_string_pretty(&out) {
            Ok(j) => {
                println!("{j}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    println!(
        "{:<20} {:>6} {:>6} {:>17} {:>17} {:>17}  best",
        "trace", "lead", "bin", "model WAPE/under", "persistence", "seasonal-naive"
    );
    for r in &out {
        let f = |s: &headroom_sim::forecast_eval::MaxScore| {
            format!("{:>6.1}% / {:>5.1}%", s.wape * 100.0, s.under_share * 100.0)
        };
        println!(
            "{:<20} {:>5.0}s {:>5}s {:>17} {:>17} {:>17}  {}",
            r.trace,
            r.lead_seconds,
            r.bin_seconds,
            f(&r.model),
            f(&r.persistence),
            f(&r.seasonal_naive),
            r.best()
        );
    }
    ExitCode::SUCCESS
}

fn cluster_config(a: &RunArgs) -> Result<ClusterConfig, Vec<String>> {
    let mut bad = Vec::new();
    let mut range = |name: &str, lo: f64, hi: f64| {
        if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && hi >= lo) {
            bad.push(format!(
                "--{name}-min/--{name}-max: {lo}..{hi} is not a range of seconds ≥ 0"
            ));
        }
    };
    range("boot", a.boot_min, a.boot_max);
    range("pull", a.pull_min, a.pull_max);
    for (flag, v) in [
        ("--pod-start", a.pod_start),
        ("--consolidate-after", a.consolidate_after),
        ("--on-demand-price", a.on_demand_price),
        ("--spot-price", a.spot_price),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bad.push(format!("{flag}: {v} is not a number ≥ 0"));
        }
    }
    if !(0.0..=1.0).contains(&a.spot_share) {
        bad.push(format!(
            "--spot-share: {} is not between 0 and 1",
            a.spot_share
        ));
    }
    if !(a.service_cv.is_finite() && a.service_cv > 0.0 && a.service_cv <= 10.0) {
        bad.push(format!(
            "--service-cv: {} is not a coefficient of variation in (0, 10]",
            a.service_cv
        ));
    }
    if a.gpus_per_node == 0 {
        bad.push("--gpus-per-node: must be ≥ 1".into());
    }
    if !(a.scale_down_after.is_finite() && a.scale_down_after >= 0.0) {
        bad.push(format!(
            "--scale-down-after: {} is not a number of seconds ≥ 0",
            a.scale_down_after
        ));
    }
    if let Some(c) = a.max_hourly_cost
        && !(c.is_finite() && c >= 0.0)
    {
        bad.push(format!("--max-hourly-cost: {c} is not a number ≥ 0"));
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(ClusterConfig {
        boot_seconds: (a.boot_min, a.boot_max),
        pull_seconds: (a.pull_min, a.pull_max),
        prepull: a.prepull,
        pod_start_seconds: a.pod_start,
        gpus_per_node: a.gpus_per_node,
        consolidate_after_seconds: a.consolidate_after,
        on_demand_price: a.on_demand_price,
        spot_price: a.spot_price,
        spot_share: a.spot_share,
        arrivals: a.arrivals,
        service_spread: match a.service_dist {
            SpreadKind::Lognormal => ServiceSpread::Lognormal { cv: a.service_cv },
            SpreadKind::Uniform => ServiceSpread::Uniform,
            SpreadKind::Fixed => ServiceSpread::Fixed,
        },
        seed: a.seed,
        ..ClusterConfig::default()
    })
}

fn prewarm_settings(a: &RunArgs) -> PrewarmSettings {
    PrewarmSettings {
        scale_down_after_seconds: a.scale_down_after,
        keep_alive_auto: a.keep_alive == KeepAliveArg::Auto,
        min_warm_gpus: a.min_warm_gpus,
        max_nodes: a.max_nodes,
        max_gpus: a.max_gpus,
        max_hourly_cost: a.max_hourly_cost,
        ..PrewarmSettings::default()
    }
}

fn run(a: &RunArgs) -> ExitCode {
    let cluster = match cluster_config(a) {
        Ok(c) => c,
        Err(bad) => return fail(bad.join("\n  ")),
    };
    let prewarm = prewarm_settings(a);
    let mut policies = Vec::new();
    for p in &a.policies {
        match PolicyKind::ALL.iter().find(|k| k.name() == p.as_str()) {
            Some(k) => policies.push(*k),
            None => {
                let names: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.name()).collect();
                return fail(format!(
                    "--policies: unknown {p:?} (one of {})",
                    names.join(", ")
                ));
            }
        }
    }
    if policies.is_empty() {
        policies = PolicyKind::ALL.to_vec();
    }
    if a.seeds == 0 || a.seeds > 100 {
        return fail(format!("--seeds: {} is not in 1..=100", a.seeds));
    }
    if !(0.0..0.95).contains(&a.tuning_share) {
        return fail(format!(
            "--tuning-share: {} is not in [0, 0.95)",
            a.tuning_share
        ));
    }
    let mut scenarios: Vec<Scenario> = match load(&a.input) {
        Err(e) => return fail(e),
        Ok(Some(t)) => {
            if let Some(s) = &a.schedule
                && let Err(e) = Schedule::parse(s, a.timezone.as_deref())
            {
                return fail(format!("--schedule/--timezone: {e}"));
            }
            if !(a.service_seconds.is_finite() && a.service_seconds > 0.0) || a.concurrency == 0 {
                return fail("--service-seconds must be > 0 and --concurrency ≥ 1");
            }
            vec![Scenario {
                name: t.name.clone(),
                trace: t.scaled(a.scale),
                service_seconds: a.service_seconds,
                concurrency: a.concurrency,
                max_replicas: a.max_replicas,
                schedule: a.schedule.clone(),
                timezone: a.timezone.clone(),
                declare_service_time: true,
                counters: false,
                warm_pool: a.warm_pool,
                keda_tuning: headroom_sim::tune::KedaTuning::default(),
                tuning_share: a.tuning_share,
                drain_seconds: a.drain_seconds,
                prewarm: prewarm.clone(),
            }]
        }
        Ok(None) => {
            let mut v = match scenarios::synthetic() {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            if !a.synthetic_only {
                match scenarios::real() {
                    Ok(r) => v.extend(r),
                    Err(e) => return fail(e),
                }
            }
            for sc in &mut v {
                sc.prewarm = prewarm.clone();
                sc.tuning_share = a.tuning_share;
                if a.warm_pool.is_some() {
                    sc.warm_pool = a.warm_pool;
                }
            }
            v
        }
    };
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let progress = |done: usize, total: usize, label: &str| {
        let width = 30;
        let filled = done * width / total.max(1);
        eprint!(
            "\r[{}{}] {done}/{total} {:>5.1}s {label:<45}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    };
    let tuned = [
        PolicyKind::KedaTuned,
        PolicyKind::WarmPool,
        PolicyKind::CronHpa,
    ];
    let grids = if policies.iter().any(|p| tuned.contains(p)) {
        let g = headroom_sim::tune_all(&mut scenarios, &cluster, threads, &progress);
        eprintln!();
        g
    } else {
        vec![Vec::new(); scenarios.len()]
    };
    let runs = headroom_sim::run_all(&scenarios, &policies, &cluster, a.seeds, threads, &progress);
    eprintln!();
    let results = &runs.results;
    let rows = report::rows(results);
    let frontier_rows = report::frontier_rows(&runs.frontier);
    let beaten = report::beats_frontier(results, &runs.frontier);
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        return fail(format!("--out {}: {e}", a.out.display()));
    }
    let csv_path = a.out.join("results.csv");
    if let Err(e) = std::fs::write(&csv_path, report::csv(&rows)) {
        return fail(format!("cannot write {}: {e}", csv_path.display()));
    }
    let frontier_path = a.out.join("frontier.json");
    match serde_json::to_string_pretty(&frontier_rows) {
        Ok(j) => {
            if let Err(e) = std::fs::write(&frontier_path, j) {
                return fail(format!("cannot write {}: {e}", frontier_path.display()));
            }
        }
        Err(e) => return fail(e),
    }
    for sc in &scenarios {
        let rs: Vec<_> = results
            .iter()
            .filter(|r| r.scenario == sc.name && r.seed == cluster.seed)
            .collect();
        let path = a.out.join(format!("{}.svg", sc.name));
        let load = sc.service_seconds / f64::from(sc.concurrency);
        if let Err(e) = std::fs::write(&path, report::svg(&sc.name, &rs, load)) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    if a.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(j) => println!("{j}"),
            Err(e) => return fail(e),
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "Means over {} seeds ({}..={}) ± the half-width of their 95 % interval:",
        a.seeds.max(1),
        cluster.seed,
        cluster.seed + u64::from(a.seeds.max(1)) - 1
    );
    print!("{}", report::table(&rows));
    if policies.contains(&PolicyKind::KedaTuned) {
        println!();
        println!(
            "Against keda-tuned, paired by seed (mean difference [95 % interval]; inside it: tie):"
        );
        print!("{}", report::against_keda_tuned(&rows));
    }
    println!();
    println!(
        "Held-out results: each trace's first {:.0} % tunes the baselines and is not reported.",
        a.tuning_share * 100.0
    );
    println!("Baselines as tuned on that part (keda-tuned's grid; warm-pool by the seed's rule):");
    for (sc, grid) in scenarios.iter().zip(&grids) {
        let k = sc.keda_tuning;
        println!(
            "  {:<20} consolidateAfter {:>4} s, minReplicaCount {}, warm pool {} pods{}",
            sc.name,
            k.consolidate_after_seconds
                .unwrap_or(cluster.consolidate_after_seconds),
            k.min_replicas,
            sc.warm_pool
                .unwrap_or_else(|| headroom_sim::tune::warm_pool_rule(sc)),
            if grid.is_empty() { " (not tuned)" } else { "" }
        );
    }
    if policies.contains(&PolicyKind::Headroom) && policies.contains(&PolicyKind::HeadroomPrewarm) {
        println!();
        println!("Prewarming (headroom → headroom+prewarm):");
        print!("{}", report::prewarm_effect(&rows));
    }
    println!();
    if !runs.frontier.is_empty() {
        println!();
        println!(
            "Oracle frontier (perfect foresight; the efficient plans, all in {}):",
            frontier_path.display()
        );
        print!("{}", report::frontier_table(&frontier_rows));
        if beaten.is_empty() {
            println!("No policy beats the frontier on both axes on any seed.");
        } else {
            println!("BEATS THE FRONTIER (as cheap and as fast as no oracle plan):");
            for (t, p, seed, cost, p95) in &beaten {
                println!("  {t} {p} seed {seed}: cost ${cost:.2}, p95 {p95:.0} s");
            }
        }
    }
    println!();
    println!("Targets, Headroom without prewarmed nodes (paired by seed):");
    for sc in &scenarios {
        for (claim, met) in
            report::targets(&rows, &runs.frontier, &sc.name, sc.name == "poisson_spikes")
        {
            println!(
                "  {:<20} {} {claim}",
                sc.name,
                if met { "met   " } else { "MISSED" }
            );
        }
    }
    println!(
        "\n{} runs in {:.1} s; CSV and charts in {}",
        results.len(),
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    ExitCode::SUCCESS
}
