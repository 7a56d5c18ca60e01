//! `source: aws-sqs-queue` over KEDA's gRPC protocol against a real SQS-compatible server
//! (moto), with messages visible, in flight and delayed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use headroom_integration::sqs::{SqsServer, trigger};
use headroom_integration::*;
use headroom_scaler::server::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn meta(pairs: Vec<(String, String)>) -> HashMap<String, String> {
    pairs.into_iter().collect()
}

/// 8 sent, 2 sent with a 60 s delay, 3 received (60 s visibility): visible 5, in flight 3,
/// delayed 2.
async fn arranged(server: &SqsServer, name: &str) -> String {
    let url = server.create_queue(name).await.unwrap();
    server.send(&url, 8, 0).await.unwrap();
    server.send(&url, 2, 60).await.unwrap();
    assert_eq!(server.receive(&url, 3, 60).await.unwrap(), 3);
    assert_eq!(server.counters(&url).await.unwrap(), (5, 3, 2));
    url
}

#[tokio::test]
async fn values_add_visible_in_flight_and_delayed_as_keda_does() {
    let server = SqsServer::start().unwrap();
    let url = arranged(&server, "DeleteArtifactQ").await;
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    for (extra, want) in [
        (vec![], 8.0),
        (vec![("scaleOnInFlight", "false")], 5.0),
        (vec![("scaleOnDelayed", "true")], 10.0),
        (
            vec![("scaleOnInFlight", "false"), ("scaleOnDelayed", "true")],
            7.0,
        ),
    ] {
        let p = poll(&mut c, &meta(trigger(&server, &url, &extra)))
            .await
            .unwrap();
        assert_eq!(p.metric_name, "aws-sqs-deleteartifactq");
        assert_eq!((p.target, p.target_int), (5.0, 5));
        assert_eq!((p.value, p.value_int), (want, want as i64), "{extra:?}");
        assert!(p.active);
    }
    // A bare queue name is looked up in the account; queueURLFromEnv arrives resolved.
    let by_name = meta(trigger(&server, "DeleteArtifactQ", &[("queueLength", "3")]));
    let p = poll(&mut c, &by_name).await.unwrap();
    assert_eq!((p.value, p.target), (8.0, 3.0));
    let mut from_env = meta(trigger(&server, &url, &[]));
    let v = from_env.remove("queueURL").unwrap();
    from_env.insert("queueURLFromEnv".into(), v);
    assert_eq!(poll(&mut c, &from_env).await.unwrap().value, 8.0);
}

#[tokio::test]
async fn empty_queue_is_zero_and_activation_is_strict() {
    let server = SqsServer::start().unwrap();
    let url = server.create_queue("empty").await.unwrap();
    let (_s, mut c) = start_scaler(ServeConfig {
        observation_ttl: Duration::ZERO,
        ..ServeConfig::local()
    })
    .await
    .unwrap();
    let p = poll(&mut c, &meta(trigger(&server, &url, &[])))
        .await
        .unwrap();
    assert_eq!((p.value, p.active), (0.0, false));
    server.send(&url, 2, 0).await.unwrap();
    let at = meta(trigger(&server, &url, &[("activationQueueLength", "2")]));
    let p = poll(&mut c, &at).await.unwrap();
    assert_eq!((p.value, p.active), (2.0, false), "2 is not above 2");
    server.send(&url, 1, 0).await.unwrap();
    assert!(poll(&mut c, &at).await.unwrap().active);
    // Delayed messages activate only with scaleOnDelayed.
    let delayed = server.create_queue("delayed-only").await.unwrap();
    server.send(&delayed, 1, 60).await.unwrap();
    assert!(
        !poll(&mut c, &meta(trigger(&server, &delayed, &[])))
            .await
            .unwrap()
            .active
    );
    assert!(
        poll(
            &mut c,
            &meta(trigger(&server, &delayed, &[("scaleOnDelayed", "true")]))
        )
        .await
        .unwrap()
        .active
    );
}

#[tokio::test]
async fn a_thousand_triggers_on_one_queue_cost_one_read_per_ttl() {
    let server = SqsServer::start().unwrap();
    let url = arranged(&server, "shared").await;
    let (s, c) = start_scaler(ServeConfig::local()).await.unwrap();
    let before = s.scaler.observations().backend_reads();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut c = c.clone();
        let threshold = (1 + i % 7).to_string();
        let m = meta(trigger(&server, &url, &[("queueLength", &threshold)]));
        tasks.push(tokio::spawn(async move { poll(&mut c, &m).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().value, 8.0);
    }
    let reads = s.scaler.observations().backend_reads() - before;
    assert!(
        reads <= 3,
        "1000 triggers x 2 reading calls made {reads} reads"
    );
    assert_eq!(
        s.scaler.observations().backends().sqs.len().await,
        1,
        "one client"
    );
}

#[tokio::test]
async fn unknown_queues_are_not_found() {
    let server = SqsServer::start().unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    for queue in [server.url_for("nope"), "nope".to_string()] {
        let start = Instant::now();
        let err = poll(&mut c, &meta(trigger(&server, &queue, &[])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{queue}: {err:?}");
        assert!(err.message().contains("nope"), "{}", err.message());
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}

#[tokio::test]
async fn invalid_metadata_names_the_keys() {
    let server = SqsServer::start().unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    for (remove, extra, keys) in [
        ("awsRegion", vec![], vec!["awsRegion"]),
        ("queueURL", vec![], vec!["queueURL"]),
        (
            "",
            vec![("queueURL", "https://sqs.eu-west-1.amazonaws.com/account_id")],
            vec!["queueURL"],
        ),
        ("", vec![("queueLength", "a")], vec!["queueLength"]),
        (
            "",
            vec![("activationQueueLength", "1.5")],
            vec!["activationQueueLength"],
        ),
        (
            "",
            vec![("scaleOnInFlight", "maybe")],
            vec!["scaleOnInFlight"],
        ),
        (
            "",
            vec![("awsSecretAccessKey", "s3cr3t-value")],
            vec!["awsSecretAccessKey"],
        ),
    ] {
        let mut m = meta(trigger(&server, "q", &extra));
        m.remove(remove);
        let err = c.get_metric_spec(so_ref(m)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        for k in keys {
            assert!(
                err.message().contains(&format!("`{k}`")),
                "{}",
                err.message()
            );
        }
        assert!(!err.message().contains("s3cr3t-value"), "{}", err.message());
    }
}

/// An HTTP server that answers every request with `status` and a JSON error body of `code`.
async fn failing_endpoint(status: u16, code: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    // One read is enough for the SDK's small requests.
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let body = format!(
                        "{{\"__type\":\"com.amazonaws.sqs#{code}\",\"message\":\"injected {code}\"}}"
                    );
                    let resp = format!(
                        "HTTP/1.1 {status} Error\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-query-error: {code};Sender\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn against(endpoint: &str) -> HashMap<String, String> {
    md(&[
        ("source", "aws-sqs-queue"),
        (
            "queueURL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/q",
        ),
        ("awsRegion", "us-east-1"),
        ("awsEndpoint", endpoint),
        ("awsAccessKeyID", "AKIDEXAMPLE"),
        ("awsSecretAccessKeyFromEnv", "wJalrXUtnFEMI-secret"),
    ])
}

#[tokio::test]
async fn failing_throttling_and_silent_endpoints_are_errors_within_the_deadline() {
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = format!("http://{}", silent.local_addr().unwrap());
    let _held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            socks.push(s);
        }
    });
    for (endpoint, code) in [
        (
            failing_endpoint(500, "InternalError").await,
            tonic::Code::Unavailable,
        ),
        (
            failing_endpoint(400, "ThrottlingException").await,
            tonic::Code::Unavailable,
        ),
        (
            failing_endpoint(403, "InvalidClientTokenId").await,
            tonic::Code::PermissionDenied,
        ),
        (silent_addr.clone(), tonic::Code::Unavailable),
        ("http://127.0.0.1:1".to_string(), tonic::Code::Unavailable),
    ] {
        let start = Instant::now();
        let mut req = tonic::Request::new(headroom_proto::externalscaler::GetMetricsRequest {
            scaled_object_ref: Some(so_ref(against(&endpoint))),
            metric_name: "aws-sqs-q".into(),
        });
        req.set_timeout(Duration::from_secs(3));
        let err = c.get_metrics(req).await.unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.code(), code, "{endpoint}: {err:?}");
        assert!(took < Duration::from_secs(3), "{endpoint}: {took:?}");
        assert!(
            !err.message().contains("wJalrXUtnFEMI"),
            "{}",
            err.message()
        );
        eprintln!(
            "{endpoint}: {:?} in {took:?}: {}",
            err.code(),
            err.message()
        );
    }
}

/// moto checking signatures against its IAM users (`INITIAL_NO_AUTH_ACTION_COUNT`): the right
/// keys read, a wrong secret or an unknown key is PERMISSION_DENIED, and no secret is shown.
#[tokio::test]
async fn wrong_credentials_are_permission_denied() {
    // The first 4 actions are free: create the user, its key, its policy and the queue.
    let server = SqsServer::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]).unwrap();
    let python = sqs::moto_server().with_file_name("python");
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(
            r#"
import boto3, json, sys
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="x", aws_secret_access_key="x")
iam.create_user(UserName="scaler")
k = iam.create_access_key(UserName="scaler")["AccessKey"]
iam.put_user_policy(UserName="scaler", PolicyName="sqs", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]}))
print(k["AccessKeyId"], k["SecretAccessKey"])
"#,
        )
        .arg(server.endpoint())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (key, secret) = text.trim().split_once(' ').unwrap();
    let client = server.client_as(key, secret).await;
    let url = client
        .create_queue()
        .queue_name("guarded")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();

    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let with = |k: &str, s: &str| {
        meta(trigger(
            &server,
            &url,
            &[("awsAccessKeyID", k), ("awsSecretAccessKeyFromEnv", s)],
        ))
    };
    let p = poll(&mut c, &with(key, secret)).await.unwrap();
    assert_eq!((p.value, p.active), (0.0, false));
    for (k, s) in [(key, "not-the-secret-xyz"), ("AKIAUNKNOWN0000000", secret)] {
        let err = poll(&mut c, &with(k, s)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(!err.message().contains("not-the-secret-xyz"));
        assert!(!err.message().contains(secret), "{}", err.message());
    }
}

#[tokio::test]
async fn server_outage_is_unavailable_and_recovers_without_restarting_the_scaler() {
    let mut server = SqsServer::start().unwrap();
    let url = arranged(&server, "outage").await;
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = meta(trigger(&server, &url, &[]));
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 8.0);

    server.stop();
    let err = eventually(
        Duration::from_secs(10),
        "UNAVAILABLE while moto is down",
        || {
            let mut c = c.clone();
            let m = m.clone();
            async move { poll(&mut c, &m).await.err() }
        },
    )
    .await
    .unwrap();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    server.restart().unwrap();
    // moto keeps nothing: the queue comes back with other messages.
    let again = server.create_queue("outage").await.unwrap();
    assert_eq!(again, url);
    server.send(&url, 4, 0).await.unwrap();
    let start = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the new value after the restart",
        || {
            let mut c = c.clone();
            let m = m.clone();
            async move { poll(&mut c, &m).await.ok().filter(|p| p.value == 4.0) }
        },
    )
    .await
    .unwrap();
    eprintln!(
        "values back {:?} after the queue was re-created",
        start.elapsed()
    );
}

#[tokio::test]
async fn push_activates_within_a_second_at_one_read_per_interval_for_any_number_of_streams() {
    let server = SqsServer::start().unwrap();
    let url = server.create_queue("push").await.unwrap();
    let (s, c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = meta(trigger(&server, &url, &[]));
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut c = c.clone();
        let mut st = c
            .stream_is_active(so_ref(m.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(
            !st.next().await.unwrap().unwrap().result,
            "empty: false first"
        );
        streams.push(st);
    }
    assert_eq!(s.scaler.push_watchers(), 1);
    // Reads over 2 s with 50 streams open: the shared watcher's rate, not 50 times it.
    let before = s.scaler.observations().backend_reads();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = s.scaler.observations().backend_reads() - before;
    assert!(
        (4..=12).contains(&reads),
        "50 streams made {reads} reads in 2 s (one watcher at 250 ms makes ~8)"
    );

    let sent = Instant::now();
    server.send(&url, 1, 0).await.unwrap();
    let sent_took = sent.elapsed();
    let first = streams.first_mut().unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), first.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let latency = sent.elapsed();
    assert!(msg.result);
    eprintln!("SendMessage took {sent_took:?}; true on the stream {latency:?} after it began");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    for st in streams.iter_mut().skip(1) {
        assert!(st.next().await.unwrap().unwrap().result);
    }
    drop(streams);
    eventually(Duration::from_secs(5), "the watcher to stop", || async {
        (s.scaler.push_watchers() == 0).then_some(())
    })
    .await
    .unwrap();
}

/// Runs `child` (an ignored test of this binary) in a new process with exactly `env` (plus
/// PATH): the AWS SDK reads its credential chain and endpoints from the process environment,
/// which a test cannot change in its own process.
fn run_child(child: &str, env: &[(&str, String)]) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            child,
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_CONFIG_FILE", "/nonexistent/headroom-aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/headroom-aws-credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{child} failed:\n{text}");
    assert!(text.contains("1 passed"), "{child} did not run:\n{text}");
}

#[tokio::test]
async fn the_standard_chain_and_an_assumed_role_are_used_and_no_credentials_is_refused() {
    let server = SqsServer::start().unwrap();
    let url = arranged(&server, "chained").await;
    let sts_port = free_port();
    let common = [
        ("HEADROOM_TEST_SQS_ENDPOINT", server.endpoint()),
        ("HEADROOM_TEST_SQS_URL", url.clone()),
        ("HEADROOM_TEST_STS_PROXY_PORT", sts_port.to_string()),
        ("HEADROOM_TEST_MOTO_PORT", server.port.to_string()),
        (
            "AWS_ENDPOINT_URL_STS",
            format!("http://127.0.0.1:{sts_port}"),
        ),
    ];
    let mut with_keys = common.to_vec();
    with_keys.push(("AWS_ACCESS_KEY_ID", "from-the-environment".to_string()));
    with_keys.push(("AWS_SECRET_ACCESS_KEY", "env-secret-value".to_string()));
    run_child("child_reads_with_the_chain_and_an_assumed_role", &with_keys);
    run_child("child_without_credentials_is_permission_denied", &common);
}

#[tokio::test]
#[ignore = "run in its own process by the_standard_chain_and_an_assumed_role_..."]
async fn child_reads_with_the_chain_and_an_assumed_role() {
    let endpoint = std::env::var("HEADROOM_TEST_SQS_ENDPOINT").unwrap();
    let url = std::env::var("HEADROOM_TEST_SQS_URL").unwrap();
    let sts_port: u16 = std::env::var("HEADROOM_TEST_STS_PROXY_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let moto: u16 = std::env::var("HEADROOM_TEST_MOTO_PORT")
        .unwrap()
        .parse()
        .unwrap();
    // STS calls go through a counting proxy to moto's STS.
    let sts = CountingProxy::start(
        sts_port,
        format!("127.0.0.1:{moto}").parse().unwrap(),
        Framing::Http,
    )
    .await
    .unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let base = [
        ("source", "aws-sqs-queue"),
        ("queueURL", url.as_str()),
        ("awsRegion", sqs::REGION),
        ("awsEndpoint", endpoint.as_str()),
    ];
    // No keys in the metadata: the environment's, through the standard chain.
    assert_eq!(poll(&mut c, &md(&base)).await.unwrap().value, 8.0);
    assert_eq!(sts.requests(), 0, "no role, no STS call");
    let mut role = base.to_vec();
    role.push(("awsRoleArn", "arn:aws:iam::123456789012:role/queue-reader"));
    assert_eq!(poll(&mut c, &md(&role)).await.unwrap().value, 8.0);
    assert_eq!(sts.requests(), 1, "one AssumeRole, then cached credentials");
    assert_eq!(poll(&mut c, &md(&role)).await.unwrap().value, 8.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(poll(&mut c, &md(&role)).await.unwrap().value, 8.0);
    assert_eq!(
        sts.requests(),
        1,
        "the assumed role's credentials are reused"
    );
}

#[tokio::test]
#[ignore = "run in its own process by the_standard_chain_and_an_assumed_role_..."]
async fn child_without_credentials_is_permission_denied() {
    let endpoint = std::env::var("HEADROOM_TEST_SQS_ENDPOINT").unwrap();
    let url = std::env::var("HEADROOM_TEST_SQS_URL").unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let start = Instant::now();
    let err = poll(
        &mut c,
        &md(&[
            ("source", "aws-sqs-queue"),
            ("queueURL", url.as_str()),
            ("awsRegion", sqs::REGION),
            ("awsEndpoint", endpoint.as_str()),
        ]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    eprintln!("no credentials: {}", err.message());
}

/// `headroom-scaler check` on the SQS example (`examples/sqs/scaledobject.yaml`, linked from
/// docs/sources/sqs.md), with the worker's environment giving the queue URL: what KEDA would
/// receive.
#[tokio::test]
async fn the_example_scaled_object_checks_against_a_real_queue() {
    use headroom_scaler::check::{Target, triggers_from_yaml};
    let server = SqsServer::start().unwrap();
    let url = arranged(&server, "transcode-jobs").await;
    let yaml = std::fs::read_to_string(repo_root().join("examples/sqs/scaledobject.yaml")).unwrap();
    let env = |k: &str| (k == "QUEUE_URL").then(|| url.clone());
    let mut inputs = triggers_from_yaml(&yaml, &env).unwrap();
    assert_eq!(inputs.len(), 1);
    let mut input = inputs.remove(0);
    assert_eq!(input.metadata["queueURLFromEnv"], url);
    // Here the queue is on moto, with static keys instead of the pod's identity.
    for (k, v) in trigger(&server, &url, &[]) {
        if k.starts_with("aws") && k != "awsRegion" {
            input.metadata.insert(k, v);
        }
    }
    input
        .metadata
        .insert("awsRegion".into(), sqs::REGION.into());
    let report = Target::local(Duration::from_secs(2)).evaluate(input).await;
    assert_eq!(report.error, None);
    assert_eq!(
        report.keda_metric_name.as_deref(),
        Some("s0-aws-sqs-transcode-jobs")
    );
    assert_eq!(
        (report.target, report.value, report.active),
        (Some(4.0), Some(8.0), Some(true))
    );
}
