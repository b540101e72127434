//! Campaigns: waves, gates, maintenance windows and consent as a pure state machine.
