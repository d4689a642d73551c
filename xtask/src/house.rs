//! The house plan as a tested contract: which way the modules of
//! knock-user and knock-ebpf may import each other, and how long a source
//! file may grow.
//!
//! Each source file is a node. A `mod NAME;` declaration is an edge from the
//! declaring file to the declared one; every `crate::`, `super::` and
//! `self::` path (in `use` trees and in code) is an edge to the file that
//! defines the longest module prefix of it. Test modules (files or inline
//! modules named `tests`) are left out: they stand above what they test.
//! The checks: no import circle in either crate; in knock-user, every edge
//! between two top-level modules goes down the ranks of [`USER_RANKS`]; no
//! source file outside tests is longer than [`MAX_LINES`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Longest source file outside tests.
pub const MAX_LINES: usize = 800;

/// knock-user's top-level modules, highest first: a module imports only
/// from modules of a lower rank (and from within itself).
pub const USER_RANKS: &[(&str, u8)] = &[
    ("main", 7),
    ("cli", 6),
    ("daemon", 5),
    ("admin", 4),
    ("client", 3),
    ("fleet", 3),
    ("import", 3),
    ("loader", 2),
    ("config", 1),
    ("fwknop", 0),
];

/// One crate's sources: path relative to `src/` -> text without comments
/// and string literals.
pub struct Sources {
    files: BTreeMap<PathBuf, String>,
}

impl Sources {
    pub fn read(src: &Path) -> std::io::Result<Sources> {
        let mut files = BTreeMap::new();
        let mut dirs = vec![src.to_owned()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = fs::read_to_string(&path)?;
                    let rel = path.strip_prefix(src).expect("below src").to_owned();
                    files.insert(rel, text);
                }
            }
        }
        Ok(Sources { files })
    }

    /// Files longer than [`MAX_LINES`] that are not tests, with their length.
    pub fn too_long(&self) -> Vec<(PathBuf, usize)> {
        self.files
            .iter()
            .filter(|(rel, _)| !module_path(rel).iter().any(|m| m == "tests"))
            .map(|(rel, text)| (rel.clone(), text.lines().count()))
            .filter(|(_, lines)| *lines > MAX_LINES)
            .collect()
    }

    /// Files that define an XDP program (`#[xdp]`).
    pub fn programs(&self) -> BTreeSet<PathBuf> {
        self.files
            .iter()
            .filter(|(_, text)| strip(text).contains("#[xdp]"))
            .map(|(rel, _)| rel.clone())
            .collect()
    }

    /// Every import edge between two files, as (from, to).
    pub fn edges(&self) -> BTreeSet<(PathBuf, PathBuf)> {
        // Several crate roots (the XDP crate's bins) all are module `crate`.
        let mut modules: BTreeMap<Vec<String>, Vec<&PathBuf>> = BTreeMap::new();
        for rel in self.files.keys() {
            modules.entry(module_path(rel)).or_default().push(rel);
        }
        let resolve = |path: &[String]| {
            (0..=path.len())
                .rev()
                .find_map(|n| modules.get(&path[..n]))
                .cloned()
                .unwrap_or_default()
        };
        let mut edges = BTreeSet::new();
        for (rel, text) in &self.files {
            let me = module_path(rel);
            if me.last().is_some_and(|m| m == "tests") {
                continue;
            }
            let code = strip(text);
            let inline = inline_modules(&code);
            for declared in declared_modules(&code) {
                let mut child = me.clone();
                child.push(declared);
                for to in modules.get(&child).into_iter().flatten() {
                    edges.insert((rel.clone(), (*to).clone()));
                }
            }
            for (at, kind) in path_starts(&code) {
                let mut here = me.clone();
                here.extend(
                    inline
                        .iter()
                        .filter(|(start, end, _)| (*start..*end).contains(&at))
                        .map(|(_, _, name)| name.clone()),
                );
                if here.iter().any(|m| m == "tests") {
                    continue;
                }
                let base = match kind {
                    "crate" => Vec::new(),
                    "super" => here[..here.len().saturating_sub(1)].to_vec(),
                    _ => here.clone(),
                };
                let after = &code[at + kind.len() + 2..];
                for tail in expand(after) {
                    let mut full = base.clone();
                    full.extend(tail);
                    for to in resolve(&full).into_iter().filter(|to| *to != rel) {
                        edges.insert((rel.clone(), to.clone()));
                    }
                }
            }
        }
        edges
    }
}

/// `a/b.rs` is module `a::b`; `a/mod.rs`, `lib.rs` and `main.rs` name their
/// directory's module.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.len() == 1 && ["lib", "main"].contains(&parts[0].as_str())
        || parts.last().is_some_and(|p| p == "mod")
    {
        parts.pop();
    }
    parts
}

/// The text with comments, string literals and char literals blanked out
/// (same length, so offsets stay).
fn strip(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to.min(bytes.len())] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let end = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                blank(&mut out, i, j + 1);
                i = j + 1;
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                let end = text[i + 1..].find('\'').map_or(bytes.len(), |n| i + 1 + n);
                let end = if bytes.get(i + 1) == Some(&b'\\') && end == i + 2 {
                    i + 3
                } else {
                    end
                };
                blank(&mut out, i, end + 1);
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Names of `mod NAME;` declarations.
fn declared_modules(code: &str) -> Vec<String> {
    words_after(code, "mod")
        .filter(|(name, rest)| rest.trim_start().starts_with(';') && !name.is_empty())
        .map(|(name, _)| name)
        .collect()
}

/// Inline `mod NAME { ... }` blocks: (start, end, name).
fn inline_modules(code: &str) -> Vec<(usize, usize, String)> {
    let mut found = Vec::new();
    for (name, rest) in words_after(code, "mod") {
        let trimmed = rest.trim_start();
        if !trimmed.starts_with('{') {
            continue;
        }
        let start = code.len() - trimmed.len() + 1;
        let mut depth = 1;
        let mut end = start;
        for (n, c) in code[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = start + n;
                break;
            }
        }
        found.push((start, end, name));
    }
    found
}

/// For each whole word `word`: the identifier after it and the text after
/// that identifier.
fn words_after<'a>(code: &'a str, word: &'a str) -> impl Iterator<Item = (String, &'a str)> + 'a {
    code.match_indices(word).filter_map(move |(at, _)| {
        let bytes = code.as_bytes();
        if at > 0 && is_ident(bytes[at - 1]) {
            return None;
        }
        let rest = &code[at + word.len()..];
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        let rest = rest.trim_start();
        let len = rest.bytes().take_while(|b| is_ident(*b)).count();
        Some((rest[..len].to_owned(), &rest[len..]))
    })
}

/// Offsets of `crate::`, `super::` and `self::` that start a path.
fn path_starts(code: &str) -> Vec<(usize, &'static str)> {
    let bytes = code.as_bytes();
    let mut starts = Vec::new();
    for kind in ["crate", "super", "self"] {
        for (at, _) in code.match_indices(&format!("{kind}::")) {
            if at == 0 || !(is_ident(bytes[at - 1]) || bytes[at - 1] == b':') {
                starts.push((at, kind));
            }
        }
    }
    starts
}

/// The module paths a use tree (or a plain path) names: `a::{b, c::d}` is
/// `[a, b]` and `[a, c, d]`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    let mut rest = tree.trim_start();
    loop {
        let len = rest.bytes().take_while(|b| is_ident(*b)).count();
        if len == 0 {
            break;
        }
        prefix.push(rest[..len].to_owned());
        let after = rest[len..].trim_start();
        match after.strip_prefix("::") {
            Some(more) => rest = more.trim_start(),
            None => return vec![prefix],
        }
    }
    let Some(inner) = rest.strip_prefix('{') else {
        return vec![prefix];
    };
    let mut paths = Vec::new();
    let (mut depth, mut item_start) = (1, 0);
    for (n, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                let item = &inner[item_start..n];
                let tails = if item.trim().is_empty() {
                    Vec::new()
                } else {
                    expand(item)
                };
                for tail in tails {
                    let mut path = prefix.clone();
                    path.extend(tail);
                    paths.push(path);
                }
                item_start = n + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    paths
}

/// The groups of files that import each other in a circle.
pub fn circles(edges: &BTreeSet<(PathBuf, PathBuf)>) -> Vec<Vec<PathBuf>> {
    let mut next: BTreeMap<&PathBuf, Vec<&PathBuf>> = BTreeMap::new();
    for (from, to) in edges {
        next.entry(from).or_default().push(to);
    }
    let reaches = |from: &PathBuf, goal: &PathBuf| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(node) = todo.pop() {
            for to in next.get(node).into_iter().flatten() {
                if *to == goal {
                    return true;
                }
                if seen.insert(*to) {
                    todo.push(to);
                }
            }
        }
        false
    };
    let mut circles: Vec<Vec<PathBuf>> = Vec::new();
    let nodes: BTreeSet<&PathBuf> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    for node in nodes {
        if circles.iter().any(|c| c.contains(node)) || !reaches(node, node) {
            continue;
        }
        let members = edges
            .iter()
            .flat_map(|(a, b)| [a, b])
            .filter(|other| reaches(node, other) && reaches(other, node))
            .cloned()
            .collect::<BTreeSet<_>>();
        circles.push(members.into_iter().collect());
    }
    circles
}

/// knock-user edges between top-level modules that do not go down
/// [`USER_RANKS`].
pub fn upward(edges: &BTreeSet<(PathBuf, PathBuf)>) -> Vec<(PathBuf, PathBuf)> {
    edges
        .iter()
        .filter(|(from, to)| {
            let (a, b) = (top_module(from), top_module(to));
            a != b && rank(&a).unwrap_or(u8::MAX) <= rank(&b).unwrap_or(0)
        })
        .cloned()
        .collect()
}

/// The top-level module a file belongs to; the crate roots (`lib.rs`,
/// `main.rs`) are `main`.
fn top_module(rel: &Path) -> String {
    module_path(rel)
        .first()
        .cloned()
        .unwrap_or_else(|| "main".into())
}

/// A top-level module's rank in [`USER_RANKS`], if it has one.
fn rank(top: &str) -> Option<u8> {
    USER_RANKS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, rank)| *rank)
}

/// knock-user's top-level modules that [`USER_RANKS`] does not rank: a new
/// module must take its place in the order before the check covers it.
pub fn unranked(sources: &Sources) -> BTreeSet<String> {
    sources
        .files
        .keys()
        .map(|rel| top_module(rel))
        .filter(|top| rank(top).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(krate: &str) -> Sources {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(krate)
            .join("src");
        Sources::read(&src).expect("the crate's sources")
    }

    fn edge(from: &str, to: &str) -> (PathBuf, PathBuf) {
        (PathBuf::from(from), PathBuf::from(to))
    }

    #[test]
    fn use_trees_expand_to_every_path_they_name() {
        assert_eq!(
            expand(" a::{b, c::{d, e}, f::g as h,}, x;"),
            vec![
                vec!["a", "b"],
                vec!["a", "c", "d"],
                vec!["a", "c", "e"],
                vec!["a", "f", "g"],
            ]
        );
        assert_eq!(
            expand("maps::Maps::open(x)"),
            vec![vec!["maps", "Maps", "open"]]
        );
    }

    #[test]
    fn a_circle_and_an_upward_import_are_found() {
        let edges = BTreeSet::from([
            edge("loader/mod.rs", "loader/maps.rs"),
            edge("loader/maps.rs", "loader/mod.rs"),
            edge("loader/maps.rs", "daemon/run.rs"),
            edge("daemon/run.rs", "loader/maps.rs"),
            edge("config/mod.rs", "fwknop/mod.rs"),
        ]);
        assert_eq!(circles(&edges).len(), 1);
        assert_eq!(circles(&edges)[0].len(), 3);
        assert_eq!(
            upward(&edges),
            vec![edge("loader/maps.rs", "daemon/run.rs")]
        );
    }

    #[test]
    fn paths_in_comments_strings_and_test_modules_are_not_imports() {
        let dir = std::env::temp_dir().join(format!("xknock-house-{}", std::process::id()));
        fs::create_dir_all(dir.join("a")).unwrap();
        fs::write(
            dir.join("lib.rs"),
            "mod a;\n// crate::a::x\nconst S: &str = \"crate::a\";\n#[cfg(test)]\nmod tests { use crate::a::x; }\n",
        )
        .unwrap();
        fs::write(dir.join("a/mod.rs"), "pub fn x() { let _ = super::y; }\n").unwrap();
        let found = Sources::read(&dir).unwrap().edges();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            BTreeSet::from([edge("lib.rs", "a/mod.rs"), edge("a/mod.rs", "lib.rs")])
        );
    }

    #[test]
    fn knock_user_imports_go_down_and_never_in_a_circle() {
        let sources = sources("knock-user");
        assert_eq!(unranked(&sources), BTreeSet::new());
        let edges = sources.edges();
        assert!(edges.len() > 50, "the scan found the imports: {edges:?}");
        assert_eq!(circles(&edges), Vec::<Vec<PathBuf>>::new());
        assert_eq!(upward(&edges), Vec::<(PathBuf, PathBuf)>::new());
    }

    #[test]
    fn knock_ebpf_modules_import_each_other_in_no_circle() {
        let edges = sources("knock-ebpf").edges();
        assert!(edges.len() > 20, "the scan found the imports: {edges:?}");
        assert_eq!(circles(&edges), Vec::<Vec<PathBuf>>::new());
    }

    /// The XDP programs sit at the top: in `programs.rs` (the filter's, which
    /// both objects share) or a crate root (the traced object's own, the
    /// bench's baselines), and no module imports from them.
    #[test]
    fn knock_ebpf_programs_sit_at_the_top() {
        let sources = sources("knock-ebpf");
        let top = ["programs.rs", "main.rs", "traced.rs", "baseline.rs"].map(PathBuf::from);
        let programs = sources.programs();
        assert!(programs.contains(Path::new("programs.rs")), "{programs:?}");
        assert!(
            programs.iter().all(|file| top.contains(file)),
            "{programs:?}"
        );
        let edges = sources.edges();
        let into_programs: Vec<_> = edges
            .iter()
            .filter(|(from, to)| to == Path::new("programs.rs") && !top.contains(from))
            .collect();
        assert_eq!(into_programs, Vec::<&(PathBuf, PathBuf)>::new());
    }

    #[test]
    fn no_source_file_outside_tests_is_longer_than_the_limit() {
        for krate in ["knock-common", "knock-ebpf", "knock-user", "xtask", "bench"] {
            assert_eq!(sources(krate).too_long(), Vec::new(), "{krate}");
        }
    }
}
