//! Greedy CTC decoding with a character list: for each time step take the most likely
//! class, collapse runs of the same class, drop the blank, and spell the rest with the
//! list. Text recognisers (PP-OCR) and keyword spotters emit such `[steps, classes]`
//! outputs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[post.ctc]`: where the character list is and how its classes are numbered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtcSpec {
    /// The character list: a UTF-8 file in the model directory, one entry per line
    /// (an entry may be several characters, a word or a keyword).
    pub characters: String,
    /// The blank's class index: 0 (PP-OCR, most CTC models) or the last class
    /// (`blank = "last"`).
    #[serde(default)]
    pub blank: BlankAt,
    /// Entries after the file's, in this order (PP-OCR adds a space: `append = [" "]`).
    #[serde(default)]
    pub append: Vec<String>,
}

/// Where the blank class is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlankAt {
    /// Class 0; the list's entries are classes 1, 2, ...
    #[default]
    First,
    /// The class after the list's entries.
    Last,
}

/// A character list that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CtcError {
    /// The file cannot be read.
    #[error(
        "cannot read the character list {path}: {reason} (post.ctc.characters names a file in the model directory)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The name leaves the model directory.
    #[error("post.ctc.characters = {0:?} must name a file inside the model directory (no '/', '\\' or '..')")]
    Outside(String),
    /// The model's class count differs from the list's.
    #[error(
        "the model emits {classes} classes per step but the character list gives {entries} entries and a blank ({entries} + 1); check post.ctc.characters and post.ctc.append"
    )]
    Classes {
        /// Classes in the output.
        classes: usize,
        /// Entries of the list (file and appended).
        entries: usize,
    },
}

/// What one output decodes to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decoded {
    /// The spelled classes.
    pub text: String,
    /// The mean probability of the kept steps (0 when nothing is kept).
    pub confidence: f32,
    /// The kept steps: `(step, class)`, for keyword events and character positions.
    #[serde(skip)]
    pub steps: Vec<(usize, usize)>,
}

/// A loaded character list.
#[derive(Debug, Clone)]
pub struct CtcDecoder {
    /// Every class's text, the blank's empty.
    classes: Vec<String>,
    blank: usize,
}

impl CtcDecoder {
    /// The list of `spec` read from `dir`.
    pub fn load(spec: &CtcSpec, dir: &Path) -> Result<CtcDecoder, CtcError> {
        let name = &spec.characters;
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
            return Err(CtcError::Outside(name.clone()));
        }
        let path = dir.join(name);
        let bytes =
            std::fs::read(&path).map_err(|e| CtcError::Read { path: path.clone(), reason: e.to_string() })?;
        let text = String::from_utf8(bytes)
            .map_err(|e| CtcError::Read { path, reason: format!("not UTF-8: {e}") })?;
        Ok(CtcDecoder::new(text.lines().map(str::to_string).collect(), spec))
    }

    /// A decoder for `entries` (the file's lines) as `spec` numbers them.
    pub fn new(mut entries: Vec<String>, spec: &CtcSpec) -> CtcDecoder {
        entries.extend(spec.append.iter().cloned());
        match spec.blank {
            BlankAt::First => {
                entries.insert(0, String::new());
                CtcDecoder { classes: entries, blank: 0 }
            }
            BlankAt::Last => {
                let blank = entries.len();
                entries.push(String::new());
                CtcDecoder { classes: entries, blank }
            }
        }
    }

    /// The number of classes (entries and the blank).
    pub fn classes(&self) -> usize {
        self.classes.len()
    }

    /// Checks that a model emitting `classes` per step fits the list.
    pub fn check(&self, classes: usize) -> Result<(), CtcError> {
        if classes == self.classes.len() {
            Ok(())
        } else {
            Err(CtcError::Classes { classes, entries: self.classes.len() - 1 })
        }
    }

    /// Decodes `values`, `[steps, classes]` row-major with `classes` per step (the
    /// model's probabilities; any trailing partial step is ignored). A class beyond the
    /// list spells U+FFFD rather than failing: [`check`](Self::check) at load time is
    /// where a mismatch is refused.
    pub fn decode(&self, values: &[f32], classes: usize) -> Decoded {
        let mut text = String::new();
        let mut steps = Vec::new();
        let mut sum = 0.0f64;
        let mut prev: Option<usize> = None;
        if classes > 0 {
            for (t, row) in values.chunks_exact(classes).enumerate() {
                let mut best = 0;
                for (i, v) in row.iter().enumerate() {
                    if v.total_cmp(&row[best]).is_gt() {
                        best = i;
                    }
                }
                let repeat = prev == Some(best);
                prev = Some(best);
                if repeat || best == self.blank {
                    continue;
                }
                match self.classes.get(best) {
                    Some(s) => text.push_str(s),
                    None => text.push('\u{FFFD}'),
                }
                let p = row[best];
                sum += if p.is_finite() { f64::from(p) } else { 0.0 };
                steps.push((t, best));
            }
        }
        let confidence = if steps.is_empty() { 0.0 } else { (sum / steps.len() as f64) as f32 };
        Decoded { text, confidence, steps }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec() -> CtcSpec {
        CtcSpec { characters: "keys.txt".into(), blank: BlankAt::First, append: vec![" ".into()] }
    }

    /// One-hot-ish rows: `p` on the class, the rest shared.
    fn rows(classes: usize, seq: &[(usize, f32)]) -> Vec<f32> {
        let mut v = Vec::new();
        for &(c, p) in seq {
            let rest = (1.0 - p) / (classes - 1) as f32;
            v.extend((0..classes).map(|i| if i == c { p } else { rest }));
        }
        v
    }

    #[test]
    fn repeats_collapse_blanks_separate_and_confidence_is_the_mean() {
        let d = CtcDecoder::new(vec!["a".into(), "b".into(), "l".into()], &spec());
        assert_eq!(d.classes(), 5, "blank, a, b, l, space");
        // a a _ l l _ l b <space>
        let v = rows(
            5,
            &[(1, 0.9), (1, 0.8), (0, 0.9), (3, 0.7), (3, 0.9), (0, 0.9), (3, 0.5), (2, 0.6), (4, 0.8)],
        );
        let out = d.decode(&v, 5);
        assert_eq!(out.text, "allb ");
        // Kept steps: 0 (a, 0.9), 3 (l, 0.7), 6 (l, 0.5), 7 (b, 0.6), 8 (space, 0.8).
        assert!((out.confidence - (0.9 + 0.7 + 0.5 + 0.6 + 0.8) / 5.0).abs() < 1e-6, "{out:?}");
        assert_eq!(out.steps.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 3, 6, 7, 8]);
    }

    #[test]
    fn all_blank_is_empty_text_with_zero_confidence() {
        let d = CtcDecoder::new(vec!["x".into()], &spec());
        let out = d.decode(&rows(3, &[(0, 0.99), (0, 0.99)]), 3);
        assert_eq!((out.text.as_str(), out.confidence), ("", 0.0));
        assert_eq!(d.decode(&[], 3).text, "");
        assert_eq!(d.decode(&[1.0, 2.0], 0).text, "", "no classes: nothing to decode");
    }

    #[test]
    fn a_blank_last_list_and_multi_character_entries() {
        let s = CtcSpec { characters: "k".into(), blank: BlankAt::Last, append: vec![] };
        let d = CtcDecoder::new(vec!["hey".into(), "edge".into()], &s);
        let out = d.decode(&rows(3, &[(0, 0.9), (2, 0.9), (1, 0.9)]), 3);
        assert_eq!(out.text, "heyedge");
    }

    #[test]
    fn the_class_count_is_checked_and_files_are_read_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.txt"), "a\nb\n").unwrap();
        let d = CtcDecoder::load(&spec(), dir.path()).unwrap();
        d.check(4).unwrap();
        let err = d.check(6625).unwrap_err().to_string();
        assert!(err.contains("6625") && err.contains("post.ctc"), "{err}");
        let missing = CtcSpec { characters: "nope.txt".into(), ..spec() };
        assert!(CtcDecoder::load(&missing, dir.path()).unwrap_err().to_string().contains("nope.txt"));
        let outside = CtcSpec { characters: "../keys.txt".into(), ..spec() };
        assert!(matches!(CtcDecoder::load(&outside, dir.path()), Err(CtcError::Outside(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any values and any class count: no panic, at most one character per step,
        /// a confidence within the kept probabilities' range.
        #[test]
        fn decoding_never_panics(values in proptest::collection::vec(prop_oneof![8 => 0.0f32..1.0, 1 => Just(f32::NAN)], 0..200), classes in 0usize..12) {
            let d = CtcDecoder::new(vec!["a".into(), "b".into()], &spec());
            let out = d.decode(&values, classes);
            let steps = values.len().checked_div(classes).unwrap_or(0);
            prop_assert!(out.text.chars().count() <= steps);
            prop_assert!(out.confidence.is_finite());
        }

        /// Encoding a text with blanks between repeated letters and decoding it gives
        /// the text back.
        #[test]
        fn encode_then_decode_round_trips(text in "[abc ]{0,20}", stretch in 1usize..4) {
            let list: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
            let d = CtcDecoder::new(list, &spec());
            let class = |ch: char| match ch { 'a' => 1, 'b' => 2, 'c' => 3, _ => 4 };
            let mut seq = Vec::new();
            let mut prev = None;
            for ch in text.chars() {
                if prev == Some(ch) {
                    seq.push((0, 0.9));
                }
                for _ in 0..stretch {
                    seq.push((class(ch), 0.9));
                }
                prev = Some(ch);
            }
            let v = rows(5, &seq);
            prop_assert_eq!(d.decode(&v, 5).text, text);
        }
    }
}
