//! The EC2 peer of the test bed: moto's EC2 server (the same `moto_server` as the SQS tests,
//! which serves every service it mocks) behind a small fault-injecting HTTP proxy.
//!
//! moto never runs out of capacity and never throttles, so the proxy makes those answers in
//! the shape AWS gives them:
//! - a spot CreateFleet (`TargetCapacitySpecification.DefaultTargetCapacityType=spot`) is
//!   answered, without reaching moto, as EC2 answers an instant fleet that found no capacity:
//!   HTTP 200 with an `errorSet` item (`lifecycle` spot, `errorCode`
//!   `InsufficientInstanceCapacity`) and an empty `fleetInstanceSet`; likewise on-demand when
//!   asked;
//! - a throttled action gets HTTP 503 with EC2's error document, code `RequestLimitExceeded`;
//! - with `lose_create_fleet`, a CreateFleet reaches moto (its instances launch) and its
//!   answer is dropped with the connection: a response lost after the action;
//! - with `stale_describe`, DescribeInstances answers with no reservations, as EC2's eventually
//!   consistent reads do for a while after a launch;
//! - CreateFleet is deduplicated by `ClientToken`, as EC2 does and moto does not
//!   (`moto_does_not_deduplicate_create_fleet_by_client_token`): a repeat of a token moto
//!   answered gets that same answer, without reaching moto.
//!
//! Everything else is forwarded to moto as it is. The proxy records each request's action
//! (CreateFleet with its capacity type) so tests can check what the provider asked for.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use aws_sdk_ec2::types::{
    InstanceType, LaunchTemplatesMonitoringRequest, RequestLaunchTemplateData,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sqs::{REGION, SqsServer};

/// What the proxy breaks.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer spot CreateFleet calls with InsufficientInstanceCapacity.
    pub no_spot: bool,
    /// Answer on-demand CreateFleet calls with InsufficientInstanceCapacity.
    pub no_on_demand: bool,
    /// Actions answered with 503 RequestLimitExceeded.
    pub throttle: Vec<String>,
    /// CreateFleet runs on moto and its answer is lost (the connection closes unanswered).
    pub lose_create_fleet: bool,
    /// DescribeInstances shows no instances (eventual consistency).
    pub stale_describe: bool,
}

/// moto's answers to CreateFleet by `ClientToken`, for EC2's idempotency.
type Answered = Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>;

/// moto's EC2 behind the fault proxy; both stop on drop.
#[derive(Debug)]
pub struct Ec2Server {
    moto: SqsServer,
    pub proxy_port: u16,
    faults: Arc<Mutex<Faults>>,
    calls: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Ec2Server {
    pub async fn start() -> Result<Self> {
        let moto = tokio::task::spawn_blocking(SqsServer::start).await??;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let proxy_port = listener.local_addr()?.port();
        let faults: Arc<Mutex<Faults>> = Arc::default();
        let calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let target = ("127.0.0.1", moto.port);
        let (f, c) = (faults.clone(), calls.clone());
        let answered: Answered = Arc::default();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (f, c, a) = (f.clone(), c.clone(), answered.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, target, f, c, a).await;
                });
            }
        });
        Ok(Self {
            moto,
            proxy_port,
            faults,
            calls,
            task,
        })
    }

    /// The endpoint to give the provider (the proxy).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// moto itself, bypassing the proxy.
    pub fn moto_endpoint(&self) -> String {
        self.moto.endpoint()
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// Actions seen so far (`CreateFleet:spot`, `CreateFleet:on-demand`, `StartInstances`, …).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

    /// An SDK client for `endpoint` with moto's accepted keys and `attempts` tries per call.
    pub async fn client_for(endpoint: &str, attempts: u32) -> aws_sdk_ec2::Client {
        headroom_provisioner::install_crypto_provider();
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(attempts))
            .endpoint_url(endpoint)
            .load()
            .await;
        aws_sdk_ec2::Client::new(&conf)
    }

    /// A client straight to moto, for arranging and inspecting.
    pub async fn moto_client(&self) -> aws_sdk_ec2::Client {
        Self::client_for(&self.moto_endpoint(), 1).await
    }

    /// Creates a launch template (any AMI id: moto does not check it) and returns its id.
    pub async fn launch_template(&self, name: &str) -> Result<String> {
        let out = self
            .moto_client()
            .await
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id("ami-12c6146b")
                    .instance_type(InstanceType::G5Xlarge)
                    .monitoring(
                        LaunchTemplatesMonitoringRequest::builder()
                            .enabled(false)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .context("CreateLaunchTemplate")?;
        out.launch_template()
            .and_then(|t| t.launch_template_id())
            .map(String::from)
            .context("CreateLaunchTemplate gave no id")
    }
}

impl Drop for Ec2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request per connection: read it, answer it (a fault, or moto's answer), close.
async fn serve(
    mut sock: tokio::net::TcpStream,
    target: (&'static str, u16),
    faults: Arc<Mutex<Faults>>,
    calls: Arc<Mutex<Vec<String>>>,
    answered: Answered,
) -> Result<()> {
    let (head, body) = read_request(&mut sock).await?;
    let form = String::from_utf8_lossy(&body).into_owned();
    let param = |k: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .map(String::from)
    };
    let action = param("Action").unwrap_or_default();
    let capacity = param("TargetCapacitySpecification.DefaultTargetCapacityType");
    let label = match &capacity {
        Some(c) if action == "CreateFleet" => format!("{action}:{c}"),
        _ => action.clone(),
    };
    calls.lock().unwrap().push(label);
    let fault = {
        let f = faults.lock().unwrap();
        if f.throttle.contains(&action) {
            Some(throttled())
        } else if action == "CreateFleet"
            && ((f.no_spot && capacity.as_deref() == Some("spot"))
                || (f.no_on_demand && capacity.as_deref() == Some("on-demand")))
        {
            Some(no_capacity(capacity.as_deref().unwrap_or("spot"), &form))
        } else {
            None
        }
    };
    let (lose, stale) = {
        let f = faults.lock().unwrap();
        (f.lose_create_fleet, f.stale_describe)
    };
    let token = param("ClientToken").filter(|_| action == "CreateFleet");
    let earlier = token
        .as_ref()
        .and_then(|t| answered.lock().unwrap().get(t).cloned());
    let answer = match (fault, earlier) {
        (Some(a), _) => a.into_bytes(),
        (None, Some(same)) => same,
        (None, None) if stale && action == "DescribeInstances" => no_reservations().into_bytes(),
        (None, None) => {
            let a = forward(&head, &body, target).await?;
            if let Some(t) = token {
                answered.lock().unwrap().insert(t, a.clone());
            }
            a
        }
    };
    if lose && action == "CreateFleet" {
        // Done on moto, never answered.
        drop(sock);
        return Ok(());
    }
    sock.write_all(&answer).await?;
    sock.shutdown().await?;
    Ok(())
}

/// The request's head (without its final blank line) and body (by Content-Length).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before a request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed inside a request body");
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// Sends the request to moto on a new connection (`Connection: close`) and returns its whole
/// answer.
async fn forward(head: &str, body: &[u8], target: (&str, u16)) -> Result<Vec<u8>> {
    let mut up = tokio::net::TcpStream::connect(target).await?;
    let mut req = String::new();
    for line in head.split("\r\n") {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes()).await?;
    up.write_all(body).await?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await?;
    Ok(answer)
}

fn http(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// DescribeInstances before EC2's reads have caught up: no reservations.
fn no_reservations() -> String {
    http(
        "200 OK",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>00000000-0000-0000-0000-000000000002</requestId><reservationSet/></DescribeInstancesResponse>",
    )
}

/// EC2's throttling answer.
fn throttled() -> String {
    http(
        "503 Service Unavailable",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
    )
}

/// An instant fleet that found no capacity of `lifecycle`: one error item per override
/// instance type in the request.
fn no_capacity(lifecycle: &str, form: &str) -> String {
    let types: Vec<&str> = form
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.ends_with(".InstanceType").then_some(v)
        })
        .collect();
    let mut items = String::new();
    for t in if types.is_empty() {
        vec!["unknown"]
    } else {
        types
    } {
        items.push_str(&format!(
            "<item><launchTemplateAndOverrides><launchTemplateSpecification><version>1</version></launchTemplateSpecification><overrides><instanceType>{t}</instanceType></overrides></launchTemplateAndOverrides><lifecycle>{lifecycle}</lifecycle><errorCode>InsufficientInstanceCapacity</errorCode><errorMessage>We currently do not have sufficient {t} capacity in the Availability Zone you requested (us-east-1a). Our system will be working on provisioning additional capacity.</errorMessage></item>"
        ));
    }
    http(
        "200 OK",
        &format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CreateFleetResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>00000000-0000-0000-0000-000000000001</requestId><fleetId>fleet-00000000-0000-0000-0000-000000000000</fleetId><errorSet>{items}</errorSet><fleetInstanceSet/></CreateFleetResponse>"
        ),
    )
}
