//! The library's floors (issue 20, README's repository layout): a module of
//! `shared` imports only from its own floor or below, and no modules import
//! each other in a circle. Read from the `crate::` paths in the source
//! (comments and the `mod tests` at a file's end left out), so it stays true
//! as the code changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// From the top floor down; a module not listed here fails the test, so a
/// new module is given its floor on purpose.
const FLOORS: &[&[&str]] = &[
    &["runtime", "lambda", "doctor", "api", "webhooks", "fuzz"],
    &["login", "sync"],
    &["refresh"],
    &[
        "connection",
        "oauth",
        "secrets",
        "metrics",
        "shards",
        "events",
        "reload",
    ],
    &["config", "crypto"],
    // The ground floor.
    &[
        "telemetry",
        "aws",
        "when",
        "secret",
        "http",
        "dynamo",
        "text",
        "backoff",
        "json",
    ],
];

fn floor_of(module: &str) -> Option<usize> {
    // Higher floors get higher numbers.
    FLOORS
        .iter()
        .position(|floor| floor.contains(&module))
        .map(|i| FLOORS.len() - i)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a piece of source names through `crate::`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: the first name of each top-level item.
                let mut depth = 0;
                let mut start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && (c.is_ascii_alphanumeric() || c == '_') => {
                            named.insert(ident(&group[i..]));
                            start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let name = ident(rest);
                if !name.is_empty() {
                    named.insert(name);
                }
            }
        }
    }
    named
}

/// module -> (module it names -> files naming it).
fn arrows() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut arrows: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        let module = relative
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        // A file's unit tests may reach anywhere; they close the file.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        for named in named_modules(code) {
            if named != module {
                arrows
                    .entry(module.clone())
                    .or_default()
                    .entry(named)
                    .or_default()
                    .insert(relative.clone());
            }
        }
        arrows.entry(module).or_default();
    }
    arrows
}

#[test]
fn the_reader_finds_every_module_a_line_names() {
    let named = named_modules(
        "use crate::dynamo::{n, s};\nuse crate::{config::Config, when};\n// crate::api in a comment\nlet x = crate::http::client(t, crate::http::Pooling::Off);",
    );
    let expected: BTreeSet<String> = ["dynamo", "config", "when", "http"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(named, expected);
}

#[test]
fn no_module_imports_one_on_a_higher_floor() {
    let mut wrong = Vec::new();
    for (module, named) in arrows() {
        let Some(floor) = floor_of(&module) else {
            wrong.push(format!("module `{module}` has no floor in FLOORS: give it one"));
            continue;
        };
        for (other, files) in named {
            match floor_of(&other) {
                None => wrong.push(format!("`{module}` names `{other}`, which has no floor ({files:?})")),
                Some(higher) if higher > floor => {
                    wrong.push(format!("`{module}` imports `{other}` from a higher floor in {files:?}"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let arrows = arrows();
    // Depth-first, three colours: an arrow back to a module on the path is a circle.
    fn visit<'a>(
        module: &'a str,
        arrows: &'a BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        path.push(module);
        for next in arrows.get(module).map(|m| m.keys()).into_iter().flatten() {
            if let Some(at) = path.iter().position(|m| m == next) {
                circles.push(format!("{} -> {next}", path[at..].join(" -> ")));
            } else if !done.contains(next.as_str()) {
                visit(next, arrows, path, done, circles);
            }
        }
        path.pop();
        done.insert(module);
    }
    let mut done = BTreeSet::new();
    let mut circles = Vec::new();
    for module in arrows.keys() {
        if !done.contains(module.as_str()) {
            visit(module, &arrows, &mut Vec::new(), &mut done, &mut circles);
        }
    }
    assert!(circles.is_empty(), "{}", circles.join("\n"));
}
