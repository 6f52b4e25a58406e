//! The cost-tracing rules of the contract (docs/contract.md), applied one event at a time.
//!
//! The only implementation of the rules: offline replay and the fleet's
//! agents both reach them through `costtrace.model.allocation`. Pure: no
//! Kafka, no database, no clock; state comes from a `Store` and goes back to it.
//!
//! Redelivery (the fleet reads at least once): an event read at a position
//! whose offset the account has already passed is a redelivery, and gets
//! back the outputs stored for that position. A producer's repeat (same
//! event, new position) is an exact repeat and yields nothing. Stored outputs
//! are let go once the fleet says their position is settled (committed).

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

use crate::state::{
    BatchInfo, Credit, CreditSlice, Debt, Kept, Kind, OpenBatch, Order, OrderMark, Outputs, Record,
    Rejection, Slice,
};
use crate::store::{AccountState, EventBytes, Store, Table};

pub use crate::vocabulary::{Reason, Status, SUSPENSE};

/// A rejection's detail: `text`, with `{!r}` standing for the (Python) repr of `quoted`.
#[derive(Clone, Debug)]
pub struct Detail {
    pub text: String,
    pub quoted: Option<String>,
}

impl Detail {
    fn of(text: &str, quoted: &str) -> Detail {
        Detail {
            text: text.to_owned(),
            quoted: Some(quoted.to_owned()),
        }
    }

    fn plain(text: String) -> Detail {
        Detail { text, quoted: None }
    }
}

/// What applying one event (or credit) gave.
#[derive(Debug)]
pub struct Outcome {
    pub status: Status,
    pub account_id: String,
    pub records: Vec<Record>,
    pub credits: Vec<Credit>,
    pub rejection: Option<Rejection>,
    pub detail: Option<Detail>,
    /// the account's step that made the records: (step, seq) is replay's order
    pub step: i64,
    /// applied after an event of its account that comes later in the log order (`Account::last`)
    pub late: bool,
}

impl Outcome {
    fn plain(status: Status, account_id: &str) -> Outcome {
        Outcome {
            status,
            account_id: account_id.to_owned(),
            records: Vec::new(),
            credits: Vec::new(),
            rejection: None,
            detail: None,
            step: 0,
            late: false,
        }
    }

    fn outputs(&self) -> Outputs {
        Outputs {
            records: self.records.clone(),
            credits: self.credits.clone(),
            rejection: self.rejection.clone(),
            step: self.step,
        }
    }
}

/// The fields of the five input events, as `costtrace.contract.events` validated them.
#[derive(Debug, Default)]
pub struct Event {
    pub kind: String,
    pub event_id: String,
    pub account_id: String,
    pub occurred_ns: i64,
    pub batch_id: Option<String>,
    pub budget_id: Option<String>,
    pub amount: i64,
    pub order_id: Option<String>,
    pub merchant_id: Option<String>,
    pub refund_id: Option<String>,
    pub transfer_id: Option<String>,
    pub to_account_id: Option<String>,
}

impl Event {
    /// Read the msgpack msgspec writes for an event Struct: a map of its tag and fields.
    pub fn from_msgpack(data: &[u8]) -> Result<Event, String> {
        fn text<'a>(rd: &mut &'a [u8]) -> Result<&'a str, String> {
            let (s, rest) = rmp::decode::read_str_from_slice(*rd).map_err(|e| format!("{e:?}"))?;
            *rd = rest;
            Ok(s)
        }
        fn optional(rd: &mut &[u8]) -> Result<Option<String>, String> {
            if rd.first() == Some(&0xc0) {
                *rd = &rd[1..];
                return Ok(None);
            }
            Ok(Some(text(rd)?.to_owned()))
        }
        fn int(rd: &mut &[u8]) -> Result<i64, String> {
            rmp::decode::read_int(rd).map_err(|e| format!("{e:?}"))
        }
        let mut rd = data;
        let n = rmp::decode::read_map_len(&mut rd).map_err(|e| format!("{e:?}"))?;
        let mut ev = Event::default();
        for _ in 0..n {
            match text(&mut rd)? {
                "type" => ev.kind = text(&mut rd)?.to_owned(),
                "event_id" => ev.event_id = text(&mut rd)?.to_owned(),
                "account_id" => ev.account_id = text(&mut rd)?.to_owned(),
                "occurred_at" => {
                    text(&mut rd)?;
                }
                "__costtrace_occurred_ns__" => ev.occurred_ns = int(&mut rd)?,
                "amount" => ev.amount = int(&mut rd)?,
                "batch_id" => ev.batch_id = optional(&mut rd)?,
                "budget_id" => ev.budget_id = optional(&mut rd)?,
                "order_id" => ev.order_id = optional(&mut rd)?,
                "merchant_id" => ev.merchant_id = optional(&mut rd)?,
                "refund_id" => ev.refund_id = optional(&mut rd)?,
                "transfer_id" => ev.transfer_id = optional(&mut rd)?,
                "to_account_id" => ev.to_account_id = optional(&mut rd)?,
                other => return Err(format!("unknown field {other:?}")),
            }
        }
        if !rd.is_empty() {
            return Err("bytes after the event".to_owned());
        }
        Ok(ev)
    }
}

/// Where the fleet read an event: its source ("topic:partition") and offset, and its place in the
/// log order when the fleet's hold gave it one (`costtrace.model.order.OrderKey`).
pub struct Position<'a> {
    pub source: &'a str,
    pub offset: i64,
    pub order: Option<OrderMark>,
}

/// A short, unambiguous id of (account, event): the stem of its record ids.
pub fn event_key(account_id: &str, event_id: &str) -> String {
    // the length in characters, as Python's len() counts it
    let mut count = itoa::Buffer::new();
    let mut hasher = Blake2bVar::new(12).expect("12 is a valid blake2b size");
    hasher.update(count.format(account_id.chars().count()).as_bytes());
    hasher.update(b":");
    hasher.update(account_id.as_bytes());
    hasher.update(event_id.as_bytes());
    let mut digest = [0u8; 12];
    hasher
        .finalize_variable(&mut digest)
        .expect("the buffer has the digest's size");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(24);
    for b in digest {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

struct Rejected {
    reason: Reason,
    detail: Detail,
}

fn rejected(reason: Reason, text: &str, quoted: &str) -> Rejected {
    Rejected {
        reason,
        detail: Detail::of(text, quoted),
    }
}

/// One event's effect on one account: the records it makes, and the helpers that move coins.
struct Change<'s, T> {
    table: &'s mut T,
    state: &'s mut AccountState,
    key: String,
    seq: i64,
    event_id: String,
    records: Vec<Record>,
}

struct Refs<'a> {
    order_id: Option<&'a str>,
    refund_id: Option<&'a str>,
    transfer_id: Option<&'a str>,
    merchant_id: Option<&'a str>,
}

const NO_REFS: Refs<'static> = Refs {
    order_id: None,
    refund_id: None,
    transfer_id: None,
    merchant_id: None,
};

type Step<T> = Result<Result<(), Rejected>, <T as Table>::Error>;

impl<T: Table> Change<'_, T> {
    fn record(&mut self, kind: Kind, batch_id: &str, budget_id: &str, amount: i64, refs: &Refs) {
        let mut seq = itoa::Buffer::new();
        let seq = seq.format(self.seq);
        let mut record_id = String::with_capacity(self.key.len() + 1 + seq.len());
        record_id.push_str(&self.key);
        record_id.push('-');
        record_id.push_str(seq);
        self.records.push(Record {
            record_id,
            event_id: self.event_id.clone(),
            kind,
            account_id: self.state.account_id.clone(),
            batch_id: batch_id.to_owned(),
            budget_id: budget_id.to_owned(),
            amount,
            order_id: refs.order_id.map(str::to_owned),
            refund_id: refs.refund_id.map(str::to_owned),
            transfer_id: refs.transfer_id.map(str::to_owned),
            merchant_id: refs.merchant_id.map(str::to_owned),
        });
        self.seq += 1;
    }

    // -- batches

    fn add_batch(&mut self, batch_id: &str, budget_id: &str, issued_ns: i64, amount: i64) {
        let info = BatchInfo {
            budget_id: budget_id.to_owned(),
            issued_ns,
            amount,
        };
        self.state.batches.set(batch_id.to_owned(), info);
        let batch = OpenBatch {
            issued_ns,
            batch_id: batch_id.to_owned(),
            budget_id: budget_id.to_owned(),
            remaining: amount,
        };
        let open = &mut self.state.head.open;
        let i = open.partition_point(|b| *b <= batch);
        open.insert(i, batch);
    }

    /// Return coins to a batch, re-opening it at its FIFO place if it was spent.
    fn give_back(&mut self, batch_id: &str, amount: i64) -> Result<(), T::Error> {
        let info = self.state.batches.get(self.table, &self.state.prefix, batch_id)?;
        let info = info.unwrap_or_else(|| panic!("slice on unknown batch {batch_id:?}"));
        let open = &mut self.state.head.open;
        // budget "" sorts before any real budget id, so this lands on the batch itself
        let probe = OpenBatch {
            issued_ns: info.issued_ns,
            batch_id: batch_id.to_owned(),
            budget_id: String::new(),
            remaining: 0,
        };
        let i = open.partition_point(|b| *b < probe);
        if i < open.len() && open[i].batch_id == batch_id {
            open[i].remaining += amount;
        } else {
            let batch = OpenBatch {
                issued_ns: info.issued_ns,
                batch_id: batch_id.to_owned(),
                budget_id: info.budget_id,
                remaining: amount,
            };
            open.insert(i, batch);
        }
        Ok(())
    }

    /// Take `amount` from the front of FIFO; return (slices taken, shortfall).
    fn take(&mut self, amount: i64, kind: Kind, refs: &Refs) -> (Vec<OpenBatch>, i64) {
        let mut taken = Vec::new();
        let mut left = amount;
        let mut spent = 0;
        let mut open = std::mem::take(&mut self.state.head.open);
        for b in open.iter_mut() {
            let take = b.remaining.min(left);
            self.record(kind, &b.batch_id, &b.budget_id, -take, refs);
            taken.push(OpenBatch {
                issued_ns: b.issued_ns,
                batch_id: b.batch_id.clone(),
                budget_id: b.budget_id.clone(),
                remaining: take,
            });
            b.remaining -= take;
            left -= take;
            if b.remaining != 0 {
                break;
            }
            spent += 1;
            if left == 0 {
                break;
            }
        }
        open.drain(..spent);
        self.state.head.open = open;
        (taken, left)
    }

    // -- debt

    /// Rule 4: while there is debt and open stock, pay the oldest debt FIFO.
    fn pay_down(&mut self) -> Result<(), T::Error> {
        while !self.state.head.debts.is_empty() && !self.state.head.open.is_empty() {
            let (oid, debt_amount) = {
                let d = &self.state.head.debts[0];
                (d.order_id.clone(), d.amount)
            };
            let (batch_id, budget_id, remaining) = {
                let b = &self.state.head.open[0];
                (b.batch_id.clone(), b.budget_id.clone(), b.remaining)
            };
            let y = debt_amount.min(remaining);
            let order = self.state.orders.get(self.table, &self.state.prefix, &oid)?;
            let mut order = order.unwrap_or_else(|| panic!("debt of unknown order {oid:?}"));
            let mid = order.merchant_id.clone();
            let refs = Refs {
                order_id: Some(&oid),
                refund_id: None,
                transfer_id: None,
                merchant_id: mid.as_deref(),
            };
            self.record(Kind::Trueup, &batch_id, &budget_id, -y, &refs);
            self.record(Kind::Trueup, SUSPENSE, SUSPENSE, y, &refs);
            order.suspense -= y;
            order.trueups.push(Slice {
                batch_id,
                budget_id,
                amount: y,
            });
            self.state.orders.set(oid.clone(), order);
            let head = &mut self.state.head;
            head.debts[0].amount -= y;
            head.open[0].remaining -= y;
            if head.debts[0].amount == 0 {
                head.debts.remove(0);
            }
            if head.open[0].remaining == 0 {
                head.open.remove(0);
            }
        }
        Ok(())
    }

    fn settle_debt(&mut self, order_id: &str, amount: i64) {
        let debts = &mut self.state.head.debts;
        let i = debts
            .iter()
            .position(|d| d.order_id == order_id)
            .unwrap_or_else(|| panic!("order {order_id:?} has no debt slice"));
        debts[i].amount -= amount;
        if debts[i].amount == 0 {
            debts.remove(i);
        }
    }
}

fn required<'a>(field: &'a Option<String>, name: &str) -> &'a str {
    field
        .as_deref()
        .unwrap_or_else(|| panic!("a validated event has its {name}"))
}

// -- the rules, one per event type; each checks everything before it changes anything

fn issue<T: Table>(ch: &mut Change<T>, ev: &Event, kind: Kind) -> Step<T> {
    let batch_id = required(&ev.batch_id, "batch_id");
    if ch.state.batches.contains(ch.table, &ch.state.prefix, batch_id)? {
        return Ok(Err(rejected(
            Reason::DuplicateBatch,
            "batch {!r} is already on this account",
            batch_id,
        )));
    }
    let budget_id = required(&ev.budget_id, "budget_id");
    ch.add_batch(batch_id, budget_id, ev.occurred_ns, ev.amount);
    ch.record(kind, batch_id, budget_id, ev.amount, &NO_REFS);
    Ok(Ok(()))
}

fn consumed<T: Table>(ch: &mut Change<T>, ev: &Event) -> Step<T> {
    let oid = required(&ev.order_id, "order_id");
    let mid = ev.merchant_id.as_deref();
    if ch.state.orders.contains(ch.table, &ch.state.prefix, oid)? {
        return Ok(Err(rejected(
            Reason::DuplicateOrder,
            "order {!r} was already consumed",
            oid,
        )));
    }
    let refs = Refs {
        order_id: Some(oid),
        refund_id: None,
        transfer_id: None,
        merchant_id: mid,
    };
    let (taken, shortfall) = ch.take(ev.amount, Kind::Consume, &refs);
    let mut order = Order {
        amount: ev.amount,
        merchant_id: ev.merchant_id.clone(),
        refunded: 0,
        suspense: 0,
        consumes: taken
            .into_iter()
            .map(|b| Slice {
                batch_id: b.batch_id,
                budget_id: b.budget_id,
                amount: b.remaining,
            })
            .collect(),
        trueups: Vec::new(),
        archived: false,
    };
    if shortfall != 0 {
        ch.record(Kind::Consume, SUSPENSE, SUSPENSE, -shortfall, &refs);
        order.suspense = shortfall;
        ch.state.head.debts.push(Debt {
            order_id: oid.to_owned(),
            amount: shortfall,
        });
    }
    ch.state.orders.set(oid.to_owned(), order);
    Ok(Ok(()))
}

fn refunded<T: Table>(ch: &mut Change<T>, ev: &Event) -> Step<T> {
    let rid = required(&ev.refund_id, "refund_id");
    let oid = required(&ev.order_id, "order_id");
    if ch.state.refunds.contains(ch.table, &ch.state.prefix, rid)? {
        return Ok(Err(rejected(
            Reason::DuplicateRefund,
            "refund {!r} was already applied",
            rid,
        )));
    }
    let Some(mut order) = ch.state.orders.get(ch.table, &ch.state.prefix, oid)? else {
        return Ok(Err(rejected(
            Reason::UnknownOrder,
            "order {!r} has not been consumed on this account",
            oid,
        )));
    };
    if order.archived {
        return Ok(Err(rejected(
            Reason::OrderArchived,
            "order {!r} is archived: past its refund window",
            oid,
        )));
    }
    let unrefunded = order.amount - order.refunded;
    if ev.amount > unrefunded {
        let text = format!(
            "refund of {} exceeds the {} left unrefunded of order {{!r}}",
            ev.amount, unrefunded
        );
        return Ok(Err(rejected(Reason::RefundExceedsOrder, &text, oid)));
    }
    let mid = order.merchant_id.clone();
    let refs = Refs {
        order_id: Some(oid),
        refund_id: Some(rid),
        transfer_id: None,
        merchant_id: mid.as_deref(),
    };
    let mut left = ev.amount;
    // last in, first out: SUSPENSE, then trueup slices, then consume slices
    if order.suspense != 0 {
        let s = left.min(order.suspense);
        ch.record(Kind::Refund, SUSPENSE, SUSPENSE, s, &refs);
        order.suspense -= s;
        ch.settle_debt(oid, s);
        left -= s;
    }
    for stack in [&mut order.trueups, &mut order.consumes] {
        while left != 0 {
            let Some(sl) = stack.last_mut() else { break };
            let t = left.min(sl.amount);
            let (batch_id, budget_id) = (sl.batch_id.clone(), sl.budget_id.clone());
            sl.amount -= t;
            if sl.amount == 0 {
                stack.pop();
            }
            ch.record(Kind::Refund, &batch_id, &budget_id, t, &refs);
            ch.give_back(&batch_id, t)?;
            left -= t;
        }
    }
    assert_eq!(left, 0, "an order's slices always cover what is left unrefunded");
    order.refunded += ev.amount;
    ch.state.orders.set(oid.to_owned(), order);
    ch.state.refunds.set(rid.to_owned(), oid.to_owned());
    Ok(Ok(()))
}

fn transferred<T: Table>(ch: &mut Change<T>, ev: &Event, credit: &mut Option<Credit>) -> Step<T> {
    let tid = required(&ev.transfer_id, "transfer_id");
    let to = required(&ev.to_account_id, "to_account_id");
    if to == ev.account_id {
        return Ok(Err(Rejected {
            reason: Reason::SelfTransfer,
            detail: Detail::plain("to_account_id equals account_id".to_owned()),
        }));
    }
    if ch.state.transfers.contains(ch.table, &ch.state.prefix, tid)? {
        return Ok(Err(rejected(
            Reason::DuplicateTransfer,
            "transfer {!r} was already applied",
            tid,
        )));
    }
    let stock = ch.state.head.stock();
    if stock < ev.amount as i128 {
        let text = format!("transfer of {} exceeds the open stock of {}", ev.amount, stock);
        return Ok(Err(Rejected {
            reason: Reason::InsufficientStock,
            detail: Detail::plain(text),
        }));
    }
    let refs = Refs {
        order_id: None,
        refund_id: None,
        transfer_id: Some(tid),
        merchant_id: None,
    };
    let (taken, _) = ch.take(ev.amount, Kind::TransferOut, &refs);
    ch.state.transfers.set(tid.to_owned(), ev.event_id.clone());
    let slices = taken
        .into_iter()
        .map(|b| CreditSlice {
            source_batch_id: b.batch_id,
            budget_id: b.budget_id,
            issued_ns: b.issued_ns,
            amount: b.remaining,
        })
        .collect();
    *credit = Some(Credit {
        origin_account_id: ev.account_id.clone(),
        event_id: ev.event_id.clone(),
        transfer_id: tid.to_owned(),
        to_account_id: to.to_owned(),
        seq: ch.seq,
        slices,
    });
    Ok(Ok(()))
}

// -- entry points

/// Per source, the offset below which the fleet never reads again (its committed offset).
pub trait Settled<E> {
    fn get(&mut self, source: &str) -> Result<Option<i64>, E>;
}

/// The outputs a redelivered event gave when it was first applied.
fn recall<T: Table>(
    store: &mut Store<T>,
    mut state: AccountState,
    position: &Position,
) -> Result<Outcome, T::Error> {
    let slot = state
        .head
        .kept
        .iter()
        .find(|k| k.offset == position.offset && k.source == position.source);
    let stored = match slot {
        Some(k) => {
            let slot = k.slot.to_string();
            state.outputs.get(&mut store.table, &state.prefix, &slot)?
        }
        None => None,
    };
    let mut outcome = Outcome::plain(Status::Redelivered, &state.account_id);
    if let Some(stored) = stored {
        outcome.records = stored.records;
        outcome.credits = stored.credits;
        outcome.rejection = stored.rejection;
        outcome.step = stored.step;
    }
    store.release(state);
    Ok(outcome)
}

#[allow(clippy::large_enum_variant)] // made and taken apart once per event: boxing would only add an allocation
enum Loaded {
    Fresh(AccountState),
    /// read before at this position: what it gave then
    Read(Outcome),
}

/// The account's state, unless the fleet read this position before (then its first outputs).
fn load<T: Table>(
    store: &mut Store<T>,
    account_id: &str,
    position: Option<&Position>,
) -> Result<Loaded, T::Error> {
    let state = store.account(account_id)?;
    match position {
        Some(p) if state.head.marks.get(p.source).unwrap_or(-1) >= p.offset => {
            Ok(Loaded::Read(recall(store, state, p)?))
        }
        _ => Ok(Loaded::Fresh(state)),
    }
}

/// In the fleet, remember the position and what it gave; then hand the changes to the store.
///
/// Outputs of settled positions are never asked for again: their slots are
/// dropped from the header, and the next event's outputs reuse the lowest
/// free slot, so no entry is ever deleted (no tombstones on the changelog).
fn finish<T: Table>(
    store: &mut Store<T>,
    mut state: AccountState,
    mut outcome: Outcome,
    position: Option<&Position>,
    mut changed: bool,
    settled: Option<&mut dyn Settled<T::Error>>,
) -> Result<Outcome, T::Error> {
    if let Some(position) = position {
        let head = &mut state.head;
        head.marks.set(position.source, position.offset);
        if let Some(settled) = settled {
            if !head.kept.is_empty() {
                let mut kept = Vec::with_capacity(head.kept.len());
                // asked once per source (a call into Python each): an account's kept outputs share a few
                let mut floors: Vec<(String, i64)> = Vec::new();
                for k in std::mem::take(&mut head.kept) {
                    let floor = match floors.iter().find(|(source, _)| *source == k.source) {
                        Some((_, floor)) => *floor,
                        None => {
                            let floor = settled.get(&k.source)?.unwrap_or(0);
                            floors.push((k.source.clone(), floor));
                            floor
                        }
                    };
                    if k.offset >= floor {
                        kept.push(k);
                    }
                }
                head.kept = kept;
            }
        }
        if !outcome.records.is_empty() || !outcome.credits.is_empty() || outcome.rejection.is_some() {
            let mut slot = 0;
            while head.kept.iter().any(|k| k.slot == slot) {
                slot += 1;
            }
            head.kept.push(Kept {
                source: position.source.to_owned(),
                offset: position.offset,
                slot,
            });
            state.outputs.set(slot.to_string(), outcome.outputs());
        }
        changed = true;
    }
    if let (true, Some(order)) = (changed, position.and_then(|p| p.order)) {
        // an account's largest place applied, kept with its state: an event before it is late
        // whoever applies it, after any change of owner
        let head = &mut state.head;
        match head.last {
            Some(last) if order < last => outcome.late = true,
            _ => head.last = Some(order),
        }
    }
    if changed {
        store.commit(state)?;
    } else {
        store.release(state);
    }
    Ok(outcome)
}

fn reject<T: Table>(
    store: &mut Store<T>,
    state: AccountState,
    event_id: &str,
    why: Rejected,
    position: Option<&Position>,
    settled: Option<&mut dyn Settled<T::Error>>,
) -> Result<Outcome, T::Error> {
    let mut outcome = Outcome::plain(Status::Rejected, &state.account_id);
    outcome.rejection = Some(Rejection {
        event_id: Some(event_id.to_owned()),
        account_id: Some(state.account_id.clone()),
        reason: why.reason.as_str().to_owned(),
    });
    outcome.detail = Some(why.detail);
    finish(store, state, outcome, position, false, settled)
}

/// Apply one valid input event to its account; `fingerprint` is its msgpack form (its exact-repeat identity).
pub fn apply_event<T: Table>(
    store: &mut Store<T>,
    ev: &Event,
    fingerprint: &[u8],
    position: Option<&Position>,
    settled: Option<&mut dyn Settled<T::Error>>,
) -> Result<Outcome, T::Error> {
    let mut state = match load(store, &ev.account_id, position)? {
        Loaded::Fresh(state) => state,
        Loaded::Read(outcome) => return Ok(outcome),
    };
    if let Some(prior) = state.events.get(&mut store.table, &state.prefix, &ev.event_id)? {
        if prior.0 == fingerprint {
            let repeat = Outcome::plain(Status::Repeat, &ev.account_id);
            return finish(store, state, repeat, position, false, settled);
        }
        let why = rejected(
            Reason::ConflictingDuplicate,
            "event {!r} was applied before with a different payload",
            &ev.event_id,
        );
        return reject(store, state, &ev.event_id, why, position, settled);
    }
    let mut credit = None;
    let (verdict, records, seq) = {
        let mut ch = Change {
            table: &mut store.table,
            state: &mut state,
            key: event_key(&ev.account_id, &ev.event_id),
            seq: 0,
            event_id: ev.event_id.clone(),
            records: Vec::new(),
        };
        let verdict = match ev.kind.as_str() {
            "issued" => issue(&mut ch, ev, Kind::Issue)?,
            "opened" => issue(&mut ch, ev, Kind::Open)?,
            "consumed" => consumed(&mut ch, ev)?,
            "refunded" => refunded(&mut ch, ev)?,
            "transferred" => transferred(&mut ch, ev, &mut credit)?,
            other => panic!("not an event type: {other:?}"),
        };
        if verdict.is_ok() {
            ch.pay_down()?;
        }
        (verdict, std::mem::take(&mut ch.records), ch.seq)
    };
    if let Err(why) = verdict {
        return reject(store, state, &ev.event_id, why, position, settled);
    }
    // a sender with stock has no debt, so pay_down added nothing after the credit's seq
    assert!(credit.as_ref().is_none_or(|c| c.seq == seq));
    state
        .events
        .set(ev.event_id.clone(), EventBytes(fingerprint.to_vec()));
    state.head.steps += 1;
    let mut outcome = Outcome::plain(Status::Applied, &ev.account_id);
    outcome.records = records;
    outcome.credits = credit.into_iter().collect();
    outcome.step = state.head.steps;
    finish(store, state, outcome, position, true, settled)
}

/// Drop the slices of archived orders (the fleet's `costtrace archive`); records nothing.
///
/// An order with debt still on SUSPENSE is kept whole: its trueups are yet to
/// come. Archiving an order twice changes nothing.
pub fn apply_archive<T: Table>(
    store: &mut Store<T>,
    account_id: &str,
    order_ids: &[String],
    position: Option<&Position>,
    settled: Option<&mut dyn Settled<T::Error>>,
) -> Result<Outcome, T::Error> {
    let mut state = match load(store, account_id, position)? {
        Loaded::Fresh(state) => state,
        Loaded::Read(outcome) => return Ok(outcome),
    };
    let mut changed = false;
    for oid in order_ids {
        let Some(order) = state.orders.get(&mut store.table, &state.prefix, oid)? else {
            continue;
        };
        if order.archived || order.suspense != 0 {
            continue;
        }
        let archived = Order {
            amount: order.amount,
            merchant_id: order.merchant_id,
            refunded: order.refunded,
            suspense: 0,
            consumes: Vec::new(),
            trueups: Vec::new(),
            archived: true,
        };
        state.orders.set(oid.clone(), archived);
        changed = true;
    }
    let done = Outcome::plain(Status::Applied, account_id);
    finish(store, state, done, position, changed, settled)
}

/// Apply the receiving half of a transfer to `credit.to_account_id` (rule 6).
///
/// Each slice becomes a batch `{sender}/{transfer_id}/{source batch_id}` with
/// the source's budget and issue time. Should the receiver already hold a
/// batch of that id (only possible if a producer issued one of that form),
/// the first free `#2`, `#3`, ... suffix is used, so the coins are never lost.
pub fn apply_credit<T: Table>(
    store: &mut Store<T>,
    credit: &Credit,
    position: Option<&Position>,
    settled: Option<&mut dyn Settled<T::Error>>,
) -> Result<Outcome, T::Error> {
    let account_id = &credit.to_account_id;
    let mut state = match load(store, account_id, position)? {
        Loaded::Fresh(state) => state,
        Loaded::Read(outcome) => return Ok(outcome),
    };
    let key = event_key(&credit.origin_account_id, &credit.event_id);
    if state.credits.contains(&mut store.table, &state.prefix, &key)? {
        let repeat = Outcome::plain(Status::Repeat, account_id);
        return finish(store, state, repeat, position, false, settled);
    }
    let tid = &credit.transfer_id;
    let records = {
        let mut ch = Change {
            table: &mut store.table,
            state: &mut state,
            key: key.clone(),
            seq: credit.seq,
            event_id: credit.event_id.clone(),
            records: Vec::new(),
        };
        let refs = Refs {
            order_id: None,
            refund_id: None,
            transfer_id: Some(tid),
            merchant_id: None,
        };
        for sl in &credit.slices {
            let child = format!("{}/{}/{}", credit.origin_account_id, tid, sl.source_batch_id);
            let mut batch_id = child.clone();
            let mut n = 2;
            while ch.state.batches.contains(ch.table, &ch.state.prefix, &batch_id)? {
                batch_id = format!("{child}#{n}");
                n += 1;
            }
            ch.add_batch(&batch_id, &sl.budget_id, sl.issued_ns, sl.amount);
            ch.record(Kind::TransferIn, &batch_id, &sl.budget_id, sl.amount, &refs);
        }
        ch.state.credits.set(key.clone(), tid.clone());
        ch.pay_down()?;
        std::mem::take(&mut ch.records)
    };
    state.head.steps += 1;
    let mut outcome = Outcome::plain(Status::Applied, account_id);
    outcome.records = records;
    outcome.step = state.head.steps;
    finish(store, state, outcome, position, true, settled)
}

#[cfg(test)]
mod tests {
    //! The rules by hand, natively (tests/model/test_rules.py works every rule through Python too).
    use super::*;
    use crate::store::{MemoryTable, StateError};

    type Memory = Store<MemoryTable<StateError>>;

    fn store() -> Memory {
        Store::new(MemoryTable::default())
    }

    fn event(kind: &str, id: &str, account: &str, at: i64, amount: i64) -> Event {
        Event {
            kind: kind.to_owned(),
            event_id: id.to_owned(),
            account_id: account.to_owned(),
            occurred_ns: at,
            amount,
            ..Event::default()
        }
    }

    fn issued(id: &str, account: &str, at: i64, batch: &str, budget: &str, amount: i64) -> Event {
        Event {
            batch_id: Some(batch.to_owned()),
            budget_id: Some(budget.to_owned()),
            ..event("issued", id, account, at, amount)
        }
    }

    fn consumed(id: &str, account: &str, at: i64, order: &str, amount: i64) -> Event {
        Event {
            order_id: Some(order.to_owned()),
            ..event("consumed", id, account, at, amount)
        }
    }

    fn refunded(id: &str, account: &str, at: i64, refund: &str, order: &str, amount: i64) -> Event {
        Event {
            refund_id: Some(refund.to_owned()),
            order_id: Some(order.to_owned()),
            ..event("refunded", id, account, at, amount)
        }
    }

    fn transferred(id: &str, account: &str, at: i64, transfer: &str, to: &str, amount: i64) -> Event {
        Event {
            transfer_id: Some(transfer.to_owned()),
            to_account_id: Some(to.to_owned()),
            ..event("transferred", id, account, at, amount)
        }
    }

    /// Apply with a fingerprint of the whole event, as the msgpack Python sends would be.
    fn apply(s: &mut Memory, ev: &Event) -> Outcome {
        let fingerprint = format!("{ev:?}");
        apply_event(s, ev, fingerprint.as_bytes(), None, None).expect("a memory store never fails")
    }

    /// (kind, batch, amount) of each record.
    fn moves(o: &Outcome) -> Vec<(&'static str, String, i64)> {
        o.records
            .iter()
            .map(|r| (r.kind.as_str(), r.batch_id.clone(), r.amount))
            .collect()
    }

    fn mv(kind: &'static str, batch: &str, amount: i64) -> (&'static str, String, i64) {
        (kind, batch.to_owned(), amount)
    }

    #[test]
    fn consumption_takes_the_oldest_batch_first_by_issue_time_then_id() {
        let mut s = store();
        apply(&mut s, &issued("e1", "a", 20, "late", "x", 5));
        apply(&mut s, &issued("e2", "a", 10, "b-2", "y", 5));
        apply(&mut s, &issued("e3", "a", 10, "b-1", "z", 5));
        let o = apply(&mut s, &consumed("e4", "a", 30, "o1", 12));
        assert_eq!(o.status, Status::Applied);
        assert_eq!(
            moves(&o),
            [
                mv("consume", "b-1", -5),
                mv("consume", "b-2", -5),
                mv("consume", "late", -2)
            ]
        );
        assert!(o.records.iter().all(|r| r.order_id.as_deref() == Some("o1")));
    }

    #[test]
    fn a_shortfall_is_debt_on_suspense_and_the_next_batch_pays_it() {
        let mut s = store();
        apply(&mut s, &issued("e1", "a", 1, "b1", "x", 3));
        let o = apply(&mut s, &consumed("e2", "a", 2, "o1", 5));
        assert_eq!(moves(&o), [mv("consume", "b1", -3), mv("consume", SUSPENSE, -2)]);
        let o = apply(&mut s, &issued("e3", "a", 3, "b2", "y", 10));
        assert_eq!(
            moves(&o),
            [
                mv("issue", "b2", 10),
                mv("trueup", "b2", -2),
                mv("trueup", SUSPENSE, 2)
            ]
        );
        assert!(o.records[1..].iter().all(|r| r.order_id.as_deref() == Some("o1")));
    }

    #[test]
    fn a_refund_reverses_the_orders_slices_last_in_first_out() {
        let mut s = store();
        apply(&mut s, &issued("e1", "a", 1, "b1", "x", 3));
        apply(&mut s, &issued("e2", "a", 2, "b2", "y", 3));
        apply(&mut s, &consumed("e3", "a", 3, "o1", 5));
        let o = apply(&mut s, &refunded("e4", "a", 4, "r1", "o1", 4));
        assert_eq!(moves(&o), [mv("refund", "b2", 2), mv("refund", "b1", 2)]);
        let o = apply(&mut s, &refunded("e5", "a", 5, "r2", "o1", 2));
        assert_eq!(o.status, Status::Rejected);
        assert_eq!(
            o.rejection.expect("rejected").reason,
            Reason::RefundExceedsOrder.as_str()
        );
    }

    #[test]
    fn an_exact_repeat_gives_nothing_and_a_changed_one_is_rejected() {
        let mut s = store();
        let first = issued("e1", "a", 1, "b1", "x", 3);
        assert_eq!(apply(&mut s, &first).status, Status::Applied);
        let again = apply(&mut s, &first);
        assert_eq!((again.status, again.records.len()), (Status::Repeat, 0));
        let changed = apply(&mut s, &issued("e1", "a", 1, "b1", "x", 4));
        assert_eq!(changed.status, Status::Rejected);
        let reason = changed.rejection.expect("rejected").reason;
        assert_eq!(reason, Reason::ConflictingDuplicate.as_str());
    }

    #[test]
    fn a_transfer_carries_its_batches_budgets_and_times_to_the_receiver() {
        let mut s = store();
        apply(&mut s, &issued("e1", "a", 7, "b1", "acme", 3));
        apply(&mut s, &issued("e2", "a", 8, "b2", "beta", 3));
        let o = apply(&mut s, &transferred("e3", "a", 9, "t1", "b", 4));
        assert_eq!(
            moves(&o),
            [mv("transfer_out", "b1", -3), mv("transfer_out", "b2", -1)]
        );
        let [credit] = &o.credits[..] else {
            panic!("one credit")
        };
        let received = apply_credit(&mut s, credit, None, None).expect("memory");
        assert_eq!(
            moves(&received),
            [mv("transfer_in", "a/t1/b1", 3), mv("transfer_in", "a/t1/b2", 1)]
        );
        let budgets: Vec<&str> = received.records.iter().map(|r| r.budget_id.as_str()).collect();
        assert_eq!(budgets, ["acme", "beta"]);
        let spent = apply(&mut s, &consumed("e4", "b", 10, "o1", 4));
        assert_eq!(
            moves(&spent),
            [mv("consume", "a/t1/b1", -3), mv("consume", "a/t1/b2", -1)]
        );
    }

    #[test]
    fn transfers_to_oneself_or_beyond_the_stock_are_rejected_and_change_nothing() {
        let mut s = store();
        apply(&mut s, &issued("e1", "a", 1, "b1", "x", 3));
        let own = apply(&mut s, &transferred("e2", "a", 2, "t1", "a", 1));
        assert_eq!(
            own.rejection.expect("rejected").reason,
            Reason::SelfTransfer.as_str()
        );
        let short = apply(&mut s, &transferred("e3", "a", 3, "t2", "b", 4));
        assert_eq!(
            short.rejection.expect("rejected").reason,
            Reason::InsufficientStock.as_str()
        );
        let o = apply(&mut s, &consumed("e4", "a", 4, "o1", 3));
        assert_eq!(moves(&o), [mv("consume", "b1", -3)]);
    }

    #[test]
    fn a_refund_of_an_unknown_order_is_rejected() {
        let mut s = store();
        let o = apply(&mut s, &refunded("e1", "a", 1, "r1", "nope", 1));
        assert_eq!(
            o.rejection.expect("rejected").reason,
            Reason::UnknownOrder.as_str()
        );
        assert!(o.records.is_empty());
    }
}
