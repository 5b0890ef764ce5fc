//! Path patterns and the per-host path index.

use super::PatternError;
use super::Route;
use ahash::AHashMap;
use regex::{Regex, RegexSet};
use std::sync::Arc;

/// A compiled `paths` entry.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// `=/p`: the whole path must equal `/p`.
    Exact(String),
    /// `/p`: the path is `/p` or continues with `/` after it. A trailing slash (`/p/`) requires
    /// something after the prefix. `/` matches every path.
    Prefix(String),
    /// `~re`: the regex must match the path (anchor it with `^` and `$` yourself).
    Regex(Regex),
}

impl PathPattern {
    /// Parses a `paths` entry.
    pub fn parse(text: &str) -> Result<PathPattern, PatternError> {
        if let Some(re) = text.strip_prefix('~') {
            return Regex::new(re)
                .map(PathPattern::Regex)
                .map_err(|source| PatternError::Regex {
                    pattern: re.into(),
                    source,
                });
        }
        let (exact, path) = match text.strip_prefix('=') {
            Some(p) => (true, p),
            None => (false, text),
        };
        if !path.starts_with('/') {
            return Err(PatternError::Path(text.into()));
        }
        Ok(if exact {
            PathPattern::Exact(path.to_string())
        } else {
            PathPattern::Prefix(path.to_string())
        })
    }
}

/// How a path matched, for precedence: exact beats the longest prefix beats a regex.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy, Debug)]
pub enum PathRank {
    /// A regex matched.
    Regex,
    /// A prefix of this many bytes matched.
    Prefix(usize),
    /// The path matched exactly.
    Exact,
}

/// A route reachable at one position of the index.
#[derive(Debug)]
pub struct Candidate {
    pub route: Arc<Route>,
    /// Declaration order of the route.
    pub order: usize,
    /// Bytes of the request path a prefix match covers (what `strip_prefix` removes).
    pub prefix_len: usize,
}

#[derive(Default)]
struct PrefixNode {
    children: AHashMap<Box<str>, PrefixNode>,
    /// Prefixes ending at this segment (`/a/b`): match `/a/b` and `/a/b/...`.
    here: Vec<Candidate>,
    /// Prefixes ending at this segment with a trailing slash (`/a/b/`): match `/a/b/...` only.
    below: Vec<Candidate>,
}

/// Exact paths, a segment trie of prefixes and the regexes of one host.
pub struct PathIndex {
    exact: AHashMap<Box<str>, Vec<Candidate>>,
    prefixes: PrefixNode,
    regexes: Vec<(Regex, Candidate)>,
    /// All of `regexes` in one automaton, so a path is scanned once however many there are.
    regex_set: Option<RegexSet>,
    /// The highest route priority in this index, to skip it when it cannot win.
    pub max_priority: i64,
}

impl Default for PathIndex {
    fn default() -> Self {
        PathIndex {
            exact: AHashMap::default(),
            prefixes: PrefixNode::default(),
            regexes: Vec::new(),
            regex_set: None,
            max_priority: i64::MIN,
        }
    }
}

impl PathIndex {
    /// Adds `route` under `pattern`.
    pub fn insert(&mut self, pattern: &PathPattern, route: Arc<Route>, order: usize) {
        self.max_priority = self.max_priority.max(route.priority);
        let mut cand = Candidate {
            route,
            order,
            prefix_len: 0,
        };
        match pattern {
            PathPattern::Exact(p) => {
                cand.prefix_len = p.len();
                self.exact.entry(p.as_str().into()).or_default().push(cand)
            }
            PathPattern::Regex(re) => self.regexes.push((re.clone(), cand)),
            PathPattern::Prefix(p) => {
                let trimmed = p.trim_end_matches('/');
                cand.prefix_len = trimmed.len();
                let mut node = &mut self.prefixes;
                for seg in trimmed.split('/').skip(1) {
                    node = node.children.entry(seg.into()).or_default();
                }
                if p.ends_with('/') && !trimmed.is_empty() {
                    node.below.push(cand);
                } else {
                    node.here.push(cand);
                }
            }
        }
    }

    /// Compiles the regexes into one set; call after the last [`PathIndex::insert`].
    pub fn finish(&mut self) {
        // A set only pays off with several regexes; if it cannot be built (size limits), the
        // regexes are tried one by one.
        self.regex_set = (self.regexes.len() > 1)
            .then(|| RegexSet::new(self.regexes.iter().map(|(re, _)| re.as_str())).ok())
            .flatten();
    }

    /// Calls `f` for every candidate whose path pattern matches `path`.
    pub fn for_each_match<'s>(&'s self, path: &str, mut f: impl FnMut(&'s Candidate, PathRank)) {
        if let Some(cands) = self.exact.get(path) {
            cands.iter().for_each(|c| f(c, PathRank::Exact));
        }
        let mut node = &self.prefixes;
        self.prefixes
            .here
            .iter()
            .for_each(|c| f(c, PathRank::Prefix(0)));
        let mut rest = path;
        while let Some(after_slash) = rest.strip_prefix('/') {
            let (seg, tail) = match after_slash.find('/') {
                Some(i) => after_slash.split_at(i),
                None => (after_slash, ""),
            };
            match node.children.get(seg) {
                Some(child) => node = child,
                None => break,
            }
            rest = tail;
            let len = path.len() - rest.len();
            node.here.iter().for_each(|c| f(c, PathRank::Prefix(len)));
            if !rest.is_empty() {
                node.below.iter().for_each(|c| f(c, PathRank::Prefix(len)));
            }
        }
        match &self.regex_set {
            Some(set) => set
                .matches(path)
                .iter()
                .filter_map(|i| self.regexes.get(i))
                .for_each(|(_, cand)| f(cand, PathRank::Regex)),
            None => self
                .regexes
                .iter()
                .filter(|(re, _)| re.is_match(path))
                .for_each(|(_, cand)| f(cand, PathRank::Regex)),
        }
    }
}
