//! Placeholder: scenarios for what the source captures (being written).
