//! `meminfo`: the host's totals from `/proc/meminfo`, every field, in bytes.
//!
//! Record: `{"kind":"meminfo", "MemTotal_bytes":…, "Active_anon_bytes":…, "HugePages_Total_bytes":…}`:
//! each kernel field name with `(x)` turned into `_x` and `_bytes` appended. `HugePages_*` counts are
//! multiplied by `Hugepagesize`.

use serde::{Serialize, Serializer, ser::SerializeMap};

use super::{BuildCtx, CollectCtx, CollectError, Collector, CollectorDef, Observation, Toggle};
use crate::{procfs::meminfo::MeminfoField, records::Record};

/// The `meminfo` collector.
pub struct Meminfo;

impl CollectorDef for Meminfo {
    const NAME: &'static str = "meminfo";
    type Config = Toggle;
    fn build(_: &Toggle, _: &BuildCtx<'_>) -> Box<dyn Collector> {
        Box::new(MeminfoCollector::default())
    }
}

#[derive(Default)]
pub struct MeminfoCollector {
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct MeminfoObservation {
    pub fields: Vec<MeminfoField>,
    /// Lines that were skipped (each names the path and line).
    pub warnings: Vec<String>,
}

impl MeminfoObservation {
    pub fn get(&self, name: &str) -> Option<u64> {
        crate::procfs::meminfo::field(&self.fields, name)
    }
}

impl Collector for MeminfoCollector {
    fn name(&self) -> &'static str {
        Meminfo::NAME
    }

    fn collect(
        &mut self,
        ctx: &CollectCtx<'_>,
    ) -> Result<Option<Box<dyn Observation>>, CollectError> {
        let (fields, warnings) = ctx.procfs.meminfo(&mut self.buf)?;
        Ok(Some(Box::new(MeminfoObservation { fields, warnings })))
    }
}

/// `Active(anon)` -> `Active_anon_bytes`.
pub fn json_field_name(kernel_name: &str) -> String {
    let mut s = String::with_capacity(kernel_name.len() + 7);
    for c in kernel_name.chars() {
        match c {
            '(' => s.push('_'),
            ')' => {}
            c if c.is_ascii_alphanumeric() || c == '_' => s.push(c),
            _ => s.push('_'),
        }
    }
    s.push_str("_bytes");
    s
}

pub(crate) struct Fields<'a>(&'a [MeminfoField]);

/// Every field of `/proc/meminfo`, named as the kernel does with `_bytes` appended.
impl schemars::JsonSchema for Fields<'_> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MeminfoFields".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Every field of /proc/meminfo in file order: the kernel's name with `(x)` written `_x` and `_bytes` appended, in bytes (HugePages_* page counts multiplied by Hugepagesize).",
            "type": "object",
            "patternProperties": { "^[A-Za-z0-9_]+_bytes$": { "type": "integer", "minimum": 0 } }
        })
    }
}

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for f in self.0 {
            m.serialize_entry(&json_field_name(&f.name), &f.bytes)?;
        }
        m.end()
    }
}

impl Observation for MeminfoObservation {
    fn records(&self, out: &mut Vec<Record>) {
        out.push(Record::new("meminfo", "", &Fields(&self.fields)));
    }

    fn warnings(&self, out: &mut Vec<String>) {
        out.extend(self.warnings.iter().map(|w| format!("meminfo: {w}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcFs;

    fn collect(root: &std::path::Path) -> MeminfoObservation {
        let procfs = ProcFs::new(root);
        crate::collectors::observed::<MeminfoObservation>(
            MeminfoCollector::default().collect(&CollectCtx::once(&procfs)),
        )
        .unwrap_or_else(|e| panic!("unexpected: {e}"))
    }

    #[test]
    fn field_names() {
        assert_eq!(json_field_name("MemTotal"), "MemTotal_bytes");
        assert_eq!(json_field_name("Active(anon)"), "Active_anon_bytes");
        assert_eq!(json_field_name("HugePages_Total"), "HugePages_Total_bytes");
    }

    #[test]
    fn collects_every_field_in_bytes_from_a_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("meminfo"),
            "MemTotal:       1000 kB\nActive(anon):      2 kB\nHugePages_Total:       3\nHugepagesize:       2048 kB\n",
        )
        .expect("write");
        let obs = collect(dir.path());
        let mut recs = Vec::new();
        obs.records(&mut recs);
        assert_eq!(
            recs[0].body,
            "\"MemTotal_bytes\":1024000,\"Active_anon_bytes\":2048,\"HugePages_Total_bytes\":6291456,\"Hugepagesize_bytes\":2097152"
        );
    }

    #[test]
    fn one_bad_value_skips_that_field_with_a_warning_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("meminfo"),
            "MemTotal:       1000 kB\nShmem:    garbage kB\nMemFree:  10 kB\n",
        )
        .expect("write");
        let obs = collect(dir.path());
        assert_eq!(obs.get("MemTotal"), Some(1_024_000));
        assert_eq!(obs.get("MemFree"), Some(10_240));
        assert_eq!(obs.get("Shmem"), None);
        let mut w = Vec::new();
        obs.warnings(&mut w);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("meminfo: line 2") && w[0].contains("Shmem"),
            "{w:?}"
        );
    }

    #[test]
    fn missing_file_is_an_error_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let procfs = ProcFs::new(dir.path());
        let err = MeminfoCollector::default()
            .collect(&CollectCtx::once(&procfs))
            .expect_err("no meminfo");
        assert!(err.to_string().contains("meminfo"), "{err}");
    }
}
