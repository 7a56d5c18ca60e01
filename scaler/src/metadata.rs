//! Trigger metadata as KEDA sends it, read with KEDA's parsing rules.
//!
//! KEDA forwards every key of a trigger's `metadata` verbatim, and a `<key>FromEnv` key arrives
//! with the value already resolved from the scale target's environment. The rules here are KEDA's
//! own: values are trimmed and an empty value counts as missing; integers must be integers
//! (`"5.0"` is an error); booleans are Go's `strconv.ParseBool` set.
//!
//! Unlike KEDA, a key that no part of Headroom reads is an error: a misspelt `listLenght` would
//! otherwise silently scale on the default.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::access::Access;
use crate::secrets::{Credential, SECRET, SecretRef};

/// Keys KEDA itself reads from an `external` / `external-push` trigger (the connection to the
/// scaler). They reach the scaler too and are accepted without meaning anything to it — except
/// `enableTLS` and `unsafeSsl`, which the Redis sources also read (see their docs).
pub const KEDA_EXTERNAL_KEYS: &[&str] = &[
    "scalerAddress",
    "caCert",
    "tlsCertFile",
    "tlsClientCert",
    "tlsClientKey",
    "enableTLS",
    "unsafeSsl",
];

/// Suffix of keys whose value KEDA resolved from the workload's environment.
pub const FROM_ENV: &str = "FromEnv";

/// One metadata key a parser reads: the user reference for it. Each source (and planned mode,
/// and the trigger itself) declares its keys once, in a table of these next to its parser;
/// the docs' key tables are rendered from them ([`crate::docs`], a test fails on drift), the
/// hints on unknown keys come from them, and [`crate::trigger::Trigger::parse`] checks (in
/// debug builds) that a parser reads no key its tables do not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key as written in the trigger's `metadata` (its `FromEnv` and `Secret` forms are
    /// the same key).
    pub name: &'static str,
    pub default: KeyDefault,
    /// What it means, as one Markdown table cell.
    pub doc: &'static str,
}

/// What a key is when it is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// The trigger is refused without it.
    Required,
    /// Its default, as the docs show it (Markdown: `` `celery` ``, `5`, `none`).
    Is(&'static str),
}

impl Key {
    pub const fn required(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            default: KeyDefault::Required,
            doc,
        }
    }

    pub const fn optional(name: &'static str, default: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            default: KeyDefault::Is(default),
            doc,
        }
    }
}

/// Whether `key` (or its `FromEnv` or `Secret` form) is one of `tables`' keys.
pub fn declared(tables: &[&[Key]], key: &str) -> bool {
    let base = key
        .strip_suffix(FROM_ENV)
        .or_else(|| key.strip_suffix(SECRET))
        .unwrap_or(key);
    tables
        .iter()
        .flat_map(|t| t.iter())
        .any(|k| k.name == key || k.name == base)
}

/// Whether a key carries a secret: its value never appears in an error or a log line.
pub fn is_secret_key(key: &str) -> bool {
    let base = key.strip_suffix(FROM_ENV).unwrap_or(key);
    let lower = base.to_ascii_lowercase();
    lower.contains("password")
        || lower.contains("secret")
        || lower.contains("token")
        || lower == "key"
        || lower == "url"
        || lower == "address"
}

/// One problem with one key of a trigger's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A required key is absent (or empty).
    Missing { key: String },
    /// A value could not be read as the type the key needs.
    Invalid {
        key: String,
        /// The offending value, or `None` when the key holds a secret.
        value: Option<String>,
        expected: String,
    },
    /// A key that nothing reads.
    Unknown { key: String, hint: Option<String> },
    /// Keys that cannot be given together, or a rule across keys.
    Conflict { keys: Vec<String>, reason: String },
    /// A value the operator's rules refuse (a Secret in another namespace, a backend outside
    /// the allow-list: [`crate::access`]). Answered `PERMISSION_DENIED`.
    NotAllowed { key: String, reason: String },
    /// A value over one of the scaler's input bounds ([`crate::bounds`]).
    TooLarge { key: String, bound: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { key } => write!(f, "missing required key `{key}`"),
            Problem::Invalid {
                key,
                value: Some(value),
                expected,
            } => {
                // A value can be 32 KiB: the error (a KEDA condition, a log line) shows its start.
                const SHOWN: usize = 120;
                if value.len() > SHOWN {
                    let cut = (0..=SHOWN)
                        .rev()
                        .find(|i| value.is_char_boundary(*i))
                        .unwrap_or(0);
                    write!(
                        f,
                        "key `{key}`: {:?}… ({} bytes) is not {expected}",
                        &value[..cut],
                        value.len()
                    )
                } else {
                    write!(f, "key `{key}`: {value:?} is not {expected}")
                }
            }
            Problem::Invalid {
                key,
                value: None,
                expected,
            } => write!(f, "key `{key}`: value (hidden) is not {expected}"),
            Problem::Unknown { key, hint: None } => write!(f, "unknown key `{key}`"),
            Problem::Unknown {
                key,
                hint: Some(hint),
            } => write!(f, "unknown key `{key}` ({hint})"),
            Problem::Conflict { keys, reason } => {
                let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
                write!(f, "keys {}: {reason}", keys.join(", "))
            }
            Problem::NotAllowed { key, reason } => write!(f, "key `{key}`: {reason}"),
            Problem::TooLarge { key, bound } => write!(f, "key `{key}`: over the bound: {bound}"),
        }
    }
}

/// Everything wrong with a trigger's metadata, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MetadataError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid trigger metadata: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl MetadataError {
    /// Whether the operator's rules refused a value (`PERMISSION_DENIED` rather than
    /// `INVALID_ARGUMENT`).
    pub fn is_refusal(&self) -> bool {
        self.problems
            .iter()
            .any(|p| matches!(p, Problem::NotAllowed { .. }))
    }

    pub fn one(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }

    /// The keys named by the problems, for tests and `check`.
    pub fn keys(&self) -> Vec<&str> {
        self.problems
            .iter()
            .flat_map(|p| match p {
                Problem::Missing { key }
                | Problem::Invalid { key, .. }
                | Problem::Unknown { key, .. }
                | Problem::NotAllowed { key, .. }
                | Problem::TooLarge { key, .. } => vec![key.as_str()],
                Problem::Conflict { keys, .. } => keys.iter().map(String::as_str).collect(),
            })
            .collect()
    }
}

/// A reader over one trigger's metadata that records every problem instead of stopping at the
/// first, and remembers which keys were read so that the rest can be reported as unknown.
///
/// Getters return `None` (or the default) after recording a problem, so a parser can go on and
/// find the next one; [`Reader::finish`] turns the record into the result.
#[derive(Debug)]
pub struct Reader<'a> {
    /// Trimmed, non-empty values by key.
    values: BTreeMap<&'a str, &'a str>,
    read: Vec<&'a str>,
    problems: Vec<Problem>,
    /// The ScaledObject's namespace: where `<name>/<key>` Secret references point.
    namespace: Option<&'a str>,
    /// What the operator lets triggers name.
    access: &'a Access,
}

/// Whether a credential may be given as a plain metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// KEDA's built-in scaler accepts it in plain metadata (Redis `password`, `username`).
    Allowed,
    /// Only `<key>FromEnv` or `<key>Secret`: a plain value would put the secret in the
    /// ScaledObject for anyone who can read it.
    Forbidden,
}

impl<'a> Reader<'a> {
    pub fn new(metadata: &'a HashMap<String, String>) -> Self {
        let values = metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.trim()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        // Over a bound, nothing is parsed: a parser could amplify the input (ranges, lists).
        let problems: Vec<Problem> = crate::bounds::metadata_excess(metadata)
            .into_iter()
            .map(|(key, bound)| Problem::TooLarge { key, bound })
            .collect();
        let values = if problems.is_empty() {
            values
        } else {
            BTreeMap::new()
        };
        Self {
            values,
            read: Vec::new(),
            problems,
            namespace: None,
            access: &crate::access::DEFAULT,
        }
    }

    /// Sets the operator's rules (default: Secrets in the ScaledObject's namespace only).
    pub fn with_access(mut self, access: &'a Access) -> Self {
        self.access = access;
        self
    }

    /// The operator's rules.
    pub fn access(&self) -> &'a Access {
        self.access
    }

    /// Sets the ScaledObject's namespace, the default of `...Secret` references.
    pub fn in_namespace(mut self, namespace: &'a str) -> Self {
        self.namespace = (!namespace.is_empty()).then_some(namespace);
        self
    }

    pub fn problem(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The keys read so far, as given (with their `FromEnv` or `Secret` suffix).
    pub fn read_keys(&self) -> &[&'a str] {
        &self.read
    }

    fn mark(&mut self, key: &'a str) {
        if !self.read.contains(&key) {
            self.read.push(key);
        }
    }

    /// The raw value of `key` or of `<key>FromEnv`, trimmed; `None` when both are absent or empty.
    /// Both at once is a conflict: which one wins would be a guess.
    pub fn raw(&mut self, key: &str) -> Option<(&'a str, &'a str)> {
        let plain = self.values.get_key_value(key).map(|(k, v)| (*k, *v));
        let env_key = format!("{key}{FROM_ENV}");
        let from_env = self
            .values
            .get_key_value(env_key.as_str())
            .map(|(k, v)| (*k, *v));
        if let Some((k, _)) = plain {
            self.mark(k);
        }
        if let Some((k, _)) = from_env {
            self.mark(k);
        }
        match (plain, from_env) {
            (Some(p), Some(_)) => {
                self.problem(Problem::Conflict {
                    keys: vec![key.to_string(), env_key],
                    reason: "give one or the other".into(),
                });
                Some(p)
            }
            (p, e) => p.or(e),
        }
    }

    /// Whether `key` (or its `FromEnv` or `Secret` form) is present, without reading it.
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
            || self
                .values
                .contains_key(format!("{key}{FROM_ENV}").as_str())
            || self.values.contains_key(format!("{key}{SECRET}").as_str())
    }

    /// A credential: `<key>` (when `plain` allows it), `<key>FromEnv` (resolved by KEDA), or
    /// `<key>Secret` (`<namespace>/<name>/<key>` or `<name>/<key>`, read by the scaler from the
    /// Kubernetes API). More than one form is a conflict.
    pub fn credential(&mut self, key: &str, plain: Plain) -> Option<Credential> {
        let secret_key = format!("{key}{SECRET}");
        let reference = self
            .values
            .get_key_value(secret_key.as_str())
            .map(|(k, v)| (*k, *v));
        let given = match plain {
            Plain::Allowed => self.raw(key).map(|(k, v)| (k.to_string(), v.to_string())),
            Plain::Forbidden => self
                .secret_from_env(key)
                .map(|v| (format!("{key}{FROM_ENV}"), v)),
        };
        let Some((k, v)) = reference else {
            return given.map(|(_, v)| Credential::Value(v));
        };
        self.mark(k);
        if let Some((other, _)) = given {
            self.problem(Problem::Conflict {
                keys: vec![other, k.to_string()],
                reason: "give one or the other".into(),
            });
            return None;
        }
        match SecretRef::parse(v, self.namespace) {
            Ok(reference) => {
                let own = self.namespace.unwrap_or_default();
                if let Some(reason) = self.access.check_secret(own, &reference.namespace) {
                    self.problem(Problem::NotAllowed {
                        key: k.to_string(),
                        reason,
                    });
                    return None;
                }
                Some(Credential::secret(k, reference))
            }
            Err(why) => {
                // A reference names where a secret is, not the secret: safe to show.
                self.problem(Problem::Invalid {
                    key: k.to_string(),
                    value: Some(v.to_string()),
                    expected: format!("a Secret reference ({why})"),
                });
                None
            }
        }
    }

    pub fn string(&mut self, key: &str) -> Option<String> {
        self.raw(key).map(|(_, v)| v.to_string())
    }

    /// A secret that may only arrive resolved from the workload's environment (`<key>FromEnv`):
    /// a plain `<key>` would put the secret in the ScaledObject for anyone who can read it.
    pub fn secret_from_env(&mut self, key: &str) -> Option<String> {
        if let Some((k, _)) = self.values.get_key_value(key).map(|(k, v)| (*k, *v)) {
            self.mark(k);
            self.problem(Problem::Invalid {
                key: key.into(),
                value: None,
                expected: format!(
                    "accepted in plain metadata: secrets must come from the workload's environment, use `{key}{FROM_ENV}`"
                ),
            });
        }
        let env_key = format!("{key}{FROM_ENV}");
        let found = self
            .values
            .get_key_value(env_key.as_str())
            .map(|(k, v)| (*k, *v));
        found.map(|(k, v)| {
            self.mark(k);
            v.to_string()
        })
    }

    pub fn required_string(&mut self, key: &str) -> Option<String> {
        let v = self.string(key);
        if v.is_none() {
            self.problem(Problem::Missing { key: key.into() });
        }
        v
    }

    fn invalid(&mut self, key: &str, value: &str, expected: &str) {
        let value = (!is_secret_key(key)).then(|| value.to_string());
        self.problem(Problem::Invalid {
            key: key.into(),
            value,
            expected: expected.into(),
        });
    }

    /// A Go-`ParseInt`-style integer: optional sign, decimal digits, nothing else.
    pub fn int<T: std::str::FromStr + Copy>(&mut self, key: &str, default: T) -> T {
        match self.raw(key) {
            None => default,
            Some((k, v)) => match parse_int::<T>(v) {
                Some(n) => n,
                None => {
                    self.invalid(k, v, "an integer");
                    default
                }
            },
        }
    }

    /// An integer that must be at least `min`.
    pub fn int_at_least(&mut self, key: &str, default: i64, min: i64) -> i64 {
        let n = self.int(key, default);
        if n < min {
            self.problem(Problem::Invalid {
                key: key.into(),
                value: Some(n.to_string()),
                expected: format!("an integer ≥ {min}"),
            });
            return default;
        }
        n
    }

    /// A decimal number (Go `ParseFloat`): finite; used where KEDA accepts floats.
    pub fn float(&mut self, key: &str, default: f64) -> f64 {
        match self.raw(key) {
            None => default,
            Some((k, v)) => match v.parse::<f64>() {
                Ok(n) if n.is_finite() => n,
                _ => {
                    self.invalid(k, v, "a number");
                    default
                }
            },
        }
    }

    /// A Go `strconv.ParseBool` boolean.
    pub fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some((k, v)) => match parse_bool(v) {
                Some(b) => b,
                None => {
                    self.invalid(k, v, "a boolean (true or false)");
                    default
                }
            },
        }
    }

    /// Marks a key as understood without reading it (keys KEDA reads for itself).
    pub fn accept(&mut self, key: &str) {
        let found = self.values.get_key_value(key).map(|(k, _)| *k);
        if let Some(k) = found {
            self.mark(k);
        }
        let env_key = format!("{key}{FROM_ENV}");
        let found = self.values.get_key_value(env_key.as_str()).map(|(k, _)| *k);
        if let Some(k) = found {
            self.mark(k);
        }
    }

    /// The problems recorded so far, without judging unread keys.
    pub fn into_error(self) -> MetadataError {
        MetadataError {
            problems: self.problems,
        }
    }

    /// Reports every key that nothing read, with a hint when it is a key of another source, then
    /// returns all problems at once.
    pub fn finish(
        mut self,
        other_keys: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), MetadataError> {
        for key in KEDA_EXTERNAL_KEYS {
            self.accept(key);
        }
        let unknown: Vec<&str> = self
            .values
            .keys()
            .copied()
            .filter(|k| !self.read.contains(k))
            .collect();
        for key in unknown {
            let base = key
                .strip_suffix(FROM_ENV)
                .or_else(|| key.strip_suffix(SECRET))
                .unwrap_or(key);
            self.problems.push(Problem::Unknown {
                key: key.into(),
                hint: other_keys(base),
            });
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(MetadataError {
                problems: self.problems,
            })
        }
    }
}

/// Go's `strconv.ParseInt(s, 10, _)`: an optional sign then ASCII digits. Defined beside the
/// schedule parser, which needs it too, in the pure crate.
pub use headroom_policy::schedule::parse_int;

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// KEDA's metric name normalisation, made total: lower case, and every byte that is not an
/// ASCII letter, digit, `-` or `_` becomes `-` (KEDA replaces `/ . : % ( )` and spaces; other
/// bytes would give the HPA a name it cannot serve).
pub fn normalize_metric_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// Trigger metadata from `(key, value)` pairs, for the parsers' tests.
#[cfg(test)]
pub(crate) fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_go_parse_int() {
        for (s, want) in [
            ("5", Some(5i64)),
            (" 7 ", None), // trimming happens in the reader, not here
            ("-3", Some(-3)),
            ("+4", Some(4)),
            ("5.0", None),
            ("AA", None),
            ("", None),
            ("-", None),
            ("1e3", None),
            ("99999999999999999999", None),
        ] {
            assert_eq!(parse_int::<i64>(s), want, "{s:?}");
        }
    }

    #[test]
    fn booleans_follow_go_parse_bool() {
        for s in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(s), Some(true));
        }
        for s in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(s), Some(false));
        }
        for s in ["yes", "on", "tRUE", "2", ""] {
            assert_eq!(parse_bool(s), None, "{s:?}");
        }
    }

    #[test]
    fn values_are_trimmed_and_empty_counts_as_missing() {
        let m = md(&[("a", " 12 "), ("b", "   ")]);
        let mut r = Reader::new(&m);
        assert_eq!(r.int("a", 0i64), 12);
        assert_eq!(r.int("b", 9i64), 9);
        assert!(r.finish(&|_| None).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once_and_names_its_key() {
        let m = md(&[
            ("listLength", "5.0"),
            ("enableTLS", "yes"),
            ("listLenght", "3"),
        ]);
        let mut r = Reader::new(&m);
        r.int("listLength", 5i64);
        r.bool("enableTLS", false);
        r.required_string("listName");
        let err = r.finish(&|_| None).unwrap_err();
        assert_eq!(
            err.keys(),
            vec!["listLength", "enableTLS", "listName", "listLenght"]
        );
        let text = err.to_string();
        assert!(
            text.contains("`listLength`: \"5.0\" is not an integer"),
            "{text}"
        );
        assert!(text.contains("unknown key `listLenght`"), "{text}");
    }

    #[test]
    fn from_env_form_is_read_and_both_forms_conflict() {
        let m = md(&[("passwordFromEnv", "s3cret")]);
        let mut r = Reader::new(&m);
        assert_eq!(r.string("password").as_deref(), Some("s3cret"));
        assert!(r.finish(&|_| None).is_ok());

        let m = md(&[("password", "a"), ("passwordFromEnv", "b")]);
        let mut r = Reader::new(&m);
        r.string("password");
        let err = r.finish(&|_| None).unwrap_err();
        assert_eq!(err.keys(), vec!["password", "passwordFromEnv"]);
    }

    #[test]
    fn credentials_come_in_three_forms_and_only_one_at_a_time() {
        let read = |pairs: &[(&str, &str)], plain: Plain| {
            let m = md(pairs);
            let mut r = Reader::new(&m).in_namespace("apps");
            let c = r.credential("password", plain);
            (c, r.finish(&|_| None).map_err(|e| e.to_string()))
        };
        let (c, ok) = read(&[("password", "pw")], Plain::Allowed);
        assert_eq!(c, Some(Credential::Value("pw".into())));
        assert!(ok.is_ok());
        let (c, _) = read(&[("passwordFromEnv", "pw")], Plain::Forbidden);
        assert_eq!(c, Some(Credential::Value("pw".into())));
        let (c, ok) = read(&[("passwordSecret", "redis-auth/pw")], Plain::Forbidden);
        assert_eq!(
            c,
            Some(Credential::secret(
                "passwordSecret",
                SecretRef {
                    namespace: "apps".into(),
                    name: "redis-auth".into(),
                    key: "pw".into(),
                },
            ))
        );
        assert!(ok.is_ok());
        let (c, err) = read(
            &[("passwordFromEnv", "pw"), ("passwordSecret", "a/b/c")],
            Plain::Allowed,
        );
        assert_eq!(c, None);
        let err = err.unwrap_err();
        assert!(err.contains("`passwordFromEnv`, `passwordSecret`"), "{err}");
        assert!(!err.contains("pw\""), "{err}");
        let (_, err) = read(
            &[("password", "pw"), ("passwordSecret", "a/b/c")],
            Plain::Forbidden,
        );
        let err = err.unwrap_err();
        assert!(err.contains("`password`"), "{err}");
    }

    #[test]
    fn a_bad_secret_reference_is_named_and_shown() {
        let m = md(&[("passwordSecret", "only-a-name")]);
        let mut r = Reader::new(&m);
        assert_eq!(r.credential("password", Plain::Allowed), None);
        let err = r.finish(&|_| None).unwrap_err();
        assert_eq!(err.keys(), ["passwordSecret"]);
        assert!(
            err.to_string()
                .contains("\"only-a-name\" is not a Secret reference"),
            "{err}"
        );
        // Without the ScaledObject's namespace, `<name>/<key>` cannot be placed.
        let m = md(&[("passwordSecret", "redis-auth/pw")]);
        let mut r = Reader::new(&m);
        assert_eq!(r.credential("password", Plain::Allowed), None);
        assert!(r.finish(&|_| None).is_err());
    }

    #[test]
    fn unread_secret_forms_get_the_hint_of_their_base_key() {
        let m = md(&[("listNameSecret", "a/b/c")]);
        let err = Reader::new(&m)
            .finish(&|k| (k == "listName").then(|| "hint".to_string()))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown key `listNameSecret` (hint)"),
            "{err}"
        );
    }

    #[test]
    fn secret_values_never_appear_in_errors() {
        let m = md(&[("passwordFromEnv", "hunter2")]);
        let mut r = Reader::new(&m);
        r.int("password", 0i64);
        let err = r.finish(&|_| None).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn keda_connection_keys_are_accepted() {
        let m = md(&[
            ("scalerAddress", "x:1"),
            ("caCert", "/ca"),
            ("tlsCertFile", "/c"),
        ]);
        assert!(Reader::new(&m).finish(&|_| None).is_ok());
    }

    #[test]
    fn metric_names_are_normalised_like_keda() {
        assert_eq!(
            normalize_metric_name("redis-My.List/a:b%c(d) e"),
            "redis-my-list-a-b-c-d--e"
        );
        assert_eq!(normalize_metric_name("celery-gpu_a10g"), "celery-gpu_a10g");
        assert_eq!(normalize_metric_name("q\u{6}\u{16}9é"), "q--9-");
    }
}
