//! Constructors for [`Outcome`], the answer to one input event.

use crate::Event;

/// What became of one input event.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The input event, unchanged: nothing crosses back to the host, which passes on the
    /// event it sent. The cheapest outcome; what a filter answers for what it lets through.
    Keep,
    /// Zero events (drop), one (map) or several (fan-out), in order, all at the input's
    /// position in the stream.
    Events(Vec<Event>),
    /// The event cannot be transformed: it goes to the sink's DLQ with this message.
    Error(String),
}

impl Outcome {
    /// Drop the event: no sink sees it, and its position still counts as done.
    pub fn drop() -> Outcome {
        Outcome::Events(Vec::new())
    }

    /// Pass the input event on unchanged (whatever was done to the `Event` value the
    /// transform received). Cheaper than `Outcome::one(event)` with an unchanged event.
    pub fn keep() -> Outcome {
        Outcome::Keep
    }

    /// Map the event to `event` (usually the input, changed).
    pub fn one(event: Event) -> Outcome {
        Outcome::Events(vec![event])
    }

    /// Fan out: these events, in this order, all at the input event's position.
    pub fn many(events: Vec<Event>) -> Outcome {
        Outcome::Events(events)
    }

    /// The event cannot be transformed: it goes to the sink's DLQ with `message`, the
    /// transform's name as the stage, and the next events go on.
    pub fn error(message: impl Into<String>) -> Outcome {
        Outcome::Error(message.into())
    }

    /// The events of a drop, map or fan-out; `None` for keep and for an error.
    pub fn events(&self) -> Option<&[Event]> {
        match self {
            Outcome::Events(events) => Some(events),
            Outcome::Keep | Outcome::Error(_) => None,
        }
    }

    /// Whether this outcome is an error.
    pub fn is_error(&self) -> bool {
        matches!(self, Outcome::Error(_))
    }
}

impl From<Event> for Outcome {
    fn from(event: Event) -> Outcome {
        Outcome::one(event)
    }
}

impl From<Vec<Event>> for Outcome {
    fn from(events: Vec<Event>) -> Outcome {
        Outcome::many(events)
    }
}

impl From<Result<Event, String>> for Outcome {
    fn from(result: Result<Event, String>) -> Outcome {
        result.map_or_else(Outcome::Error, Outcome::one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors() {
        assert_eq!(Outcome::drop().events().map(<[Event]>::len), Some(0));
        assert!(Outcome::error("bad").is_error());
        assert_eq!(
            Outcome::from(Err::<Event, _>("x".to_string())),
            Outcome::Error("x".into())
        );
    }
}
