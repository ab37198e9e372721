//! # telem-collector (not built yet)
//!
//! Will ingest records from probes (native and legacy framing), journal,
//! rate-limit, spool and deliver them. See the collector issue.
