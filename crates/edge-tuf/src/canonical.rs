//! OLPC canonical JSON, the byte form TUF signatures are computed over.
//!
//! python-tuf (through securesystemslib) signs exactly these bytes, so any
//! deviation here (escaping, key order, number format) makes every signature
//! from the reference implementation fail to verify and vice versa.

use super::error::Error;
use serde_json::Value;

/// Encodes `v` as OLPC canonical JSON.
///
/// Object keys are sorted by their UTF-8 bytes, there is no whitespace,
/// strings escape only `\` and `"`, and numbers must be integers.
pub fn encode(v: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut path = String::from("$");
    write_value(v, &mut out, &mut path)?;
    Ok(out)
}

fn write_value(v: &Value, out: &mut Vec<u8>, path: &mut String) -> Result<(), Error> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // Floats have no canonical text form, which is why the format
            // forbids them; refusing is the only way to stay verifiable.
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(Error::Canonical {
                    path: path.clone(),
                    reason: format!("the number {n} is not an integer"),
                });
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                write_value(item, out, path)?;
                path.truncate(len);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // serde_json's map is only sorted when the `preserve_order`
            // feature is off; another crate in the final binary may turn it
            // on, so sort explicitly. `str` ordering is byte ordering, which
            // for UTF-8 equals code point ordering, as Python's sort uses.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                let len = path.len();
                path.push('.');
                path.push_str(key);
                write_value(value, out, path)?;
                path.truncate(len);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        // Only the quote and the backslash are escaped; control characters
        // and non-ASCII are written raw, as securesystemslib does.
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> String {
        String::from_utf8(encode(v).unwrap()).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(enc(&json!(null)), "null");
        assert_eq!(enc(&json!(true)), "true");
        assert_eq!(enc(&json!(false)), "false");
        assert_eq!(enc(&json!(0)), "0");
        assert_eq!(enc(&json!(-42)), "-42");
        assert_eq!(enc(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(enc(&json!("")), "\"\"");
    }

    #[test]
    fn matches_securesystemslib_bytes() {
        // Expected bytes produced by securesystemslib 1.6.0 encode_canonical
        // for the same object.
        let v: Value = serde_json::from_str(
            r#"{"b":[1,-2,true,false,null],"a":"q\"uo\\te\n\tctl\u0001 é ☃ 😀","é":{},"Z":0,"aa":[]}"#,
        )
        .unwrap();
        let expected = hex::decode(
            "7b225a223a302c2261223a22715c22756f5c5c74650a0963746c0120c3a920e2988320f09f98\
             80222c226161223a5b5d2c2262223a5b312c2d322c747275652c66616c73652c6e756c6c5d2c\
             22c3a9223a7b7d7d",
        )
        .unwrap();
        assert_eq!(encode(&v).unwrap(), expected);
    }

    #[test]
    fn keys_sorted_by_bytes_not_insertion() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3},"B":4}"#).unwrap();
        assert_eq!(enc(&v), r#"{"B":4,"a":{"c":3,"d":2},"b":1}"#);
    }

    #[test]
    fn only_quote_and_backslash_escaped() {
        let v = json!("a\"b\\c\u{7}d/\u{e9}");
        assert_eq!(encode(&v).unwrap(), "\"a\\\"b\\\\c\u{7}d/\u{e9}\"".as_bytes());
    }

    #[test]
    fn float_refused_with_path() {
        let v: Value = serde_json::from_str(r#"{"custom":{"rollout":{"percent":12.5}}}"#).unwrap();
        match encode(&v) {
            Err(Error::Canonical { path, reason }) => {
                assert_eq!(path, "$.custom.rollout.percent");
                assert!(reason.contains("12.5"), "{reason}");
            }
            other => panic!("expected Canonical error, got {other:?}"),
        }
        // 1.0 parses as a float in serde_json and must be refused too.
        let v: Value = serde_json::from_str("[1.0]").unwrap();
        assert!(matches!(encode(&v), Err(Error::Canonical { .. })));
    }
}

/// Differential tests against the encoder python-tuf signs with
/// (`securesystemslib.formats.encode_canonical`): random JSON values are encoded both
/// ways and must give the same bytes, or be refused by both.
#[cfg(test)]
mod vs_securesystemslib {
    use super::*;
    use proptest::prelude::*;
    use std::io::{BufRead, BufReader, Write};
    use std::path::PathBuf;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::sync::{Mutex, OnceLock};

    use crate::testing::proptest_config as config;

    /// Reads one JSON value per line and answers `ok <hex of the UTF-8 encoding>` or
    /// `err <exception>`, flushing each answer, so one process serves every case.
    const SCRIPT: &str = r#"
import json, sys
from securesystemslib.formats import encode_canonical
for line in sys.stdin:
    try:
        out = "ok " + encode_canonical(json.loads(line)).encode("utf-8").hex()
    except Exception as e:
        out = "err " + type(e).__name__
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
"#;

    struct Python {
        _child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    }

    impl Python {
        /// securesystemslib's answer for `v`: the bytes, or `None` if it refused.
        fn encode(&mut self, v: &Value) -> Option<Vec<u8>> {
            let line = serde_json::to_string(v).expect("a Value serializes");
            writeln!(self.stdin, "{line}").expect("write to the Python encoder");
            self.stdin.flush().expect("flush to the Python encoder");
            let mut answer = String::new();
            self.stdout.read_line(&mut answer).expect("read from the Python encoder");
            let answer = answer.trim_end();
            if let Some(hex) = answer.strip_prefix("ok ") {
                return Some(hex::decode(hex).expect("hex from the Python encoder"));
            }
            assert!(answer.starts_with("err "), "the Python encoder stopped: {answer:?}");
            None
        }
    }

    /// The venv `tests/run` prepares: under it (EDGE_TEST_CACHE set) it must exist; a
    /// plain `cargo test` without it skips these tests and says so.
    fn venv_python() -> Option<PathBuf> {
        let prepared = std::env::var_os("EDGE_TEST_CACHE").filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache = prepared
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache"));
        let python = cache.join("venv/bin/python");
        if python.is_file() {
            return Some(python);
        }
        assert!(
            prepared.is_none(),
            "EDGE_TEST_CACHE is set but {} is missing: run tests/run --prepare-only",
            python.display()
        );
        eprintln!(
            "skipping the canonical JSON comparison with securesystemslib: no venv at {} \
             (tests/run prepares it)",
            python.display()
        );
        None
    }

    fn python() -> Option<&'static Mutex<Python>> {
        static PYTHON: OnceLock<Option<Mutex<Python>>> = OnceLock::new();
        PYTHON
            .get_or_init(|| {
                let exe = venv_python()?;
                let mut child = Command::new(&exe)
                    .args(["-c", SCRIPT])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
                let stdin = child.stdin.take().expect("piped stdin");
                let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
                Some(Mutex::new(Python { _child: child, stdin, stdout }))
            })
            .as_ref()
    }

    /// Text that exercises escaping and ordering: quotes, backslashes, every control
    /// character, DEL, non-ASCII from the BMP and beyond (where UTF-16 order would differ
    /// from code point order).
    fn text() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '"',
            '\\',
            '/',
            '\0',
            '\u{1}',
            '\n',
            '\r',
            '\t',
            '\u{1f}',
            '\u{7f}',
            '\u{80}',
            'é',
            '\u{2028}',
            '\u{fffd}',
            '\u{ffff}',
            '\u{10000}',
            '😀',
            'a',
            'A',
            'Z',
            '_',
            ' ',
        ]);
        prop_oneof![
            prop::collection::vec(special, 0..8).prop_map(|c| c.into_iter().collect::<String>()),
            any::<String>(),
            "[a-zA-Z0-9_.-]{0,8}",
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop_oneof![Just(0i64), Just(-1), Just(i64::MIN), Just(i64::MAX)].prop_map(Value::from),
            // Floats have no canonical form: both must refuse them.
            prop_oneof![
                Just(1.0f64),
                Just(0.5),
                Just(-2.25e10),
                any::<f64>().prop_filter("finite", |f| f.is_finite())
            ]
            .prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(text(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// One test run by hand rather than by `proptest!`, so that a missing venv is one clear
    /// failure (or skip) before any case runs.
    #[test]
    fn encoding_matches_securesystemslib() {
        let Some(python) = python() else { return };
        let config = ProptestConfig { source_file: Some(file!()), ..config(512) };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let result = runner.run(&value(), |v| {
            let theirs = python.lock().unwrap_or_else(|p| p.into_inner()).encode(&v);
            let ours = encode(&v).ok();
            prop_assert_eq!(
                ours.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
                theirs.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
                "value {}",
                v
            );
            prop_assert_eq!(ours, theirs);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
