//! Differential property tests of the hand-written DAG-CBOR codec against serde_ipld_dagcbor:
//! both encoders produce the same canonical bytes, and each side decodes the other's output.

use std::collections::BTreeMap;

use atproto_sig_core::cbor::{self, Map, Value};
use atproto_sig_core::cid::Cid;
use ipld_core::ipld::Ipld;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Integer),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        "\\PC{0,20}".prop_map(Value::Text),
        any::<[u8; 8]>().prop_map(|seed| Value::Link(Cid::for_dag_cbor(&seed))),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z$]{0,6}", inner, 0..8).prop_map(|m| Value::Map(Map(m.into_iter().collect()))),
        ]
    })
}

fn to_ipld(value: &Value) -> Ipld {
    match value {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Integer(i) => Ipld::Integer(i128::from(*i)),
        Value::Bytes(b) => Ipld::Bytes(b.clone()),
        Value::Text(t) => Ipld::String(t.clone()),
        Value::Array(items) => Ipld::List(items.iter().map(to_ipld).collect()),
        Value::Map(map) => Ipld::Map(map.0.iter().map(|(k, v)| (k.clone(), to_ipld(v))).collect::<BTreeMap<_, _>>()),
        Value::Link(cid) => Ipld::Link(ipld_core::cid::Cid::try_from(cid.to_bytes().as_slice()).unwrap()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encoders_agree_and_decoders_accept_each_other(v in value()) {
        let ours = cbor::encode(&v);
        let theirs = serde_ipld_dagcbor::to_vec(&to_ipld(&v)).unwrap();
        prop_assert_eq!(&ours, &theirs);
        let decoded = cbor::decode(&theirs, 64).unwrap();
        prop_assert_eq!(cbor::encode(&decoded), ours.clone());
        let back: Ipld = serde_ipld_dagcbor::from_slice(&ours).unwrap();
        prop_assert_eq!(back, to_ipld(&v));
    }

    #[test]
    fn any_single_byte_change_is_rejected_or_changes_the_value(v in value(), index in any::<usize>(), bit in 0u8..8) {
        let bytes = cbor::encode(&v);
        let mut changed = bytes.clone();
        let i = index % changed.len();
        changed[i] ^= 1 << bit;
        // Strict decoding: a change either fails or yields a different value (never the same
        // value from different bytes, which would break content addressing).
        if let Ok(other) = cbor::decode(&changed, 64) {
            prop_assert_ne!(cbor::encode(&other), bytes);
            prop_assert_eq!(cbor::encode(&other), changed);
        }
    }
}
