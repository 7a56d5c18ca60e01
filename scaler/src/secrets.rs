//! `...Secret` credential keys: credentials the scaler reads from Kubernetes Secrets itself.
//!
//! Every credential key (`password`, `username`, Kafka's `key`, `keyPassword`, `ca`, `cert`,
//! SQS's `awsAccessKeyID`, `awsSecretAccessKey`, `awsSessionToken`) also accepts a
//! `<key>Secret` form whose value names a key of a Secret: `<namespace>/<name>/<key>`, or
//! `<name>/<key>` in the ScaledObject's own namespace. The value never travels through KEDA or
//! the workload's environment.
//!
//! The trigger's parsed configuration holds a [`Credential`] (a value, or a reference); sources
//! resolve it with [`Secrets::resolve`] on every read, so a rotated Secret takes effect on the
//! next read, and they key their connection pools by the resolved values so that a changed
//! credential opens a new connection instead of reusing one authenticated with the old one.
//!
//! [`Secrets`] creates its Kubernetes client on the first reference it resolves (in-cluster, or
//! the kubeconfig): a scaler whose triggers use no `...Secret` key never talks to the API
//! server. Each Secret is followed by its own watch, with a `metadata.name` field selector, so
//! RBAC can grant `get`/`list`/`watch` limited by `resourceNames`; a watch nobody used for
//! [`IDLE_WATCH`] is stopped by [`Secrets::sweep`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use crate::cache::BoundedMap;

/// Suffix of keys whose value names a Secret key.
pub const SECRET: &str = "Secret";

/// A watch nobody resolved through for this long is stopped (the next use starts it again).
pub const IDLE_WATCH: Duration = Duration::from_secs(600);

/// Secrets watched at once (each a watch on the API server); past it the least recently used
/// watch is stopped.
pub const MAX_WATCHES: usize = 1_024;

/// One key of one Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.name, self.key)
    }
}

impl SecretRef {
    /// Parses `<namespace>/<name>/<key>` or `<name>/<key>` (in `default_namespace`, the
    /// ScaledObject's). The error says what is wrong, for a `Problem::Invalid`.
    pub fn parse(value: &str, default_namespace: Option<&str>) -> Result<Self, String> {
        let parts: Vec<&str> = value.split('/').collect();
        let (namespace, name, key) = match parts.as_slice() {
            [ns, name, key] => ((*ns).to_string(), *name, *key),
            [name, key] => match default_namespace.filter(|ns| !ns.is_empty()) {
                Some(ns) => (ns.to_string(), *name, *key),
                None => {
                    return Err(
                        "the ScaledObject's namespace is unknown here: give `<namespace>/<name>/<key>`"
                            .into(),
                    );
                }
            },
            _ => return Err("expected `<namespace>/<name>/<key>` or `<name>/<key>`".into()),
        };
        if !is_dns_label(&namespace) {
            return Err(format!("{namespace:?} is not a namespace name"));
        }
        if !is_dns_subdomain(name) {
            return Err(format!("{name:?} is not a Secret name"));
        }
        if !is_secret_key_name(key) {
            return Err(format!(
                "{key:?} is not a Secret key (letters, digits, `-`, `_`, `.`)"
            ));
        }
        Ok(Self {
            namespace,
            name: name.to_string(),
            key: key.to_string(),
        })
    }

    /// `namespace/name`, as errors name the Secret.
    pub fn secret(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// RFC 1123 label: what a namespace name must be.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what a Secret name must be.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What a key of a Secret's `data` may be.
fn is_secret_key_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A credential as a trigger gives it. `Debug` never shows a value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// From the metadata: a plain key, or a `<key>FromEnv` key KEDA resolved.
    Value(String),
    /// `<key>Secret`: read from the Kubernetes API at each use (boxed: rarer and larger).
    Secret(Box<SecretKey>),
}

/// A `<key>Secret` key as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretKey {
    /// The metadata key that named it (`passwordSecret`), for errors.
    pub metadata_key: String,
    pub reference: SecretRef,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Value(_) => f.write_str("Value(<hidden>)"),
            Credential::Secret(k) => write!(f, "Secret({} = {})", k.metadata_key, k.reference),
        }
    }
}

impl Credential {
    /// A `<key>Secret` credential.
    pub fn secret(metadata_key: impl Into<String>, reference: SecretRef) -> Self {
        Credential::Secret(Box::new(SecretKey {
            metadata_key: metadata_key.into(),
            reference,
        }))
    }

    /// Where a `<key>Secret` credential is read from.
    pub fn secret_key(&self) -> Option<&SecretKey> {
        match self {
            Credential::Value(_) => None,
            Credential::Secret(k) => Some(k),
        }
    }

    /// The value when it was given in the metadata.
    pub fn value(&self) -> Option<&str> {
        match self {
            Credential::Value(v) => Some(v),
            Credential::Secret(_) => None,
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Credential::Secret(_))
    }
}

/// Why a `...Secret` key could not be resolved. Names the key and the Secret, never a value.
///
/// A Secret that does not exist, one the scaler may not read, a missing key and a value that is
/// not text are one error to the caller ([`SecretError::Unreadable`], `NOT_FOUND`): a caller
/// must not learn whether a Secret it may not read exists. The scaler's log and the
/// `kind` label of `headroom_scaler_backend_errors_total` say which it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("`{key}`: cannot read Secret {secret} from the Kubernetes API: {reason}")]
    Unavailable {
        key: String,
        secret: String,
        reason: String,
    },
    #[error(
        "`{key}`: key `{field}` of Secret {secret} cannot be read: the Secret or the key does not \
         exist, or the scaler may not read it (the scaler's log says which)"
    )]
    Unreadable {
        key: String,
        secret: String,
        field: String,
        /// For the operator only: logs and metrics.
        why: Unreadable,
    },
}

/// What [`SecretError::Unreadable`] was, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// RBAC refused the watch (grant get, list and watch on it).
    Forbidden,
    NotFound,
    MissingKey,
    /// The key's value is not UTF-8 text.
    NotText,
}

impl SecretError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretError::Unavailable { .. } => "unavailable",
            SecretError::Unreadable { why, .. } => match why {
                Unreadable::Forbidden => "forbidden",
                Unreadable::NotFound | Unreadable::MissingKey => "not_found",
                Unreadable::NotText => "not_text",
            },
        }
    }
}

/// What a watch knows of its Secret.
#[derive(Debug, Clone)]
enum State {
    /// The first list has not answered yet.
    Syncing,
    Present(Arc<BTreeMap<String, ByteString>>),
    Absent,
    /// The watch failed before it ever knew the Secret (it retries with backoff).
    Failed {
        forbidden: bool,
        reason: String,
    },
}

struct Watched {
    state: watch::Receiver<State>,
    task: tokio::task::JoinHandle<()>,
    last_used: Instant,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Secrets the triggers reference, watched and cached.
pub struct Secrets {
    kubeconfig: Option<PathBuf>,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<kube::Client>>,
    watches: Mutex<BoundedMap<(String, String), Watched>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("kubeconfig", &self.kubeconfig)
            .field("watched", &self.watched())
            .finish()
    }
}

impl Default for Secrets {
    fn default() -> Self {
        Self::new(None, Duration::from_secs(2))
    }
}

impl Secrets {
    /// `kubeconfig`: a kubeconfig file to use instead of the standard inference (in-cluster
    /// service account, `KUBECONFIG`, `~/.kube/config`); `timeout`: how long a first read of a
    /// Secret may wait for the API server.
    pub fn new(kubeconfig: Option<PathBuf>, timeout: Duration) -> Self {
        Self {
            kubeconfig,
            timeout,
            client: tokio::sync::Mutex::default(),
            watches: Mutex::new(BoundedMap::new("secret_watches", MAX_WATCHES, IDLE_WATCH)),
        }
    }

    /// Number of Secrets watched now.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    /// Whether a Kubernetes client was ever made (only when a `...Secret` key was resolved).
    pub async fn has_client(&self) -> bool {
        self.client.lock().await.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundedMap<(String, String), Watched>> {
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The credential's value: itself, or the current content of the Secret key it names.
    pub async fn resolve(&self, credential: &Credential) -> Result<String, SecretError> {
        match credential {
            Credential::Value(v) => Ok(v.clone()),
            Credential::Secret(k) => self.read(&k.metadata_key, &k.reference).await,
        }
    }

    /// [`Secrets::resolve`] of an optional credential.
    pub async fn resolve_opt(
        &self,
        credential: Option<&Credential>,
    ) -> Result<Option<String>, SecretError> {
        match credential {
            None => Ok(None),
            Some(c) => self.resolve(c).await.map(Some),
        }
    }

    async fn read(&self, metadata_key: &str, r: &SecretRef) -> Result<String, SecretError> {
        let mut state = self.state(metadata_key, r).await?;
        let unavailable = |reason: String| SecretError::Unavailable {
            key: metadata_key.to_string(),
            secret: r.secret(),
            reason,
        };
        let current = match tokio::time::timeout(
            self.timeout,
            state.wait_for(|s| !matches!(s, State::Syncing)),
        )
        .await
        {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => return Err(unavailable("the watch stopped".into())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer from the API server within {:?}",
                    self.timeout
                )));
            }
        };
        let unreadable = |why: Unreadable| {
            tracing::debug!(
                key = metadata_key,
                secret = %r,
                ?why,
                "secret key unreadable"
            );
            SecretError::Unreadable {
                key: metadata_key.to_string(),
                secret: r.secret(),
                field: r.key.clone(),
                why,
            }
        };
        match current {
            State::Syncing => Err(unavailable("not listed yet".into())),
            State::Failed { forbidden, reason } => Err(if forbidden {
                unreadable(Unreadable::Forbidden)
            } else {
                unavailable(reason)
            }),
            State::Absent => Err(unreadable(Unreadable::NotFound)),
            State::Present(data) => match data.get(&r.key) {
                None => Err(unreadable(Unreadable::MissingKey)),
                Some(bytes) => {
                    String::from_utf8(bytes.0.clone()).map_err(|_| unreadable(Unreadable::NotText))
                }
            },
        }
    }

    /// The watch of `r`'s Secret, started on first use.
    async fn state(
        &self,
        metadata_key: &str,
        r: &SecretRef,
    ) -> Result<watch::Receiver<State>, SecretError> {
        let id = (r.namespace.clone(), r.name.clone());
        {
            let mut watches = self.lock();
            if let Some(w) = watches.get(&id)
                && !w.task.is_finished()
            {
                w.last_used = Instant::now();
                return Ok(w.state.clone());
            }
        }
        let client = self
            .client()
            .await
            .map_err(|reason| SecretError::Unavailable {
                key: metadata_key.to_string(),
                secret: r.secret(),
                reason,
            })?;
        let mut watches = self.lock();
        // Another caller may have started it while the client was being made.
        if let Some(w) = watches.get(&id)
            && !w.task.is_finished()
        {
            w.last_used = Instant::now();
            return Ok(w.state.clone());
        }
        let (tx, rx) = watch::channel(State::Syncing);
        let task = tokio::spawn(follow(client, r.namespace.clone(), r.name.clone(), tx));
        watches.insert(
            id,
            Watched {
                state: rx.clone(),
                task,
                last_used: Instant::now(),
            },
        );
        Ok(rx)
    }

    /// The Kubernetes client, made on first use. A failure is not remembered: the next use
    /// tries again (a kubeconfig may appear, a service account token may be mounted late).
    async fn client(&self) -> Result<kube::Client, String> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        crate::install_crypto_provider();
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(
                    kubeconfig,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::infer().await.map_err(|e| {
                format!("no Kubernetes configuration (in-cluster or kubeconfig): {e}")
            })?,
        };
        let made = kube::Client::try_from(config)
            .map_err(|e| format!("cannot make a Kubernetes client: {e}"))?;
        tracing::info!("kubernetes client created for ...Secret keys");
        *client = Some(made.clone());
        Ok(made)
    }

    /// Stops the watches nobody resolved through for `idle`. Returns how many.
    pub fn sweep(&self, idle: Duration) -> usize {
        let mut watches = self.lock();
        let before = watches.len();
        watches.retain(|_, w| w.last_used.elapsed() < idle && !w.task.is_finished());
        before - watches.len()
    }
}

/// Follows one Secret until aborted: a list-then-watch of exactly that name, restarted with
/// backoff on errors.
async fn follow(client: kube::Client, namespace: String, name: String, tx: watch::Sender<State>) {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    // Objects of a relist, replacing the state only once the list is complete.
    let mut listing: Option<Option<Secret>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing = Some(None),
            Ok(Event::InitApply(s)) => listing = Some(Some(s)),
            Ok(Event::InitDone) => {
                let listed = listing.take().flatten();
                tx.send_replace(present(listed));
            }
            Ok(Event::Apply(s)) => {
                tx.send_replace(present(Some(s)));
            }
            Ok(Event::Delete(_)) => {
                tx.send_replace(State::Absent);
            }
            Err(error) => {
                let forbidden = is_forbidden(&error);
                // Once the Secret is known, a passing API outage keeps the last content
                // (stale is better than failing every read); before that, reads fail with why.
                let known = matches!(*tx.borrow(), State::Present(_) | State::Absent);
                tracing::warn!(
                    namespace,
                    name,
                    forbidden,
                    %error,
                    "secret watch failed; retrying"
                );
                if !known {
                    tx.send_replace(State::Failed {
                        forbidden,
                        reason: error.to_string(),
                    });
                }
            }
        }
    }
}

fn present(secret: Option<Secret>) -> State {
    match secret {
        None => State::Absent,
        Some(s) => State::Present(Arc::new(s.data.unwrap_or_default())),
    }
}

fn is_forbidden(error: &watcher::Error) -> bool {
    let api = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        },
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::NoResourceVersion => None,
    };
    matches!(api, Some(401 | 403))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_and_without_a_namespace() {
        let r = SecretRef::parse("queues/redis-auth/password", Some("apps")).unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.key.as_str()),
            ("queues", "redis-auth", "password")
        );
        let r = SecretRef::parse("redis-auth/password", Some("apps")).unwrap();
        assert_eq!(r.namespace, "apps", "the ScaledObject's namespace");
        assert_eq!(r.to_string(), "apps/redis-auth/password");
        assert_eq!(r.secret(), "apps/redis-auth");
        let r = SecretRef::parse("aws.keys/AWS_SECRET_ACCESS_KEY", Some("a")).unwrap();
        assert_eq!(r.key, "AWS_SECRET_ACCESS_KEY");
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        let cases = [
            ("password", "expected `<namespace>/<name>/<key>`"),
            ("a/b/c/d", "expected"),
            ("redis-auth/password", "namespace is unknown"),
            ("Apps/redis-auth/password", "not a namespace name"),
            ("apps/Redis_Auth/password", "not a Secret name"),
            ("apps//password", "not a Secret name"),
            ("apps/redis-auth/pass word", "not a Secret key"),
            ("apps/redis-auth/", "not a Secret key"),
        ];
        for (value, why) in cases {
            let err = SecretRef::parse(value, None).unwrap_err();
            assert!(err.contains(why), "{value}: {err}");
        }
        assert!(SecretRef::parse("redis-auth/password", Some("")).is_err());
    }

    #[test]
    fn credentials_never_show_their_value() {
        let c = Credential::Value("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Credential::secret("passwordSecret", SecretRef::parse("a/b/c", None).unwrap());
        assert_eq!(format!("{c:?}"), "Secret(passwordSecret = a/b/c)");
    }

    #[test]
    fn absent_refused_and_missing_keys_are_one_error_naming_the_key_and_the_secret() {
        let texts: Vec<String> = [
            Unreadable::Forbidden,
            Unreadable::NotFound,
            Unreadable::MissingKey,
            Unreadable::NotText,
        ]
        .into_iter()
        .map(|why| {
            SecretError::Unreadable {
                key: "passwordSecret".into(),
                secret: "apps/redis-auth".into(),
                field: "pw".into(),
                why,
            }
            .to_string()
        })
        .collect();
        assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
        assert!(
            texts[0].starts_with("`passwordSecret`: key `pw` of Secret apps/redis-auth"),
            "{}",
            texts[0]
        );
    }

    #[tokio::test]
    async fn plain_values_resolve_without_a_client() {
        let secrets = Secrets::new(
            Some("/nonexistent/kubeconfig".into()),
            Duration::from_secs(1),
        );
        let v = secrets
            .resolve(&Credential::Value("pw".into()))
            .await
            .unwrap();
        assert_eq!(v, "pw");
        assert!(!secrets.has_client().await);
        let err = secrets
            .resolve(&Credential::secret(
                "passwordSecret",
                SecretRef::parse("a/b/c", None).unwrap(),
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, SecretError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("`passwordSecret`"), "{err}");
        assert!(err.to_string().contains("a/b"), "{err}");
    }
}
