//! The README documents what the code does: every status with its code, and every keyword of
//! the scenario language.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

const README: &str = include_str!("../../README.md");
const STATUS_RS: &str = include_str!("../../tsm-core/src/status.rs");
const SCENARIO_RS: &str = include_str!("../src/scenario.rs");

#[test]
fn readme_status_table_matches_the_code() {
    let rows: Vec<&str> = STATUS_RS
        .lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .filter(|l| l.starts_with('|'))
        .collect();
    assert!(rows.len() > 30);
    for row in rows {
        assert!(README.contains(row), "README lacks status row: {row}");
    }
}

#[test]
fn readme_grammar_matches_the_parser() {
    let grammar: Vec<&str> = SCENARIO_RS
        .lines()
        .skip_while(|l| !l.contains("```text"))
        .skip(1)
        .take_while(|l| !l.contains("```"))
        .collect();
    assert!(grammar.len() > 15);
    for line in grammar {
        let line = line.trim_start_matches("//!").trim();
        assert!(README.contains(line), "README lacks grammar line: {line}");
    }
}
