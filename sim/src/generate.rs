//! The shipped synthetic traces, generated deterministically from a seed
//! (`headroom-sim generate` writes them; a test checks the shipped files are exactly these).

use crate::rng::Rng;
use crate::trace::Trace;

/// The seed of the shipped traces.
pub const SEED: u64 = 20_240_513;

/// Monday 2024-05-06 00:00 UTC.
const MONDAY: f64 = 1_714_953_600.0;

fn bump(x: f64, centre: f64, width: f64) -> f64 {
    (-((x - centre) / width).powi(2)).exp()
}

fn smoothstep(x: f64, from: f64, to: f64) -> f64 {
    let u = ((x - from) / (to - from)).clamp(0.0, 1.0);
    u * u * (3.0 - 2.0 * u)
}

/// Business-hours inference, 14 days, 60 s bins, Europe/Berlin office hours (UTC+2 in May):
/// ramp from 07:30, a morning peak at 09:30, a lunch peak at 12:30, quiet from 18:30; weekends
/// at a tenth; each day's level varies ±15 %.
pub fn business_hours(seed: u64) -> Trace {
    let mut rng = Rng::new(seed ^ 0xB05);
    let bin = 60.0;
    let days = 14;
    let day_level: Vec<f64> = (0..days)
        .map(|_| 1.0 + 0.15 * (2.0 * rng.f64() - 1.0))
        .collect();
    let n = days * 1440;
    let arrivals = (0..n)
        .map(|i| {
            let t = i as f64 * bin;
            let day = (t / 86_400.0) as usize;
            let h = (t % 86_400.0) / 3600.0 + 2.0; // Berlin local hour
            let weekday = day % 7 < 5;
            let open = smoothstep(h, 7.5, 8.5) * (1.0 - smoothstep(h, 18.0, 19.0));
            let shape = 0.55 * open + 0.55 * bump(h, 9.5, 0.9) + 0.9 * bump(h, 12.5, 0.6);
            let rate = 0.01 + shape * day_level[day] * if weekday { 1.0 } else { 0.1 };
            rng.poisson(rate * bin) as f64
        })
        .collect();
    Trace {
        name: "business_hours".into(),
        start: MONDAY,
        bin,
        arrivals,
        service: None,
    }
}

/// A flash sale: 3 days of modest diurnal traffic (10 s bins), and on day 2 at 12:00 UTC (the
/// declared sale time) a burst ramping to 30 tasks/s within a minute and decaying over ~20 min.
pub fn flash_sale(seed: u64) -> Trace {
    let mut rng = Rng::new(seed ^ 0xF1A5);
    let bin = 10.0;
    let start = MONDAY + 86_400.0 * 8.0; // Tuesday 2024-05-14
    let sale = 86_400.0 + 12.0 * 3600.0;
    let n = 3 * 8640;
    let arrivals = (0..n)
        .map(|i| {
            let t = i as f64 * bin;
            let h = (t % 86_400.0) / 3600.0;
            let base = 0.05 + 0.25 * bump(h, 14.0, 4.0);
            let dt = t - sale;
            let burst = if dt >= 0.0 {
                30.0 * smoothstep(dt, 0.0, 60.0) * (-dt / 1200.0).exp()
            } else {
                0.0
            };
            rng.poisson((base + burst) * bin) as f64
        })
        .collect();
    Trace {
        name: "flash_sale".into(),
        start,
        bin,
        arrivals,
        service: None,
    }
}

/// Bursty GPU image generation on three Celery priority queues, 7 days, 10 s bins:
/// interactive jobs (15 s each, diurnal), standard jobs (30 s, diurnal, fewer) and batch jobs
/// (60 s) submitted in bursts of 50-300 at random times (about 8 a day). The service column is
/// the mean of each bin's mix.
pub fn image_gen(seed: u64) -> Trace {
    let mut rng = Rng::new(seed ^ 0x1A6E);
    let bin = 10.0;
    let n = 7 * 8640;
    let start = MONDAY + 86_400.0 * 14.0;
    let mut batch = vec![0.0; n];
    let mut t = rng.exp(3.0 * 3600.0);
    while t < n as f64 * bin {
        let size = rng.uniform(50.0, 300.0).round();
        // A submission lands over about a minute.
        let first = (t / bin) as usize;
        for k in 0..6 {
            if first + k < n {
                batch[first + k] += size / 6.0;
            }
        }
        t += rng.exp(3.0 * 3600.0);
    }
    let mut arrivals = Vec::with_capacity(n);
    let mut service = Vec::with_capacity(n);
    for (i, b) in batch.iter().enumerate() {
        let t = i as f64 * bin;
        let h = (t % 86_400.0) / 3600.0;
        let weekday = (t / 86_400.0) as usize % 7 < 5;
        let diurnal = 0.15 + bump(h, 15.0, 4.0) * if weekday { 1.0 } else { 0.5 };
        let hi = rng.poisson(0.12 * diurnal * bin) as f64;
        let mid = rng.poisson(0.04 * diurnal * bin) as f64;
        let lo = b.round();
        let total = hi + mid + lo;
        arrivals.push(total);
        service.push(if total > 0.0 {
            (hi * 15.0 + mid * 30.0 + lo * 60.0) / total
        } else {
            20.0
        });
    }
    Trace {
        name: "image_gen".into(),
        start,
        bin,
        arrivals,
        service: Some(service),
    }
}

/// Unpredictable load: 7 days of Poisson arrivals at a slowly wandering rate (no daily pattern)
/// with spikes at random times (about 6 a day, 4-12× for 2-10 minutes). 10 s bins.
pub fn poisson_spikes(seed: u64) -> Trace {
    let mut rng = Rng::new(seed ^ 0x9015);
    let bin = 10.0;
    let n = 7 * 8640;
    let start = MONDAY + 86_400.0 * 21.0;
    let mut level = 0.5;
    let mut spikes: Vec<(f64, f64, f64)> = Vec::new();
    let mut t = rng.exp(4.0 * 3600.0);
    while t < n as f64 * bin {
        spikes.push((t, rng.uniform(120.0, 600.0), rng.uniform(4.0, 12.0)));
        t += rng.exp(4.0 * 3600.0);
    }
    let arrivals = (0..n)
        .map(|i| {
            let t = i as f64 * bin;
            // A bounded random walk of the base rate.
            level = (level * (1.0 + 0.01 * rng.normal())).clamp(0.2, 1.2);
            let spike: f64 = spikes
                .iter()
                .filter(|(s, d, _)| t >= *s && t < s + d)
                .map(|(_, _, m)| *m)
                .fold(1.0, f64::max);
            rng.poisson(level * spike * bin) as f64
        })
        .collect();
    Trace {
        name: "poisson_spikes".into(),
        start,
        bin,
        arrivals,
        service: None,
    }
}

/// A sparse GPU worker: 7 days of single jobs, one every 5 to 30 minutes (uniform gaps), day
/// and night alike. 60 s bins. Each job's node would start cold after every gap longer than
/// the keep-alive: what `scaleDownAfter: auto` (issue 11) is for, and KEDA #7327's case.
pub fn sparse(seed: u64) -> Trace {
    let mut rng = Rng::new(seed ^ 0x5BA5);
    let bin = 60.0;
    let n = 7 * 1440;
    let start = MONDAY + 86_400.0 * 28.0;
    let mut arrivals = vec![0.0; n];
    let mut t = rng.uniform(300.0, 1800.0);
    while t < n as f64 * bin {
        arrivals[(t / bin) as usize] += 1.0;
        t += rng.uniform(300.0, 1800.0);
    }
    Trace {
        name: "sparse".into(),
        start,
        bin,
        arrivals,
        service: None,
    }
}

/// Every shipped synthetic trace, by file stem.
pub fn all(seed: u64) -> Vec<Trace> {
    vec![
        business_hours(seed),
        flash_sale(seed),
        image_gen(seed),
        poisson_spikes(seed),
        sparse(seed),
    ]
}
