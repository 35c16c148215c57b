//! [`Signal`]: a signal the runtime sends to a container, parsed once where it enters
//! (the image's `StopSignal`, a stored record) so that no raw `i32` travels through the
//! API and an invalid number cannot reach `<runtime> kill`.

use std::fmt;
use std::str::FromStr;

use nix::sys::signal::Signal as NixSignal;

/// A valid signal number (1‥31, the standard ones the OCI runtimes accept by number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(NixSignal);

impl Signal {
    /// `SIGTERM`: StopContainer's first signal when the image names none.
    pub const TERM: Signal = Signal(NixSignal::SIGTERM);
    /// `SIGKILL`: what StopContainer ends with, and what removal and pod stop send.
    pub const KILL: Signal = Signal(NixSignal::SIGKILL);

    /// The signal numbered `n`, if there is one.
    pub fn from_raw(n: i32) -> Option<Signal> {
        NixSignal::try_from(n).ok().map(Signal)
    }

    /// Its number, as `<runtime> kill` takes it.
    pub fn as_raw(self) -> i32 {
        self.0 as i32
    }

    /// A signal as an image's `StopSignal` or a user writes it: `SIGQUIT`, `QUIT`, `quit`
    /// or `3` (Docker's and containerd's `ParseSignal` accept the same forms).
    pub fn parse(name: &str) -> Option<Signal> {
        let name = name.trim();
        if let Ok(n) = name.parse::<i32>() {
            return Signal::from_raw(n);
        }
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        NixSignal::from_str(&full).ok().map(Signal)
    }

    /// The signal StopContainer sends first for an image whose config says `stop_signal`:
    /// that one when it names a signal, else SIGTERM (as containerd, which falls back to
    /// SIGTERM for an empty `StopSignal`).
    pub fn stop_signal(stop_signal: &str) -> Signal {
        Signal::parse(stop_signal).unwrap_or(Signal::TERM)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signal_accepts_names_short_names_and_numbers() {
        assert_eq!(Signal::stop_signal("SIGQUIT").as_raw(), 3);
        assert_eq!(Signal::stop_signal("quit").as_raw(), 3);
        assert_eq!(Signal::stop_signal(" 9 ").as_raw(), 9);
        assert_eq!(Signal::stop_signal(""), Signal::TERM);
        assert_eq!(Signal::stop_signal("SIGNOPE"), Signal::TERM);
        assert_eq!(Signal::stop_signal("99"), Signal::TERM);
    }

    #[test]
    fn raw_numbers_round_trip_and_invalid_ones_are_refused() {
        assert_eq!(Signal::from_raw(15), Some(Signal::TERM));
        assert_eq!(Signal::KILL.as_raw(), 9);
        assert_eq!(Signal::from_raw(0), None);
        assert_eq!(Signal::from_raw(-1), None);
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
    }
}
