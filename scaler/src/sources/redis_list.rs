//! `source: redis-list` — parity with KEDA's built-in `redis` scaler: the length of one key,
//! by its type.

use std::sync::LazyLock;

use redis::Script;

use super::redis_conn::{RedisEndpoint, RedisPool, classify};
use super::{Depth, SourceError, WatchSpec, show_key};
use crate::metadata::{Key, Problem, Reader};

/// Keys of this source, besides the [connection keys](super::redis_conn::CONNECTION_KEYS).
pub const KEYS: &[Key] = &[
    Key::required(
        "listName",
        "the key; its length by type: list LLEN, set SCARD, sorted set ZCARD, hash HLEN, missing 0, any other type an error",
    ),
    Key::optional(
        "listLength",
        "5",
        "target per replica (> 0; KEDA does not check this, and a 0 target breaks the HPA)",
    ),
    Key::optional(
        "activationListLength",
        "0",
        "active when the length is above this",
    ),
];

/// Metadata of a `redis-list` trigger. Every key also accepts its `FromEnv` form.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisListMetadata {
    /// `url` | `address` | `host`+`port`, `databaseIndex` (default 0), `username`, `password`,
    /// `enableTLS` (default false), `unsafeSsl` (default false): where the key lives.
    pub endpoint: RedisEndpoint,
    /// `listName` (required): the key to measure; its length is taken by type — list LLEN, set
    /// SCARD, sorted set ZCARD, hash HLEN, missing key 0, any other type an error.
    pub list_name: String,
    /// `listLength` (default 5): the target length per replica. Must be > 0.
    pub list_length: i64,
    /// `activationListLength` (default 0): the trigger is active when the length is above this.
    pub activation_list_length: i64,
}

impl RedisListMetadata {
    pub fn parse(r: &mut Reader<'_>) -> Option<Self> {
        let endpoint = RedisEndpoint::parse(r);
        let list_name = r.required_string("listName");
        let list_length = r.int("listLength", 5i64);
        if list_length <= 0 {
            r.problem(Problem::Invalid {
                key: "listLength".into(),
                value: Some(list_length.to_string()),
                expected: "an integer > 0".into(),
            });
        }
        let activation_list_length = r.int("activationListLength", 0i64);
        Some(Self {
            endpoint: endpoint?,
            list_name: list_name?,
            list_length,
            activation_list_length,
        })
    }

    pub fn metric_name(&self) -> String {
        format!("redis-{}", self.list_name)
    }

    pub fn query(&self) -> RedisListQuery {
        RedisListQuery {
            endpoint: self.endpoint.clone(),
            key: self.list_name.as_bytes().to_vec(),
        }
    }
}

/// One read: the length of one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisListQuery {
    pub endpoint: RedisEndpoint,
    pub key: Vec<u8>,
}

/// TYPE and the length command in one round trip.
static LENGTH_BY_TYPE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'none' then return {t, 0}
elseif t == 'list' then return {t, redis.call('LLEN', KEYS[1])}
elseif t == 'set' then return {t, redis.call('SCARD', KEYS[1])}
elseif t == 'zset' then return {t, redis.call('ZCARD', KEYS[1])}
elseif t == 'hash' then return {t, redis.call('HLEN', KEYS[1])}
end
return {t, -1}
",
    )
});

impl RedisListQuery {
    pub async fn read(&self, pool: &RedisPool) -> Result<Depth, SourceError> {
        let mut conn = pool.connection(&self.endpoint).await?;
        let (kind, len): (String, i64) = LENGTH_BY_TYPE
            .key(&self.key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| classify(&self.endpoint, e))?;
        if len < 0 {
            return Err(SourceError::WrongType {
                endpoint: self.endpoint.to_string(),
                key: show_key(&self.key),
                found: kind,
                expected: "a list, set, sorted set or hash",
            });
        }
        Ok(Depth::simple(len as u64, 0))
    }

    pub fn watch(&self) -> WatchSpec {
        WatchSpec::RedisKeys {
            endpoint: self.endpoint.clone(),
            keys: vec![self.key.clone()],
            events: "lszh",
        }
    }
}
