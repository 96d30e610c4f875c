//! Every link in the documentation leads somewhere: README.md, BENCHMARKS.md
//! and docs/*.md are scanned, and each relative link must name a file or
//! folder of the checkout, each `#anchor` a heading of its target (GitHub's
//! slugs), and each image a file. External links are not fetched; none may
//! point at a package registry. Needs no local stack.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// Hosts of package registries: the docs say which pinned file installs a
/// tool (tools/package.json, tools/requirements.txt), never a registry page.
const REGISTRY_HOSTS: &[&str] = &[
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "npmjs.com",
    "www.npmjs.com",
    "registry.npmjs.org",
    "npmjs.org",
    "yarnpkg.com",
    "registry.yarnpkg.com",
    "pypi.org",
    "pypi.python.org",
    "files.pythonhosted.org",
    "proxy.golang.org",
    "rubygems.org",
    "repo.maven.apache.org",
    "repo1.maven.org",
    "nuget.org",
    "www.nuget.org",
    "packagist.org",
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    line: usize,
    target: String,
    image: bool,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// README.md, BENCHMARKS.md and every .md under docs/.
fn documentation_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    let mut stack = vec![root.join("docs")];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a readable docs entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The opening fence of a fenced code block (``` or ~~~, up to three spaces in).
fn fence(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let c = trimmed.chars().next()?;
    if c != '`' && c != '~' {
        return None;
    }
    let n = trimmed.chars().take_while(|&x| x == c).count();
    (n >= 3).then_some((c, n))
}

/// Lines outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut open: Option<(char, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        match (open, fence(line)) {
            (None, Some(f)) => open = Some(f),
            (Some((c, n)), Some((c2, n2))) if c == c2 && n2 >= n && line.trim().chars().all(|x| x == c) => open = None,
            (Some(_), _) => {}
            (None, None) => out.push((i + 1, line)),
        }
    }
    out
}

/// The line with inline code spans blanked out (same length), so that a
/// `[x](y)` shown as code is not taken for a link.
fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '`' {
            let run = chars[i..].iter().take_while(|&&c| c == '`').count();
            // find the closing run of the same length
            let mut j = i + run;
            let mut close = None;
            while j < chars.len() {
                if chars[j] == '`' {
                    let r = chars[j..].iter().take_while(|&&c| c == '`').count();
                    if r == run {
                        close = Some(j);
                        break;
                    }
                    j += r;
                } else {
                    j += 1;
                }
            }
            match close {
                Some(j) => {
                    out.extend(std::iter::repeat_n(' ', j + run - i));
                    i = j + run;
                }
                None => {
                    out.extend(&chars[i..i + run]);
                    i += run;
                }
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Inline links and images (`[text](target "title")`, `![alt](target)`),
/// reference definitions (`[label]: target`) and HTML `src`/`href` values.
fn links(text: &str) -> Vec<Link> {
    let mut found = Vec::new();
    for (line_no, raw) in prose_lines(text) {
        let line = without_code_spans(raw);
        let bytes = line.as_bytes();
        let mut i = 0;
        while let Some(pos) = line[i..].find("](") {
            let start = i + pos + 2;
            let Some(end) = closing_paren(&line[start..]) else {
                break;
            };
            let inside = line[start..start + end].trim();
            let target = inside
                .strip_prefix('<')
                .and_then(|s| s.split_once('>').map(|(t, _)| t))
                .unwrap_or_else(|| inside.split_whitespace().next().unwrap_or(""));
            let open = line[..i + pos].rfind('[');
            let image = open.is_some_and(|o| o > 0 && bytes[o - 1] == b'!');
            found.push(Link {
                line: line_no,
                target: target.to_string(),
                image,
            });
            i = start + end;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') && !trimmed.starts_with("[^") {
            if let Some((label, rest)) = trimmed[1..].split_once("]:") {
                if !label.is_empty() {
                    if let Some(target) = rest.split_whitespace().next() {
                        found.push(Link {
                            line: line_no,
                            target: target.to_string(),
                            image: false,
                        });
                    }
                }
            }
        }
        for attr in ["src=\"", "href=\""] {
            let mut from = 0;
            while let Some(pos) = line[from..].find(attr) {
                let start = from + pos + attr.len();
                let Some(len) = line[start..].find('"') else { break };
                found.push(Link {
                    line: line_no,
                    target: line[start..start + len].to_string(),
                    image: attr == "src=\"",
                });
                from = start + len;
            }
        }
    }
    found
}

/// Every http(s) URL in the prose (outside code), link or not: GitHub turns
/// a bare URL into a link too.
fn urls(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (line_no, raw) in prose_lines(text) {
        let line = without_code_spans(raw);
        let mut from = 0;
        while let Some(pos) = line[from..].find("http") {
            let start = from + pos;
            let rest = &line[start..];
            if rest.starts_with("http://") || rest.starts_with("https://") {
                let len = rest
                    .find(|c: char| c.is_whitespace() || "()<>[]\"'`".contains(c))
                    .unwrap_or(rest.len());
                found.push((line_no, rest[..len].to_string()));
                from = start + len;
            } else {
                from = start + 4;
            }
        }
    }
    found
}

/// The index of the `)` that closes a link destination (nested parentheses allowed).
fn closing_paren(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// GitHub's anchor for a heading's text: lowercase; letters, digits, `-` and
/// `_` kept; each space becomes `-`; everything else dropped.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    // `[text](url)` in a heading contributes its text only.
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else { break };
        let Some(close) = closing_paren(&rest[open + mid + 2..]) else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + 2 + close + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown file offers: its headings' slugs (a repeated slug
/// gets `-1`, `-2`, …) and explicit `id="…"` / `name="…"` anchors.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = HashSet::new();
    for (_, line) in prose_lines(text) {
        let trimmed = line.trim_start_matches(' ');
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if line.len() - trimmed.len() <= 3 && (1..=6).contains(&hashes) && trimmed[hashes..].starts_with([' ', '\t']) {
            let title = trimmed[hashes..].trim().trim_end_matches('#').trim();
            let base = slug(title);
            let n = seen.entry(base.clone()).or_insert(0);
            out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
            *n += 1;
        }
        for attr in ["id=\"", "name=\""] {
            let mut from = 0;
            while let Some(pos) = line[from..].find(attr) {
                let start = from + pos + attr.len();
                let Some(len) = line[start..].find('"') else { break };
                out.insert(line[start..start + len].to_string());
                from = start + len;
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a/b/../c` → `a/c`; None when it climbs out of the checkout.
fn normalize(root: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn host(url: &str) -> &str {
    let after = url.split_once("://").map_or("", |(_, r)| r);
    let authority = after.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    host.split(':').next().unwrap_or("")
}

/// What is wrong with one file's links, as "file:line: problem".
fn problems(root: &Path, file: &Path, cache: &mut BTreeMap<PathBuf, HashSet<String>>) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let name = file.strip_prefix(root).unwrap_or(file).display().to_string();
    let mut out = Vec::new();
    for (line, url) in urls(&text) {
        let h = host(&url).to_ascii_lowercase();
        if REGISTRY_HOSTS.iter().any(|r| h == *r || h.ends_with(&format!(".{r}"))) {
            out.push(format!("{name}:{line}: {url} points at a package registry ({h})"));
        }
    }
    for link in links(&text) {
        let at = format!("{name}:{}", link.line);
        let target = link.target.as_str();
        if target.is_empty() {
            out.push(format!("{at}: empty link target"));
            continue;
        }
        // External links are not fetched (their hosts are checked below).
        if let Some((scheme, _)) = target.split_once(':') {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
                continue;
            }
        }
        let (path_part, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target, None),
        };
        let path_part = percent_decode(path_part.split('?').next().unwrap_or(""));
        let resolved = if path_part.is_empty() {
            file.to_path_buf()
        } else if let Some(abs) = path_part.strip_prefix('/') {
            root.join(abs)
        } else {
            file.parent().expect("a file has a folder").join(&path_part)
        };
        let Some(resolved) = normalize(root, &resolved) else {
            out.push(format!("{at}: {target} leads out of the repository"));
            continue;
        };
        if !resolved.exists() {
            let what = if link.image { "image" } else { "link" };
            out.push(format!(
                "{at}: {what} {target}: {} does not exist",
                resolved.strip_prefix(root).unwrap_or(&resolved).display()
            ));
            continue;
        }
        if link.image && !resolved.is_file() {
            out.push(format!("{at}: image {target} is not a file"));
            continue;
        }
        if let Some(anchor) = anchor.filter(|a| !a.is_empty()) {
            if resolved.extension().is_some_and(|e| e == "md") {
                let set = cache
                    .entry(resolved.clone())
                    .or_insert_with(|| anchors(&std::fs::read_to_string(&resolved).unwrap_or_default()));
                let anchor = percent_decode(anchor);
                if !set.contains(&anchor) {
                    let mut near: Vec<&String> = set.iter().filter(|s| shares_a_word(s, &anchor)).collect();
                    near.sort();
                    out.push(format!(
                        "{at}: {target}: no heading in {} has the anchor #{anchor}{}",
                        resolved.strip_prefix(root).unwrap_or(&resolved).display(),
                        if near.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " (close: {})",
                                near.iter().map(|s| format!("#{s}")).collect::<Vec<_>>().join(", ")
                            )
                        }
                    ));
                }
            }
        }
    }
    out
}

fn shares_a_word(a: &str, b: &str) -> bool {
    let words: HashSet<&str> = a.split('-').filter(|w| w.len() > 3).collect();
    b.split('-').any(|w| words.contains(w))
}

#[test]
fn every_link_in_the_documentation_leads_somewhere() {
    let root = repo_root();
    let files = documentation_files(&root);
    assert!(files.len() > 2, "docs/ holds the reference pages: {files:?}");
    let mut cache = BTreeMap::new();
    let mut all = Vec::new();
    let mut count = 0;
    for file in &files {
        count += links(&std::fs::read_to_string(file).expect("readable")).len();
        all.extend(problems(&root, file, &mut cache));
    }
    assert!(count > 0, "no links found: the scanner is broken");
    assert!(all.is_empty(), "{} broken link(s):\n{}", all.len(), all.join("\n"));
}

#[test]
fn every_docs_page_is_reachable_from_the_readme() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let targets: HashSet<PathBuf> = links(&readme)
        .into_iter()
        .filter_map(|l| normalize(&root, &root.join(l.target.split('#').next().unwrap_or(""))))
        .collect();
    let missing: Vec<String> = documentation_files(&root)
        .into_iter()
        .filter(|f| f.starts_with(root.join("docs")) && !targets.contains(f))
        .map(|f| f.strip_prefix(&root).unwrap_or(&f).display().to_string())
        .collect();
    assert!(missing.is_empty(), "README.md links to no page of {missing:?}");
}

#[test]
fn the_scanner_finds_links_and_anchors_as_github_renders_them() {
    let text = "# Keys and config\n\
                ## `[providers.NAME]`\n\
                ## Redirect URIs: one per provider\n\
                ## Operating → Metrics\n\
                ## Tests\n## Tests\n\
                ```sh\n[not](a-link.md)\n# not a heading\n```\n\
                See [a](x.md#y) and ![img](i.png \"t\") but not `[code](z.md)`.\n\
                [ref]: other.md#z\n";
    let found = links(text);
    let found: Vec<(usize, &str, bool)> = found.iter().map(|l| (l.line, l.target.as_str(), l.image)).collect();
    assert_eq!(
        found,
        [(11, "x.md#y", false), (11, "i.png", true), (12, "other.md#z", false)]
    );
    let a = anchors(text);
    for expected in [
        "keys-and-config",
        "providersname",
        "redirect-uris-one-per-provider",
        "operating--metrics",
        "tests",
        "tests-1",
    ] {
        assert!(a.contains(expected), "{expected} in {a:?}");
    }
    assert!(!a.contains("not-a-heading"));
    assert_eq!(host("https://user@crates.io:443/x"), "crates.io");
    let bare = urls("see https://pypi.org/project/x, [y](https://a.example/b) and `https://in.code/`\n");
    let bare: Vec<&str> = bare.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(bare, ["https://pypi.org/project/x,", "https://a.example/b"]);
}
