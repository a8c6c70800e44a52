//! Records derived from several collectors at emission time: [`records`] builds every record of an
//! emission from the latest observations, with the SysV join ([`sysv_join`]: a segment and its
//! `/SYSV…` smaps object are one record), the fair shares of `cgroup` records (summed over the
//! `processes` observation, see [`crate::collectors::cgroup`]) and the shared-memory and hugetlb
//! ledgers ([`ledger`]).

use crate::{
    collectors::{
        Observation,
        cgroup::{CgroupObservation, PidCgroups},
        meminfo::MeminfoObservation,
        processes::ProcessesObservation,
        smaps::ObjectsObservation,
        sysv::SysvObservation,
        tmpfs::TmpfsObservation,
    },
    records::Record,
};

pub mod ledger;
pub mod sysv_join;

use sysv_join::SysvJoin;

/// All records of one emission from the latest observations, with the joins and the ledger.
///
/// `since(collector)`: the run of that collector whose observation the last emission was built
/// from, when the records equal to it may be left out (not in a keyframe): their (kind, key) go to
/// `unchanged` instead ([`Observation::records_since`]).
pub fn records(
    latest: &[(&'static str, Option<Box<dyn Observation>>)],
    since: &dyn Fn(&str) -> Option<u64>,
    out: &mut Vec<Record>,
    unchanged: &mut Vec<(&'static str, String)>,
    warnings: &mut Vec<String>,
) {
    let observations = || latest.iter().filter_map(|(_, o)| o.as_deref());
    let objects = observations().find_map(|o| o.downcast_ref::<ObjectsObservation>());
    let sysv = observations().find_map(|o| o.downcast_ref::<SysvObservation>());
    let processes = observations().find_map(|o| o.downcast_ref::<ProcessesObservation>());
    let inputs = ledger::Inputs {
        meminfo: observations().find_map(|o| o.downcast_ref::<MeminfoObservation>()),
        processes,
        objects,
        sysv,
        tmpfs: observations().find_map(|o| o.downcast_ref::<TmpfsObservation>()),
        cgroups: observations().find_map(|o| o.downcast_ref::<CgroupObservation>()),
    };
    // Each process's cgroup by pid, for the objects' top cgroups: made only when an object record
    // is (not in an emission where every object is the same as before).
    let pid_cgroups = std::cell::OnceCell::new();
    let cgroups = || {
        pid_cgroups
            .get_or_init(|| processes.map(PidCgroups::new))
            .as_ref()
    };
    let join = SysvJoin::new(sysv, objects);
    // An object's record depends on its mappers' cgroups too: records of objects that did not
    // change are left out only while no process's cgroup changed since the last emission's
    // processes observation.
    let cgroups_same = latest
        .iter()
        .find_map(|(n, o)| Some((*n, o.as_deref()?.downcast_ref::<ProcessesObservation>()?)))
        .is_none_or(|(name, p)| since(name).is_some_and(|s| p.cgroups_changed_in <= s));

    for (name, obs) in latest.iter().filter_map(|(n, o)| Some((*n, o.as_deref()?))) {
        if let Some(o) = obs.downcast_ref::<ObjectsObservation>() {
            o.records_since_except(
                since(name).filter(|_| cgroups_same),
                out,
                unchanged,
                |x| join.is_joined(x),
                &cgroups,
            );
        } else if let Some(s) = obs.downcast_ref::<SysvObservation>() {
            join.segment_records(s, out);
        } else if let Some(c) = obs.downcast_ref::<CgroupObservation>() {
            c.records_with(processes, out);
        } else {
            match since(name) {
                Some(since) => obs.records_since(since, out, unchanged),
                None => obs.records(out),
            }
        }
        obs.warnings(warnings);
    }
    if let Some(l) = ledger::ledger(&inputs) {
        out.push(Record::new("shmem_ledger", "", &l));
    }
    if let Some(l) = ledger::hugetlb_ledger(&inputs) {
        out.push(Record::new("hugetlb_ledger", "", &l));
    }
}
