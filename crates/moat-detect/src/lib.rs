//! `moat-detect`: behaviour metrics and detection (issue 4), as a pure library.
//!
//! Owns: the [`Event`]s the hub feeds (connection events and per-connection
//! [`TrafficSummary`]s), per-device, per-address and per-group behaviour state at several
//! time scales, learned baselines (robust log-scale statistics shrunk towards group priors)
//! and a per-group Half-Space Trees model, the [`Detector`]s, the response ladder
//! ([`Rung`], time boxes, releases, dry run, collateral guard) and the [`Alert`] format with
//! its [`Explanation`].
//!
//! Does not own: I/O, clocks, threads. Time is passed in (`Event::time_ms`,
//! [`Engine::tick`]'s `now`), so it runs in real time in the hub and in virtual time in a
//! simulator. The hub executes responses and releases; this crate only decides them.
//!
//! Trust boundary: every event describes an untrusted peer. Every table peers can grow is
//! bounded with least-recently-seen eviction ([`Limits`] and the `*_PER_*` constants);
//! refused and unauthenticated identities never create device state.
//!
//! The crate's README.md documents events, features, detectors, the configuration format
//! and every limit.

#![forbid(unsafe_code)]

mod alert;
mod config;
mod device;
mod engine;
mod event;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
mod hst;
mod state;
mod stats;
mod table;
mod topics;
mod window;

pub use alert::{
    Alert, Detector, Explanation, LearnedBaseline, Output, Release, Response, Rung, Severity,
};
pub use config::{
    ConfigError, Deception, DetectConfig, Learning, Limits, Mode, ResponseConfig, SeverityRungs,
    Thresholds, TimeBoxes, TopicLayout, default_rungs,
};
pub use engine::{BaselineView, Engine, EngineStats, IncidentView};
pub use event::{
    Action, DisconnectCause, Event, EventKind, GroupName, MAX_GROUP_NAME_LEN, ProtocolFault,
    RefusedReason, SIZE_BUCKETS, Side, Source, TlsFailure, TrafficSummary,
};
pub use state::{
    ACTUATOR_EDGES_PER_DEVICE, ADDRESSES_PER_DEVICE, CLIENT_IDS_PER_DEVICE, DEVICES_PER_ADDRESS,
    EDGES_PER_DEVICE, Feature, HELD_MAX_TIME_BOXES, HELD_STREAK, LIVE_CONNECTIONS_PER_DEVICE,
    MAX_BACKLOG_MS, PROTOCOL_ERROR_MEMORY_MS, WINDOW_MS,
};

#[cfg(test)]
mod tests;
