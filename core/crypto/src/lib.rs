//! qpq-crypto (in progress).
