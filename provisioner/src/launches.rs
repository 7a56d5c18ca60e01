//! Capacity that fails to come up: NodeClaims that Karpenter deletes before they are ready
//! (insufficient capacity, a registration timeout) and ones that never initialise.
//!
//! Without this the controller recreates a deleted NodeClaim on every pass, and one that never
//! initialises stays in flight (and protected) forever. [`Launches`] remembers, per policy, the
//! units that were not ready at the last pass; one that vanished without Headroom removing it
//! is a failed launch, and one older than the give-up time without being ready is removed and
//! counted as failed. After a failure nothing is created for the policy for a backoff that
//! doubles from [`FIRST_BACKOFF_MS`] to [`MAX_BACKOFF_MS`]; a unit that becomes ready resets it.
//! The state is in memory: a restarted provisioner starts without backoff (at worst one more
//! attempt per policy).

use std::collections::{HashMap, HashSet};

use crate::demand::PolicyKey;
use crate::plan::Millis;
use crate::provider::Unit;

pub const FIRST_BACKOFF_MS: Millis = 30_000;
pub const MAX_BACKOFF_MS: Millis = 600_000;
/// A unit not ready this long after it was asked for is given up on (Karpenter's own
/// registration TTL is 15 minutes).
pub const GIVE_UP_MS: Millis = 20 * 60_000;

/// Why capacity is failing, for the condition, the event and the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Deleted by the platform before it was ready.
    LaunchFailed,
    /// Not ready after [`GIVE_UP_MS`]: removed by Headroom.
    NotInitialized,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::LaunchFailed => "LaunchFailed",
            Failure::NotInitialized => "NotInitialized",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    /// Units not ready at the last pass.
    pending: HashSet<String>,
    /// Units Headroom removed itself (their vanishing is no failure).
    removed: HashSet<String>,
    /// What the platform last said about each pending unit ([`Unit::launch_error`]).
    errors: HashMap<String, String>,
    failures: u32,
    retry_at: Millis,
    last: Option<(Failure, String)>,
    /// What the platform said about the last failed unit, if anything.
    last_error: Option<String>,
}

/// What one pass learns about failing capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Units to give up on (remove): not ready after [`GIVE_UP_MS`].
    pub give_up: Vec<String>,
    /// Failures seen in this pass, with the units.
    pub new_failures: Vec<(Failure, String)>,
    /// No creation before this time (0: none).
    pub retry_at: Millis,
    /// Consecutive failures, and the last one, while backing off.
    pub failing: Option<(u32, Failure, String)>,
    /// What the platform said about that last one (a NodeClaim's `Launched=False` reason), if
    /// it said anything before the unit went.
    pub failing_error: Option<String>,
}

/// Per-policy launch state; one entry per policy the loop reconciles, dropped on deletion.
#[derive(Debug, Default)]
pub struct Launches(HashMap<PolicyKey, State>);

/// The backoff after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Millis {
    if failures == 0 {
        return 0;
    }
    FIRST_BACKOFF_MS
        .saturating_mul(1 << (failures - 1).min(20))
        .min(MAX_BACKOFF_MS)
}

impl Launches {
    /// Judges `units` (what the provider lists now) at `now`.
    pub fn observe(&mut self, key: &PolicyKey, units: &[Unit], now: Millis) -> Verdict {
        let s = self.0.entry(key.clone()).or_default();
        let present: HashSet<&str> = units.iter().map(|u| u.id.as_str()).collect();
        let mut new_failures = Vec::new();
        // What the platform said about the last of this pass's failures.
        let mut last_error = None;
        let mut vanished: Vec<&String> = s
            .pending
            .iter()
            .filter(|id| !present.contains(id.as_str()) && !s.removed.contains(*id))
            .collect();
        vanished.sort();
        for id in vanished {
            new_failures.push((Failure::LaunchFailed, id.clone()));
            last_error = s.errors.get(id).cloned();
        }
        let mut give_up: Vec<String> = units
            .iter()
            .filter(|u| !u.ready && now.saturating_sub(u.created_at) >= GIVE_UP_MS)
            .map(|u| u.id.clone())
            .collect();
        give_up.sort();
        for id in &give_up {
            new_failures.push((Failure::NotInitialized, id.clone()));
            last_error = units
                .iter()
                .find(|u| &u.id == id)
                .and_then(|u| u.launch_error.clone());
        }
        if units
            .iter()
            .any(|u| u.ready && !s.pending.is_empty() && s.pending.contains(&u.id))
        {
            // Capacity came up: the platform can launch again.
            s.failures = 0;
            s.retry_at = 0;
            s.last = None;
            s.last_error = None;
        }
        if let Some(last) = new_failures.last() {
            s.failures = s.failures.saturating_add(new_failures.len() as u32);
            s.retry_at = now.saturating_add(backoff(s.failures));
            s.last = Some(last.clone());
            s.last_error = last_error;
        }
        s.pending = units
            .iter()
            .filter(|u| !u.ready && !give_up.contains(&u.id))
            .map(|u| u.id.clone())
            .collect();
        s.errors = units
            .iter()
            .filter(|u| s.pending.contains(&u.id))
            .filter_map(|u| Some((u.id.clone(), u.launch_error.clone()?)))
            .collect();
        s.removed.retain(|id| present.contains(id.as_str()));
        let failing = match &s.last {
            Some((f, id)) if now < s.retry_at => Some((s.failures, *f, id.clone())),
            _ => None,
        };
        Verdict {
            give_up,
            new_failures,
            retry_at: s.retry_at,
            failing_error: failing.as_ref().and(s.last_error.clone()),
            failing,
        }
    }

    /// Units Headroom removed, and units it just created (not ready yet).
    pub fn acted(&mut self, key: &PolicyKey, removed: &[String], created: &[Unit]) {
        let s = self.0.entry(key.clone()).or_default();
        s.removed.extend(removed.iter().cloned());
        s.pending
            .extend(created.iter().filter(|u| !u.ready).map(|u| u.id.clone()));
    }

    pub fn forget(&mut self, key: &PolicyKey) {
        self.0.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::fixtures::unit;

    fn key() -> PolicyKey {
        ("ml".into(), "p".into())
    }

    #[test]
    fn the_backoff_doubles_to_its_ceiling() {
        assert_eq!(backoff(0), 0);
        assert_eq!(backoff(1), 30_000);
        assert_eq!(backoff(2), 60_000);
        assert_eq!(backoff(5), 480_000);
        assert_eq!(backoff(6), MAX_BACKOFF_MS);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF_MS);
    }

    #[test]
    fn a_failed_launch_carries_what_the_platform_last_said_about_it() {
        let mut l = Launches::default();
        let mut a = unit("a", "g5.xlarge");
        l.acted(&key(), &[], std::slice::from_ref(&a));
        a.launch_error = Some("Launched=False InsufficientCapacityError: no g5".into());
        let v = l.observe(&key(), std::slice::from_ref(&a), 1_000);
        assert_eq!(v.failing_error, None, "not failed yet");
        let v = l.observe(&key(), &[], 2_000);
        assert_eq!(v.new_failures, vec![(Failure::LaunchFailed, "a".into())]);
        assert_eq!(
            v.failing_error.as_deref(),
            Some("Launched=False InsufficientCapacityError: no g5")
        );
        // A unit that comes up clears it.
        let mut b = unit("b", "g5.xlarge");
        l.acted(&key(), &[], std::slice::from_ref(&b));
        l.observe(&key(), std::slice::from_ref(&b), 3_000);
        b.ready = true;
        let v = l.observe(&key(), std::slice::from_ref(&b), 4_000);
        assert_eq!((v.failing, v.failing_error), (None, None));
    }

    #[test]
    fn a_unit_deleted_before_it_was_ready_is_a_failed_launch_and_backs_off_creation() {
        let mut l = Launches::default();
        let a = unit("a", "g5.xlarge");
        l.acted(&key(), &[], std::slice::from_ref(&a));
        let v = l.observe(&key(), std::slice::from_ref(&a), 1_000);
        assert!(v.new_failures.is_empty() && v.failing.is_none());
        // Gone without Headroom removing it.
        let v = l.observe(&key(), &[], 2_000);
        assert_eq!(v.new_failures, vec![(Failure::LaunchFailed, "a".into())]);
        assert_eq!(v.retry_at, 2_000 + FIRST_BACKOFF_MS);
        assert_eq!(v.failing, Some((1, Failure::LaunchFailed, "a".into())));
        // Still backing off, then not.
        assert!(l.observe(&key(), &[], 3_000).failing.is_some());
        assert!(
            l.observe(&key(), &[], 2_000 + FIRST_BACKOFF_MS)
                .failing
                .is_none()
        );
    }

    #[test]
    fn what_headroom_removed_is_no_failure_and_a_ready_unit_resets_the_backoff() {
        let mut l = Launches::default();
        let (a, b) = (unit("a", ""), unit("b", ""));
        l.acted(&key(), &[], &[a.clone(), b.clone()]);
        l.observe(&key(), &[a.clone(), b.clone()], 0);
        l.acted(&key(), &["a".into()], &[]);
        let v = l.observe(&key(), std::slice::from_ref(&b), 1_000);
        assert!(v.new_failures.is_empty(), "{v:?}");
        let c = unit("c", "");
        l.acted(&key(), &[], std::slice::from_ref(&c));
        let v = l.observe(&key(), std::slice::from_ref(&b), 2_000);
        assert_eq!(v.new_failures.len(), 1);
        let mut ready = b.clone();
        ready.ready = true;
        let v = l.observe(&key(), &[ready], 3_000);
        assert!(v.failing.is_none() && v.retry_at == 0, "{v:?}");
    }

    #[test]
    fn a_unit_never_ready_is_given_up_on_after_the_limit() {
        let mut l = Launches::default();
        let a = unit("a", "");
        let v = l.observe(&key(), std::slice::from_ref(&a), GIVE_UP_MS - 1);
        assert!(v.give_up.is_empty());
        let v = l.observe(&key(), std::slice::from_ref(&a), GIVE_UP_MS);
        assert_eq!(v.give_up, vec!["a".to_string()]);
        assert_eq!(v.new_failures, vec![(Failure::NotInitialized, "a".into())]);
        // Removed by Headroom as given up: its vanishing is not counted again.
        l.acted(&key(), &v.give_up, &[]);
        let v = l.observe(&key(), &[], GIVE_UP_MS + 1);
        assert!(v.new_failures.is_empty(), "{v:?}");
    }
}
