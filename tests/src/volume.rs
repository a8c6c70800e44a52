//! The figures of `cargo xtask volume` (`src/bin/volume_bench.rs`), from the file sinks of its two
//! agents: bytes per emission and per day, and the medians of the `agent` record's `phases_us`.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use memscope_agent::view::state::merge;
use serde_json::Value;

/// One mode's figures.
pub struct Volume {
    pub emissions: usize,
    pub processes: u64,
    pub keyframe_bytes: f64,
    pub other_bytes: Option<f64>,
    pub bytes_per_day: f64,
    /// Mean bytes per kind in the emissions that are not keyframes.
    pub other_by_kind: std::collections::BTreeMap<String, f64>,
}

/// Reads the file sink at `path` (no rotation: max_bytes is large) and computes the figures for
/// `per_day` emissions a day with a keyframe every `keyframe_every`.
/// `keyframe`: the bytes of a keyframe when known from elsewhere (a `full` run's emission: a
/// keyframe sends the same whole records).
///
/// Steady state: the first emission reads every process, and a collector that misses its deadline
/// at start delivers its entities with the second (whole, as new); so keyframes are averaged from
/// the second emission on and the other emissions from the third on (when there are that many).
pub fn measure(
    path: &Path,
    per_day: f64,
    keyframe_every: f64,
    keyframe: Option<f64>,
) -> Result<Volume> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    // (keyframe, bytes of the emission's lines, processes)
    let mut emissions: Vec<(bool, u64, u64)> = Vec::new();
    let mut by_kind: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON: {line}", path.display()))?;
        let bytes = line.len() as u64 + 1;
        if v["kind"] == "snapshot" {
            let keyframe = v["keyframe"]
                .as_bool()
                .context("snapshot without keyframe")?;
            let processes = v["entities"]["process"].as_u64().unwrap_or(0);
            emissions.push((keyframe, bytes, processes));
        } else if let Some(last) = emissions.last_mut() {
            last.1 += bytes;
        }
        if emissions.len() > 2 && emissions.last().is_some_and(|e| !e.0) {
            let kind = v["kind"].as_str().unwrap_or("?");
            let delta = if v["delta"] == true { " (delta)" } else { "" };
            *by_kind.entry(format!("{kind}{delta}")).or_default() += bytes;
        }
    }
    if emissions.len() < 3 {
        bail!(
            "{}: only {} emissions; run longer (--seconds) or at a shorter --interval",
            path.display(),
            emissions.len()
        );
    }
    let mean = |keyframe: bool, from: usize| {
        let b: Vec<u64> = emissions
            .iter()
            .skip(from)
            .filter(|e| e.0 == keyframe)
            .map(|e| e.1)
            .collect();
        (!b.is_empty()).then(|| b.iter().sum::<u64>() as f64 / b.len() as f64)
    };
    let keyframe_bytes = match keyframe {
        Some(k) => k,
        None => mean(true, 1).or(mean(true, 0)).context("no keyframe")?,
    };
    let other_bytes = mean(false, 2);
    let others = emissions.iter().skip(2).filter(|e| !e.0).count().max(1) as f64;
    let other_by_kind = by_kind
        .into_iter()
        .map(|(k, b)| (k, b as f64 / others))
        .collect();
    let keyframes = per_day / keyframe_every.max(1.0);
    let bytes_per_day =
        keyframes * keyframe_bytes + (per_day - keyframes) * other_bytes.unwrap_or(keyframe_bytes);
    Ok(Volume {
        emissions: emissions.len(),
        processes: emissions[emissions.len() - 1].2,
        keyframe_bytes,
        other_bytes,
        bytes_per_day,
        other_by_kind,
    })
}

/// What [`phases`] finds.
pub struct PhaseMedians {
    pub ticks: usize,
    /// Per phase, then the tick (their sum), in µs.
    pub medians: Vec<(String, f64)>,
    /// Median of the tick / statm pass ratios.
    pub ratio: f64,
}

/// The `agent` records' `phases_us` of a stream (deltas applied), from its third emission on (the
/// first reads every process, the second may carry re-reads over): how many, the median of each
/// phase (µs) with the tick (their sum) last, and the median ratio of the tick to the statm pass.
pub fn phases(path: &Path) -> Result<PhaseMedians> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut agent = Value::Null;
    let mut rows: Vec<serde_json::Map<String, Value>> = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON: {line}", path.display()))?;
        if v["kind"] != "agent" {
            continue;
        }
        let seq = v["seq"].as_u64().unwrap_or(0);
        if v["delta"] == true {
            merge(&mut agent, v);
        } else {
            agent = v;
        }
        if seq >= 2
            && let Some(p) = agent["phases_us"].as_object()
        {
            rows.push(p.clone());
        }
    }
    if rows.is_empty() {
        bail!(
            "{}: no agent record from the third emission on",
            path.display()
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let names: Vec<String> = rows[0].keys().cloned().collect();
    let us = |r: &serde_json::Map<String, Value>, k: &str| {
        r.get(k).and_then(Value::as_f64).unwrap_or(0.0)
    };
    let tick = |r: &serde_json::Map<String, Value>| names.iter().map(|k| us(r, k)).sum::<f64>();
    let mut medians: Vec<(String, f64)> = names
        .iter()
        .map(|k| (k.clone(), median(rows.iter().map(|r| us(r, k)).collect())))
        .collect();
    medians.push((
        "tick (sum)".to_string(),
        median(rows.iter().map(tick).collect()),
    ));
    let ratio = median(
        rows.iter()
            .map(|r| tick(r) / us(r, "statm_pass").max(1.0))
            .collect(),
    );
    Ok(PhaseMedians {
        ticks: rows.len(),
        medians,
        ratio,
    })
}

/// Seconds of a duration as the agent's config writes it (`"500ms"`, `"10s"`, `"30m"`, `"1h"`).
pub fn seconds_of(d: &str) -> Result<f64> {
    let split = d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len());
    let (n, unit) = d.split_at(split);
    let n: f64 = n.parse().with_context(|| format!("duration {d:?}"))?;
    Ok(n * match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" | "day" => 86_400.0,
        _ => bail!("duration {d:?}: use one unit of ms, s, m, h or d"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_counts_keyframes_and_other_emissions_apart() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("s.jsonl");
        let snap = |keyframe: bool| {
            format!(
                "{{\"kind\":\"snapshot\",\"keyframe\":{keyframe},\"entities\":{{\"process\":7}}}}\n"
            )
        };
        let rec = "{\"kind\":\"process\",\"pid\":1}\n";
        // A keyframe, then an emission still completing the start (10 new records), then two
        // steady ones.
        let text = [
            snap(true),
            rec.repeat(50),
            snap(false),
            rec.repeat(10),
            snap(false),
            rec.to_string(),
            snap(false),
            rec.to_string(),
        ]
        .concat();
        std::fs::write(&p, &text)?;
        let keyframe = (snap(true).len() + 50 * rec.len()) as f64;
        let other = (snap(false).len() + rec.len()) as f64;
        let v = measure(&p, 8640.0, 180.0, None)?;
        assert_eq!(v.emissions, 4);
        assert_eq!(v.processes, 7);
        assert!((v.keyframe_bytes - keyframe).abs() < 1e-9);
        assert_eq!(
            v.other_bytes,
            Some(other),
            "steady state: from the third emission"
        );
        assert_eq!(v.other_by_kind["process"], rec.len() as f64);
        // 8640 emissions a day, one keyframe in 180: 48 keyframes.
        assert!((v.bytes_per_day - (48.0 * keyframe + 8592.0 * other)).abs() < 1e-6);
        // A keyframe's size from elsewhere (a full run's emission).
        let given = measure(&p, 8640.0, 180.0, Some(1000.0))?;
        assert!((given.bytes_per_day - (48.0 * 1000.0 + 8592.0 * other)).abs() < 1e-6);
        // Every emission a keyframe (full): the mean of the keyframes, 8640 times.
        let all = measure(&p, 8640.0, 1.0, None)?;
        assert!((all.bytes_per_day - 8640.0 * keyframe).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn phases_apply_agent_deltas_and_take_medians() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("s.jsonl");
        let agent = |seq: u64, body: &str| format!("{{\"kind\":\"agent\",\"seq\":{seq},{body}}}\n");
        let text = [
            agent(0, r#""phases_us":{"statm_pass":100,"diff":900}"#),
            agent(1, r#""delta":true,"phases_us":{"statm_pass":10}"#),
            agent(2, r#""delta":true,"phases_us":{"statm_pass":10,"diff":10}"#),
            agent(3, r#""delta":true,"phases_us":{"diff":30}"#),
            agent(4, r#""delta":true,"phases_us":{"statm_pass":20}"#),
        ]
        .concat();
        std::fs::write(&p, text)?;
        let PhaseMedians {
            ticks: n,
            medians,
            ratio,
        } = phases(&p)?;
        assert_eq!(n, 3, "from seq 2 on");
        // Rows: (10, 10), (10, 30), (20, 30): ticks 20, 40, 50; ratios 2, 4, 2.5.
        assert_eq!(
            medians,
            [
                ("diff".to_string(), 30.0),
                ("statm_pass".to_string(), 10.0),
                ("tick (sum)".to_string(), 40.0)
            ]
        );
        assert_eq!(ratio, 2.5);
        Ok(())
    }

    #[test]
    fn durations_in_the_configs_units() -> Result<()> {
        assert_eq!(seconds_of("10s")?, 10.0);
        assert_eq!(seconds_of("30m")?, 1800.0);
        assert_eq!(seconds_of("500ms")?, 0.5);
        assert!(seconds_of("1h30m").is_err());
        Ok(())
    }
}
