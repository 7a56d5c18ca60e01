//! The SQS peer of the test bed: moto's server (PyPI `moto[server]`), installed by
//! `tests/scripts/install-brokers.sh`, one per test on a free loopback port, stopped on drop and
//! restartable on the same port (empty) for outage tests.
//!
//! Queues are arranged with the real AWS SDK for Rust, so the messages the scaler counts were
//! sent, received and delayed the way an application would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::{free_port, install_brokers, repo_root};

/// Region every test uses.
pub const REGION: &str = "us-east-1";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

/// The `moto_server` of the test bed's virtualenv.
pub fn moto_server() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        install_brokers();
        let out = Command::new("bash")
            .arg(repo_root().join("tests/scripts/env.sh"))
            .output()
            .expect("run tests/scripts/env.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        let venv = text
            .lines()
            .find_map(|l| l.strip_prefix("HEADROOM_MOTO_VENV="))
            .expect("env.sh prints HEADROOM_MOTO_VENV");
        PathBuf::from(venv).join("bin/moto_server")
    })
}

/// A moto server on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct SqsServer {
    pub port: u16,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl SqsServer {
    pub fn start() -> Result<Self> {
        Self::start_with_env(&[])
    }

    /// Starts moto with extra environment (e.g. `INITIAL_NO_AUTH_ACTION_COUNT` to make it check
    /// credentials).
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Self> {
        let mut s = Self {
            port: free_port(),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run moto_server: run tests/scripts/install-brokers.sh")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("moto_server did not listen on {} within 30 s", self.port)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        crate::kill_child(&mut self.child);
    }

    /// Starts it again on the same port (moto keeps nothing: queues must be re-created).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK client with the given static keys (moto accepts any unless told to check).
    pub async fn client_as(&self, key: &str, secret: &str) -> aws_sdk_sqs::Client {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                key, secret, None, None, "test",
            ))
            .endpoint_url(self.endpoint())
            .load()
            .await;
        aws_sdk_sqs::Client::new(&conf)
    }

    pub async fn client(&self) -> aws_sdk_sqs::Client {
        self.client_as("testing", "testing").await
    }

    /// Creates a queue and returns its URL.
    pub async fn create_queue(&self, name: &str) -> Result<String> {
        let out = self
            .client()
            .await
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .context("CreateQueue")?;
        out.queue_url()
            .map(str::to_string)
            .context("CreateQueue gave no URL")
    }

    /// Sends `count` messages, each delayed by `delay_seconds`.
    pub async fn send(&self, url: &str, count: u32, delay_seconds: i32) -> Result<()> {
        let client = self.client().await;
        for i in 0..count {
            client
                .send_message()
                .queue_url(url)
                .message_body(format!("task {i}"))
                .delay_seconds(delay_seconds)
                .send()
                .await
                .context("SendMessage")?;
        }
        Ok(())
    }

    /// Receives up to `count` messages (they become not visible for `visibility` seconds).
    pub async fn receive(&self, url: &str, count: i32, visibility: i32) -> Result<usize> {
        let client = self.client().await;
        let mut got = 0;
        while got < count as usize {
            let out = client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages((count - got as i32).min(10))
                .visibility_timeout(visibility)
                .send()
                .await
                .context("ReceiveMessage")?;
            let n = out.messages().len();
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }

    /// The three counters as the server reports them: (visible, not visible, delayed).
    pub async fn counters(&self, url: &str) -> Result<(u64, u64, u64)> {
        let out = self
            .client()
            .await
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .context("GetQueueAttributes")?;
        let a = out.attributes().context("no attributes")?;
        let n = |k: QueueAttributeName| -> u64 {
            a.get(&k).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
        };
        Ok((
            n(QueueAttributeName::ApproximateNumberOfMessages),
            n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }

    /// The URL moto gives a queue of this name.
    pub fn url_for(&self, name: &str) -> String {
        format!("{}/{ACCOUNT}/{name}", self.endpoint())
    }
}

impl Drop for SqsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Trigger metadata for an `aws-sqs-queue` trigger on this server.
pub fn trigger(
    server: &SqsServer,
    queue_url: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("source", "aws-sqs-queue"),
        ("queueURL", queue_url),
        ("awsRegion", REGION),
        ("awsAccessKeyID", "testing"),
        ("awsSecretAccessKeyFromEnv", "testing"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    v.push(("awsEndpoint".into(), server.endpoint()));
    for (k, val) in extra {
        v.retain(|(key, _)| key != k);
        v.push((k.to_string(), val.to_string()));
    }
    v
}
