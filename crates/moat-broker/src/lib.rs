//! Sans-IO MQTT broker core (work in progress).
#![forbid(unsafe_code)]
pub mod persist;
