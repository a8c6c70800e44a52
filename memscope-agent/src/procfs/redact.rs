//! Secrets in command lines. The agent sends every process's command line to a log pipeline, and
//! command lines carry passwords (`mysql -pS3cret`, `--password=…`, `postgres://u:pass@db`) and
//! tokens. [`redact`] replaces them with `***` and keeps everything else, so the line still says
//! what runs. It is a pure function over the arguments (bytes, not necessarily UTF-8).
//!
//! What is replaced (the flag or key itself is kept):
//! - the value of a key-ish `name=value` (`--password=x`, `DB_PASSWORD=x`, `auth.token=x`);
//! - the argument after a key-ish flag (`--password x`, `-passin x`, `--api-key x`), unless it
//!   looks like another flag;
//! - whatever follows `-p` in one argument (`-pS3cret`, the MySQL/MariaDB, 7z and rar form; it
//!   also hides `-p2222`-style ports, on purpose: a password cannot be told from them), and the
//!   argument after `sshpass -p`;
//! - the password of a URL (`scheme://user:***@host`);
//! - the word after `Bearer` or `Basic` (an `Authorization` header);
//! - known token shapes anywhere: AWS access key ids (`AKIA…`, `ASIA…`), GitHub (`ghp_…`, `gho_…`,
//!   `ghu_…`, `ghs_…`, `ghr_…`, `github_pat_…`), GitLab (`glpat-…`), Slack (`xox[abprs]-…`),
//!   Stripe (`sk_live_…`, …), Google API keys (`AIza…`) and JWTs (`eyJ….eyJ….…`).
//!
//! A name is key-ish when it contains `pass`, `pwd`, `secret`, `token`, `credential`, `apikey`,
//! `api_key`/`api-key`, `private_key`/`private-key`, `access_key`/`access-key`, or has a word (split
//! at `-`, `_`, `.`) `key`, `auth`, `authorization` or `cookie` (case-insensitive). This errs on
//! the side of hiding: `--passes=3` loses its `3`.

use super::escape::Name;

/// What a secret is replaced with.
pub const MASK: &[u8] = b"***";

/// The command line with secrets replaced by [`MASK`]; see the module docs for the rules. Words
/// inside one argument (`sh -c "mysql -pX db"`) are looked at one by one too.
pub fn redact(args: &[Name]) -> Vec<Name> {
    let program = args.first().map(|a| basename(&a.0)).unwrap_or_default();
    let mut value_next = false;
    args.iter()
        .map(|arg| {
            let mut out = Vec::with_capacity(arg.0.len());
            for (word, is_space) in words(&arg.0) {
                if is_space {
                    out.extend_from_slice(word);
                } else if std::mem::take(&mut value_next) && !word.starts_with(b"-") {
                    out.extend_from_slice(MASK);
                } else {
                    value_next = redact_word(word, program, &mut out);
                }
            }
            Name(out)
        })
        .collect()
}

/// The program's name alone: the first argument, up to its first space (a process that rewrote
/// its title, `nginx: worker process`, has only one argument), without its directory.
pub fn name_only(args: &[Name]) -> Name {
    let first = args.first().map(|a| a.0.as_slice()).unwrap_or_default();
    let end = first
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(first.len());
    Name(basename(&first[..end]).to_vec())
}

fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// Splits into runs of non-space and runs of space, each tagged, in order.
fn words(s: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = *rest.first()?;
        let space = first.is_ascii_whitespace();
        let n = rest
            .iter()
            .position(|b| b.is_ascii_whitespace() != space)
            .unwrap_or(rest.len());
        let (w, r) = rest.split_at(n);
        rest = r;
        Some((w, space))
    })
}

/// Writes `word` with its secrets masked; returns whether the next word is a secret value.
fn redact_word(word: &[u8], program: &[u8], out: &mut Vec<u8>) -> bool {
    // `name=value` with a key-ish name.
    if let Some(eq) = word.iter().position(|&b| b == b'=') {
        let name = &word[..eq];
        if is_plain_name(name) && is_keyish(name) {
            out.extend_from_slice(&word[..=eq]);
            out.extend_from_slice(MASK);
            return false;
        }
    }
    // `-pSECRET`, but not the `-pass`/`-passin`/`-pwd` flags of openssl and friends.
    const P_FLAGS: [&[u8]; 7] = [
        b"ass",
        b"assin",
        b"assout",
        b"assword",
        b"asswd",
        b"assphrase",
        b"wd",
    ];
    if let Some(rest) = word.strip_prefix(b"-p")
        && !rest.is_empty()
        && !rest.starts_with(b"-")
        && !P_FLAGS.contains(&rest.to_ascii_lowercase().as_slice())
    {
        out.extend_from_slice(b"-p");
        out.extend_from_slice(MASK);
        return false;
    }
    if word == b"-p" && program == b"sshpass" {
        out.extend_from_slice(word);
        return true;
    }
    // A key-ish flag: its value is the next word.
    if word.starts_with(b"-") && is_plain_name(word) && is_keyish(word) {
        out.extend_from_slice(word);
        return true;
    }
    scrub(word, out);
    word.eq_ignore_ascii_case(b"bearer") || word.eq_ignore_ascii_case(b"basic")
}

/// Letters, digits, `-`, `_`, `.` only: a flag or variable name, not a path or a sentence.
fn is_plain_name(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_keyish(name: &[u8]) -> bool {
    const PARTS: [&[u8]; 14] = [
        b"pass",
        b"pwd",
        b"secret",
        b"token",
        b"credential",
        b"apikey",
        b"api_key",
        b"api-key",
        b"private_key",
        b"private-key",
        b"access_key",
        b"access-key",
        b"accesskey",
        b"privatekey",
    ];
    const WORDS: [&[u8]; 4] = [b"key", b"auth", b"authorization", b"cookie"];
    let lower = name.to_ascii_lowercase();
    PARTS
        .iter()
        .any(|p| lower.windows(p.len()).any(|w| w == *p))
        || lower
            .split(|&b| matches!(b, b'-' | b'_' | b'.'))
            .any(|w| WORDS.contains(&w))
}

/// Token shapes: a prefix, then at least `min` bytes of the given class.
struct Shape {
    prefix: &'static [u8],
    min: usize,
    class: fn(u8) -> bool,
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn alnum_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
fn alnum_dash(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}
fn upper_digit(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}
fn base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

const SHAPES: [Shape; 15] = [
    Shape {
        prefix: b"AKIA",
        min: 16,
        class: upper_digit,
    },
    Shape {
        prefix: b"ASIA",
        min: 16,
        class: upper_digit,
    },
    Shape {
        prefix: b"ghp_",
        min: 20,
        class: alnum,
    },
    Shape {
        prefix: b"gho_",
        min: 20,
        class: alnum,
    },
    Shape {
        prefix: b"ghu_",
        min: 20,
        class: alnum,
    },
    Shape {
        prefix: b"ghs_",
        min: 20,
        class: alnum,
    },
    Shape {
        prefix: b"ghr_",
        min: 20,
        class: alnum,
    },
    Shape {
        prefix: b"github_pat_",
        min: 20,
        class: alnum_underscore,
    },
    Shape {
        prefix: b"glpat-",
        min: 20,
        class: alnum_dash,
    },
    Shape {
        prefix: b"xoxb-",
        min: 10,
        class: alnum_dash,
    },
    Shape {
        prefix: b"xoxp-",
        min: 10,
        class: alnum_dash,
    },
    Shape {
        prefix: b"xoxa-",
        min: 10,
        class: alnum_dash,
    },
    Shape {
        prefix: b"xoxr-",
        min: 10,
        class: alnum_dash,
    },
    Shape {
        prefix: b"xoxs-",
        min: 10,
        class: alnum_dash,
    },
    Shape {
        prefix: b"AIza",
        min: 30,
        class: base64url,
    },
];

const STRIPE: [&[u8]; 4] = [b"sk_live_", b"sk_test_", b"rk_live_", b"rk_test_"];

/// Length of the token starting at `s[0]`, if one of the known shapes starts there.
fn token_at(s: &[u8]) -> Option<usize> {
    let run = |from: usize, class: fn(u8) -> bool| {
        s.get(from..)
            .map_or(0, |t| t.iter().take_while(|&&b| class(b)).count())
    };
    for shape in &SHAPES {
        if s.starts_with(shape.prefix) {
            let n = run(shape.prefix.len(), shape.class);
            if n >= shape.min {
                return Some(shape.prefix.len() + n);
            }
        }
    }
    for prefix in STRIPE {
        if s.starts_with(prefix) {
            let n = run(prefix.len(), alnum);
            if n >= 16 {
                return Some(prefix.len() + n);
            }
        }
    }
    // JWT: eyJ<header>.eyJ<payload>.<signature>
    if s.starts_with(b"eyJ") {
        let header = run(0, base64url);
        if header >= 10 && s.get(header) == Some(&b'.') && s[header + 1..].starts_with(b"eyJ") {
            let payload = run(header + 1, base64url);
            let sig_at = header + 1 + payload;
            if payload >= 10 && s.get(sig_at) == Some(&b'.') {
                return Some(sig_at + 1 + run(sig_at + 1, base64url));
            }
        }
    }
    None
}

/// Copies `word`, masking URL passwords and known token shapes found anywhere in it.
fn scrub(word: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < word.len() {
        let rest = &word[i..];
        let at_boundary = i == 0 || !word[i - 1].is_ascii_alphanumeric();
        if rest.starts_with(b"://") {
            out.extend_from_slice(b"://");
            i += 3;
            let authority = &word[i..];
            let end = authority
                .iter()
                .position(|&b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(authority.len());
            if let Some(at) = authority[..end].iter().rposition(|&b| b == b'@')
                && let Some(colon) = authority[..at].iter().position(|&b| b == b':')
            {
                out.extend_from_slice(&authority[..=colon]);
                out.extend_from_slice(MASK);
                i += at;
            }
            continue;
        }
        if at_boundary && let Some(n) = token_at(rest) {
            out.extend_from_slice(MASK);
            i += n;
            continue;
        }
        out.push(word[i]);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::cmdline::{join_cmdline, parse_cmdline};

    /// Redacts a NUL-separated command line, as `/proc/PID/cmdline` holds it, and joins it.
    fn r(cmdline: &str) -> String {
        let raw = cmdline.replace(' ', "\0");
        join_cmdline(&redact(&parse_cmdline(raw.as_bytes())))
            .lossy()
            .into_owned()
    }

    /// Like [`r`] but with the arguments given one by one (arguments that hold spaces).
    fn r_args(args: &[&str]) -> String {
        let args: Vec<Name> = args.iter().map(|a| Name::from(*a)).collect();
        join_cmdline(&redact(&args)).lossy().into_owned()
    }

    #[test]
    fn real_command_lines() {
        for (line, want) in [
            (
                "mysql -uroot -pS3cr3t! -h db.internal shop",
                "mysql -uroot -p*** -h db.internal shop",
            ),
            (
                "/usr/bin/python3 app.py --password=hunter2 --port 8080",
                "/usr/bin/python3 app.py --password=*** --port 8080",
            ),
            (
                "java -jar app.jar --db.password hunter2 --verbose",
                "java -jar app.jar --db.password *** --verbose",
            ),
            (
                "psql postgres://app:hunter2@db.internal:5432/prod",
                "psql postgres://app:***@db.internal:5432/prod",
            ),
            (
                "aws --access-key-id AKIAIOSFODNN7EXAMPLE s3 ls",
                "aws --access-key-id *** s3 ls",
            ),
            (
                "openssl pkcs12 -in a.p12 -passin pass:hunter2 -nodes",
                "openssl pkcs12 -in a.p12 -passin *** -nodes",
            ),
            (
                "redis-server /etc/redis.conf --requirepass foobared",
                "redis-server /etc/redis.conf --requirepass ***",
            ),
            (
                "docker run -e DB_PASSWORD=hunter2 -e MODE=prod nginx",
                "docker run -e DB_PASSWORD=*** -e MODE=prod nginx",
            ),
            (
                "helm upgrade app ./chart --set auth.token=abc123 --set replicas=3",
                "helm upgrade app ./chart --set auth.token=*** --set replicas=3",
            ),
            ("sshpass -p hunter2 ssh host", "sshpass -p *** ssh host"),
            ("7z x -pS3cret archive.7z", "7z x -p*** archive.7z"),
            ("mysql -pMyPassword1 db", "mysql -p*** db"),
            (
                "node server.js --api-key 0123456789abcdef0123456789abcdef",
                "node server.js --api-key ***",
            ),
            (
                "agent --slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
                "agent --slack ***",
            ),
            (
                "deploy --repo ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "deploy --repo ***",
            ),
            (
                "app STRIPE=sk_live_abcdefghijklmnopqrstuvwx",
                "app STRIPE=***",
            ),
        ] {
            assert_eq!(r(line), want, "{line}");
        }
    }

    #[test]
    fn harmless_command_lines_are_unchanged() {
        for line in [
            "/usr/sbin/sshd -D",
            "/usr/lib/systemd/systemd --system --deserialize 17",
            "nginx -g daemon off;",
            "sleep 600",
            "python3 -m http.server 8080",
            "git clone https://github.com/aya-rs/aya",
            "curl https://user@example.com/x",
            "mkdir -p /var/lib/x",
            "postgres -D /var/lib/postgresql/data -c max_connections=100",
            "java -Xmx4g -Dkeycloak.profile=prod -jar kc.jar",
        ] {
            assert_eq!(r(line), line);
        }
    }

    #[test]
    fn inside_one_argument_and_in_headers() {
        assert_eq!(
            r_args(&["sh", "-c", "mysql -pS3cret db && echo ok"]),
            "sh -c mysql -p*** db && echo ok"
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(
            r_args(&["curl", "-H", &format!("X-Token-Id: {jwt}"), "https://api"]),
            "curl -H X-Token-Id: *** https://api"
        );
        assert_eq!(
            r_args(&[
                "curl",
                "-H",
                "Authorization: Bearer abc.def-123",
                "https://api"
            ]),
            "curl -H Authorization: Bearer *** https://api"
        );
        assert_eq!(
            r_args(&[
                "git",
                "clone",
                "https://x-access-token:ghs_abcdefghijklmnopqrstuvwxyz0123456789@github.com/o/r"
            ]),
            "git clone https://x-access-token:***@github.com/o/r"
        );
        assert_eq!(
            r_args(&["app", "--token"]),
            "app --token",
            "a key-ish flag at the end"
        );
        assert_eq!(
            r_args(&["app", "--password", "--verbose"]),
            "app --password --verbose",
            "a flag after a key-ish flag is a flag"
        );
    }

    #[test]
    fn non_utf8_bytes_survive() {
        let args = vec![
            Name::new(&b"/bin/x\xff"[..]),
            Name::from("--password=\u{e9}t\u{e9}"),
        ];
        let out = redact(&args);
        assert_eq!(out[0], Name::new(&b"/bin/x\xff"[..]));
        assert_eq!(out[1], Name::from("--password=***"));
    }

    #[test]
    fn name_only_keeps_the_program() {
        let n = |s: &str| name_only(&parse_cmdline(s.replace(' ', "\0").as_bytes()));
        assert_eq!(n("/usr/bin/mysql -pS3cret"), Name::from("mysql"));
        assert_eq!(
            name_only(&[Name::from("nginx: worker process")]),
            Name::from("nginx:")
        );
        assert_eq!(name_only(&[]), Name::default());
    }
}
