//! Every link in the repository's Markdown stays inside the repository and lands somewhere: a
//! relative link names a file or folder that exists (never `../shared` or any path above the
//! root), and a `#anchor` names a heading of its page, by GitHub's slug rules. Links with a
//! scheme (`https:`, `mailto:`) are not followed. No peers: it reads files only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// Folders never searched: build output, VCS data, caches.
const SKIPPED_DIRS: &[&str] = &["target", "node_modules", ".git"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            // Hidden folders (.git, .cache, .venv) and build output hold no docs of ours.
            if !name.starts_with('.') && !SKIPPED_DIRS.contains(&name) {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The text outside fenced code blocks and inline code spans, line by line (code holds
/// `](` that is no link).
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(f) = fence {
            if trimmed.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") {
            fence = Some("```");
            continue;
        }
        if trimmed.starts_with("~~~") {
            fence = Some("~~~");
            continue;
        }
        let mut prose = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                prose.push(c);
            }
        }
        out.push((i + 1, prose));
    }
    out
}

/// Link targets in one line of prose: inline links and images `[text](target "title")`, and
/// reference definitions `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while let Some(at) = line[i..].find("](") {
        let start = i + at + 2;
        let mut depth = 0usize;
        let mut end = start;
        while end < bytes.len() {
            match bytes[end] {
                b'(' => depth += 1,
                b')' if depth == 0 => break,
                b')' => depth -= 1,
                _ => {}
            }
            end += 1;
        }
        let inner = line[start..end].trim();
        let target = inner
            .strip_prefix('<')
            .and_then(|t| t.split_once('>').map(|(t, _)| t))
            .unwrap_or_else(|| inner.split_whitespace().next().unwrap_or_default());
        out.push(target.to_string());
        i = end.min(line.len());
    }
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some((label, rest)) = trimmed[1..].split_once("]:")
        && !label.is_empty()
        && let Some(target) = rest.split_whitespace().next()
    {
        out.push(target.to_string());
    }
    out
}

/// GitHub's anchor for a heading: the rendered text lower-cased, every character other than a
/// letter, digit, `-`, `_` or space dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    // Links in a heading render as their text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](") else {
            break;
        };
        let Some(end) = rest[open + close..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + close]);
        rest = &rest[open + close + end + 1..];
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors a Markdown file defines: its headings' slugs (a repeated slug gets `-1`, `-2`,
/// as on GitHub) and explicit `<a id=…>` / `<a name=…>` anchors.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        for attr in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(attr) {
                let value = &rest[at + attr.len()..];
                if let Some(end) = value.find('"') {
                    out.insert(value[..end].to_string());
                }
                rest = &rest[at + attr.len()..];
            }
        }
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            let base = slug(trimmed[hashes..].trim_end_matches('#'));
            let n = seen.entry(base.clone()).or_insert(0);
            out.insert(if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            *n += 1;
        }
    }
    out
}

/// `path` with `.` and `..` resolved, or `None` when it climbs above the root.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Every problem with one link of `file` (relative to the root).
fn check_link(root: &Path, file: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("an empty link".into());
    }
    let has_scheme = target
        .split_once(':')
        .is_some_and(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()));
    if has_scheme {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let dest = if path.is_empty() {
        file.to_path_buf()
    } else if path.starts_with('/') {
        return Some(format!(
            "`{target}`: an absolute path; link relative to the page"
        ));
    } else {
        let joined = file.parent().unwrap_or(Path::new("")).join(path);
        match normalise(&joined) {
            Some(p) => p,
            None => return Some(format!("`{target}` leaves the repository")),
        }
    };
    let full = root.join(&dest);
    if !full.exists() {
        return Some(format!(
            "`{target}`: {} does not exist in the repository",
            dest.display()
        ));
    }
    if let Some(anchor) = anchor {
        if full.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&full).unwrap_or_default();
            if !anchors(&text).contains(anchor) {
                return Some(format!(
                    "`{target}`: {} has no heading with anchor `#{anchor}`",
                    dest.display()
                ));
            }
        } else if !anchor.starts_with('L') {
            // Line anchors (`#L10`) are GitHub's; others on non-Markdown files are not checkable.
            return Some(format!(
                "`{target}`: an anchor into a file that is not Markdown"
            ));
        }
    }
    None
}

#[test]
fn every_link_in_the_docs_stays_in_the_repository_and_lands_on_a_file_and_heading() {
    let root = root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    let names: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.strip_prefix(&root).ok().map(Path::to_path_buf))
        .collect();
    for must in ["README.md", "CONTRIBUTING.md", "docs/README.md"] {
        assert!(
            names.iter().any(|n| n == Path::new(must)),
            "{must} was not found under {}",
            root.display()
        );
    }
    let mut problems = Vec::new();
    let mut links = 0;
    for name in &names {
        let text = std::fs::read_to_string(root.join(name)).unwrap_or_default();
        for (line, prose) in prose_lines(&text) {
            for target in link_targets(&prose) {
                links += 1;
                if let Some(p) = check_link(&root, name, &target) {
                    problems.push(format!("{}:{line}: {p}", name.display()));
                }
            }
        }
    }
    assert!(
        links > 50,
        "only {links} links found: is the parser broken?"
    );
    assert!(
        problems.is_empty(),
        "{} broken link(s) in the repository's Markdown:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("End to end (`tests/it/e2e.rs`)"),
        "end-to-end-testsite2ers"
    );
    assert_eq!(
        slug("1. Build and push the images"),
        "1-build-and-push-the-images"
    );
    assert_eq!(
        slug("EC2 capacity (`mode: ec2`, `provisioner/src/providers/ec2.rs`)"),
        "ec2-capacity-mode-ec2-provisionersrcprovidersec2rs"
    );
    assert_eq!(
        slug("What each program may do (RBAC)"),
        "what-each-program-may-do-rbac"
    );
    assert_eq!(
        slug("`headroom-scaler serve` flags"),
        "headroom-scaler-serve-flags"
    );
    assert_eq!(slug("See [the docs](x.md) here"), "see-the-docs-here");
    let a = anchors("# A\n## A\n```\n# not a heading\n```\n### b_c\n");
    assert_eq!(
        a.into_iter().collect::<Vec<_>>(),
        ["a", "a-1", "b_c"].map(String::from)
    );
}

#[test]
fn links_outside_the_repository_and_missing_targets_are_caught() {
    let root = root();
    let page = Path::new("docs/x.md");
    assert!(check_link(&root, page, "../../shared/DESIGN.md").is_some());
    assert!(check_link(&root, page, "../README.md#no-such-heading").is_some());
    assert!(check_link(&root, page, "/etc/passwd").is_some());
    assert!(check_link(&root, page, "nope.md").is_some());
    assert_eq!(check_link(&root, page, "../README.md#install"), None);
    assert_eq!(check_link(&root, page, "https://keda.sh"), None);
    assert_eq!(
        link_targets("see [a](b.md) and ![i](c.png \"t\") and [r]: d.md"),
        ["b.md", "c.png"]
    );
    assert_eq!(link_targets("[r]: d.md \"t\""), ["d.md"]);
    let prose = prose_lines("`[x](no.md)` [y](yes.md)\n```\n[z](no.md)\n```\n");
    assert_eq!(prose.len(), 1);
    assert_eq!(link_targets(&prose[0].1), ["yes.md"]);
}
