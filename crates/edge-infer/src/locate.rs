//! Finding where a key stands in a TOML text, so that errors point at a line.

use toml::de::{DeTable, DeValue};

/// 1-based line number of byte offset `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// The line of a dotted key path such as `engine.threads` or `sources.1.rate_hz`
/// (numbers index arrays of tables). Falls back to the deepest parent that exists, so a
/// missing key points at the table it belongs in; `None` when not even the first part
/// exists or the text does not parse.
pub fn line_of_path(text: &str, path: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut found: Option<usize> = None;
    let mut table: Option<&DeTable> = Some(root.get_ref());
    let mut value: Option<&DeValue> = None;
    for part in path.split('.') {
        let next = if let Some(t) = table {
            t.iter().find(|(k, _)| k.get_ref().as_ref() == part).map(|(k, v)| (k.span().start, v))
        } else if let (Some(DeValue::Array(items)), Ok(ix)) = (value, part.parse::<usize>()) {
            items.get(ix).map(|v| (v.span().start, v))
        } else {
            None
        };
        let Some((start, v)) = next else { break };
        found = Some(line_of(text, start));
        value = Some(v.get_ref());
        table = match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_keys_tables_and_array_items() {
        let text = "[agent]\ndevice_id = \"x\"\n\n[engine]\nthreads = 2\n\n[[source]]\nkind = \"a\"\n\n[[source]]\nkind = \"b\"\nmodel = \"m\"\n";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of_path(text, "agent.device_id"), Some(2));
        assert_eq!(line_of_path(text, "engine.threads"), Some(5));
        assert_eq!(line_of_path(text, "engine.queue"), Some(4), "a missing key points at its table");
        assert_eq!(line_of_path(text, "source.1.model"), Some(12));
        assert_eq!(line_of_path(text, "nothing"), None);
    }
}
