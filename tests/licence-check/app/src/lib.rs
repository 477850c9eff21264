//! Depends on a crate under a licence the allow-list leaves out.
