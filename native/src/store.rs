//! Where per-account state lives, and how an event reads and writes it.
//!
//! The fleet's table is the partition's RocksDB (costtrace/fleet/state.py), bytes in
//! and bytes out, whose changelog a crash may cut; replay's is a map in
//! memory that holds each account's values as they are (`Held`: nothing to
//! encode or decode). The rules see both through the same `AccountState`
//! and `Entries`. In the table:
//! - keys: `h{len}:{account}` for the header, `{ns}{len}:{account}{key}` for
//!   an entry (`len` in bytes keeps accounts apart whatever their ids hold);
//! - an event's writes go out as one group, header first. If the table says
//!   the group reaches its changelog whole (`together`), the header is
//!   written alone; otherwise it carries the group's other writes (its redo
//!   log), and the first load of the account in a process writes them again,
//!   which completes an event a crash cut off.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::{Account, BatchInfo, Header, Order, Outputs};

pub type Write = (Vec<u8>, Vec<u8>);

/// What a store needs of its table.
pub trait Table {
    type Error: From<StateError>;

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;

    /// Write these in order, as one group.
    fn put_all(&mut self, writes: Vec<Write>) -> Result<(), Self::Error>;

    /// Whether a group of `records` writes of `size` key and value bytes reaches the changelog whole.
    fn together(&mut self, size: usize, records: usize) -> Result<bool, Self::Error>;

    /// A table in memory holds accounts as values, not bytes (nothing to encode, nothing to decode).
    fn held(&mut self) -> Option<&mut FxHashMap<String, Held>> {
        None
    }
}

/// One account in memory: its header and entries as values.
///
/// Taken out of the map while an event runs and put back after; a panic (a
/// bug, never input) in between leaves the account empty, and replay stops
/// on it anyway. The fleet's table is written only at commit.
#[derive(Default)]
pub struct Held {
    pub head: Account,
    pub batches: FxHashMap<String, BatchInfo>,
    pub orders: FxHashMap<String, Order>,
    pub events: FxHashMap<String, EventBytes>,
    pub refunds: FxHashMap<String, String>,
    pub transfers: FxHashMap<String, String>,
    pub credits: FxHashMap<String, String>,
    pub outputs: FxHashMap<String, Outputs>,
}

/// A stored value that does not decode: state written by something else.
#[derive(Debug)]
pub struct StateError(pub String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("state always encodes")
}

pub fn decode<T: DeserializeOwned>(what: &str, data: &[u8]) -> Result<T, StateError> {
    rmp_serde::from_slice(data).map_err(|e| StateError(format!("stored {what} does not decode: {e}")))
}

use crate::vocabulary::KEY_PREFIXES;

const fn prefix(i: usize) -> u8 {
    KEY_PREFIXES[i].1
}

pub const HEADER: u8 = prefix(0);
pub const BATCH: u8 = prefix(1);
pub const ORDER: u8 = prefix(2);
pub const EVENT: u8 = prefix(3);
pub const REFUND: u8 = prefix(4);
pub const TRANSFER: u8 = prefix(5);
pub const CREDIT: u8 = prefix(6);
pub const OUTPUTS: u8 = prefix(7);

pub fn account_prefix(account_id: &str) -> Vec<u8> {
    let mut out = format!("{}:", account_id.len()).into_bytes();
    out.extend_from_slice(account_id.as_bytes());
    out
}

fn key_of(ns: u8, prefix: &[u8], key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + prefix.len() + key.len());
    out.push(ns);
    out.extend_from_slice(prefix);
    out.extend_from_slice(key.as_bytes());
    out
}

/// How an entry's value is kept: a struct as msgpack, or raw bytes (an event as its producer's fingerprint).
pub trait Value: Clone + Sized {
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(data: &[u8]) -> Result<Self, StateError>;
}

macro_rules! msgpack_value {
    ($t:ty, $name:literal) => {
        impl Value for $t {
            fn to_bytes(&self) -> Vec<u8> {
                encode(self)
            }
            fn from_bytes(data: &[u8]) -> Result<Self, StateError> {
                decode($name, data)
            }
        }
    };
}

msgpack_value!(BatchInfo, "batch");
msgpack_value!(Order, "order");
msgpack_value!(String, "id");
msgpack_value!(Outputs, "outputs");

/// An applied event, as msgpack of its `costtrace.contract.events` Struct: compared byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventBytes(pub Vec<u8>);

impl Value for EventBytes {
    fn to_bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn from_bytes(data: &[u8]) -> Result<Self, StateError> {
        Ok(EventBytes(data.to_vec()))
    }
}

/// Entries of one kind on one account: read through to the table, written at commit.
pub struct Entries<V> {
    ns: u8,
    // replay's store: the account's own map, taken from the store while the event runs
    held: Option<FxHashMap<String, V>>,
    // an event reads and writes a handful of entries: a list beats a hash map
    read: Vec<(String, Option<V>)>,
    written: Vec<(String, V)>,
}

impl<V: Value> Entries<V> {
    fn new(ns: u8) -> Self {
        Entries {
            ns,
            held: None,
            read: Vec::new(),
            written: Vec::new(),
        }
    }

    fn of_held(ns: u8, map: FxHashMap<String, V>) -> Self {
        Entries {
            ns,
            held: Some(map),
            read: Vec::new(),
            written: Vec::new(),
        }
    }

    fn into_held(self) -> FxHashMap<String, V> {
        self.held.unwrap_or_default()
    }

    pub fn get<T: Table>(&mut self, table: &mut T, prefix: &[u8], key: &str) -> Result<Option<V>, T::Error> {
        if let Some(held) = &self.held {
            return Ok(held.get(key).cloned());
        }
        if let Some((_, v)) = self.written.iter().find(|(k, _)| k == key) {
            return Ok(Some(v.clone()));
        }
        if let Some((_, v)) = self.read.iter().find(|(k, _)| k == key) {
            return Ok(v.clone());
        }
        let value = match table.get(&key_of(self.ns, prefix, key))? {
            None => None,
            Some(raw) => Some(V::from_bytes(&raw)?),
        };
        self.read.push((key.to_owned(), value.clone()));
        Ok(value)
    }

    pub fn contains<T: Table>(&mut self, table: &mut T, prefix: &[u8], key: &str) -> Result<bool, T::Error> {
        Ok(self.get(table, prefix, key)?.is_some())
    }

    pub fn set(&mut self, key: String, value: V) {
        if let Some(held) = &mut self.held {
            held.insert(key, value);
            return;
        }
        match self.written.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.written.push((key, value)),
        }
    }

    fn table_writes(&self, prefix: &[u8], out: &mut Vec<Write>) {
        for (k, v) in &self.written {
            out.push((key_of(self.ns, prefix, k), v.to_bytes()));
        }
    }
}

/// One account's state as the rules see it: the header and its keyed entries.
pub struct AccountState {
    pub account_id: String,
    pub prefix: Vec<u8>,
    pub head: Account,
    pub batches: Entries<BatchInfo>,
    pub orders: Entries<Order>,
    pub events: Entries<EventBytes>,
    pub refunds: Entries<String>,
    pub transfers: Entries<String>,
    pub credits: Entries<String>,
    pub outputs: Entries<Outputs>,
    new: bool,
}

/// The store: a table, and which accounts this process has loaded (their redo logs written again).
pub struct Store<T> {
    pub table: T,
    repaired: HashSet<String>,
    /// accounts whose first header this store wrote (for the accounts-held metric)
    pub created: u64,
}

impl<T: Table> Store<T> {
    pub fn new(table: T) -> Self {
        Store {
            table,
            repaired: HashSet::new(),
            created: 0,
        }
    }

    /// After a rebalance, recovery may have restored another worker's cut-off event.
    pub fn forget_repairs(&mut self) {
        self.repaired.clear();
    }

    /// The account's state, empty if it has none yet.
    pub fn account(&mut self, account_id: &str) -> Result<AccountState, T::Error> {
        let prefix = account_prefix(account_id);
        if let Some(held) = self.table.held() {
            let (h, new) = match held.get_mut(account_id) {
                Some(h) => (std::mem::take(h), false),
                None => {
                    held.insert(account_id.to_owned(), Held::default());
                    (Held::default(), true)
                }
            };
            return Ok(AccountState {
                account_id: account_id.to_owned(),
                prefix,
                head: h.head,
                batches: Entries::of_held(BATCH, h.batches),
                orders: Entries::of_held(ORDER, h.orders),
                events: Entries::of_held(EVENT, h.events),
                refunds: Entries::of_held(REFUND, h.refunds),
                transfers: Entries::of_held(TRANSFER, h.transfers),
                credits: Entries::of_held(CREDIT, h.credits),
                outputs: Entries::of_held(OUTPUTS, h.outputs),
                new,
            });
        }
        let raw = self.table.get(&key_of(HEADER, &prefix, ""))?;
        let new = raw.is_none();
        // the first load of the account in this process
        let first = !self.repaired.contains(account_id);
        let head = match raw {
            None => Account::default(),
            Some(raw) => {
                let header: Header = decode("header", &raw)?;
                if first && !header.redo.is_empty() {
                    let redo = header
                        .redo
                        .into_iter()
                        .map(|(k, v)| (k.into_vec(), v.into_vec()))
                        .collect();
                    self.table.put_all(redo)?;
                }
                header.account
            }
        };
        if first {
            self.repaired.insert(account_id.to_owned());
        }
        Ok(AccountState {
            account_id: account_id.to_owned(),
            prefix,
            head,
            batches: Entries::new(BATCH),
            orders: Entries::new(ORDER),
            events: Entries::new(EVENT),
            refunds: Entries::new(REFUND),
            transfers: Entries::new(TRANSFER),
            credits: Entries::new(CREDIT),
            outputs: Entries::new(OUTPUTS),
            new,
        })
    }

    /// Done with an account without changing it.
    pub fn release(&mut self, state: AccountState) {
        if self.table.held().is_some() {
            if state.new {
                self.table.held().expect("held").remove(&state.account_id);
            } else {
                self.hold(state);
            }
        }
    }

    /// Give an account's state back to a table in memory.
    fn hold(&mut self, state: AccountState) {
        let held = self.table.held().expect("a table in memory");
        let h = held.get_mut(&state.account_id).expect("taken by account()");
        *h = Held {
            head: state.head,
            batches: state.batches.into_held(),
            orders: state.orders.into_held(),
            events: state.events.into_held(),
            refunds: state.refunds.into_held(),
            transfers: state.transfers.into_held(),
            credits: state.credits.into_held(),
            outputs: state.outputs.into_held(),
        };
    }

    /// Keep what one event changed: its writes as one group, header first.
    pub fn commit(&mut self, state: AccountState) -> Result<(), T::Error> {
        if state.new {
            self.created += 1;
        }
        if self.table.held().is_some() {
            self.hold(state);
            return Ok(());
        }
        let p = &state.prefix;
        let mut writes: Vec<Write> = Vec::new();
        state.batches.table_writes(p, &mut writes);
        state.orders.table_writes(p, &mut writes);
        state.events.table_writes(p, &mut writes);
        state.refunds.table_writes(p, &mut writes);
        state.transfers.table_writes(p, &mut writes);
        state.credits.table_writes(p, &mut writes);
        state.outputs.table_writes(p, &mut writes);
        let key = key_of(HEADER, p, "");
        let mut header = Header {
            account: state.head,
            redo: Vec::new(),
        };
        let alone = encode(&header);
        let size = key.len() + alone.len() + writes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let value = if self.table.together(size, writes.len() + 1)? {
            alone
        } else {
            header.redo = writes
                .iter()
                .map(|(k, v)| {
                    (
                        serde_bytes::ByteBuf::from(k.clone()),
                        serde_bytes::ByteBuf::from(v.clone()),
                    )
                })
                .collect();
            encode(&header)
        };
        let mut group = Vec::with_capacity(writes.len() + 1);
        group.push((key, value));
        group.extend(writes);
        self.table.put_all(group)
    }
}

/// Replay's table: a map in memory, whose every group is whole. (`E`: the error type of the caller's `Settled`.)
pub struct MemoryTable<E> {
    pub accounts: FxHashMap<String, Held>,
    error: PhantomData<fn() -> E>,
}

impl<E> Default for MemoryTable<E> {
    fn default() -> Self {
        MemoryTable {
            accounts: FxHashMap::default(),
            error: PhantomData,
        }
    }
}

impl Held {
    /// The header's value, as the fleet's table holds it when no redo log is needed.
    pub fn header(&self) -> Vec<u8> {
        encode(&Header {
            account: self.head.clone(),
            redo: Vec::new(),
        })
    }
}

impl<E> MemoryTable<E> {
    /// Every (key, value) the fleet's table would hold for this state (one account's, or all), for tests.
    pub fn items(&self, account: Option<&str>) -> Vec<Write> {
        fn entries<V: Value>(out: &mut Vec<Write>, ns: u8, prefix: &[u8], map: &FxHashMap<String, V>) {
            for (k, v) in map {
                out.push((key_of(ns, prefix, k), v.to_bytes()));
            }
        }
        let mut out = Vec::new();
        let accounts: Vec<(&String, &Held)> = match account {
            Some(a) => self.accounts.get_key_value(a).into_iter().collect(),
            None => self.accounts.iter().collect(),
        };
        for (account_id, h) in accounts {
            let prefix = account_prefix(account_id);
            out.push((key_of(HEADER, &prefix, ""), h.header()));
            entries(&mut out, BATCH, &prefix, &h.batches);
            entries(&mut out, ORDER, &prefix, &h.orders);
            entries(&mut out, EVENT, &prefix, &h.events);
            entries(&mut out, REFUND, &prefix, &h.refunds);
            entries(&mut out, TRANSFER, &prefix, &h.transfers);
            entries(&mut out, CREDIT, &prefix, &h.credits);
            entries(&mut out, OUTPUTS, &prefix, &h.outputs);
        }
        out
    }
}

impl<E: From<StateError>> Table for MemoryTable<E> {
    type Error = E;

    fn get(&mut self, _key: &[u8]) -> Result<Option<Vec<u8>>, E> {
        unreachable!("accounts in memory are held, not read")
    }

    fn put_all(&mut self, _writes: Vec<Write>) -> Result<(), E> {
        unreachable!("accounts in memory are held, not written")
    }

    fn together(&mut self, _size: usize, _records: usize) -> Result<bool, E> {
        Ok(true)
    }

    fn held(&mut self) -> Option<&mut FxHashMap<String, Held>> {
        Some(&mut self.accounts)
    }
}
