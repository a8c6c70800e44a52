//! [`ConfigError`], and where in the TOML text a key or an error is ([`KeyLines`]).

use std::fmt;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<built-in>`).
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key, when known (`output.path`).
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// An error about `key`, located on its line of `src` (the config text) when it is there.
    pub fn at_key(origin: &str, src: Option<&str>, key: &str, message: String) -> ConfigError {
        ConfigError {
            origin: origin.to_string(),
            line: src.and_then(|s| KeyLines::scan(s).line_of_key(key)),
            key: Some(key.to_string()),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where each `key = value` of a TOML document is, by dotted key. A line scanner, good for the
/// plain layout config files use (`[table]` headers and `key = value` lines); a key it cannot
/// place simply gets no line number.
pub(super) struct KeyLines {
    entries: Vec<(usize, String)>,
}

impl KeyLines {
    pub(super) fn scan(src: &str) -> KeyLines {
        let mut table = String::new();
        let mut entries = Vec::new();
        for (i, raw) in src.lines().enumerate() {
            let line = raw.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches('[');
                table = name.replace(' ', "");
                entries.push((i + 1, table.clone()));
                continue;
            }
            if let Some((k, _)) = line.split_once('=') {
                let k = k.trim().trim_matches('"');
                let full = if table.is_empty() {
                    k.to_string()
                } else {
                    format!("{table}.{k}")
                };
                entries.push((i + 1, full));
            }
        }
        KeyLines { entries }
    }

    pub(super) fn key_on_line(&self, line: usize) -> Option<&str> {
        self.entries
            .iter()
            .find(|(l, _)| *l == line)
            .map(|(_, k)| k.as_str())
    }

    /// The line of `key`; for a key inside an inline table (`process = { percent = 1 }`), the line
    /// of the table's key.
    pub(super) fn line_of_key(&self, key: &str) -> Option<usize> {
        let mut key = key;
        loop {
            if let Some((l, _)) = self.entries.iter().find(|(_, k)| k == key) {
                return Some(*l);
            }
            key = key.rsplit_once('.')?.0;
        }
    }
}
