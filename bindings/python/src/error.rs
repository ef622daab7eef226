//! The one place where a `qpq_core::Error` becomes a Python exception.
//!
//! The exception classes live in `quicproquo.errors` (pure Python, one class per code of
//! `core/client/errors.toml`); `_from_core(code, message, retry_after)` picks the class, so
//! the table is written once, in Python, and tested there against the TOML file.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// A core error on its way to Python: `?` on a `Result<_, CoreError>` raises the typed
/// `quicproquo.QpqError` subclass.
pub struct CoreError(pub qpq_core::Error);

impl From<qpq_core::Error> for CoreError {
    fn from(e: qpq_core::Error) -> CoreError {
        CoreError(e)
    }
}

/// `InvalidInput` for a value the binding cannot convert (a malformed id, a wrong key size).
pub fn invalid(message: impl Into<String>) -> PyErr {
    CoreError(qpq_core::Error::new(
        qpq_core::ErrorCode::InvalidInput,
        message,
    ))
    .into()
}

static FROM_CORE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl From<CoreError> for PyErr {
    fn from(CoreError(e): CoreError) -> PyErr {
        Python::attach(|py| {
            let build = || -> PyResult<PyErr> {
                let from_core = FROM_CORE.get_or_try_init(py, || {
                    Ok::<_, PyErr>(
                        py.import("quicproquo.errors")?
                            .getattr("_from_core")?
                            .unbind(),
                    )
                })?;
                let exc = from_core.bind(py).call1((
                    e.code().as_u32(),
                    e.message(),
                    e.retry_after().map(|d| d.as_secs_f64()),
                ))?;
                Ok(PyErr::from_value(exc))
            };
            // When the package itself cannot be imported, the import error says why.
            build().unwrap_or_else(|import_failed| import_failed)
        })
    }
}
