//! `/proc/PID/cmdline`: the arguments, each terminated by a NUL byte.

use super::escape::Name;

/// Splits `/proc/PID/cmdline` at NUL bytes. The trailing NUL is dropped; empty arguments in the
/// middle are kept; empty input (kernel thread, zombie) is an empty vec. A process that rewrote its
/// argv without NULs (`nginx: worker process`) yields one argument. Never fails.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<Name> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    bytes.split(|&b| b == 0).map(Name::new).collect()
}

/// Joins arguments with single spaces, for display (the `cmdline` field of a process record).
pub fn join_cmdline(args: &[Name]) -> Name {
    let mut out = Vec::with_capacity(args.iter().map(|a| a.0.len() + 1).sum());
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(&a.0);
    }
    Name(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    #[test]
    fn splits_and_joins() {
        let args = parse_cmdline(b"/bin/sleep\x00600\0");
        assert_eq!(args, vec![Name::from("/bin/sleep"), Name::from("600")]);
        assert_eq!(join_cmdline(&args), Name::from("/bin/sleep 600"));
        assert_eq!(parse_cmdline(b""), Vec::<Name>::new());
        assert_eq!(parse_cmdline(b"\0"), vec![Name::default()]);
        assert_eq!(
            parse_cmdline(b"a\0\0b\0"),
            vec![Name::from("a"), Name::default(), Name::from("b")]
        );
        assert_eq!(
            parse_cmdline(b"nginx: worker process"),
            vec![Name::from("nginx: worker process")]
        );
        assert_eq!(parse_cmdline(b"x\xff\0"), vec![Name::new(&b"x\xff"[..])]);
        assert_eq!(join_cmdline(&[]), Name::default());
    }

    #[test]
    fn fixtures() {
        assert!(parse_cmdline(&fixture("proc/2/cmdline")).is_empty());
        let sleep = parse_cmdline(&fixture("proc/44/cmdline"));
        assert_eq!(join_cmdline(&sleep), Name::from("sleep 600"));
        let init = parse_cmdline(&fixture("proc/1/cmdline"));
        assert_eq!(init.len(), 3);
        assert_eq!(init.get(1), Some(&Name::from("fixtures/capture.py")));
    }
}
