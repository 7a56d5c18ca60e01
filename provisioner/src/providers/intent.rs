//! Launch intents: what `mode: ec2` is about to launch, written to strongly consistent storage
//! before the CreateFleet call that launches it.
//!
//! DescribeInstances is eventually consistent on AWS: instances a CreateFleet just launched may
//! be missing from it for a while. Without a record, a CreateFleet whose response was lost (a
//! timeout, a dropped connection, a crash right after the call) looks like nothing launched, and
//! the next reconcile launches again. So before the call the provider writes an [`Intent`] (the
//! token, the decision's time and count) to the PrewarmPolicy's
//! [`INTENT_ANNOTATION`] annotation — the API server reads back what it wrote, whichever
//! replica asks — and:
//! - while the intent's instances are not all visible (tagged with its `created-at`), for up to
//!   [`VISIBILITY_WAIT_MS`], [`Holdings::unmaterialised`](crate::provider::Holdings) counts the
//!   missing ones as in flight, so the plan asks for nothing more;
//! - a create while the intent is open (up to [`REUSE_MS`]) repeats the intent's request
//!   exactly — the same `ClientToken`, tags and count — which EC2 deduplicates: it answers with
//!   the instances the lost call launched, or launches them if it never did.
//!
//! The annotation is Headroom's; a tenant who edits it can only hold back or repeat their own
//! policy's launches (the count never exceeds what the plan asks).

use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use crate::crd::PrewarmPolicy;
use crate::plan::Millis;
use crate::provider::{PolicyRef, ProviderError};
use crate::providers::karpenter::map_kube_error;

/// The annotation of the PrewarmPolicy holding its open launch intent (JSON).
pub const INTENT_ANNOTATION: &str = "headroom.dev/ec2-launch-intent";
/// How long instances of an intent that DescribeInstances does not show yet count as in flight.
pub const VISIBILITY_WAIT_MS: Millis = 120_000;
/// How long a create repeats an open intent's request instead of deciding anew (EC2 keeps a
/// `ClientToken` far longer).
pub const REUSE_MS: Millis = 3_600_000;
/// Longest annotation value read: anything longer is not Headroom's.
const MAX_LEN: usize = 1024;

/// One launch decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// The create token (tag `headroom.dev/token`).
    pub token: String,
    /// When it was decided (Unix ms): the `headroom.dev/created-at` tag of its instances and
    /// part of the `ClientToken`.
    pub at: Millis,
    /// Instances asked for; after a response, those launched.
    pub count: u32,
}

impl Intent {
    /// Parses an annotation value; `None` for anything that is not an intent.
    pub fn parse(value: &str) -> Option<Self> {
        if value.len() > MAX_LEN {
            return None;
        }
        serde_json::from_str::<Intent>(value)
            .ok()
            .filter(|i| !i.token.is_empty() && i.token.len() <= 64 && i.at > 0)
    }

    /// Open at `now`: its request may be repeated.
    pub fn reusable(&self, now: Millis) -> bool {
        now >= self.at && now - self.at < REUSE_MS
    }

    /// Its unseen instances still count as in flight at `now`.
    pub fn awaited(&self, now: Millis) -> bool {
        now >= self.at && now - self.at < VISIBILITY_WAIT_MS
    }
}

/// Where intents are kept: one open intent per policy.
#[async_trait]
pub trait IntentStore: Send + Sync + fmt::Debug {
    /// The policy's open intent, if any. An error when the storage cannot be read: a launch
    /// must not go ahead blind.
    async fn read(&self, policy: &PolicyRef) -> Result<Option<Intent>, ProviderError>;
    /// Records `intent` (`None`: clears it). Returns only once it is durable.
    async fn write(&self, policy: &PolicyRef, intent: Option<&Intent>)
    -> Result<(), ProviderError>;
}

/// Intents in the PrewarmPolicy's [`INTENT_ANNOTATION`] annotation.
#[derive(Clone)]
pub struct PolicyAnnotation {
    client: kube::Client,
}

impl fmt::Debug for PolicyAnnotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyAnnotation").finish_non_exhaustive()
    }
}

impl PolicyAnnotation {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    fn api(&self, policy: &PolicyRef) -> Api<PrewarmPolicy> {
        Api::namespaced(self.client.clone(), &policy.namespace)
    }
}

#[async_trait]
impl IntentStore for PolicyAnnotation {
    async fn read(&self, policy: &PolicyRef) -> Result<Option<Intent>, ProviderError> {
        // A GET without a resourceVersion is served from etcd (a quorum read): what any
        // replica wrote last.
        let p = self
            .api(policy)
            .get(&policy.name)
            .await
            .map_err(|e| map_kube_error(e, "PrewarmPolicy", &policy.name))?;
        // Another object under the same name (deleted and recreated): not its intent.
        if p.metadata.uid.as_deref().unwrap_or_default() != policy.uid {
            return Ok(None);
        }
        Ok(p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INTENT_ANNOTATION))
            .and_then(|v| Intent::parse(v)))
    }

    async fn write(
        &self,
        policy: &PolicyRef,
        intent: Option<&Intent>,
    ) -> Result<(), ProviderError> {
        let value = match intent {
            Some(i) => serde_json::Value::String(
                serde_json::to_string(i).map_err(|e| ProviderError::Other(e.to_string()))?,
            ),
            None => serde_json::Value::Null,
        };
        let mut patch = serde_json::json!({
            "metadata": {"annotations": {INTENT_ANNOTATION: value}}
        });
        // The uid as a precondition: never written onto a recreated policy of the same name
        // (the API server refuses a patch that would change it).
        if !policy.uid.is_empty() {
            patch["metadata"]["uid"] = serde_json::Value::String(policy.uid.clone());
        }
        self.api(policy)
            .patch(&policy.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| map_kube_error(e, "PrewarmPolicy", &policy.name))?;
        Ok(())
    }
}

/// Intents in memory: for tests, and for providers built without a Kubernetes client.
#[derive(Debug, Default)]
pub struct MemoryIntents(Mutex<std::collections::HashMap<String, Intent>>);

#[async_trait]
impl IntentStore for MemoryIntents {
    async fn read(&self, policy: &PolicyRef) -> Result<Option<Intent>, ProviderError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&policy.uid)
            .cloned())
    }

    async fn write(
        &self,
        policy: &PolicyRef,
        intent: Option<&Intent>,
    ) -> Result<(), ProviderError> {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match intent {
            Some(i) => {
                // One open intent per policy, so the map holds one entry per policy.
                m.insert(policy.uid.clone(), i.clone());
            }
            None => {
                m.remove(&policy.uid);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_intent_parses_and_it_expires() {
        let i = Intent {
            token: "uid-3".into(),
            at: 1_000_000,
            count: 2,
        };
        let v = serde_json::to_string(&i).unwrap();
        assert_eq!(v, r#"{"token":"uid-3","at":1000000,"count":2}"#);
        assert_eq!(Intent::parse(&v), Some(i.clone()));
        for bad in [
            "",
            "{}",
            "not json",
            r#"{"token":"","at":1,"count":1}"#,
            r#"{"token":"t","at":0,"count":1}"#,
        ] {
            assert_eq!(Intent::parse(bad), None, "{bad}");
        }
        assert_eq!(Intent::parse(&format!("{v:<2000}")), None);
        assert!(i.awaited(i.at) && i.awaited(i.at + VISIBILITY_WAIT_MS - 1));
        assert!(!i.awaited(i.at + VISIBILITY_WAIT_MS));
        assert!(i.reusable(i.at + VISIBILITY_WAIT_MS) && !i.reusable(i.at + REUSE_MS));
        // A clock behind the decision: neither (nothing is held on a time that is not yet).
        assert!(!i.awaited(i.at - 1) && !i.reusable(i.at - 1));
    }
}
