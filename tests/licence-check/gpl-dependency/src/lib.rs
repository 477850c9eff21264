//! Stands in for a dependency under a licence the allow-list leaves out.
