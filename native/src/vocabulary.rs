//! The words of records, rejections, statuses and state keys, written once, here.
//!
//! Python reads them from `costtrace._native` (`SUSPENSE`, `KINDS`, `REASONS`,
//! `STATUSES`, `KEY_PREFIXES`): costtrace/contract/records.py,
//! costtrace/model/allocation.py and costtrace/model/state.py build their enums
//! from these values and refuse to import if a name is missing on either side.

/// The pseudo-batch (and budget) that debt sits on.
pub const SUSPENSE: &str = "SUSPENSE";

/// Why an event was rejected: the contract's reasons, and the fleet's own two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    InvalidEvent,
    DuplicateBatch,
    DuplicateOrder,
    DuplicateRefund,
    DuplicateTransfer,
    ConflictingDuplicate,
    UnknownOrder,
    RefundExceedsOrder,
    SelfTransfer,
    InsufficientStock,
    /// the fleet only: a refund of an order `costtrace archive` moved
    OrderArchived,
    /// the fleet only: an event not on its account's (murmur2) partition
    WrongPartition,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::InvalidEvent,
        Reason::DuplicateBatch,
        Reason::DuplicateOrder,
        Reason::DuplicateRefund,
        Reason::DuplicateTransfer,
        Reason::ConflictingDuplicate,
        Reason::UnknownOrder,
        Reason::RefundExceedsOrder,
        Reason::SelfTransfer,
        Reason::InsufficientStock,
        Reason::OrderArchived,
        Reason::WrongPartition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidEvent => "invalid_event",
            Reason::DuplicateBatch => "duplicate_batch",
            Reason::DuplicateOrder => "duplicate_order",
            Reason::DuplicateRefund => "duplicate_refund",
            Reason::DuplicateTransfer => "duplicate_transfer",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
            Reason::UnknownOrder => "unknown_order",
            Reason::RefundExceedsOrder => "refund_exceeds_order",
            Reason::SelfTransfer => "self_transfer",
            Reason::InsufficientStock => "insufficient_stock",
            Reason::OrderArchived => "order_archived",
            Reason::WrongPartition => "wrong_partition",
        }
    }
}

/// The kind of a rejection's record (every other record's kind is a `state::Kind`).
pub const REJECTED_KIND: &str = "rejected";

/// What became of an event: the model's four, and the fleet's `skipped`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Applied,
    /// an exact repeat of an applied event: ignored
    Repeat,
    Rejected,
    /// read again at a position already applied
    Redelivered,
    /// the fleet only: left out by its tracing switch, never the model's answer
    Skipped,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Applied,
        Status::Repeat,
        Status::Rejected,
        Status::Redelivered,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Repeat => "repeat",
            Status::Rejected => "rejected",
            Status::Redelivered => "redelivered",
            Status::Skipped => "skipped",
        }
    }
}

/// The first byte of every state key: the account's header, then one namespace per kind of entry.
pub const KEY_PREFIXES: [(&str, u8); 8] = [
    ("HEADER", b'h'),
    ("BATCH", b'0'),
    ("ORDER", b'1'),
    ("EVENT", b'2'),
    ("REFUND", b'3'),
    ("TRANSFER", b'4'),
    ("CREDIT", b'5'),
    ("OUTPUTS", b'6'),
];

/// The name Python gives a word: `transfer_out` is `TRANSFER_OUT`.
pub fn python_name(word: &str) -> String {
    word.to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_is_distinct_and_snake_case() {
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        for words in [&reasons, &statuses] {
            let mut sorted = words.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), words.len());
            assert!(words
                .iter()
                .all(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        }
    }

    #[test]
    fn key_prefixes_are_distinct_bytes() {
        let mut bytes: Vec<u8> = KEY_PREFIXES.iter().map(|(_, b)| *b).collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), KEY_PREFIXES.len());
    }
}
