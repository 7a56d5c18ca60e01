//! What a caller may make the scaler reach: Secrets in other namespaces, and backends.
//!
//! The scaler answers whoever reaches its gRPC port, and the namespace a call names is the
//! caller's word: KEDA's, when the port only admits KEDA (the chart's NetworkPolicy, and mTLS
//! with `--tls-client-ca`, which makes the caller's identity a certificate rather than a packet).
//! Two operator rules bound what any trigger can do, checked when its metadata is parsed, before
//! anything is read or any credential is sent:
//!
//! - **Secrets**: a `<key>Secret` reference names a Secret in the ScaledObject's own namespace,
//!   or in one of `--shared-secret-namespaces` (none by default). Any other namespace is refused
//!   (`PERMISSION_DENIED`, naming the key), so `passwordSecret: kube-system/x/token` with
//!   `address: evil:6379` sends nothing anywhere.
//! - **Backends**: when `--allowed-backends` is set, every endpoint a trigger names (`address`,
//!   `host`, `url`, `bootstrapServers`, `queueURL`, `awsEndpoint`, and the regional SQS endpoint
//!   that `awsRegion` implies) must match one of its rules; a refused one is `PERMISSION_DENIED`
//!   naming the key. Unset, any backend may be named (the default, as for KEDA's built-in
//!   scalers).
//!
//! Backend rules, comma-separated:
//!
//! | rule | matches |
//! |---|---|
//! | `redis.queues.svc.cluster.local` | that host name exactly (case-insensitive, any port) |
//! | `*.queues.svc.cluster.local` | any host name under that domain (not the domain itself) |
//! | `10.0.0.0/8`, `fd00::/8`, `10.1.2.3` | a host given as an IP literal inside that range |
//! | `https://sqs.eu-west-1.amazonaws.com/123456789012/` | a URL-valued key (`url`, `queueURL`, `awsEndpoint`) that starts with it, at a path boundary |
//!
//! Host names are compared as names: nothing is resolved, so an IP range only matches hosts
//! given as IP literals. Kafka brokers that a bootstrap server advertises are the cluster's own
//! and are not checked.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// The operator's rules. [`Access::default`]: Secrets only in the ScaledObject's namespace, any
/// backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    shared_secret_namespaces: BTreeSet<String>,
    /// `None`: any backend.
    backends: Option<Vec<Rule>>,
}

/// The default rules, for parsers that are given none.
pub static DEFAULT: Access = Access {
    shared_secret_namespaces: BTreeSet::new(),
    backends: None,
};

/// One backend rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Host(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Cidr(IpAddr, u8),
    /// A URL prefix (scheme and authority lower-cased) and its host, which must also be the
    /// host the client connects to: a URL that two parsers read differently matches neither.
    UrlPrefix {
        prefix: String,
        host: String,
    },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Host(h) => f.write_str(h),
            Rule::Suffix(s) => write!(f, "*{s}"),
            Rule::Cidr(ip, len) => write!(f, "{ip}/{len}"),
            Rule::UrlPrefix { prefix, .. } => f.write_str(prefix),
        }
    }
}

/// An endpoint a trigger names, for [`Access::check_backend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The metadata key that names it (`address`, `bootstrapServers`, `awsEndpoint`, ...).
    pub key: &'static str,
    /// The host the client will connect to: a name or an IP literal (no brackets).
    pub host: String,
    /// The URL, for URL-valued keys (never with credentials in it).
    pub url: Option<String>,
}

/// Bad operator configuration: the flag and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct AccessConfigError {
    pub flag: &'static str,
    pub reason: String,
}

impl Access {
    /// Builds the rules from `--shared-secret-namespaces` and `--allowed-backends` (each a
    /// comma-separated list; `None` or empty: none shared, any backend).
    pub fn new(
        shared_secret_namespaces: Option<&str>,
        allowed_backends: Option<&str>,
    ) -> Result<Self, Vec<AccessConfigError>> {
        let mut errors = Vec::new();
        let mut shared = BTreeSet::new();
        for ns in list(shared_secret_namespaces) {
            if crate::secrets::is_dns_label(ns) {
                shared.insert(ns.to_string());
            } else {
                errors.push(AccessConfigError {
                    flag: "--shared-secret-namespaces",
                    reason: format!("{ns:?} is not a namespace name"),
                });
            }
        }
        let mut rules = Vec::new();
        for r in list(allowed_backends) {
            match Rule::parse(r) {
                Ok(rule) => rules.push(rule),
                Err(reason) => errors.push(AccessConfigError {
                    flag: "--allowed-backends",
                    reason: format!("{r:?}: {reason}"),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            shared_secret_namespaces: shared,
            backends: (!rules.is_empty()).then_some(rules),
        })
    }

    /// Why a `<key>Secret` reference to `secret_namespace` may not be read by a trigger of a
    /// ScaledObject in `own_namespace` (empty when unknown); `None` when it may.
    pub fn check_secret(&self, own_namespace: &str, secret_namespace: &str) -> Option<String> {
        if secret_namespace == own_namespace
            || self.shared_secret_namespaces.contains(secret_namespace)
        {
            return None;
        }
        let own = if own_namespace.is_empty() {
            "the ScaledObject's namespace (unknown here)".to_string()
        } else {
            format!("the ScaledObject's namespace ({own_namespace})")
        };
        let shared = if self.shared_secret_namespaces.is_empty() {
            String::new()
        } else {
            let list: Vec<&str> = self
                .shared_secret_namespaces
                .iter()
                .map(String::as_str)
                .collect();
            format!(" or in the shared namespaces ({})", list.join(", "))
        };
        Some(format!(
            "Secrets are read only in {own}{shared}, not in {secret_namespace} \
             (the scaler's --shared-secret-namespaces)"
        ))
    }

    /// Why `endpoint` may not be named; `None` when it may.
    pub fn check_backend(&self, endpoint: &Endpoint) -> Option<String> {
        let rules = self.backends.as_ref()?;
        let host = normalize_host(&endpoint.host);
        let ip = parse_ip(&host);
        let url = endpoint.url.as_deref().map(normalize_url);
        let allowed = rules.iter().any(|rule| match rule {
            Rule::Host(h) => ip.is_none() && host == *h,
            Rule::Suffix(s) => ip.is_none() && host.len() > s.len() && host.ends_with(s.as_str()),
            Rule::Cidr(net, len) => ip.is_some_and(|ip| in_cidr(ip, *net, *len)),
            // A host-only endpoint (Kafka's servers, the regional SQS endpoint an `awsRegion`
            // implies) matches by host: the operator named it.
            Rule::UrlPrefix { prefix, host: h } => {
                *h == host && url.as_deref().is_none_or(|u| url_has_prefix(u, prefix))
            }
        });
        if allowed {
            return None;
        }
        let list: Vec<String> = rules.iter().map(ToString::to_string).collect();
        Some(format!(
            "backend {:?} is not in the scaler's --allowed-backends ({})",
            endpoint.url.as_deref().unwrap_or(&endpoint.host),
            list.join(", ")
        ))
    }
}

fn list(s: Option<&str>) -> impl Iterator<Item = &str> {
    s.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl Rule {
    fn parse(s: &str) -> Result<Self, String> {
        if s.contains("://") {
            let u = normalize_url(s);
            let authority = split_url(&u).map(|(_, a, _)| a).unwrap_or_default();
            if authority.contains('@') {
                return Err("a URL prefix may not hold credentials".into());
            }
            let host = authority_host(authority).ok_or("a URL prefix needs a host")?;
            return Ok(Rule::UrlPrefix { prefix: u, host });
        }
        if let Some((ip, len)) = s.split_once('/') {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| "not an IP range (ip/len)".to_string())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("prefix length must be 0 to {max}"))?;
            return Ok(Rule::Cidr(canonical_ip(ip), len));
        }
        if let Some(ip) = parse_ip(s) {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Rule::Cidr(ip, len));
        }
        let host = normalize_host(s);
        if let Some(domain) = host.strip_prefix("*.") {
            if valid_host_name(domain) {
                return Ok(Rule::Suffix(format!(".{domain}")));
            }
            return Err("not a host name pattern (*.domain)".into());
        }
        if valid_host_name(&host) {
            Ok(Rule::Host(host))
        } else {
            Err("not a host name, IP range or URL prefix".into())
        }
    }
}

fn normalize_host(h: &str) -> String {
    let h = h.trim().trim_start_matches('[').trim_end_matches(']');
    h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
}

fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn parse_ip(h: &str) -> Option<IpAddr> {
    h.parse::<IpAddr>().ok().map(canonical_ip)
}

fn in_cidr(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A URL's scheme, authority and the rest (path, query, fragment), as given.
fn split_url(u: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = u.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

/// The host an authority names (no brackets, lower case); `None` when it names none, or holds
/// user info (`allowed@evil`), which no backend URL needs.
fn authority_host(authority: &str) -> Option<String> {
    if authority.contains(['@', '\\']) {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    let host = normalize_host(host);
    (!host.is_empty()).then_some(host)
}

/// Scheme and authority lower-cased; the path as given.
fn normalize_url(u: &str) -> String {
    let u = u.trim();
    match split_url(u) {
        Some((scheme, authority, rest)) => format!(
            "{}://{}{rest}",
            scheme.to_ascii_lowercase(),
            authority.to_ascii_lowercase()
        ),
        None => u.to_string(),
    }
}

/// `u` starts with `prefix` and the match ends where a URL part ends: `https://a.com` does not
/// admit `https://a.com.evil.net/` nor `https://a.com@evil.net/`.
fn url_has_prefix(u: &str, prefix: &str) -> bool {
    let Some(rest) = u.strip_prefix(prefix) else {
        return false;
    };
    let boundary = prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#']);
    boundary && split_url(u).is_none_or(|(_, authority, _)| !authority.contains('@'))
}

/// The host of an `http(s)://` URL as a client connects to it; `None` when it has none, or has
/// user info.
pub fn url_host(u: &str) -> Option<String> {
    split_url(u.trim()).and_then(|(_, authority, _)| authority_host(authority))
}

/// The host of a `host:port` (or `[v6]:port`) server.
pub fn server_host(s: &str) -> String {
    let s = s.trim();
    let host = match s.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => s.rsplit_once(':').map_or(s, |(h, _)| h),
    };
    normalize_host(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(key: &'static str, host: &str, url: Option<&str>) -> Endpoint {
        Endpoint {
            key,
            host: host.into(),
            url: url.map(Into::into),
        }
    }

    #[test]
    fn by_default_secrets_are_read_only_in_the_scaled_objects_namespace() {
        let a = Access::default();
        assert_eq!(a.check_secret("apps", "apps"), None);
        let why = a.check_secret("apps", "kube-system").unwrap();
        assert!(why.contains("apps") && why.contains("kube-system"), "{why}");
        // Unknown namespace: only shared namespaces could be named.
        assert!(a.check_secret("", "apps").is_some());
    }

    #[test]
    fn shared_secret_namespaces_are_readable_from_any_namespace() {
        let a = Access::new(Some("queues, shared"), None).unwrap();
        assert_eq!(a.check_secret("apps", "queues"), None);
        assert_eq!(a.check_secret("", "shared"), None);
        assert!(a.check_secret("apps", "kube-system").is_some());
    }

    #[test]
    fn without_an_allow_list_any_backend_may_be_named() {
        let a = Access::default();
        assert_eq!(a.check_backend(&ep("address", "evil.example", None)), None);
    }

    #[test]
    fn backend_rules_match_hosts_domains_ranges_and_url_prefixes_only() {
        let a = Access::new(
            None,
            Some("redis.queues.svc, *.kafka.svc, 10.0.0.0/8, fd00::/8, https://sqs.eu-west-1.amazonaws.com/123/"),
        )
        .unwrap();
        let allowed = [
            ep("address", "redis.queues.svc", None),
            ep("address", "REDIS.Queues.svc.", None),
            ep("bootstrapServers", "b-1.kafka.svc", None),
            ep("host", "10.1.2.3", None),
            ep("host", "::ffff:10.1.2.3", None),
            ep("host", "fd00::1", None),
            ep(
                "queueURL",
                "sqs.eu-west-1.amazonaws.com",
                Some("https://SQS.eu-west-1.amazonaws.com/123/jobs"),
            ),
        ];
        for e in &allowed {
            assert_eq!(a.check_backend(e), None, "{e:?}");
        }
        let refused = [
            ep("address", "evil.example", None),
            ep("address", "redis.queues.svc.evil.example", None),
            ep("address", "xredis.queues.svc", None),
            // The domain itself is not under it.
            ep("bootstrapServers", "kafka.svc", None),
            ep("host", "11.0.0.1", None),
            ep("host", "fe80::1", None),
            // A name is never matched by a range (nothing is resolved).
            ep("host", "localhost", None),
            ep(
                "awsEndpoint",
                "sqs.eu-west-1.amazonaws.com",
                Some("https://sqs.eu-west-1.amazonaws.com/999/"),
            ),
            ep(
                "awsEndpoint",
                "evil.example",
                Some("https://sqs.eu-west-1.amazonaws.com/123/@evil.example/"),
            ),
        ];
        for e in &refused {
            let why = a.check_backend(e).expect("refused");
            assert!(why.contains("--allowed-backends"), "{why}");
        }
    }

    #[test]
    fn a_url_prefix_must_end_at_a_boundary_and_admits_no_userinfo() {
        let a = Access::new(None, Some("https://sqs.local:4566")).unwrap();
        assert_eq!(
            a.check_backend(&ep(
                "awsEndpoint",
                "sqs.local",
                Some("https://sqs.local:4566")
            )),
            None
        );
        assert_eq!(
            a.check_backend(&ep(
                "awsEndpoint",
                "sqs.local",
                Some("https://sqs.local:4566/")
            )),
            None
        );
        for u in [
            "https://sqs.local:45666",
            "https://sqs.local:4566.evil.example/",
            "https://sqs.local:4566@evil.example/",
            "http://sqs.local:4566",
        ] {
            assert!(
                a.check_backend(&ep("awsEndpoint", "x", Some(u))).is_some(),
                "{u}"
            );
        }
    }

    #[test]
    fn bad_rules_are_all_reported_with_their_flag() {
        let errors = Access::new(
            Some("Kube_System"),
            Some("10.0.0.0/33, https:///x, no spaces allowed, *., https://u:p@h/"),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert_eq!(errors[0].flag, "--shared-secret-namespaces");
        assert!(errors[1..].iter().all(|e| e.flag == "--allowed-backends"));
    }
}
