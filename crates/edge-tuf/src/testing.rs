//! Helpers shared by the crate's unit and property tests.

use proptest::prelude::ProptestConfig;

/// A property test's settings: `cases` cases, unless `PROPTEST_CASES` is set, which then
/// decides for every property test (a longer run: `PROPTEST_CASES=2000 cargo test`).
pub fn proptest_config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { cases };
    ProptestConfig { cases, ..default }
}
