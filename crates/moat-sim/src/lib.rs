//! `moat-sim`: a fleet and attack simulator for Moat's detection engine (issue 4, point 7).
//!
//! Owns: benign device models ([`fleet`]), hard negatives and attack scenarios with their
//! ground truth ([`attack`], [`replay`]), a mirror of how `moat-hub` feeds `moat-detect`
//! ([`hub::ReplayHub`]), and the evaluator that turns alerts and ground truth into a report
//! ([`eval`]).
//!
//! The live mode ([`live`]) runs the same device models and attackers against a real hub
//! on loopback: [`live::hub::LiveHub`] implements [`hub::Hub`] with real MQTT 5 clients
//! over mutual TLS (attackers on their own `127.0.0.x` source addresses), provisions the
//! fleet with the `moat` CLI and scores the hub's alerts and the mitigations its clients
//! felt.
//!
//! Does not own: detection (moat-detect decides; this crate only feeds it and scores it),
//! response execution (the hub's, observed live).
//!
//! Trust boundary: none; a test tool. It reads its own options and an optional engine
//! configuration file, and writes its output files; in live mode the hub's answers are
//! parsed defensively and everything kept is bounded.

#![forbid(unsafe_code)]

pub mod attack;
pub mod eval;
pub mod fleet;
pub mod hub;
pub mod live;
pub mod replay;
pub mod rng;

/// What replay can and cannot measure (also printed in `report.md`).
pub const LIMITS: &str = "\
* Time to detect is measured in virtual time from the attack's first packet to the first \
matching alert, with the hub's own granularity: traffic summaries every 1 s, facts at the \
millisecond they happen. Queueing in the hub (the bounded fact queue, the broker's packet \
path) is not modelled, so live figures can only be slower.
* \"Mitigated\" means the alert's response is above `alert`; the hub would execute it at \
once. Time to mitigate is the virtual time of the first such alert; the decision latency is \
the wall-clock duration of the engine call that produced it. Executing the response (policy \
swap, session close, ban) and its effect on the attacker are not simulated: responses are \
never applied, so an attacker keeps going after it is mitigated and the engine keeps seeing \
offered load (it also does in the hub, which reports throttled messages as offered).
* Nothing outside the engine is simulated: the network shield's own automatic bans after \
repeated authentication failures, connection-rate limits and quotas are not modelled.
* Benign behaviour is synthetic: models with jitter, diurnal rhythm, drops and backlogs, \
not traces of real fleets. False-positive figures are as good as the models.";
