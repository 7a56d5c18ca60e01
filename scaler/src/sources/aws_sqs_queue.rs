//! `source: aws-sqs-queue` — parity with KEDA's built-in `aws-sqs-queue` scaler: the visible
//! messages of one queue, plus the in-flight (not visible) ones unless `scaleOnInFlight` is
//! false, plus the delayed ones when `scaleOnDelayed` is true.
//!
//! One GetQueueAttributes call reads all three counters, whatever the trigger's flags, so every
//! trigger on the queue shares one read per TTL; the flags only change how the reading is added
//! up. One SDK client per (region, endpoint, identity).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;

use super::{Depth, SourceError, cause};
use crate::cache::BoundedMap;
use crate::metadata::{Key, Plain, Problem, Reader};
use crate::secrets::{Credential, Secrets};

/// Keys of this source (each also in its `FromEnv` form; the secrets only in that form or in
/// their `Secret` form, which `awsAccessKeyID` also accepts).
pub const KEYS: &[Key] = &[
    Key::required(
        "queueURL",
        "`https://sqs.<region>.amazonaws.com/<account>/<name>`; a URL's path must be exactly `/<account>/<name>`. A value Go's `url.ParseRequestURI` rejects (e.g. `my-queue`) is a bare queue name, looked up once with GetQueueUrl in the credentials' account",
    ),
    Key::required("awsRegion", "the queue's region"),
    Key::optional(
        "awsEndpoint",
        "AWS",
        "another endpoint (VPC endpoint, SQS-compatible server); `http(s)://`",
    ),
    Key::optional(
        "queueLength",
        "5",
        "target messages per replica (> 0; KEDA does not check this, and a 0 target breaks the HPA)",
    ),
    Key::optional(
        "activationQueueLength",
        "0",
        "active when the value is above this",
    ),
    Key::optional(
        "scaleOnInFlight",
        "true",
        "add ApproximateNumberOfMessagesNotVisible (received, not deleted)",
    ),
    Key::optional(
        "scaleOnDelayed",
        "false",
        "add ApproximateNumberOfMessagesDelayed",
    ),
    Key::optional(
        "identityOwner",
        "`pod`",
        "`operator`: use the scaler's own identity only (static keys are then an error)",
    ),
    Key::optional(
        "awsAccessKeyID",
        "none",
        "static access key id, with `awsSecretAccessKeyFromEnv` (or `awsAccessKeyIDFromEnv`, `awsAccessKeyIDSecret`); without static keys the scaler's own identity is used",
    ),
    Key::optional(
        "awsAccessKeyId",
        "none",
        "the same as `awsAccessKeyID` (KEDA accepts both spellings)",
    ),
    Key::optional(
        "awsSecretAccessKey",
        "none",
        "the secret of the static keys, accepted **only** as `awsSecretAccessKeyFromEnv` (the workload's environment) or `awsSecretAccessKeySecret`",
    ),
    Key::optional(
        "awsSessionToken",
        "none",
        "a session token for the static keys, accepted **only** as `awsSessionTokenFromEnv` or `awsSessionTokenSecret`",
    ),
    Key::optional(
        "awsRoleArn",
        "none",
        "a role to assume (STS AssumeRole, session `headroom-scaler`) with the credentials above or the scaler's own",
    ),
];

/// The counters one read asks for, in this order.
const ATTRIBUTES: [QueueAttributeName; 3] = [
    QueueAttributeName::ApproximateNumberOfMessages,
    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
];

/// Metadata of an `aws-sqs-queue` trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsMetadata {
    /// `queueURL` / `queueURLFromEnv` (required): the queue's URL
    /// (`https://sqs.<region>.amazonaws.com/<account>/<name>`: the path must be exactly
    /// `/<account>/<name>`), or a bare queue name, which is looked up (GetQueueUrl) in the
    /// account of the credentials.
    pub queue_url: String,
    /// The queue name: the last path segment of the URL, or the bare name. Names the metric.
    pub queue_name: String,
    /// `awsRegion` (required): the queue's region.
    pub region: String,
    /// `awsEndpoint`: another SQS endpoint (a VPC endpoint, an SQS-compatible server).
    pub endpoint: Option<String>,
    /// `queueLength` (default 5): the target of messages per replica. Must be > 0 (KEDA takes
    /// any integer, but the HPA rejects a target that is not positive).
    pub queue_length: i64,
    /// `activationQueueLength` (default 0): active when the value is above this.
    pub activation_queue_length: i64,
    /// `scaleOnInFlight` (default true): count not-visible (in-flight) messages.
    pub scale_on_in_flight: bool,
    /// `scaleOnDelayed` (default false): count delayed messages.
    pub scale_on_delayed: bool,
    /// Whose credentials read the queue.
    pub identity: AwsIdentity,
}

/// Credentials for the SQS client. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct AwsIdentity {
    /// `awsAccessKeyID` / `awsAccessKeyIDFromEnv` (also spelt `awsAccessKeyId`) with
    /// `awsSecretAccessKeyFromEnv` and optionally `awsSessionTokenFromEnv`: static keys. Without
    /// them (or with `identityOwner: operator`) the scaler's own identity is used, from the
    /// standard AWS chain: environment, web identity (IRSA), EKS pod identity, profile,
    /// instance metadata.
    pub static_keys: Option<StaticKeys>,
    /// `awsRoleArn`: a role assumed (STS AssumeRole) with the credentials above.
    pub role_arn: Option<String>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StaticKeys {
    pub access_key_id: Credential,
    pub secret_access_key: Credential,
    pub session_token: Option<Credential>,
}

impl StaticKeys {
    /// The access key id, or where it is read from (an id is not a secret; it helps find
    /// which key a refused call used).
    fn id_label(&self) -> String {
        match &self.access_key_id {
            Credential::Value(id) => id.clone(),
            Credential::Secret(k) => format!("from Secret key {}", k.reference),
        }
    }
}

/// [`StaticKeys`] as resolved for one client. `Debug` hides them.
#[derive(Clone, PartialEq, Eq)]
struct ResolvedKeys {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for ResolvedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResolvedKeys(<hidden>)")
    }
}

impl fmt::Debug for AwsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsIdentity")
            .field(
                "access_key_id",
                &self.static_keys.as_ref().map(StaticKeys::id_label),
            )
            .field("secret", &self.static_keys.as_ref().map(|_| "<hidden>"))
            .field("role_arn", &self.role_arn)
            .finish()
    }
}

impl fmt::Display for AwsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.static_keys, &self.role_arn) {
            (None, None) => f.write_str("the scaler's identity"),
            (Some(k), None) => write!(f, "access key {}", k.id_label()),
            (None, Some(r)) => write!(f, "role {r}"),
            (Some(k), Some(r)) => {
                write!(f, "role {r} assumed with access key {}", k.id_label())
            }
        }
    }
}

impl SqsMetadata {
    pub fn parse(r: &mut Reader<'_>) -> Option<Self> {
        let queue_url = r.required_string("queueURL");
        let queue_name = queue_url.as_deref().and_then(|url| match queue_name(url) {
            Ok(name) => Some(name),
            Err(why) => {
                r.problem(Problem::Invalid {
                    key: "queueURL".into(),
                    value: Some(url.to_string()),
                    expected: format!("a queue URL whose path is /<account>/<name> ({why})"),
                });
                None
            }
        });
        let region = r.required_string("awsRegion");
        // It becomes part of a host name (`sqs.<region>.amazonaws.com`): a region such as
        // `x.evil.example#` must not steer where the SDK sends signed requests.
        let region = region.filter(|region| {
            let ok = region.len() <= 32
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                r.problem(Problem::Invalid {
                    key: "awsRegion".into(),
                    value: Some(region.clone()),
                    expected: "an AWS region name (lower-case letters, digits and `-`)".into(),
                });
            }
            ok
        });
        let endpoint = r.string("awsEndpoint");
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            r.problem(Problem::Invalid {
                key: "awsEndpoint".into(),
                value: Some(e.clone()),
                expected: "an http:// or https:// URL".into(),
            });
        }
        let queue_length = r.int("queueLength", 5i64);
        if queue_length <= 0 {
            r.problem(Problem::Invalid {
                key: "queueLength".into(),
                value: Some(queue_length.to_string()),
                expected: "an integer > 0".into(),
            });
        }
        let activation_queue_length = r.int("activationQueueLength", 0i64);
        let scale_on_in_flight = r.bool("scaleOnInFlight", true);
        let scale_on_delayed = r.bool("scaleOnDelayed", false);
        let identity = parse_identity(r);
        Some(Self {
            queue_url: queue_url?,
            queue_name: queue_name?,
            region: region?,
            endpoint,
            queue_length,
            activation_queue_length,
            scale_on_in_flight,
            scale_on_delayed,
            identity: identity?,
        })
    }

    /// KEDA's `aws-sqs-<queueName>`.
    pub fn metric_name(&self) -> String {
        format!("aws-sqs-{}", self.queue_name)
    }

    /// KEDA's value: visible (+ not visible) (+ delayed).
    pub fn value(&self, depth: &Depth) -> u64 {
        let mut v = depth.waiting;
        if self.scale_on_in_flight {
            v = v.saturating_add(depth.in_flight);
        }
        if self.scale_on_delayed {
            v = v.saturating_add(depth.delayed);
        }
        v
    }

    pub fn query(&self) -> SqsQuery {
        SqsQuery {
            client: ClientKey {
                region: self.region.clone(),
                endpoint: self.endpoint.clone(),
                identity: self.identity.clone(),
            },
            queue: self.queue_url.clone(),
            is_url: request_uri_path(&self.queue_url).is_some(),
        }
    }
}

fn parse_identity(r: &mut Reader<'_>) -> Option<AwsIdentity> {
    let owner = r.string("identityOwner");
    let operator = match owner.as_deref() {
        None | Some("pod") => false,
        Some("operator") => true,
        Some(other) => {
            r.problem(Problem::Invalid {
                key: "identityOwner".into(),
                value: Some(other.into()),
                expected: "`pod` or `operator`".into(),
            });
            false
        }
    };
    let id_upper = r
        .credential("awsAccessKeyID", Plain::Allowed)
        .map(|c| ("awsAccessKeyID".to_string(), c));
    let id_lower = r
        .credential("awsAccessKeyId", Plain::Allowed)
        .map(|c| ("awsAccessKeyId".to_string(), c));
    let access_key_id = match (id_upper, id_lower) {
        (Some((a, _)), Some((b, _))) => {
            r.problem(Problem::Conflict {
                keys: vec![a, b],
                reason: "give the access key id once".into(),
            });
            None
        }
        (Some((k, v)), None) | (None, Some((k, v))) => Some((k, v)),
        (None, None) => None,
    };
    let secret = r.credential("awsSecretAccessKey", Plain::Forbidden);
    let token = r.credential("awsSessionToken", Plain::Forbidden);
    let role_arn = r.string("awsRoleArn");
    if let Some(role) = &role_arn
        && !role.starts_with("arn:")
    {
        r.problem(Problem::Invalid {
            key: "awsRoleArn".into(),
            value: Some(role.clone()),
            expected: "a role ARN (arn:aws:iam::<account>:role/<name>)".into(),
        });
    }
    if operator {
        let given: Vec<String> = [
            access_key_id.as_ref().map(|(k, _)| k.clone()),
            secret
                .as_ref()
                .map(|_| "awsSecretAccessKeyFromEnv".to_string()),
            token.as_ref().map(|_| "awsSessionTokenFromEnv".to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !given.is_empty() {
            let mut keys = vec!["identityOwner".to_string()];
            keys.extend(given);
            r.problem(Problem::Conflict {
                keys,
                reason: "`identityOwner: operator` uses the scaler's own identity; remove the static keys".into(),
            });
            return None;
        }
        return Some(AwsIdentity {
            static_keys: None,
            role_arn,
        });
    }
    let static_keys = match (access_key_id, secret) {
        (Some((_, id)), Some(secret)) => Some(StaticKeys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: token,
        }),
        (Some(_), None) => {
            r.problem(Problem::Missing {
                key: "awsSecretAccessKeyFromEnv".into(),
            });
            return None;
        }
        (None, Some(_)) => {
            r.problem(Problem::Missing {
                key: "awsAccessKeyID".into(),
            });
            return None;
        }
        (None, None) => {
            if token.is_some() {
                r.problem(Problem::Conflict {
                    keys: vec!["awsSessionTokenFromEnv".into(), "awsAccessKeyID".into()],
                    reason: "a session token needs static keys".into(),
                });
                return None;
            }
            None
        }
    };
    Some(AwsIdentity {
        static_keys,
        role_arn,
    })
}

/// KEDA's rule for the queue name: a value Go's `url.ParseRequestURI` accepts must have the path
/// `/<account>/<name>` (exactly three `/`-separated parts, the last one non-empty); any other
/// value is a bare queue name.
pub fn queue_name(value: &str) -> Result<String, &'static str> {
    match request_uri_path(value) {
        None => Ok(value.to_string()),
        Some(path) => {
            let parts: Vec<&str> = path.split('/').collect();
            if parts.len() != 3 || parts[2].is_empty() {
                return Err("cannot get the queue name from the URL");
            }
            Ok(parts[2].to_string())
        }
    }
}

/// The decoded path of `s` when Go's `url.ParseRequestURI` accepts it, `None` when it fails.
fn request_uri_path(s: &str) -> Option<String> {
    if s.is_empty() || s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    // Go's getScheme: letters, then digits + - . after the first byte, up to ':'.
    let mut scheme = "";
    let mut rest = s;
    for (i, c) in s.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return None,
            b':' => {
                scheme = &s[..i];
                rest = &s[i + 1..];
                break;
            }
            _ => break,
        }
    }
    let rest = match rest.find('?') {
        Some(i) => &rest[..i],
        None => rest,
    };
    if !rest.starts_with('/') {
        // An opaque URL (`scheme:thing`) parses with an empty path; without a scheme a request
        // URI must be absolute.
        return (!scheme.is_empty()).then(String::new);
    }
    let path = if !scheme.is_empty() && rest.starts_with("//") {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if !valid_host_port(host) {
            return None;
        }
        path
    } else {
        rest
    };
    percent_decode(path)
}

/// Go's port rule: after the last `:` outside brackets, only digits.
fn valid_host_port(host: &str) -> bool {
    let after_bracket = match host.strip_prefix('[') {
        Some(h) => match h.find(']') {
            Some(i) => &h[i + 1..],
            None => return false,
        },
        None => host,
    };
    if host
        .bytes()
        .any(|b| b == b' ' || b == b'"' || b == b'<' || b == b'>')
    {
        return false;
    }
    match after_bracket.rfind(':') {
        Some(i) => after_bracket[i + 1..].bytes().all(|b| b.is_ascii_digit()),
        None => true,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What one SDK client is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub region: String,
    pub endpoint: Option<String>,
    pub identity: AwsIdentity,
}

/// One read: the counters of one queue, through one client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SqsQuery {
    pub client: ClientKey,
    /// The queue URL, or a bare name to look up.
    pub queue: String,
    pub is_url: bool,
}

impl SqsQuery {
    /// `sqs://<endpoint host or region>/<queue>` — no credentials.
    pub fn endpoint_label(&self) -> String {
        let host = match &self.client.endpoint {
            Some(e) => e
                .split_once("://")
                .map_or(e.as_str(), |(_, rest)| rest)
                .trim_end_matches('/')
                .to_string(),
            None => format!("sqs.{}", self.client.region),
        };
        format!("sqs://{host}")
    }

    fn label(&self) -> String {
        let name = if self.is_url {
            queue_name(&self.queue).unwrap_or_else(|_| self.queue.clone())
        } else {
            self.queue.clone()
        };
        format!("{} queue {name}", self.endpoint_label())
    }

    pub async fn read(&self, clients: &SqsClients) -> Result<Depth, SourceError> {
        let client = clients.client(&self.client).await?;
        let url = if self.is_url {
            self.queue.clone()
        } else {
            clients.resolve(&client, self).await?
        };
        let out = client
            .get_queue_attributes()
            .queue_url(&url)
            .set_attribute_names(Some(ATTRIBUTES.to_vec()))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                if !self.is_url && is_not_found(&e) {
                    // The queue was deleted (and perhaps re-created elsewhere): look it up again
                    // next time.
                    clients.forget(self);
                }
                return Err(classify(self, e));
            }
        };
        let (waiting, in_flight, delayed) =
            counters(out.attributes()).map_err(|detail| SourceError::Protocol {
                endpoint: self.label(),
                detail,
            })?;
        Ok(Depth {
            waiting,
            in_flight,
            delayed,
            ..Depth::default()
        })
    }
}

/// Visible, not visible and delayed from GetQueueAttributes' answer: a missing or non-integer
/// attribute is an error (KEDA's `processQueueLengthFromSqsQueueAttributesOutput`), never 0.
pub fn counters(
    attributes: Option<&HashMap<QueueAttributeName, String>>,
) -> Result<(u64, u64, u64), String> {
    let count = |name: &QueueAttributeName| -> Result<u64, String> {
        let raw = attributes
            .and_then(|a| a.get(name))
            .ok_or_else(|| format!("attribute {} missing from the answer", name.as_str()))?;
        raw.trim()
            .parse::<u64>()
            .map_err(|_| format!("attribute {} is {raw:?}, not a count", name.as_str()))
    };
    Ok((
        count(&ATTRIBUTES[0])?,
        count(&ATTRIBUTES[1])?,
        count(&ATTRIBUTES[2])?,
    ))
}

fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(
        e.code(),
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
    )
}

/// Codes that say the credentials are wrong or not allowed.
const AUTH_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidSecurity",
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
    "InvalidAccessKeyId",
    "KMS.AccessDeniedException",
];

/// Turns an SDK error into the source error that says what the operator must fix. The SDK's
/// messages hold codes, AWS's own text and request ids, never the keys.
fn classify<E>(q: &SqsQuery, e: SdkError<E, HttpResponse>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let endpoint = q.label();
    if is_not_found(&e) {
        return SourceError::NotFound {
            endpoint: q.endpoint_label(),
            what: format!("queue {}", q.label().rsplit(' ').next().unwrap_or_default()),
        };
    }
    let status = e.raw_response().map(|r| r.status().as_u16());
    // An error body the SDK could not parse (an SQS-compatible server answering in another
    // protocol): take AWS's code and message from it if they are there.
    let sniffed = e
        .raw_response()
        .and_then(|r| r.body().bytes())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .map(|body| (xml_field(&body, "Code"), xml_field(&body, "Message")));
    let code = e
        .code()
        .map(str::to_string)
        .or_else(|| sniffed.as_ref().and_then(|(c, _)| c.clone()));
    let message = e
        .message()
        .map(str::to_string)
        .or_else(|| sniffed.as_ref().and_then(|(_, m)| m.clone()));
    let text = match (&code, &message, status) {
        (Some(c), Some(m), _) => format!("{c}: {m}"),
        (Some(c), None, _) => c.clone(),
        (None, _, Some(s)) => format!("HTTP {s} with an unreadable error body"),
        (None, _, None) => chain(&e),
    };
    let auth_code = code.as_deref().is_some_and(|c| AUTH_CODES.contains(&c));
    match &e {
        SdkError::ServiceError(_) | SdkError::ResponseError(_)
            if auth_code || matches!(status, Some(401 | 403)) =>
        {
            SourceError::Auth {
                endpoint,
                source: cause(text),
            }
        }
        SdkError::ServiceError(_) => SourceError::Backend {
            endpoint,
            source: cause(text),
        },
        SdkError::TimeoutError(_) => SourceError::Unavailable {
            endpoint,
            source: cause("the request timed out"),
        },
        _ => {
            // Dispatch and response failures; a credentials provider that cannot produce
            // credentials (e.g. AssumeRole refused) also lands here.
            let lower = text.to_ascii_lowercase();
            if lower.contains("credential") || AUTH_CODES.iter().any(|c| text.contains(c)) {
                SourceError::Auth {
                    endpoint,
                    source: cause(text),
                }
            } else {
                SourceError::Unavailable {
                    endpoint,
                    source: cause(text),
                }
            }
        }
    }
}

/// An error and its sources, joined by `: ` (without the SDK's debug dump).
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = s.source();
    }
    parts.join(": ")
}

/// The text of the first `<name>...</name>` element of an XML error body.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&close)?;
    Some(body[start..start + len].trim().to_string()).filter(|s| !s.is_empty())
}

/// Most SQS clients kept (one per region, endpoint and identity), and how long an unused one is.
pub const MAX_CLIENTS: usize = 256;
pub const IDLE_CLIENT: Duration = Duration::from_secs(600);
/// Most queue URLs remembered (queues given by name), and how long an unused one is.
pub const MAX_URLS: usize = 4_096;
pub const IDLE_URL: Duration = Duration::from_secs(600);

type MadeWith = (Option<ResolvedKeys>, aws_sdk_sqs::Client);

/// SQS clients, one per (region, endpoint, identity), and the URLs of queues given by name:
/// both bounded and idle-evicted (their keys come from callers' metadata).
#[derive(Debug)]
pub struct SqsClients {
    timeout: Duration,
    secrets: Arc<Secrets>,
    /// Each client with the static keys it was made with: other ones (a rotated Secret) need
    /// a new client. A std mutex, held only to look up or insert: a client is built (which may
    /// load AWS configuration) outside it, so one slow build never stalls every SQS read.
    clients: std::sync::Mutex<BoundedMap<ClientKey, MadeWith>>,
    urls: std::sync::Mutex<BoundedMap<SqsQuery, String>>,
}

impl Default for SqsClients {
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

impl SqsClients {
    /// `timeout` bounds each attempt of each call (the caller's deadline bounds the whole read).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            secrets: Arc::default(),
            clients: std::sync::Mutex::new(BoundedMap::new(
                "sqs_clients",
                MAX_CLIENTS,
                IDLE_CLIENT,
            )),
            urls: std::sync::Mutex::new(BoundedMap::new("sqs_queue_urls", MAX_URLS, IDLE_URL)),
        }
    }

    /// Drops clients and URLs unused for their idle time.
    pub fn sweep(&self) -> usize {
        self.lock_clients().sweep() + self.lock_urls().sweep()
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, BoundedMap<ClientKey, MadeWith>> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves `...Secret` keys through `secrets` (shared with the other sources).
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Number of clients kept.
    pub async fn len(&self) -> usize {
        self.lock_clients().len()
    }

    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    async fn client(&self, key: &ClientKey) -> Result<aws_sdk_sqs::Client, SourceError> {
        let keys = match &key.identity.static_keys {
            None => None,
            Some(k) => Some(ResolvedKeys {
                access_key_id: self.secrets.resolve(&k.access_key_id).await?,
                secret_access_key: self.secrets.resolve(&k.secret_access_key).await?,
                session_token: self.secrets.resolve_opt(k.session_token.as_ref()).await?,
            }),
        };
        if let Some((made_with, c)) = self.lock_clients().get(key)
            && *made_with == keys
        {
            return Ok(c.clone());
        }
        let client = self.build(key, keys.as_ref()).await;
        let mut clients = self.lock_clients();
        // Built meanwhile by another read with the same keys: that one is kept.
        if let Some((made_with, c)) = clients.get(key)
            && *made_with == keys
        {
            return Ok(c.clone());
        }
        if clients
            .insert(key.clone(), (keys, client.clone()))
            .is_some()
        {
            tracing::info!(
                region = key.region,
                "aws credentials changed; new sqs client"
            );
        }
        Ok(client)
    }

    async fn build(&self, key: &ClientKey, keys: Option<&ResolvedKeys>) -> aws_sdk_sqs::Client {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(key.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.timeout)
                    .operation_attempt_timeout(self.timeout)
                    .build(),
            )
            // One quick retry: a throttled or failing endpoint must give an error within the
            // caller's deadline, not a silent wait.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(2)
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_millis(200)),
            );
        if let Some(k) = keys {
            loader = loader.credentials_provider(Credentials::new(
                k.access_key_id.clone(),
                k.secret_access_key.clone(),
                k.session_token.clone(),
                None,
                "headroom-trigger-metadata",
            ));
        }
        let mut config = loader.load().await;
        if let Some(role) = &key.identity.role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(role.clone())
                .session_name("headroom-scaler")
                .configure(&config)
                .build()
                .await;
            config = config
                .into_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build();
        }
        let mut builder = aws_sdk_sqs::config::Builder::from(&config);
        if let Some(endpoint) = &key.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        aws_sdk_sqs::Client::from_conf(builder.build())
    }

    /// The URL of a queue given by name (GetQueueUrl once, then remembered).
    async fn resolve(
        &self,
        client: &aws_sdk_sqs::Client,
        q: &SqsQuery,
    ) -> Result<String, SourceError> {
        if let Some(url) = self.lock_urls().get(q).cloned() {
            return Ok(url);
        }
        let out = client
            .get_queue_url()
            .queue_name(&q.queue)
            .send()
            .await
            .map_err(|e| classify(q, e))?;
        let url = out
            .queue_url()
            .ok_or_else(|| SourceError::Protocol {
                endpoint: q.label(),
                detail: "GetQueueUrl answered without a URL".into(),
            })?
            .to_string();
        self.lock_urls().insert(q.clone(), url.clone());
        Ok(url)
    }

    fn forget(&self, q: &SqsQuery) {
        self.lock_urls().remove(q);
    }

    fn lock_urls(&self) -> std::sync::MutexGuard<'_, BoundedMap<SqsQuery, String>> {
        self.urls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs = Vec<(&'static str, &'static str)>;
    use std::collections::HashMap;

    use crate::metadata::md;

    fn parse(pairs: &[(&str, &str)]) -> Result<SqsMetadata, Vec<String>> {
        let m = md(pairs);
        let mut r = Reader::new(&m).in_namespace("apps");
        let meta = SqsMetadata::parse(&mut r);
        match r.finish(&|_| None) {
            Ok(()) => meta.ok_or_else(Vec::new),
            Err(e) => Err(e.keys().into_iter().map(String::from).collect()),
        }
    }

    const PROPER: &str = "https://sqs.eu-west-1.amazonaws.com/account_id/DeleteArtifactQ";

    #[test]
    fn static_keys_may_name_secrets() {
        let m = parse(&[
            ("queueURL", PROPER),
            ("awsRegion", "eu-west-1"),
            ("awsAccessKeyIDSecret", "apps/aws/id"),
            ("awsSecretAccessKeySecret", "apps/aws/secret"),
            ("awsSessionTokenSecret", "apps/aws/token"),
        ])
        .unwrap();
        let k = m.identity.static_keys.as_ref().unwrap();
        let named = |c: &Credential| c.secret_key().unwrap().reference.to_string();
        assert_eq!(named(&k.access_key_id), "apps/aws/id");
        assert_eq!(named(&k.secret_access_key), "apps/aws/secret");
        assert_eq!(named(k.session_token.as_ref().unwrap()), "apps/aws/token");
        assert_eq!(
            m.identity.to_string(),
            "access key from Secret key apps/aws/id"
        );
        // A plain secret key stays refused, whatever else is given.
        let err = parse(&[
            ("queueURL", PROPER),
            ("awsRegion", "eu-west-1"),
            ("awsAccessKeyID", "AKIA"),
            ("awsSecretAccessKey", "plain"),
        ])
        .unwrap_err();
        assert!(err.contains(&"awsSecretAccessKey".to_string()), "{err:?}");
    }

    /// KEDA's `testAWSSQSMetadata` table (aws_sqs_queue_scaler_test.go), replayed with the keys
    /// an external trigger receives: authentication parameters never reach an external scaler,
    /// so KEDA's static keys become `awsAccessKeyID` + `awsSecretAccessKeyFromEnv`, and its pod
    /// identity cases become the scaler's own identity (no keys).
    #[test]
    fn keda_metadata_table_parses_the_same() {
        let keys = [
            ("awsAccessKeyID", "none"),
            ("awsSecretAccessKeyFromEnv", "none"),
        ];
        let with_keys = |extra: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = extra.to_vec();
            v.extend(keys);
            v
        };
        let cases: Vec<(Pairs, bool, &str)> = vec![
            (with_keys(&[]), true, "metadata empty"),
            (
                with_keys(&[
                    ("queueURL", PROPER),
                    ("queueLength", "1"),
                    ("awsRegion", "eu-west-1"),
                ]),
                false,
                "properly formed queue and region",
            ),
            (
                with_keys(&[
                    ("queueURL", PROPER),
                    ("queueLength", "1"),
                    ("awsRegion", "eu-west-1"),
                    ("awsEndpoint", "http://localhost:4566"),
                ]),
                false,
                "custom endpoint",
            ),
            (
                with_keys(&[
                    ("queueURL", "https://sqs.eu-west-1.amazonaws.com/account_id"),
                    ("queueLength", "1"),
                    ("awsRegion", "eu-west-1"),
                ]),
                true,
                "improperly formed queue, missing queueName",
            ),
            (
                with_keys(&[
                    ("queueURL", "https://sqs.eu-west-1.amazonaws.com"),
                    ("queueLength", "1"),
                    ("awsRegion", "eu-west-1"),
                ]),
                true,
                "improperly formed queue, missing path",
            ),
            (
                with_keys(&[
                    ("queueURL", PROPER),
                    ("queueLength", "1"),
                    ("awsRegion", ""),
                ]),
                true,
                "properly formed queue, empty region",
            ),
            (
                with_keys(&[
                    ("queueURL", PROPER),
                    ("queueLength", "a"),
                    ("awsRegion", "eu-west-1"),
                ]),
                true,
                "invalid integer value for queueLength",
            ),
            (
                with_keys(&[
                    ("queueURL", PROPER),
                    ("queueLength", "1"),
                    ("activationQueueLength", "1"),
                    ("awsRegion", "eu-west-1"),
                ]),
                false,
                "integer activationQueueLength",
            ),
            (
                with_keys(&[
                    ("queueURL", PROPER),
                    ("queueLength", "1"),
                    ("activationQueueLength", "a"),
                    ("awsRegion", "eu-west-1"),
                ]),
                true,
                "invalid integer value for activationQueueLength",
            ),
            (
                vec![
                    ("queueURL", PROPER),
                    ("awsRegion", "eu-west-1"),
                    ("awsAccessKeyID", "none"),
                    ("awsSecretAccessKeyFromEnv", "none"),
                    ("awsSessionTokenFromEnv", "none"),
                ],
                false,
                "temporary credentials",
            ),
            (
                vec![
                    ("queueURL", PROPER),
                    ("awsRegion", "eu-west-1"),
                    ("awsSecretAccessKeyFromEnv", "none"),
                ],
                true,
                "static credentials, missing access key id",
            ),
            (
                vec![
                    ("queueURL", PROPER),
                    ("awsRegion", "eu-west-1"),
                    ("awsAccessKeyID", "none"),
                ],
                true,
                "static credentials, missing secret access key",
            ),
            (
                vec![("queueURL", PROPER), ("awsRegion", "eu-west-1")],
                false,
                "the scaler's own identity (pod identity in KEDA)",
            ),
            (
                vec![
                    ("queueURL", PROPER),
                    ("awsRegion", "eu-west-1"),
                    ("identityOwner", "operator"),
                ],
                false,
                "identity of the operator",
            ),
            (
                vec![
                    ("queueURL", PROPER),
                    ("awsRegion", "eu-west-1"),
                    ("awsRoleArn", "arn:aws:iam::123456789012:role/reader"),
                ],
                false,
                "role to assume",
            ),
            (
                with_keys(&[
                    ("queueURL", "my-queue"),
                    ("queueLength", "1"),
                    ("awsRegion", "eu-west-1"),
                ]),
                false,
                "bare queue name",
            ),
            (
                with_keys(&[
                    ("queueURL", "my-queue"),
                    ("awsRegion", "eu-west-1"),
                    ("scaleOnInFlight", "false"),
                ]),
                false,
                "scaleOnInFlight false",
            ),
            (
                with_keys(&[("queueURLFromEnv", PROPER), ("awsRegion", "eu-west-1")]),
                false,
                "queue URL loaded from env",
            ),
            (
                with_keys(&[("queueLength", "1"), ("awsRegion", "eu-west-1")]),
                true,
                "missing queue url from both queueURL and queueURLFromEnv",
            ),
            (
                with_keys(&[("queueURLFromEnv", ""), ("awsRegion", "eu-west-1")]),
                true,
                "empty QUEUE_URL env value",
            ),
        ];
        for (pairs, is_error, comment) in cases {
            let got = parse(&pairs);
            assert_eq!(got.is_err(), is_error, "{comment}: {got:?}");
        }
    }

    #[test]
    fn metric_names_match_keda() {
        let m = parse(&[("queueURL", PROPER), ("awsRegion", "eu-west-1")]).unwrap();
        assert_eq!(
            crate::metadata::normalize_metric_name(&m.metric_name()),
            "aws-sqs-deleteartifactq"
        );
        let m = parse(&[("queueURL", "my.queue"), ("awsRegion", "eu-west-1")]).unwrap();
        assert_eq!(m.metric_name(), "aws-sqs-my.queue");
    }

    #[test]
    fn queue_names_follow_go_parse_request_uri() {
        for (value, want) in [
            (PROPER, Ok("DeleteArtifactQ")),
            ("https://host//q", Ok("q")),
            ("https://host/acc/q?x=1", Ok("q")),
            ("https://host/acc/q%20x", Ok("q x")),
            ("/acc/q", Ok("q")),
            ("my-queue", Ok("my-queue")),
            ("sqs.amazonaws.com/123/q", Ok("sqs.amazonaws.com/123/q")),
            ("q.fifo", Ok("q.fifo")),
            ("https://host/acc/q/", Err(())),
            ("https://host/acc", Err(())),
            ("https://host", Err(())),
            ("mailto:x", Err(())),
        ] {
            let got = queue_name(value).map_err(|_| ());
            assert_eq!(got, want.map(String::from), "{value:?}");
        }
        // What Go refuses to parse is a bare name.
        assert_eq!(
            queue_name("https://host:port/a/q").unwrap(),
            "https://host:port/a/q"
        );
        assert_eq!(
            queue_name("https://host/a/%zz").unwrap(),
            "https://host/a/%zz"
        );
    }

    /// KEDA's `awsSQSGetMetricTestData`: 200 visible, 100 not visible, 50 delayed.
    #[test]
    fn values_add_the_counters_the_flags_ask_for() {
        let d = Depth {
            waiting: 200,
            in_flight: 100,
            delayed: 50,
            ..Depth::default()
        };
        for (in_flight, delayed, want) in [
            ("false", "false", 200),
            ("true", "false", 300),
            ("false", "true", 250),
            ("true", "true", 350),
        ] {
            let m = parse(&[
                ("queueURL", PROPER),
                ("awsRegion", "eu-west-1"),
                ("scaleOnInFlight", in_flight),
                ("scaleOnDelayed", delayed),
            ])
            .unwrap();
            assert_eq!(m.value(&d), want, "{in_flight} {delayed}");
        }
        let m = parse(&[("queueURL", PROPER), ("awsRegion", "eu-west-1")]).unwrap();
        assert_eq!(m.value(&d), 300, "defaults: in flight on, delayed off");
        let big = Depth::simple(2_147_483_648, 0);
        assert_eq!(m.value(&big), 2_147_483_648, "64-bit values");
    }

    /// KEDA's `TestProcessQueueLengthFromSqsQueueAttributesOutput`.
    #[test]
    fn attributes_are_counts_or_errors() {
        let attrs = |v: &[(&str, &str)]| -> HashMap<QueueAttributeName, String> {
            v.iter()
                .map(|(k, v)| (QueueAttributeName::from(*k), v.to_string()))
                .collect()
        };
        let all = |n: &str| {
            attrs(&[
                ("ApproximateNumberOfMessages", n),
                ("ApproximateNumberOfMessagesNotVisible", "0"),
                ("ApproximateNumberOfMessagesDelayed", "0"),
            ])
        };
        assert_eq!(counters(Some(&all("1"))), Ok((1, 0, 0)));
        assert!(counters(Some(&attrs(&[]))).is_err(), "missing");
        assert!(counters(None).is_err(), "no attributes at all");
        assert!(counters(Some(&all("NotInt"))).is_err(), "invalid");
        assert_eq!(
            counters(Some(&all("2147483647"))),
            Ok((2_147_483_647, 0, 0))
        );
        assert_eq!(
            counters(Some(&all("2147483648"))),
            Ok((2_147_483_648, 0, 0))
        );
        let err = counters(Some(&attrs(&[("ApproximateNumberOfMessages", "3")]))).unwrap_err();
        assert!(
            err.contains("ApproximateNumberOfMessagesNotVisible"),
            "{err}"
        );
    }

    #[test]
    fn secrets_only_come_from_the_environment_and_never_show() {
        let err = parse(&[
            ("queueURL", "q"),
            ("awsRegion", "r"),
            ("awsAccessKeyID", "AKIA"),
            ("awsSecretAccessKey", "hunter2"),
        ])
        .unwrap_err();
        assert!(err.contains(&"awsSecretAccessKey".to_string()), "{err:?}");
        let m = parse(&[
            ("queueURL", "q"),
            ("awsRegion", "r"),
            ("awsAccessKeyIdFromEnv", "AKIA"),
            ("awsSecretAccessKeyFromEnv", "hunter2"),
        ])
        .unwrap();
        let shown = format!("{:?} {} {:?}", m, m.identity, m.query());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            parse(&[
                ("queueURL", "q"),
                ("awsRegion", "r"),
                ("identityOwner", "operator"),
                ("awsAccessKeyID", "A"),
                ("awsSecretAccessKeyFromEnv", "s"),
            ])
            .is_err()
        );
        assert_eq!(
            parse(&[("queueURL", "q"), ("awsRegion", "r"), ("queueLength", "0")]).unwrap_err(),
            ["queueLength"]
        );
    }

    #[test]
    fn triggers_with_other_thresholds_share_one_query() {
        let a = parse(&[("queueURL", PROPER), ("awsRegion", "eu-west-1")]).unwrap();
        let b = parse(&[
            ("queueURL", PROPER),
            ("awsRegion", "eu-west-1"),
            ("queueLength", "9"),
            ("scaleOnDelayed", "true"),
        ])
        .unwrap();
        assert_eq!(a.query(), b.query());
        let c = parse(&[
            ("queueURL", PROPER),
            ("awsRegion", "eu-west-1"),
            ("awsRoleArn", "arn:aws:iam::1:role/x"),
        ])
        .unwrap();
        assert_ne!(a.query(), c.query(), "another identity is another client");
    }
}
