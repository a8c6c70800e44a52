//! The shipper configs in `deploy/pipeline/` (part of the pipeline lane): they all read the file
//! that `memscope.toml` writes, and each is checked with what this machine has.
//!
//! - `memscope.toml`: `memscope-agent check-config` (output path moved to a tempdir);
//! - `memscope-journald.service`: `systemd-analyze verify` prints nothing about it;
//! - `memscope-journald.conf`: raises journald's `LineMax`;
//! - `vector.toml`: parses as TOML; the file source reads the sink's path, long lines allowed;
//! - `fluent-bit.conf`: its sections and keys; the tail input reads the sink's path.
//!
//! Vector and Fluent Bit are not packaged for Debian 12, so they are not run here (the rsyslog
//! config is: `tests/tests/pipeline.rs`).

use std::process::Command;

use memscope_tests::{agent_bin, workspace_root};

const LINE_LIMIT: u64 = 1 << 20;

fn read(name: &str) -> String {
    let p = workspace_root().join("deploy/pipeline").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `[output] path` of deploy/pipeline/memscope.toml: what every shipper must read.
fn sink_path() -> String {
    let agent: toml::Table = read("memscope.toml")
        .parse()
        .expect("memscope.toml is TOML");
    agent["output"]["path"]
        .as_str()
        .expect("output.path is a string")
        .to_string()
}

/// "4M", "64k", "4194304" -> bytes (Fluent Bit and journald size syntax).
fn size(s: &str) -> u64 {
    let s = s.trim();
    let (digits, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("size {s:?}: {e}"))
        * mult
}

#[test]
fn agent_config_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("memscope.jsonl");
    let original = sink_path();
    let text = read("memscope.toml").replace(&original, &out.display().to_string());
    let conf = dir.path().join("memscope.toml");
    std::fs::write(&conf, text).expect("write config");
    let res = Command::new(agent_bin())
        .arg("check-config")
        .arg(&conf)
        .output()
        .expect("memscope-agent check-config");
    assert!(
        res.status.success(),
        "check-config rejects deploy/pipeline/memscope.toml:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn systemd_unit_verifies_and_journald_keeps_long_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit_text = read("memscope-journald.service");
    assert!(unit_text.contains("ExecStart=/usr/bin/memscope-agent\n"));
    assert!(unit_text.contains("StandardOutput=journal\n"));
    // verify needs ExecStart to exist: point it at the built agent.
    let unit = dir.path().join("memscope-journald.service");
    std::fs::write(
        &unit,
        unit_text.replace(
            "/usr/bin/memscope-agent",
            &agent_bin().display().to_string(),
        ),
    )
    .expect("write unit");
    let res = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian: systemd) runs");
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success() && !stderr.contains("memscope-journald.service"),
        "systemd-analyze verify: {}\n{stderr}",
        res.status
    );

    let journald = read("memscope-journald.conf");
    let line_max = journald
        .lines()
        .find_map(|l| l.trim().strip_prefix("LineMax="))
        .expect("LineMax= in memscope-journald.conf");
    assert!(journald.contains("[Journal]"));
    assert!(size(line_max) >= LINE_LIMIT, "LineMax={line_max}");
}

#[test]
fn vector_reads_the_sink_and_keeps_long_lines() {
    let vector: toml::Table = read("vector.toml").parse().expect("vector.toml is TOML");
    let source = &vector["sources"]["memscope"];
    assert_eq!(source["type"].as_str(), Some("file"));
    let include: Vec<&str> = source["include"]
        .as_array()
        .expect("include is an array")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let path = sink_path();
    assert!(
        include.iter().any(|i| i.starts_with(&path)),
        "vector.toml includes {include:?}, the agent writes {path}"
    );
    let max = source["max_line_bytes"]
        .as_integer()
        .expect("max_line_bytes");
    assert!(u64::try_from(max).is_ok_and(|m| m >= LINE_LIMIT));
    // Every transform and sink takes its inputs from something defined.
    let mut defined: Vec<&str> = vec!["memscope"];
    for section in ["transforms", "sinks"] {
        for (name, component) in vector[section].as_table().expect("a table") {
            for input in component["inputs"].as_array().expect("inputs") {
                let input = input.as_str().expect("input name");
                assert!(
                    defined.contains(&input),
                    "{section}.{name}: no input {input}"
                );
            }
            defined.push(name);
        }
    }
}

#[test]
fn fluent_bit_tails_the_sink_and_keeps_long_lines() {
    // Classic format: `[SECTION]`, then indented `Key Value` lines; `#` comments.
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (n, line) in read("fluent-bit.conf").lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            sections.push((name.to_string(), Vec::new()));
            continue;
        }
        let (k, v) = t
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("fluent-bit.conf:{}: `Key Value` expected: {t}", n + 1));
        let (_, entries) = sections
            .last_mut()
            .unwrap_or_else(|| panic!("fluent-bit.conf:{}: key outside a section", n + 1));
        entries.push((k.to_string(), v.trim().to_string()));
    }
    let get = |section: &str, key: &str| -> String {
        sections
            .iter()
            .filter(|(s, _)| s == section)
            .flat_map(|(_, e)| e)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("fluent-bit.conf: no {key} in [{section}]"))
    };
    assert_eq!(get("INPUT", "Name"), "tail");
    assert_eq!(get("INPUT", "Path"), sink_path());
    assert_eq!(get("INPUT", "Parser"), "json");
    assert!(size(&get("INPUT", "Buffer_Max_Size")) >= LINE_LIMIT);
    assert!(
        !get("INPUT", "DB").is_empty(),
        "a DB keeps offsets across restarts"
    );
    assert_eq!(get("OUTPUT", "Match"), get("INPUT", "Tag"));
}

#[test]
fn rsyslog_forwarder_reads_the_sink() {
    let fwd = read("rsyslog/forwarder.conf");
    let path = sink_path();
    assert!(
        fwd.contains(&format!("file=\"{path}\"")),
        "rsyslog/forwarder.conf does not read {path}"
    );
}
