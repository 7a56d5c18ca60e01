//! The EC2 provider against moto's EC2 server (through the test bed's fault proxy for the
//! answers moto cannot give: spot capacity errors and throttling).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateSpecificationRequest, FleetType, Instance, InstanceLifecycleType,
    TargetCapacitySpecificationRequest,
};
use headroom_integration::ec2::{Ec2Server, Faults};
use headroom_provisioner::crd::{Ec2Spec, InstanceType, LaunchTemplateRef};
use headroom_provisioner::provider::{CapacityProvider, CreateRequest, PolicyRef, ProviderError};
use headroom_provisioner::providers::ec2::{Ec2Provider, tags_of};
use headroom_provisioner::shape::Shape;

fn spec(server: &Ec2Server, template: &str, spot: bool, warm_pool_size: u32) -> Ec2Spec {
    Ec2Spec {
        region: "us-east-1".into(),
        launch_template: LaunchTemplateRef {
            id: None,
            name: Some(template.into()),
            version: None,
        },
        instance_types: vec![
            InstanceType {
                name: "g5.xlarge".into(),
                gpus: 1,
                cpu: "3920m".into(),
                memory: "14Gi".into(),
                hourly_price: Some(1.006),
            },
            InstanceType {
                name: "g5.2xlarge".into(),
                gpus: 1,
                cpu: "7910m".into(),
                memory: "28Gi".into(),
                hourly_price: Some(1.212),
            },
        ],
        subnet_ids: Vec::new(),
        spot,
        warm_pool_size,
        endpoint: Some(server.endpoint()),
    }
}

async fn provider(server: &Ec2Server, spec: &Ec2Spec) -> Ec2Provider {
    // One attempt per call, so fault tests see the provider's own answer quickly.
    let client = Ec2Server::client_for(&server.endpoint(), 1).await;
    Ec2Provider::with_client(client, spec).unwrap()
}

fn policy(name: &str) -> PolicyRef {
    PolicyRef {
        namespace: "ml".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

fn shape() -> Shape {
    Shape {
        gpus: 1,
        cpu: 2.0,
        memory: 8e9,
        node_selector: BTreeMap::new(),
        affinity: None,
        tolerations: Vec::new(),
        requests: BTreeMap::new(),
        images: Default::default(),
    }
}

fn request<'a>(shape: &'a Shape, count: u32, token: &str, now: i64) -> CreateRequest<'a> {
    CreateRequest {
        count,
        shape,
        token: token.into(),
        now,
    }
}

/// Every instance moto holds (any state), straight from moto.
async fn instances(server: &Ec2Server) -> Vec<Instance> {
    let out = server
        .moto_client()
        .await
        .describe_instances()
        .send()
        .await
        .unwrap();
    let mut v: Vec<Instance> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .collect();
    v.sort_by(|a, b| a.instance_id().cmp(&b.instance_id()));
    v
}

fn state(i: &Instance) -> &str {
    i.state().and_then(|s| s.name()).map_or("", |n| n.as_str())
}

fn by_id<'a>(all: &'a [Instance], id: &str) -> &'a Instance {
    all.iter().find(|i| i.instance_id() == Some(id)).unwrap()
}

const T0: i64 = 1_763_980_000_000;

#[tokio::test]
async fn create_tags_instances_as_the_policys_and_a_retry_with_the_same_token_creates_nothing_more()
{
    let server = Ec2Server::start().await.unwrap();
    server.launch_template("gpu-nodes").await.unwrap();
    let spec = spec(&server, "gpu-nodes", true, 0);
    let p = provider(&server, &spec).await;
    let pol = policy("llm");
    let shape = shape();

    let first = p
        .create(&pol, &request(&shape, 2, "uid-llm-0", T0))
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    let all = instances(&server).await;
    assert_eq!(all.len(), 2);
    for u in &first {
        assert_eq!(u.instance_type, "g5.xlarge");
        assert_eq!(u.hourly_price, 1.006);
        assert_eq!((u.created_at, u.last_needed), (T0, T0));
        let i = by_id(&all, &u.id);
        let tags = tags_of(i);
        assert_eq!(tags["headroom.dev/policy"], "ml.llm");
        assert_eq!(tags["app.kubernetes.io/managed-by"], "headroom-provisioner");
        assert_eq!(tags["headroom.dev/token"], "uid-llm-0");
        assert_eq!(tags["headroom.dev/created-at"], T0.to_string());
        assert_eq!(tags["headroom.dev/last-needed"], T0.to_string());
        // Spot first, and moto had spot capacity.
        assert_eq!(i.instance_lifecycle(), Some(&InstanceLifecycleType::Spot));
    }

    // The same call again (a retry after a timeout), and a second reconcile's call with the same
    // token before the first one's units were listed: the same two instances, nothing new.
    for now in [T0, T0 + 5_000] {
        server.clear_calls();
        let again = p
            .create(&pol, &request(&shape, 2, "uid-llm-0", now))
            .await
            .unwrap();
        let ids = |v: &[headroom_provisioner::provider::Unit]| {
            let mut ids: Vec<String> = v.iter().map(|u| u.id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&again), ids(&first));
        assert_eq!(instances(&server).await.len(), 2);
        assert!(
            !server.calls().iter().any(|c| c.starts_with("CreateFleet")),
            "{:?}",
            server.calls()
        );
    }

    // list finds them (moto runs instances at once: ready), with their price and times.
    let listed = p.list(&pol).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|u| u.ready && u.created_at == T0));
    assert!(p.list(&policy("other")).await.unwrap().is_empty());

    // hold moves last-needed and ends the token's life: the same token later is a new decision.
    let ids: Vec<String> = listed.iter().map(|u| u.id.clone()).collect();
    p.hold(&pol, &ids, T0 + 60_000).await.unwrap();
    let listed = p.list(&pol).await.unwrap();
    assert!(listed.iter().all(|u| u.last_needed == T0 + 60_000));
    assert!(
        instances(&server)
            .await
            .iter()
            .all(|i| !tags_of(i).contains_key("headroom.dev/token"))
    );
    let later = p
        .create(&pol, &request(&shape, 1, "uid-llm-0", T0 + 120_000))
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(p.list(&pol).await.unwrap().len(), 3);
    // release has nothing to lift on EC2.
    p.release(&pol, &ids).await.unwrap();
}

/// What moto does with `ClientToken` on CreateFleet, which is why the provider keeps its own
/// token tag: if this starts failing, moto began honouring it.
#[tokio::test]
async fn moto_does_not_deduplicate_create_fleet_by_client_token() {
    let server = Ec2Server::start().await.unwrap();
    server.launch_template("gpu-nodes").await.unwrap();
    let client = server.moto_client().await;
    let call = || {
        client
            .create_fleet()
            .r#type(FleetType::Instant)
            .client_token("same-token")
            .launch_template_configs(
                FleetLaunchTemplateConfigRequest::builder()
                    .launch_template_specification(
                        FleetLaunchTemplateSpecificationRequest::builder()
                            .launch_template_name("gpu-nodes")
                            .version("$Default")
                            .build(),
                    )
                    .build(),
            )
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(1)
                    .default_target_capacity_type(DefaultTargetCapacityType::OnDemand)
                    .build(),
            )
            .send()
    };
    let a = call().await.unwrap();
    let b = call().await.unwrap();
    assert_ne!(a.fleet_id(), b.fleet_id());
    assert_eq!(instances(&server).await.len(), 2);
}

#[tokio::test]
async fn spot_capacity_errors_send_the_remainder_to_on_demand() {
    let server = Ec2Server::start().await.unwrap();
    server.launch_template("gpu-nodes").await.unwrap();
    let spec = spec(&server, "gpu-nodes", true, 0);
    let p = provider(&server, &spec).await;
    let pol = policy("llm");
    let shape = shape();
    server.set_faults(Faults {
        no_spot: true,
        ..Faults::default()
    });

    let units = p
        .create(&pol, &request(&shape, 3, "uid-llm-0", T0))
        .await
        .unwrap();
    assert_eq!(units.len(), 3);
    let fleets: Vec<String> = server
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("CreateFleet"))
        .collect();
    assert_eq!(fleets, ["CreateFleet:spot", "CreateFleet:on-demand"]);
    let all = instances(&server).await;
    assert_eq!(all.len(), 3);
    for u in &units {
        let i = by_id(&all, &u.id);
        assert_eq!(i.instance_lifecycle(), None, "on-demand");
        assert_eq!(tags_of(i)["headroom.dev/policy"], "ml.llm");
    }

    // No capacity of either kind: an InsufficientCapacity error naming both, nothing created.
    server.set_faults(Faults {
        no_spot: true,
        no_on_demand: true,
        ..Faults::default()
    });
    let err = p
        .create(&pol, &request(&shape, 2, "uid-llm-3", T0 + 10_000))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::InsufficientCapacity(m) if m.contains("Spot") && m.contains("OnDemand") && m.contains("InsufficientInstanceCapacity")),
        "{err:?}"
    );
    assert_eq!(err.reason(), "InsufficientCapacity");
    assert!(err.retryable());
    assert_eq!(instances(&server).await.len(), 3);
}

#[tokio::test]
async fn a_warm_pool_is_started_instead_of_launched_and_removal_fills_it_then_terminates() {
    let server = Ec2Server::start().await.unwrap();
    server.launch_template("gpu-nodes").await.unwrap();
    // On-demand only: spot instances cannot be stopped into a pool.
    let spec = spec(&server, "gpu-nodes", false, 2);
    let p = provider(&server, &spec).await;
    let pol = policy("llm");
    let shape = shape();

    let units = p
        .create(&pol, &request(&shape, 3, "uid-llm-0", T0))
        .await
        .unwrap();
    assert_eq!(units.len(), 3);
    let ids: Vec<String> = units.iter().map(|u| u.id.clone()).collect();

    // Remove all three: two stop into the pool (its size), the third is terminated.
    p.remove(&pol, &ids).await.unwrap();
    let all = instances(&server).await;
    let mut states: Vec<&str> = ids.iter().map(|id| state(by_id(&all, id))).collect();
    states.sort();
    assert_eq!(states, ["stopped", "stopped", "terminated"]);
    // Stopped instances are the pool, not units.
    assert!(p.list(&pol).await.unwrap().is_empty());
    let mut pooled: Vec<String> = ids
        .iter()
        .filter(|id| state(by_id(&all, id)) == "stopped")
        .cloned()
        .collect();
    pooled.sort();

    // Two more wanted: the pool is started, nothing is launched.
    server.clear_calls();
    let started = p
        .create(&pol, &request(&shape, 2, "uid-llm-0b", T0 + 60_000))
        .await
        .unwrap();
    let mut got: Vec<String> = started.iter().map(|u| u.id.clone()).collect();
    got.sort();
    assert_eq!(got, pooled);
    assert!(started.iter().all(|u| u.created_at == T0 + 60_000));
    let calls = server.calls();
    assert!(calls.contains(&"StartInstances".to_string()), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("CreateFleet")),
        "{calls:?}"
    );
    let all = instances(&server).await;
    assert!(pooled.iter().all(|id| state(by_id(&all, id)) == "running"));

    // A third: the pool is empty now, so CreateFleet launches it.
    server.clear_calls();
    let launched = p
        .create(&pol, &request(&shape, 1, "uid-llm-2", T0 + 70_000))
        .await
        .unwrap();
    assert_eq!(launched.len(), 1);
    assert!(!pooled.contains(&launched[0].id));
    assert!(
        server
            .calls()
            .contains(&"CreateFleet:on-demand".to_string()),
        "{:?}",
        server.calls()
    );
    assert_eq!(p.list(&pol).await.unwrap().len(), 3);
}

#[tokio::test]
async fn removal_terminates_spot_instances_and_ignores_ids_that_are_not_the_policys() {
    let server = Ec2Server::start().await.unwrap();
    server.launch_template("gpu-nodes").await.unwrap();
    let spec = spec(&server, "gpu-nodes", true, 4);
    let p = provider(&server, &spec).await;
    let shape = shape();
    let mine = p
        .create(&policy("llm"), &request(&shape, 1, "uid-llm-0", T0))
        .await
        .unwrap();
    let theirs = p
        .create(&policy("other"), &request(&shape, 1, "uid-other-0", T0))
        .await
        .unwrap();
    let ids = vec![
        mine[0].id.clone(),
        theirs[0].id.clone(),
        "i-0000000000000dead".into(),
    ];
    // Room in the pool, but a spot instance cannot stop: terminated. The other policy's
    // instance and the unknown id are left alone, and that is success.
    p.remove(&policy("llm"), &ids).await.unwrap();
    let all = instances(&server).await;
    assert_eq!(state(by_id(&all, &mine[0].id)), "terminated");
    assert_eq!(state(by_id(&all, &theirs[0].id)), "running");
    // Removing what is already gone is success too.
    p.remove(&policy("llm"), &ids[..1]).await.unwrap();
    assert!(p.list(&policy("llm")).await.unwrap().is_empty());
    assert_eq!(p.list(&policy("other")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn throttling_is_throttled_and_a_missing_launch_template_is_missing() {
    let server = Ec2Server::start().await.unwrap();
    server.launch_template("gpu-nodes").await.unwrap();
    let shape = shape();
    let pol = policy("llm");

    server.set_faults(Faults {
        throttle: vec!["DescribeInstances".into()],
        ..Faults::default()
    });
    let p = provider(&server, &spec(&server, "gpu-nodes", true, 0)).await;
    let err = p.list(&pol).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Throttled(m) if m.contains("RequestLimitExceeded")),
        "{err:?}"
    );
    assert!(err.retryable());
    let err = p
        .create(&pol, &request(&shape, 1, "uid-llm-0", T0))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Throttled", "{err:?}");

    // The SDK's own retries still end in Throttled (three attempts by default).
    server.clear_calls();
    let client = Ec2Server::client_for(&server.endpoint(), 3).await;
    let patient = Ec2Provider::with_client(client, &spec(&server, "gpu-nodes", true, 0)).unwrap();
    let err = patient.list(&pol).await.unwrap_err();
    assert_eq!(err.reason(), "Throttled", "{err:?}");
    assert_eq!(server.calls().len(), 3, "{:?}", server.calls());
    server.set_faults(Faults::default());

    let p = provider(&server, &spec(&server, "no-such-template", true, 0)).await;
    let err = p
        .create(&pol, &request(&shape, 1, "uid-llm-0", T0))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Missing { kind: "launch template", name, .. } if name == "no-such-template"),
        "{err:?}"
    );
    assert!(!err.retryable());
    assert!(err.to_string().contains("no-such-template"), "{err}");
    // Nothing was created by either.
    assert!(instances(&server).await.is_empty());
}

/// This host's clock in Unix ms: launch intents are awaited on it.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Issue 13's "nothing twice": CreateFleet runs and its answer is lost, and DescribeInstances
/// lags behind (both as EC2 can do, made by the proxy). The launch intent, written before the
/// call, keeps the instances in flight and makes the next create repeat the same request,
/// which EC2 answers from its `ClientToken` with what already launched.
#[tokio::test]
async fn a_lost_create_fleet_answer_and_a_lagging_describe_launch_nothing_twice() {
    let server = Ec2Server::start().await.unwrap();
    server.launch_template("gpu-nodes").await.unwrap();
    let p = provider(&server, &spec(&server, "gpu-nodes", false, 0)).await;
    let pol = policy("lost");
    let shape = shape();
    let t0 = wall_ms();

    server.set_faults(Faults {
        lose_create_fleet: true,
        stale_describe: true,
        ..Faults::default()
    });
    let e = p
        .create(&pol, &request(&shape, 2, "uid-lost-0", t0))
        .await
        .unwrap_err();
    assert!(e.retryable(), "{e}");
    let launched = instances(&server).await;
    assert_eq!(launched.len(), 2, "moto ran the lost CreateFleet ({e})");
    let held = p.holdings(&pol).await.unwrap();
    assert!(held.units.is_empty(), "DescribeInstances lags: {held:?}");
    assert_eq!(
        held.unmaterialised, 2,
        "the intent's instances are in flight"
    );

    // A later pass (the controller's view changed: another token, another time, more wanted)
    // repeats the open decision; EC2 answers with what the lost call launched.
    server.set_faults(Faults {
        stale_describe: true,
        ..Faults::default()
    });
    let again = p
        .create(&pol, &request(&shape, 3, "uid-lost-1", t0 + 5_000))
        .await
        .unwrap();
    let mut ids: Vec<_> = again.iter().map(|u| u.id.clone()).collect();
    ids.sort();
    let moto_ids: Vec<_> = launched
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    assert_eq!(ids, moto_ids, "the same instances, none new");
    assert_eq!(instances(&server).await.len(), 2);

    // Once DescribeInstances has caught up, nothing is in flight and a new decision launches.
    server.set_faults(Faults::default());
    let held = p.holdings(&pol).await.unwrap();
    assert_eq!((held.units.len(), held.unmaterialised), (2, 0));
    let more = p
        .create(&pol, &request(&shape, 1, "uid-lost-2", t0 + 10_000))
        .await
        .unwrap();
    assert_eq!(more.len(), 1);
    assert_eq!(instances(&server).await.len(), 3);
    let creates = server
        .calls()
        .iter()
        .filter(|c| c.starts_with("CreateFleet"))
        .count();
    assert_eq!(creates, 3, "lost, repeated, new: {:?}", server.calls());
}
