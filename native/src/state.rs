//! Per-account state and the model's outputs, in the serialised form of
//! `costtrace/model/state.py`: msgpack, each array-like struct an array of its
//! fields in order, `Record` and `Rejection` maps as the contract's JSON has
//! them. The msgspec types there decode every value written here and encode
//! it back to the same bytes (tests/model/test_properties.py holds them to it).

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpenBatch {
    pub issued_ns: i64,
    pub batch_id: String,
    pub budget_id: String,
    pub remaining: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Debt {
    pub order_id: String,
    pub amount: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kept {
    pub source: String,
    pub offset: i64,
    pub slot: i64,
}

/// Source ("topic:partition") -> last offset applied, in insertion order (a msgpack map).
#[derive(Clone, Debug, Default)]
pub struct Marks(pub Vec<(String, i64)>);

impl Marks {
    pub fn get(&self, source: &str) -> Option<i64> {
        self.0.iter().find(|(s, _)| s == source).map(|(_, o)| *o)
    }

    pub fn set(&mut self, source: &str, offset: i64) {
        match self.0.iter_mut().find(|(s, _)| s == source) {
            Some(entry) => entry.1 = offset,
            None => self.0.push((source.to_owned(), offset)),
        }
    }
}

impl Serialize for Marks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Marks {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Marks;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of source to offset")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Marks, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = access.next_entry::<String, i64>()? {
                    out.push((k, v));
                }
                Ok(Marks(out))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    #[serde(default)]
    pub open: Vec<OpenBatch>,
    #[serde(default)]
    pub debts: Vec<Debt>,
    #[serde(default)]
    pub marks: Marks,
    #[serde(default)]
    pub steps: i64,
    #[serde(default)]
    pub kept: Vec<Kept>,
    /// the largest log-order place of an event applied to it (fleet only; replay has no places)
    #[serde(default)]
    pub last: Option<OrderMark>,
}

/// A place in the fleet's log order: (order time, rank, partition, offset, credit), compared in that order.
pub type OrderMark = (i64, i64, i64, i64, i64);

impl Account {
    /// Open stock; summed wide, so no number of batches can overflow it.
    pub fn stock(&self) -> i128 {
        self.open.iter().map(|b| b.remaining as i128).sum()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchInfo {
    pub budget_id: String,
    pub issued_ns: i64,
    pub amount: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Slice {
    pub batch_id: String,
    pub budget_id: String,
    pub amount: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    pub amount: i64,
    pub merchant_id: Option<String>,
    #[serde(default)]
    pub refunded: i64,
    #[serde(default)]
    pub suspense: i64,
    #[serde(default)]
    pub consumes: Vec<Slice>,
    #[serde(default)]
    pub trueups: Vec<Slice>,
    #[serde(default)]
    pub archived: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreditSlice {
    pub source_batch_id: String,
    pub budget_id: String,
    pub issued_ns: i64,
    pub amount: i64,
}

/// The receiving half of a transfer (also the credits topic's wire form).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credit {
    pub origin_account_id: String,
    pub event_id: String,
    pub transfer_id: String,
    pub to_account_id: String,
    pub seq: i64,
    pub slices: Vec<CreditSlice>,
}

/// A record's kind (`costtrace.contract.records.Kind`, but for `rejected`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Issue,
    Open,
    Consume,
    Trueup,
    Refund,
    TransferOut,
    TransferIn,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Issue,
        Kind::Open,
        Kind::Consume,
        Kind::Trueup,
        Kind::Refund,
        Kind::TransferOut,
        Kind::TransferIn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Issue => "issue",
            Kind::Open => "open",
            Kind::Consume => "consume",
            Kind::Trueup => "trueup",
            Kind::Refund => "refund",
            Kind::TransferOut => "transfer_out",
            Kind::TransferIn => "transfer_in",
        }
    }
}

/// One movement of coins on one batch; a map without the fields that do not apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub record_id: String,
    pub event_id: String,
    pub kind: Kind,
    pub account_id: String,
    pub batch_id: String,
    pub budget_id: String,
    pub amount: i64,
    pub order_id: Option<String>,
    pub refund_id: Option<String>,
    pub transfer_id: Option<String>,
    pub merchant_id: Option<String>,
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            record_id: String,
            event_id: String,
            kind: String,
            account_id: String,
            batch_id: String,
            budget_id: String,
            amount: i64,
            #[serde(default)]
            order_id: Option<String>,
            #[serde(default)]
            refund_id: Option<String>,
            #[serde(default)]
            transfer_id: Option<String>,
            #[serde(default)]
            merchant_id: Option<String>,
        }
        let w = Wire::deserialize(deserializer)?;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == w.kind)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown record kind {:?}", w.kind)))?;
        Ok(Record {
            record_id: w.record_id,
            event_id: w.event_id,
            kind,
            account_id: w.account_id,
            batch_id: w.batch_id,
            budget_id: w.budget_id,
            amount: w.amount,
            order_id: w.order_id,
            refund_id: w.refund_id,
            transfer_id: w.transfer_id,
            merchant_id: w.merchant_id,
        })
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let optional = [
            ("order_id", &self.order_id),
            ("refund_id", &self.refund_id),
            ("transfer_id", &self.transfer_id),
            ("merchant_id", &self.merchant_id),
        ];
        let n = 7 + optional.iter().filter(|(_, v)| v.is_some()).count();
        let mut map = serializer.serialize_map(Some(n))?;
        map.serialize_entry("record_id", &self.record_id)?;
        map.serialize_entry("event_id", &self.event_id)?;
        map.serialize_entry("kind", self.kind.as_str())?;
        map.serialize_entry("account_id", &self.account_id)?;
        map.serialize_entry("batch_id", &self.batch_id)?;
        map.serialize_entry("budget_id", &self.budget_id)?;
        map.serialize_entry("amount", &self.amount)?;
        for (name, value) in optional {
            if let Some(v) = value {
                map.serialize_entry(name, v)?;
            }
        }
        map.end()
    }
}

impl Record {
    /// The contract's JSON, as msgspec writes it (same field order, same escapes).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"record_id\":");
        json_str(out, &self.record_id);
        out.extend_from_slice(b",\"event_id\":");
        json_str(out, &self.event_id);
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"account_id\":");
        json_str(out, &self.account_id);
        out.extend_from_slice(b",\"batch_id\":");
        json_str(out, &self.batch_id);
        out.extend_from_slice(b",\"budget_id\":");
        json_str(out, &self.budget_id);
        out.extend_from_slice(b",\"amount\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.amount).as_bytes());
        for (name, value) in [
            (&b",\"order_id\":"[..], &self.order_id),
            (b",\"refund_id\":", &self.refund_id),
            (b",\"transfer_id\":", &self.transfer_id),
            (b",\"merchant_id\":", &self.merchant_id),
        ] {
            if let Some(v) = value {
                out.extend_from_slice(name);
                json_str(out, v);
            }
        }
        out.push(b'}');
    }
}

/// Whether any byte is a control character, `"` or `\\`; eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
        if below_space || has_zero(x ^ (ONES * u64::from(b'"'))) || has_zero(x ^ (ONES * u64::from(b'\\'))) {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A JSON string: `"` and `\\` escaped, control characters as msgspec (and RFC 8259) write them.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The single record of a rejected event: always its four fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub event_id: Option<String>,
    pub account_id: Option<String>,
    pub reason: String,
}

impl Serialize for Rejection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("event_id", &self.event_id)?;
        map.serialize_entry("kind", "rejected")?;
        map.serialize_entry("account_id", &self.account_id)?;
        map.serialize_entry("reason", &self.reason)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Rejection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            event_id: Option<String>,
            account_id: Option<String>,
            reason: String,
        }
        let w = Wire::deserialize(deserializer)?;
        Ok(Rejection {
            event_id: w.event_id,
            account_id: w.account_id,
            reason: w.reason,
        })
    }
}

/// Everything an event produced, kept to give back on redelivery.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outputs {
    #[serde(default)]
    pub records: Vec<Record>,
    #[serde(default)]
    pub credits: Vec<Credit>,
    #[serde(default)]
    pub rejection: Option<Rejection>,
    #[serde(default)]
    pub step: i64,
}

/// The header entry of an account: its `Account`, and the redo log of its last event.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Header {
    pub account: Account,
    #[serde(default)]
    pub redo: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}
