//! `source: celery` — Celery (kombu) queues on a Redis broker, counted the way Celery lays them
//! out (`reference/celery-redis.md`): the bare list plus one list per priority step, and the
//! tasks that workers have prefetched but not acknowledged.
//!
//! KEDA's `redis` scaler reads only the bare list, so it misses prioritised tasks and scales
//! workers down while they hold prefetched ones.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Script;

use super::redis_conn::{RedisEndpoint, RedisPool, classify};
use super::{Depth, SourceError, WatchSpec, show_key};
use crate::cache::BoundedMap;
use crate::metadata::{Key, Problem, Reader};

/// Keys of this source, besides the [connection keys](super::redis_conn::CONNECTION_KEYS).
pub const KEYS: &[Key] = &[
    Key::optional(
        "queues",
        "`celery`",
        "comma-separated queue names; the value is their sum",
    ),
    Key::optional(
        "prioritySteps",
        "`0,3,6,9`",
        "kombu's `priority_steps`: each non-zero step has a list `<queue><sep><step>`",
    ),
    Key::optional(
        "prioritySeparator",
        "`\\x06\\x16`",
        "kombu's `sep`; `\\xNN` escapes are decoded (`'\\x06\\x16'` in single-quoted YAML works)",
    ),
    Key::optional("keyPrefix", "empty", "kombu's `global_keyprefix`"),
    Key::optional(
        "includeUnacked",
        "true",
        "count tasks workers prefetched and have not acknowledged (the `unacked` hash), read server-side in one Lua script per read",
    ),
    Key::optional(
        "unackedMaxAgeSeconds",
        "3600",
        "prefetched entries older than this (left by killed workers) stop counting; kombu's visibility timeout",
    ),
    Key::optional("tasksPerReplica", "5", "target tasks per replica (> 0)"),
    Key::optional(
        "activationTasks",
        "0",
        "active when the value is above this",
    ),
];

/// kombu's default `sep` transport option.
pub const DEFAULT_SEPARATOR: &str = "\x06\x16";
/// kombu's default `priority_steps`.
pub const DEFAULT_STEPS: [u32; 4] = [0, 3, 6, 9];

/// Metadata of a `celery` trigger. Every key also accepts its `FromEnv` form.
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryMetadata {
    /// `url` | `address` | `host`+`port`, `databaseIndex` (default 0), `username`, `password`,
    /// `enableTLS` (default false), `unsafeSsl` (default false): the broker.
    pub endpoint: RedisEndpoint,
    /// `queues` (default `celery`): comma-separated queue names; the value is their sum.
    pub queues: Vec<String>,
    /// `prioritySteps` (default `0,3,6,9`): kombu's `priority_steps`; each non-zero step has
    /// its own list `<queue><sep><step>`.
    pub priority_steps: Vec<u32>,
    /// `prioritySeparator` (default the two bytes 0x06 0x16): kombu's `sep`. `\xNN` escapes are
    /// decoded, so `'\x06\x16'` may be written in single-quoted YAML.
    pub priority_separator: String,
    /// `keyPrefix` (default empty): kombu's `global_keyprefix`, put before every key.
    pub key_prefix: String,
    /// `includeUnacked` (default true): count tasks that workers prefetched and have not
    /// acknowledged (kombu's `unacked` hash), so busy workers are not scaled away.
    pub include_unacked: bool,
    /// `unackedMaxAgeSeconds` (default 3600, kombu's visibility timeout): prefetched entries
    /// older than this are left by killed workers and do not count.
    pub unacked_max_age: Duration,
    /// `tasksPerReplica` (default 5): the target number of tasks per replica. Must be > 0.
    pub tasks_per_replica: i64,
    /// `activationTasks` (default 0): active when the value is above this.
    pub activation_tasks: i64,
}

impl CeleryMetadata {
    pub fn parse(r: &mut Reader<'_>) -> Option<Self> {
        let endpoint = RedisEndpoint::parse(r);
        let queues = parse_queues(r);
        let priority_steps = parse_steps(r);
        if let Some(q) = &queues {
            // Each queue is its bare list plus one list per non-zero step.
            let per_queue = 1 + priority_steps.iter().filter(|s| **s != 0).count();
            let lists = q.len().saturating_mul(per_queue);
            if lists > crate::bounds::MAX_CELERY_LISTS {
                r.problem(Problem::TooLarge {
                    key: "queues".into(),
                    bound: format!(
                        "{} queues × {per_queue} lists each (the bare list and one per non-zero \
                         `prioritySteps` step) = {lists} lists per read; at most {}",
                        q.len(),
                        crate::bounds::MAX_CELERY_LISTS
                    ),
                });
                return None;
            }
        }
        let priority_separator = match r.string("prioritySeparator") {
            None => DEFAULT_SEPARATOR.to_string(),
            Some(s) => match unescape(&s) {
                Some(sep) => sep,
                None => {
                    r.problem(Problem::Invalid {
                        key: "prioritySeparator".into(),
                        value: Some(s),
                        expected: "a string (\\xNN escapes allowed)".into(),
                    });
                    DEFAULT_SEPARATOR.to_string()
                }
            },
        };
        let key_prefix = r.string("keyPrefix").unwrap_or_default();
        let include_unacked = r.bool("includeUnacked", true);
        let max_age = r.int_at_least("unackedMaxAgeSeconds", 3600, 1);
        let tasks_per_replica = r.int_at_least("tasksPerReplica", 5, 1);
        let activation_tasks = r.int("activationTasks", 0i64);
        Some(Self {
            endpoint: endpoint?,
            queues: queues?,
            priority_steps,
            priority_separator,
            key_prefix,
            include_unacked,
            unacked_max_age: Duration::from_secs(max_age.unsigned_abs()),
            tasks_per_replica,
            activation_tasks,
        })
    }

    pub fn metric_name(&self) -> String {
        format!("celery-{}", self.queues.join("-"))
    }

    /// Waiting tasks, plus prefetched ones when `includeUnacked`.
    pub fn value(&self, depth: &Depth) -> u64 {
        if self.include_unacked {
            depth.waiting.saturating_add(depth.in_flight)
        } else {
            depth.waiting
        }
    }

    pub fn query(&self) -> CeleryQuery {
        CeleryQuery {
            endpoint: self.endpoint.clone(),
            queues: self
                .queues
                .iter()
                .map(|q| QueueKeys {
                    name: q.clone(),
                    lists: list_keys(
                        q,
                        &self.key_prefix,
                        &self.priority_separator,
                        &self.priority_steps,
                    ),
                })
                .collect(),
            unacked: self.include_unacked.then(|| Unacked {
                hash: format!("{}unacked", self.key_prefix).into_bytes(),
                index: format!("{}unacked_index", self.key_prefix).into_bytes(),
                max_age: self.unacked_max_age,
            }),
        }
    }
}

fn parse_queues(r: &mut Reader<'_>) -> Option<Vec<String>> {
    let raw = r.string("queues").unwrap_or_else(|| "celery".to_string());
    let queues: Vec<String> = raw.split(',').map(|q| q.trim().to_string()).collect();
    if queues.iter().any(String::is_empty) {
        r.problem(Problem::Invalid {
            key: "queues".into(),
            value: Some(raw),
            expected: "a comma-separated list of queue names without empty entries".into(),
        });
        return None;
    }
    let mut seen = Vec::new();
    for q in &queues {
        if seen.contains(&q) {
            r.problem(Problem::Invalid {
                key: "queues".into(),
                value: Some(raw.clone()),
                expected: format!("a list without repeats (`{q}` appears twice)"),
            });
            return None;
        }
        seen.push(q);
    }
    Some(queues)
}

fn parse_steps(r: &mut Reader<'_>) -> Vec<u32> {
    let Some((key, raw)) = r.raw("prioritySteps") else {
        return DEFAULT_STEPS.to_vec();
    };
    let mut steps = Vec::new();
    for part in raw.split(',') {
        match crate::metadata::parse_int::<u32>(part.trim()) {
            Some(s) => steps.push(s),
            None => {
                r.problem(Problem::Invalid {
                    key: key.into(),
                    value: Some(raw.into()),
                    expected: "a comma-separated list of integers ≥ 0".into(),
                });
                return DEFAULT_STEPS.to_vec();
            }
        }
    }
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// Decodes `\xNN` and `\\`; any other backslash sequence is an error.
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                let b = u8::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 2)?;
                out.push(char::from(b).is_ascii().then_some(char::from(b))?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// kombu's `_q_for_pri`: priority 0 is the bare queue, every other step `<queue><sep><step>`.
fn list_keys(queue: &str, prefix: &str, sep: &str, steps: &[u32]) -> Vec<Vec<u8>> {
    let mut keys = vec![format!("{prefix}{queue}").into_bytes()];
    keys.extend(
        steps
            .iter()
            .filter(|s| **s != 0)
            .map(|s| format!("{prefix}{queue}{sep}{s}").into_bytes()),
    );
    keys
}

/// One read: the waiting lists of each queue and, optionally, the in-flight count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CeleryQuery {
    pub endpoint: RedisEndpoint,
    pub queues: Vec<QueueKeys>,
    pub unacked: Option<Unacked>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKeys {
    /// The queue name, which is also the routing key recorded for its prefetched tasks.
    pub name: String,
    pub lists: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unacked {
    pub hash: Vec<u8>,
    pub index: Vec<u8>,
    pub max_age: Duration,
}

/// Every waiting list of each queue, and the size of the unacked index, in one round trip.
///
/// KEYS: each queue's lists in order, then the unacked index when counting in-flight. ARGV:
/// lists per queue, the number of queues. Returns waiting per queue, then the index's size (-1
/// without it): O(1), it tells whether the shared in-flight count is still current.
static CELERY_WAITING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local per = tonumber(ARGV[1])
local nq = tonumber(ARGV[2])
local out = {}
for q = 1, nq do
  local waiting = 0
  for j = 1, per do
    local key = KEYS[(q - 1) * per + j]
    local n = redis.pcall('LLEN', key)
    if type(n) == 'table' and n.err then
      return redis.error_reply('WRONGTYPE ' .. key .. ' ' .. redis.call('TYPE', key).ok)
    end
    waiting = waiting + n
  end
  out[q] = waiting
end
if #KEYS > nq * per then
  out[nq + 1] = redis.call('ZCARD', KEYS[nq * per + 1])
else
  out[nq + 1] = -1
end
return out
",
    )
});

/// One page of the unacked index: the routing keys of the prefetched tasks delivered since
/// `min`, counted in the script so the hash is never pulled to the scaler. Entries added or
/// acknowledged between pages can shift a page by a few: the count is as exact as a moving
/// queue allows.
///
/// KEYS: the unacked hash and index. ARGV: the minimum delivery time, the page's offset and
/// size. Returns the number of index entries in the page, the number of unreadable entries,
/// then routing key and count pairs.
static CELERY_UNACKED_PAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- Pages by rank from the first entry at or after the minimum: each call costs O(log N + page),
-- where an offset into ZRANGEBYSCORE would walk every entry before it.
local first = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. ARGV[1])
local start = first + tonumber(ARGV[2])
local tags = redis.call('ZRANGE', KEYS[2], start, start + tonumber(ARGV[3]) - 1)
local counts = {}
local bad = 0
if #tags > 0 then
  local values = redis.call('HMGET', KEYS[1], unpack(tags))
  for j = 1, #tags do
    local v = values[j]
    if v then
      local ok, entry = pcall(cjson.decode, v)
      if ok and type(entry) == 'table' and type(entry[3]) == 'string' then
        counts[entry[3]] = (counts[entry[3]] or 0) + 1
      else
        bad = bad + 1
      end
    end
  end
end
local out = {#tags, bad}
for k, n in pairs(counts) do
  out[#out + 1] = k
  out[#out + 1] = n
end
return out
",
    )
});

/// Index entries one script call reads: the most any call blocks the broker for (about a
/// millisecond of Lua per thousand entries).
pub const UNACKED_PAGE: usize = 1_000;

/// The longest one count of a database's unacked tasks answers every queue set of that database
/// while the unacked index keeps its size. The count costs the broker work in proportion to the
/// prefetched tasks (100 000 of them are 100 script calls), so it is shared by every trigger,
/// call and push watcher of the database. Every read also takes the index's size (O(1)); a
/// changed size (tasks prefetched or acknowledged) makes the count stale at once, but a new one
/// is taken no sooner than [`UNACKED_MIN_INTERVAL`] or ten times the last count's duration after
/// the previous, so counting never takes more than about a tenth of the broker. The waiting
/// lists, which tell that work arrived, are read fresh on every read.
pub const UNACKED_TTL: Duration = Duration::from_secs(5);

/// The shortest interval between two counts of one database.
pub const UNACKED_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Databases whose counts are kept; the least recently used beyond this are dropped (and idle
/// ones after ten minutes).
pub const MAX_UNACKED_DATABASES: usize = 256;

/// In-flight (prefetched, unacknowledged) tasks per routing key, for one database.
type UnackedByQueue = std::collections::HashMap<String, u64>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UnackedKey {
    endpoint: RedisEndpoint,
    unacked: Unacked,
}

/// One count: when it was taken, how long it took, the index's size then, and the counts.
#[derive(Debug)]
struct Counted {
    at: Instant,
    took: Duration,
    size: i64,
    counts: Arc<UnackedByQueue>,
}

type UnackedSlot = Arc<tokio::sync::Mutex<Option<Counted>>>;

/// Unacked counts shared by every Celery query of a database ([`UNACKED_TTL`]); concurrent
/// askers of a stale count wait for one scan instead of starting their own.
#[derive(Debug)]
pub struct UnackedCounts {
    slots: std::sync::Mutex<BoundedMap<UnackedKey, UnackedSlot>>,
}

impl Default for UnackedCounts {
    fn default() -> Self {
        Self {
            slots: std::sync::Mutex::new(BoundedMap::new(
                "celery_unacked_counts",
                MAX_UNACKED_DATABASES,
                Duration::from_secs(600),
            )),
        }
    }
}

impl UnackedCounts {
    /// Drops the counts of databases nobody read for ten minutes; returns how many.
    pub fn sweep(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sweep()
    }

    fn slot(&self, key: &UnackedKey) -> UnackedSlot {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(key, UnackedSlot::default)
            .clone()
    }

    /// The database's counts, given the unacked index's `size` now (see [`UNACKED_TTL`]).
    async fn get(
        &self,
        pool: &RedisPool,
        endpoint: &RedisEndpoint,
        unacked: &Unacked,
        size: i64,
    ) -> Result<Arc<UnackedByQueue>, SourceError> {
        let slot = self.slot(&UnackedKey {
            endpoint: endpoint.clone(),
            unacked: unacked.clone(),
        });
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            let age = c.at.elapsed();
            let too_soon = age < UNACKED_MIN_INTERVAL.max(c.took.saturating_mul(10));
            if too_soon || (c.size == size && age < UNACKED_TTL) {
                return Ok(c.counts.clone());
            }
        }
        let started = Instant::now();
        let counts = Arc::new(scan_unacked(pool, endpoint, unacked).await?);
        *guard = Some(Counted {
            at: started,
            took: started.elapsed(),
            size,
            counts: counts.clone(),
        });
        Ok(counts)
    }
}

/// Counts the unacked tasks of a database by routing key, a page at a time.
async fn scan_unacked(
    pool: &RedisPool,
    endpoint: &RedisEndpoint,
    unacked: &Unacked,
) -> Result<UnackedByQueue, SourceError> {
    let min = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        - unacked.max_age.as_secs_f64();
    let min = format!("{min:.3}");
    let mut conn = pool.connection(endpoint).await?;
    let mut counts = UnackedByQueue::new();
    let mut bad = 0i64;
    let mut offset = 0usize;
    loop {
        let raw: Vec<redis::Value> = CELERY_UNACKED_PAGE
            .key(unacked.hash.as_slice())
            .key(unacked.index.as_slice())
            .arg(&min)
            .arg(offset)
            .arg(UNACKED_PAGE)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| classify(endpoint, e))?;
        let protocol = |detail: &str| SourceError::Protocol {
            endpoint: endpoint.to_string(),
            detail: format!("celery unacked script: {detail}"),
        };
        let int = |v: &redis::Value| match v {
            redis::Value::Int(n) if *n >= 0 => Ok(*n),
            _ => Err(protocol("expected a count")),
        };
        let (Some(n), Some(b)) = (raw.first(), raw.get(1)) else {
            return Err(protocol("short answer"));
        };
        let in_page = int(n)?;
        bad += int(b)?;
        for pair in raw[2..].chunks(2) {
            let [redis::Value::BulkString(name), n] = pair else {
                return Err(protocol("expected routing key and count pairs"));
            };
            let name = String::from_utf8_lossy(name).into_owned();
            *counts.entry(name).or_default() += int(n)? as u64;
        }
        if (in_page as usize) < UNACKED_PAGE {
            break;
        }
        offset += UNACKED_PAGE;
    }
    if bad > 0 {
        tracing::debug!(
            unreadable = bad,
            "celery unacked entries without a routing key"
        );
    }
    Ok(counts)
}

impl CeleryQuery {
    pub async fn read(
        &self,
        pool: &RedisPool,
        unacked: &UnackedCounts,
    ) -> Result<Depth, SourceError> {
        self.read_per_queue(pool, unacked).await.map(|per_queue| {
            per_queue.iter().fold(Depth::default(), |acc, d| {
                Depth::simple(
                    acc.waiting.saturating_add(d.waiting),
                    acc.in_flight.saturating_add(d.in_flight),
                )
            })
        })
    }

    /// The depth of each queue, in the order of `queues`: the waiting lists read now, the
    /// in-flight count from the database's shared unacked count ([`UNACKED_TTL`]).
    pub async fn read_per_queue(
        &self,
        pool: &RedisPool,
        unacked: &UnackedCounts,
    ) -> Result<Vec<Depth>, SourceError> {
        let per = self.queues.first().map_or(1, |q| q.lists.len());
        let mut invocation = CELERY_WAITING.prepare_invoke();
        for q in &self.queues {
            for key in &q.lists {
                invocation.key(key.as_slice());
            }
        }
        if let Some(u) = &self.unacked {
            invocation.key(u.index.as_slice());
        }
        invocation.arg(per).arg(self.queues.len());
        let mut conn = pool.connection(&self.endpoint).await?;
        let mut waiting: Vec<i64> = match invocation.invoke_async(&mut conn).await {
            Ok(v) => v,
            Err(e) if e.code() == Some("WRONGTYPE") => {
                let detail = e.detail().unwrap_or_default().to_string();
                let (key, found) = detail.rsplit_once(' ').unwrap_or((detail.as_str(), "?"));
                return Err(SourceError::WrongType {
                    endpoint: self.endpoint.to_string(),
                    key: show_key(key.as_bytes()),
                    found: found.to_string(),
                    expected: "a list",
                });
            }
            Err(e) => return Err(classify(&self.endpoint, e)),
        };
        let size = waiting.pop().unwrap_or(-1);
        if waiting.len() != self.queues.len() || waiting.iter().any(|n| *n < 0) {
            return Err(SourceError::Protocol {
                endpoint: self.endpoint.to_string(),
                detail: format!("celery depth script returned {} numbers", waiting.len() + 1),
            });
        }
        let in_flight = match &self.unacked {
            Some(u) => Some(unacked.get(pool, &self.endpoint, u, size).await?),
            None => None,
        };
        Ok(self
            .queues
            .iter()
            .zip(waiting)
            .map(|(q, w)| {
                let f = in_flight
                    .as_ref()
                    .and_then(|c| c.get(&q.name).copied())
                    .unwrap_or(0);
                Depth::simple(w as u64, f)
            })
            .collect())
    }

    pub fn watch(&self) -> WatchSpec {
        WatchSpec::RedisKeys {
            endpoint: self.endpoint.clone(),
            keys: self
                .queues
                .iter()
                .flat_map(|q| q.lists.iter().cloned())
                .collect(),
            events: "l",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<CeleryMetadata, Vec<String>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut r = Reader::new(&m);
        let parsed = CeleryMetadata::parse(&mut r);
        match r.finish(&|_| None) {
            Ok(()) => parsed.ok_or_else(Vec::new),
            Err(e) => Err(e.keys().into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn defaults_match_celery_and_kombu() {
        let m = parse(&[("address", "r:6379")]).unwrap();
        assert_eq!(m.queues, ["celery"]);
        assert_eq!(m.priority_steps, [0, 3, 6, 9]);
        assert_eq!(m.priority_separator, "\x06\x16");
        assert!(m.include_unacked);
        assert_eq!(m.unacked_max_age, Duration::from_secs(3600));
        assert_eq!((m.tasks_per_replica, m.activation_tasks), (5, 0));
        assert_eq!(m.metric_name(), "celery-celery");
        let q = m.query();
        assert_eq!(
            q.queues[0].lists,
            [
                b"celery".to_vec(),
                b"celery\x06\x163".to_vec(),
                b"celery\x06\x166".to_vec(),
                b"celery\x06\x169".to_vec()
            ]
        );
        let u = q.unacked.unwrap();
        assert_eq!(
            (u.hash.as_slice(), u.index.as_slice()),
            (&b"unacked"[..], &b"unacked_index"[..])
        );
    }

    #[test]
    fn custom_steps_separator_and_prefix_shape_the_keys() {
        let m = parse(&[
            ("address", "r:6379"),
            ("queues", "gpu-a10g, gpu-t4"),
            ("prioritySteps", "0,1,2,3,4,5,6,7,8,9"),
            ("prioritySeparator", ":"),
            ("keyPrefix", "pfx_"),
        ])
        .unwrap();
        assert_eq!(m.metric_name(), "celery-gpu-a10g-gpu-t4");
        let q = m.query();
        assert_eq!(q.queues.len(), 2);
        assert_eq!(q.queues[1].lists.len(), 10);
        assert_eq!(q.queues[1].lists[0], b"pfx_gpu-t4");
        assert_eq!(q.queues[1].lists[9], b"pfx_gpu-t4:9");
        assert_eq!(q.unacked.unwrap().hash, b"pfx_unacked");
    }

    #[test]
    fn escaped_separator_is_decoded() {
        let m = parse(&[("address", "r:1"), ("prioritySeparator", "\\x06\\x16")]).unwrap();
        assert_eq!(m.priority_separator, "\x06\x16");
        assert_eq!(
            parse(&[("address", "r:1"), ("prioritySeparator", "\\q")]).unwrap_err(),
            ["prioritySeparator"]
        );
        assert_eq!(
            parse(&[("address", "r:1"), ("prioritySeparator", "\\x0")]).unwrap_err(),
            ["prioritySeparator"]
        );
    }

    #[test]
    fn in_flight_counts_unless_turned_off() {
        let d = Depth::simple(3, 4);
        assert_eq!(parse(&[("address", "r:1")]).unwrap().value(&d), 7);
        let m = parse(&[("address", "r:1"), ("includeUnacked", "false")]).unwrap();
        assert_eq!(m.value(&d), 3);
        assert!(m.query().unacked.is_none());
    }

    #[test]
    fn bad_keys_are_named() {
        for (pairs, key) in [
            (vec![("queues", "a,,b")], "queues"),
            (vec![("queues", "a,a")], "queues"),
            (vec![("prioritySteps", "0,x")], "prioritySteps"),
            (vec![("prioritySteps", "-1")], "prioritySteps"),
            (vec![("tasksPerReplica", "0")], "tasksPerReplica"),
            (vec![("tasksPerReplica", "2.5")], "tasksPerReplica"),
            (vec![("unackedMaxAgeSeconds", "0")], "unackedMaxAgeSeconds"),
            (vec![("includeUnacked", "yes")], "includeUnacked"),
            (vec![("activationTasks", "x")], "activationTasks"),
        ] {
            let mut pairs = pairs;
            pairs.push(("address", "r:1"));
            assert_eq!(parse(&pairs).unwrap_err(), [key], "{pairs:?}");
        }
    }
}
