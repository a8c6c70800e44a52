#![no_main]
//! `/proc/PID/cmdline` and its redaction: no panic; redaction keeps the argument count, and a
//! redacted line never grows by more than the masks it adds.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::{
    cmdline::{join_cmdline, parse_cmdline},
    redact::{MASK, name_only, redact},
};

fuzz_target!(|data: &[u8]| {
    let args = parse_cmdline(data);
    assert!(join_cmdline(&args).as_bytes().len() <= data.len());
    let red = redact(&args);
    assert_eq!(red.len(), args.len());
    for (a, r) in args.iter().zip(&red) {
        assert!(r.as_bytes().len() <= a.as_bytes().len() * (MASK.len() + 1) + MASK.len());
    }
    assert!(name_only(&args).as_bytes().len() <= data.len());
});
