//! Topic selectors (SPEC §8.2): `*`, an exact topic, or an RFC 6570 URI
//! template such as `accounts/{id}` that matches the topics it can expand to.
//!
//! Matching follows the Go hub (`dunglas/mercure` `topicselector.go`): `*`
//! matches everything, then string equality (so a template matches itself),
//! then the selector as a URI template compiled to an anchored regex, then no
//! match. No crate on crates.io matches (rather than expands) RFC 6570
//! templates under a licence this project can use, so templates are compiled
//! here, once per selector string. Results of template matches are cached per
//! (selector, topic) in one bounded process-wide cache, as the Go hub does, so
//! a template selector costs one regex run per distinct topic.

use std::{
    hash::Hash,
    sync::{Arc, OnceLock},
};

use quick_cache::{sync::Cache, Equivalent};
use regex::Regex;

/// The selector matching every topic.
pub const ANY: &str = "*";

/// Entries of the (template selector, topic) → match cache. A hub with
/// thousands of template streams and thousands of topics stays well inside it;
/// beyond that, results are recomputed (correct, only slower).
pub const MATCH_CACHE_ENTRIES: usize = 65_536;

/// Entries of the selector string → compiled selector cache, so the same
/// template parsed by many streams is compiled once.
pub const SELECTOR_CACHE_ENTRIES: usize = 8_192;

/// A topic selector: `*`, an exact string, or an RFC 6570 URI template.
///
/// Cheap to clone (the parsed form is shared behind an [`Arc`]).
#[derive(Debug, Clone)]
pub struct Selector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    raw: Box<str>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Any,
    /// No template expressions, or not a valid template: equality only.
    Exact,
    /// A template with at least one expression, compiled to an anchored regex.
    Template(Regex),
}

impl Selector {
    /// Parses a selector. Infallible: a string that is not a valid URI
    /// template (e.g. an unclosed `{`) is an exact-only selector, as in the
    /// Go hub. Compiled selectors are shared through a bounded cache.
    pub fn parse(raw: &str) -> Selector {
        if raw == ANY {
            return Selector::new(raw, Kind::Any);
        }
        if !raw.contains('{') {
            return Selector::new(raw, Kind::Exact);
        }
        let cache = selector_cache();
        if let Some(selector) = cache.get(raw) {
            return selector;
        }
        let kind = match compile_template(raw) {
            Some(regex) => Kind::Template(regex),
            None => Kind::Exact,
        };
        let selector = Selector::new(raw, kind);
        cache.insert(raw.into(), selector.clone());
        selector
    }

    fn new(raw: &str, kind: Kind) -> Selector {
        Selector {
            inner: Arc::new(Inner {
                raw: raw.into(),
                kind,
            }),
        }
    }

    /// The selector as given.
    pub fn as_str(&self) -> &str {
        &self.inner.raw
    }

    /// True for the `*` selector.
    pub fn is_any(&self) -> bool {
        matches!(self.inner.kind, Kind::Any)
    }

    /// True when the selector is a valid URI template with expressions (so it
    /// may match topics other than itself).
    pub fn is_template(&self) -> bool {
        matches!(self.inner.kind, Kind::Template(_))
    }

    /// Whether `topic` is selected (SPEC §8.2): `*`; exact equality; template
    /// match (cached per selector and topic).
    pub fn matches(&self, topic: &str) -> bool {
        match &self.inner.kind {
            Kind::Any => true,
            Kind::Exact => *self.inner.raw == *topic,
            Kind::Template(regex) => {
                if *self.inner.raw == *topic {
                    return true;
                }
                let cache = match_cache();
                let key = MatchKey(&self.inner.raw, topic);
                if let Some(hit) = cache.get(&key) {
                    return hit;
                }
                let hit = regex.is_match(topic);
                cache.insert((self.inner.raw.clone(), topic.into()), hit);
                hit
            }
        }
    }

    /// [`Selector::matches`] without the cache; the reference the cache is
    /// tested against.
    pub fn matches_uncached(&self, topic: &str) -> bool {
        match &self.inner.kind {
            Kind::Any => true,
            Kind::Exact => *self.inner.raw == *topic,
            Kind::Template(regex) => *self.inner.raw == *topic || regex.is_match(topic),
        }
    }
}

/// True when any topic matches any selector (SPEC §8.2 delivery rule: an
/// event reaches a subscriber when any of its topics, canonical or alternate,
/// matches any of the subscriber's selectors).
pub fn matches_any(selectors: &[Selector], topics: &[impl AsRef<str>]) -> bool {
    selectors
        .iter()
        .any(|selector| topics.iter().any(|topic| selector.matches(topic.as_ref())))
}

type MatchCache = Cache<(Box<str>, Box<str>), bool>;

fn match_cache() -> &'static MatchCache {
    static CACHE: OnceLock<MatchCache> = OnceLock::new();
    CACHE.get_or_init(|| Cache::new(MATCH_CACHE_ENTRIES))
}

fn selector_cache() -> &'static Cache<Box<str>, Selector> {
    static CACHE: OnceLock<Cache<Box<str>, Selector>> = OnceLock::new();
    CACHE.get_or_init(|| Cache::new(SELECTOR_CACHE_ENTRIES))
}

/// Borrowed form of the match-cache key, so a lookup allocates nothing. Hashes
/// like the owned tuple (two `str`s in order).
#[derive(Hash)]
struct MatchKey<'a>(&'a str, &'a str);

impl Equivalent<(Box<str>, Box<str>)> for MatchKey<'_> {
    fn equivalent(&self, key: &(Box<str>, Box<str>)) -> bool {
        *key.0 == *self.0 && *key.1 == *self.1
    }
}

/// Characters a simple (`{var}`) expansion leaves as they are: RFC 6570 §1.5
/// unreserved, plus any non-ASCII character (topics are IRIs), or a
/// percent-encoded octet.
const UNRESERVED: &str = r"(?:[A-Za-z0-9\-._~]|[^\x00-\x7F]|%[0-9A-Fa-f]{2})";
/// Characters a reserved (`{+var}`, `{#var}`) expansion leaves as they are:
/// unreserved and reserved (RFC 6570 §1.5).
const RESERVED: &str = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|[^\x00-\x7F]|%[0-9A-Fa-f]{2})";

/// Compiles a URI template (RFC 6570 levels 1–4) to an anchored regex matching
/// every string it can expand to. `None` when the template is invalid or has
/// no expression.
fn compile_template(template: &str) -> Option<Regex> {
    let mut pattern = String::from("^");
    let mut expressions = 0;
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            Some(at) if rest.as_bytes()[at] == b'}' => return None,
            Some(at) => {
                pattern.push_str(&regex::escape(&rest[..at]));
                let close = rest[at..].find('}')? + at;
                pattern.push_str(&expression(&rest[at + 1..close])?);
                expressions += 1;
                rest = &rest[close + 1..];
            }
            None => {
                pattern.push_str(&regex::escape(rest));
                rest = "";
            }
        }
    }
    if expressions == 0 {
        return None;
    }
    pattern.push('$');
    Regex::new(&pattern).ok()
}

/// One expression's operator behaviour (RFC 6570 Appendix A table).
struct Operator {
    first: &'static str,
    sep: &'static str,
    named: bool,
    /// `name=` (true) or bare `name` (false) for an empty value of a named variable.
    empty_has_equals: bool,
    chars: &'static str,
}

fn operator(c: char) -> Option<Operator> {
    let op = |first, sep, named, empty_has_equals, chars| Operator {
        first,
        sep,
        named,
        empty_has_equals,
        chars,
    };
    Some(match c {
        '+' => op("", ",", false, false, RESERVED),
        '#' => op("#", ",", false, false, RESERVED),
        '.' => op(".", ".", false, false, UNRESERVED),
        '/' => op("/", "/", false, false, UNRESERVED),
        ';' => op(";", ";", true, false, UNRESERVED),
        '?' => op("?", "&", true, true, UNRESERVED),
        '&' => op("&", "&", true, true, UNRESERVED),
        _ => return None,
    })
}

/// The regex for the inside of one `{…}`: the expansion with any subset of
/// its variables defined (undefined ones are omitted, RFC 6570 §3.2.1), and
/// nothing at all when none is.
fn expression(body: &str) -> Option<String> {
    let (op, list) = match body.chars().next()? {
        c @ ('+' | '#' | '.' | '/' | ';' | '?' | '&') => (operator(c)?, &body[1..]),
        // Reserved for future extensions (RFC 6570 §2.2): not a valid template.
        '=' | ',' | '!' | '@' | '|' => return None,
        _ => (
            Operator {
                first: "",
                sep: ",",
                named: false,
                empty_has_equals: false,
                chars: UNRESERVED,
            },
            body,
        ),
    };
    let items = list
        .split(',')
        .map(|spec| varspec(spec, &op))
        .collect::<Option<Vec<_>>>()?;
    let sep = regex::escape(op.sep);
    // Alternation on which variable is the first defined one; each later one
    // is optional and preceded by the separator.
    let alternatives: Vec<String> = (0..items.len())
        .map(|first| {
            let mut alt = items[first].clone();
            for item in &items[first + 1..] {
                alt.push_str(&format!("(?:{sep}{item})?"));
            }
            alt
        })
        .collect();
    Some(format!(
        "(?:{}(?:{}))?",
        regex::escape(op.first),
        alternatives.join("|")
    ))
}

/// The regex for one defined variable (`name`, `name:3`, `name*`) under `op`:
/// a string, a list or an associative array, exploded or not (§3.2.1).
fn varspec(spec: &str, op: &Operator) -> Option<String> {
    let (name, modifier) = match spec.find([':', '*']) {
        Some(at) => (&spec[..at], &spec[at..]),
        None => (spec, ""),
    };
    if !valid_varname(name) {
        return None;
    }
    let chars = op.chars;
    let value = match modifier {
        "" | "*" => format!("{chars}*"),
        prefix => {
            let len: u16 = prefix[1..].parse().ok()?;
            if !(1..=9999).contains(&len) || prefix[1..].starts_with(['+', '0']) {
                return None;
            }
            // A prefix applies to strings only; {0,len} is the string case.
            format!("{chars}{{0,{len}}}")
        }
    };
    let name = regex::escape(name);
    let sep = regex::escape(op.sep);
    let explode = modifier == "*";
    // A list/assoc value joined by commas (not exploded) or by the separator.
    let joined = |between: &str| format!("{value}(?:{between}{value})*");
    Some(if !op.named {
        if explode {
            // List items or `key=value` pairs joined by the separator.
            let pair = format!("{value}(?:={value})?");
            format!("{pair}(?:{sep}{pair})*")
        } else {
            joined(",")
        }
    } else if explode {
        // `name=v;name=v` for lists, `k=v;k=v` for associative arrays.
        let pair = format!("{chars}+(?:={value})?");
        format!("{pair}(?:{sep}{pair})*")
    } else if op.empty_has_equals {
        format!("{name}={}", joined(","))
    } else {
        format!("{name}(?:={})?", joined(","))
    })
}

/// RFC 6570 §2.3: `varchar *( ["."] varchar )`, varchar = ALPHA / DIGIT / "_" / pct-encoded.
fn valid_varname(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes[0] == b'.' || bytes[bytes.len() - 1] == b'.' {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.is_some_and(u8::is_ascii_hexdigit);
                if !(hex(bytes.get(i + 1)) && hex(bytes.get(i + 2))) {
                    return false;
                }
                i += 3;
                continue;
            }
            b'.' if bytes[i - 1] == b'.' => return false,
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(selector: &str, topic: &str) -> bool {
        let s = Selector::parse(selector);
        assert_eq!(
            s.matches(topic),
            s.matches_uncached(topic),
            "{selector} {topic}"
        );
        s.matches(topic)
    }

    #[test]
    fn any_exact_and_simple_templates() {
        assert!(Selector::parse("*").is_any());
        assert!(m("*", "whatever/at/all"));
        assert!(m("accounts", "accounts"));
        assert!(!m("accounts", "accounts/1"));
        assert!(m("accounts/{id}", "accounts/7"));
        assert!(m("accounts/{id}", "accounts/"));
        assert!(!m("accounts/{id}", "accounts/7/x"));
        assert!(!m("accounts/{id}", "accounts"));
        assert!(m(
            "https://example.com/books/{id}",
            "https://example.com/books/1"
        ));
        assert!(!m(
            "https://example.com/books/{id}",
            "https://example.com/books/1?x=y"
        ));
        assert!(m("{a}/{b}", "x/y"));
        assert!(m("{a}", "caf%C3%A9"));
        assert!(m("{a}", "café"));
        assert!(!m("{a}", "a b"));
    }

    #[test]
    fn operators() {
        assert!(m("https://example.com{+path}", "https://example.com/a/b?c"));
        assert!(m("https://example.com/{+path}", "https://example.com/"));
        assert!(m("page{#frag}", "page#a/b"));
        assert!(m("page{#frag}", "page"));
        assert!(m("x{.ext}", "x.json"));
        assert!(!m("x{.ext}", "x.a/b"));
        assert!(m("api{/seg*}", "api/a/b/c"));
        assert!(m("api{/a,b}", "api/1/2"));
        assert!(m("api{/a,b}", "api/2"));
        assert!(!m("api{/a}", "api/1/2"));
        assert!(m("m{;x,y}", "m;x=1;y"));
        assert!(m("q{?a,b}", "q?a=1&b=2"));
        assert!(m("q{?a,b}", "q?b="));
        assert!(!m("q{?a,b}", "q?c=1"));
        assert!(m("q{?list*}", "q?list=1&list=2"));
        assert!(m("q?x=1{&a}", "q?x=1&a=2"));
        assert!(m("{a:3}", "abc"));
        assert!(!m("{a:3}", "abcd"));
        assert!(m("{a,b}", "1,2"));
    }

    #[test]
    fn invalid_templates_are_exact_only() {
        for raw in [
            "a{b",
            "a}b",
            "{}",
            "{a b}",
            "{=a}",
            "{a:0}",
            "{a:10000}",
            "{a..b}",
        ] {
            let s = Selector::parse(raw);
            assert!(!s.is_template(), "{raw}");
            assert!(s.matches(raw), "{raw}");
            assert!(!s.matches("a"), "{raw}");
        }
        assert!(Selector::parse("books/{id}").is_template());
        assert!(!Selector::parse("books/1").is_template());
        assert_eq!(Selector::parse("books/{id}").as_str(), "books/{id}");
    }

    #[test]
    fn regex_metacharacters_in_selectors_are_literal() {
        assert!(!m("a.b", "axb"));
        assert!(!m("a.b/{id}", "axb/1"));
        assert!(m("a.b/{id}", "a.b/1"));
        assert!(!m("(a|b)/{id}", "a/1"));
        assert!(m("(a|b)/{id}", "(a|b)/1"));
        assert!(!m("a+/{id}", "aa/1"));
        assert!(!m("^$/{id}", "/1"));
    }

    #[test]
    fn matches_any_needs_one_pair() {
        let selectors = [Selector::parse("a/{x}"), Selector::parse("b")];
        assert!(matches_any(&selectors, &["z", "b"]));
        assert!(matches_any(&selectors, &["a/1"]));
        assert!(!matches_any(&selectors, &["z", "c/1"]));
        assert!(!matches_any(&[], &["b"]));
        assert!(!matches_any(&selectors, &[] as &[&str]));
    }

    /// A value a simple expansion leaves as it is (no `/`, `?`, `#`, …).
    fn simple_value() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._~-]{0,12}"
    }

    proptest! {
        #[test]
        fn exact_selector_matches_only_itself(raw in "[^{}*]{1,20}", other in "[^{}*]{1,20}") {
            let s = Selector::parse(&raw);
            prop_assert!(s.matches(&raw));
            prop_assert_eq!(s.matches(&other), raw == other);
        }

        #[test]
        fn star_matches_everything(topic in ".{0,40}") {
            prop_assert!(Selector::parse("*").matches(&topic));
        }

        #[test]
        fn template_matches_its_expansions(a in simple_value(), b in simple_value(), prefix in "[a-z:/.]{0,10}") {
            let template = format!("{prefix}{{a}}/{{b}}");
            let s = Selector::parse(&template);
            prop_assert!(s.is_template());
            let expanded = format!("{prefix}{a}/{b}");
            prop_assert!(s.matches(&expanded), "{} {}", template, expanded);
            // One more segment is not an expansion.
            let longer = format!("{expanded}/x");
            prop_assert!(!s.matches(&longer));
        }

        #[test]
        fn template_matches_itself(lit in "[a-z./]{0,8}", name in "[a-z]{1,5}", op in "[+#./;?&]?") {
            let raw = format!("{lit}{{{op}{name}}}");
            prop_assert!(Selector::parse(&raw).matches(&raw));
        }

        #[test]
        fn metacharacters_never_act_as_regex(lit in "[a-z]{1,4}[.*+?()|^$\\[\\]]{1,3}[a-z]{1,4}", v in "[a-z]{1,4}") {
            let s = Selector::parse(&format!("{lit}/{{id}}"));
            let literal = format!("{lit}/{v}");
            prop_assert!(s.matches(&literal));
            let mangled: String = lit.chars().map(|c| if c.is_ascii_lowercase() { c } else { 'x' }).collect();
            let mangled = format!("{mangled}/{v}");
            prop_assert!(!s.matches(&mangled));
        }

        #[test]
        fn cache_answers_like_uncached(template in "[a-z/]{0,4}\\{[+#./;?&]?[a-z]{1,3}\\*?\\}[a-z/]{0,4}", topic in "[a-z/;?&=.#,]{0,12}") {
            let s = Selector::parse(&template);
            let first = s.matches(&topic);
            prop_assert_eq!(first, s.matches_uncached(&topic));
            prop_assert_eq!(s.matches(&topic), first);
        }
    }
}
