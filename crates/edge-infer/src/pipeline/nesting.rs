//! The shape of a nested JSON array, learnt while walking it: the one check that every
//! way numbers arrive as JSON (the CLI's input files, MQTT payloads, the local API's
//! `data`) applies, so that ragged rows and a wrong row count are refused alike.

/// Walks a nested array's events (an array ended, a value seen) and keeps the first
/// problem instead of failing at once, so that a streaming parser can finish and the
/// caller can say which input was wrong.
#[derive(Debug, Default)]
pub struct Nesting {
    /// Items per array at each depth (0 = the outermost), set by the first array that
    /// ends at that depth.
    dims: Vec<Option<usize>>,
    /// The depth of the values: all of them must be at the same one.
    leaf_depth: Option<usize>,
    problem: Option<String>,
}

impl Nesting {
    /// An array of `len` items at `depth` has ended (after its items were seen).
    pub fn array(&mut self, depth: usize, len: usize) {
        if self.problem.is_some() {
            return;
        }
        if self.leaf_depth.is_some_and(|d| d <= depth) {
            self.problem = Some("numbers and arrays mixed at the same depth".into());
            return;
        }
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        match self.dims[depth] {
            None => self.dims[depth] = Some(len),
            Some(seen) if seen != len => {
                self.problem =
                    Some(format!("ragged array: rows at depth {depth} have {seen} and {len} items"));
            }
            Some(_) => {}
        }
    }

    /// A value (a number, a boolean, a string) at `depth`.
    pub fn leaf(&mut self, depth: usize) {
        if self.problem.is_some() {
            return;
        }
        let mixed = match self.leaf_depth {
            Some(d) => d != depth,
            None => self.dims.len() > depth,
        };
        if mixed {
            self.problem = Some("numbers and arrays mixed at the same depth".into());
        }
        self.leaf_depth = Some(depth);
    }

    /// The array's shape (`[]` for a lone value), or why it has none.
    pub fn finish(self) -> Result<Vec<usize>, String> {
        if let Some(p) = self.problem {
            return Err(p);
        }
        // Every depth above the deepest array was ended by an enclosing array.
        Ok(self.dims.into_iter().map(|d| d.unwrap_or(0)).collect())
    }
}

/// Whether an array nested as `got` has the shape `want`: flat data (depth 0 or 1) always
/// does (its number of values is checked apart), nested data must match once leading 1s
/// are left out of both (`[3, 48, 192]` is `[1, 3, 48, 192]`).
pub fn nesting_matches(got: &[usize], want: &[usize]) -> bool {
    if got.len() <= 1 {
        return true;
    }
    let strip = |s: &[usize]| s.iter().skip_while(|d| **d == 1).copied().collect::<Vec<_>>();
    strip(got) == strip(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a serde_json value the way the streaming parsers do.
    fn walk(v: &serde_json::Value, depth: usize, n: &mut Nesting) {
        match v {
            serde_json::Value::Array(items) => {
                items.iter().for_each(|i| walk(i, depth + 1, n));
                n.array(depth, items.len());
            }
            _ => n.leaf(depth),
        }
    }

    fn shape(text: &str) -> Result<Vec<usize>, String> {
        let mut n = Nesting::default();
        walk(&serde_json::from_str(text).unwrap(), 0, &mut n);
        n.finish()
    }

    #[test]
    fn shapes_of_well_formed_arrays() {
        assert_eq!(shape("5"), Ok(vec![]));
        assert_eq!(shape("[]"), Ok(vec![0]));
        assert_eq!(shape("[1,2,3]"), Ok(vec![3]));
        assert_eq!(shape("[[1,2,3],[4,5,6]]"), Ok(vec![2, 3]));
        assert_eq!(shape("[[[1],[2]]]"), Ok(vec![1, 2, 1]));
        assert_eq!(shape("[[],[]]"), Ok(vec![2, 0]));
    }

    #[test]
    fn ragged_and_mixed_arrays_are_refused() {
        for bad in ["[[1,2],[3]]", "[[1],2]", "[1,[2]]", "[[],1]", "[1,[]]", "[[],[1]]", "[[[]],[[1]]]"] {
            assert!(shape(bad).is_err(), "{bad} was accepted");
        }
        assert!(
            shape("[[1,2],[3]]").unwrap_err().contains("ragged array: rows at depth 1 have 2 and 1 items")
        );
    }

    #[test]
    fn nesting_must_match_the_shape_but_leading_ones() {
        assert!(nesting_matches(&[6], &[2, 3]));
        assert!(nesting_matches(&[2, 3], &[1, 2, 3]));
        assert!(nesting_matches(&[1, 1, 2, 3], &[2, 3]));
        assert!(!nesting_matches(&[3, 2], &[2, 3]));
        assert!(!nesting_matches(&[1, 2, 2], &[1, 2, 3]));
    }
}
