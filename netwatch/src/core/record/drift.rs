//! The format is told in three places besides these types: the JSON Schema (`netwatch
//! schema`), docs/trace-format.md, and the hand-written transition writer (held to the types
//! in `json`'s tests). These tests hold the schema and the docs to the types, so that a field
//! added, renamed or dropped in one place fails here until the others say the same:
//!
//! - every field of every record type (found from the type itself, through serde) is in the
//!   schema, and the schema has no field the type lacks;
//! - what the schema requires is what the writer always writes, and every field the schema
//!   does not require may be absent when read (older traces lack it);
//! - every record reads back as what was written;
//! - every field is named in docs/trace-format.md, a record's own fields in its section.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, DeserializeOwned, Visitor};
use serde_json::{json, Map};

use super::*;
use crate::core::{
    event::{Owner, Transition},
    replay::tests::{clock, header, port_exhaustion, sample, START},
    snapshot::{Bucket, ConntrackStats, Percentiles, Snapshot},
};

const DOCS: &str = include_str!("../../../../docs/trace-format.md");

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema is a valid JSON Schema")
}

fn errors(v: &jsonschema::Validator, r: &Value) -> Vec<String> {
    v.iter_errors(r)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn to_value(r: &Record<'_>) -> Value {
    serde_json::to_value(r).expect("a record serializes")
}

/// The `"type"` of each variant. No wildcard: a new record type fails to compile here until
/// it is given an example below.
fn type_of(r: &Record<'_>) -> &'static str {
    match r {
        Record::Header(_) => "header",
        Record::Census(_) => "census",
        Record::Transition(_) => "transition",
        Record::Snapshot(_) => "snapshot",
        Record::Alert(_) => "alert",
        Record::TimewaitReset(_) => "timewait_reset",
        Record::PartEnd(_) => "part_end",
        Record::Summary(_) => "summary",
        Record::Other => "other",
    }
}

/// A record of each type as the writer makes it, with every optional field present (`full`)
/// and with every one absent (`bare`).
struct Example {
    full: Record<'static>,
    bare: Record<'static>,
}

fn pct(n: u64) -> Percentiles {
    Percentiles {
        count: n,
        p50: 10,
        p90: 20,
        p99: 30,
        max: 40,
    }
}

/// A transition with every optional part: a request socket's end, owned, in a container,
/// about a timewait socket, from a v4-mapped address.
fn full_transition() -> Transition {
    Transition {
        synack_retransmits: Some(2),
        accept_wait_ns: Some(5),
        timewait: true,
        cgroup: 9,
        container: Some("nginx.service".into()),
        owner: Some(Owner {
            pid: 42,
            comm: "nginx".into(),
            container: None,
        }),
        saddr: "::ffff:10.0.0.1".parse().unwrap(),
        ..Transition::example()
    }
}

fn examples() -> Vec<Example> {
    let clock = clock();
    let mut full_header = header(0);
    full_header.netns_sysctls = BTreeMap::from([(
        "4026532247".to_owned(),
        BTreeMap::from([("net.core.somaxconn".to_owned(), "4096".to_owned())]),
    )]);
    full_header.netns_names = BTreeMap::from([("4026532247".into(), "scn-srv".into())]);
    full_header.filters = FiltersJson {
        ports: vec![80],
        addrs: vec!["10.0.0.0/8".into()],
        netns: vec![4026532247],
    };
    let census = CensusJson {
        ts: clock.rfc3339(START),
        mono_ns: START,
        sock_id: 1,
        family: "ipv4".into(),
        saddr: "10.0.0.1".parse().unwrap(),
        sport: 80,
        daddr: "0.0.0.0".parse().unwrap(),
        dport: 0,
        state: "LISTEN".into(),
        age_ns: None,
        netns: 7,
        pid: Some(42),
        comm: Some("nginx".into()),
    };
    // Leaked: the examples live as long as the tests, and records borrow what they write.
    let request: &'static Transition = Box::leak(Box::new(full_transition()));
    let plain: &'static Transition = Box::leak(Box::new(Transition::example()));
    // An engine's view with a conntrack table and one state with dwells, ages and bars.
    let mut snap = Snapshot::empty();
    snap.mono_ns = START;
    snap.conntrack = Some(ConntrackStats {
        count: Some(10),
        max: Some(100),
        lifetimes: vec![("TIME_WAIT", pct(3))],
        established_idle_over_1h: Some(1),
        timeout_established_s: Some(432000),
        time_wait_entries: Some(2),
        timeout_time_wait_s: Some(120),
        ..Default::default()
    });
    let established = &mut snap.states[netwatch_common::state::ESTABLISHED as usize];
    established.dwell = pct(1);
    established.age = pct(1);
    established.buckets = vec![Bucket {
        upper_ns: 100,
        count: 1,
    }];
    let full_snapshot = SnapshotJson::new(&snap, clock);
    let bare_snapshot = SnapshotJson {
        conntrack: None,
        timewait_early_ends: None,
        ..SnapshotJson::new(&Snapshot::empty(), clock)
    };
    let alert: &'static Alert = Box::leak(Box::new(port_exhaustion()));
    let bare_alert = AlertJson::new(alert, START, clock);
    let full_alert = AlertJson {
        netns_name: Some("scn-srv".into()),
        ..bare_alert.clone()
    };
    let reset = TimewaitResetJson {
        ts: clock.rfc3339(START),
        mono_ns: START,
        netns: 7,
        saddr: "10.0.0.1".parse().unwrap(),
        sport: 80,
        daddr: "10.0.0.2".parse().unwrap(),
        dport: 40000,
    };
    let part_end = PartEndJson {
        ts: clock.rfc3339(START),
        mono_ns: START,
        part: 0,
        next: "t.jsonl.1".into(),
    };
    let totals = crate::core::json::SummaryTotals {
        stopped_by: "sigint",
        start_mono_ns: START,
        records: RecordCounts::default(),
        lost_records: 0,
        undecodable: 0,
    };
    let full_summary = SummaryJson::new(
        &snap,
        clock,
        totals,
        BTreeMap::from([("port_exhaustion".into(), 1)]),
        full_header.kernel_features.clone(),
    );
    let bare_summary = SummaryJson {
        timewait_early_ends: None,
        ..full_summary.clone()
    };
    vec![
        Example {
            full: Record::Header(Box::new(Cow::Owned(full_header))),
            bare: Record::Header(Box::new(Cow::Owned(header(0)))),
        },
        Example {
            full: Record::Census(census.clone()),
            bare: Record::Census(CensusJson {
                pid: None,
                comm: None,
                ..census
            }),
        },
        Example {
            full: Record::Transition(TransitionJson::new(request, clock)),
            bare: Record::Transition(TransitionJson::new(plain, clock)),
        },
        Example {
            full: Record::Snapshot(Box::new(full_snapshot)),
            bare: Record::Snapshot(Box::new(bare_snapshot)),
        },
        Example {
            full: Record::Alert(full_alert),
            bare: Record::Alert(bare_alert),
        },
        Example {
            full: Record::TimewaitReset(reset.clone()),
            bare: Record::TimewaitReset(reset),
        },
        Example {
            full: Record::PartEnd(part_end.clone()),
            bare: Record::PartEnd(part_end),
        },
        Example {
            full: Record::Summary(Box::new(Cow::Owned(full_summary))),
            bare: Record::Summary(Box::new(Cow::Owned(bare_summary))),
        },
    ]
}

/// A deserializer that only asks a struct type for its field names (serde lists them for
/// `deserialize_struct`), so the tests know every field of a type without listing them.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a plain struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("names taken"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

fn fields_of<T: DeserializeOwned>() -> BTreeSet<&'static str> {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut names));
    assert!(
        !names.is_empty(),
        "{} names no fields",
        std::any::type_name::<T>()
    );
    names.iter().copied().collect()
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .filter(|&k| k != "type")
        .collect()
}

/// The full example of `type` as JSON.
fn full(examples: &[Example], kind: &str) -> Value {
    let e = examples
        .iter()
        .find(|e| type_of(&e.full) == kind)
        .unwrap_or_else(|| panic!("no {kind} example"));
    to_value(&e.full)
}

#[test]
fn there_is_an_example_of_every_record_type_and_the_schema_knows_them() {
    let examples = examples();
    let types: Vec<&str> = examples.iter().map(|e| type_of(&e.full)).collect();
    assert_eq!(types, KNOWN_TYPES);
    for e in &examples {
        assert_eq!(to_value(&e.full)["type"], type_of(&e.full));
        assert_eq!(to_value(&e.bare)["type"], type_of(&e.bare));
    }
    assert_eq!(schema()["properties"]["type"]["enum"], json!(KNOWN_TYPES));
    for t in KNOWN_TYPES {
        assert!(schema()["$defs"][t].is_object(), "the schema lacks {t}");
    }
}

/// Every field of each type is in its full example: the checks below then see them all.
#[test]
fn the_full_examples_have_every_field_of_their_type() {
    let ex = examples();
    let header = full(&ex, "header");
    let snapshot = full(&ex, "snapshot");
    let summary = full(&ex, "summary");
    let cases = [
        ("HeaderJson", fields_of::<HeaderJson>(), header.clone()),
        (
            "FiltersJson",
            fields_of::<FiltersJson>(),
            header["filters"].clone(),
        ),
        ("CensusJson", fields_of::<CensusJson>(), full(&ex, "census")),
        (
            "TransitionJson",
            fields_of::<TransitionJson>(),
            full(&ex, "transition"),
        ),
        (
            "SnapshotJson",
            fields_of::<SnapshotJson>(),
            snapshot.clone(),
        ),
        (
            "ConntrackJson",
            fields_of::<ConntrackJson>(),
            snapshot["conntrack"].clone(),
        ),
        (
            "PercentilesJson",
            fields_of::<PercentilesJson>(),
            snapshot["dwell"]["ESTABLISHED"].clone(),
        ),
        (
            "EarlyEnds",
            fields_of::<EarlyEnds>(),
            snapshot["timewait_early_ends"].clone(),
        ),
        (
            "TimewaitResetJson",
            fields_of::<TimewaitResetJson>(),
            full(&ex, "timewait_reset"),
        ),
        (
            "PartEndJson",
            fields_of::<PartEndJson>(),
            full(&ex, "part_end"),
        ),
        ("SummaryJson", fields_of::<SummaryJson>(), summary.clone()),
        (
            "RecordCounts",
            fields_of::<RecordCounts>(),
            summary["records"].clone(),
        ),
        (
            "BucketJson",
            fields_of::<BucketJson>(),
            summary["histogram"]["ESTABLISHED"][0].clone(),
        ),
    ];
    for (name, fields, example) in cases {
        assert_eq!(keys(&example), fields, "{name}'s example lacks fields");
    }
    // The alert's own fields (its evidence is the catalogue's: see alert_catalogue).
    let alert = full(&ex, "alert");
    for f in ["ts", "mono_ns", "message", "netns_name", "kind"] {
        assert!(alert.get(f).is_some(), "the alert example lacks {f}");
    }
}

/// The schema node that `node` stands for: `$ref`s followed.
fn resolve<'s>(root: &'s Value, mut node: &'s Value) -> &'s Value {
    while let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").expect("a local $ref");
        node = &root["$defs"][name];
    }
    node
}

/// Every object in `value` whose schema lists its fields, with its JSON pointer (`""` for the
/// record itself) and that schema.
fn objects<'v, 's>(
    root: &'s Value,
    schema: &'s Value,
    value: &'v Value,
    path: String,
    out: &mut Vec<(String, &'v Map<String, Value>, &'s Value)>,
) {
    let schema = resolve(root, schema);
    match value {
        Value::Object(m) => {
            let props = schema.get("properties");
            if props.is_some() {
                out.push((path.clone(), m, schema));
            }
            for (k, v) in m {
                let sub = props
                    .and_then(|p| p.get(k))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(sub) = sub {
                    objects(root, sub, v, format!("{path}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    objects(root, sub, v, format!("{path}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

fn record_objects<'v, 's>(
    root: &'s Value,
    record: &'v Value,
) -> Vec<(String, &'v Map<String, Value>, &'s Value)> {
    let kind = record["type"].as_str().unwrap();
    let mut out = Vec::new();
    objects(root, &root["$defs"][kind], record, String::new(), &mut out);
    out
}

/// The fields of the alert record itself, besides its kind's evidence.
fn alert_fields() -> BTreeSet<String> {
    let own = AlertJson {
        ts: String::new(),
        mono_ns: 0,
        message: String::new(),
        netns_name: Some(String::new()),
        evidence: AlertEvidence::Recorded {
            kind: String::new(),
            fields: BTreeMap::new(),
        },
    };
    names(&to_value(&Record::Alert(own)))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn names(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn the_schema_has_every_field_and_no_other() {
    let root = schema();
    for e in examples() {
        let record = to_value(&e.full);
        let kind = type_of(&e.full);
        for (pointer, object, schema) in record_objects(&root, &record) {
            let have: BTreeSet<&str> = object.keys().map(String::as_str).collect();
            let listed = names(&schema["properties"]);
            if schema["additionalProperties"] == false {
                assert_eq!(
                    have, listed,
                    "{kind}{pointer}: the record's fields (left) and the schema's (right) differ"
                );
            } else {
                // An open object (an alert: its evidence varies by kind, see the
                // catalogue): the schema lists at least the alert record's own fields.
                let missing: Vec<_> = alert_fields()
                    .into_iter()
                    .filter(|f| !listed.contains(f.as_str()))
                    .collect();
                assert!(missing.is_empty(), "{kind}: the schema lacks {missing:?}");
            }
        }
    }
}

#[test]
fn every_example_validates_against_the_schema() {
    let v = validator();
    for e in examples() {
        for r in [&e.full, &e.bare] {
            let r = to_value(r);
            let errs = errors(&v, &r);
            assert!(errs.is_empty(), "{r}: {errs:?}");
        }
    }
}

/// The schema's `required` is what the writer always writes (the bare examples are valid,
/// above); here, the converse for the reader: whatever the schema does not require may be
/// missing, as it is from traces written before the field was added.
#[test]
fn every_field_the_schema_does_not_require_may_be_absent_when_read() {
    let root = schema();
    for e in examples() {
        let record = to_value(&e.full);
        let kind = type_of(&e.full);
        let mut optional = Vec::new();
        for (pointer, object, schema) in record_objects(&root, &record) {
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            for k in object.keys() {
                if !required.contains(&Value::String(k.clone())) {
                    optional.push((pointer.clone(), k.clone()));
                }
            }
        }
        for (pointer, field) in optional {
            let mut without = record.clone();
            without
                .pointer_mut(&pointer)
                .and_then(Value::as_object_mut)
                .unwrap()
                .remove(&field);
            match serde_json::from_value::<Record<'static>>(without) {
                Ok(r) => assert_eq!(type_of(&r), kind, "{kind}{pointer}/{field}"),
                Err(err) => panic!("a {kind} without {pointer}/{field} is refused: {err}"),
            }
        }
    }
}

/// What the writer writes, the reader reads as the same record.
#[test]
fn every_record_reads_back_as_written() {
    for e in examples() {
        for r in [&e.full, &e.bare] {
            let written = serde_json::to_string(r).unwrap();
            let read: Record<'static> = serde_json::from_str(&written).unwrap();
            assert_eq!(to_value(&read), to_value(r), "{written}");
        }
    }
}

/// The docs' section about one record type: from its `### \`type\`` heading to the next
/// record's (or the next chapter).
fn section(kind: &str) -> &'static str {
    let heading = format!("\n### `{kind}`\n");
    let start = DOCS
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/trace-format.md has no section {heading:?}"));
    let rest = &DOCS[start + heading.len()..];
    let end = [rest.find("\n### `"), rest.find("\n## ")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn the_docs_name_every_field() {
    let root = schema();
    for e in examples() {
        let record = to_value(&e.full);
        let kind = type_of(&e.full);
        let own = section(kind);
        for (pointer, object, schema) in record_objects(&root, &record) {
            // An alert's evidence is the catalogue's, documented in docs/alerts.md (held to
            // the catalogue there): here only the fields the schema names.
            let open = schema["additionalProperties"] != false;
            let listed = names(&schema["properties"]);
            for k in object
                .keys()
                .filter(|&k| k != "type" && (!open || listed.contains(k.as_str())))
            {
                // `ts` and `mono_ns` are said once for all records; a record's own fields
                // in its section; the fields of its parts anywhere.
                let (text, where_) = match k.as_str() {
                    "ts" | "mono_ns" => (DOCS, "anywhere"),
                    _ if pointer.is_empty() => (own, "in its section"),
                    _ => (DOCS, "anywhere"),
                };
                assert!(
                    text.contains(&format!("`{k}`")) || text.contains(&format!("\"{k}\"")),
                    "docs/trace-format.md does not name {kind}{pointer}/{k} ({where_})"
                );
            }
        }
    }
}

#[test]
fn every_record_of_a_written_trace_validates_against_the_schema() {
    let v = validator();
    let sample = sample();
    for line in sample
        .bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let r: Value = serde_json::from_slice(line).unwrap();
        let errs = errors(&v, &r);
        assert!(errs.is_empty(), "{r}: {errs:?}");
    }
    // And the transition writer's own bytes, optional fields and all (the full example has
    // every field of the type, and the writer's bytes are the type's: see below).
    let mut out = Vec::new();
    crate::core::json::write_transition(
        &mut out,
        &full_transition(),
        clock(),
        &mut Default::default(),
    );
    let r: Value = serde_json::from_slice(&out).unwrap();
    let errs = errors(&v, &r);
    assert!(errs.is_empty(), "{r}: {errs:?}");
}

/// The hand-written transition writer is a second telling of the transition record: with
/// every field present, it writes the very bytes of the type's serde form.
#[test]
fn the_transition_writer_writes_every_field_as_the_type_does() {
    let t = full_transition();
    let mut fast = Vec::new();
    crate::core::json::write_transition(&mut fast, &t, clock(), &mut Default::default());
    let mut slow = Vec::new();
    crate::core::json::write_line(
        &mut slow,
        &Record::Transition(TransitionJson::new(&t, clock())),
    );
    assert_eq!(
        String::from_utf8(fast).unwrap(),
        String::from_utf8(slow).unwrap()
    );
}

#[test]
fn the_format_docs_name_every_feature() {
    for f in crate::features::Feature::ALL {
        let name = serde_json::to_value(f).unwrap();
        let name = format!("`{}`", name.as_str().unwrap());
        assert!(
            DOCS.contains(&name),
            "docs/trace-format.md does not list {name}"
        );
    }
}

#[test]
fn the_schema_catches_drift() {
    let v = validator();
    let sample = sample();
    let first: Value =
        serde_json::from_slice(sample.bytes.split(|&b| b == b'\n').next().unwrap()).unwrap();
    let mut extra = first.clone();
    extra["undocumented"] = 1.into();
    assert!(!errors(&v, &extra).is_empty(), "an undocumented field");
    let mut missing = first.clone();
    missing.as_object_mut().unwrap().remove("run_id");
    assert!(!errors(&v, &missing).is_empty(), "a missing field");
    let mut old = first.clone();
    old.as_object_mut().unwrap().remove("kernel_features");
    assert!(
        errors(&v, &old).is_empty(),
        "a trace from before kernel_features stays valid"
    );
    let mut bad = first.clone();
    bad["kernel_features"][0]["available"] = "yes".into();
    assert!(
        !errors(&v, &bad).is_empty(),
        "a feature that is not a yes/no"
    );
    let mut version = first;
    version["schema_version"] = 2.into();
    assert!(!errors(&v, &version).is_empty(), "another version");
    let bad_type = json!({"type": "telemetry"});
    assert!(!errors(&v, &bad_type).is_empty(), "an unknown record type");
    let bad_ts = json!({"type": "part_end", "ts": "yesterday", "mono_ns": 1,
        "part": 0, "next": "x"});
    assert!(
        !errors(&v, &bad_ts).is_empty(),
        "a time that is not RFC 3339 UTC"
    );
}
