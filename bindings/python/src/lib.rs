//! `quicproquo._native`: qpq-core's blocking [`qpq_core::Client`] as a Python extension
//! module (pyo3, abi3, CPython ≥ 3.9). The Python package `quicproquo` (`sdks/python`) wraps
//! it in the Pythonic API; nothing else should import this module.
//!
//! What it does: converts arguments and results (`convert`) and errors (`error`, one place),
//! and releases the GIL around every call into the engine, so other Python threads run while
//! one waits for the network or for an event. A wait for an event wakes every 50 ms to let
//! Python handle signals (Ctrl-C raises `KeyboardInterrupt` in the waiting thread).
//!
//! What it will not do: hold logic of its own (it belongs in qpq-core), start a runtime
//! (the engine owns one), or expose the engine's test hooks.
//!
//! Only maturin builds it (`sdks/python/pyproject.toml`): it is a workspace member outside
//! `default-members`, see ADR 0080.

mod convert;
mod error;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use qpq_core::{Client, ClientConfig, Event, EventListener, Subscription};

use crate::error::{invalid, CoreError};

/// How long one slice of an event wait lasts before Python checks for signals.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// One open client: the engine plus a count of `interrupt()` calls, so that a wait cut into
/// slices still notices an interrupt that landed between two slices.
#[pyclass(frozen, module = "quicproquo._native")]
struct NativeClient {
    client: Client,
    interrupts: AtomicU64,
}

/// Runs a blocking engine call with the GIL released.
fn blocking<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> Result<T, qpq_core::Error> + Send,
    T: Send,
{
    Ok(py.detach(f).map_err(CoreError)?)
}

fn cancelled() -> PyErr {
    CoreError(qpq_core::Error::new(
        qpq_core::ErrorCode::Cancelled,
        "the wait was interrupted",
    ))
    .into()
}

fn duration_ms(seconds: Option<f64>, what: &str) -> PyResult<Option<u64>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some((s * 1000.0).round() as u64)),
        Some(s) => Err(invalid(format!(
            "{what} must be a number of seconds ≥ 0, got {s}"
        ))),
    }
}

impl NativeClient {
    /// Waits for `take` to produce something, in slices, checking signals and interrupts
    /// between slices. `None` at the deadline (`timeout` in seconds; `None` = no deadline).
    fn wait<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        token: Option<&WaitToken>,
        take: impl Fn(&Client, Duration) -> Result<Option<T>, qpq_core::Error> + Sync,
    ) -> PyResult<Option<T>> {
        let deadline =
            duration_ms(timeout, "timeout")?.map(|ms| Instant::now() + Duration::from_millis(ms));
        let started = self.interrupts.load(Ordering::SeqCst);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(WAIT_SLICE),
                None => WAIT_SLICE,
            };
            if let Some(got) = blocking(py, || take(&self.client, slice))? {
                return Ok(Some(got));
            }
            py.check_signals()?;
            if self.interrupts.load(Ordering::SeqCst) != started
                || token.is_some_and(|t| t.0.load(Ordering::SeqCst))
            {
                return Err(cancelled());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }
}

#[pymethods]
impl NativeClient {
    /// Opens (or creates) the store in `data_dir`; see `quicproquo.Client`.
    #[staticmethod]
    #[pyo3(signature = (data_dir, server, *, passphrase=None, raw_key=None, cert_der=None,
        cert_file=None, fingerprint=None, server_name=None, request_timeout=None,
        lock_timeout=None, insecure_fast_kdf=false))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        data_dir: PathBuf,
        server: String,
        passphrase: Option<String>,
        raw_key: Option<Vec<u8>>,
        cert_der: Option<Vec<u8>>,
        cert_file: Option<PathBuf>,
        fingerprint: Option<String>,
        server_name: Option<String>,
        request_timeout: Option<f64>,
        lock_timeout: Option<f64>,
        insecure_fast_kdf: bool,
    ) -> PyResult<NativeClient> {
        let mut b = ClientConfig::builder(data_dir, server);
        match (passphrase, raw_key) {
            (Some(p), None) => b = b.passphrase(p),
            (None, Some(k)) => {
                let key = <[u8; 32]>::try_from(k.as_slice())
                    .map_err(|_| invalid("a raw store key is 32 bytes"))?;
                b = b.raw_key(key);
            }
            _ => return Err(invalid("give exactly one of passphrase= and raw_key=")),
        }
        match (cert_der, cert_file, fingerprint) {
            (None, None, None) => {}
            (Some(der), None, None) => b = b.pinned_cert_der(der),
            (None, Some(path), None) => b = b.pinned_cert_file(path),
            (None, None, Some(fp)) => b = b.fingerprint(&fp),
            _ => return Err(invalid("give at most one of cert= and fingerprint=")),
        }
        if let Some(name) = server_name {
            b = b.server_name(name);
        }
        if let Some(ms) = duration_ms(request_timeout, "request_timeout")? {
            b = b.request_timeout_ms(ms);
        }
        if let Some(ms) = duration_ms(lock_timeout, "lock_timeout")? {
            b = b.lock_timeout_ms(ms);
        }
        let mut config = b.build().map_err(CoreError)?;
        config.insecure_fast_kdf = insecure_fast_kdf;
        let client = blocking(py, || Client::open(config))?;
        Ok(NativeClient {
            client,
            interrupts: AtomicU64::new(0),
        })
    }

    fn register<'py>(
        &self,
        py: Python<'py>,
        username: &str,
        password: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let a = blocking(py, || self.client.register(username, password))?;
        convert::account(py, a)
    }

    fn login<'py>(
        &self,
        py: Python<'py>,
        username: &str,
        password: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let a = blocking(py, || self.client.login(username, password))?;
        convert::account(py, a)
    }

    fn register_or_login<'py>(
        &self,
        py: Python<'py>,
        username: &str,
        password: &str,
    ) -> PyResult<(Bound<'py, PyAny>, bool)> {
        let (a, created) = blocking(py, || self.client.register_or_login(username, password))?;
        Ok((convert::account(py, a)?, created))
    }

    fn logout(&self, py: Python<'_>) -> PyResult<()> {
        blocking(py, || self.client.logout())
    }

    fn account<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let a = py.detach(|| self.client.account());
        a.map(|a| convert::account(py, a)).transpose()
    }

    fn resolve_user<'py>(&self, py: Python<'py>, username: &str) -> PyResult<Bound<'py, PyAny>> {
        let m = blocking(py, || self.client.resolve_user(username))?;
        convert::member_of(py, m)
    }

    fn create_group<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        post_quantum: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = blocking(py, || self.client.create_group(name, post_quantum))?;
        convert::conversation_id_py(py, &id)
    }

    fn create_dm<'py>(&self, py: Python<'py>, username: &str) -> PyResult<Bound<'py, PyAny>> {
        let id = blocking(py, || self.client.create_dm(username))?;
        convert::conversation_id_py(py, &id)
    }

    fn invite(
        &self,
        py: Python<'_>,
        conv: &Bound<'_, PyAny>,
        usernames: Vec<String>,
    ) -> PyResult<()> {
        let conv = convert::conversation_id(conv)?;
        let names: Vec<&str> = usernames.iter().map(String::as_str).collect();
        blocking(py, || self.client.invite(&conv, &names))
    }

    fn remove(&self, py: Python<'_>, conv: &Bound<'_, PyAny>, username: &str) -> PyResult<()> {
        let conv = convert::conversation_id(conv)?;
        blocking(py, || self.client.remove(&conv, username))
    }

    fn leave(&self, py: Python<'_>, conv: &Bound<'_, PyAny>) -> PyResult<()> {
        let conv = convert::conversation_id(conv)?;
        blocking(py, || self.client.leave(&conv))
    }

    fn accept(&self, py: Python<'_>, conv: &Bound<'_, PyAny>) -> PyResult<()> {
        let conv = convert::conversation_id(conv)?;
        blocking(py, || self.client.accept(&conv))
    }

    #[pyo3(signature = (conv, block=false))]
    fn decline(&self, py: Python<'_>, conv: &Bound<'_, PyAny>, block: bool) -> PyResult<()> {
        let conv = convert::conversation_id(conv)?;
        blocking(py, || self.client.decline(&conv, block))
    }

    fn block(&self, py: Python<'_>, username: &str) -> PyResult<()> {
        blocking(py, || self.client.block(username))
    }

    fn unblock(&self, py: Python<'_>, username: &str) -> PyResult<()> {
        blocking(py, || self.client.unblock(username))
    }

    fn blocked(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        blocking(py, || self.client.blocked())
    }

    fn promote(&self, py: Python<'_>, conv: &Bound<'_, PyAny>, username: &str) -> PyResult<()> {
        let conv = convert::conversation_id(conv)?;
        blocking(py, || self.client.promote(&conv, username))
    }

    fn rotate_keys(&self, py: Python<'_>, conv: &Bound<'_, PyAny>) -> PyResult<()> {
        let conv = convert::conversation_id(conv)?;
        blocking(py, || self.client.rotate_keys(&conv))
    }

    #[pyo3(signature = (conv, body, message_id=None))]
    fn send<'py>(
        &self,
        py: Python<'py>,
        conv: &Bound<'py, PyAny>,
        body: &Bound<'py, PyAny>,
        message_id: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let conv = convert::conversation_id(conv)?;
        let body = convert::body(body)?;
        let id = message_id.map(convert::message_id).transpose()?;
        let sent = blocking(py, || match id {
            Some(id) => self.client.send_with_id(&conv, id, body),
            None => self.client.send(&conv, body),
        })?;
        convert::message_id_py(py, &sent)
    }

    fn conversations<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let all = blocking(py, || self.client.conversations())?;
        all.into_iter()
            .map(|c| convert::conversation(py, c))
            .collect()
    }

    fn conversation<'py>(
        &self,
        py: Python<'py>,
        conv: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let conv = convert::conversation_id(conv)?;
        let c = blocking(py, || self.client.conversation(&conv))?;
        convert::conversation(py, c)
    }

    fn display_name(&self, py: Python<'_>, conv: &Bound<'_, PyAny>) -> PyResult<String> {
        let conv = convert::conversation_id(conv)?;
        blocking(py, || {
            let c = self.client.conversation(&conv)?;
            Ok(self.client.display_name(&c))
        })
    }

    fn find_conversation<'py>(&self, py: Python<'py>, what: &str) -> PyResult<Bound<'py, PyAny>> {
        let c = blocking(py, || self.client.find_conversation(what))?;
        convert::conversation(py, c)
    }

    #[pyo3(signature = (conv, limit, before=None))]
    fn messages<'py>(
        &self,
        py: Python<'py>,
        conv: &Bound<'py, PyAny>,
        limit: usize,
        before: Option<u64>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let conv = convert::conversation_id(conv)?;
        let all = blocking(py, || self.client.messages(&conv, limit, before))?;
        all.into_iter().map(|m| convert::message(py, m)).collect()
    }

    fn members<'py>(
        &self,
        py: Python<'py>,
        conv: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let conv = convert::conversation_id(conv)?;
        let all = blocking(py, || self.client.members(&conv))?;
        all.into_iter().map(|m| convert::member_of(py, m)).collect()
    }

    fn safety_number(&self, py: Python<'_>, username: &str) -> PyResult<String> {
        blocking(py, || self.client.safety_number(username))
    }

    fn sync<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let all = blocking(py, || self.client.sync())?;
        all.into_iter().map(|e| convert::event(py, e)).collect()
    }

    #[pyo3(signature = (timeout=None, token=None))]
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        token: Option<PyRef<'py, WaitToken>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let got = self.wait(py, timeout, token.as_deref(), |c, slice| {
            c.next_event(slice)
        })?;
        got.map(|e| convert::event(py, e)).transpose()
    }

    #[pyo3(signature = (cursor, timeout=None, token=None))]
    fn wait_event_after<'py>(
        &self,
        py: Python<'py>,
        cursor: u64,
        timeout: Option<f64>,
        token: Option<PyRef<'py, WaitToken>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let got = self.wait(py, timeout, token.as_deref(), |c, slice| {
            c.wait_event_after(cursor, slice)
        })?;
        got.map(|r| convert::event_record(py, r)).transpose()
    }

    fn event_cursor(&self) -> u64 {
        self.client.event_cursor()
    }

    fn interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::SeqCst);
        self.client.interrupt();
    }

    fn subscribe(&self, listener: Py<PyAny>) -> PyResult<NativeSubscription> {
        let sub = self
            .client
            .subscribe(Arc::new(PyListener(listener)))
            .map_err(CoreError)?;
        Ok(NativeSubscription(Mutex::new(Some(sub))))
    }

    #[pyo3(signature = (listener=None))]
    fn set_listener(&self, listener: Option<Py<PyAny>>) {
        self.client
            .set_listener(listener.map(|l| Arc::new(PyListener(l)) as Arc<dyn EventListener>));
    }

    fn ping(&self, py: Python<'_>) -> PyResult<f64> {
        Ok(blocking(py, || self.client.ping())?.as_secs_f64())
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.client.shutdown());
    }
}

/// Cancels one wait (`next_event` / `wait_event_after` given this token) without disturbing
/// other waits on the client, within one wait slice: what `quicproquo.aio` uses when the
/// awaiting task is cancelled.
#[pyclass(frozen, module = "quicproquo._native")]
struct WaitToken(AtomicBool);

#[pymethods]
impl WaitToken {
    #[new]
    fn new() -> WaitToken {
        WaitToken(AtomicBool::new(false))
    }

    fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Calls a Python callable with each event, on the engine's listener thread. An exception
/// the callable raises is reported with `sys.unraisablehook` and the next event still comes.
struct PyListener(Py<PyAny>);

impl EventListener for PyListener {
    fn on_event(&self, event: Event) {
        Python::attach(|py| {
            let callable = self.0.bind(py);
            if let Err(e) = convert::event(py, event).and_then(|ev| callable.call1((ev,))) {
                e.write_unraisable(py, Some(callable));
            }
        });
    }
}

/// A subscription's handle; `cancel()` (or garbage collection) stops its deliveries.
#[pyclass(frozen, module = "quicproquo._native")]
struct NativeSubscription(Mutex<Option<Subscription>>);

#[pymethods]
impl NativeSubscription {
    fn cancel(&self, py: Python<'_>) {
        py.detach(|| {
            if let Ok(mut s) = self.0.lock() {
                s.take();
            }
        });
    }
}

/// The extension module: the two classes and the engine's pinned error codes.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_class::<NativeSubscription>()?;
    m.add_class::<WaitToken>()?;
    let codes = qpq_core::ErrorCode::ALL
        .iter()
        .map(|c| (c.as_u32(), c.name()))
        .collect::<Vec<_>>();
    m.add("ERROR_CODES", PyTuple::new(m.py(), codes)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_BODY_BYTES", qpq_core::MAX_BODY_BYTES)?;
    m.add("MAX_CONTENT_TYPE_BYTES", qpq_core::MAX_CONTENT_TYPE_BYTES)?;
    Ok(())
}
