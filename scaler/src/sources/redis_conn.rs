//! What the Redis-backed sources share: the connection keys of KEDA's `redis` scaler, the
//! endpoint identity they parse into, and one auto-reconnecting connection per endpoint.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, RedisError,
    RedisFuture, ServerErrorKind, Value,
};

use super::SourceError;
use crate::cache::BoundedMap;
use crate::metadata::{Key, Plain, Problem, Reader};
use crate::secrets::{Credential, Secrets};

/// The connection keys every Redis source accepts (each also in its `FromEnv` form;
/// `username` and `password` also in their `Secret` form): KEDA's `redis` scaler's plus `url`.
pub const CONNECTION_KEYS: &[Key] = &[
    Key::optional(
        "address",
        "—",
        "`host:port` (`[::1]:6379` for IPv6). Give exactly one of `url`, `address`, `host`+`port`",
    ),
    Key::optional("host", "—", "the host, with `port`"),
    Key::optional("port", "—", "the port; required with `host`"),
    Key::optional(
        "url",
        "—",
        "`redis://[user:password@]host[:port][/db]`, `rediss://` for TLS, `#insecure` to skip verification",
    ),
    Key::optional("databaseIndex", "0", "database number"),
    Key::optional(
        "username",
        "none",
        "ACL user (also `usernameFromEnv`, `usernameSecret`)",
    ),
    Key::optional(
        "password",
        "none",
        "password (use the `FromEnv` or `Secret` forms; never put secrets in metadata)",
    ),
    Key::optional(
        "enableTLS",
        "false",
        "TLS to Redis (verified against the webpki roots). KEDA reads it too, for its own connection to the scaler: see below",
    ),
    Key::optional("unsafeSsl", "false", "skip certificate verification"),
];

/// Where a Redis source reads, and as whom. Two triggers with equal endpoints share one
/// connection. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisEndpoint {
    pub host: String,
    pub port: u16,
    /// `databaseIndex`, default 0.
    pub db: i64,
    /// `username` / `usernameFromEnv` / `usernameSecret`.
    pub username: Option<Credential>,
    /// `password` / `passwordFromEnv` / `passwordSecret`.
    pub password: Option<Credential>,
    /// `enableTLS` (or a `rediss://` URL).
    pub tls: bool,
    /// `unsafeSsl`: skip certificate verification (TLS only).
    pub insecure: bool,
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl fmt::Display for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "{scheme}://{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

impl RedisEndpoint {
    /// Reads the connection keys, KEDA's way: `address` (`host:port`) or `host` + `port`, plus
    /// Headroom's `url` (`redis://[user:password@]host[:port][/db]`, `rediss://` for TLS); exactly
    /// one of the three.
    pub fn parse(r: &mut Reader<'_>) -> Option<Self> {
        let url = r.string("url");
        let address = r.string("address");
        let host = r.string("host");
        let port = r.string("port");
        let db = r
            .raw("databaseIndex")
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let username = r.credential("username", Plain::Allowed);
        let password = r.credential("password", Plain::Allowed);
        let enable_tls = r.bool("enableTLS", false);
        let insecure = r.bool("unsafeSsl", false);

        let given: Vec<&str> = [
            ("url", url.is_some()),
            ("address", address.is_some()),
            ("host", host.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if given.len() > 1 {
            r.problem(Problem::Conflict {
                keys: given.iter().map(|k| k.to_string()).collect(),
                reason: "give exactly one way to reach Redis (url, address, or host and port)"
                    .into(),
            });
            return None;
        }
        let mut ep = if let Some(url) = url {
            from_url(r, &url)?
        } else if let Some(address) = address {
            let Some((host, port)) = split_host_port(&address) else {
                r.problem(Problem::Invalid {
                    key: "address".into(),
                    value: Some(address),
                    expected: "host:port".into(),
                });
                return None;
            };
            let port = parse_port(r, "address", &port)?;
            RedisEndpoint::plain(host, port)
        } else if let Some(host) = host {
            let Some(port) = port.as_deref() else {
                r.problem(Problem::Missing { key: "port".into() });
                return None;
            };
            let port = parse_port(r, "port", port)?;
            RedisEndpoint::plain(host, port)
        } else {
            r.problem(Problem::Missing {
                key: "address".into(),
            });
            r.problem(Problem::Conflict {
                keys: vec!["address".into(), "host".into(), "url".into()],
                reason: "no address or host given: set address (host:port), host and port, or url"
                    .into(),
            });
            return None;
        };
        if let Some((key, db)) = db {
            match crate::metadata::parse_int::<i64>(&db) {
                Some(n) if n >= 0 => {
                    if ep.db != 0 && ep.db != n {
                        r.problem(Problem::Conflict {
                            keys: vec!["url".into(), key],
                            reason: "the URL names another database".into(),
                        });
                    }
                    ep.db = n;
                }
                _ => r.problem(Problem::Invalid {
                    key,
                    value: Some(db),
                    expected: "a database number ≥ 0".into(),
                }),
            }
        }
        if let Some(u) = username {
            ep.username = Some(u);
        }
        if let Some(p) = password {
            ep.password = Some(p);
        }
        ep.tls |= enable_tls;
        ep.insecure |= insecure;
        Some(ep)
    }

    fn plain(host: String, port: u16) -> Self {
        RedisEndpoint {
            host,
            port,
            db: 0,
            username: None,
            password: None,
            tls: false,
            insecure: false,
        }
    }

    fn connection_info(&self, login: &Login) -> Result<ConnectionInfo, RedisError> {
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: self.insecure,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &login.username {
            redis = redis.set_username(u);
        }
        if let Some(p) = &login.password {
            redis = redis.set_password(p);
        }
        Ok(addr.into_connection_info()?.set_redis_settings(redis))
    }
}

fn from_url(r: &mut Reader<'_>, url: &str) -> Option<RedisEndpoint> {
    let bad = |r: &mut Reader<'_>, why: &str| {
        r.problem(Problem::Invalid {
            key: "url".into(),
            value: None,
            expected: format!("a redis:// or rediss:// URL ({why})"),
        })
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        bad(r, "unsupported scheme");
        return None;
    }
    let info = match url.into_connection_info() {
        Ok(info) => info,
        Err(_) => {
            bad(r, "cannot be parsed");
            return None;
        }
    };
    let (host, port, tls, insecure) = match info.addr() {
        ConnectionAddr::Tcp(h, p) => (h.clone(), *p, false, false),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => (host.clone(), *port, true, *insecure),
        _ => {
            bad(r, "only TCP addresses are supported");
            return None;
        }
    };
    let settings = info.redis_settings();
    Some(RedisEndpoint {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        db: settings.db(),
        username: settings
            .username()
            .map(|u| Credential::Value(u.to_string())),
        password: settings
            .password()
            .map(|p| Credential::Value(p.to_string())),
        tls,
        insecure,
    })
}

/// `host:port`, with IPv6 hosts in brackets (`[::1]:6379`), as Go's `net.SplitHostPort`.
fn split_host_port(s: &str) -> Option<(String, String)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return (!host.is_empty()).then(|| (host.to_string(), port.to_string()));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.is_empty() || host.contains(':') {
        return None;
    }
    Some((host.to_string(), port.to_string()))
}

fn parse_port(r: &mut Reader<'_>, key: &str, port: &str) -> Option<u16> {
    match crate::metadata::parse_int::<u16>(port) {
        Some(p) if p > 0 => Some(p),
        _ => {
            r.problem(Problem::Invalid {
                key: key.into(),
                value: Some(port.to_string()),
                expected: "a port number (1-65535)".into(),
            });
            None
        }
    }
}

/// Timeouts for talking to Redis.
#[derive(Debug, Clone, Copy)]
pub struct RedisSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// The credentials of an endpoint as resolved for one connection. `Debug` hides them.
#[derive(Clone, PartialEq, Eq, Default)]
struct Login {
    username: Option<String>,
    password: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Login(<hidden>)")
    }
}

/// A connection from [`RedisPool`]: commands go over the endpoint's shared
/// [`ConnectionManager`]. A command that times out, or that its caller abandons at its deadline,
/// marks the connection suspect, and the pool replaces it on its next use. The client library
/// reconnects only on I/O errors, and a timeout is not one: a connection whose server went
/// silent (a frozen or failed-over server, a half-open socket) would otherwise be used, and
/// time out, until the kernel gave up on it — about 15 minutes (`tcp_retries2`) — after the
/// server was back. A slow server costs a reconnect per timed-out read, bounded by the
/// observation cache.
#[derive(Clone)]
pub struct PooledConnection {
    manager: ConnectionManager,
    suspect: Arc<AtomicBool>,
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("suspect", &self.suspect.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Marks its connection suspect when dropped armed: a command that did not complete.
struct Pending(Arc<AtomicBool>, bool);

impl Drop for Pending {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

impl PooledConnection {
    /// Wraps a connection of one's own (the shared-state store's).
    pub fn new(manager: ConnectionManager) -> Self {
        Self {
            manager,
            suspect: Arc::default(),
        }
    }

    /// Its last command timed out or was abandoned: replace it.
    pub fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::Relaxed)
    }

    fn watched<'a, T: Send + 'a>(
        suspect: Arc<AtomicBool>,
        call: RedisFuture<'a, T>,
    ) -> RedisFuture<'a, T> {
        Box::pin(async move {
            let mut pending = Pending(suspect, true);
            let r = call.await;
            pending.1 = matches!(&r, Err(e) if e.is_timeout());
            r
        })
    }
}

impl redis::aio::ConnectionLike for PooledConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let suspect = self.suspect.clone();
        Self::watched(suspect, self.manager.req_packed_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let suspect = self.suspect.clone();
        Self::watched(
            suspect,
            self.manager.req_packed_commands(pipeline, offset, count),
        )
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}

/// One multiplexed, auto-reconnecting connection per endpoint. A [`ConnectionManager`]
/// pipelines concurrent commands over one socket, so it serves as the pool.
///
/// A connection remembers the credentials it was made with: when a `...Secret` key resolves
/// to other values (a rotated password), the next use replaces it with a connection made with
/// the new ones (an authenticated socket would otherwise go on working until it drops, then
/// fail to reconnect with the old password).
#[derive(Debug)]
pub struct RedisPool {
    settings: RedisSettings,
    secrets: Arc<Secrets>,
    managers: Mutex<BoundedMap<RedisEndpoint, (Login, PooledConnection)>>,
}

/// Redis connections kept at once (one per endpoint and database).
pub const MAX_CONNECTIONS: usize = 1_024;

/// A connection unused for this long is closed by [`RedisPool::sweep`].
pub const IDLE_CONNECTION: Duration = Duration::from_secs(600);

impl Default for RedisPool {
    fn default() -> Self {
        Self::new(RedisSettings::default())
    }
}

impl RedisPool {
    pub fn new(settings: RedisSettings) -> Self {
        crate::install_crypto_provider();
        Self {
            settings,
            secrets: Arc::default(),
            managers: Mutex::new(BoundedMap::new(
                "redis_connections",
                MAX_CONNECTIONS,
                IDLE_CONNECTION,
            )),
        }
    }

    /// Resolves `...Secret` keys through `secrets` (shared with the other sources).
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    async fn login(&self, endpoint: &RedisEndpoint) -> Result<Login, SourceError> {
        Ok(Login {
            username: self.secrets.resolve_opt(endpoint.username.as_ref()).await?,
            password: self.secrets.resolve_opt(endpoint.password.as_ref()).await?,
        })
    }

    /// The connection for `endpoint`, created lazily: the first command connects, and a
    /// dropped connection is re-established in the background; one whose last command timed
    /// out is replaced (see [`PooledConnection`]). Resolves the endpoint's `...Secret` keys
    /// first (from the cache of watched Secrets).
    pub async fn connection(
        &self,
        endpoint: &RedisEndpoint,
    ) -> Result<PooledConnection, SourceError> {
        let login = self.login(endpoint).await?;
        let mut managers = self
            .managers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut timed_out = false;
        if let Some((made_with, c)) = managers.get(endpoint)
            && *made_with == login
        {
            if !c.is_suspect() {
                return Ok(c.clone());
            }
            timed_out = true;
        }
        let client = endpoint
            .connection_info(&login)
            .and_then(redis::Client::open)
            .map_err(|e| classify(endpoint, e))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| classify(endpoint, e))?;
        let conn = PooledConnection::new(manager);
        if managers
            .insert(endpoint.clone(), (login, conn.clone()))
            .is_some()
        {
            if timed_out {
                tracing::info!(%endpoint, "a redis command timed out; reconnecting");
            } else {
                tracing::info!(%endpoint, "redis credentials changed; reconnecting");
            }
        }
        Ok(conn)
    }

    /// A dedicated connection for keyspace notifications.
    pub async fn pubsub(
        &self,
        endpoint: &RedisEndpoint,
    ) -> Result<redis::aio::PubSub, SourceError> {
        let login = self.login(endpoint).await?;
        let client = endpoint
            .connection_info(&login)
            .and_then(redis::Client::open)
            .map_err(|e| classify(endpoint, e))?;
        let connect = client.get_async_pubsub();
        match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(r) => r.map_err(|e| classify(endpoint, e)),
            Err(_) => Err(SourceError::Timeout {
                endpoint: endpoint.to_string(),
                after: self.settings.connect_timeout,
            }),
        }
    }

    pub fn settings(&self) -> RedisSettings {
        self.settings
    }

    /// Closes connections unused for [`IDLE_CONNECTION`]; returns how many.
    pub fn sweep(&self) -> usize {
        self.managers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sweep()
    }
}

/// Turns a Redis client error into the source error that says what the operator must fix.
pub fn classify(endpoint: &RedisEndpoint, e: RedisError) -> SourceError {
    let endpoint = endpoint.to_string();
    let auth = matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        || matches!(e.kind(), redis::ErrorKind::Server(ServerErrorKind::NoPerm));
    if auth {
        return SourceError::Auth {
            endpoint,
            source: Arc::new(e),
        };
    }
    if e.is_timeout() {
        return SourceError::Unavailable {
            endpoint,
            source: Arc::new(e),
        };
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        return SourceError::Unavailable {
            endpoint,
            source: Arc::new(e),
        };
    }
    SourceError::Backend {
        endpoint,
        source: Arc::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<RedisEndpoint, Vec<String>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut r = Reader::new(&m).in_namespace("queues");
        let ep = RedisEndpoint::parse(&mut r);
        match r.finish(&|_| None) {
            Ok(()) => Ok(ep.ok_or_else(Vec::new)?),
            Err(e) => Err(e.keys().into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn endpoints_parse_from_each_form() {
        let ep = parse(&[("address", "redis.svc:6380")]).unwrap();
        assert_eq!((ep.host.as_str(), ep.port, ep.db), ("redis.svc", 6380, 0));
        let ep = parse(&[("host", "h"), ("port", "7000"), ("databaseIndex", "3")]).unwrap();
        assert_eq!((ep.host.as_str(), ep.port, ep.db), ("h", 7000, 3));
        let ep = parse(&[("address", "[::1]:6379")]).unwrap();
        assert_eq!(ep.host, "::1");
        let ep = parse(&[("url", "rediss://u:p%40ss@cache:6390/2#insecure")]).unwrap();
        assert_eq!(ep.host, "cache");
        assert_eq!(ep.port, 6390);
        assert_eq!(ep.db, 2);
        assert!(ep.tls && ep.insecure);
        assert_eq!(ep.username, Some(Credential::Value("u".into())));
        assert_eq!(ep.password, Some(Credential::Value("p@ss".into())));
        let ep = parse(&[
            ("addressFromEnv", "a:1"),
            ("passwordFromEnv", "pw"),
            ("enableTLS", "true"),
        ])
        .unwrap();
        assert_eq!(ep.password, Some(Credential::Value("pw".into())));
        assert!(ep.tls && !ep.insecure);
    }

    #[test]
    fn bad_connection_keys_are_named() {
        assert_eq!(
            parse(&[("address", "a:1"), ("host", "h")]).unwrap_err(),
            ["address", "host"]
        );
        assert_eq!(parse(&[("host", "h")]).unwrap_err(), ["port"]);
        assert_eq!(parse(&[("address", "nohost")]).unwrap_err(), ["address"]);
        assert_eq!(parse(&[("address", "h:99999")]).unwrap_err(), ["address"]);
        assert_eq!(
            parse(&[("host", "h"), ("port", "x")]).unwrap_err(),
            ["port"]
        );
        assert_eq!(parse(&[("url", "http://h")]).unwrap_err(), ["url"]);
        assert_eq!(
            parse(&[("address", "h:1"), ("databaseIndex", "-1")]).unwrap_err(),
            ["databaseIndex"]
        );
        assert!(parse(&[]).unwrap_err().contains(&"address".to_string()));
    }

    #[test]
    fn credentials_may_name_a_secret() {
        let ep = parse(&[
            ("address", "a:1"),
            ("usernameSecret", "queues/redis-auth/user"),
            ("passwordSecret", "queues/redis-auth/password"),
        ])
        .unwrap();
        let k = ep
            .password
            .as_ref()
            .and_then(Credential::secret_key)
            .unwrap();
        assert_eq!(k.metadata_key, "passwordSecret");
        assert_eq!(k.reference.to_string(), "queues/redis-auth/password");
        assert!(ep.username.as_ref().is_some_and(Credential::is_secret));
        assert_eq!(
            parse(&[
                ("address", "a:1"),
                ("password", "x"),
                ("passwordSecret", "a/b/c")
            ])
            .unwrap_err(),
            ["password", "passwordSecret"]
        );
    }

    #[test]
    fn endpoint_display_hides_the_password() {
        let ep = parse(&[("url", "redis://:topsecret@h:1/0")]).unwrap();
        assert!(!format!("{ep} {ep:?}").contains("topsecret"));
    }
}
