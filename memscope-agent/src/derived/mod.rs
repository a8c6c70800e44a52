//! Records derived from several collectors at emission time: [`records`] builds every record of an
//! emission from the latest observations, with the SysV join ([`sysv_join`]: a segment and its
//! `/SYSV…` smaps object are one record), the fair shares of `cgroup` records (summed over the
//! `processes` observation, see [`crate::collectors::cgroup`]) and the shared-memory ledger
//! ([`ledger`]).

use crate::{
    collectors::{Observation, ToRecords, cgroup::PidCgroups},
    records::Record,
};

pub mod ledger;
pub mod sysv_join;

use ledger::{TmpfsInputs, tmpfs_inputs};
use sysv_join::SysvJoin;

/// All records of one emission from the latest observations, with the joins and the ledger.
pub fn records(
    latest: &[(&'static str, Option<Observation>)],
    out: &mut Vec<Record>,
    warnings: &mut Vec<String>,
) {
    let observations = || latest.iter().filter_map(|(_, o)| o.as_ref());
    let objects = observations().find_map(|o| match o {
        Observation::Objects(x) => Some(x),
        _ => None,
    });
    let sysv = observations().find_map(|o| match o {
        Observation::Sysv(x) => Some(x),
        _ => None,
    });
    let shmem = observations().find_map(|o| match o {
        Observation::Meminfo(m) => m.get("Shmem"),
        _ => None,
    });
    let tmpfs: Option<TmpfsInputs> = observations().find_map(tmpfs_inputs);
    let processes = observations().find_map(|o| match o {
        Observation::Processes(p) => Some(p),
        _ => None,
    });
    let cgroups = processes.map(PidCgroups::new);
    let join = SysvJoin::new(sysv, objects);

    for obs in observations() {
        match obs {
            Observation::Objects(o) => {
                o.records_except(out, |x| join.is_joined(x), cgroups.as_ref());
                o.warnings(warnings);
            }
            Observation::Sysv(s) => {
                join.segment_records(s, out);
                s.warnings(warnings);
            }
            Observation::Cgroup(c) => {
                c.records_with(processes, out);
                c.warnings(warnings);
            }
            other => {
                let r = other.as_records();
                r.records(out);
                r.warnings(warnings);
            }
        }
    }
    if let Some(l) = ledger::ledger(shmem, tmpfs.as_ref(), sysv, objects) {
        out.push(Record::new("shmem_ledger", "", &l));
    }
}
