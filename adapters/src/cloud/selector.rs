//! Kubernetes label selectors, as the Hetzner Cloud API takes them in
//! `label_selector` and the Kubernetes API in `labelSelector`: `k=v`
//! (`k==v`), `k!=v` (also true when `k` is absent), `k`, `!k`,
//! `k in (a,b)`, `k notin (a)` (also true when absent), comma = AND, empty
//! = everything. Keys and values are checked as Kubernetes checks them.
//!
//! One parser for the real clients (which build selectors) and the fakes
//! (which must answer them as the real APIs do).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

/// A parsed Kubernetes label selector (comma = AND).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector(Vec<Req>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Not,
    NotEq,
    Eq,
    LParen,
    RParen,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    out.push(Tok::NotEq);
                } else {
                    out.push(Tok::Not);
                }
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                }
                out.push(Tok::Eq);
            }
            '(' => {
                chars.next();
                out.push(Tok::LParen);
            }
            ')' => {
                chars.next();
                out.push(Tok::RParen);
            }
            ',' => {
                chars.next();
                out.push(Tok::Comma);
            }
            '<' | '>' => return Err(format!("unsupported operator `{c}`")),
            _ => {
                let mut ident = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "!=(),<>".contains(c) {
                        break;
                    }
                    ident.push(c);
                    chars.next();
                }
                out.push(Tok::Ident(ident));
            }
        }
    }
    Ok(out)
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain.
pub fn valid_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
                && is_label_name(name)
        }
        None => is_label_name(k),
    }
}

/// A label value: empty, or a label name.
pub fn valid_label_value(v: &str) -> bool {
    v.is_empty() || is_label_name(v)
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let toks = lex(s)?;
        let mut reqs = Vec::new();
        if toks.is_empty() {
            return Ok(Selector(reqs));
        }
        let mut i = 0;
        let key_at = |i: usize| -> Result<String, String> {
            match toks.get(i) {
                Some(Tok::Ident(k)) if valid_label_key(k) => Ok(k.clone()),
                Some(Tok::Ident(k)) => Err(format!("invalid label key `{k}`")),
                other => Err(format!("expected a label key, found {other:?}")),
            }
        };
        loop {
            if toks.get(i) == Some(&Tok::Not) {
                let k = key_at(i + 1)?;
                reqs.push(Req::NotExists(k));
                i += 2;
            } else {
                let k = key_at(i)?;
                i += 1;
                match toks.get(i) {
                    None | Some(Tok::Comma) => reqs.push(Req::Exists(k)),
                    Some(op @ (Tok::Eq | Tok::NotEq)) => {
                        let v = match toks.get(i + 1) {
                            Some(Tok::Ident(v)) => {
                                i += 1;
                                v.clone()
                            }
                            None | Some(Tok::Comma) => String::new(),
                            other => {
                                return Err(format!(
                                    "expected a value after `{k}`, found {other:?}"
                                ));
                            }
                        };
                        if !valid_label_value(&v) {
                            return Err(format!("invalid label value `{v}`"));
                        }
                        reqs.push(if *op == Tok::Eq { Req::Eq(k, v) } else { Req::NotEq(k, v) });
                        i += 1;
                    }
                    Some(Tok::Ident(word)) if word == "in" || word == "notin" => {
                        let notin = word == "notin";
                        i += 1;
                        if toks.get(i) != Some(&Tok::LParen) {
                            return Err(format!("expected `(` after `{word}`"));
                        }
                        i += 1;
                        let mut set = BTreeSet::new();
                        loop {
                            match toks.get(i) {
                                Some(Tok::Ident(v)) if valid_label_value(v) => {
                                    set.insert(v.clone());
                                    i += 1;
                                }
                                Some(Tok::Ident(v)) => {
                                    return Err(format!("invalid label value `{v}`"));
                                }
                                other => {
                                    return Err(format!(
                                        "expected a value in the set, found {other:?}"
                                    ));
                                }
                            }
                            match toks.get(i) {
                                Some(Tok::Comma) => i += 1,
                                Some(Tok::RParen) => {
                                    i += 1;
                                    break;
                                }
                                other => {
                                    return Err(format!("expected `,` or `)`, found {other:?}"));
                                }
                            }
                        }
                        reqs.push(if notin { Req::NotIn(k, set) } else { Req::In(k, set) });
                    }
                    Some(other) => {
                        return Err(format!("expected an operator after `{k}`, found {other:?}"));
                    }
                }
            }
            match toks.get(i) {
                None => break,
                Some(Tok::Comma) if i + 1 < toks.len() => i += 1,
                Some(Tok::Comma) => return Err("trailing `,`".into()),
                Some(other) => return Err(format!("expected `,`, found {other:?}")),
            }
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::NotEq(k, v) => labels.get(k) != Some(v),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
            Req::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Req::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
        })
    }

    /// Matches a JSON object of string labels (absent/non-object = no labels).
    pub fn matches_json(&self, labels: Option<&Value>) -> bool {
        let map: BTreeMap<String, String> = labels
            .and_then(Value::as_object)
            .map(|m| {
                m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect()
            })
            .unwrap_or_default();
        self.matches(&map)
    }
}

/// Kubernetes label-selector semantics: `k=v` (`k==v`), `k!=v` (also true
/// when `k` is absent), `k`, `!k`, `k in (a,b)`, `k notin (a)` (also true
/// when absent), comma = AND, empty = everything. `Err` on bad syntax.
pub fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    Ok(Selector::parse(selector)?.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn m(sel: &str, l: &BTreeMap<String, String>) -> bool {
        selector_matches(sel, l).unwrap_or_else(|e| panic!("`{sel}` should parse: {e}"))
    }

    #[test]
    fn selector_operators() {
        let l = labels(&[("env", "prod"), ("catalyst.io/job", "j1"), ("tier", "")]);
        let none = BTreeMap::new();
        // equality
        assert!(m("env=prod", &l));
        assert!(m("env==prod", &l));
        assert!(m(" env = prod ", &l));
        assert!(!m("env=dev", &l));
        assert!(!m("env=prod", &none));
        assert!(m("tier=", &l), "empty value matches an empty label");
        // inequality: absent keys match
        assert!(m("env!=dev", &l));
        assert!(!m("env!=prod", &l));
        assert!(m("env!=prod", &none));
        // existence
        assert!(m("catalyst.io/job", &l));
        assert!(!m("missing", &l));
        assert!(m("!missing", &l));
        assert!(!m("!env", &l));
        // set based
        assert!(m("env in (dev, prod)", &l));
        assert!(!m("env in (dev,stage)", &l));
        assert!(!m("env in (prod)", &none));
        assert!(m("env notin (dev)", &l));
        assert!(!m("env notin (dev,prod)", &l));
        assert!(m("env notin (prod)", &none), "notin matches when the key is absent");
        // AND
        assert!(m("env=prod,catalyst.io/job=j1", &l));
        assert!(!m("env=prod,catalyst.io/job=j2", &l));
        assert!(m("env in (prod),!gone,catalyst.io/job", &l));
        // empty selects everything
        assert!(m("", &none));
        assert!(m("   ", &l));
    }

    #[test]
    fn selector_syntax_errors() {
        let l = BTreeMap::new();
        for bad in [
            "env=prod,",
            ",env",
            "env in ()",
            "env in (a",
            "env in a",
            "env notin (a,)",
            "env prod",
            "=prod",
            "!",
            "env>3",
            "Bad Key=1",
            "-bad=1",
            "env=bad value!",
            "env=-x",
            "UPPER.example/x=1",
            "env==prod==x",
        ] {
            assert!(selector_matches(bad, &l).is_err(), "`{bad}` should be refused");
        }
    }
}
