//! What a request's plugins decided, kept for its trace: each plugin's outcome in the request
//! phase (with the consumer an authentication plugin resolved), the rate limit's verdict and
//! every Redis call. Recorded only while the request's trace is sampled, so an unsampled request
//! pays one branch per plugin; at most [`MAX_EVENTS`] are kept.
//!
//! Values are what the gateway already logs: plugin names, outcomes, problem types, consumer
//! names, never a credential.

use std::sync::Arc;
use std::time::Instant;

/// Events kept per request; later ones are counted in [`TraceEvents::dropped`].
pub const MAX_EVENTS: usize = 64;

/// One attribute value of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventValue {
    /// A fixed word (an outcome, a plugin name).
    Word(&'static str),
    /// A name from the configuration (a consumer).
    Name(Arc<str>),
    /// A number (a duration in microseconds).
    Int(i64),
}

/// One decision, at the instant it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// When.
    pub at: Instant,
    /// The event's name (`gantry.plugin`, `gantry.rate_limit`, `gantry.redis`).
    pub name: &'static str,
    /// Its attributes, by OpenTelemetry attribute key.
    pub attributes: Vec<(&'static str, EventValue)>,
}

/// The events of one request.
#[derive(Debug, Default)]
pub struct TraceEvents {
    recording: bool,
    events: Vec<TraceEvent>,
    dropped: u32,
}

impl TraceEvents {
    /// Starts keeping events (the request's trace is sampled).
    pub fn start_recording(&mut self) {
        self.recording = true;
    }

    /// Whether events are kept.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// Keeps an event named `name` with the attributes `attributes` builds, when recording.
    pub fn record(
        &mut self,
        name: &'static str,
        attributes: impl FnOnce() -> Vec<(&'static str, EventValue)>,
    ) {
        if !self.recording {
            return;
        }
        if self.events.len() >= MAX_EVENTS {
            self.dropped += 1;
            return;
        }
        self.events.push(TraceEvent {
            at: Instant::now(),
            name,
            attributes: attributes(),
        });
    }

    /// The events kept so far.
    pub fn events(&self) -> &[TraceEvent] {
        &self.events
    }

    /// Events not kept (beyond [`MAX_EVENTS`]).
    pub fn dropped(&self) -> u32 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_kept_unless_recording_and_at_most_max_events() {
        let mut events = TraceEvents::default();
        events.record("gantry.plugin", || panic!("not built when not recording"));
        assert!(events.events().is_empty());
        events.start_recording();
        for _ in 0..MAX_EVENTS + 3 {
            events.record("gantry.plugin", Vec::new);
        }
        assert_eq!(events.events().len(), MAX_EVENTS);
        assert_eq!(events.dropped(), 3);
    }
}
