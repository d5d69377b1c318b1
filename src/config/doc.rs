//! Where a config file is read: spans into `file:line:column`, TOML key paths, and the getters
//! every section uses to turn a spanned value into a checked one.
//!
//! Serde errors carry a byte span but not the key, so `key_at` finds the key by walking the
//! parsed document to that span.

use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// One file being read: its name for messages and its text for line numbers.
pub(super) struct Doc<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Doc<'_> {
    pub(super) fn err(
        &self,
        span: Option<Range<usize>>,
        key: Key,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            location: span.map(|s| line_col(self.text, s.start)),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    pub(super) fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| self.toml_err(&e))
    }

    fn toml_err(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let mut message = e.message().to_owned();
        let mut key = span.as_ref().and_then(|s| {
            let doc = DeTable::parse(self.text).ok()?;
            key_at(doc.get_ref(), &mut Vec::new(), s.start)
        });
        // Serde speaks of fields; a TOML file has keys.
        for (from, to) in [
            ("unknown field", "unknown key"),
            ("missing field", "missing key"),
        ] {
            if let Some(rest) = message.strip_prefix(from) {
                message = format!("{to}{}", rest.replacen(", expected", "; expected", 1));
            }
        }
        // Syntax errors have no parsed document to find a key in; a duplicate key's span
        // is the key itself.
        if key.is_none()
            && message == "duplicate key"
            && let Some(text) = span.clone().and_then(|s| self.text.get(s))
        {
            key = Some(Key::leaf_only(text));
        }
        ConfigError {
            path: self.path.to_owned(),
            location: span.map(|s| line_col(self.text, s.start)),
            key: key.map(|k| k.to_string()),
            message,
        }
    }

    /// `path:line`, for describing where a route came from.
    pub(super) fn origin(&self, offset: usize) -> String {
        format!("{}:{}", self.path.display(), line_col(self.text, offset).0)
    }

    /// An optional integer key: `None` when absent, else the value if it lies within `range`
    /// (and fits `T`). Out of range reads `"{value}: must be within A..=B{unit}"`, where `unit`
    /// is e.g. `" seconds"` or `" (0: off)"`.
    pub(super) fn int_within<T: TryFrom<u64>>(
        &self,
        value: Option<Spanned<i64>>,
        key: Key,
        range: RangeInclusive<u64>,
        unit: &str,
    ) -> Result<Option<T>, ConfigError> {
        let Some(v) = value else {
            return Ok(None);
        };
        let n = *v.get_ref();
        u64::try_from(n)
            .ok()
            .filter(|n| range.contains(n))
            .and_then(|n| T::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                let (lo, hi) = (range.start(), range.end());
                self.err(
                    Some(v.span()),
                    key,
                    format!("{n}: must be within {lo}..={hi}{unit}"),
                )
            })
    }

    /// An optional number key, as [`Doc::int_within`]; NaN is out of every range.
    pub(super) fn float_within(
        &self,
        value: Option<Spanned<f64>>,
        key: Key,
        range: RangeInclusive<f64>,
        unit: &str,
    ) -> Result<Option<f64>, ConfigError> {
        let Some(v) = value else {
            return Ok(None);
        };
        let x = *v.get_ref();
        // `contains` is false for NaN, so `nan` is rejected too.
        if !range.contains(&x) {
            let (lo, hi) = (range.start(), range.end());
            return Err(self.err(
                Some(v.span()),
                key,
                format!("{x}: must be within {lo:.1}..={hi:.1}{unit}"),
            ));
        }
        Ok(Some(x))
    }

    /// A string key checked by `check`, whose error is the reason after `"value": `.
    pub(super) fn checked<T>(
        &self,
        value: &Spanned<String>,
        key: Key,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        check(value.get_ref()).map_err(|m| self.err(Some(value.span()), key, value_msg(value, &m)))
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// A key as a person would find it in the file: `[table.sub] key`, `[[array.of.tables]] key`,
/// `[table]` or a top-level `key`.
#[derive(Debug, Clone, Default)]
pub(super) struct Key {
    tables: Vec<String>,
    array: bool,
    leaf: Option<String>,
}

impl Key {
    pub(super) fn table(tables: &[&str]) -> Key {
        Key {
            tables: tables.iter().map(|s| (*s).to_owned()).collect(),
            array: false,
            leaf: None,
        }
    }

    pub(super) fn array(tables: &[&str]) -> Key {
        Key {
            array: true,
            ..Key::table(tables)
        }
    }

    pub(super) fn leaf_only(leaf: &str) -> Key {
        Key {
            leaf: Some(leaf.to_owned()),
            ..Key::default()
        }
    }

    pub(super) fn leaf(mut self, leaf: &str) -> Key {
        self.leaf = Some(leaf.to_owned());
        self
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.tables.is_empty() {
            let path: Vec<String> = self.tables.iter().map(|t| toml_key(t)).collect();
            let path = path.join(".");
            if self.array {
                write!(f, "[[{path}]]")?;
            } else {
                write!(f, "[{path}]")?;
            }
            if self.leaf.is_some() {
                f.write_str(" ")?;
            }
        }
        if let Some(leaf) = &self.leaf {
            f.write_str(&toml_key(leaf))?;
        }
        Ok(())
    }
}

/// A key as TOML would need it written: bare if it can be, quoted otherwise.
fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { k.to_owned() } else { format!("{k:?}") }
}

enum Seg {
    Table(String),
    ArrayElem(String),
}

fn key_from(path: &[Seg], leaf: Option<&str>) -> Key {
    let tables = path
        .iter()
        .map(|s| match s {
            Seg::Table(t) | Seg::ArrayElem(t) => t.clone(),
        })
        .collect();
    Key {
        tables,
        array: matches!(path.last(), Some(Seg::ArrayElem(_))),
        leaf: leaf.map(str::to_owned),
    }
}

fn covers(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && pos < span.end.max(span.start + 1)
}

/// The key whose name or value covers byte `pos`. A table's span is only its `[header]`
/// (its keys can be anywhere in the file), so every table is searched, deepest match first.
fn key_at(table: &DeTable, path: &mut Vec<Seg>, pos: usize) -> Option<Key> {
    for (k, v) in table.iter() {
        let name: &str = k.get_ref();
        let is_table = matches!(v.get_ref(), DeValue::Table(_));
        if covers(&k.span(), pos) {
            return Some(if is_table {
                path.push(Seg::Table(name.to_owned()));
                let key = key_from(path, None);
                path.pop();
                key
            } else {
                key_from(path, Some(name))
            });
        }
        match v.get_ref() {
            DeValue::Table(sub) => {
                path.push(Seg::Table(name.to_owned()));
                let found = key_at(sub, path, pos)
                    .or_else(|| covers(&v.span(), pos).then(|| key_from(path, None)));
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let DeValue::Table(sub) = item.get_ref() {
                        path.push(Seg::ArrayElem(name.to_owned()));
                        let found = key_at(sub, path, pos)
                            .or_else(|| covers(&item.span(), pos).then(|| key_from(path, None)));
                        path.pop();
                        if found.is_some() {
                            return found;
                        }
                    }
                }
                if covers(&v.span(), pos) {
                    return Some(key_from(path, Some(name)));
                }
            }
            _ => {
                if covers(&v.span(), pos) {
                    return Some(key_from(path, Some(name)));
                }
            }
        }
    }
    None
}

/// `"value": reason`, the shape of every bad-value message.
pub(super) fn value_msg(v: &Spanned<String>, reason: &str) -> String {
    format!("{:?}: {reason}", v.get_ref())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MINIMAL, err};
    use super::line_col;

    #[test]
    fn unknown_top_level_key_names_key_and_line() {
        let e = err(&format!("# comment\nlisten = 1\n{MINIMAL}"));
        assert_eq!(e.line(), Some(2));
        assert_eq!(e.key(), Some("listen"));
        assert!(e.message().starts_with("unknown key `listen`"), "{e}");
        // The same line after [dialplan] belongs to that table.
        let e = err(&format!("{MINIMAL}listen = 1\n"));
        assert_eq!((e.key(), e.line()), (Some("[dialplan] listen"), Some(5)));
    }

    #[test]
    fn unknown_table_is_named_as_a_table() {
        let e = err(&format!("{MINIMAL}[webby]\nport = 1\n"));
        assert_eq!(e.line(), Some(5));
        assert_eq!(e.key(), Some("[webby]"));
    }

    #[test]
    fn unknown_nested_key_names_its_table() {
        let e = err(
            "[channels.jazz]\nmusic = \"demo\"\nloudness = -20\n[dialplan]\ndefault = \"jazz\"\n",
        );
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:3:1: [channels.jazz] loudness: unknown key `loudness`; expected one of `music`, `mode`, `loudness_lufs`, `shuffle`, `greeting`, `switch`, `switch_fade_ms`, `announcements`, `programmes`, `schedule`, `multicast`"
        );
    }

    #[test]
    fn type_error_names_key() {
        let e = err("[rtp]\nports = 10000\n");
        assert_eq!(e.key(), Some("[rtp] ports"));
        assert_eq!((e.line(), e.column()), (Some(2), Some(9)));
        assert!(e.message().contains("expected a string"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_location() {
        let e = err("[sip\n");
        assert_eq!(e.line(), Some(1));
        let e = err(&format!("{MINIMAL}[dialplan]\n"));
        assert_eq!(e.line(), Some(5));
        assert_eq!(e.key(), Some("dialplan"));
        assert_eq!(e.message(), "duplicate key");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncüd", 6), (2, 3));
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("abc", 99), (1, 4));
    }
}
