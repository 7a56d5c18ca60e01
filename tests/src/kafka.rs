//! The Kafka peer of the test bed: Apache Kafka's own broker (single-node KRaft, jars from Maven
//! Central installed by `tests/scripts/install-brokers.sh`) on the machine's Java, on free
//! loopback ports, with three listeners:
//!
//! - PLAINTEXT, for most tests;
//! - SASL_PLAINTEXT with PLAIN (user `alice`) and SCRAM-SHA-256/512 (user `scram`, added when the
//!   storage is formatted);
//! - SSL with a CA and server certificate made for the run.
//!
//! Producers and committing consumers are real librdkafka clients (the `rdkafka` crate).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{free_port, install_brokers, repo_root};

pub const PLAIN_USER: &str = "alice";
pub const PLAIN_PASSWORD: &str = "alice-secret";
pub const SCRAM_USER: &str = "scram";
pub const SCRAM_PASSWORD: &str = "scram-secret";

/// Where the broker's jars are.
pub fn kafka_home() -> &'static PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        install_brokers();
        let out = Command::new("bash")
            .arg(repo_root().join("tests/scripts/env.sh"))
            .output()
            .expect("run tests/scripts/env.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            text.lines()
                .find_map(|l| l.strip_prefix("HEADROOM_KAFKA_HOME="))
                .expect("env.sh prints HEADROOM_KAFKA_HOME"),
        )
    })
}

/// TLS material of a broker: PEM CA certificate (to trust it).
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca_pem: String,
}

/// A single-node KRaft broker, killed on drop (and by a watchdog if the test process dies).
#[derive(Debug)]
pub struct KafkaBroker {
    pub port: u16,
    pub sasl_port: u16,
    pub ssl_port: u16,
    pub controller_port: u16,
    /// The port clients are told to use for PLAINTEXT (another process may forward it).
    pub advertised_port: u16,
    pub tls: Tls,
    dir: PathBuf,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Formats a fresh storage directory and starts the broker; returns once it answers
    /// metadata requests on every listener.
    pub fn start() -> Result<Self> {
        Self::start_behind(None)
    }

    /// As [`KafkaBroker::start`], with the PLAINTEXT listener on `listen` and clients told to
    /// reach it at `advertised` (where a [`crate::CountingProxy`] forwards to `listen`).
    pub fn start_behind(ports: Option<(u16, u16)>) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "headroom-kafka-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir)?;
        let tls = make_tls(&dir)?;
        let (port, advertised_port) = ports.unwrap_or_else(|| {
            let p = free_port();
            (p, p)
        });
        let mut b = Self {
            port,
            advertised_port,
            sasl_port: free_port(),
            ssl_port: free_port(),
            controller_port: free_port(),
            tls,
            dir,
            child: None,
        };
        b.write_config()?;
        b.format()?;
        b.spawn()?;
        Ok(b)
    }

    fn java(&self) -> Command {
        let mut c = Command::new("java");
        c.arg("-Xms128m")
            .arg("-Xmx384m")
            .arg("-XX:+UseSerialGC")
            .arg("-XX:TieredStopAtLevel=1")
            .arg(format!(
                "-Dlog4j.configuration=file:{}",
                self.dir.join("log4j.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/libs/*", kafka_home().display()));
        c
    }

    fn write_config(&self) -> Result<()> {
        let d = self.dir.display();
        let props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{c}\n\
             listeners=PLAINTEXT://127.0.0.1:{p},SASL_PLAINTEXT://127.0.0.1:{s},SSL://127.0.0.1:{t},CONTROLLER://127.0.0.1:{c}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{a},SASL_PLAINTEXT://127.0.0.1:{s},SSL://127.0.0.1:{t}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,CONTROLLER:PLAINTEXT\n\
             sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n\
             listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{pu}=\"{pp}\";\n\
             listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={d}/server.pem\n\
             ssl.truststore.type=PEM\n\
             ssl.truststore.location={d}/ca.pem\n\
             ssl.client.auth=none\n\
             log.dirs={d}/data\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=3\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             auto.create.topics.enable=false\n\
             log.flush.interval.messages=1000000\n",
            p = self.port,
            a = self.advertised_port,
            s = self.sasl_port,
            t = self.ssl_port,
            c = self.controller_port,
            pu = PLAIN_USER,
            pp = PLAIN_PASSWORD,
        );
        std::fs::write(self.dir.join("server.properties"), props)?;
        std::fs::write(
            self.dir.join("log4j.properties"),
            "log4j.rootLogger=WARN, stderr\n\
             log4j.appender.stderr=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.stderr.Target=System.err\n\
             log4j.appender.stderr.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n\n",
        )?;
        Ok(())
    }

    fn format(&self) -> Result<()> {
        let out = self
            .java()
            .args(["kafka.tools.StorageTool", "format", "-t"])
            .arg("q1Sh-9_ISia_zwGINzRvyQ")
            .arg("-c")
            .arg(self.dir.join("server.properties"))
            .arg("--add-scram")
            .arg(format!(
                "SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"
            ))
            .arg("--add-scram")
            .arg(format!(
                "SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"
            ))
            .output()
            .context("run java: install a JRE (tests/scripts/install-brokers.sh)")?;
        if !out.status.success() {
            bail!(
                "kafka storage format failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))?;
        let mut cmd = self.java();
        cmd.arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().context("run the Kafka broker")?;
        watchdog(child.id(), &self.dir);
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let consumer: BaseConsumer = self.client_config().create().context("a metadata client")?;
        while Instant::now() < deadline {
            if let Ok(m) = consumer.fetch_metadata(None, Duration::from_millis(500))
                && !m.brokers().is_empty()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the Kafka broker did not answer within {timeout:?}; log: {}",
            self.dir.join("broker.log").display()
        )
    }

    /// Kills the broker (as a crash would); its data stays.
    pub fn stop(&mut self) {
        crate::kill_child(&mut self.child);
    }

    /// Starts it again on the same ports with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("socket.timeout.ms", "5000")
            .set("reconnect.backoff.max.ms", "500");
        c
    }

    /// Creates a topic with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().context("admin client")?;
        let results = admin
            .create_topics(
                &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .context("CreateTopics")?;
        for r in results {
            if let Err((topic, code)) = r {
                bail!("cannot create topic {topic}: {code}");
            }
        }
        // Wait until the partitions have leaders.
        let consumer: BaseConsumer = self.client_config().create()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(m) = consumer.fetch_metadata(Some(name), Duration::from_secs(1))
                && m.topics().iter().any(|t| {
                    t.name() == name
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("topic {name} has no leaders after 20 s")
    }

    /// Produces `count` messages to one partition and waits until they are acknowledged.
    pub fn produce(&self, topic: &str, partition: i32, count: usize) -> Result<()> {
        let producer: BaseProducer = self
            .client_config()
            .set("linger.ms", "0")
            .set("acks", "all")
            .create()
            .context("producer")?;
        for i in 0..count {
            let payload = format!("task {i}");
            loop {
                match producer.send(
                    BaseRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload(&payload),
                ) {
                    Ok(()) => break,
                    Err((e, _)) if e.to_string().contains("Queue full") => {
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => bail!("produce: {e}"),
                }
            }
        }
        producer
            .flush(Duration::from_secs(20))
            .context("flush produced messages")?;
        Ok(())
    }

    /// Commits `offset` for `group` on (topic, partition), as a consumer that processed up to
    /// there does.
    pub fn commit(&self, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<()> {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("committing consumer")?;
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
        }
        consumer
            .commit(&tpl, CommitMode::Sync)
            .context("commit offsets")?;
        Ok(())
    }

    /// Trigger metadata for a `kafka` trigger on the plaintext listener.
    pub fn trigger(
        &self,
        group: &str,
        topic: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut v = vec![
            ("source".to_string(), "kafka".to_string()),
            ("bootstrapServers".to_string(), self.bootstrap()),
            ("consumerGroup".to_string(), group.to_string()),
        ];
        if let Some(t) = topic {
            v.push(("topic".into(), t.into()));
        }
        for (k, val) in extra {
            v.retain(|(key, _)| key != k);
            v.push((k.to_string(), val.to_string()));
        }
        v
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills `pid` and removes `dir` once this test process is gone, so that a test binary that
/// exits with a broker in a `static` (or crashes) leaves no JVM behind.
pub fn watchdog(pid: u32, dir: &Path) {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         kill -9 {pid} 2>/dev/null; if ! kill -0 {me} 2>/dev/null; then rm -rf '{}'; fi",
        dir.display()
    );
    let _ = Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A CA and a server certificate for 127.0.0.1 / localhost, written where the broker reads
/// them (PEM keystore: key then chain in one file).
fn make_tls(dir: &Path) -> Result<Tls> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "headroom test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(
        dir.join("server.pem"),
        format!("{}{}{}", key.serialize_pem(), cert.pem(), ca.pem()),
    )?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    Ok(Tls { ca_pem: ca.pem() })
}
