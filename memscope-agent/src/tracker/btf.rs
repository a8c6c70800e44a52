//! Just enough of the BTF format to find struct member offsets in the kernel's own BTF
//! (`/sys/kernel/btf/vmlinux`): the fork program reads `task_struct.tgid` of the new task to tell a
//! new process from a new thread, the mapping programs read `vm_area_struct.{vm_mm, vm_flags,
//! vm_file}`, `task_struct.mm` and `mm_struct.total_vm`, and Rust eBPF has no CO-RE relocations
//! to do that for us.
//! (aya parses BTF too, but keeps type access crate-private.)
//!
//! Format: `linux/btf.h` and Documentation/bpf/btf.rst. A header, then a type section of
//! `struct btf_type` records (12 bytes, followed by kind-specific data), then a string section.

/// The kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (bad magic or truncated header)")]
    BadHeader,
    #[error("BTF truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("BTF type kind {0} is unknown to this parser")]
    UnknownKind(u32),
    #[error("no struct {0} in BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("member {0} is a bit field")]
    BitField(String),
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    let bytes = data
        .get(at..at + 4)
        .ok_or(BtfError::Malformed(at))?
        .try_into()
        .map_err(|_| BtfError::Malformed(at))?;
    Ok(u32::from_ne_bytes(bytes))
}

struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Start of each type record in `types`; index = type id - 1.
    starts: Vec<usize>,
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::BadHeader)?;
        if magic != BTF_MAGIC {
            return Err(BtfError::BadHeader);
        }
        let field = |at| u32_at(data, at).map(|v| v as usize);
        let hdr_len = field(4)?;
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::BadHeader)?;
            data.get(start..start.checked_add(len).ok_or(BtfError::BadHeader)?)
                .ok_or(BtfError::BadHeader)
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            starts.push(at);
            let info = u32_at(types, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = match kind {
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                // INT, VAR, DECL_TAG
                1 | 14 | 17 => 4,
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                other => return Err(BtfError::UnknownKind(other)),
            };
            at += 12 + extra;
        }
        Ok(Self {
            types,
            strings,
            starts,
        })
    }

    fn name(&self, name_off: u32) -> &'a [u8] {
        let rest = self.strings.get(name_off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        rest.get(..end).unwrap_or_default()
    }

    /// (kind, kind_flag, vlen, name) of type `id` (1-based).
    fn header(&self, id: u32) -> Result<(usize, u32, bool, usize, &'a [u8]), BtfError> {
        let index = (id as usize).checked_sub(1).ok_or(BtfError::Malformed(0))?;
        let at = *self.starts.get(index).ok_or(BtfError::Malformed(index))?;
        let name_off = u32_at(self.types, at)?;
        let info = u32_at(self.types, at + 4)?;
        Ok((
            at,
            (info >> 24) & 0x1f,
            info >> 31 == 1,
            (info & 0xffff) as usize,
            self.name(name_off),
        ))
    }

    /// Bit offset of `member` in struct/union `id`, looking into anonymous members.
    fn member_bits(&self, id: u32, member: &[u8], depth: u32) -> Result<Option<u32>, BtfError> {
        let (at, kind, kind_flag, vlen, _) = self.header(id)?;
        if !matches!(kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        for i in 0..vlen {
            let m = at + 12 + 12 * i;
            let name = self.name(u32_at(self.types, m)?);
            let type_id = u32_at(self.types, m + 4)?;
            let raw = u32_at(self.types, m + 8)?;
            let (bits, bitfield) = if kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if name == member {
                if bitfield {
                    return Err(BtfError::BitField(String::from_utf8_lossy(member).into()));
                }
                return Ok(Some(bits));
            }
            if name.is_empty()
                && let Some(inner) = self.member_bits(type_id, member, depth + 1)?
            {
                return Ok(Some(bits + inner));
            }
        }
        Ok(None)
    }
}

/// Byte offset of `member` in `struct strukt` of the BTF blob `data`.
pub fn member_offset(data: &[u8], strukt: &str, member: &str) -> Result<u32, BtfError> {
    member_offsets(data, &[(strukt, member)]).map(|v| v[0])
}

/// Byte offsets of each `(struct, member)` of `wanted`, in order, with one parse of `data`.
pub fn member_offsets(data: &[u8], wanted: &[(&str, &str)]) -> Result<Vec<u32>, BtfError> {
    let btf = Btf::parse(data)?;
    let count = u32::try_from(btf.starts.len()).map_err(|_| BtfError::Malformed(0))?;
    let mut found: Vec<Option<u32>> = vec![None; wanted.len()];
    for id in 1..=count {
        let (_, kind, _, _, name) = btf.header(id)?;
        if kind != KIND_STRUCT {
            continue;
        }
        for (slot, (strukt, member)) in found.iter_mut().zip(wanted) {
            // The first struct of that name wins (vmlinux has one; modules are separate blobs).
            if slot.is_some() || name != strukt.as_bytes() {
                continue;
            }
            let bits =
                btf.member_bits(id, member.as_bytes(), 0)?
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: (*strukt).into(),
                        member: (*member).into(),
                    })?;
            if bits % 8 != 0 {
                return Err(BtfError::BitField((*member).into()));
            }
            *slot = Some(bits / 8);
        }
    }
    found
        .into_iter()
        .zip(wanted)
        .map(|(slot, (strukt, _))| slot.ok_or_else(|| BtfError::NoStruct((*strukt).into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `int` (id 1), an anonymous struct { int pid; int tgid; } (id 2) and
    /// `struct task_struct { int state; <anon struct at byte 8>; int prio; }` (id 3).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0pid\0tgid\0task_struct\0state\0prio\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            let pos = strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap_or_else(|| panic!("string {name}"));
            u32::try_from(pos + 1).unwrap_or_else(|_| panic!("offset"))
        };
        let mut types: Vec<u32> = Vec::new();
        // [1] INT "int" size 4, encoding word
        types.extend([s("int"), 1 << 24, 4, 32]);
        // [2] anonymous STRUCT, 2 members, size 8
        types.extend([0, (4 << 24) | 2, 8]);
        types.extend([s("pid"), 1, 0, s("tgid"), 1, 32]);
        // [3] STRUCT task_struct, 3 members, size 24
        types.extend([s("task_struct"), (4 << 24) | 3, 24]);
        types.extend([s("state"), 1, 0, 0, 2, 64, s("prio"), 1, 128]);
        let types: Vec<u8> = types.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut data = Vec::new();
        data.extend(BTF_MAGIC.to_ne_bytes());
        data.extend([1, 0]);
        let type_len = u32::try_from(types.len()).unwrap_or_default();
        let str_len = u32::try_from(strings.len()).unwrap_or_default();
        for v in [24, 0, type_len, type_len, str_len] {
            data.extend(u32::to_ne_bytes(v));
        }
        data.extend(types);
        data.extend(strings);
        data
    }

    #[test]
    fn finds_members_directly_and_in_anonymous_structs() {
        let data = blob();
        assert_eq!(member_offset(&data, "task_struct", "state"), Ok(0));
        assert_eq!(member_offset(&data, "task_struct", "tgid"), Ok(12));
        assert_eq!(member_offset(&data, "task_struct", "prio"), Ok(16));
    }

    #[test]
    fn missing_things_are_errors() {
        let data = blob();
        assert!(matches!(
            member_offset(&data, "task_struct", "mm"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            member_offset(&data, "mm_struct", "pgd"),
            Err(BtfError::NoStruct(_))
        ));
        assert_eq!(member_offset(b"nope", "a", "b"), Err(BtfError::BadHeader));
        assert!(member_offset(&data[..30], "task_struct", "tgid").is_err());
    }

    #[test]
    fn several_members_in_one_parse() {
        let data = blob();
        assert_eq!(
            member_offsets(&data, &[("task_struct", "prio"), ("task_struct", "pid")]),
            Ok(vec![16, 8])
        );
        assert!(matches!(
            member_offsets(&data, &[("task_struct", "pid"), ("mm_struct", "pgd")]),
            Err(BtfError::NoStruct(s)) if s == "mm_struct"
        ));
    }

    #[test]
    fn reads_the_running_kernel_when_available() {
        // Not a privilege matter: vmlinux BTF is world-readable where it exists.
        let Ok(data) = std::fs::read(VMLINUX_BTF) else {
            return;
        };
        let tgid = member_offset(&data, "task_struct", "tgid");
        let pid = member_offset(&data, "task_struct", "pid");
        assert!(
            matches!((&pid, &tgid), (Ok(p), Ok(t)) if *t == p + 4),
            "{pid:?} {tgid:?}"
        );
    }
}
