//! The seasonal forecaster against seasonal-naive on the real traces (sim/traces/real, see
//! SOURCES.md there), at a 5-minute lead (one bin; an hour or half an hour on the coarser
//! traces). The figures are in docs/planned-mode.md ("The forecast"); `headroom-sim backtest` prints them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use headroom_policy::forecast::backtest;
use headroom_sim::scenarios::backtest_traces;

#[test]
fn the_forecast_beats_seasonal_naive_on_every_real_trace() {
    for (name, t) in backtest_traces().unwrap() {
        let bin = (t.bin.ceil() as u32).max(300);
        let r = backtest(t.samples(), bin, f64::from(bin)).unwrap();
        // Same time yesterday, on every scored bin.
        assert!(r.model.mape < r.naive_day.mape, "{name}: {r:?}");
        // Same time last week, where a week of history exists.
        if let (Some(m), Some(n)) = (r.model_week_bins, r.naive_week) {
            assert!(m.mape < n.mape, "{name}: {r:?}");
        }
        // On the clean, dense traces it wins by a wide margin on WAPE too.
        if name.starts_with("azure") || name.starts_with("nyc") {
            assert!(r.model.wape < 0.5 * r.naive_day.wape, "{name}: {r:?}");
            if let (Some(m), Some(n)) = (r.model_week_bins, r.naive_week) {
                assert!(m.wape < 0.6 * n.wape, "{name}: {r:?}");
            }
        }
    }
}

#[test]
fn longer_leads_still_beat_same_time_yesterday_on_the_azure_traces() {
    for (name, t) in backtest_traces()
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n.starts_with("azure"))
    {
        for lead in [900.0, 3600.0] {
            let r = backtest(t.samples(), 300, lead).unwrap();
            assert!(r.model.mape < r.naive_day.mape, "{name} at {lead}: {r:?}");
        }
    }
}
