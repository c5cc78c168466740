//! A small reader of kernel BTF: struct member offsets, enum values and type names.
//!
//! The Rust eBPF object has no CO-RE relocations, so the loader resolves the offsets it needs
//! here, from `/sys/kernel/btf/vmlinux`, and hands them to the programs as globals. aya keeps
//! its own BTF type lookups private, hence this reader; it understands just enough of the
//! format (see the kernel's Documentation/bpf/btf.rst) to walk named and anonymous members.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct named `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}` in this kernel's BTF")]
    NoMember { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits from the start of the containing struct.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Struct {
        members: Vec<Member>,
    },
    /// typedef / const / volatile / restrict / type tag: resolve through `ty`.
    Alias {
        ty: u32,
    },
    Enum {
        values: Vec<(u32, i64)>,
    },
    Ptr {
        ty: u32,
    },
    /// A function's name points at its prototype.
    Func {
        proto: u32,
    },
    FuncProto {
        params: Vec<u32>,
    },
    Other,
}

/// What an argument of a kernel function or tracepoint is, as far as a BPF program reading
/// it cares: verifiers treat struct pointers, other pointers and scalars differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgKind {
    /// `struct NAME *` (const or not).
    StructPtr(String),
    /// `void *` and pointers to anything but a struct.
    OtherPtr,
    /// Integers and enums.
    Scalar,
}

/// Parsed type table of one BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id; id 0 is `void`.
    types: Vec<(u32, u32, Type)>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob (what the kernel exposes on x86_64 and arm64).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_raw = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of range"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();

        let mut types = vec![(0, 0, Type::Other)];
        let mut at = 0;
        while at < types_raw.len() {
            let name = u32_at(types_raw, at)?;
            let info = u32_at(types_raw, at + 4)?;
            let size_or_type = u32_at(types_raw, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                KIND_PTR => Type::Ptr { ty: size_or_type },
                KIND_FUNC => Type::Func {
                    proto: size_or_type,
                },
                KIND_FWD | KIND_FLOAT => Type::Other,
                KIND_ARRAY => {
                    at += 12;
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let raw_off = u32_at(types_raw, at + 8)?;
                        members.push(Member {
                            name: u32_at(types_raw, at)?,
                            ty: u32_at(types_raw, at + 4)?,
                            bit_offset: if kind_flag {
                                raw_off & 0xff_ffff
                            } else {
                                raw_off
                            },
                        });
                        at += 12;
                    }
                    Type::Struct { members }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let v = u32_at(types_raw, at + 4)? as i32 as i64;
                        values.push((u32_at(types_raw, at)?, v));
                        at += 8;
                    }
                    Type::Enum { values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let lo = u32_at(types_raw, at + 4)? as u64;
                        let hi = u32_at(types_raw, at + 8)? as u64;
                        values.push((u32_at(types_raw, at)?, (hi << 32 | lo) as i64));
                        at += 12;
                    }
                    Type::Enum { values }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias { ty: size_or_type }
                }
                KIND_FUNC_PROTO => {
                    let mut params = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        params.push(u32_at(types_raw, at + 4)?);
                        at += 8;
                    }
                    Type::FuncProto { params }
                }
                KIND_DATASEC => {
                    at += 12 * vlen;
                    Type::Other
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push((name, kind, ty));
        }
        let mut btf = Btf {
            strings,
            types,
            by_name: HashMap::new(),
        };
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, (name, _, _)) in btf.types.iter().enumerate().skip(1) {
            if *name != 0 {
                by_name
                    .entry(btf.string(*name).to_owned())
                    .or_default()
                    .push(id as u32);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ids(&self, name: &str, kind: u32) -> impl Iterator<Item = u32> + '_ {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |&id| self.types[id as usize].1 == kind)
    }

    /// Whether a typedef of this name exists, e.g. `btf_trace_inet_sock_set_state`, which is
    /// how the kernel declares a tracepoint that `tp_btf` programs can attach to.
    pub fn has_typedef(&self, name: &str) -> bool {
        self.ids(name, KIND_TYPEDEF).next().is_some()
    }

    /// The arguments of a tracepoint as `tp_btf` and raw tracepoint programs see them: the
    /// kernel declares `typedef void (*btf_trace_NAME)(void *__data, ARGS...)`.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<ArgKind>> {
        let id = self
            .ids(&format!("btf_trace_{name}"), KIND_TYPEDEF)
            .next()?;
        let Type::Ptr { ty } = &self.types[self.resolve(id) as usize].2 else {
            return None;
        };
        let mut args = self.proto_args(*ty)?;
        (!args.is_empty()).then(|| args.remove(0))?;
        Some(args)
    }

    /// The arguments of a kernel function (fentry/fexit see these), if BTF has it.
    pub fn function_args(&self, name: &str) -> Option<Vec<ArgKind>> {
        self.ids(name, KIND_FUNC)
            .find_map(|id| match &self.types[id as usize].2 {
                Type::Func { proto } => self.proto_args(*proto),
                _ => None,
            })
    }

    fn proto_args(&self, proto: u32) -> Option<Vec<ArgKind>> {
        let Type::FuncProto { params } = &self.types.get(self.resolve(proto) as usize)?.2 else {
            return None;
        };
        Some(params.iter().map(|&p| self.arg_kind(p)).collect())
    }

    fn arg_kind(&self, ty: u32) -> ArgKind {
        match &self.types.get(self.resolve(ty) as usize).map(|t| &t.2) {
            Some(Type::Ptr { ty: to }) => {
                let to = self.resolve(*to);
                match self.types.get(to as usize) {
                    Some((name, KIND_STRUCT, _)) => {
                        ArgKind::StructPtr(self.string(*name).to_owned())
                    }
                    _ => ArgKind::OtherPtr,
                }
            }
            _ => ArgKind::Scalar,
        }
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match &self.types.get(id as usize).map(|t| &t.2) {
                Some(Type::Alias { ty }) => id = *ty,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of a member path such as `"ns.inum"` inside struct `strukt`, looking
    /// through anonymous structs and unions the way C does.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let root = self
            .ids(strukt, KIND_STRUCT)
            .find(|&id| matches!(&self.types[id as usize].2, Type::Struct { members } if !members.is_empty()))
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut id = root;
        let mut bits = 0u32;
        for part in path.split('.') {
            let (ty, off) = self
                .find_member(id, part, 0)
                .ok_or_else(|| BtfError::NoMember {
                    strukt: strukt.to_owned(),
                    member: path.to_owned(),
                })?;
            bits += off;
            id = self.resolve(ty);
        }
        Ok(bits / 8)
    }

    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let Type::Struct { members } = &self.types.get(id as usize)?.2 else {
            return None;
        };
        for m in members {
            if m.name != 0 && self.string(m.name) == name {
                return Some((m.ty, m.bit_offset));
            }
        }
        if depth > 8 {
            return None;
        }
        members.iter().filter(|m| m.name == 0).find_map(|m| {
            self.find_member(self.resolve(m.ty), name, depth + 1)
                .map(|(ty, off)| (ty, off + m.bit_offset))
        })
    }

    /// The value of an enumerator, e.g. `SKB_DROP_REASON_TCP_RFC7323_TW_PAWS`, whose number
    /// differs between kernels.
    pub fn enum_value(&self, enum_name: &str, value_name: &str) -> Option<i64> {
        [KIND_ENUM, KIND_ENUM64]
            .into_iter()
            .flat_map(|k| self.ids(enum_name, k))
            .find_map(|id| match &self.types[id as usize].2 {
                Type::Enum { values } => values
                    .iter()
                    .find(|(n, _)| self.string(*n) == value_name)
                    .map(|&(_, v)| v),
                _ => None,
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob by hand: enough to test the reader without a kernel.
    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Self {
                strings: vec![0],
                next_id: 1,
                ..Default::default()
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn head(&mut self, name: &str, kind: u32, vlen: u32, flag: bool, st: u32) -> u32 {
            let n = self.s(name);
            for v in [n, (kind << 24) | vlen | ((flag as u32) << 31), st] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }
        pub fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let named: Vec<(u32, u32, u32)> = members
                .iter()
                .map(|&(n, ty, byte_off)| (self.s(n), ty, byte_off * 8))
                .collect();
            let id = self.head(name, KIND_STRUCT, named.len() as u32, false, size);
            for (n, ty, bits) in named {
                for v in [n, ty, bits] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }
        pub fn typedef(&mut self, name: &str, ty: u32) -> u32 {
            self.head(name, KIND_TYPEDEF, 0, false, ty)
        }
        pub fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
            let named: Vec<(u32, i32)> = values.iter().map(|&(n, v)| (self.s(n), v)).collect();
            let id = self.head(name, KIND_ENUM, named.len() as u32, false, 4);
            for (n, v) in named {
                self.types.extend_from_slice(&n.to_le_bytes());
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            id
        }
        pub fn ptr(&mut self, to: u32) -> u32 {
            self.head("", KIND_PTR, 0, false, to)
        }
        pub fn func_proto(&mut self, params: &[u32]) -> u32 {
            let id = self.head("", KIND_FUNC_PROTO, params.len() as u32, false, 0);
            for &p in params {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&p.to_le_bytes());
            }
            id
        }
        pub fn func(&mut self, name: &str, proto: u32) -> u32 {
            self.head(name, KIND_FUNC, 0, false, proto)
        }
        pub fn build(&self) -> Vec<u8> {
            let mut out = vec![0x9f, 0xeb, 1, 0];
            for v in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    #[test]
    fn member_offsets_through_anonymous_members_and_paths() {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        let u16t = b.int("short unsigned int", 2);
        let ns = b.strukt("ns_common", 16, &[("stashed", u32t, 0), ("inum", u32t, 12)]);
        let anon = b.strukt("", 4, &[("skc_dport", u16t, 0), ("skc_num", u16t, 2)]);
        b.strukt("net", 256, &[("passive", u32t, 0), ("ns", ns, 120)]);
        b.strukt(
            "sock_common",
            136,
            &[("skc_daddr", u32t, 0), ("", anon, 12)],
        );
        let tp = b.int("void_fn", 8);
        b.typedef("btf_trace_inet_sock_set_state", tp);
        let btf = Btf::parse(&b.build()).unwrap();

        assert_eq!(btf.member_offset("net", "ns.inum").unwrap(), 132);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 14);
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert!(matches!(
            btf.member_offset("sock_common", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nostruct", "x"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(btf.has_typedef("btf_trace_inet_sock_set_state"));
        assert!(!btf.has_typedef("btf_trace_nope"));
    }

    #[test]
    fn tracepoint_and_function_arguments() {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let cache = b.strukt("kmem_cache", 8, &[]);
        let cache_ptr = b.ptr(cache);
        let void_ptr = b.ptr(0);
        let tp = b.func_proto(&[void_ptr, ulong, void_ptr, cache_ptr]);
        let tp_ptr = b.ptr(tp);
        b.typedef("btf_trace_kmem_cache_free", tp_ptr);
        let free = b.func_proto(&[cache_ptr, void_ptr]);
        b.func("kmem_cache_free", free);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            btf.tracepoint_args("kmem_cache_free").unwrap(),
            vec![
                ArgKind::Scalar,
                ArgKind::OtherPtr,
                ArgKind::StructPtr("kmem_cache".into())
            ]
        );
        assert_eq!(
            btf.function_args("kmem_cache_free").unwrap(),
            vec![ArgKind::StructPtr("kmem_cache".into()), ArgKind::OtherPtr]
        );
        assert_eq!(btf.tracepoint_args("nope"), None);
        assert_eq!(btf.function_args("nope"), None);
    }

    #[test]
    fn enum_values_by_name() {
        let mut b = Builder::new();
        b.enumeration(
            "skb_drop_reason",
            &[("SKB_DROP_REASON_NOT_SPECIFIED", 2), ("X", 38)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.enum_value("skb_drop_reason", "X"), Some(38));
        assert_eq!(btf.enum_value("skb_drop_reason", "Y"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"hello").is_err());
        let mut blob = Builder::new().build();
        blob[12] = 0xff; // type_len beyond the blob
        assert!(Btf::parse(&blob).is_err());
    }

    #[test]
    fn reads_this_kernel_when_present() {
        let Ok(btf) = Btf::from_file(VMLINUX) else {
            return; // not every build host exposes BTF; the loader's tests cover it as root
        };
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(btf.member_offset("sock_common", "skc_family").unwrap(), 16);
        assert!(btf.member_offset("net", "ns.inum").is_ok());
        assert!(btf.has_typedef("btf_trace_inet_sock_set_state"));
        let args = btf.tracepoint_args("inet_sock_set_state").unwrap();
        assert_eq!(args.len(), 3);
        assert_eq!(args[0], ArgKind::StructPtr("sock".into()));
        assert_eq!(btf.function_args("kmem_cache_free").unwrap().len(), 2);
    }
}
