//! The shipped synthetic traces are exactly what their generator makes from the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use headroom_sim::generate::{SEED, all};
use headroom_sim::scenarios::traces_dir;

#[test]
fn shipped_traces_match_their_generator() {
    for t in all(SEED) {
        let path = traces_dir().join(format!("{}.csv", t.name));
        let shipped = std::fs::read_to_string(&path).unwrap();
        assert!(
            shipped == t.to_csv(),
            "{} differs from its generator: run `cargo run -p headroom-sim -- generate`",
            path.display()
        );
    }
}

#[test]
fn generated_traces_have_the_declared_shapes() {
    let [business, flash, image, poisson, sparse] = <[_; 5]>::try_from(all(SEED)).unwrap();
    // Business hours: weekday lunch (10:30 UTC = 12:30 Berlin) far above 03:00, weekends low.
    let at = |t: &headroom_sim::trace::Trace, day: f64, hour: f64| {
        t.rate_at(t.start + day * 86_400.0 + hour * 3600.0)
    };
    assert!(at(&business, 1.0, 10.5) > 20.0 * at(&business, 1.0, 1.0).max(0.01));
    let weekday: f64 = (0..1440).map(|m| at(&business, 2.0, m as f64 / 60.0)).sum();
    let weekend: f64 = (0..1440).map(|m| at(&business, 5.0, m as f64 / 60.0)).sum();
    assert!(weekend < 0.2 * weekday, "{weekend} {weekday}");
    // The flash sale lands at 12:00 UTC on its second day.
    assert!(at(&flash, 1.0, 12.02) > 20.0 * at(&flash, 1.0, 11.9).max(0.05));
    // Image generation carries a service-time mix; Poisson has spikes.
    assert!(image.service.as_ref().unwrap().iter().any(|s| *s > 40.0));
    let max = poisson.arrivals.iter().copied().fold(0.0, f64::max);
    let mean = poisson.total() / poisson.arrivals.len() as f64;
    assert!(max > 5.0 * mean, "{max} {mean}");
    // Sparse: single jobs, 5 to 30 minutes apart (no two in one 60 s bin).
    assert!(sparse.arrivals.iter().all(|&a| a <= 1.0));
    let at: Vec<usize> = (0..sparse.arrivals.len())
        .filter(|&i| sparse.arrivals[i] > 0.0)
        .collect();
    assert!(
        at.windows(2).all(|w| (4..=30).contains(&(w[1] - w[0]))),
        "gaps in minutes"
    );
    assert!(at.len() > 500 && at.len() < 1000, "{} jobs", at.len());
}
