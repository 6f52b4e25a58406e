//! `costtrace._native`: the rules (model.rs) and their state (store.rs, state.rs),
//! reached from Python through `costtrace.model.allocation` and `costtrace.model.state`.
//!
//! Across the boundary everything is bytes in the project's own wire forms:
//! events come in as msgpack of their validated `costtrace.contract.events` Struct,
//! credits as the credits topic's msgpack, state as the table's values;
//! records go out as the contract's JSON.

/// The model makes and drops many small strings per event, which mimalloc serves faster than glibc (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod instant;
mod keys;
mod model;
mod partition;
mod state;
mod store;
mod vocabulary;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use model::{Outcome, Position, Settled, Status};
use state::{Credit, OrderMark, Rejection};
use store::{MemoryTable, StateError, Store, Table, Write};

impl From<StateError> for PyErr {
    fn from(e: StateError) -> PyErr {
        PyValueError::new_err(e.0)
    }
}

/// The fleet's table: a Python object with `get(key)` and `put_all(writes)`, and its `together(size, n)`.
struct PyTable {
    table: Py<PyAny>,
    together: Py<PyAny>,
}

impl Table for PyTable {
    type Error = PyErr;

    fn get(&mut self, key: &[u8]) -> PyResult<Option<Vec<u8>>> {
        Python::attach(|py| {
            let value = self
                .table
                .bind(py)
                .call_method1("get", (PyBytes::new(py, key),))?;
            if value.is_none() {
                return Ok(None);
            }
            Ok(Some(value.cast::<PyBytes>()?.as_bytes().to_vec()))
        })
    }

    fn put_all(&mut self, writes: Vec<Write>) -> PyResult<()> {
        Python::attach(|py| {
            let items = writes
                .iter()
                .map(|(k, v)| PyTuple::new(py, [PyBytes::new(py, k), PyBytes::new(py, v)]))
                .collect::<PyResult<Vec<_>>>()?;
            self.table
                .bind(py)
                .call_method1("put_all", (PyList::new(py, items)?,))?;
            Ok(())
        })
    }

    fn together(&mut self, size: usize, records: usize) -> PyResult<bool> {
        Python::attach(|py| self.together.bind(py).call1((size, records))?.extract())
    }
}

/// The fleet's committed offsets: a Python object with `get(source) -> int | None`.
struct PySettled<'py>(Bound<'py, PyAny>);

impl Settled<PyErr> for PySettled<'_> {
    fn get(&mut self, source: &str) -> PyResult<Option<i64>> {
        self.0.call_method1("get", (source,))?.extract()
    }
}

enum Backend {
    Memory(Store<MemoryTable<PyErr>>),
    Python(Store<PyTable>),
}

/// A store and the rules over it; `costtrace.model.state.MemoryStore` and `costtrace.fleet.state.TableStore` hold one.
#[pyclass(module = "costtrace._native", unsendable)]
struct NativeStore {
    backend: Backend,
}

type Where = Option<(String, i64)>;

fn at(position: &Where, order: Option<OrderMark>) -> Option<Position<'_>> {
    position.as_ref().map(|(source, offset)| Position {
        source,
        offset: *offset,
        order,
    })
}

/// Run the rules; a broken invariant (a panic) comes out as a RuntimeError, which the allocator dead-letters.
fn guarded<R>(f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the model panicked".to_owned());
            Err(PyRuntimeError::new_err(format!("broken model invariant: {msg}")))
        }
    }
}

macro_rules! on_backend {
    ($self:ident, $store:ident, $settled:ident, $body:expr) => {{
        let mut py_settled = $settled.map(PySettled);
        let $settled = py_settled.as_mut().map(|s| s as &mut dyn Settled<PyErr>);
        guarded(|| match &mut $self.backend {
            Backend::Memory($store) => $body,
            Backend::Python($store) => $body,
        })
    }};
}

fn status_name(py: Python<'_>, status: Status) -> Py<PyString> {
    PyString::intern(py, status.as_str()).unbind()
}

/// A rejection as Python sees it (`costtrace.contract.records.rejection` makes the record).
#[pyclass(frozen, get_all, module = "costtrace._native")]
struct NativeRejection {
    event_id: Option<String>,
    account_id: Option<String>,
    reason: Py<PyString>,
}

fn rejection_of(py: Python<'_>, rejection: Option<&Rejection>) -> PyResult<Option<Py<NativeRejection>>> {
    rejection
        .map(|r| {
            Py::new(
                py,
                NativeRejection {
                    event_id: r.event_id.clone(),
                    account_id: r.account_id.clone(),
                    reason: PyString::intern(py, &r.reason).unbind(),
                },
            )
        })
        .transpose()
}

/// What applying one event (or credit, or archive) gave, as `costtrace.model.allocation.Outcome` reads it.
#[pyclass(frozen, get_all, module = "costtrace._native")]
struct NativeOutcome {
    /// a `STATUSES` value
    status: Py<PyString>,
    account_id: String,
    /// the records, each the contract's JSON
    record_lines: Py<PyList>,
    /// the credits, each the credits topic's msgpack
    credit_blobs: Py<PyList>,
    rejection: Option<Py<NativeRejection>>,
    /// why, for a rejection
    detail: Option<Py<PyString>>,
    /// the account's step that made the records: (step, seq) is replay's order
    step: i64,
    /// each record's kind, in order
    record_kinds: Py<PyTuple>,
    /// applied after an event of its account later in the log order
    late: bool,
}

/// Replay's step: the records of an event and its credits as JSON lines, each ending in a newline.
#[pyclass(frozen, get_all, module = "costtrace._native")]
struct ReplayStep {
    status: Py<PyString>,
    lines: Py<PyBytes>,
    count: usize,
    rejection: Option<Py<NativeRejection>>,
}

/// Records as JSON lines, each ending in a newline (replay's output).
fn write_lines(records: &[state::Record], out: &mut Vec<u8>) {
    for r in records {
        r.write_json(out);
        out.push(b'\n');
    }
}

fn outcome_of(py: Python<'_>, o: Outcome) -> PyResult<Py<NativeOutcome>> {
    let kinds = PyTuple::new(
        py,
        o.records.iter().map(|r| PyString::intern(py, r.kind.as_str())),
    )?;
    let records = o
        .records
        .iter()
        .map(|r| {
            let mut line = Vec::with_capacity(256);
            r.write_json(&mut line);
            PyBytes::new(py, &line)
        })
        .collect::<Vec<_>>();
    let credits = o
        .credits
        .iter()
        .map(|c| PyBytes::new(py, &store::encode(c)))
        .collect::<Vec<_>>();
    let rejection = rejection_of(py, o.rejection.as_ref())?;
    let detail = match &o.detail {
        None => None,
        Some(d) => {
            let text = match &d.quoted {
                None => d.text.clone(),
                Some(q) => d.text.replace("{!r}", &PyString::new(py, q).repr()?.to_string()),
            };
            Some(PyString::new(py, &text).unbind())
        }
    };
    Py::new(
        py,
        NativeOutcome {
            status: status_name(py, o.status),
            account_id: o.account_id,
            record_lines: PyList::new(py, records)?.unbind(),
            credit_blobs: PyList::new(py, credits)?.unbind(),
            rejection,
            detail,
            step: o.step,
            record_kinds: kinds.unbind(),
            late: o.late,
        },
    )
}

#[pymethods]
impl NativeStore {
    /// Replay's store: state in memory.
    #[staticmethod]
    fn memory() -> Self {
        NativeStore {
            backend: Backend::Memory(Store::new(MemoryTable::default())),
        }
    }

    /// The fleet's store: state in `table` (`get(key)`, `put_all(writes)`); `together(size, n)` as in costtrace/fleet/state.py.
    #[staticmethod]
    fn table(table: Py<PyAny>, together: Py<PyAny>) -> Self {
        NativeStore {
            backend: Backend::Python(Store::new(PyTable { table, together })),
        }
    }

    #[pyo3(signature = (event, position=None, settled=None, order=None))]
    fn apply_event<'py>(
        &mut self,
        py: Python<'py>,
        event: &[u8],
        position: Where,
        settled: Option<Bound<'py, PyAny>>,
        order: Option<OrderMark>,
    ) -> PyResult<Py<NativeOutcome>> {
        let ev = model::Event::from_msgpack(event)
            .map_err(|e| PyValueError::new_err(format!("not an event: {e}")))?;
        let pos = at(&position, order);
        let outcome = on_backend!(
            self,
            store,
            settled,
            Ok(model::apply_event(store, &ev, event, pos.as_ref(), settled)?)
        )?;
        outcome_of(py, outcome)
    }

    #[pyo3(signature = (credit, position=None, settled=None, order=None))]
    fn apply_credit<'py>(
        &mut self,
        py: Python<'py>,
        credit: &[u8],
        position: Where,
        settled: Option<Bound<'py, PyAny>>,
        order: Option<OrderMark>,
    ) -> PyResult<Py<NativeOutcome>> {
        let credit: Credit =
            rmp_serde::from_slice(credit).map_err(|e| PyValueError::new_err(format!("not a credit: {e}")))?;
        let pos = at(&position, order);
        let outcome = on_backend!(
            self,
            store,
            settled,
            Ok(model::apply_credit(store, &credit, pos.as_ref(), settled)?)
        )?;
        outcome_of(py, outcome)
    }

    #[pyo3(signature = (account_id, order_ids, position=None, settled=None, order=None))]
    fn apply_archive<'py>(
        &mut self,
        py: Python<'py>,
        account_id: &str,
        order_ids: Vec<String>,
        position: Where,
        settled: Option<Bound<'py, PyAny>>,
        order: Option<OrderMark>,
    ) -> PyResult<Py<NativeOutcome>> {
        let pos = at(&position, order);
        let outcome = on_backend!(
            self,
            store,
            settled,
            Ok(model::apply_archive(
                store,
                account_id,
                &order_ids,
                pos.as_ref(),
                settled
            )?)
        )?;
        outcome_of(py, outcome)
    }

    /// Replay's step: apply one event and, at once, its credits; the records as JSON lines.
    fn replay_event(&mut self, py: Python<'_>, event: &[u8]) -> PyResult<Py<ReplayStep>> {
        let ev = model::Event::from_msgpack(event)
            .map_err(|e| PyValueError::new_err(format!("not an event: {e}")))?;
        let Backend::Memory(store) = &mut self.backend else {
            return Err(PyValueError::new_err("replay runs on a memory store"));
        };
        let (status, lines, n, rejection) = guarded(|| {
            let o = model::apply_event(store, &ev, event, None, None)?;
            let mut lines = Vec::with_capacity(512);
            let mut n = o.records.len();
            write_lines(&o.records, &mut lines);
            for c in &o.credits {
                let received = model::apply_credit(store, c, None, None)?;
                n += received.records.len();
                write_lines(&received.records, &mut lines);
            }
            Ok((o.status, lines, n, o.rejection))
        })?;
        let rejection = rejection_of(py, rejection.as_ref())?;
        Py::new(
            py,
            ReplayStep {
                status: status_name(py, status),
                lines: PyBytes::new(py, &lines).unbind(),
                count: n,
                rejection,
            },
        )
    }

    /// (accounts with state, debt outstanding on them) of a memory store: replay's summary.
    fn totals(&self) -> PyResult<(usize, i128)> {
        let Backend::Memory(s) = &self.backend else {
            return Err(PyValueError::new_err("only a memory store sums its accounts"));
        };
        let accounts = &s.table.accounts;
        let debt = accounts
            .values()
            .flat_map(|h| &h.head.debts)
            .map(|d| d.amount as i128)
            .sum();
        Ok((accounts.len(), debt))
    }

    /// (account_id, header value) of every account of a memory store.
    fn heads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let Backend::Memory(s) = &self.backend else {
            return Err(PyValueError::new_err("only a memory store lists its accounts"));
        };
        let items = s
            .table
            .accounts
            .iter()
            .map(|(a, h)| (a.as_str(), PyBytes::new(py, &h.header())).into_pyobject(py))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// After a rebalance, recovery may have restored another worker's cut-off event.
    fn forget_repairs(&mut self) {
        match &mut self.backend {
            Backend::Memory(s) => s.forget_repairs(),
            Backend::Python(s) => s.forget_repairs(),
        }
    }

    /// Accounts whose first header this store wrote.
    #[getter]
    fn created(&self) -> u64 {
        match &self.backend {
            Backend::Memory(s) => s.created,
            Backend::Python(s) => s.created,
        }
    }

    /// Every (key, value) of a memory store, or of one account in it, as the fleet's table would hold them.
    #[pyo3(signature = (account_id=None))]
    fn items<'py>(&self, py: Python<'py>, account_id: Option<&str>) -> PyResult<Bound<'py, PyList>> {
        let Backend::Memory(s) = &self.backend else {
            return Err(PyValueError::new_err("only a memory store lists its items"));
        };
        let items = s
            .table
            .items(account_id)
            .iter()
            .map(|(k, v)| PyTuple::new(py, [PyBytes::new(py, k), PyBytes::new(py, v)]))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }
}

/// A short, unambiguous id of (account, event): the stem of its record ids.
#[pyfunction]
fn event_key(account_id: &str, event_id: &str) -> String {
    model::event_key(account_id, event_id)
}

/// The partition Kafka's default (murmur2) partitioner gives a record keyed `key`, of `partitions`.
#[pyfunction]
fn partition_for(key: &[u8], partitions: u32) -> PyResult<u32> {
    if partitions == 0 {
        return Err(PyValueError::new_err("a topic has at least one partition"));
    }
    Ok(partition::partition_for(key, partitions))
}

/// The first name an event's top-level JSON object gives twice, or None (native/src/keys.rs).
#[pyfunction]
fn duplicate_key(json: &[u8]) -> Option<String> {
    keys::duplicate_key(json)
}

/// Nanoseconds since the epoch of an RFC 3339 date-time, or None where `parse_rfc3339` must decide.
#[pyfunction(name = "instant")]
fn parse_instant(text: &str) -> Option<i64> {
    instant::parse(text)
}

/// The words Python builds its enums from (native/src/vocabulary.rs): each a dict of name to value.
fn add_vocabulary(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let words = |values: &mut dyn Iterator<Item = &'static str>| -> PyResult<Bound<'_, PyDict>> {
        let d = PyDict::new(py);
        for v in values {
            d.set_item(vocabulary::python_name(v), v)?;
        }
        Ok(d)
    };
    m.add("SUSPENSE", vocabulary::SUSPENSE)?;
    let mut kinds = state::Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .chain([vocabulary::REJECTED_KIND]);
    m.add("KINDS", words(&mut kinds)?)?;
    m.add(
        "REASONS",
        words(&mut vocabulary::Reason::ALL.iter().map(|r| r.as_str()))?,
    )?;
    m.add("STATUSES", words(&mut Status::ALL.iter().map(|s| s.as_str()))?)?;
    let prefixes = PyDict::new(py);
    for (name, byte) in vocabulary::KEY_PREFIXES {
        prefixes.set_item(name, PyBytes::new(py, &[byte]))?;
    }
    m.add("KEY_PREFIXES", prefixes)?;
    Ok(())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeStore>()?;
    m.add_class::<NativeOutcome>()?;
    m.add_class::<NativeRejection>()?;
    m.add_class::<ReplayStep>()?;
    add_vocabulary(m)?;
    m.add_function(wrap_pyfunction!(parse_instant, m)?)?;
    m.add("FIRST_YEAR", instant::FIRST_YEAR)?;
    m.add("LAST_YEAR", instant::LAST_YEAR)?;
    m.add_function(wrap_pyfunction!(event_key, m)?)?;
    m.add_function(wrap_pyfunction!(partition_for, m)?)?;
    m.add_function(wrap_pyfunction!(duplicate_key, m)?)?;
    Ok(())
}
