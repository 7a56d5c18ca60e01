//! The docs' key tables, rendered from the key descriptors the parsers use
//! ([`crate::metadata::Key`]), so the reference cannot drift from what the scaler accepts.
//!
//! Each table sits in a docs page between `<!-- keys:<name>:begin -->` and
//! `<!-- keys:<name>:end -->`. A unit test compares them; with `HEADROOM_BLESS=1` it rewrites
//! them instead:
//!
//! ```sh
//! HEADROOM_BLESS=1 cargo test --workspace --lib key_tables
//! ```

use crate::metadata::{Key, KeyDefault};
use crate::planner;
use crate::sources::{aws_sqs_queue, celery, kafka, redis_conn, redis_list};
use crate::trigger;

/// One generated table: its marker name, the page (relative to the repository root) that holds
/// it, and the keys it lists.
#[derive(Debug, Clone, Copy)]
pub struct KeyTable {
    pub name: &'static str,
    pub page: &'static str,
    pub keys: &'static [Key],
}

/// Every generated table.
pub const KEY_TABLES: &[KeyTable] = &[
    KeyTable {
        name: "trigger",
        page: "docs/scaler.md",
        keys: trigger::KEYS,
    },
    KeyTable {
        name: "redis-connection",
        page: "docs/sources/redis.md",
        keys: redis_conn::CONNECTION_KEYS,
    },
    KeyTable {
        name: "celery",
        page: "docs/sources/redis.md",
        keys: celery::KEYS,
    },
    KeyTable {
        name: "redis-list",
        page: "docs/sources/redis.md",
        keys: redis_list::KEYS,
    },
    KeyTable {
        name: "aws-sqs-queue",
        page: "docs/sources/sqs.md",
        keys: aws_sqs_queue::KEYS,
    },
    KeyTable {
        name: "kafka",
        page: "docs/sources/kafka.md",
        keys: kafka::KEYS,
    },
    KeyTable {
        name: "planned",
        page: "docs/planned-mode.md",
        keys: planner::KEYS,
    },
];

/// The command that regenerates the tables, for failure messages and the docs.
pub const REGENERATE: &str = "HEADROOM_BLESS=1 cargo test --workspace --lib key_tables";

/// A Markdown table of `keys`: key, default, meaning.
pub fn render(keys: &[Key]) -> String {
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for k in keys {
        let default = match k.default {
            KeyDefault::Required => "required",
            KeyDefault::Is(d) => d,
        };
        out.push_str(&format!("| `{}` | {default} | {} |\n", k.name, k.doc));
    }
    out
}

pub fn begin_marker(name: &str) -> String {
    format!("<!-- keys:{name}:begin -->\n")
}

pub fn end_marker(name: &str) -> String {
    format!("<!-- keys:{name}:end -->")
}

/// Why a page's table could not be replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocsError {
    #[error("{page} has no `{marker}` marker line")]
    NoMarker { page: String, marker: String },
}

/// `page_text` with the text between `table`'s markers replaced by the rendered table.
pub fn replace_table(page_text: &str, table: &KeyTable) -> Result<String, DocsError> {
    let begin = begin_marker(table.name);
    let end = end_marker(table.name);
    let missing = |marker: &str| DocsError::NoMarker {
        page: table.page.to_string(),
        marker: marker.trim_end().to_string(),
    };
    let start = page_text.find(&begin).ok_or_else(|| missing(&begin))? + begin.len();
    let stop = start + page_text[start..].find(&end).ok_or_else(|| missing(&end))?;
    Ok(format!(
        "{}{}{}",
        &page_text[..start],
        render(table.keys),
        &page_text[stop..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn key_tables_in_the_docs_match_the_key_descriptors() {
        let bless = std::env::var_os("HEADROOM_BLESS").is_some_and(|v| v == "1");
        let mut stale = Vec::new();
        for table in KEY_TABLES {
            let path = repo_root().join(table.page);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let want = replace_table(&text, table).unwrap_or_else(|e| panic!("{e}"));
            if want != text {
                if bless {
                    std::fs::write(&path, &want)
                        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                } else {
                    stale.push(format!("{} (table `{}`)", table.page, table.name));
                }
            }
        }
        assert!(
            stale.is_empty(),
            "key tables differ from the key descriptors in scaler/src: {}.\nRegenerate them with: {REGENERATE}",
            stale.join(", ")
        );
    }

    #[test]
    fn key_tables_render_required_and_defaults() {
        let keys = [
            Key::required("a", "the a"),
            Key::optional("b", "`x`", "the b"),
        ];
        assert_eq!(
            render(&keys),
            "| key | default | meaning |\n|---|---|---|\n| `a` | required | the a |\n| `b` | `x` | the b |\n"
        );
        let t = KeyTable {
            name: "t",
            page: "p.md",
            keys: &[],
        };
        let page = "intro\n<!-- keys:t:begin -->\nold\n<!-- keys:t:end -->\nafter\n";
        assert_eq!(
            replace_table(page, &t).unwrap(),
            "intro\n<!-- keys:t:begin -->\n| key | default | meaning |\n|---|---|---|\n<!-- keys:t:end -->\nafter\n"
        );
        assert!(replace_table("no markers", &t).is_err());
    }

    #[test]
    fn every_key_is_declared_once_per_table_and_has_a_doc() {
        for table in KEY_TABLES {
            for (i, k) in table.keys.iter().enumerate() {
                assert!(!k.doc.is_empty(), "{}: `{}` has no doc", table.name, k.name);
                assert!(
                    !k.doc.contains('\n') && !k.doc.contains('|'),
                    "{}: `{}`'s doc breaks the table",
                    table.name,
                    k.name
                );
                assert!(
                    table.keys[..i].iter().all(|o| o.name != k.name),
                    "{}: `{}` twice",
                    table.name,
                    k.name
                );
            }
        }
    }
}
