//! `costtrace._native`: the rules (model.rs) and their state (store.rs, state.rs),
//! reached from Python through `costtrace.model.allocation` and `costtrace.model.state`.
//!
//! Across the boundary everything is bytes in the project's own wire forms:
//! events come in as msgpack of their validated `schemas.events` Struct,
//! credits as the credits topic's msgpack, state as the table's values;
//! records go out as the contract's JSON.

/// The model makes and drops many small strings per event; mimalloc serves them about twice as fast as glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod instant;
mod model;
mod partition;
mod state;
mod store;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use model::{Outcome, Position, Settled, Status};
use state::{Credit, Rejection};
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

/// A store and the rules over it; `costtrace.model.state.MemoryStore` and `workers.state.TableStore` hold one.
#[pyclass(module = "costtrace._native", unsendable)]
struct NativeStore {
    backend: Backend,
}

type Where = Option<(String, i64)>;

fn at(position: &Where) -> Option<Position<'_>> {
    position.as_ref().map(|(source, offset)| Position {
        source,
        offset: *offset,
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

fn status_code(status: Status) -> u8 {
    match status {
        Status::Applied => 0,
        Status::Repeat => 1,
        Status::Rejected => 2,
        Status::Redelivered => 3,
    }
}

/// (event_id, account_id, reason), or None.
fn rejection_tuple(py: Python<'_>, rejection: Option<&Rejection>) -> PyResult<Py<PyAny>> {
    Ok(match rejection {
        None => py.None(),
        Some(r) => (r.event_id.as_deref(), r.account_id.as_deref(), r.reason.as_str())
            .into_pyobject(py)?
            .into_any()
            .unbind(),
    })
}

/// Records as JSON lines, each ending in a newline (replay's output).
fn write_lines(records: &[state::Record], out: &mut Vec<u8>) {
    for r in records {
        r.write_json(out);
        out.push(b'\n');
    }
}

/// (status, account_id, record JSON lines, credit msgpacks, rejection or None, detail or None, step,
/// the records' kinds)
fn outcome_tuple<'py>(py: Python<'py>, o: Outcome) -> PyResult<Bound<'py, PyTuple>> {
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
    let rejection = rejection_tuple(py, o.rejection.as_ref())?;
    let detail = match &o.detail {
        None => py.None(),
        Some(d) => {
            let text = match &d.quoted {
                None => d.text.clone(),
                Some(q) => d.text.replace("{!r}", &PyString::new(py, q).repr()?.to_string()),
            };
            PyString::new(py, &text).into_any().unbind()
        }
    };
    (
        status_code(o.status),
        o.account_id,
        PyList::new(py, records)?,
        PyList::new(py, credits)?,
        rejection,
        detail,
        o.step,
        kinds,
    )
        .into_pyobject(py)
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

    #[pyo3(signature = (event, position=None, settled=None))]
    fn apply_event<'py>(
        &mut self,
        py: Python<'py>,
        event: &[u8],
        position: Where,
        settled: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let ev = model::Event::from_msgpack(event)
            .map_err(|e| PyValueError::new_err(format!("not an event: {e}")))?;
        let pos = at(&position);
        let outcome = on_backend!(
            self,
            store,
            settled,
            Ok(model::apply_event(store, &ev, event, pos.as_ref(), settled)?)
        )?;
        outcome_tuple(py, outcome)
    }

    #[pyo3(signature = (credit, position=None, settled=None))]
    fn apply_credit<'py>(
        &mut self,
        py: Python<'py>,
        credit: &[u8],
        position: Where,
        settled: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let credit: Credit =
            rmp_serde::from_slice(credit).map_err(|e| PyValueError::new_err(format!("not a credit: {e}")))?;
        let pos = at(&position);
        let outcome = on_backend!(
            self,
            store,
            settled,
            Ok(model::apply_credit(store, &credit, pos.as_ref(), settled)?)
        )?;
        outcome_tuple(py, outcome)
    }

    #[pyo3(signature = (account_id, order_ids, position=None, settled=None))]
    fn apply_archive<'py>(
        &mut self,
        py: Python<'py>,
        account_id: &str,
        order_ids: Vec<String>,
        position: Where,
        settled: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let pos = at(&position);
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
        outcome_tuple(py, outcome)
    }

    /// Replay's step: apply one event and, at once, its credits; the records as JSON lines.
    ///
    /// Returns (status code, the records' lines, each ending in a newline,
    /// how many, rejection or None).
    fn replay_event<'py>(&mut self, py: Python<'py>, event: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
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
        let rejection = rejection_tuple(py, rejection.as_ref())?;
        (status_code(status), PyBytes::new(py, &lines), n, rejection).into_pyobject(py)
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

/// Nanoseconds since the epoch of an RFC 3339 date-time, or None where `parse_rfc3339` must decide.
#[pyfunction(name = "instant")]
fn parse_instant(text: &str) -> Option<i64> {
    instant::parse(text)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeStore>()?;
    m.add_function(wrap_pyfunction!(parse_instant, m)?)?;
    m.add("FIRST_YEAR", instant::FIRST_YEAR)?;
    m.add("LAST_YEAR", instant::LAST_YEAR)?;
    m.add_function(wrap_pyfunction!(event_key, m)?)?;
    m.add_function(wrap_pyfunction!(partition_for, m)?)?;
    Ok(())
}
