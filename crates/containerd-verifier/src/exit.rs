//! Exit codes: the command line's and the containerd entry's convention (exit 0 admits), shared
//! by those two adapters. The engine returns a [`Class`]; this is where it becomes a number.

use crate::engine::Class;

/// Verified / admitted / command succeeded.
pub const ADMITTED: u8 = 0;
/// Rejected by the proof or the policy (or the input is invalid).
pub const REJECTED: u8 = 1;
/// Could not decide: usage error, unreadable input, bad configuration, internal error.
pub const UNDECIDED: u8 = 2;

/// The exit code of a decision's class.
pub fn code(class: Class) -> u8 {
    match class {
        Class::Admitted => ADMITTED,
        Class::Rejected => REJECTED,
        Class::Undecided => UNDECIDED,
    }
}
