//! Helpers for memscope's integration tests.
