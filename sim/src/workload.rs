//! How a trace becomes jobs: when within its bins they arrive, and how long each takes.
//!
//! A trace gives counts per bin (and maybe a mean service time per bin). A real queue does not
//! see a bin's jobs evenly spaced: within a bin they arrive as a Poisson process, i.e. given the
//! count, at independent uniform times ([`ArrivalModel::Poisson`], seeded). Service times
//! spread around each bin's mean S by [`ServiceSpread`]; the fluid queue serves each cohort as
//! equal shares at the distribution's quantiles, so the spread is exact in distribution and the
//! seed moves only arrivals and node times.

use crate::rng::Rng;
use crate::trace::Trace;

/// Where a bin's arrivals fall within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalModel {
    /// The bin's count (a fractional count rounded up with probability its fraction), each
    /// at an independent uniform time within the bin: a Poisson process given the count.
    Poisson,
    /// Spread evenly over the bin as a fluid (the simulator's first model; no randomness).
    Even,
}

/// The service-time distribution around a cohort's mean S (its mean is always S).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceSpread {
    /// Lognormal with this coefficient of variation.
    Lognormal { cv: f64 },
    /// Uniform on [0.5 S, 1.5 S] (the first model: CV 0.29).
    Uniform,
    /// Every job takes exactly S.
    Fixed,
}

/// The default lognormal CV: the coefficient of variation of `GeneratedTokens` (decode time is
/// about proportional to it) in the Azure LLM 2023 conversation trace, 0.77 (the code trace's is
/// 2.1; its requests are mostly tiny). Chosen from that trace's token column, not from any
/// policy's results.
pub const DEFAULT_SERVICE_CV: f64 = 0.75;

/// How many equal-mass quantile points stand for the distribution.
const POINTS: usize = 32;

impl ServiceSpread {
    /// Multipliers of S, each carrying 1/len of a cohort, with mean exactly 1: the
    /// distribution's mid-quantiles ((k + ½)/K), rescaled to mean 1; for the lognormal, σ is
    /// chosen so that these points' own CV is the one asked for (32 points lose some of the far
    /// tail, which a plain σ would under-state by about 8 %).
    pub fn multipliers(self) -> Vec<f64> {
        match self {
            ServiceSpread::Fixed => vec![1.0],
            ServiceSpread::Uniform => normalised(
                (0..POINTS)
                    .map(|k| 0.5 + (k as f64 + 0.5) / POINTS as f64)
                    .collect(),
            ),
            ServiceSpread::Lognormal { cv } => {
                let points = |sigma: f64| {
                    normalised(
                        (0..POINTS)
                            .map(|k| {
                                let p = (k as f64 + 0.5) / POINTS as f64;
                                (sigma * crate::rng::inverse_normal_cdf(p)).exp()
                            })
                            .collect(),
                    )
                };
                // The points' CV grows with σ: bisect.
                let (mut lo, mut hi) = (0.0, 4.0);
                for _ in 0..60 {
                    let mid = 0.5 * (lo + hi);
                    if cv_of(&points(mid)) < cv {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                points(0.5 * (lo + hi))
            }
        }
    }
}

fn normalised(raw: Vec<f64>) -> Vec<f64> {
    let mean = raw.iter().sum::<f64>() / raw.len() as f64;
    raw.into_iter().map(|m| m / mean).collect()
}

/// The coefficient of variation of equal-mass points with mean 1.
fn cv_of(m: &[f64]) -> f64 {
    (m.iter().map(|x| (x - 1.0).powi(2)).sum::<f64>() / m.len() as f64).sqrt()
}

/// One realisation of a trace as arrivals per second, from `seed`.
pub fn arrivals_per_second(trace: &Trace, model: ArrivalModel, seed: u64) -> Vec<f64> {
    let n = trace.duration().round().max(0.0) as usize;
    match model {
        ArrivalModel::Even => (0..n)
            .map(|s| trace.rate_at(trace.start + s as f64))
            .collect(),
        ArrivalModel::Poisson => {
            let mut rng = Rng::new(seed ^ 0xA441_7A15);
            let mut out = vec![0.0; n];
            for (i, a) in trace.arrivals.iter().enumerate() {
                let whole = a.floor();
                let count = whole as u64 + u64::from(rng.f64() < a - whole);
                let from = i as f64 * trace.bin;
                for _ in 0..count {
                    let s = (from + rng.f64() * trace.bin).floor() as usize;
                    if let Some(slot) = out.get_mut(s) {
                        *slot += 1.0;
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spread_has_mean_one_and_the_lognormal_its_cv() {
        for spread in [
            ServiceSpread::Fixed,
            ServiceSpread::Uniform,
            ServiceSpread::Lognormal { cv: 0.75 },
        ] {
            let m = spread.multipliers();
            let mean = m.iter().sum::<f64>() / m.len() as f64;
            assert!((mean - 1.0).abs() < 1e-12, "{spread:?}: {mean}");
        }
        for cv in [0.3, 0.75, 1.5] {
            let m = ServiceSpread::Lognormal { cv }.multipliers();
            assert!((cv_of(&m) - cv).abs() < 1e-6, "{cv}: {}", cv_of(&m));
        }
        let m = ServiceSpread::Lognormal { cv: 0.75 }.multipliers();
        assert!(m[0] < 0.35 && m[m.len() - 1] > 2.5, "{m:?}");
        assert!((cv_of(&ServiceSpread::Uniform.multipliers()) - 0.2887).abs() < 0.01);
    }

    #[test]
    fn poisson_arrivals_keep_each_bins_count_and_vary_with_the_seed() {
        let t = Trace {
            name: "t".into(),
            start: 0.0,
            bin: 60.0,
            arrivals: vec![30.0, 0.0, 12.5],
            service: None,
        };
        let a = arrivals_per_second(&t, ArrivalModel::Poisson, 1);
        let b = arrivals_per_second(&t, ArrivalModel::Poisson, 2);
        assert_eq!(a.len(), 180);
        assert_eq!(a[..60].iter().sum::<f64>(), 30.0);
        assert_eq!(a[60..120].iter().sum::<f64>(), 0.0);
        assert!((12.0..=13.0).contains(&a[120..].iter().sum::<f64>()));
        assert_ne!(a, b);
        assert!(a.iter().all(|x| x.fract() == 0.0));
        let e = arrivals_per_second(&t, ArrivalModel::Even, 1);
        assert!((e[0] - 0.5).abs() < 1e-12);
    }
}
